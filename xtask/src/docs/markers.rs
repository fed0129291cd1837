//! Generated blocks inside hand-written Markdown: what lies between
//! `<!-- generated:NAME:start -->` and `<!-- generated:NAME:end -->` belongs
//! to `cargo xtask docs`, everything around it to people.

use anyhow::{bail, Result};

/// `text` with the block `name` holding `content` (on lines of its own
/// between the two markers). The markers must each be there exactly once,
/// in order: a missing or doubled marker is a mistake to point out, not to
/// guess around.
pub fn splice(text: &str, name: &str, content: &str) -> Result<String> {
    let start = format!("<!-- generated:{name}:start -->");
    let end = format!("<!-- generated:{name}:end -->");
    for marker in [&start, &end] {
        match text.matches(marker.as_str()).count() {
            1 => {}
            0 => bail!("marker `{marker}` is missing"),
            n => bail!("marker `{marker}` appears {n} times"),
        }
    }
    let (Some(from), Some(to)) = (text.find(&start), text.find(&end)) else {
        unreachable!("both markers were just counted once");
    };
    if to < from {
        bail!("marker `{end}` comes before `{start}`");
    }
    Ok(format!(
        "{}\n{content}\n{}",
        &text[..from + start.len()],
        &text[to..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_what_lies_between_the_markers() {
        let text = "# Title\n\n<!-- generated:x:start -->\nold\nlines\n<!-- generated:x:end -->\n\nprose\n";
        let spliced = splice(text, "x", "new").unwrap();
        assert_eq!(
            spliced,
            "# Title\n\n<!-- generated:x:start -->\nnew\n<!-- generated:x:end -->\n\nprose\n"
        );
        // Splicing the same content again changes nothing.
        assert_eq!(splice(&spliced, "x", "new").unwrap(), spliced);
    }

    #[test]
    fn missing_doubled_or_swapped_markers_are_errors() {
        let start = "<!-- generated:x:start -->";
        let end = "<!-- generated:x:end -->";
        assert!(splice("no markers", "x", "")
            .unwrap_err()
            .to_string()
            .contains("missing"));
        assert!(splice(&format!("{start}{start}{end}"), "x", "")
            .unwrap_err()
            .to_string()
            .contains("2 times"));
        assert!(splice(&format!("{end}{start}"), "x", "")
            .unwrap_err()
            .to_string()
            .contains("comes before"));
    }
}
