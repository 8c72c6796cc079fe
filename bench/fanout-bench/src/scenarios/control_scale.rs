//! The `control` scenario: the control plane at 10,000 downstreams on one listener, as an
//! operator would see it (DESIGN.md 3b): how long a reload of the whole set takes to serve,
//! what it costs, whether a listener the reload does not touch loses anything, and what
//! health-checking 10,000 endpoints every second costs the daemon.
//!
//! 1. In-process: the daemon's own libraries, timed here: loading the config, reading and
//!    checking the N-line downstreams file, building the consistent-hash set
//!    (`BackendSet::new`, the Maglev table). These are a reload's known parts; the rest is the
//!    daemon's plumbing.
//! 2. Reloads. A daemon with listener `big` (N downstreams in a `downstreams_file`,
//!    consistent_hash) and listener `steady` (round-robin to two counting sinks). The set
//!    alternates between two variants of N addresses each, every address of variant A on
//!    probe receiver A and every one of B on receiver B (see [`control_probe`]), while a probe
//!    sends one datagram a millisecond to `big`: a reload has taken effect when the other
//!    receiver gets its first datagram. Each reload writes the file (write and rename), then
//!    sends SIGHUP (the measured latency is SIGHUP to first datagram) or, for the watch
//!    reloads, nothing (file write to first datagram, the file watch's 200 ms debounce
//!    included). The next reload waits until the daemon has logged every reload the last one
//!    caused (a SIGHUP after a write is two: the signal's and the watch's). Meanwhile the
//!    fanout_testkit generator sends a fixed rate through `steady` and the sinks count what
//!    arrives: the loss during the reloads, against a baseline window without reloads.
//! 3. Idle and health checks: the same machine's daemon with one downstream, with N
//!    downstreams and no health checks, and with N downstreams checked every second (UDP,
//!    defaults otherwise), every downstream an address on one wildcard-bound echo server. CPU
//!    (utime + stime from `/proc/PID/stat`) over fixed windows, memory, descriptors, how fast
//!    all N turn healthy.
//!
//! A benchmark, not a test: it asserts nothing and reports what it saw.
//!
//! [`control_probe`]: super::control_probe

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint, EndpointState};
use fanout_testkit::daemon::{Daemon, Signal};
use fanout_testkit::procfs;
use fanout_testkit::prom::Scrape;
use fanout_testkit::stats::Latency;

use super::control_probe::{self, ProbeSender, Receiver, loopback_set};
use super::control_report::{
    ControlScaleReport, IdleReport, InProcess, ReloadReport, ReloadSample, Setup, Spread,
    SteadyWindow,
};
use crate::generator::{self, GenConfig, GenReport};
use crate::sink::{Sink, SinkHandle, SinkOptions, SinkReport};

/// The reloaded listener.
pub const BIG: &str = "big";
/// The listener the reloads leave alone.
pub const STEADY: &str = "steady";
/// The health-checked listener.
pub const CHECKED: &str = "checked";

/// `127.NET.x.y` networks of the three address sets: variant A, variant B, health targets.
const NET_A: u8 = 101;
const NET_B: u8 = 102;
const NET_HEALTH: u8 = 103;

/// The daemon logs this for every reload applied.
const RELOADED: &str = "configuration reloaded";

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlScaleConfig {
    /// The `udp-fanout` binary.
    pub udp_fanout: PathBuf,
    /// Downstreams in the big set (N).
    pub downstreams: u32,
    /// Reloads by SIGHUP.
    pub reloads: u32,
    /// Reloads by a file write alone, after the SIGHUP ones.
    pub watch_reloads: u32,
    /// The steady listener's rate, datagrams per second.
    pub steady_rate_pps: u64,
    /// Its flows.
    pub steady_flows: u32,
    /// The steady traffic's window without reloads.
    pub baseline: Duration,
    /// The probe's interval.
    pub probe_interval: Duration,
    /// CPU window per measurement.
    pub cpu_window: Duration,
    /// CPU windows per idle daemon.
    pub repeats: u32,
    /// Health-check interval.
    pub health_interval: Duration,
    /// `drain_secs` of `big`; `None`: the daemon's default.
    pub drain_secs: Option<u32>,
    /// `dataplane.workers`; `None`: the daemon's default (one per core).
    pub workers: Option<u32>,
    /// Samples of each in-process measurement.
    pub samples: u32,
    /// Run the in-process measurements.
    pub in_process: bool,
    /// Run the reload phase.
    pub reload_phase: bool,
    /// Run the idle and health phase.
    pub health_phase: bool,
    /// How long the daemon may take to start.
    pub startup_timeout: Duration,
    /// How long one reload may take to show.
    pub reload_timeout: Duration,
}

