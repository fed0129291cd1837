//! How payments behave: how long they take and when they are declined.

use std::time::Duration;

/// The payment module's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentConfig {
    /// How long one simulated payment takes.
    pub delay: Duration,
    /// Chance that a payment is declined, from 0 (never) to 1 (always).
    pub failure_rate: f64,
    /// Seed of the decline sequence; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Most items one payment may cover ("card limit"); larger orders are declined.
    pub limit: u32,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(1),
            failure_rate: 0.0,
            seed: None,
            limit: 50,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("payment failure rate must be between 0 and 1, got {0}")]
    FailureRate(f64),
}

impl PaymentConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(ConfigError::FailureRate(self.failure_rate));
        }
        Ok(())
    }
}
