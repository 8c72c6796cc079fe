//! Putting the comparison into `docs/BENCHMARKS.md`: only between the markers
//! `<!-- compare:begin -->` and `<!-- compare:end -->`, which are appended at the end of the
//! file the first time. Everything outside them belongs to other benchmarks and other
//! people, so it is never touched; a file with only one of the markers, or with them in the
//! wrong order, is an error rather than a guess.
//!
//! A run of only some scenarios (`--scenarios f`, say) replaces only theirs: the section is
//! taken apart at its `### (x)` headings ([`merge`]); the blocks, summary lines and notes of
//! the scenarios that ran are replaced, everyone else's are kept as they were, and the method,
//! peer list and chart stay those of the last run of all the peer scenarios (a)-(e).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::scenario::ScenarioId;

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

/// The text between the markers, if the file has them (in order).
fn current(text: &str) -> Option<&str> {
    let b = text.find(BEGIN)?;
    let e = text.find(END)?;
    (b < e).then(|| &text[b + BEGIN.len()..e])
}

/// Replaces the section in the file at `doc` with `section`, the markdown of a run of the
/// scenarios `ran`: merged with what is there ([`merge`]); `new_preamble` when the run
/// covered every peer scenario, so that its method, peer list and chart replace the old.
pub fn write(
    doc: &Path,
    section: &str,
    ran: &[ScenarioId],
    new_preamble: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let merged = match current(&text) {
        Some(old) => merge(old, section, ran, new_preamble),
        None => section.to_owned(),
    };
    let out = splice(&text, &merged).with_context(|| format!("in {}", doc.display()))?;
    std::fs::write(doc, out).with_context(|| format!("writing {}", doc.display()))
}

/// A section taken apart: everything before the first scenario heading, one block per
/// scenario letter, and the notes list.
#[derive(Debug, Default)]
struct Parts {
    preamble: Vec<String>,
    blocks: BTreeMap<char, Vec<String>>,
    notes: Vec<String>,
}

const NOTES: &str = "Notes from this run:";

/// `x` of a line starting with `prefix` + `(x)`.
fn letter_after(line: &str, prefix: &str) -> Option<char> {
    let rest = line.strip_prefix(prefix)?.strip_prefix('(')?;
    let mut c = rest.chars();
    let l = c.next().filter(char::is_ascii_lowercase)?;
    (c.next() == Some(')')).then_some(l)
}

fn parse(section: &str) -> Parts {
    let mut p = Parts::default();
    let mut current: Option<char> = None;
    let mut in_notes = false;
    for line in section.lines() {
        if let Some(l) = letter_after(line, "### ") {
            current = Some(l);
            in_notes = false;
        } else if line.trim() == NOTES {
            in_notes = true;
            current = None;
            continue;
        }
        match (in_notes, current) {
            (true, _) => {
                if !line.trim().is_empty() {
                    p.notes.push(line.to_owned());
                }
            }
            (false, Some(l)) => p.blocks.entry(l).or_default().push(line.to_owned()),
            (false, None) => p.preamble.push(line.to_owned()),
        }
    }
    p
}

fn trimmed(lines: &[String]) -> String {
    lines.join("\n").trim().to_owned()
}

