//! One measured window: start a mode, warm it up, read every counter, generate, drain, read
//! them again, stop the mode; and the checks that the counters of a window add up.
//!
//! The counters come from everywhere a frame can be seen or lost, so that every frame the
//! generator made is accounted for: the generator's own count, the client veth's
//! `xdp_xmit_errors`, the load balancer veth's rx counter, the sinks' per-backend counts (and
//! checksums), the plane's own counters (received, forwarded, per downstream, socket drops),
//! the backend-facing veths' tx drops and the namespace's UDP buffer errors.
//!
//! A third-party proxy (a [`Mode::Peer`]) is started by the caller's [`StartExternal`]; the
//! window waits until it has bound its sockets and forwards a probe before measuring, and
//! settles (waits until the backends' counters stop moving) after the warm-up, because a
//! proxy that is still creating sessions would otherwise deliver warm-up datagrams inside the
//! window. It has no counters of its own to check: its datagrams are balanced against the
//! namespace's UDP receive-buffer errors instead.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fanout_core::ListenerSnapshot;

use crate::cpu::Cpu;
use crate::external::{ExternalSpec, StartExternal, wait_bound};
use crate::generator::Aim;
use crate::modes::{Mode, Running, Traffic, config, start_kernel};
use crate::object::BenchObject;
use crate::sink::{SINK_SLOTS, SLOT_LB, SLOT_OTHER, SinkStats};
use crate::topology::{BACKEND_PORT, BACKENDS, LbCounters, PORT, Topology, VIP, backend_ip};
use fanout_userspace::UserspacePlane;

/// Time after the generator stops for queues (socket buffers, workers) to drain: measuring.
pub const DRAIN: Duration = Duration::from_millis(150);
/// Datagrams one UDP GRO skb may hold (the kernel's UDP_GRO_CNT_MAX): a socket drop of a
/// GRO skb loses up to that many.
pub const UDP_GRO_MAX_SEGS: u64 = 64;
/// The same for brief checks at a low rate.
pub const CHECK_DRAIN: Duration = Duration::from_millis(80);
/// The rate of brief checks (low enough that nothing may be lost).
pub const CHECK_RATE: u64 = 20_000;
/// The window of brief checks.
pub const CHECK_WINDOW: Duration = Duration::from_millis(200);

/// Counters read before and after a window.
#[derive(Debug, Clone, Default)]
struct Counters {
    generated: u64,
    sink: [SinkStats; SINK_SLOTS],
    plane: Option<ListenerSnapshot>,
    xmit_errors: u64,
    lb: LbCounters,
}

/// One measured window.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What ran.
    pub mode: Mode,
    /// The traffic.
    pub traffic: Traffic,
    /// The round (set by the caller).
    pub round: u64,
    /// Frames generated (the program's own count).
    pub offered: u64,
    /// Frames the generator threads asked for.
    pub asked: u64,
    /// Frames counted at the expected destinations, all copies (generator only: at the lb's
    /// ingress).
    pub delivered: u64,
    /// Per backend.
    pub per_backend: [u64; BACKENDS],
    /// Of `delivered`, with valid checksums.
    pub csum_ok: u64,
    /// Frames at the sinks that nobody expected.
    pub other: u64,
    /// How long the generator ran.
    pub gen_time: Duration,
    /// The whole window (generation and drain).
    pub window: Duration,
    /// CPU used over the window.
    pub cpu: Cpu,
    /// The plane's counters over the window.
    pub plane: Option<ListenerSnapshot>,
    /// How the plane was attached.
    pub attach: String,
    /// Frames the client veth could not hand to its peer (`xdp_xmit_errors`: its ring full).
    pub xmit_errors: u64,
    /// The load balancer's counters over the window.
    pub lb: LbCounters,
}

impl Sample {
    /// Frames generated per second.
    pub fn offered_pps(&self) -> f64 {
        self.offered as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }

    /// Frames delivered (all copies) per second.
    pub fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }

    /// Datagrams the client sent (a plain "mirror" sends two frames per datagram).
    pub fn datagrams_offered(&self) -> u64 {
        self.offered / self.traffic.frames_per_datagram(self.mode)
    }

    /// Datagrams delivered: frames at the sinks over copies per datagram.
    pub fn datagrams_delivered(&self) -> u64 {
        if self.mode == Mode::GenOnly {
            return self.delivered;
        }
        self.delivered / self.traffic.copies()
    }

    /// Datagrams delivered per second.
    pub fn datagrams_pps(&self) -> f64 {
        self.datagrams_delivered() as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }

    /// Copies expected at the sinks: datagrams offered times copies.
    pub fn expected(&self) -> u64 {
        if self.mode == Mode::GenOnly {
            return self.offered;
        }
        self.datagrams_offered() * self.traffic.copies()
    }

    /// Share of expected copies that did not arrive, %.
    pub fn loss_pct(&self) -> f64 {
        let e = self.expected();
        if e == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.delivered as f64 / e as f64)
    }
}

