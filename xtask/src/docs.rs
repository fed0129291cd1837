//! `cargo xtask docs [--check]`: the documentation generated from the
//! contract (`contract::MODULES` and `contract::messages()`), so that what
//! runs and what is documented cannot drift apart.
//!
//! It writes `docs/asyncapi.yaml` and `docs/permissions.md` whole, and the
//! blocks between `<!-- generated:NAME:start/end -->` markers in README.md
//! (flow, subjects, permissions) and ARCHITECTURE.md (flow). `--check`
//! (part of `cargo xtask ci`) regenerates in memory and fails if a
//! committed file differs.

mod asyncapi;
mod flow;
mod markers;
mod model;
mod permissions;
mod schema;
mod tables;
mod yaml;

use std::fs;

use anyhow::{bail, Context, Result};

use crate::cargo::workspace_root;
use model::System;

/// Whether to write the files or only compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Write,
    Check,
}

/// A file the task owns (whole, or the generated blocks in it) and what it
/// should contain.
#[derive(Debug)]
pub struct Output {
    /// Relative to the workspace root.
    pub path: &'static str,
    pub content: String,
}

pub fn run(mode: Mode) -> Result<()> {
    let root = workspace_root();
    let system = System::from_contract()?;
    let outputs = generate(&system, |path| {
        fs::read_to_string(root.join(path)).with_context(|| format!("could not read {path}"))
    })?;
    match mode {
        Mode::Check => {
            let stale = drifted(&outputs, |path| fs::read_to_string(root.join(path)).ok());
            if !stale.is_empty() {
                bail!(
                    "generated docs are out of date: {}; run `cargo xtask docs`",
                    stale.join(", ")
                );
            }
            println!("docs: {} files up to date", outputs.len());
        }
        Mode::Write => {
            for output in &outputs {
                let path = root.join(output.path);
                if fs::read_to_string(&path).ok().as_deref() == Some(output.content.as_str()) {
                    println!("{}: up to date", output.path);
                    continue;
                }
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)
                        .with_context(|| format!("could not create {}", dir.display()))?;
                }
                fs::write(&path, &output.content)
                    .with_context(|| format!("could not write {}", output.path))?;
                println!("{}: written", output.path);
            }
        }
    }
    Ok(())
}

/// Every generated file's expected content. `read` gives the current text
/// of the hand-written files the generated blocks go into.
pub fn generate(system: &System, read: impl Fn(&str) -> Result<String>) -> Result<Vec<Output>> {
    let flow = flow::render(system);
    let spliced = |path: &'static str, blocks: &[(&str, &str)]| -> Result<Output> {
        let mut text = read(path)?;
        for (name, content) in blocks {
            text = markers::splice(&text, name, content).context(path)?;
        }
        Ok(Output {
            path,
            content: text,
        })
    };
    Ok(vec![
        Output {
            path: "docs/asyncapi.yaml",
            content: asyncapi::render(system)?,
        },
        Output {
            path: "docs/permissions.md",
            content: permissions::document(system),
        },
        spliced(
            "README.md",
            &[
                ("flow", &flow),
                ("subjects", &tables::render(system)),
                ("permissions", &permissions::summary(system)),
            ],
        )?,
        spliced("ARCHITECTURE.md", &[("flow", &flow)])?,
    ])
}

