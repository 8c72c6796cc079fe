//! Putting the comparison into `docs/BENCHMARKS.md`: only between the markers
//! `<!-- compare:begin -->` and `<!-- compare:end -->`, which are appended at the end of the
//! file the first time. Everything outside them belongs to other benchmarks and other
//! people, so it is never touched; a file with only one of the markers, or with them in the
//! wrong order, is an error rather than a guess.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Marks the start of the generated section.
pub const BEGIN: &str = "<!-- compare:begin -->";
/// Marks its end.
pub const END: &str = "<!-- compare:end -->";

/// `text` with the section between the markers replaced by `section` (the markers appended
/// at the end when absent).
pub fn splice(text: &str, section: &str) -> anyhow::Result<String> {
    let body = format!("{BEGIN}\n{}\n{END}", section.trim_end());
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            Ok(format!("{}{body}{}", &text[..b], &text[e + END.len()..]))
        }
        (None, None) => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{text}{sep}{body}\n"))
        }
        _ => bail!("the file has {BEGIN} and {END} out of order, or only one of them"),
    }
}

/// Where the chart goes for a document at `doc`: `bench/compare.svg` beside it; returns the
/// path on disk and the path to write in the document.
pub fn chart_path(doc: &Path) -> (PathBuf, &'static str) {
    let dir = doc.parent().unwrap_or(Path::new("."));
    (dir.join("bench").join("compare.svg"), "bench/compare.svg")
}

/// Replaces the section in the file at `doc`.
pub fn write(doc: &Path, section: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let out = splice(&text, section).with_context(|| format!("in {}", doc.display()))?;
    std::fs::write(doc, out).with_context(|| format!("writing {}", doc.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_appended_then_replaced_and_nothing_else_changes() {
        let first = splice("# Benchmarks\n\nother text\n", "## A\n").unwrap();
        assert_eq!(
            first,
            format!("# Benchmarks\n\nother text\n\n{BEGIN}\n## A\n{END}\n")
        );
        let with_tail = format!("{first}\nlater section\n");
        let second = splice(&with_tail, "## B\nrows\n").unwrap();
        assert_eq!(
            second,
            format!("# Benchmarks\n\nother text\n\n{BEGIN}\n## B\nrows\n{END}\n\nlater section\n")
        );
        assert!(splice(&format!("x {END} y {BEGIN}"), "s").is_err());
        assert!(splice(&format!("x {BEGIN}"), "s").is_err());
        assert_eq!(
            chart_path(Path::new("docs/BENCHMARKS.md")).0,
            Path::new("docs/bench/compare.svg")
        );
    }
}