/// A plane's counters over a window (`after - before`).
fn plane_delta(after: &ListenerSnapshot, before: &ListenerSnapshot) -> ListenerSnapshot {
    let mut d = after.clone();
    d.received = d.received.saturating_sub(before.received);
    d.forwarded = d.forwarded.saturating_sub(before.forwarded);
    d.socket_drops = d.socket_drops.saturating_sub(before.socket_drops);
    for (a, b) in d.dropped.iter_mut().zip(before.dropped) {
        *a = a.saturating_sub(b);
    }
    for (a, b) in d.downstreams.iter_mut().zip(&before.downstreams) {
        a.packets = a.packets.saturating_sub(b.packets);
    }
    d
}

/// How a rig runs its windows.
#[derive(Debug, Clone, Copy)]
pub struct RigOptions {
    /// Generator threads (one per CPU from CPU 0).
    pub threads: usize,
    /// Time after the generator stops for queues to drain.
    pub drain: Duration,
    /// Starts a third-party proxy; without it, a [`Mode::Peer`] is an error.
    pub external: Option<StartExternal>,
}

/// The namespaces, the loaded generator and sinks: everything a window needs. The BPF
/// object is dropped (its programs detached) before the namespaces are deleted.
#[derive(Debug)]
pub struct Rig {
    obj: BenchObject,
    topo: Topology,
    opts: RigOptions,
}

impl Rig {
    /// Builds the topology and loads the generator and sinks.
    pub fn new(opts: RigOptions) -> anyhow::Result<Rig> {
        let topo = Topology::new().context("creating the network namespaces")?;
        let obj = BenchObject::load(&topo).context("loading the generator and sinks")?;
        Ok(Rig { obj, topo, opts })
    }

    /// Generator threads.
    pub fn threads(&self) -> usize {
        self.opts.threads
    }

    fn counters(&self, running: &Running) -> anyhow::Result<Counters> {
        Ok(Counters {
            generated: self.obj.generated()?,
            sink: self.obj.sink()?,
            plane: running.snapshot(),
            xmit_errors: self.topo.client_xmit_errors()?,
            lb: self.topo.lb_counters()?,
        })
    }

    fn start(&mut self, mode: Mode, traffic: Traffic) -> anyhow::Result<Running> {
        let t = &self.topo;
        Ok(match mode {
            Mode::Idle | Mode::Plain => Running::Nothing,
            Mode::GenOnly => Running::Sink(self.obj.attach_lb_sink(t)?),
            Mode::Xdp | Mode::Tc => t.lb.enter(|| start_kernel(mode, &t.lb_if, traffic))??,
            Mode::Userspace => {
                let cfg = config("userspace", &t.lb_if, traffic)?;
                let plane =
                    t.lb.enter(|| UserspacePlane::start(&cfg))?
                        .context("starting the userspace plane")?;
                Running::User(plane)
            }
            Mode::Peer(p) => {
                let start = self
                    .opts
                    .external
                    .context("no way to start a third-party proxy")?;
                let spec = ExternalSpec::new(t.lb.name(), traffic);
                let mut ext = start(p, &spec).with_context(|| format!("starting {}", p.name()))?;
                wait_bound(&t.lb, ext.as_mut())
                    .with_context(|| format!("waiting for {} to bind its port", p.name()))?;
                self.probe(mode, traffic)
                    .with_context(|| format!("{} forwards nothing", p.name()))?;
                Running::External(ext)
            }
        })
    }

    /// Datagrams counted at the backends so far.
    fn at_backends(&self) -> anyhow::Result<u64> {
        Ok(self.obj.sink()?[..BACKENDS].iter().map(|s| s.packets).sum())
    }

