//! Reading Prometheus exposition text: just enough to pick udp-fanout's counters out of a
//! `/metrics` scrape.
//!
//! Samples are matched by name and by the labels that matter, whatever their order and
//! whatever other labels a sample has, so that the scenario does not depend on how the
//! exporter happens to order labels. Values are read as `f64` (the format's type) and
//! returned as integers, since all counters and gauges used here count things.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone)]
pub struct Scrape<'a> {
    samples: Vec<Sample<'a>>,
}

impl<'a> Scrape<'a> {
    /// Parses every sample line; comments and lines that do not parse are skipped.
    pub fn parse(text: &'a str) -> Self {
        Scrape {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The value of `name` with all of `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.matching(name, labels)
            .map(|s| as_count(s.value))
            .next()
    }

    /// `name` with `labels`, keyed by the value of label `by`; zero values left out.
    pub fn nonzero_by(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        by: &str,
    ) -> BTreeMap<String, u64> {
        self.matching(name, labels)
            .filter_map(|s| {
                let key = s.labels.iter().find(|(k, _)| *k == by)?.1;
                let v = as_count(s.value);
                (v > 0).then(|| (key.to_owned(), v))
            })
            .collect()
    }

    /// The value of the series `name{labels}` with exactly these labels, written as they are
    /// in the text (`listener="a",reason="b"`, any order; empty for none).
    pub fn exact(&self, name: &str, labels: &str) -> Option<u64> {
        let mut want = parse_labels(labels)?;
        want.sort_unstable();
        self.samples
            .iter()
            .find(|s| {
                let mut have = s.labels.clone();
                have.sort_unstable();
                s.name == name && have == want
            })
            .map(|s| as_count(s.value))
    }

    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> impl Iterator<Item = &Sample<'a>> {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|want| s.labels.iter().any(|l| l == want))
        })
    }
}

fn as_count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// `name{a="x",b="y"} 12` or `name 12` (label values without escaped quotes or commas,
/// which is all udp-fanout emits).
fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (&line[..=close], &line[close + 1..])
        }
        None => line.split_once(char::is_whitespace)?,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, l)) => (name, parse_labels(l.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(&str, &str)>> {
    s.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim(), v.trim().strip_prefix('"')?.strip_suffix('"')?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP udp_fanout_sessions_active Live client sessions.\n\
        # TYPE udp_fanout_sessions_active gauge\n\
        udp_fanout_sessions_active{listener=\"bench\"} 100000\n\
        udp_fanout_sessions_active{listener=\"other\"} 3\n\
        udp_fanout_packets_dropped_total{listener=\"bench\",reason=\"no_downstream\"} 0\n\
        udp_fanout_packets_dropped_total{listener=\"bench\",reason=\"send_error\"} 7\n\
        udp_fanout_packets_dropped_total{reason=\"buffer_full\",listener=\"bench\"} 2\n\
        udp_fanout_build_info 1\n\
        garbage line\n";

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let s = Scrape::parse(TEXT);
        let bench = [("listener", "bench")];
        assert_eq!(s.get("udp_fanout_sessions_active", &bench), Some(100_000));
        assert_eq!(
            s.get("udp_fanout_sessions_active", &[("listener", "other")]),
            Some(3)
        );
        assert_eq!(s.get("udp_fanout_sessions_created_total", &bench), None);
        assert_eq!(s.get("udp_fanout_build_info", &[]), Some(1));
        let drops = s.nonzero_by("udp_fanout_packets_dropped_total", &bench, "reason");
        assert_eq!(drops.len(), 2);
        assert_eq!(drops["send_error"], 7);
        assert_eq!(drops["buffer_full"], 2);
        let send = "reason=\"send_error\",listener=\"bench\"";
        assert_eq!(s.exact("udp_fanout_packets_dropped_total", send), Some(7));
        assert_eq!(
            s.exact("udp_fanout_packets_dropped_total", "listener=\"bench\""),
            None
        );
        assert_eq!(s.exact("udp_fanout_build_info", ""), Some(1));
    }
}
