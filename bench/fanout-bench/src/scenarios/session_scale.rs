//! The `sessions` scenario: how many client sessions udp-fanout holds, what each one costs,
//! and how fast replies flow through them.
//!
//! A proxy with a reply path keeps state per client (a session, an upstream port to send
//! from, a route back), so its capacity is a question of memory and file descriptors as much
//! as of packets per second, and none of that shows in a plain throughput test with a handful
//! of clients. This scenario creates N real sessions, one per distinct client address, and
//! measures the daemon from outside, as an operator would:
//!
//! 1. D echo backends start in-process: one [`Sink`] serving D ports (one thread for all of
//!    them, which on a small machine leaves the cores to the daemon under test), tracking no
//!    flows, since 100,000 flows' bookkeeping would cost the bench gigabytes for numbers
//!    nobody reads here.
//! 2. udp-fanout starts on a generated config (one round-robin listener with sticky sessions
//!    and replies, room for N sessions plus headroom for the uneven split over workers).
//! 3. Baseline: the daemon's resident memory and descriptors, the namespace's UDP sockets.
//! 4. Fill: one request from each of N client addresses, paced, every echo awaited. The
//!    clients come from `127.0.0.1`, `127.0.0.2`, … on explicit ports below the ephemeral
//!    range, which stays free for the daemon's upstream sockets (see `generator::sockets`),
//!    all at once or, where the open-file limit forbids, in groups (see `session_clients`).
//! 5. The same readings again, and the session metrics: the differences per session are the
//!    session's cost.
//! 6. Throughput: the same N clients (same addresses, so the same sessions) send as fast as
//!    they can for a while; requests and replies per second, loss and round-trip time.
//! 7. SIGTERM, and a report.
//!
//! It is a benchmark, not a test: it asserts nothing and reports what it saw, including drops
//! and evictions, so that a run that hit a limit says which one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use super::session_clients::{self, ClientPlan};
use super::session_report::{
    Phase, Readings, SessionMetrics, SessionScaleReport, SinkSummary, Stage,
};
use crate::generator::{self, GenConfig, GenReport};
use crate::sink::{Sink, SinkHandle, SinkOptions};
use fanout_testkit::daemon::Daemon;
use fanout_testkit::procfs;

/// The listener's name in the generated config and in the metrics.
pub const LISTENER: &str = "bench";

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionScaleConfig {
    /// The `udp-fanout` binary.
    pub udp_fanout: PathBuf,
    /// Client sessions to create (N).
    pub sessions: u32,
    /// Echo backends (D).
    pub downstreams: usize,
    /// Requests per second while creating the sessions.
    pub fill_rate_pps: u64,
    /// Length of the throughput phase.
    pub duration: Duration,
    /// Requests per second in the throughput phase; 0 = as fast as possible.
    pub throughput_rate_pps: u64,
    /// `dataplane.workers`; `None` = the daemon's default (one per core).
    pub workers: Option<u32>,
    /// The first client address; the others follow it.
    pub client_ip_base: Ipv4Addr,
    /// The client ports on each client address.
    pub client_ports: (u16, u16),
    /// Clients per address, at most (and at most the size of the port range); fewer than
    /// the range holds leaves room for busy ports.
    pub clients_per_ip: u32,
    /// Most clients at once; `None`: as many as the open-file limit allows.
    pub max_group: Option<u32>,
    /// Request (and reply) size in bytes.
    pub size: usize,
    /// How long the fill waits for the last replies.
    pub fill_grace: Duration,
    /// How long the daemon may take to start.
    pub startup_timeout: Duration,
}

