//! A per-second budget of log lines: what anybody on the bus can trigger at
//! broker speed (junk events, a flood of requests past a full buffer) must
//! not become a flood of log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets `per_second` lines through each second; counts the rest, and hands
/// the count to the next line let through.
pub(crate) struct LogBudget {
    per_second: u32,
    /// Start of the current second, lines logged in it, lines held back.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl LogBudget {
    pub(crate) const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(held back since the last line)` if a line may be logged now.
    pub(crate) fn take(&self) -> Option<u64> {
        let mut state = self.state.lock().expect("log budget lock");
        let (since, logged, held) = &mut *state;
        let now = Instant::now();
        if since.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            (*since, *logged) = (Some(now), 0);
        }
        if *logged < self.per_second {
            *logged += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_through_its_budget_then_counts_what_it_held_back() {
        let budget = LogBudget::new(2);
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), None);
        // A second later, the next line carries the count.
        budget.state.lock().unwrap().0 = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(budget.take(), Some(2));
        assert_eq!(budget.take(), Some(0));
    }
}
