//! What scenario (f) found, as data (for the markdown and `--json`): per traffic shape one
//! row per mode, with medians and ranges over the rounds, aggregated from the rig's raw
//! windows ([`fanout_netbench::Sample`]).
//!
//! Every figure is per datagram the client meant to send: for a mirror, a datagram counts
//! once although both backends get a copy (and plain forwarding's client sends two frames
//! for it). Ratios to plain forwarding, and of the userspace plane to each third-party proxy,
//! are taken within a round, then summarised.

use std::time::Duration;

use fanout_netbench::report::{generator_own_each, own_net_each, pct_of_plain, per_million_each};
use fanout_netbench::{Mode, Peer, Sample, Traffic, check};
use serde::Serialize;

use super::super::report::Spread;

/// Scenario (f)'s outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KernelOutcome {
    /// Measured at the generator's maximum, in rounds.
    Measured(Box<KernelMeasured>),
    /// Checked briefly (`--quick`).
    Quick(Box<KernelQuick>),
    /// It cannot run here.
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// Setting up or measuring failed.
    Failed {
        /// The error.
        error: String,
    },
}

/// The full measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelMeasured {
    /// Rounds (every mode once per round).
    pub rounds: u32,
    /// Length of a measured window (seconds in JSON).
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub window: Duration,
    /// Generator threads.
    pub generator_threads: usize,
    /// The generator alone: frames per second into the load balancer's ingress.
    pub generator_pps: Option<Spread>,
    /// The generator alone: this process + ksoftirqd, CPU-ns per frame.
    pub generator_ns: Option<Spread>,
    /// The idle machine's network softirq, CPU-ms per second.
    pub idle_softirq_ms_per_s: Option<Spread>,
    /// Other work's share of a core in each window, the largest.
    pub max_foreign_share: f64,
    /// Windows measured again because other work used the machine.
    pub retried: u32,
    /// Windows still disturbed after the retries.
    pub disturbed: u32,
    /// One entry per traffic shape.
    pub cases: Vec<KernelCase>,
}

/// One traffic shape's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelCase {
    /// `balance`, `mirror`, `heavy-flow`.
    pub traffic: &'static str,
    /// One line for people.
    pub title: String,
    /// One row per mode.
    pub rows: Vec<KernelRow>,
}

/// One mode in one traffic shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelRow {
    /// `plain`, `xdp`, `tc_ebpf`, `userspace`, or a third-party proxy (`udp-tee`,
    /// `nginx-session`, `nginx-datagram`, `envoy-session`, `envoy-packet`).
    pub mode: &'static str,
    /// The name in tables.
    pub label: &'static str,
    /// A third-party proxy's version.
    pub version: Option<String>,
    /// Why the mode cannot carry this traffic, if it cannot (then nothing else is set).
    pub not_applicable: Option<&'static str>,
    /// Datagrams delivered per second (every copy of it, for a mirror).
    pub datagrams_per_s: Option<Spread>,
    /// Of plain forwarding's, same round, %.
    pub pct_of_plain: Option<Spread>,
    /// Copies offered but not delivered, %.
    pub loss_pct: Option<Spread>,
    /// NET_RX + NET_TX softirq, traced, CPU-ns per datagram (idle removed).
    pub softirq_ns: Option<Spread>,
    /// This process + ksoftirqd, CPU-ns per datagram (idle removed).
    pub cpu_ns: Option<Spread>,
    /// The same, net of generating the datagram's frames.
    pub cpu_ns_net: Option<Spread>,
    /// Of `cpu_ns`, a third-party proxy's processes.
    pub proxy_cpu_ns: Option<Spread>,
    /// A third-party proxy: udp-fanout's userspace plane's datagrams/s ÷ its, same round.
    pub userspace_ratio: Option<Spread>,
    /// Copies per backend, over all rounds.
    pub split: Vec<u64>,
    /// Frames at the backends that were not the expected datagrams (e.g. IP fragments of a
    /// datagram larger than sent), over all rounds.
    pub other_frames: u64,
    /// How the plane was attached (`xdp (native)`, `tc ingress`).
    pub attach: String,
    /// How this mode carries the traffic, when that needs saying.
    pub note: Option<&'static str>,
    /// Counters that did not add up, per round.
    pub inconsistencies: Vec<String>,
}

