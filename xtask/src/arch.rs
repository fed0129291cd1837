//! Architecture check: the module crates talk to each other only over the
//! bus. The modules are those `contract::MODULES` declares, so a module added
//! to the contract is checked from its first line, and a crate that uses the
//! contract without being declared is caught.
//!
//! The rules, from `cargo metadata`, over every dependency kind (normal,
//! dev, build), since a dev-dependency on another module would let tests
//! reach around the bus just the same:
//!
//! - `messaging-core` depends on neither `contract` nor any module crate:
//!   the framework knows no business;
//! - `contract` depends on no module crate: it is shared by all modules and
//!   owned by none;
//! - each module crate depends on `messaging-core` and `contract`, and on no
//!   other module crate;
//! - any other workspace crate depending on `contract` is one of the known
//!   hosts ([`HOSTS`]): a new module crate cannot be silently left out.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cargo::Cargo;

/// The one crate every module shares for talking on the bus.
pub const BUS: &str = "messaging-core";

/// The crate holding the contract: subjects, payloads, declarations.
pub const CONTRACT: &str = "contract";

/// Crates that may depend on the contract (and on modules) without being
/// modules: they run, test or document the system.
pub const HOSTS: [&str; 4] = ["demo", "bench", "xtask", "testkit"];

/// The outcome for the whole workspace.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per crate that passed its rules.
    pub ok: Vec<String>,
    /// One message per broken rule.
    pub violations: Vec<String>,
}

/// `cargo xtask arch`: prints a line per passing crate, fails on violations.
pub fn run(cargo: &Cargo) -> Result<()> {
    let modules: Vec<&str> = contract::MODULES.iter().map(|m| m.name).collect();
    let report = check(&cargo.metadata()?, &modules)?;
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

/// Checks the rules against `cargo metadata --format-version 1 --no-deps`
/// output (whose packages are the workspace members), for the module crates
/// named `modules`. Errs only if the JSON is not cargo metadata at all.
pub fn check(metadata: &Value, modules: &[&str]) -> Result<Report> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata has no `packages` array")?;
    let find = |name: &str| packages.iter().find(|p| p["name"] == name);
    let mut report = Report::default();

    match find(BUS) {
        None => report
            .violations
            .push(format!("crate {BUS} is not in the workspace")),
        Some(package) => {
            let deps = dependencies(package);
            let mut broken = Vec::new();
            if deps.contains(CONTRACT) {
                broken.push(format!(
                    "crate {BUS} depends on {CONTRACT}: the framework must not know the business"
                ));
            }
            broken.extend(modules.iter().filter(|m| deps.contains(*m)).map(|m| {
                format!("crate {BUS} depends on module crate {m}: the framework must not know the business")
            }));
            report.add(broken, format!("{BUS} -> no {CONTRACT}, no module: ok"));
        }
    }

    match find(CONTRACT) {
        None => report
            .violations
            .push(format!("crate {CONTRACT} is not in the workspace")),
        Some(package) => {
            let deps = dependencies(package);
            let broken = modules
                .iter()
                .filter(|m| deps.contains(*m))
                .map(|m| {
                    format!("crate {CONTRACT} depends on module crate {m}: the contract is shared by all modules and owned by none")
                })
                .collect();
            report.add(broken, format!("{CONTRACT} -> no module: ok"));
        }
    }

    for module in modules {
        let Some(package) = find(module) else {
            report.violations.push(format!(
                "module crate {module} is not in the workspace (contract::MODULES declares: {})",
                modules.join(", ")
            ));
            continue;
        };
        let deps = dependencies(package);
        let mut broken = Vec::new();
        for required in [BUS, CONTRACT] {
            if !deps.contains(required) {
                broken.push(format!(
                    "module crate {module} does not depend on {required}: modules meet only on the bus ({BUS}), through the contract ({CONTRACT})"
                ));
            }
        }
        broken.extend(
            modules
                .iter()
                .filter(|other| *other != module && deps.contains(*other))
                .map(|other| {
                    format!("module crate {module} depends on module crate {other}: modules must meet only on the bus ({BUS})")
                }),
        );
        report.add(broken, format!("{module} -> {BUS}, {CONTRACT}: ok"));
    }

    for package in packages {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        let known =
            name == BUS || name == CONTRACT || modules.contains(&name) || HOSTS.contains(&name);
        if !known && dependencies(package).contains(CONTRACT) {
            report.violations.push(format!(
                "crate {name} depends on {CONTRACT} but is not a declared module (add it to contract::MODULES)"
            ));
        }
    }
    Ok(report)
}