impl SessionScaleConfig {
    /// Defaults: 100,000 sessions over 8 backends, filled at 50,000 requests/s, 10 s flat
    /// out; clients from 127.0.0.1 on ports 10000–30000, at most 18,000 per address.
    pub fn new(udp_fanout: PathBuf) -> Self {
        SessionScaleConfig {
            udp_fanout,
            sessions: 100_000,
            downstreams: 8,
            fill_rate_pps: 50_000,
            duration: Duration::from_secs(10),
            throughput_rate_pps: 0,
            workers: None,
            client_ip_base: Ipv4Addr::LOCALHOST,
            client_ports: (10_000, 30_000),
            clients_per_ip: 18_000,
            max_group: None,
            size: 64,
            fill_grace: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the numbers before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (lo, hi) = self.client_ports;
        ensure!(self.sessions >= 1, "sessions must be at least 1");
        ensure!(
            self.max_sessions() <= 1 << 24,
            "{} sessions (with headroom {}) exceed udp-fanout's max_sessions limit of {}",
            self.sessions,
            self.max_sessions(),
            1 << 24
        );
        ensure!(
            (1..=1024).contains(&self.downstreams),
            "downstreams must be 1..=1024"
        );
        ensure!(
            self.workers.is_none_or(|w| (1..=1024).contains(&w)),
            "workers must be 1..=1024"
        );
        ensure!(
            !self.duration.is_zero(),
            "the throughput phase needs a duration"
        );
        ensure!(self.fill_rate_pps > 0, "the fill needs a rate (requests/s)");
        ensure!(
            lo >= 1 && lo <= hi,
            "client ports {lo}-{hi} are not a range of ports 1..=65535"
        );
        ensure!(
            self.clients_per_ip >= 1,
            "clients per address must be at least 1"
        );
        ensure!(
            self.size >= crate::payload::HEADER_LEN,
            "requests of {} bytes would carry no header to time replies by",
            self.size
        );
        Ok(())
    }

    /// `max_sessions` for the daemon: N plus a quarter (at least 64). udp-fanout divides it
    /// evenly over its workers while the kernel's SO_REUSEPORT hash spreads clients only
    /// about evenly; without headroom the fuller worker would evict sessions.
    pub fn max_sessions(&self) -> u64 {
        let n = u64::from(self.sessions);
        n + (n / 4).max(64)
    }

    /// Clients per address: `clients_per_ip`, or fewer if the port range is smaller.
    pub fn clients_per_ip(&self) -> u32 {
        let (lo, hi) = self.client_ports;
        let ports = u32::from(hi.saturating_sub(lo)) + 1;
        self.clients_per_ip.clamp(1, ports)
    }

    /// The daemon's config, with the backends at `sinks`.
    pub fn daemon_yaml(&self, sinks: &[SocketAddr]) -> String {
        let downstreams: Vec<String> = sinks.iter().map(|a| format!("'{a}'")).collect();
        let mut y = format!(
            "listeners:\n  - name: {LISTENER}\n    bind: '127.0.0.1:0'\n    \
             distribution: round_robin\n    downstreams: [{}]\n    \
             session: {{reply: true, sticky: true, max_sessions: {}, idle_timeout_secs: 600}}\n\
             metrics: {{bind: '127.0.0.1:0'}}\n",
            downstreams.join(", "),
            self.max_sessions()
        );
        if let Some(w) = self.workers {
            y.push_str(&format!("dataplane: {{workers: {w}}}\n"));
        }
        y
    }

    /// The generator's settings for one group of `flows` clients on `ips`, replies awaited.
    fn gen_config(&self, target: SocketAddr, ips: &[IpAddr], flows: u32) -> GenConfig {
        let mut g = GenConfig::new(target);
        g.flows = flows;
        g.bind_ips = ips.to_vec();
        g.bind_ports = Some(self.client_ports);
        g.sizes = vec![self.size];
        g.expect_replies = true;
        // The kernel default (about 200 KiB) is plenty for a few replies per client and keeps
        // N sockets' worth of buffer limits modest.
        g.socket_buffer = 0;
        g
    }
}

/// The `udp-fanout` binary next to the running executable (`target/release/udp-fanout` for
/// `target/release/udp-fanout-bench`).
pub fn default_udp_fanout() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    Ok(dir.join("udp-fanout"))
}

/// Runs the scenario. `stop` (say, set by SIGINT) cuts the current phase short and skips the
/// rest; the daemon is stopped and a report returned all the same.
pub fn run(cfg: &SessionScaleConfig, stop: &AtomicBool) -> anyhow::Result<SessionScaleReport> {
    cfg.validate()?;
    if !cfg.udp_fanout.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p udp-fanout) or pass --udp-fanout",
            cfg.udp_fanout.display()
        );
    }
    let mut notes = Vec::new();
    let budget = session_clients::budget(cfg, &mut notes)?;
    let plan = ClientPlan::new(cfg, budget.clients)?;
    let sink = start_sinks(cfg.downstreams)?;
    let mut daemon = Daemon::start(
        &cfg.udp_fanout,
        &cfg.daemon_yaml(sink.local_addrs()),
        cfg.startup_timeout,
    )?;
    let target = daemon.listener(LISTENER)?;
    let pid = daemon.pid()?;
    let baseline = procfs::sample(pid)?;
    let mut phases = Phases {
        cfg,
        plan: &plan,
        target,
        daemon: &mut daemon,
        pid,
    };
    let fill = phases.fill(stop)?;
    let throughput = if stop.load(Ordering::Relaxed) {
        notes.push("interrupted: the throughput phase was skipped".to_owned());
        None
    } else {
        Some(phases.throughput(stop)?)
    };
    let shutdown = daemon.terminate(Duration::from_secs(30))?;
    let readings = Readings {
        workers: cfg.workers.or(daemon.workers()),
        nofile: budget.nofile,
        plan,
        baseline,
        fill,
        throughput,
        shutdown,
        sink: SinkSummary::from(&sink.stop()),
        notes,
    };
    Ok(SessionScaleReport::build(cfg, readings))
}