/// `old` (a section in the document) with the scenarios in `ran` replaced by theirs from
/// `new` (a run's section): blocks, summary lines and notes of the scenarios that ran come
/// from `new` (and disappear if `new` has none), everyone else's from `old`. The rest of the
/// preamble (method, peers, chart) and notes about no scenario come from `new` when
/// `new_preamble`, else from `old`.
pub fn merge(old: &str, new: &str, ran: &[ScenarioId], new_preamble: bool) -> String {
    let (old, new) = (parse(old), parse(new));
    let ran: Vec<char> = ran.iter().map(|s| s.letter()).collect();
    let pick = |l: char| ran.contains(&l);
    // Summary lines, by letter.
    let summary = |p: &Parts| -> BTreeMap<char, String> {
        p.preamble
            .iter()
            .filter_map(|l| Some((letter_after(l, "- ")?, l.clone())))
            .collect()
    };
    let (old_sum, new_sum) = (summary(&old), summary(&new));
    let mut lines: BTreeMap<char, String> =
        old_sum.into_iter().filter(|(l, _)| !pick(*l)).collect();
    lines.extend(new_sum.into_iter().filter(|(l, _)| pick(*l)));
    let base = if new_preamble { &new } else { &old };
    let mut preamble = Vec::new();
    let mut placed = false;
    for l in &base.preamble {
        if letter_after(l, "- ").is_some() {
            if !placed {
                preamble.extend(lines.values().cloned());
                placed = true;
            }
            continue;
        }
        preamble.push(l.clone());
    }
    if !placed && !lines.is_empty() {
        preamble.push(String::new());
        preamble.push("Summary:".to_owned());
        preamble.push(String::new());
        preamble.extend(lines.values().cloned());
    }
    let mut out = vec![trimmed(&preamble)];
    let letters: std::collections::BTreeSet<char> = old
        .blocks
        .keys()
        .chain(new.blocks.keys())
        .copied()
        .collect();
    for l in letters {
        let from = if pick(l) { &new } else { &old };
        if let Some(b) = from.blocks.get(&l) {
            out.push(trimmed(b));
        }
    }
    // Notes about no scenario (a busy machine) belong to the run that wrote the preamble;
    // a partial run's are kept with its first scenario.
    let general = |p: &Parts| -> Vec<String> {
        p.notes
            .iter()
            .filter(|n| letter_after(n, "- ").is_none())
            .cloned()
            .collect()
    };
    let new_general: Vec<String> = match (new_preamble, ran.first()) {
        (true, _) => general(&new),
        (false, Some(l)) => general(&new)
            .iter()
            .map(|n| format!("- ({l}) {}", n.trim_start_matches("- ")))
            .collect(),
        (false, None) => Vec::new(),
    };
    let notes: Vec<String> = old
        .notes
        .iter()
        .filter(|n| letter_after(n, "- ").is_some_and(|l| !pick(l)))
        .chain(
            new.notes
                .iter()
                .filter(|n| letter_after(n, "- ").is_some_and(pick)),
        )
        .cloned()
        .chain(new_general)
        .chain(if new_preamble {
            Vec::new()
        } else {
            general(&old)
        })
        .collect();
    if !notes.is_empty() {
        out.push(format!("{NOTES}\n\n{}", notes.join("\n")));
    }
    out.join("\n\n") + "\n"
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

    const OLD: &str = "## Peer comparison\n\n**Method.** old method\n\nSummary (ratios):\n\n\
        - (a) old a\n- (b) old b\n\n![chart](bench/compare.svg)\n\n### (a) balance\n\n\
        | old a table |\n\n### (b) heavy\n\n| old b table |\n\nNotes from this run:\n\n\
        - (a) old a note\n- (b) old b note\n- the machine was busy (old)\n";

    #[test]
    fn a_subset_replaces_only_its_own_scenarios() {
        let new = "## Peer comparison\n\nSummary (ratios):\n\n- (f) new f\n\n\
            ### (f) kernel\n\n**Method.** f method\n\n| new f table |\n\n\
            Notes from this run:\n\n- (f) new f note\n- the machine was busy (new)\n";
        let m = merge(OLD, new, &[ScenarioId::F], false);
        assert_eq!(
            m,
            "## Peer comparison\n\n**Method.** old method\n\nSummary (ratios):\n\n\
             - (a) old a\n- (b) old b\n- (f) new f\n\n![chart](bench/compare.svg)\n\n\
             ### (a) balance\n\n| old a table |\n\n### (b) heavy\n\n| old b table |\n\n\
             ### (f) kernel\n\n**Method.** f method\n\n| new f table |\n\n\
             Notes from this run:\n\n- (a) old a note\n- (b) old b note\n- (f) new f note\n\
             - (f) the machine was busy (new)\n- the machine was busy (old)\n"
        );
        // Run again: (f) replaced, not duplicated.
        let again = merge(
            &m,
            &new.replace("new f", "newer f"),
            &[ScenarioId::F],
            false,
        );
        assert_eq!(again.matches("### (f)").count(), 1);
        assert!(again.contains("- (f) newer f\n") && !again.contains("- (f) new f\n"));
        assert!(again.contains("| newer f table |") && again.contains("| old b table |"));
    }

    #[test]
    fn a_full_run_brings_its_preamble_and_keeps_blocks_it_did_not_run() {
        let with_f = merge(
            OLD,
            "## P\n\nSummary:\n\n- (f) f\n\n### (f) k\n\n| f |\n",
            &[ScenarioId::F],
            false,
        );
        let new = "## Peer comparison\n\n**Method.** new method\n\nSummary (ratios):\n\n\
            - (a) new a\n\n### (a) balance\n\n| new a table |\n";
        let m = merge(&with_f, new, &[ScenarioId::A, ScenarioId::B], true);
        assert!(
            m.contains("**Method.** new method") && !m.contains("old method"),
            "{m}"
        );
        assert!(m.contains("- (a) new a\n- (f) f\n"), "{m}");
        assert!(!m.contains("old b"), "(b) ran and produced nothing: {m}");
        assert!(m.contains("| new a table |\n\n### (f) k\n\n| f |\n"), "{m}");
        assert!(!m.contains("Notes from this run"), "{m}");
    }
}