impl ControlScaleConfig {
    /// Defaults: 10,000 downstreams, 100 SIGHUP reloads then 10 by the watch, 20,000
    /// datagrams/s over 8 flows through `steady` (5 s baseline), a 1 ms probe, CPU over 3
    /// windows of 10 s, health every second.
    pub fn new(udp_fanout: PathBuf) -> Self {
        ControlScaleConfig {
            udp_fanout,
            downstreams: 10_000,
            reloads: 100,
            watch_reloads: 10,
            steady_rate_pps: 20_000,
            steady_flows: 8,
            baseline: Duration::from_secs(5),
            probe_interval: Duration::from_millis(1),
            cpu_window: Duration::from_secs(10),
            repeats: 3,
            health_interval: Duration::from_secs(1),
            drain_secs: None,
            workers: None,
            samples: 5,
            in_process: true,
            reload_phase: true,
            health_phase: true,
            startup_timeout: Duration::from_secs(60),
            reload_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the numbers before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=control_probe::MAX_SET).contains(&self.downstreams),
            "downstreams must be 1..={}",
            control_probe::MAX_SET
        );
        ensure!(
            self.steady_rate_pps > 0 && self.steady_flows > 0,
            "the steady listener needs a rate and at least one flow"
        );
        ensure!(
            !self.probe_interval.is_zero(),
            "the probe needs an interval"
        );
        ensure!(
            !self.cpu_window.is_zero() && self.repeats >= 1,
            "CPU needs a window and at least one repeat"
        );
        ensure!(
            self.health_interval >= Duration::from_millis(100),
            "health interval below 100 ms"
        );
        ensure!(self.samples >= 1, "samples must be at least 1");
        ensure!(
            self.workers.is_none_or(|w| (1..=1024).contains(&w)),
            "workers must be 1..=1024"
        );
        Ok(())
    }

    fn setup(&self) -> Setup {
        Setup {
            downstreams: self.downstreams,
            sighup_reloads: self.reloads,
            watch_reloads: self.watch_reloads,
            steady_rate_pps: self.steady_rate_pps,
            steady_flows: self.steady_flows,
            probe_interval_ms: self.probe_interval.as_secs_f64() * 1e3,
            cpu_window_s: self.cpu_window.as_secs_f64(),
            repeats: self.repeats,
            health_interval_ms: u64::try_from(self.health_interval.as_millis()).unwrap_or(u64::MAX),
            drain_secs: self.drain_secs,
            workers: self.workers,
            cpus: fanout_testkit::netns::allowed_cpus().len(),
        }
    }

    /// The reload phase's config: `big` on `file`, `steady` to `sinks`.
    pub fn reload_yaml(&self, file: &Path, sinks: &[SocketAddr]) -> String {
        let drain = self
            .drain_secs
            .map_or_else(String::new, |d| format!("    drain_secs: {d}\n"));
        let sinks: Vec<String> = sinks.iter().map(|a| format!("'{a}'")).collect();
        let mut y = format!(
            "listeners:\n  - name: {BIG}\n    bind: '127.0.0.1:0'\n    \
             distribution: consistent_hash\n    downstreams_file: '{}'\n{drain}  \
             - name: {STEADY}\n    bind: '127.0.0.1:0'\n    distribution: round_robin\n    \
             downstreams: [{}]\nmetrics: {{bind: '127.0.0.1:0'}}\n",
            file.display(),
            sinks.join(", ")
        );
        self.push_workers(&mut y);
        y
    }

    /// An idle daemon's config: `checked` on `file`, health checks every interval if
    /// `health`, an admin API to count the healthy.
    pub fn idle_yaml(&self, file: &Path, health: bool) -> String {
        let health = if health {
            format!(
                "    health: {{interval_ms: {}}}\n",
                self.health_interval.as_millis()
            )
        } else {
            String::new()
        };
        let mut y = format!(
            "listeners:\n  - name: {CHECKED}\n    bind: '127.0.0.1:0'\n    \
             distribution: consistent_hash\n    downstreams_file: '{}'\n{health}\
             metrics: {{bind: '127.0.0.1:0'}}\nadmin: {{bind: '127.0.0.1:0'}}\n",
            file.display()
        );
        self.push_workers(&mut y);
        y
    }

    fn push_workers(&self, y: &mut String) {
        if let Some(w) = self.workers {
            y.push_str(&format!("dataplane: {{workers: {w}}}\n"));
        }
    }

    fn steady_gen(&self, target: SocketAddr, duration: Duration) -> GenConfig {
        let mut g = GenConfig::new(target);
        g.rate_pps = self.steady_rate_pps;
        g.flows = self.steady_flows;
        g.duration = Some(duration);
        g
    }
}

