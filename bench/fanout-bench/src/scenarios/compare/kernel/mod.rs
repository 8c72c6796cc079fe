//! Scenario (f): udp-fanout's kernel plane in network namespaces, against plain kernel
//! forwarding, in the same run, with the userspace plane for reference.
//!
//! The other scenarios compare proxies on loopback, with a userspace generator and sinks and
//! a fixed-rate sweep. None of that can judge the kernel plane: it forwards between
//! interfaces, never on loopback, and a userspace sender on this kind of machine offers a
//! fraction of what it forwards. So (f) runs on the rig of [`fanout_netbench`]: a
//! client, a load balancer and two backends in network namespaces joined by veths, an
//! in-kernel generator (XDP live frames) and XDP counting sinks on the backends. Each mode is
//! measured at the generator's maximum (which is the path's capacity on one CPU: the receive
//! path runs in the generator's own softirq), in rounds with every mode interleaved, and
//! reported as datagrams per second delivered, % of plain forwarding in the same round, and
//! CPU nanoseconds per datagram (network softirq time traced at softirq entry and exit, and
//! this process + ksoftirqd), with the idle background and, for the last figure, the
//! generator's own cost removed. The target is kernel plane ≥ 95 % of plain
//! forwarding.
//!
//! Traffic shapes: load-balance 64-byte datagrams from 1024 flows over 2 backends; mirror
//! them to both backends (tc_ebpf's `bpf_clone_redirect`; plain forwarding is the client
//! sending each datagram to both backends itself, which is what a client has to do without a
//! mirror, and which costs it a second frame; XDP cannot copy and is n/a); one heavy flow (a
//! single 5-tuple), which the userspace plane's `SO_REUSEPORT` cannot spread over its workers.
//!
//! nginx (session mode and `proxy_responses 0`) and Envoy (per-session and per-packet) run
//! in the same windows for the balance and heavy-flow shapes (they cannot mirror), and the
//! udp-tee (the seed's socat broadcast mirror, as in (c)) for the mirror shape, started in
//! the load balancer's namespace by [`proxies`] with the loopback comparison's configs: here
//! the in-kernel generator is not the limit, the proxy is, so udp-fanout's userspace plane ÷
//! each of them is a real ratio rather than the lower bound (a) and (c) give. Their CPU (their
//! processes' utime + stime) is added to this process + ksoftirqd. A peer that is not
//! installed is n/a and the rest runs.
//!
//! The machine may be shared: a window during which other work took more than a tenth of a
//! core (the machine's busy time, softirq included, less this process's and the ksoftirqd
//! threads') is measured again after waiting for the machine to get quiet, twice at most, as
//! the other scenarios do.
//!
//! `--quick` runs every mode once, briefly, at a low rate, and fails only when counters do not
//! add up (generator, veth, sinks, the plane's own counters), never on a speed. Without root
//! (namespaces, BPF) the scenario is n/a and everything else runs.

pub(crate) mod markdown;
mod proxies;
pub mod summary;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use fanout_netbench::cpu::tick_ms;
use fanout_netbench::measure::{CHECK_DRAIN, CHECK_RATE, DRAIN};
use fanout_netbench::{self as netbench, Mode, Peer, Rig, RigOptions, Sample, Traffic};

use super::measure::DISTURBED;
use super::procs;

pub use summary::{KernelCase, KernelMeasured, KernelOutcome, KernelQuick, KernelRow, QuickRow};

/// Why (f) does not run without root.
pub const NEEDS_ROOT: &str = "needs root (network namespaces, eBPF)";

/// How (f) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSettings {
    /// Rounds (full mode).
    pub rounds: u32,
    /// Length of a measured window.
    pub window: Duration,
    /// One brief window per mode at a low rate, checked for consistency only.
    pub quick: bool,
}

/// Runs (f); `progress` prints a line per window on stderr.
pub(crate) fn run(s: &KernelSettings, progress: bool, stop: &AtomicBool) -> KernelOutcome {
    if !netbench::is_root() {
        return KernelOutcome::NotApplicable {
            reason: NEEDS_ROOT.to_owned(),
        };
    }
    let r = if s.quick {
        quick(s, progress, stop).map(|q| KernelOutcome::Quick(Box::new(q)))
    } else {
        full(s, progress, stop).map(|m| KernelOutcome::Measured(Box::new(m)))
    };
    r.unwrap_or_else(|e| KernelOutcome::Failed {
        error: format!("{e:#}"),
    })
}

fn rig(drain: Duration) -> anyhow::Result<Rig> {
    Rig::new(RigOptions {
        threads: 1,
        drain,
        external: Some(proxies::start),
    })
    .context("setting up the namespaces, generator and sinks")
}

