//! The load generator: sends verifiable datagrams ([`crate::payload`]) to one target from many
//! source sockets at a controlled rate, and optionally measures the echoes coming back.
//!
//! A UDP load balancer keys its decisions on the client address, so each *flow* is a socket of
//! its own (its own source port); datagrams go round-robin over the flows, datagram `i` of the
//! run being sequence number `i / flows` of flow `i % flows` with size
//! `sizes[i % sizes.len()]`. That mapping is fixed so that tests can recompute what any
//! received datagram must be.
//!
//! Sends go through `fanout-udp`'s batched `sendmmsg` layer, one batch per flow socket. A
//! datagram the kernel refuses (or that finds the socket buffer full for longer than
//! [`SEND_WAIT`]) is counted as a send error and its sequence number is *not* reused, so the
//! sink sees the gap: a generator that silently retried would hide where loss happened.
//!
//! Runs are always bounded (a count, a duration, or both) and end early when the caller's stop
//! flag is set.

mod pacing;
mod replies;

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fanout_udp::sys::socket::{self, SocketOptions};
use fanout_udp::sys::{MAX_DATAGRAM, SendOpts, SendQueue, SendResult};
use serde::Serialize;

use crate::payload::{self, MAX_V4_PAYLOAD};
use crate::stats::{LatencySummary, ser_secs};
use pacing::{Nap, Pace, Pacer};
use replies::Replies;

/// How long one `sendmmsg` batch may wait for room in a full socket buffer before the rest of
/// it counts as send errors.
pub const SEND_WAIT: Duration = Duration::from_millis(100);

/// Largest batch: the kernel's limit on messages per `sendmmsg` (UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// What to send, where, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenConfig {
    /// Where every datagram goes.
    pub target: SocketAddr,
    /// Datagrams per second over all flows; 0 = as fast as possible.
    pub rate_pps: u64,
    /// Distinct source sockets (source ports); at least 1.
    pub flows: u32,
    /// Datagram sizes, cycled per datagram; each 0..=65,507 (65,527 over IPv6).
    pub sizes: Vec<usize>,
    /// Total datagrams to send.
    pub count: Option<u64>,
    /// Longest run time. At least one of `count` and `duration` must be set.
    pub duration: Option<Duration>,
    /// Datagrams per `sendmmsg`, 1..=[`MAX_BATCH`].
    pub batch: usize,
    /// Address the flow sockets bind to (with port 0).
    pub bind_ip: IpAddr,
    /// Identifies this run in every datagram.
    pub stream_id: u32,
    /// Receive echoed datagrams on the flow sockets and measure their latency.
    pub expect_replies: bool,
    /// How long to wait for outstanding replies after the last send.
    pub reply_grace: Duration,
    /// SO_SNDBUF and SO_RCVBUF of each flow socket, in bytes (0 = kernel default).
    pub socket_buffer: usize,
}

