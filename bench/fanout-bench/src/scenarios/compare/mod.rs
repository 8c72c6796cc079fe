//! `compare`: udp-fanout against the other ways to balance and mirror UDP (socat, a socat
//! broadcast tee, nginx, Envoy, nftables), and against no proxy at all, on the same machine,
//! with the same generator and verifying sinks, in the same run.
//!
//! Claims such as "faster than nginx" are only worth what their method is, so the method is
//! fixed here and written next to the numbers: five traffic shapes ([`scenario`]), each peer
//! started from a config this module writes ([`peers`]), a fixed-rate sweep for the highest
//! rate without loss and a fixed-rate run for latency and CPU per datagram ([`sweep`]),
//! medians of several repeats with their range ([`report`]), and the ratios to udp-fanout
//! and to the direct ceiling computed from that same run ([`markdown`], [`plot`]). Scenario
//! (f), the kernel plane against plain kernel forwarding, needs network namespaces and an
//! in-kernel generator rather than peers on loopback, and runs on a rig of its own
//! ([`kernel`]) with its own method, in the same run and report.
//!
//! It installs nothing: missing peers are named with their install command, and everything
//! else runs. `--quick` runs every scenario against every installed peer once, briefly, and
//! fails only on broken accounting, never on a speed ([`quick`]); the crate's tests run it.
//!
//! Traffic stays on loopback, or inside network namespaces the nftables peer ([`netns`]) or
//! scenario (f) ([`kernel`]) creates and deletes. Every process is started with a bounded lifetime and stopped by PID
//! ([`procs`]).

mod docs;
pub mod kernel;
pub mod machine;
mod markdown;
pub mod measure;
mod netns;
pub mod peers;
pub mod placement;
mod plot;
mod procs;
mod quick;
pub mod report;
mod rig;
pub mod scenario;
pub mod sweep;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use docs::{BEGIN, END, chart_path, merge, splice, write as write_doc};
pub use kernel::{KernelOutcome, KernelSettings};
pub use peers::{PeerId, PeerStatus, default_udp_fanout};
pub use placement::Pinning;
pub use plot::write_svg;
pub use report::{CompareReport, Measured, Outcome, QuickRun, Row, ScenarioResult, Spread};
pub use scenario::{ScenarioId, Spec};
pub use sweep::SweepSettings;

use machine::Machine;
use rig::Ctx;

/// What to compare, and how thoroughly.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// The udp-fanout binary.
    pub udp_fanout: PathBuf,
    /// Scenarios to run.
    pub scenarios: Vec<ScenarioId>,
    /// Peers to run them against.
    pub peers: Vec<PeerId>,
    /// One brief run per pair, checked for consistency only.
    pub quick: bool,
    /// Sweeps per pair (full mode).
    pub repeats: u32,
    /// Step lengths.
    pub settings: SweepSettings,
    /// Length of one of scenario (f)'s windows (each mode at the generator's maximum; in
    /// `--quick`, at a low fixed rate).
    pub kernel_window: Duration,
    /// Where the bench's threads run.
    pub pinning: Pinning,
    /// The flows' source address on loopback.
    pub client_ip: Ipv4Addr,
    /// Their source ports (below the ephemeral range, so the proxies' own sockets never
    /// take them).
    pub client_ports: (u16, u16),
    /// No pair starts after this much time; the quick mode's hard bound.
    pub budget: Duration,
    /// How long a peer may take to start.
    pub startup: Duration,
    /// Print a line per finished pair on stderr.
    pub progress: bool,
}

impl CompareConfig {
    /// The full comparison: 3 repeats of 1 s steps with 3 bisections, 2 s at the fixed rate,
    /// at most 30 minutes.
    pub fn full(udp_fanout: PathBuf) -> Self {
        CompareConfig {
            udp_fanout,
            scenarios: ScenarioId::ALL.to_vec(),
            peers: PeerId::ALL.to_vec(),
            quick: false,
            repeats: 3,
            settings: SweepSettings {
                step: Duration::from_secs(1),
                bisect_steps: 3,
                fixed: Duration::from_secs(2),
            },
            kernel_window: Duration::from_secs(2),
            pinning: Pinning::default_for_machine(),
            client_ip: Ipv4Addr::new(127, 0, 90, 1),
            client_ports: (31_000, 31_999),
            budget: Duration::from_secs(30 * 60),
            startup: Duration::from_secs(15),
            progress: false,
        }
    }

    /// The quick check: one 0.3 s run per pair at a modest rate, no pair started after 45 s
    /// (so that the whole run ends within about a minute).
    pub fn quick(udp_fanout: PathBuf) -> Self {
        CompareConfig {
            quick: true,
            repeats: 1,
            settings: SweepSettings {
                step: Duration::from_millis(300),
                bisect_steps: 0,
                fixed: Duration::from_millis(300),
            },
            kernel_window: fanout_netbench::measure::CHECK_WINDOW,
            client_ip: Ipv4Addr::new(127, 0, 91, 1),
            client_ports: (32_000, 32_511),
            budget: Duration::from_secs(45),
            startup: Duration::from_secs(5),
            ..CompareConfig::full(udp_fanout)
        }
    }
}