/// Runs the scenario. `stop` (say, set by SIGINT) cuts it short; what was measured by then is
/// reported.
pub fn run(cfg: &ControlScaleConfig, stop: &AtomicBool) -> anyhow::Result<ControlScaleReport> {
    cfg.validate()?;
    if !cfg.udp_fanout.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p udp-fanout) or pass --udp-fanout",
            cfg.udp_fanout.display()
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut notes = Vec::new();
    let in_process = if cfg.in_process {
        Some(in_process(cfg, dir.path())?)
    } else {
        None
    };
    let reload = if cfg.reload_phase && !stop.load(Ordering::Relaxed) {
        Some(reload_phase(cfg, dir.path(), stop, &mut notes).context("reload phase")?)
    } else {
        None
    };
    let idle = if cfg.health_phase && !stop.load(Ordering::Relaxed) {
        idle_phase(cfg, dir.path(), stop, &mut notes).context("idle and health phase")?
    } else {
        Vec::new()
    };
    if stop.load(Ordering::Relaxed) {
        notes.push("interrupted: later measurements were skipped".to_owned());
    }
    Ok(ControlScaleReport {
        setup: cfg.setup(),
        in_process,
        reload,
        idle,
        notes,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `samples` timings of `f`, in milliseconds.
fn time_ms<T>(samples: u32, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Spread> {
    let mut v = Vec::new();
    for _ in 0..samples {
        let t0 = Instant::now();
        std::hint::black_box(f()?);
        v.push(ms(t0.elapsed()));
    }
    Spread::of(&v).context("no samples")
}

fn in_process(cfg: &ControlScaleConfig, dir: &Path) -> anyhow::Result<InProcess> {
    let n = cfg.downstreams;
    let set = loopback_set(NET_A, n, 7_000);
    let file = dir.join("in-process.txt");
    write_atomic(&file, &control_probe::downstreams_file(&set))?;
    let yaml = cfg.reload_yaml(&file, &[SocketAddr::from((Ipv4Addr::LOCALHOST, 9))]);
    let config = dir.join("in-process.yaml");
    write_atomic(&config, &yaml)?;
    let config_load_ms = time_ms(cfg.samples, || Ok(fanout_config::load(&config)?))?;
    let loaded = fanout_config::load(&config)?;
    let big = loaded
        .listeners
        .iter()
        .find(|l| l.name == BIG)
        .context("no big listener")?;
    let file_load_ms = time_ms(cfg.samples, || {
        let list = fanout_config::downstreams_file::load(&file)?;
        fanout_config::downstreams_file::check_for(big, &list, &file)?;
        anyhow::Ok(list)
    })?;
    let active: Vec<Endpoint> = set.iter().map(|a| Endpoint::new(*a)).collect();
    let maglev_build_ms = time_ms(cfg.samples, || {
        Ok(BackendSet::new(
            Distribution::ConsistentHash,
            active.clone(),
            DEFAULT_TABLE_SIZE,
        ))
    })?;
    // With drain on, a full swap leaves the old N draining beside the new N.
    let maglev_build_with_draining_ms = if cfg.drain_secs == Some(0) {
        None
    } else {
        let mut both = active.clone();
        both.extend(loopback_set(NET_B, n, 7_000).into_iter().map(|a| {
            let mut e = Endpoint::new(a);
            e.state = EndpointState::Draining;
            e
        }));
        Some(time_ms(cfg.samples, || {
            Ok(BackendSet::new(
                Distribution::ConsistentHash,
                both.clone(),
                DEFAULT_TABLE_SIZE,
            ))
        })?)
    };
    Ok(InProcess {
        config_load_ms,
        file_load_ms,
        maglev_build_ms,
        maglev_build_with_draining_ms,
    })
}

/// Writes `text` to `path` as editors do: a temporary file in the same directory, renamed
/// over, so the daemon never reads half a file.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("a file path has a name")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn secs(ticks: u64) -> f64 {
    ticks as f64 / procfs::clock_ticks()
}

fn own_ticks(pid: u32) -> anyhow::Result<u64> {
    procfs::ticks(pid)
        .map(|t| t.own)
        .context("reading the daemon's CPU time")
}

/// The daemon's drops on `listener`, by reason.
fn drops(daemon: &Daemon, listener: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = daemon.scrape()?;
    Ok(Scrape::parse(&text).nonzero_by(
        "udp_fanout_packets_dropped_total",
        &[("listener", listener)],
        "reason",
    ))
}

fn minus(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The steady window's figures from what the generator sent and the sinks saw.
fn window(
    gen_report: &GenReport,
    sink: &SinkReport,
    daemon_dropped: BTreeMap<String, u64>,
    cpu_s: f64,
) -> SteadyWindow {
    let mut lat = Latency::new(3);
    for p in &sink.ports {
        lat.merge(&p.latency_histogram);
    }
    let secs = gen_report.elapsed.as_secs_f64();
    SteadyWindow {
        secs,
        sent: gen_report.sent,
        received: sink.total_unique(),
        lost: gen_report.sent.saturating_sub(sink.total_unique()),
        duplicates: sink.total_duplicates(),
        sink_kernel_drops: sink.ports.iter().filter_map(|p| p.kernel_drops).sum(),
        daemon_dropped,
        latency: lat.summary(),
        daemon_cpu_pct: if secs > 0.0 {
            cpu_s * 100.0 / secs
        } else {
            0.0
        },
    }
}

/// The two set variants, their files' text, and the receivers they lead to.
struct Variants {
    rx: [Receiver; 2],
    text: [String; 2],
}

impl Variants {
    fn new(n: u32) -> anyhow::Result<Variants> {
        let rx = [Receiver::start()?, Receiver::start()?];
        let text = [
            control_probe::downstreams_file(&loopback_set(NET_A, n, rx[0].port())),
            control_probe::downstreams_file(&loopback_set(NET_B, n, rx[1].port())),
        ];
        Ok(Variants { rx, text })
    }
}

fn reload_phase(
    cfg: &ControlScaleConfig,
    dir: &Path,
    stop: &AtomicBool,
    notes: &mut Vec<String>,
) -> anyhow::Result<ReloadReport> {
    let variants = Variants::new(cfg.downstreams)?;
    let file = dir.join("big.txt");
    write_atomic(&file, &variants.text[0])?;
    let sink = Sink::bind(
        &[SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); 2],
        SinkOptions::default(),
    )
    .context("binding the steady sinks")?
    .start()?;
    let t0 = Instant::now();
    let mut daemon = Daemon::start(
        &cfg.udp_fanout,
        &cfg.reload_yaml(&file, sink.local_addrs()),
        cfg.startup_timeout,
    )?;
    let startup_s = t0.elapsed().as_secs_f64();
    let pid = daemon.pid()?;
    let start = procfs::sample(pid)?;
    let probe = ProbeSender::start(daemon.listener(BIG)?, cfg.probe_interval)?;
    variants.rx[0].arm();
    if variants.rx[0].wait_first(cfg.reload_timeout).is_none() {
        bail!(
            "no probe datagram reached set A through {BIG}; the daemon's log:\n{}",
            daemon.log_tail()
        );
    }
    let steady = daemon.listener(STEADY)?;
    // Baseline: the steady traffic alone.
    let drops0 = drops(&daemon, STEADY)?;
    sink.reset();
    let c0 = own_ticks(pid)?;
    let base = generator::run(&cfg.steady_gen(steady, cfg.baseline), stop)?;
    let base_cpu = secs(own_ticks(pid)?.saturating_sub(c0));
    let base_sink = sink.wait_for(base.sent, Duration::from_secs(2));
    let drops1 = drops(&daemon, STEADY)?;
    let baseline = window(&base, &base_sink, minus(&drops1, &drops0), base_cpu);
    // The reloads, with the steady traffic running throughout.
    sink.reset();
    let gen_stop = Arc::new(AtomicBool::new(false));
    let gen_cfg = cfg.steady_gen(steady, Duration::from_secs(24 * 3600));
    let gs = Arc::clone(&gen_stop);
    let gen_thread = std::thread::Builder::new()
        .name("bench-steady-gen".into())
        .spawn(move || generator::run(&gen_cfg, &gs))
        .context("starting the steady generator")?;
    let first_mark = daemon.log_mark();
    let phase_t0 = Instant::now();
    let c1 = own_ticks(pid)?;
    let mut reloads = Reloads {
        cfg,
        daemon: &daemon,
        variants: &variants,
        file: &file,
        current: 0,
        samples: Vec::new(),
        timeouts: 0,
        logged: 0,
    };
    let mut rss_trace = vec![(0, start.rss_kib)];
    let total = cfg.reloads + cfg.watch_reloads;
    let every = (total / 10).max(1);
    // Give the generator a moment, so the first reload happens under traffic.
    std::thread::sleep(Duration::from_millis(200));
    let triggers = std::iter::repeat_n(Trigger::Sighup, cfg.reloads as usize).chain(
        std::iter::repeat_n(Trigger::Watch, cfg.watch_reloads as usize),
    );
    for trigger in triggers {
        if stop.load(Ordering::Relaxed) || gen_thread.is_finished() {
            break;
        }
        reloads.one(trigger, notes)?;
        let done = reloads.samples.len() as u32;
        if done.is_multiple_of(every) || done == total {
            rss_trace.push((done, procfs::sample(pid)?.rss_kib));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    gen_stop.store(true, Ordering::Release);
    let during_gen = gen_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the steady generator panicked"))?
        .context("steady generator")?;
    let phase_s = phase_t0.elapsed().as_secs_f64();
    let phase_cpu = secs(own_ticks(pid)?.saturating_sub(c1));
    let during_sink = sink.wait_for(during_gen.sent, Duration::from_secs(3));
    let (samples, timeouts, logged) = (reloads.samples, reloads.timeouts, reloads.logged);
    let probe_sent = probe.stop()?;
    std::thread::sleep(Duration::from_millis(100));
    let probe_rx = (variants.rx[0].received(), variants.rx[1].received());
    let drops2 = drops(&daemon, STEADY)?;
    // What the steady traffic alone would have cost over the phase, at the baseline's rate.
    let traffic_cpu = if baseline.secs > 0.0 {
        base_cpu / baseline.secs * phase_s
    } else {
        0.0
    };
    let all_reloads = logged.max(1);
    let cpu_per_reload_ms = (phase_cpu - traffic_cpu).max(0.0) * 1e3 / all_reloads as f64;
    let during = window(
        &during_gen,
        &during_sink,
        minus(&drops2, &drops1),
        phase_cpu,
    );
    let end = procfs::sample(pid)?;
    let text = daemon.scrape()?;
    let scrape = Scrape::parse(&text);
    let reloads_metric = (
        scrape.get("udp_fanout_config_reloads_total", &[("result", "success")]),
        scrape.get("udp_fanout_config_reloads_total", &[("result", "error")]),
    );
    let rss_peak_kib = procfs::peak_rss_kib(pid).unwrap_or(0);
    let total_logged = count_since(&daemon, RELOADED, first_mark);
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    if !status.success() {
        notes.push(format!("the reload daemon exited with {status}"));
    }
    let pick = |t: &str| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.trigger == t)
            .filter_map(|s| s.latency_ms)
            .collect();
        Spread::of(&v)
    };
    Ok(ReloadReport {
        startup_s,
        workers: cfg.workers.or(daemon.workers()),
        rss_start_kib: start.rss_kib,
        rss_end_kib: end.rss_kib,
        rss_peak_kib,
        rss_trace,
        fds: (start.fds, end.fds),
        sighup_ms: pick("sighup"),
        watch_ms: pick("watch"),
        samples,
        timeouts,
        reloads_logged: total_logged.max(logged),
        reloads_metric,
        phase_s,
        cpu_per_reload_ms,
        probe: (probe_sent, probe_rx.0, probe_rx.1),
        baseline,
        during,
    })
}

/// Lines containing `needle` logged since `mark` (as far as the kept log reaches).
fn count_since(daemon: &Daemon, needle: &str, mark: usize) -> u64 {
    let mut n = 0;
    let mut at = mark;
    while let Ok((_, next)) = daemon.wait_log(needle, at, Duration::ZERO) {
        n += 1;
        at = next;
    }
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Write the file, then SIGHUP.
    Sighup,
    /// Write the file; the watch reloads.
    Watch,
}

/// The reload loop's state.
struct Reloads<'a> {
    cfg: &'a ControlScaleConfig,
    daemon: &'a Daemon,
    variants: &'a Variants,
    file: &'a Path,
    /// The variant serving now.
    current: usize,
    samples: Vec<ReloadSample>,
    timeouts: u32,
    /// Reloads logged by the daemon in the loop.
    logged: u64,
}

impl Reloads<'_> {
    /// One reload to the other variant: write, trigger, time the first datagram there, wait
    /// for the reloads the daemon will log.
    fn one(&mut self, trigger: Trigger, notes: &mut Vec<String>) -> anyhow::Result<()> {
        let next = 1 - self.current;
        let rx = &self.variants.rx[next];
        let mark = self.daemon.log_mark();
        rx.arm();
        write_atomic(self.file, &self.variants.text[next])?;
        let t0 = Instant::now();
        if trigger == Trigger::Sighup {
            self.daemon.signal(Signal::SIGHUP)?;
        }
        let first = rx.wait_first(self.cfg.reload_timeout);
        let latency_ms = first.map(|t| ms(t.saturating_duration_since(t0)));
        if latency_ms.is_none() {
            self.timeouts += 1;
        }
        self.samples.push(ReloadSample {
            trigger: match trigger {
                Trigger::Sighup => "sighup",
                Trigger::Watch => "watch",
            },
            latency_ms,
        });
        // A SIGHUP after a write is two reloads: the signal's, and the watch's 200 ms later.
        let expected = match trigger {
            Trigger::Sighup => 2,
            Trigger::Watch => 1,
        };
        let mut at = mark;
        for _ in 0..expected {
            match self.daemon.wait_log(RELOADED, at, self.cfg.reload_timeout) {
                Ok((_, after)) => {
                    at = after;
                    self.logged += 1;
                }
                Err(_) => {
                    notes.push(format!(
                        "a {trigger:?} reload logged fewer than {expected} `{RELOADED}` lines \
                         within {:?}",
                        self.cfg.reload_timeout
                    ));
                    break;
                }
            }
        }
        if first.is_some() {
            self.current = next;
        }
        Ok(())
    }
}