/// The outputs whose file is missing or differs from what was generated.
pub fn drifted(outputs: &[Output], read: impl Fn(&str) -> Option<String>) -> Vec<&str> {
    outputs
        .iter()
        .filter(|output| read(output.path).as_deref() != Some(output.content.as_str()))
        .map(|output| output.path)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value as Json;

    use super::*;

    /// The real contract's AsyncAPI document, parsed back from its YAML.
    fn asyncapi() -> Json {
        let yaml = asyncapi::render(&System::from_contract().unwrap()).unwrap();
        serde_norway::from_str(&yaml).expect("the generated AsyncAPI is valid YAML")
    }

    fn declared_subjects() -> BTreeSet<&'static str> {
        let mut subjects = BTreeSet::new();
        for module in contract::MODULES {
            subjects.extend(module.serves.iter().map(|e| e.subject));
            subjects.extend(module.requests.iter().copied());
            subjects.extend(module.publishes.iter().copied());
            subjects.extend(module.schedules.iter().copied());
            subjects.extend(module.listens.iter().map(|l| l.subject));
        }
        subjects
    }

    #[test]
    fn asyncapi_is_3_0_0_with_a_channel_per_declared_subject_and_no_other() {
        let doc = asyncapi();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let channels = doc["channels"].as_object().unwrap();
        let addresses: Vec<&str> = channels
            .values()
            .filter_map(|c| c["address"].as_str())
            .collect();
        let unique: BTreeSet<&str> = addresses.iter().copied().collect();
        assert_eq!(unique.len(), addresses.len(), "{addresses:?}");
        assert_eq!(unique, declared_subjects());
        // The only channels without an address are the reply channels,
        // whose address (the requester's inbox) is known only at run time.
        for (id, channel) in channels {
            if channel["address"].is_null() {
                assert!(id.ends_with("_reply"), "{id}");
                let request = &channels[id.trim_end_matches("_reply")];
                assert!(request["address"].is_string(), "{id}");
            }
        }
    }

    #[test]
    fn every_ref_in_the_asyncapi_document_resolves_within_it() {
        fn refs<'a>(value: &'a Json, found: &mut Vec<&'a str>) {
            match value {
                Json::Object(object) => {
                    if let Some(Json::String(target)) = object.get("$ref") {
                        found.push(target);
                    }
                    object.values().for_each(|v| refs(v, found));
                }
                Json::Array(items) => items.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let doc = asyncapi();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{found:?}");
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target} points outside the document"));
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
    }

    #[test]
    fn every_operation_and_event_of_the_contract_is_in_the_asyncapi_document() {
        let doc = asyncapi();
        let operations = doc["operations"].as_object().unwrap();
        for module in contract::MODULES {
            for listener in module.listens {
                let consumer = module.consumer_name(listener.handler);
                assert_eq!(operations[&consumer]["action"], "receive", "{consumer}");
            }
            for endpoint in module.serves {
                let id = format!(
                    "{}_serve_{}",
                    module.name,
                    asyncapi::channel_id(endpoint.subject)
                );
                let operation = &operations[&id];
                assert_eq!(operation["bindings"]["nats"]["queue"], "q", "{id}");
                let codes: Vec<&str> = operation["x-errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["code"].as_str().unwrap())
                    .collect();
                for common in messaging_core::ErrorCode::COMMON {
                    assert!(codes.contains(&common.code), "{id}: {codes:?}");
                }
            }
        }
        let created = &doc["components"]["schemas"]["OrderCreated"];
        assert_eq!(created["properties"]["event_id"]["format"], "uuid");
    }

    #[test]
    fn the_flow_diagram_mentions_every_module_and_every_subject() {
        let flow = flow::render(&System::from_contract().unwrap());
        let mermaid = flow
            .split("```mermaid\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a mermaid block");
        for module in contract::MODULES {
            assert!(
                mermaid.contains(&format!("[\"{}\"]", module.name)),
                "{}",
                module.name
            );
        }
        for subject in declared_subjects() {
            assert!(
                mermaid.contains(subject),
                "{subject} missing from\n{mermaid}"
            );
        }
    }

    #[test]
    fn check_reports_drifted_and_missing_files_only() {
        let outputs = [
            Output {
                path: "same.md",
                content: "a\n".into(),
            },
            Output {
                path: "changed.md",
                content: "b\n".into(),
            },
            Output {
                path: "missing.yaml",
                content: "c\n".into(),
            },
        ];
        let on_disk = |path: &str| match path {
            "same.md" => Some("a\n".to_owned()),
            "changed.md" => Some("b, edited by hand\n".to_owned()),
            _ => None,
        };
        assert_eq!(drifted(&outputs, on_disk), ["changed.md", "missing.yaml"]);
        assert!(drifted(&outputs[..1], on_disk).is_empty());
    }

    #[test]
    fn generated_blocks_go_between_their_markers() {
        let system = System::from_contract().unwrap();
        let text = "intro\n<!-- generated:flow:start -->\n<!-- generated:flow:end -->\n\
                    <!-- generated:subjects:start --><!-- generated:subjects:end -->\n\
                    <!-- generated:permissions:start --><!-- generated:permissions:end -->\n";
        let outputs = generate(&system, |_| Ok(text.to_owned())).unwrap();
        let paths: Vec<&str> = outputs.iter().map(|o| o.path).collect();
        assert_eq!(
            paths,
            [
                "docs/asyncapi.yaml",
                "docs/permissions.md",
                "README.md",
                "ARCHITECTURE.md"
            ]
        );
        let readme = &outputs[2].content;
        assert!(readme.starts_with("intro\n<!-- generated:flow:start -->\nSolid arrows"));
        assert!(readme.contains("| `order.create` |"), "{readme}");
        assert!(
            readme.contains("`order_mark_paid` ← `events.payment.success`"),
            "{readme}"
        );
        // A file without the markers is an error naming it, not a silent skip.
        let err = generate(&system, |_| Ok("no markers".to_owned())).unwrap_err();
        assert!(format!("{err:#}").contains("README.md"), "{err:#}");
    }

    /// The committed files are what `cargo xtask docs` would write (the same
    /// check `cargo xtask ci` runs, here so a plain `cargo test` sees it).
    #[test]
    fn committed_docs_are_up_to_date() {
        let root = workspace_root();
        let outputs = generate(&System::from_contract().unwrap(), |path| {
            Ok(fs::read_to_string(root.join(path))?)
        })
        .unwrap();
        let stale = drifted(&outputs, |path| fs::read_to_string(root.join(path)).ok());
        assert!(
            stale.is_empty(),
            "out of date: {stale:?}; run `cargo xtask docs`"
        );
    }
}
