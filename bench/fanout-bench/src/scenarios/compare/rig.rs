//! A peer wired up for one scenario: its sinks, the proxy process(es), where the generator
//! sends from and to; and one measurement at a fixed rate through it.
//!
//! A rig lives for all the measurements of one (scenario, peer) pair: the proxy's config
//! names the sinks' addresses, so the sinks stay and are reset between measurements, and the
//! generator reuses the same client addresses (explicit source ports), so a proxy with
//! sessions keeps them instead of creating new ones at every step. Each measurement has its
//! own stream id; only that stream's datagrams are counted.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::measure::{self, FanoutCounters, Point, ProcCost};
use super::netns::{CLIENT_IP, Topology, VIP, VIP_PORT};
use super::placement::{NsPath, Pinning, on_thread};
use super::procs::{self, Procs};
use super::scenario::{Shape, Spec};
use crate::generator::{self, GenConfig};
use crate::sink::{Sink, SinkHandle, SinkOptions, SinkReport};
use fanout_testkit::daemon::Daemon;
use fanout_testkit::prom::Scrape;

/// What every peer's start needs.
#[derive(Debug, Clone)]
pub(crate) struct Ctx<'a> {
    /// The udp-fanout binary.
    pub(crate) udp_fanout: &'a std::path::Path,
    /// Where the bench's threads run.
    pub(crate) pinning: Pinning,
    /// Proxies end by themselves after this long, whatever happens to the bench.
    pub(crate) lifetime: Duration,
    /// The source address of the flows on loopback.
    pub(crate) client_ip: IpAddr,
    /// Their source ports.
    pub(crate) client_ports: (u16, u16),
    /// How long a peer may take to become ready.
    pub(crate) startup: Duration,
}

/// The proxy under test.
#[derive(Debug)]
pub(crate) enum Proxy {
    /// Nothing between generator and sinks (direct), or the kernel (nftables).
    None,
    /// Third-party processes.
    Procs(Procs),
    /// udp-fanout, observed through its metrics as well.
    Fanout(Box<Daemon>),
}

impl Proxy {
    fn pids(&self) -> Vec<u32> {
        match self {
            Proxy::None => Vec::new(),
            Proxy::Procs(p) => p.pids(),
            Proxy::Fanout(d) => d.pid().ok().into_iter().collect(),
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Proxy::None => Ok(()),
            Proxy::Procs(p) => p.check_alive(),
            Proxy::Fanout(d) => d.check_alive(),
        }
    }

    fn counters(&self) -> Option<FanoutCounters> {
        match self {
            Proxy::Fanout(d) => {
                let text = d.scrape().ok()?;
                Some(FanoutCounters::parse(&Scrape::parse(&text)))
            }
            _ => None,
        }
    }

    /// Its log's last lines, for errors.
    pub(crate) fn logs(&self) -> String {
        match self {
            Proxy::None => String::new(),
            Proxy::Procs(p) => p.logs(),
            Proxy::Fanout(d) => d.log_tail(),
        }
    }
}

/// How the generator is placed.
#[derive(Debug, Clone)]
pub(crate) struct GenPlacement {
    /// The namespace it runs in (none: the bench's own).
    pub(crate) ns: Option<NsPath>,
    /// Its source address.
    pub(crate) client_ip: IpAddr,
    /// Direct: the other sinks (split over, or copied to with `copy`).
    pub(crate) extra_targets: Vec<SocketAddr>,
    /// Direct mirror: every datagram to every sink.
    pub(crate) copy: bool,
}

/// A peer ready to be measured. Fields drop in order: the proxy first, the namespaces last.
#[derive(Debug)]
pub(crate) struct Rig {
    pub(crate) proxy: Proxy,
    pub(crate) sinks: SinkHandle,
    pub(crate) target: SocketAddr,
    pub(crate) placement: GenPlacement,
    pub(crate) topology: Option<Topology>,
}

/// Receive (and echo) buffer of each sink socket: 32 MiB, so that a sink thread
/// descheduled for a few milliseconds does not drop 64,000-byte datagrams (8 MiB holds only
/// about 120 of them); the same for every peer.
pub(crate) const SINK_BUFFER: usize = 32 << 20;

