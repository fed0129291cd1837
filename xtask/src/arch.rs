//! Architecture check: the module crates talk to each other only over the
//! bus. Each must depend on `messaging-core` and on no other module crate, in
//! any dependency kind (normal, dev, build), since a dev-dependency on another
//! module would let tests reach around the bus just the same.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cargo::Cargo;

/// The module crates: independent services that meet only on the bus.
pub const MODULES: [&str; 4] = ["user", "product", "order", "payment"];

/// The one crate every module shares.
pub const BUS: &str = "messaging-core";

/// The outcome for the whole workspace.
#[derive(Debug, Default)]
pub struct Report {
    /// One `module -> messaging-core: ok` line per module that passed.
    pub ok: Vec<String>,
    /// One message per broken rule.
    pub violations: Vec<String>,
}

/// `cargo xtask arch`: prints a line per passing module, fails on violations.
pub fn run(cargo: &Cargo) -> Result<()> {
    let report = check(&cargo.metadata()?)?;
    for line in &report.ok {
        println!("{line}");
    }
    if !report.violations.is_empty() {
        bail!(
            "architecture check failed:\n  {}",
            report.violations.join("\n  ")
        );
    }
    Ok(())
}

/// Checks the rules against `cargo metadata --format-version 1` output.
/// Errs only if the JSON is not cargo metadata at all.
pub fn check(metadata: &Value) -> Result<Report> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata has no `packages` array")?;
    let mut report = Report::default();
    for module in MODULES {
        let Some(package) = packages.iter().find(|p| p["name"] == module) else {
            report.violations.push(format!(
                "module crate {module} is not in the workspace (expected module crates: {})",
                MODULES.join(", ")
            ));
            continue;
        };
        // `name` is the depended-on package's real name even when the
        // dependency is renamed in Cargo.toml, so renaming cannot hide one.
        // All kinds are listed together; a set folds normal+dev duplicates.
        let deps: BTreeSet<&str> = package["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|dep| dep["name"].as_str())
            .collect();

        let mut passed = true;
        if !deps.contains(BUS) {
            passed = false;
            report.violations.push(format!(
                "module crate {module} does not depend on {BUS}: modules must meet only on the bus ({BUS})"
            ));
        }
        for other in MODULES.iter().filter(|other| **other != module) {
            if deps.contains(other) {
                passed = false;
                report.violations.push(format!(
                    "module crate {module} depends on module crate {other}: modules must meet only on the bus ({BUS})"
                ));
            }
        }
        if passed {
            report.ok.push(format!("{module} -> {BUS}: ok"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A package entry shaped like cargo metadata's, with `(name, kind)` deps.
    fn package(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
        let deps: Vec<Value> = deps
            .iter()
            .map(|(dep, kind)| json!({ "name": dep, "kind": kind, "rename": null }))
            .collect();
        json!({ "name": name, "version": "0.1.0", "dependencies": deps })
    }

    fn metadata(packages: Vec<Value>) -> Value {
        json!({ "packages": packages, "workspace_members": [], "version": 1 })
    }

    fn good_module(name: &str) -> Value {
        package(
            name,
            &[
                ("messaging-core", None),
                ("tokio", None),
                ("messaging-core", Some("dev")),
            ],
        )
    }

    #[test]
    fn modules_that_only_share_the_bus_pass() {
        let mut packages: Vec<Value> = MODULES.iter().map(|m| good_module(m)).collect();
        // Something that wires all modules together (the demo) is fine.
        packages.push(package(
            "demo",
            &[("user", None), ("order", None), ("messaging-core", None)],
        ));
        packages.push(package("messaging-core", &[("async-nats", None)]));

        let report = check(&metadata(packages)).unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(
            report.ok,
            [
                "user -> messaging-core: ok",
                "product -> messaging-core: ok",
                "order -> messaging-core: ok",
                "payment -> messaging-core: ok",
            ]
        );
    }

    #[test]
    fn a_module_depending_on_another_module_is_a_violation() {
        let packages = vec![
            good_module("user"),
            good_module("product"),
            // Even as a dev-dependency: tests must not reach around the bus.
            package(
                "order",
                &[("messaging-core", None), ("payment", Some("dev"))],
            ),
            good_module("payment"),
        ];

        let report = check(&metadata(packages)).unwrap();
        assert_eq!(
            report.violations,
            ["module crate order depends on module crate payment: modules must meet only on the bus (messaging-core)"]
        );
        assert_eq!(report.ok.len(), 3);
        assert!(!report.ok.iter().any(|line| line.starts_with("order")));
    }

    #[test]
    fn a_module_without_messaging_core_is_a_violation() {
        let packages = vec![
            good_module("user"),
            package("product", &[("tokio", None)]),
            good_module("order"),
            good_module("payment"),
        ];

        let report = check(&metadata(packages)).unwrap();
        assert_eq!(report.violations.len(), 1);
        assert!(
            report.violations[0].contains("module crate product does not depend on messaging-core"),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_missing_module_crate_is_a_violation() {
        let packages = vec![
            good_module("user"),
            good_module("product"),
            good_module("order"),
        ];

        let report = check(&metadata(packages)).unwrap();
        assert_eq!(report.violations.len(), 1);
        assert!(report.violations[0].contains("module crate payment is not in the workspace"));
    }

    #[test]
    fn json_that_is_not_metadata_is_an_error() {
        assert!(check(&json!({ "nope": 1 })).is_err());
    }
}