/// The third-party proxies that are installed, with their versions; and those that are not.
fn peers() -> (Vec<(Peer, String)>, Vec<Peer>) {
    let (mut have, mut missing) = (Vec::new(), Vec::new());
    for (p, st) in proxies::statuses() {
        match st.version {
            Some(v) if st.missing.is_none() => have.push((p, v)),
            _ => missing.push(p),
        }
    }
    (have, missing)
}

/// The windows of one round, in order: the background, the generator alone, then every
/// traffic shape through every mode that can carry it (a third-party proxy only when it is
/// installed, not in `missing`).
fn plan(with_baselines: bool, missing: &[Peer]) -> Vec<(Mode, Traffic)> {
    let mut v = Vec::new();
    if with_baselines {
        v.push((Mode::Idle, Traffic::Balance));
    }
    v.push((Mode::GenOnly, Traffic::Balance));
    for t in Traffic::ALL {
        for m in Mode::FORWARDING {
            let installed = !matches!(m, Mode::Peer(p) if missing.contains(&p));
            if t.not_applicable(m).is_none() && installed {
                v.push((m, t));
            }
        }
    }
    v
}

fn one(
    rig: &mut Rig,
    (mode, traffic): (Mode, Traffic),
    rate: Option<u64>,
    window: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Sample> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    rig.measure(mode, traffic, rate, window)
        .with_context(|| format!("{} with {}", mode.name(), traffic.id()))
}

fn quick(s: &KernelSettings, progress: bool, stop: &AtomicBool) -> anyhow::Result<KernelQuick> {
    let mut rig = rig(CHECK_DRAIN)?;
    let mut rows = Vec::new();
    let (_, missing) = peers();
    for w in plan(false, &missing) {
        let sample = one(&mut rig, w, Some(CHECK_RATE), s.window, stop)?;
        let row = QuickRow::of(&sample, CHECK_RATE);
        if progress {
            eprintln!(
                "(f) {} {}: offered {} delivered {} {}",
                row.traffic,
                row.mode,
                sample.offered,
                sample.delivered,
                if row.problems.is_empty() {
                    "consistent".to_owned()
                } else {
                    format!("PROBLEMS: {}", row.problems.join("; "))
                }
            );
        }
        rows.push(row);
    }
    Ok(KernelQuick {
        rate: CHECK_RATE,
        window: s.window,
        rows,
        not_installed: missing.iter().map(|p| p.id()).collect(),
    })
}

/// Share of a core other work used during a window: the machine's busy time (softirq and
/// steal included) less this process's, ksoftirqd's and a proxy's, which the window's own
/// traffic used.
pub(crate) fn foreign_share(s: &Sample) -> f64 {
    let c = &s.cpu;
    let busy = c.user + c.system + c.softirq + c.irq + c.steal;
    let secs = s.window.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    busy.saturating_sub(c.own) as f64 * tick_ms() / 1000.0 / secs
}

/// Measurements of a window at most (the first and two retries).
const TRIES: u32 = 3;
/// Retries at most over the whole scenario: a machine busy for minutes is reported as such
/// rather than waited out.
const MAX_RETRIES: u32 = 12;
/// How long to wait for the machine to get quiet before a retry.
const QUIET_WAIT: Duration = Duration::from_secs(20);

fn full(s: &KernelSettings, progress: bool, stop: &AtomicBool) -> anyhow::Result<KernelMeasured> {
    let mut rig = rig(DRAIN)?;
    let mut samples = Vec::new();
    let (versions, missing) = peers();
    let rounds = s.rounds.max(1);
    let (mut retried, mut disturbed) = (0u32, 0u32);
    for round in 0..rounds {
        for w in plan(true, &missing) {
            let mut sample = one(&mut rig, w, None, s.window, stop)?;
            let mut tries = 1;
            while foreign_share(&sample) > DISTURBED && tries < TRIES && retried < MAX_RETRIES {
                if progress {
                    eprintln!(
                        "(f) {} {}: other work took {:.2} of a core; measuring again",
                        w.1.id(),
                        w.0.id(),
                        foreign_share(&sample)
                    );
                }
                procs::wait_quiet(&[], DISTURBED, QUIET_WAIT);
                sample = one(&mut rig, w, None, s.window, stop)?;
                tries += 1;
                retried += 1;
            }
            if foreign_share(&sample) > DISTURBED {
                disturbed += 1;
            }
            sample.round = u64::from(round);
            if progress {
                eprintln!(
                    "(f) round {}/{rounds} {} {}: {:.0} datagrams/s delivered",
                    round + 1,
                    sample.traffic.id(),
                    sample.mode.id(),
                    sample.datagrams_pps()
                );
            }
            samples.push(sample);
        }
    }
    let mut m = summary::aggregate(&samples, rounds, s.window, rig.threads(), &versions);
    m.retried = retried;
    m.disturbed = disturbed;
    Ok(m)
}