/// The idle daemons: one downstream; N without health checks; N with.
fn idle_phase(
    cfg: &ControlScaleConfig,
    dir: &Path,
    stop: &AtomicBool,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<IdleReport>> {
    let echo = Sink::bind(
        &[SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))],
        SinkOptions {
            echo: true,
            max_flows: 0,
            ..SinkOptions::default()
        },
    )
    .context("binding the health echo server")?
    .start()?;
    let port = echo.local_addrs()[0].port();
    let n = cfg.downstreams;
    let interval = cfg.health_interval.as_millis();
    let variants = [
        ("1 downstream, no health checks".to_owned(), 1, false),
        (
            format!(
                "{} downstreams, no health checks",
                crate::human::thousands(n.into())
            ),
            n,
            false,
        ),
        (
            format!(
                "**{} downstreams, UDP health checks every {interval} ms**",
                crate::human::thousands(n.into())
            ),
            n,
            true,
        ),
    ];
    let mut out = Vec::new();
    for (label, count, health) in variants {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let r = idle_one(cfg, dir, &echo, port, (label, count, health), stop, notes)?;
        out.push(r);
    }
    Ok(out)
}

fn idle_one(
    cfg: &ControlScaleConfig,
    dir: &Path,
    echo: &SinkHandle,
    port: u16,
    (label, count, health): (String, u32, bool),
    stop: &AtomicBool,
    notes: &mut Vec<String>,
) -> anyhow::Result<IdleReport> {
    let file = dir.join(format!("checked-{count}-{health}.txt"));
    write_atomic(
        &file,
        &control_probe::downstreams_file(&loopback_set(NET_HEALTH, count, port)),
    )?;
    let t0 = Instant::now();
    let mut daemon = Daemon::start(
        &cfg.udp_fanout,
        &cfg.idle_yaml(&file, health),
        cfg.startup_timeout,
    )?;
    let startup_s = t0.elapsed().as_secs_f64();
    let pid = daemon.pid()?;
    let (mut all_healthy_s, mut healthy, mut warmup_cpu_s) = (None, None, None);
    let mut polls = 0u32;
    if health {
        let c0 = own_ticks(pid)?;
        let ready = Instant::now();
        let limit = cfg.health_interval * 4 + Duration::from_secs(30);
        loop {
            let h = healthy_count(&daemon)?;
            polls += 1;
            healthy = Some(h);
            if h >= u64::from(count) {
                all_healthy_s = Some(ready.elapsed().as_secs_f64());
                break;
            }
            if ready.elapsed() > limit || stop.load(Ordering::Relaxed) {
                notes.push(format!(
                    "{label}: only {h} of {count} healthy {:.0} s after ready",
                    ready.elapsed().as_secs_f64()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        warmup_cpu_s = Some(secs(own_ticks(pid)?.saturating_sub(c0)));
    } else {
        // Let start-up settle (the first sync, the first scrape-free second).
        std::thread::sleep(Duration::from_secs(1));
    }
    let (mut cpu, mut probes) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeats {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (c0, e0, w0) = (own_ticks(pid)?, echo.total_datagrams(), Instant::now());
        std::thread::sleep(cfg.cpu_window);
        let (c1, e1, took) = (own_ticks(pid)?, echo.total_datagrams(), w0.elapsed());
        let s = took.as_secs_f64();
        cpu.push(secs(c1.saturating_sub(c0)) * 100.0 / s);
        probes.push(e1.saturating_sub(e0) as f64 / s);
    }
    // What the wait's admin API polls cost the daemon (each lists every downstream).
    let poll_cpu_ms = if health {
        const POLLS: u32 = 3;
        let c0 = own_ticks(pid)?;
        for _ in 0..POLLS {
            healthy_count(&daemon)?;
        }
        Some(secs(own_ticks(pid)?.saturating_sub(c0)) * 1e3 / f64::from(POLLS))
    } else {
        None
    };
    let sample = procfs::sample(pid)?;
    let checks = if health {
        let text = daemon.scrape()?;
        let scrape = Scrape::parse(&text);
        let sum = |result: &str| -> u64 {
            scrape
                .nonzero_by(
                    "udp_fanout_health_checks_total",
                    &[("listener", CHECKED), ("result", result)],
                    "endpoint",
                )
                .values()
                .sum()
        };
        Some((sum("success"), sum("failure")))
    } else {
        None
    };
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    if !status.success() {
        notes.push(format!("{label}: the daemon exited with {status}"));
    }
    Ok(IdleReport {
        label,
        downstreams: count,
        health,
        startup_s,
        cpu_pct: Spread::of(&cpu),
        rss_kib: sample.rss_kib,
        fds: sample.fds,
        probes_per_s: if health { Spread::of(&probes) } else { None },
        all_healthy_s,
        healthy,
        warmup_cpu_s,
        polls,
        poll_cpu_ms,
        checks,
    })
}

/// Downstreams of `checked` the admin API calls healthy.
fn healthy_count(daemon: &Daemon) -> anyhow::Result<u64> {
    let (code, body) =
        daemon.admin_request("GET", &format!("/v1/listeners/{CHECKED}"), None, None)?;
    ensure!(code == 200, "GET /v1/listeners/{CHECKED}: {code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).context("the admin API's JSON")?;
    let list = v["downstreams"]
        .as_array()
        .context("no downstreams in the admin API's answer")?;
    Ok(list.iter().filter(|d| d["health"] == "healthy").count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ControlScaleConfig {
        ControlScaleConfig::new(PathBuf::from("/nonexistent/udp-fanout"))
    }

    #[test]
    fn defaults_are_valid_and_configs_parse() {
        let mut c = cfg();
        c.validate().unwrap();
        let y = c.reload_yaml(
            Path::new("/tmp/big.txt"),
            &[
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        );
        fanout_testkit::assert_contains(
            &y,
            &[
                "name: big",
                "distribution: consistent_hash",
                "downstreams_file: '/tmp/big.txt'",
                "downstreams: ['127.0.0.1:1', '127.0.0.1:2']",
            ],
        );
        assert!(!y.contains("drain_secs"), "{y}");
        fanout_config::from_yaml(&y).unwrap();
        c.drain_secs = Some(0);
        c.workers = Some(2);
        let y = c.reload_yaml(Path::new("/tmp/big.txt"), &["127.0.0.1:1".parse().unwrap()]);
        let parsed = fanout_config::from_yaml(&y).unwrap();
        assert_eq!(parsed.listeners[0].drain, Duration::ZERO);
        let y = c.idle_yaml(Path::new("/tmp/c.txt"), true);
        fanout_testkit::assert_contains(&y, &["health: {interval_ms: 1000}", "admin: {bind"]);
        fanout_config::from_yaml(&y).unwrap();
        fanout_config::from_yaml(&c.idle_yaml(Path::new("/tmp/c.txt"), false)).unwrap();
    }

    #[test]
    fn impossible_settings_are_rejected() {
        for c in [
            ControlScaleConfig {
                downstreams: 0,
                ..cfg()
            },
            ControlScaleConfig {
                downstreams: control_probe::MAX_SET + 1,
                ..cfg()
            },
            ControlScaleConfig {
                repeats: 0,
                ..cfg()
            },
            ControlScaleConfig {
                steady_rate_pps: 0,
                ..cfg()
            },
            ControlScaleConfig {
                health_interval: Duration::from_millis(10),
                ..cfg()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = run(&cfg(), &AtomicBool::new(false)).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.txt");
        write_atomic(&f, "a\n").unwrap();
        write_atomic(&f, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