/// The quick check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelQuick {
    /// The rate of every window.
    pub rate: u64,
    /// Their length (seconds in JSON).
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub window: Duration,
    /// One entry per traffic shape, and one for the generator alone.
    pub rows: Vec<QuickRow>,
    /// Third-party proxies that are not installed (not run).
    pub not_installed: Vec<&'static str>,
}

/// One window of the quick check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuickRow {
    /// `balance`, `mirror`, `heavy-flow`.
    pub traffic: &'static str,
    /// `generator-only`, `plain`, `xdp`, `tc_ebpf`, `userspace`.
    pub mode: &'static str,
    /// The name in tables.
    pub label: &'static str,
    /// Frames generated.
    pub offered: u64,
    /// Copies expected at the backends (at the load balancer, generator only).
    pub expected: u64,
    /// Copies counted there.
    pub delivered: u64,
    /// Per backend.
    pub per_backend: Vec<u64>,
    /// The plane's received and forwarded counters, when a plane ran.
    pub plane: Option<(u64, u64)>,
    /// Counters that do not add up (these fail the run).
    pub problems: Vec<String>,
    /// Loss, reported only: the quick check judges no speed.
    pub warnings: Vec<String>,
}

impl QuickRow {
    /// The row for one window.
    pub(crate) fn of(s: &Sample, rate: u64) -> QuickRow {
        let mut warnings = Vec::new();
        if !s.mode.is_socket_proxy() && s.delivered < s.expected() {
            warnings.push(format!(
                "lost {} of {} at {rate}/s",
                s.expected() - s.delivered,
                s.expected()
            ));
        }
        QuickRow {
            traffic: s.traffic.id(),
            mode: s.mode.id(),
            label: label(s.mode),
            offered: s.offered,
            expected: s.expected(),
            delivered: s.delivered,
            per_backend: s.per_backend.to_vec(),
            plane: s.plane.as_ref().map(|p| (p.received, p.forwarded)),
            problems: check(s),
            warnings,
        }
    }
}

/// A mode's name in (f)'s tables.
pub fn label(mode: Mode) -> &'static str {
    match mode {
        Mode::Idle => "idle",
        Mode::GenOnly => "generator only (dropped at the load balancer)",
        Mode::Plain => "plain kernel forwarding",
        Mode::Xdp => "kernel plane, `mode: xdp`",
        Mode::Tc => "kernel plane, `mode: tc_ebpf`",
        Mode::Userspace => "userspace plane (reference)",
        Mode::Peer(p) => p.name(),
    }
}

fn spread(v: &[f64]) -> Option<Spread> {
    Spread::of(v)
}

/// The rows of every traffic shape, from all rounds' samples.
pub(crate) fn aggregate(
    samples: &[Sample],
    rounds: u32,
    window: Duration,
    threads: usize,
    versions: &[(Peer, String)],
) -> KernelMeasured {
    let generator: Vec<&Sample> = samples.iter().filter(|s| s.mode == Mode::GenOnly).collect();
    let gen_ns = spread(&generator_own_each(samples));
    let idle: Vec<f64> = samples
        .iter()
        .filter(|s| s.mode == Mode::Idle)
        .map(|s| s.cpu.rates(s.window).net_softirq)
        .collect();
    let cases = Traffic::ALL
        .into_iter()
        .map(|t| KernelCase {
            traffic: t.id(),
            title: t.title(),
            rows: Mode::FORWARDING
                .into_iter()
                .map(|m| {
                    let mut r = row(samples, t, m, gen_ns.map(|g| g.median));
                    if let Mode::Peer(p) = m {
                        r.version = versions.iter().find(|v| v.0 == p).map(|v| v.1.clone());
                        if r.version.is_none() && r.not_applicable.is_none() {
                            r.not_applicable = Some(NOT_INSTALLED);
                        }
                    }
                    r
                })
                .collect(),
        })
        .collect();
    KernelMeasured {
        rounds,
        window,
        generator_threads: threads,
        generator_pps: spread(
            &generator
                .iter()
                .map(|s| s.offered_pps())
                .collect::<Vec<_>>(),
        ),
        generator_ns: gen_ns,
        idle_softirq_ms_per_s: spread(&idle),
        max_foreign_share: samples.iter().map(super::foreign_share).fold(0.0, f64::max),
        retried: 0,
        disturbed: 0,
        cases,
    }
}

