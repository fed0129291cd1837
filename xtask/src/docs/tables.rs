//! The README's subject tables: every request (payload, reply, errors, who
//! serves it, whether clients may send it) and every event (who publishes
//! it, which handlers listen, its payload).

use contract::MessageKind;
use messaging_core::ErrorCode;

use super::model::System;
use super::schema;

/// The Markdown to put between the subjects markers.
pub fn render(system: &System) -> String {
    let mut out = String::new();
    out.push_str(
        "| request subject | payload | reply | errors (status code) | served by | public |\n\
         |---|---|---|---|---|---|\n",
    );
    for subject in system.requests() {
        let Some(message) = system.message(subject) else {
            continue;
        };
        let MessageKind::Request {
            reply_type,
            reply,
            errors,
        } = &message.kind
        else {
            continue;
        };
        let errors = if errors.is_empty() {
            "—".to_owned()
        } else {
            error_list(errors)
        };
        let (served_by, public) = match system.server(subject) {
            Some((module, true)) => (module.name.to_owned(), "yes".to_owned()),
            Some((module, false)) => {
                let requesters: Vec<&str> =
                    system.requesters(subject).iter().map(|m| m.name).collect();
                let only = if requesters.is_empty() {
                    "no module".to_owned()
                } else {
                    requesters.join(", ")
                };
                (module.name.to_owned(), format!("no: {only} only"))
            }
            None => ("—".to_owned(), "—".to_owned()),
        };
        out.push_str(&format!(
            "| `{subject}` | `{}` | `{reply_type}` `{}` | {errors} | {served_by} | {public} |\n",
            schema::fields(message.payload.as_value()),
            schema::fields(reply.as_value()),
        ));
    }
    out.push_str(&format!(
        "\nEvery request may also be refused by the framework itself: {}.\n\n",
        error_list(ErrorCode::COMMON)
    ));

    out.push_str(
        "| event subject | published by | listened to by (module: handler) | payload (plus `event_id`, `correlation_id`) |\n\
         |---|---|---|---|\n",
    );
    for subject in system.events() {
        let Some(message) = system.message(subject) else {
            continue;
        };
        let publisher = system.publisher(subject).map_or("—", |m| m.name);
        let listeners: Vec<String> = system
            .listeners(subject)
            .iter()
            .map(|(module, listener)| format!("{}: `{}`", module.name, listener.handler))
            .collect();
        let listeners = if listeners.is_empty() {
            "—".to_owned()
        } else {
            listeners.join("<br>")
        };
        out.push_str(&format!(
            "| `{subject}` | {publisher} | {listeners} | `{}` |\n",
            schema::fields(message.payload.as_value())
        ));
    }
    // The block ends where its end marker starts: no trailing blank line.
    out.truncate(out.trim_end().len());
    out
}

fn error_list(errors: &[ErrorCode]) -> String {
    errors
        .iter()
        .map(|e| format!("{} `{}`", e.status, e.code))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::model::fixture;
    use super::*;

    #[test]
    fn one_row_per_request_and_per_event() {
        let tables = render(&fixture::system());
        assert!(
            tables.contains(r#"| `shop.buy` | `{"thing","note"?}` | `Sale` `{"thing"}` | 409 `out_of_stock` | shop | yes |"#),
            "{tables}"
        );
        assert!(tables.contains("| `stock.take` | "), "{tables}");
        assert!(tables.contains("| — | stock | no: shop only |"), "{tables}");
        assert!(
            tables
                .contains("400 `bad_request`, 413 `payload_too_large`, 409 `request_in_progress`"),
            "{tables}"
        );
        assert!(
            tables.contains(r#"| `events.shop.sold` | shop | stock: `count_sale` | `{"thing"}` |"#),
            "{tables}"
        );
        assert!(
            tables.contains("| `events.stock.low` | stock | — |"),
            "{tables}"
        );
    }
}