/// Runs the comparison. Failed pairs are in the report's `failures`; an error is returned
/// only when nothing can run at all.
pub fn run(cfg: &CompareConfig, stop: &AtomicBool) -> anyhow::Result<CompareReport> {
    anyhow::ensure!(cfg.repeats >= 1, "at least one repeat is needed");
    let t0 = Instant::now();
    let sample = if cfg.quick { 200 } else { 1_000 };
    let (machine, mut warnings) = Machine::survey(Duration::from_millis(sample));
    let statuses = peers::check(&cfg.peers, &cfg.udp_fanout);
    let ctx = Ctx {
        udp_fanout: &cfg.udp_fanout,
        pinning: cfg.pinning,
        lifetime: cfg.budget + Duration::from_secs(120),
        client_ip: IpAddr::V4(cfg.client_ip),
        client_ports: cfg.client_ports,
        startup: cfg.startup,
    };
    let mut failures = Vec::new();
    let mut scenarios = Vec::new();
    let mut kernel = None;
    for &sid in &cfg.scenarios {
        if sid.is_kernel() {
            let k = run_kernel(cfg, t0, stop);
            note_kernel(&k, &mut failures, &mut warnings);
            kernel = Some(k);
            continue;
        }
        let spec = sid.spec();
        let rows = statuses
            .iter()
            .map(|st| {
                let row = row_for(cfg, &ctx, &spec, st, t0, stop);
                note_outcome(cfg, &spec, &row, &mut failures, &mut warnings);
                row
            })
            .collect();
        scenarios.push(ScenarioResult { spec, rows });
    }
    Ok(CompareReport {
        quick: cfg.quick,
        machine,
        pinning: cfg.pinning.describe(),
        repeats: cfg.repeats,
        settings: cfg.settings,
        peers: statuses,
        scenarios,
        kernel,
        failures,
        warnings,
        elapsed: t0.elapsed(),
        date: machine::today(),
    })
}