impl GenConfig {
    /// Defaults: unlimited rate, 1 flow, 64-byte datagrams, batches of 32, no count or
    /// duration (set one), a random stream id, no replies (500 ms grace when enabled), 4 MiB
    /// socket buffers. The flow sockets bind to loopback when the target is on loopback and to
    /// the unspecified address otherwise, so that the kernel picks a source that can reach it.
    pub fn new(target: SocketAddr) -> Self {
        let bind_ip = match (target.ip(), target.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        GenConfig {
            target,
            rate_pps: 0,
            flows: 1,
            sizes: vec![64],
            count: None,
            duration: None,
            batch: 32,
            bind_ip,
            stream_id: random_stream_id(),
            expect_replies: false,
            reply_grace: Duration::from_millis(500),
            socket_buffer: 4 << 20,
        }
    }

    /// Checks that the run is bounded and every datagram can be sent.
    pub fn validate(&self) -> io::Result<()> {
        let max = if self.target.is_ipv4() {
            MAX_V4_PAYLOAD
        } else {
            MAX_DATAGRAM
        };
        let problem = if self.flows == 0 {
            Some("flows must be at least 1".to_owned())
        } else if self.sizes.is_empty() {
            Some("at least one datagram size is needed".to_owned())
        } else if let Some(s) = self.sizes.iter().find(|&&s| s > max) {
            Some(format!("size {s} exceeds the largest UDP payload ({max})"))
        } else if self.count.is_none() && self.duration.is_none() {
            Some("a count or a duration is needed: runs are bounded".to_owned())
        } else if self.batch == 0 || self.batch > MAX_BATCH {
            Some(format!("batch must be 1..={MAX_BATCH}"))
        } else if self.bind_ip.is_ipv4() != self.target.is_ipv4() {
            Some("bind_ip and target are of different address families".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => Err(io::Error::new(io::ErrorKind::InvalidInput, p)),
            None => Ok(()),
        }
    }
}

/// A stream id that differs between runs, so a sink can tell runs apart (and a late datagram
/// of a previous run is not mistaken for one of this run). `RandomState` is std's source of
/// per-process random keys, which avoids a dependency on a random number crate.
pub fn random_stream_id() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(payload::now_ns());
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// One flow's share of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowReport {
    /// The flow number (as in the datagrams).
    pub flow: u32,
    /// The flow socket's address: the source address the target sees.
    pub local_addr: SocketAddr,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams that could not be sent.
    pub send_errors: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Distinct valid replies received on this flow's socket.
    pub replies: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenReport {
    /// The run's stream id.
    pub stream_id: u32,
    /// Where it sent.
    pub target: SocketAddr,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams that could not be sent (their sequence numbers stay unused).
    pub send_errors: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// From the first send to the end of the last, in seconds in JSON.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// Achieved rate: `sent / elapsed`.
    pub rate_pps: f64,
    /// Achieved UDP payload throughput in Mbit/s (headers below UDP not counted).
    pub mbit_per_s: f64,
    /// Per flow, in flow order.
    pub per_flow: Vec<FlowReport>,
    /// Distinct valid replies of this run, each on the socket that sent its request.
    pub replies_received: u64,
    /// Replies received more than once.
    pub reply_duplicates: u64,
    /// Replies shorter than a header (valid, but not attributable to a request).
    pub reply_short: u64,
    /// Corrupt, foreign or misdirected replies.
    pub reply_invalid: u64,
    /// Failed receive calls on the flow sockets.
    pub recv_errors: u64,
    /// Round-trip latency of the replies (send to receive of the echo).
    pub reply_latency: Option<LatencySummary>,
}

/// Runs the generator until its count or duration is reached or `stop` is set.
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> io::Result<GenReport> {
    cfg.validate()?;
    let socks = open_sockets(cfg)?;
    let max_size = cfg.sizes.iter().copied().max().unwrap_or(0);
    let mut replies = if cfg.expect_replies {
        Some(Replies::new(&socks, cfg.stream_id, max_size)?)
    } else {
        None
    };
    let mut tx = Sender::new(cfg, &socks, max_size);
    let total = cfg.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let pacer = Pacer::new(start, cfg.rate_pps, cfg.batch);
    // Bounds the work between two looks at the clock, the stop flag and the replies, while
    // still letting every flow fill a whole batch when sending flat out.
    let burst_cap = (cfg.batch as u64).saturating_mul(u64::from(cfg.flows));
    let mut next = 0u64;
    while next < total && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        match pacer.next(now, next, total - next) {
            Pace::Send(n) => {
                let n = n.min(burst_cap);
                tx.burst(next, n);
                next += n;
                if let Some(r) = &mut replies {
                    r.poll(&socks, Duration::ZERO)?;
                }
            }
            Pace::WaitUntil(t) => {
                let t = deadline.map_or(t, |d| t.min(d));
                wait(now, t, replies.as_mut(), &socks)?;
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(r) = &mut replies {
        r.finish(&socks, tx.sent, cfg.reply_grace, stop)?;
    }
    Ok(report(cfg, tx, replies.as_ref(), elapsed))
}

fn open_sockets(cfg: &GenConfig) -> io::Result<Vec<UdpSocket>> {
    let opts = SocketOptions {
        recv_buffer: cfg.socket_buffer,
        send_buffer: cfg.socket_buffer,
        reuse_port: false,
        pktinfo: false,
    };
    (0..cfg.flows)
        .map(|_| socket::bind(SocketAddr::new(cfg.bind_ip, 0), &opts).map(|(s, _)| s))
        .collect()
}

/// One turn of waiting for the pacer: block on replies (or sleep) when the wait is long, spin
/// when it is short.
fn wait(
    now: Instant,
    until: Instant,
    replies: Option<&mut Replies>,
    socks: &[UdpSocket],
) -> io::Result<()> {
    match (pacing::nap(now, until), replies) {
        (Nap::Done, _) => Ok(()),
        (Nap::Block(d), Some(r)) if d >= Duration::from_millis(1) => {
            // mio rounds timeouts up to whole milliseconds; round down instead, so the poll
            // does not overshoot the due time.
            r.poll(socks, Duration::from_millis(d.as_millis() as u64))
        }
        (Nap::Block(_), Some(r)) => {
            r.poll(socks, Duration::ZERO)?;
            std::thread::yield_now();
            Ok(())
        }
        (Nap::Block(d), None) => {
            std::thread::sleep(d);
            Ok(())
        }
        (Nap::Spin, _) => {
            std::thread::yield_now();
            Ok(())
        }
    }
}

/// Send-side state: the batch queue, the buffers the batch borrows, and the counters.
struct Sender<'a> {
    cfg: &'a GenConfig,
    socks: &'a [UdpSocket],
    queue: SendQueue,
    bufs: Vec<Vec<u8>>,
    flows: Vec<FlowReport>,
    sent: u64,
    send_errors: u64,
    bytes_sent: u64,
}

impl<'a> Sender<'a> {
    fn new(cfg: &'a GenConfig, socks: &'a [UdpSocket], max_size: usize) -> Self {
        let flows = socks
            .iter()
            .enumerate()
            .map(|(i, s)| FlowReport {
                flow: i as u32,
                local_addr: s
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(cfg.bind_ip, 0)),
                sent: 0,
                send_errors: 0,
                bytes_sent: 0,
                replies: 0,
            })
            .collect();
        Sender {
            cfg,
            socks,
            queue: SendQueue::new(cfg.batch),
            bufs: vec![vec![0u8; max_size]; cfg.batch],
            flows,
            sent: 0,
            send_errors: 0,
            bytes_sent: 0,
        }
    }

    /// Sends datagrams `first..first + n`, grouped by flow so that each `sendmmsg` carries as
    /// many as possible.
    fn burst(&mut self, first: u64, n: u64) {
        let flows = u64::from(self.cfg.flows);
        let end = first + n;
        for offset in 0..n.min(flows) {
            let mut i = first + offset;
            while i < end {
                i = self.send_batch(i, end);
            }
        }
    }

    /// Sends up to one batch of the datagrams `from, from + flows, …` below `end` (all of one
    /// flow); returns the index after the last one taken.
    fn send_batch(&mut self, from: u64, end: u64) -> u64 {
        let cfg = self.cfg;
        let flows = u64::from(cfg.flows);
        let flow = (from % flows) as usize;
        let size_of = |i: u64| cfg.sizes[(i % cfg.sizes.len() as u64) as usize];
        // One timestamp per batch: the datagrams leave within one system call.
        let ts = payload::now_ns();
        let mut i = from;
        let mut k = 0;
        while k < self.bufs.len() && i < end {
            let buf = &mut self.bufs[k][..size_of(i)];
            payload::encode(buf, cfg.stream_id, flow as u32, i / flows, ts);
            i += flows;
            k += 1;
        }
        let mut tx = self.queue.tx();
        let mut j = from;
        for buf in &self.bufs[..k] {
            tx.push(&cfg.target, &buf[..size_of(j)], &SendOpts::default(), j);
            j += flows;
        }
        let f = &mut self.flows[flow];
        let (sent, errors, bytes) = (&mut self.sent, &mut self.send_errors, &mut self.bytes_sent);
        tx.flush(self.socks[flow].as_fd(), SEND_WAIT, |_, len, result| {
            if result == SendResult::Sent {
                *sent += 1;
                *bytes += len as u64;
                f.sent += 1;
                f.bytes_sent += len as u64;
            } else {
                *errors += 1;
                f.send_errors += 1;
            }
        });
        i
    }
}

fn report(
    cfg: &GenConfig,
    tx: Sender<'_>,
    replies: Option<&Replies>,
    elapsed: Duration,
) -> GenReport {
    let secs = elapsed.as_secs_f64();
    let per_sec = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
    let mut per_flow = tx.flows;
    let counts = replies.map(|r| r.counts().clone()).unwrap_or_default();
    for (f, &n) in per_flow.iter_mut().zip(&counts.per_flow) {
        f.replies = n;
    }
    GenReport {
        stream_id: cfg.stream_id,
        target: cfg.target,
        sent: tx.sent,
        send_errors: tx.send_errors,
        bytes_sent: tx.bytes_sent,
        elapsed,
        rate_pps: per_sec(tx.sent as f64),
        mbit_per_s: per_sec(tx.bytes_sent as f64 * 8.0) / 1e6,
        per_flow,
        replies_received: counts.unique,
        reply_duplicates: counts.duplicates,
        reply_short: counts.short,
        reply_invalid: counts.invalid,
        recv_errors: counts.recv_errors,
        reply_latency: replies.and_then(Replies::latency),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GenConfig {
        let mut c = GenConfig::new("127.0.0.1:9".parse().unwrap());
        c.count = Some(1);
        c
    }

    #[test]
    fn defaults_follow_the_target_family() {
        assert_eq!(cfg().bind_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let c = GenConfig::new("[::1]:9".parse().unwrap());
        assert_eq!(c.bind_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let c = GenConfig::new("192.0.2.1:9".parse().unwrap());
        assert_eq!(c.bind_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn validation_rejects_unbounded_and_impossible_runs() {
        assert!(cfg().validate().is_ok());
        let bad = [
            GenConfig {
                count: None,
                ..cfg()
            },
            GenConfig { flows: 0, ..cfg() },
            GenConfig {
                sizes: vec![],
                ..cfg()
            },
            GenConfig {
                sizes: vec![65_508],
                ..cfg()
            },
            GenConfig { batch: 0, ..cfg() },
            GenConfig {
                batch: MAX_BATCH + 1,
                ..cfg()
            },
            GenConfig {
                bind_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ..cfg()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{c:?}");
        }
    }

    #[test]
    fn stream_ids_differ() {
        assert_ne!(random_stream_id(), random_stream_id());
    }

    #[test]
    fn stop_flag_ends_a_long_run_at_once() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = GenConfig::new(sink.local_addr().unwrap());
        c.duration = Some(Duration::from_secs(60));
        c.rate_pps = 10;
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        let r = run(&c, &stop).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(r.sent, 0);
    }
}