    /// Sends a few datagrams until some reach a backend (a proxy that has bound its sockets
    /// may not serve them yet), then [`Self::settle`]s.
    fn probe(&mut self, mode: Mode, traffic: Traffic) -> anyhow::Result<()> {
        self.obj.aim(&Self::aim(mode, traffic))?;
        let client_ns = self.topo.client.name().to_owned();
        let before = self.at_backends()?;
        let end = Instant::now() + crate::external::STARTUP;
        while self.at_backends()? == before {
            if Instant::now() >= end {
                anyhow::bail!("no probe datagram reached a backend");
            }
            self.obj
                .generate(&client_ns, Some(20_000), Duration::from_millis(10), 1)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        self.settle()
    }

    /// Waits (up to 2 s) until the backends' counters stop moving.
    fn settle(&self) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(2);
        let mut last = self.at_backends()?;
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let now = self.at_backends()?;
            if now == last || Instant::now() >= end {
                return Ok(());
            }
            last = now;
        }
    }

    fn stop(&mut self, running: Running) -> anyhow::Result<()> {
        match running {
            Running::Sink(id) => self.obj.detach_lb_sink(id)?,
            Running::User(u) => u.stop(),
            Running::Kernel(k) => drop(k),
            Running::External(e) => drop(e),
            Running::Nothing => {}
        }
        Ok(())
    }

    /// Where the generator sends for `mode` and `traffic`.
    fn aim(mode: Mode, traffic: Traffic) -> Aim {
        let dsts = match mode {
            Mode::Plain => (0..BACKENDS)
                .map(|k| (backend_ip(k), BACKEND_PORT))
                .collect(),
            _ => vec![(VIP, PORT)],
        };
        Aim {
            dsts,
            flows: traffic.flows(),
        }
    }

    /// One window of `dur`: `mode` carrying `traffic` at `rate` (None: the generator's
    /// maximum). The plane is started before and stopped after, also when measuring fails.
    pub fn measure(
        &mut self,
        mode: Mode,
        traffic: Traffic,
        rate: Option<u64>,
        dur: Duration,
    ) -> anyhow::Result<Sample> {
        let running = self.start(mode, traffic)?;
        let r = self.window(&running, mode, traffic, rate, dur);
        let attach = running.attach();
        self.stop(running)?;
        let (before, after, cpu, asked, gen_time, window) = r?;
        let slot = |i: usize| after.sink[i].since(before.sink[i]);
        let lb = slot(SLOT_LB as usize);
        let backends: Vec<SinkStats> = (0..BACKENDS).map(slot).collect();
        let (delivered, csum_ok) = if mode == Mode::GenOnly {
            (lb.packets, lb.csum_ok)
        } else {
            (
                backends.iter().map(|b| b.packets).sum(),
                backends.iter().map(|b| b.csum_ok).sum(),
            )
        };
        let mut per_backend = [0; BACKENDS];
        for (p, b) in per_backend.iter_mut().zip(&backends) {
            *p = b.packets;
        }
        Ok(Sample {
            mode,
            traffic,
            round: 0,
            offered: after.generated.saturating_sub(before.generated),
            asked,
            delivered,
            per_backend,
            csum_ok,
            other: slot(SLOT_OTHER).packets,
            gen_time,
            window,
            cpu,
            plane: match (&after.plane, &before.plane) {
                (Some(a), Some(b)) => Some(plane_delta(a, b)),
                _ => None,
            },
            attach,
            xmit_errors: after.xmit_errors.saturating_sub(before.xmit_errors),
            lb: LbCounters {
                rx: after.lb.rx.saturating_sub(before.lb.rx),
                tx_drops: after.lb.tx_drops.saturating_sub(before.lb.tx_drops),
                rcvbuf_errors: after
                    .lb
                    .rcvbuf_errors
                    .saturating_sub(before.lb.rcvbuf_errors),
                sndbuf_errors: after
                    .lb
                    .sndbuf_errors
                    .saturating_sub(before.lb.sndbuf_errors),
            },
        })
    }

    #[allow(clippy::type_complexity, reason = "private, one caller")]
    fn window(
        &mut self,
        running: &Running,
        mode: Mode,
        traffic: Traffic,
        rate: Option<u64>,
        dur: Duration,
    ) -> anyhow::Result<(Counters, Counters, Cpu, u64, Duration, Duration)> {
        self.obj.aim(&Self::aim(mode, traffic))?;
        let client_ns = self.topo.client.name().to_owned();
        if mode != Mode::Idle {
            // Warm-up: first-packet work (next-hop cache, page pools, socket wake-ups) stays
            // out of the window.
            self.obj
                .generate(&client_ns, Some(100_000), Duration::from_millis(20), 1)?;
            std::thread::sleep(Duration::from_millis(50));
            if matches!(mode, Mode::Peer(_)) {
                self.settle()?;
            }
        }
        let pids = running.pids();
        let before = self.counters(running)?;
        let cpu0 = Cpu::read(self.obj.softirq_ns()?, &pids)?;
        let t0 = Instant::now();
        let (asked, gen_time) = if mode == Mode::Idle {
            std::thread::sleep(dur);
            (0, dur)
        } else {
            self.obj
                .generate(&client_ns, rate, dur, self.opts.threads)?
        };
        std::thread::sleep(self.opts.drain);
        let cpu = Cpu::read(self.obj.softirq_ns()?, &pids)?.since(cpu0);
        let window = t0.elapsed();
        let after = self.counters(running)?;
        Ok((before, after, cpu, asked, gen_time, window))
    }
}