/// Runs (or skips) scenario (f).
fn run_kernel(cfg: &CompareConfig, t0: Instant, stop: &AtomicBool) -> KernelOutcome {
    if stop.load(Ordering::Relaxed) {
        return KernelOutcome::Failed {
            error: "interrupted".to_owned(),
        };
    }
    if t0.elapsed() > cfg.budget {
        return KernelOutcome::Failed {
            error: format!(
                "not started: the time budget of {:?} was used up",
                cfg.budget
            ),
        };
    }
    let started = Instant::now();
    let settings = KernelSettings {
        rounds: cfg.repeats,
        window: cfg.kernel_window,
        quick: cfg.quick,
    };
    let k = kernel::run(&settings, cfg.progress, stop);
    if cfg.progress {
        let what = match &k {
            KernelOutcome::Measured(_) => "measured".to_owned(),
            KernelOutcome::Quick(q) if q.rows.iter().all(|r| r.problems.is_empty()) => {
                "consistent".to_owned()
            }
            KernelOutcome::Quick(_) => "PROBLEMS".to_owned(),
            KernelOutcome::NotApplicable { reason } => format!("n/a: {reason}"),
            KernelOutcome::Failed { error } => format!("FAILED: {error}"),
        };
        eprintln!(
            "(f) kernel plane: {what} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    k
}

/// Records (f)'s failure or inconsistencies in the report's lists.
fn note_kernel(k: &KernelOutcome, failures: &mut Vec<String>, warnings: &mut Vec<String>) {
    match k {
        KernelOutcome::Failed { error } => failures.push(format!("(f) kernel plane: {error}")),
        KernelOutcome::Quick(q) => {
            for r in &q.rows {
                let who = format!("(f) {} {}", r.traffic, r.mode);
                failures.extend(r.problems.iter().map(|p| format!("{who}: {p}")));
                warnings.extend(r.warnings.iter().map(|w| format!("{who}: {w}")));
            }
        }
        KernelOutcome::Measured(m) => {
            if m.retried > 0 {
                warnings.push(format!(
                    "(f) kernel plane: {} window(s) repeated because other work used the \
                     machine; {} still disturbed after the retries",
                    m.retried, m.disturbed
                ));
            }
            for c in &m.cases {
                for r in c.rows.iter().filter(|r| !r.inconsistencies.is_empty()) {
                    warnings.push(format!(
                        "(f) {} {}: counters did not add up in {} window(s): {}",
                        c.traffic,
                        r.mode,
                        r.inconsistencies.len(),
                        r.inconsistencies.join("; ")
                    ));
                }
            }
        }
        KernelOutcome::NotApplicable { .. } => {}
    }
}

/// Runs (or skips) one pair.
fn row_for(
    cfg: &CompareConfig,
    ctx: &Ctx<'_>,
    spec: &Spec,
    st: &PeerStatus,
    t0: Instant,
    stop: &AtomicBool,
) -> Row {
    let peer = st.peer;
    let outcome = if let Some(why) = peer.not_applicable(spec.id) {
        Outcome::NotApplicable {
            reason: why.to_owned(),
        }
    } else if let Some(m) = &st.missing {
        Outcome::Missing { reason: m.clone() }
    } else if stop.load(Ordering::Relaxed) {
        Outcome::Failed {
            error: "interrupted".to_owned(),
        }
    } else if t0.elapsed() > cfg.budget {
        Outcome::Failed {
            error: format!(
                "not started: the time budget of {:?} was used up",
                cfg.budget
            ),
        }
    } else {
        let started = Instant::now();
        let r = run_pair(cfg, ctx, spec, peer, stop)
            .with_context(|| format!("{} {}", spec.id, peer.id()));
        if cfg.progress {
            eprintln!(
                "{} {}: {} ({:.1} s)",
                spec.id,
                peer.id(),
                progress(&r),
                started.elapsed().as_secs_f64()
            );
        }
        r.unwrap_or_else(|e| Outcome::Failed {
            error: format!("{e:#}"),
        })
    };
    Row {
        peer,
        label: peer.label(),
        version: st.version.clone(),
        note: peer.note(spec.id),
        outcome,
    }
}

fn progress(r: &anyhow::Result<Outcome>) -> String {
    match r {
        Ok(Outcome::Measured(m)) => format!("max lossless {:.0}/s", m.max_lossless.median),
        Ok(Outcome::Quick(q)) if q.problems.is_empty() => "consistent".to_owned(),
        Ok(Outcome::Quick(q)) => format!("PROBLEMS: {}", q.problems.join("; ")),
        Ok(_) => "skipped".to_owned(),
        Err(e) => format!("FAILED: {}", format!("{e:#}").lines().next().unwrap_or("")),
    }
}

/// Starts the peer and measures it: once (quick) or swept and repeated (full).
fn run_pair(
    cfg: &CompareConfig,
    ctx: &Ctx<'_>,
    spec: &Spec,
    peer: PeerId,
    stop: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let mut rig = peer.start(spec, ctx).context("starting")?;
    if cfg.quick {
        let point = rig.run_point(spec, spec.quick_rate, cfg.settings.step, ctx, stop)?;
        rig.finish();
        let (problems, warnings) = quick::check(spec, peer, &point);
        return Ok(Outcome::Quick(Box::new(QuickRun {
            point,
            problems,
            warnings,
        })));
    }
    // Start in a quiet moment if there is one coming: the machine may be shared.
    procs::wait_quiet(
        &rig.proxy_pids(),
        measure::DISTURBED,
        Duration::from_secs(60),
    );
    // Warm-up, not counted: sessions, caches and page faults of the first datagrams.
    let warm = spec.fixed_rate.min(start_rate(spec, peer));
    rig.run_point(spec, warm, Duration::from_millis(300), ctx, stop)?;
    let mut repeats = Vec::new();
    let mut start = start_rate(spec, peer);
    for _ in 0..cfg.repeats {
        let r = sweep::repeat(&mut rig, spec, ctx, start, &cfg.settings, stop)?;
        if r.max_lossless > 0 {
            start = (r.max_lossless / 2).max(1);
        }
        repeats.push(r);
    }
    rig.finish();
    Ok(Outcome::Measured(Box::new(Measured::from_repeats(repeats))))
}

/// Where a peer's sweep starts: low for socat's process-per-request reply path, which
/// would otherwise start far above what it can carry.
fn start_rate(spec: &Spec, peer: PeerId) -> u64 {
    match (peer, spec.shape) {
        (PeerId::Socat, scenario::Shape::RequestReply) => 500,
        _ => spec.sweep_start,
    }
}

/// Records a failed pair, and anomalies of the fixed-rate runs, in the report's lists.
fn note_outcome(
    cfg: &CompareConfig,
    spec: &Spec,
    row: &Row,
    failures: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let who = format!("{} {}", spec.id, row.peer.id());
    match &row.outcome {
        Outcome::Failed { error } => failures.push(format!("{who}: {error}")),
        Outcome::Quick(q) => {
            failures.extend(q.problems.iter().map(|p| format!("{who}: {p}")));
            warnings.extend(q.warnings.iter().map(|w| format!("{who}: {w}")));
        }
        Outcome::Measured(m) if !cfg.quick => {
            let steps = m.repeats.iter().flat_map(|r| &r.steps);
            let disturbed = steps.clone().filter(|s| s.disturbed).count()
                + m.repeats.iter().filter(|r| r.fixed.disturbed()).count();
            let retried: u32 = steps.map(|s| s.retries).sum::<u32>()
                + m.repeats.iter().map(|r| r.fixed_retries).sum::<u32>();
            if retried > 0 {
                warnings.push(format!(
                    "{who}: {retried} measurement(s) repeated because other work used the \
                     machine; {disturbed} still disturbed after the retries"
                ));
            }
            for r in &m.repeats {
                let (problems, known) = quick::check(spec, row.peer, &r.fixed);
                for p in problems.iter().chain(&known) {
                    let w = format!("{who} at {}/s: {p}", r.fixed.rate);
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
        }
        _ => {}
    }
}