/// What a missing third-party proxy's row says.
pub const NOT_INSTALLED: &str = "not installed";

/// udp-fanout's userspace plane's datagrams/s ÷ `s`'s, in `s`'s round.
fn userspace_ratio(samples: &[Sample], s: &Sample) -> Option<f64> {
    let u = samples
        .iter()
        .find(|u| u.mode == Mode::Userspace && u.traffic == s.traffic && u.round == s.round)?;
    let peer = s.datagrams_pps();
    (peer > 0.0).then(|| u.datagrams_pps() / peer)
}

fn row(samples: &[Sample], traffic: Traffic, mode: Mode, gen_ns: Option<f64>) -> KernelRow {
    let mut r = KernelRow {
        mode: mode.id(),
        label: label(mode),
        version: None,
        not_applicable: traffic.not_applicable(mode),
        datagrams_per_s: None,
        pct_of_plain: None,
        loss_pct: None,
        softirq_ns: None,
        cpu_ns: None,
        cpu_ns_net: None,
        proxy_cpu_ns: None,
        userspace_ratio: None,
        split: Vec::new(),
        other_frames: 0,
        attach: String::new(),
        note: traffic.note(mode),
        inconsistencies: Vec::new(),
    };
    let v: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.mode == mode && s.traffic == traffic)
        .collect();
    if v.is_empty() {
        return r;
    }
    // Ratios within a round, against plain forwarding of the same traffic.
    let same_traffic: Vec<Sample> = samples
        .iter()
        .filter(|s| s.traffic == traffic)
        .cloned()
        .collect();
    let pm = per_million_each(samples, &v);
    let net = own_net_each(samples, &v, gen_ns);
    r.datagrams_per_s = spread(&v.iter().map(|s| s.datagrams_pps()).collect::<Vec<_>>());
    r.pct_of_plain = spread(&pct_of_plain(&same_traffic, &v));
    r.loss_pct = spread(&v.iter().map(|s| s.loss_pct()).collect::<Vec<_>>());
    r.softirq_ns = spread(&pm.iter().map(|p| p.net_softirq).collect::<Vec<_>>());
    r.cpu_ns = spread(&pm.iter().map(|p| p.own).collect::<Vec<_>>());
    r.cpu_ns_net = spread(&net);
    if matches!(mode, Mode::Peer(_)) {
        r.proxy_cpu_ns = spread(&pm.iter().map(|p| p.proxy).collect::<Vec<_>>());
        r.userspace_ratio = spread(
            &v.iter()
                .filter_map(|s| userspace_ratio(samples, s))
                .collect::<Vec<_>>(),
        );
    }
    r.split = (0..v[0].per_backend.len())
        .map(|k| v.iter().map(|s| s.per_backend[k]).sum())
        .collect();
    r.other_frames = v.iter().map(|s| s.other).sum();
    r.attach = v[0].attach.clone();
    for s in &v {
        for bad in check(s) {
            r.inconsistencies
                .push(format!("round {}: {bad}", s.round + 1));
        }
    }
    r
}