/// Whether the counters of a sample add up; the list of what does not.
pub fn check(s: &Sample) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    if s.mode == Mode::Idle {
        return bad;
    }
    want(
        s.offered == s.asked,
        format!("generated {} != asked {}", s.offered, s.asked),
    );
    want(s.delivered > 0, "nothing delivered".into());
    // A veth without NAPI (no XDP program, GRO off) refuses native XDP frames before counting
    // them anywhere, so the lb's rx counter is the proof they arrived.
    want(
        s.lb.rx >= s.offered && s.xmit_errors == 0,
        format!(
            "{} of {} frames did not reach the lb's veth ({} xdp_xmit_errors)",
            s.offered.saturating_sub(s.lb.rx),
            s.offered,
            s.xmit_errors
        ),
    );
    want(
        s.delivered <= s.expected(),
        format!(
            "delivered {} > {} expected ({} frames offered)",
            s.delivered,
            s.expected(),
            s.offered
        ),
    );
    // A per-session proxy sends one flow's datagrams to one backend.
    let one_session =
        matches!(s.mode, Mode::Peer(p) if p.per_session()) && s.traffic == Traffic::HeavyFlow;
    if s.mode != Mode::GenOnly && !one_session {
        want(
            s.per_backend.iter().all(|&n| n > 0),
            format!("a backend got nothing: {:?}", s.per_backend),
        );
    }
    // Everything the kernel paths deliver carries complete, valid checksums; userspace
    // proxies' sends leave the UDP checksum to (absent) offload, so it is not checked there.
    if !s.mode.is_socket_proxy() {
        want(
            s.csum_ok == s.delivered,
            format!(
                "{} of {} with bad checksums",
                s.delivered - s.csum_ok.min(s.delivered),
                s.delivered
            ),
        );
    }
    if let Some(p) = &s.plane {
        plane_checks(s, p, &mut want);
    }
    if matches!(s.mode, Mode::Peer(_)) {
        // No counters of the proxy's own: a datagram its listening socket had no room for is
        // a receive-buffer error in the namespace, and is not delivered.
        want(
            s.delivered + s.lb.rcvbuf_errors <= s.expected(),
            format!(
                "delivered {} + lb UDP RcvbufErrors {} > {} expected",
                s.delivered,
                s.lb.rcvbuf_errors,
                s.expected()
            ),
        );
    }
    bad
}

/// The plane's own counters against the traffic.
fn plane_checks(s: &Sample, p: &ListenerSnapshot, want: &mut impl FnMut(bool, String)) {
    let dropped: u64 = p.dropped.iter().sum();
    let copies = s.traffic.copies();
    if s.mode == Mode::Userspace {
        // The userspace plane sees every datagram its socket buffers had room for, and
        // reports the rest (SO_RXQ_OVFL) as socket drops. The kernel counts those per skb,
        // and with UDP GRO on the listener (the plane's default) one dropped skb may hold up
        // to UDP_GRO_MAX_SEGS datagrams of one flow: the count is then a lower bound.
        let (lo, hi) = (
            p.received + p.socket_drops,
            p.received + p.socket_drops * UDP_GRO_MAX_SEGS,
        );
        want(
            lo <= s.offered && s.offered <= hi,
            format!(
                "plane received {} + socket drops {} (up to {UDP_GRO_MAX_SEGS} datagrams each) \
                 cannot make offered {}",
                p.received, p.socket_drops, s.offered
            ),
        );
    } else {
        // The kernel plane sees every frame.
        want(
            p.received == s.offered,
            format!("plane received {} != offered {}", p.received, s.offered),
        );
    }
    // Forwarded and dropped are counted per copy.
    want(
        p.forwarded + dropped == copies * p.received,
        format!(
            "plane: forwarded {} + dropped {dropped} != {copies} x received {}",
            p.forwarded, p.received
        ),
    );
    // Sent datagrams the egress veth refused (its peer's ring full) are lost after the
    // plane counted them; nothing else may be.
    want(
        p.forwarded == s.delivered + s.lb.tx_drops,
        format!(
            "plane forwarded {} != backends {} + lb egress drops {}",
            p.forwarded, s.delivered, s.lb.tx_drops
        ),
    );
    if s.lb.tx_drops == 0 {
        let per: Vec<u64> = p.downstreams.iter().map(|d| d.packets).collect();
        want(
            per == s.per_backend,
            format!(
                "plane per downstream {per:?} != backends {:?}",
                s.per_backend
            ),
        );
    }
}

/// [`check`], plus, for the kernel paths (everything but the userspace plane), no loss: at a
/// brief check's low rate nothing may be lost there, while the userspace plane may lose
/// what its socket buffers overflowed, which [`check`] balances against its counters.
pub fn check_lossless(s: &Sample, rate: u64) -> Vec<String> {
    let mut bad = check(s);
    if !s.mode.is_socket_proxy() && s.mode != Mode::Idle && s.delivered != s.expected() {
        bad.push(format!(
            "lost {} of {} at {rate} pps",
            s.expected().saturating_sub(s.delivered),
            s.expected()
        ));
    }
    bad
}