/// Binds sinks on `addrs` (echoing for request/response) inside `ns`, served by a thread
/// pinned to `cpu`.
pub(crate) fn start_sinks(
    addrs: &[SocketAddr],
    echo: bool,
    ns: Option<&NsPath>,
    cpu: Option<usize>,
) -> anyhow::Result<SinkHandle> {
    let opts = SinkOptions {
        echo,
        recv_buffer: SINK_BUFFER,
        ..SinkOptions::default()
    };
    on_thread(ns, cpu, || {
        Sink::bind(addrs, opts)
            .context("binding the sinks")?
            .start()
            .context("starting the sinks")
    })
}

/// Two loopback sinks on ports the kernel picks.
pub(crate) fn loopback_sinks(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<SinkHandle> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let echo = spec.shape == Shape::RequestReply;
    start_sinks(
        &[any; super::scenario::DOWNSTREAMS],
        echo,
        None,
        ctx.pinning.sink,
    )
}

/// A free UDP port on 127.0.0.1 (free when looked at; the peer binds it right after).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(s.local_addr()?.port())
}

/// How long the sinks must see nothing new before a measurement counts as over when all
/// the datagrams expected have arrived, and when some are still missing (a proxy descheduled
/// for a moment on a busy machine must not be taken for one that lost them).
const QUIET: Duration = Duration::from_millis(100);
const QUIET_SHORT_OF_EXPECTED: Duration = Duration::from_millis(400);
/// Longest wait for the sinks to go quiet.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl Rig {
    /// A rig on loopback: the generator sends from `ctx.client_ip` to `target`.
    pub(crate) fn loopback(
        proxy: Proxy,
        sinks: SinkHandle,
        target: SocketAddr,
        ctx: &Ctx<'_>,
    ) -> Rig {
        Rig {
            proxy,
            sinks,
            target,
            placement: GenPlacement {
                ns: None,
                client_ip: ctx.client_ip,
                extra_targets: Vec::new(),
                copy: false,
            },
            topology: None,
        }
    }

    /// A rig on loopback through third-party processes `p` that listen on 127.0.0.1:`port`,
    /// returned once the port is bound and `spec`'s traffic gets through.
    pub(crate) fn procs_on_loopback(
        p: Procs,
        sinks: SinkHandle,
        port: u16,
        spec: &Spec,
        ctx: &Ctx<'_>,
    ) -> anyhow::Result<Rig> {
        procs::wait_udp_bound(port, 1, ctx.startup)?;
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let mut rig = Rig::loopback(Proxy::Procs(p), sinks, target, ctx);
        rig.wait_ready(spec, ctx.startup)?;
        Ok(rig)
    }

    /// A rig through the router namespace of `topo` (the in-kernel peers): the generator
    /// sends from the client namespace to the VIP, the sinks live in the backend namespace.
    pub(crate) fn routed(proxy: Proxy, sinks: SinkHandle, topo: Topology) -> Rig {
        Rig {
            proxy,
            sinks,
            target: SocketAddr::from((VIP, VIP_PORT)),
            placement: GenPlacement {
                ns: Some(topo.client()),
                client_ip: CLIENT_IP.into(),
                extra_targets: Vec::new(),
                copy: false,
            },
            topology: Some(topo),
        }
    }

    /// The peer's process ids.
    pub(crate) fn proxy_pids(&self) -> Vec<u32> {
        self.proxy.pids()
    }

    /// Sends small probe datagrams until the sinks see them (every sink, for a mirror), then
    /// resets the sinks: the peer is up end to end.
    pub(crate) fn wait_ready(&mut self, spec: &Spec, timeout: Duration) -> anyhow::Result<()> {
        let want_all = spec.shape == Shape::Mirror;
        let (target, sinks) = (self.target, &self.sinks);
        let bind = SocketAddr::new(self.placement.client_ip, 0);
        let ready = on_thread(self.placement.ns.as_ref(), None, || {
            let s = UdpSocket::bind(bind).context("binding the probe socket")?;
            let end = Instant::now() + timeout;
            while Instant::now() < end {
                let _ = s.send_to(b"probe", target);
                std::thread::sleep(Duration::from_millis(20));
                let r = sinks.snapshot();
                let seen = r.ports.iter().filter(|p| p.datagrams > 0).count();
                if seen == r.ports.len() || (!want_all && seen > 0) {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if !ready {
            self.proxy.check_alive()?;
            bail!(
                "no probe datagram reached the sinks through {target} within {timeout:?}\n{}",
                self.proxy.logs()
            );
        }
        self.drain(0);
        self.sinks.reset();
        Ok(())
    }

    /// Waits until the sinks have seen nothing new for a moment (a longer one while fewer
    /// than `expected` datagrams have arrived).
    fn drain(&self, expected: u64) {
        let end = Instant::now() + DRAIN_LIMIT;
        let mut last = self.sinks.total_datagrams();
        let mut since = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sinks.total_datagrams();
            let quiet = if now >= expected {
                QUIET
            } else {
                QUIET_SHORT_OF_EXPECTED
            };
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// The generator's settings for one measurement.
    fn gen_config(&self, spec: &Spec, rate: u64, d: Duration, ctx: &Ctx<'_>) -> GenConfig {
        let mut g = GenConfig::new(self.target);
        g.rate_pps = rate;
        g.flows = spec.flows;
        g.sizes = vec![spec.size];
        g.duration = Some(d);
        g.bind_ips = vec![self.placement.client_ip];
        g.bind_ports = Some(ctx.client_ports);
        g.expect_replies = spec.shape == Shape::RequestReply;
        g.reply_grace = Duration::from_millis(500);
        g.extra_targets.clone_from(&self.placement.extra_targets);
        g.copy_to_all_targets = self.placement.copy;
        g
    }

    /// One measurement: `rate` datagrams (requests) per second for `d`, then the sinks
    /// drained and everything counted.
    pub(crate) fn run_point(
        &mut self,
        spec: &Spec,
        rate: u64,
        d: Duration,
        ctx: &Ctx<'_>,
        stop: &AtomicBool,
    ) -> anyhow::Result<Point> {
        self.sinks.reset();
        let pids_before = self.proxy.pids();
        let cpu0 = procs::cpu_seconds_of(&pids_before);
        let mark = procs::foreign_mark(&pids_before);
        let drops0 = kernel_drops(&self.sinks.snapshot());
        let snmp0 = measure::udp_rcvbuf_errors();
        let fanout0 = self.proxy.counters();
        let cfg = self.gen_config(spec, rate, d, ctx);
        let started = Instant::now();
        let ns = self.placement.ns.as_ref();
        let gen_report = on_thread(ns, ctx.pinning.generator, || {
            generator::run(&cfg, stop).context("running the generator")
        })?;
        self.drain(gen_report.sent * spec.copies() as u64);
        let elapsed = started.elapsed();
        let report = self.sinks.snapshot();
        let mut pids = self.proxy.pids();
        let gone: Vec<u32> = pids_before
            .into_iter()
            .filter(|p| !pids.contains(p))
            .collect();
        pids.extend(gone);
        let foreign = procs::foreign_since(mark, &pids);
        let cost = ProcCost {
            cpu_seconds: (!pids.is_empty()).then(|| procs::cpu_seconds_of(&pids) - cpu0),
            peak_rss_kib: pids.iter().filter_map(|&p| procs::peak_rss_kib(p)).sum(),
        };
        let fanout = match (fanout0, self.proxy.counters()) {
            (Some(a), Some(b)) => Some(b.minus(&a)),
            _ => None,
        };
        self.proxy.check_alive()?;
        let mut p = measure::point(spec, rate, &gen_report, &report, cost, elapsed);
        p.sink_kernel_drops = kernel_drops(&report).saturating_sub(drops0);
        p.rcvbuf_errors = match (snmp0, measure::udp_rcvbuf_errors()) {
            (Some(a), Some(b)) if self.placement.ns.is_none() => Some(b.saturating_sub(a)),
            _ => None,
        };
        p.fanout = fanout;
        p.foreign_cpu = foreign;
        Ok(p)
    }

    /// Stops the proxy, then the sinks, then deletes the namespaces; returns the sinks'
    /// final report.
    pub(crate) fn finish(mut self) -> SinkReport {
        if let Proxy::Fanout(d) = &mut self.proxy {
            let _ = d.terminate(Duration::from_secs(5));
        }
        self.proxy = Proxy::None;
        let report = self.sinks.stop();
        drop(self.topology);
        report
    }
}

fn kernel_drops(r: &SinkReport) -> u64 {
    r.ports.iter().filter_map(|p| p.kernel_drops).sum()
}
