//! The `compare` subcommand: argument handling and output for
//! [`fanout_bench::scenarios::compare`]. Kept apart from the other subcommands because it
//! also writes files (the chart and the section of `docs/BENCHMARKS.md`).
//!
//! The exit status is non-zero when any run failed (a peer that would not start, broken
//! accounting in `--quick`), after the report has been printed and written, so that a
//! failure never hides the figures that were obtained.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use fanout_bench::scenarios::compare::{
    self, CompareConfig, PeerId, Pinning, ScenarioId, chart_path, write_doc, write_svg,
};

/// A parsed `--scenarios` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scenarios(pub(super) Vec<ScenarioId>);

/// A parsed `--peers` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Peers(pub(super) Vec<PeerId>);

#[derive(Debug, Args)]
#[command(
    after_help = "Environment: UDP_FANOUT_BENCH_DATAPLANE='{gso: false}' (a YAML flow map) \
    adds `dataplane:` settings to the daemon under test, to measure what one setting buys."
)]
pub(super) struct CompareArgs {
    /// Every scenario against every installed peer, briefly (about a minute), checking only
    /// that each run completed and its accounting adds up; no speeds.
    #[arg(long)]
    pub(super) quick: bool,
    /// Scenarios: a (balance 64 B), b (one heavy flow), c (mirror 64 B), d (mirror 64,000 B),
    /// e (request/response), f (kernel plane in network namespaces against plain kernel
    /// forwarding; needs root).
    #[arg(long, value_parser = |s: &str| ScenarioId::parse_list(s).map(Scenarios), default_value = "a,b,c,d,e,f")]
    pub(super) scenarios: Scenarios,
    /// Peers: direct, udp-fanout, udp-fanout-kernel, socat, udp-tee, nginx-session, nginx-datagram,
    /// envoy-session, envoy-packet, nftables; `nginx`, `envoy` for both modes, `all`.
    #[arg(long, value_parser = |s: &str| PeerId::parse_list(s).map(Peers), default_value = "all")]
    pub(super) peers: Peers,
    /// Sweeps per scenario and peer (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub(super) repeats: u32,
    /// Insert the tables between the compare markers of this markdown file (appended at its
    /// end the first time) and the chart in bench/compare.svg beside it. With only some of
    /// the scenarios, only theirs are replaced; the method, peer list and chart are rewritten
    /// only by a run of all of (a)-(e).
    #[arg(long)]
    pub(super) write: Option<PathBuf>,
    /// Print one JSON object instead of markdown.
    #[arg(long)]
    pub(super) json: bool,
    /// The udp-fanout binary (default: the one next to this executable).
    #[arg(long)]
    pub(super) udp_fanout: Option<PathBuf>,
    /// Length of one sweep step (default 1s; 300ms with --quick).
    #[arg(long, value_parser = super::parse_duration)]
    pub(super) step: Option<Duration>,
    /// Start no further scenario/peer pair after this long (default 30m; 45s with --quick).
    #[arg(long, value_parser = super::parse_duration)]
    pub(super) budget: Option<Duration>,
    /// Length of one of scenario (f)'s windows, each mode at the generator's maximum
    /// (default 2s; 200ms at a low rate with --quick).
    #[arg(long, value_parser = super::parse_duration)]
    pub(super) kernel_window: Option<Duration>,
    /// Do not pin the generator and sink threads to CPUs.
    #[arg(long)]
    pub(super) no_pin: bool,
}

/// Runs the comparison and prints (and writes) its report.
pub(super) fn run(a: CompareArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    if a.quick && a.write.is_some() {
        bail!("--write needs a full run: --quick measures no speeds");
    }
    let bin = a.udp_fanout.map_or_else(compare::default_udp_fanout, Ok)?;
    let mut cfg = if a.quick {
        CompareConfig::quick(bin)
    } else {
        CompareConfig::full(bin)
    };
    cfg.scenarios = a.scenarios.0;
    cfg.peers = a.peers.0;
    if !a.quick {
        cfg.repeats = a.repeats;
    }
    if let Some(s) = a.step {
        cfg.settings.step = s;
    }
    if let Some(b) = a.budget {
        cfg.budget = b;
    }
    if let Some(w) = a.kernel_window {
        cfg.kernel_window = w;
    }
    if a.no_pin {
        cfg.pinning = Pinning::NONE;
    }
    cfg.progress = true;
    let report = compare::run(&cfg, stop).context("compare")?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    // The chart shows (a)-(e) together: only a run of all of them redraws it.
    let all_peers = report.covers_all_peer_scenarios();
    let chart = match &a.write {
        Some(doc) if all_peers => {
            let (svg, link) = chart_path(doc);
            write_svg(&report, &svg)?;
            eprintln!("wrote {}", svg.display());
            Some(link)
        }
        _ => None,
    };
    let md = report.to_markdown(chart);
    if let Some(doc) = &a.write {
        write_doc(doc, &md, &report.scenario_ids(), all_peers)?;
        let which: Vec<String> = report
            .scenario_ids()
            .iter()
            .map(ToString::to_string)
            .collect();
        eprintln!(
            "wrote the compare section of {} ({}{})",
            doc.display(),
            which.join(" "),
            if all_peers {
                ""
            } else {
                "; the other scenarios' parts kept"
            }
        );
    }
    super::print_report(a.json, &report, |_| md)?;
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("failed: {f}");
        }
        bail!("{} run(s) failed", report.failures.len());
    }
    Ok(())
}
