//! The message flow as a Mermaid flowchart (GitHub renders ```mermaid
//! blocks), for README.md and ARCHITECTURE.md: who requests what of whom,
//! and where each event goes.
//!
//! Arrows between the same two nodes of the same kind are merged into one,
//! their subjects stacked in the label: one arrow per subject would make the
//! order module a knot.

use super::asyncapi::STREAM;
use super::model::System;

/// The node of external clients.
const CLIENT: &str = "client";
/// The node events go to when no module listens to them.
const STREAM_NODE: &str = "stream";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrow {
    Request,
    Event,
}

/// The Markdown to put between the flow markers: a legend and the chart.
pub fn render(system: &System) -> String {
    // (from, to, kind) -> subjects, in order of first appearance.
    let mut edges: Vec<(String, String, Arrow, Vec<&str>)> = Vec::new();
    let mut add = |from: String, to: String, arrow: Arrow, subject: &'static str| match edges
        .iter_mut()
        .find(|(f, t, a, _)| *f == from && *t == to && *a == arrow)
    {
        Some((_, _, _, subjects)) => subjects.push(subject),
        None => edges.push((from, to, arrow, vec![subject])),
    };
    let mut unheard = false;
    for subject in system.subjects() {
        if let Some((server, public)) = system.server(subject) {
            if public {
                add(
                    CLIENT.to_owned(),
                    node(server.name),
                    Arrow::Request,
                    subject,
                );
            }
            for requester in system.requesters(subject) {
                add(
                    node(requester.name),
                    node(server.name),
                    Arrow::Request,
                    subject,
                );
            }
        }
        if let Some(publisher) = system.publisher(subject) {
            let listeners = system.listeners(subject);
            if listeners.is_empty() {
                unheard = true;
                add(
                    node(publisher.name),
                    STREAM_NODE.to_owned(),
                    Arrow::Event,
                    subject,
                );
            }
            for (listener, _) in listeners {
                add(
                    node(publisher.name),
                    node(listener.name),
                    Arrow::Event,
                    subject,
                );
            }
        }
    }

    let mut chart = String::from("flowchart LR\n");
    chart.push_str(&format!("    {CLIENT}([\"client\"])\n"));
    for module in &system.modules {
        chart.push_str(&format!("    {}[\"{}\"]\n", node(module.name), module.name));
    }
    if unheard {
        chart.push_str(&format!("    {STREAM_NODE}[(\"{STREAM} stream\")]\n"));
    }
    for (from, to, arrow, subjects) in edges {
        let link = match arrow {
            Arrow::Request => "-->",
            Arrow::Event => "-.->",
        };
        chart.push_str(&format!(
            "    {from} {link}|\"{}\"| {to}\n",
            subjects.join("<br>")
        ));
    }

    format!(
        "Solid arrows are requests (request/reply, from a client or a module to the \
         module serving the subject); dashed arrows are events, from the module \
         publishing them to each module listening{}.\n\n```mermaid\n{chart}```",
        if unheard {
            " (an event no module listens to ends at the stream)"
        } else {
            ""
        }
    )
}

/// A module's node id: prefixed, so that a module named like a Mermaid
/// keyword (`end`, `graph`) cannot break the chart.
fn node(module: &str) -> String {
    format!("m_{module}")
}

#[cfg(test)]
mod tests {
    use super::super::model::fixture;
    use super::*;

    #[test]
    fn requests_are_solid_and_events_dashed_with_subjects_as_labels() {
        let flow = render(&fixture::system());
        assert!(flow.contains("```mermaid\nflowchart LR\n"), "{flow}");
        assert!(flow.contains("client -->|\"shop.buy\"| m_shop"), "{flow}");
        assert!(
            flow.contains("m_shop -->|\"stock.take\"| m_stock"),
            "{flow}"
        );
        // Internal: no arrow from the client.
        assert!(!flow.contains("client -->|\"stock.take\""), "{flow}");
        assert!(
            flow.contains("m_shop -.->|\"events.shop.sold\"| m_stock"),
            "{flow}"
        );
        assert!(
            flow.contains("m_stock -.->|\"events.stock.low\"| stream"),
            "{flow}"
        );
        assert!(flow.ends_with("```"), "{flow}");
    }
}