/// The names of every package `package` depends on, all kinds together (a
/// set folds normal+dev duplicates). `name` is the depended-on package's
/// real name even when the dependency is renamed in Cargo.toml, so renaming
/// cannot hide one.
fn dependencies(package: &Value) -> BTreeSet<&str> {
    package["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|dep| dep["name"].as_str())
        .collect()
}

impl Report {
    /// Records a crate's broken rules, or its `ok` line if there are none.
    fn add(&mut self, broken: Vec<String>, ok: String) {
        if broken.is_empty() {
            self.ok.push(ok);
        } else {
            self.violations.extend(broken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MODULES: [&str; 3] = ["user", "order", "payment"];

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
                ("contract", None),
                ("tokio", None),
                ("testkit", Some("dev")),
            ],
        )
    }

    /// A workspace that keeps every rule; each test breaks one.
    fn good_workspace() -> Vec<Value> {
        let mut packages = vec![
            package(
                "messaging-core",
                &[("async-nats", None), ("testkit", Some("dev"))],
            ),
            package("contract", &[("messaging-core", None), ("serde", None)]),
            package("testkit", &[("messaging-core", None)]),
            // Hosts wire the modules together; that is their job.
            package(
                "demo",
                &[("user", None), ("order", None), ("contract", None)],
            ),
            package("xtask", &[("contract", None)]),
            // Neither a module nor using the contract: no rule applies.
            package("broker", &[("tokio", None)]),
        ];
        packages.extend(MODULES.iter().map(|m| good_module(m)));
        packages
    }

    /// Replaces the package called `name`.
    fn with(mut packages: Vec<Value>, replacement: Value) -> Vec<Value> {
        let name = replacement["name"].clone();
        packages.retain(|p| p["name"] != name);
        packages.push(replacement);
        packages
    }

    fn violations(packages: Vec<Value>) -> Vec<String> {
        check(&metadata(packages), &MODULES).unwrap().violations
    }

    #[test]
    fn a_workspace_keeping_every_rule_passes() {
        let report = check(&metadata(good_workspace()), &MODULES).unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(
            report.ok,
            [
                "messaging-core -> no contract, no module: ok",
                "contract -> no module: ok",
                "user -> messaging-core, contract: ok",
                "order -> messaging-core, contract: ok",
                "payment -> messaging-core, contract: ok",
            ]
        );
    }

    #[test]
    fn a_module_depending_on_another_module_is_a_violation() {
        // Even as a dev-dependency: tests must not reach around the bus.
        let order = package(
            "order",
            &[
                ("messaging-core", None),
                ("contract", None),
                ("payment", Some("dev")),
            ],
        );
        let report = check(&metadata(with(good_workspace(), order)), &MODULES).unwrap();
        assert_eq!(
            report.violations,
            ["module crate order depends on module crate payment: modules must meet only on the bus (messaging-core)"]
        );
        assert!(!report.ok.iter().any(|line| line.starts_with("order")));
    }

    #[test]
    fn a_module_without_messaging_core_or_contract_is_a_violation() {
        let user = package("user", &[("contract", None)]);
        let found = violations(with(good_workspace(), user));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("module crate user does not depend on messaging-core"));

        let payment = package("payment", &[("messaging-core", None)]);
        let found = violations(with(good_workspace(), payment));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("module crate payment does not depend on contract"));
    }

    #[test]
    fn a_declared_module_missing_from_the_workspace_is_a_violation() {
        let mut packages = good_workspace();
        packages.retain(|p| p["name"] != "payment");
        let violations = violations(packages);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("module crate payment is not in the workspace"));
    }

    #[test]
    fn messaging_core_depending_on_the_contract_or_a_module_is_a_violation() {
        let core = package(
            "messaging-core",
            &[("contract", Some("dev")), ("order", Some("build"))],
        );
        let violations = violations(with(good_workspace(), core));
        assert_eq!(
            violations,
            [
                "crate messaging-core depends on contract: the framework must not know the business",
                "crate messaging-core depends on module crate order: the framework must not know the business",
            ]
        );
    }

    #[test]
    fn the_contract_depending_on_a_module_is_a_violation() {
        let contract = package(
            "contract",
            &[("messaging-core", None), ("user", Some("dev"))],
        );
        let violations = violations(with(good_workspace(), contract));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].starts_with("crate contract depends on module crate user"));
    }

    #[test]
    fn an_undeclared_crate_using_the_contract_is_a_violation() {
        let shipping = good_module("shipping");
        let violations = violations(with(good_workspace(), shipping));
        assert_eq!(
            violations,
            ["crate shipping depends on contract but is not a declared module (add it to contract::MODULES)"]
        );
    }

    #[test]
    fn the_core_crates_missing_are_violations() {
        let mut packages = good_workspace();
        packages.retain(|p| p["name"] != "messaging-core" && p["name"] != "contract");
        let violations = violations(packages);
        assert!(violations.contains(&"crate messaging-core is not in the workspace".to_owned()));
        assert!(violations.contains(&"crate contract is not in the workspace".to_owned()));
    }

    #[test]
    fn json_that_is_not_metadata_is_an_error() {
        assert!(check(&json!({ "nope": 1 }), &MODULES).is_err());
    }
}
