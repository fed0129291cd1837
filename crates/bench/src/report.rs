//! Figures: printed one per line as `name value unit`, and optionally
//! written as JSON.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Every figure of a run, in order.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
}

impl Report {
    /// Records and prints a figure.
    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        let figure = Figure {
            name: name.into(),
            value,
            unit,
        };
        println!("{} {} {}", figure.name, format_value(value), figure.unit);
        self.figures.push(figure);
    }

    /// Records the usual latency percentiles of `histogram` (microseconds).
    pub fn latency(&mut self, prefix: &str, histogram: &Histogram<u64>, extra_nines: bool) {
        self.add(
            format!("{prefix}.p50"),
            histogram.value_at_quantile(0.50) as f64,
            "us",
        );
        self.add(
            format!("{prefix}.p99"),
            histogram.value_at_quantile(0.99) as f64,
            "us",
        );
        if extra_nines {
            self.add(
                format!("{prefix}.p99.9"),
                histogram.value_at_quantile(0.999) as f64,
                "us",
            );
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    /// Records `ours / raw` for a pair of figures already recorded.
    pub fn ratio(&mut self, name: impl Into<String>, ours: &str, raw: &str) {
        if let (Some(ours), Some(raw)) = (self.get(ours), self.get(raw)) {
            if raw > 0.0 {
                self.add(name, ours / raw, "x");
            }
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&self.figures)?)?;
        Ok(())
    }
}

fn format_value(value: f64) -> String {
    let whole = value.fract() == 0.0 && value.abs() < 1e15;
    if whole || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