fn start_sinks(downstreams: usize) -> anyhow::Result<SinkHandle> {
    let addrs = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); downstreams];
    let opts = SinkOptions {
        echo: true,
        max_flows: 0,
        ..SinkOptions::default()
    };
    Sink::bind(&addrs, opts)
        .context("binding the echo backends")?
        .start()
        .context("starting the echo backends")
}

/// The running pieces the phases share.
struct Phases<'a> {
    cfg: &'a SessionScaleConfig,
    plan: &'a ClientPlan,
    target: SocketAddr,
    daemon: &'a mut Daemon,
    pid: u32,
}

impl Phases<'_> {
    /// One request per client, paced, every reply awaited: this creates the sessions.
    fn fill(&mut self, stop: &AtomicBool) -> anyhow::Result<Stage> {
        self.stage(stop, |cfg, g| {
            g.count = Some(u64::from(g.flows));
            g.rate_pps = cfg.fill_rate_pps;
            g.reply_grace = cfg.fill_grace;
        })
        .context("fill phase")
    }

    /// All clients again, flat out (or at the configured rate) for the duration, which the
    /// groups share.
    fn throughput(&mut self, stop: &AtomicBool) -> anyhow::Result<Stage> {
        let groups = u32::try_from(self.plan.groups.len())
            .unwrap_or(u32::MAX)
            .max(1);
        self.stage(stop, |cfg, g| {
            g.duration = Some(cfg.duration / groups);
            g.rate_pps = cfg.throughput_rate_pps;
            g.reply_grace = Duration::from_secs(1);
        })
        .context("throughput phase")
    }

    /// Runs the client groups one after the other, each set up by `setup`, then reads the
    /// daemon's process and metrics.
    fn stage(
        &mut self,
        stop: &AtomicBool,
        setup: impl Fn(&SessionScaleConfig, &mut GenConfig),
    ) -> anyhow::Result<Stage> {
        let mut reports: Vec<GenReport> = Vec::with_capacity(self.plan.groups.len());
        for (ips, flows) in &self.plan.groups {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let mut g = self.cfg.gen_config(self.target, ips, *flows);
            setup(self.cfg, &mut g);
            reports.push(generator::run(&g, stop)?);
            self.daemon.check_alive()?;
        }
        let daemon = procfs::sample(self.pid)?;
        let text = self.daemon.scrape()?;
        Ok(Stage {
            clients: Phase::merge(&reports),
            daemon,
            metrics: SessionMetrics::parse(&text, LISTENER),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionScaleConfig {
        SessionScaleConfig::new(PathBuf::from("/nonexistent/udp-fanout"))
    }

    #[test]
    fn defaults_are_valid_and_spread_clients_over_addresses() {
        let c = cfg();
        c.validate().unwrap();
        let plan = ClientPlan::new(&c, u64::from(c.sessions)).unwrap();
        let ips = plan.ips;
        assert_eq!(ips.len(), 6);
        assert_eq!(ips[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(ips[5], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
        assert_eq!(c.max_sessions(), 125_000);
        let small = SessionScaleConfig {
            sessions: 2_000,
            client_ports: (22_000, 22_999),
            ..cfg()
        };
        assert_eq!(small.clients_per_ip(), 1_000);
        let mut g = c.gen_config("127.0.0.1:9".parse().unwrap(), &ips, c.sessions);
        g.count = Some(1);
        g.validate().unwrap();
    }

    #[test]
    fn the_daemon_config_has_the_session_settings() {
        let mut c = cfg();
        c.sessions = 2_000;
        c.workers = Some(2);
        let y = c.daemon_yaml(&[
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ]);
        fanout_testkit::assert_contains(
            &y,
            &[
                "downstreams: ['127.0.0.1:1', '127.0.0.1:2']",
                "max_sessions: 2500",
                "reply: true, sticky: true",
                "idle_timeout_secs: 600",
                "dataplane: {workers: 2}",
                "metrics: {bind: '127.0.0.1:0'}",
            ],
        );
    }

    #[test]
    fn impossible_settings_are_rejected() {
        let bad = [
            SessionScaleConfig {
                sessions: 0,
                ..cfg()
            },
            SessionScaleConfig {
                downstreams: 0,
                ..cfg()
            },
            SessionScaleConfig {
                duration: Duration::ZERO,
                ..cfg()
            },
            SessionScaleConfig {
                client_ports: (30_000, 10_000),
                ..cfg()
            },
            SessionScaleConfig {
                clients_per_ip: 0,
                ..cfg()
            },
            SessionScaleConfig {
                workers: Some(0),
                ..cfg()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = run(&cfg(), &AtomicBool::new(false)).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
