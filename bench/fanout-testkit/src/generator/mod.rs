//! The load generator: sends verifiable datagrams ([`crate::payload`]) to one target from many
//! source sockets at a controlled rate, and optionally measures the echoes coming back. It can
//! also split its flows over several targets or copy every datagram to each of them
//! ([`GenConfig::extra_targets`]), which is how a benchmark sends straight to a proxy's
//! backends to measure the ceiling without the proxy.
//!
//! A UDP load balancer keys its decisions on the client address, so each *flow* is a socket of
//! its own (its own source port); datagrams go round-robin over the flows, datagram `i` of the
//! run being sequence number `i / flows` of flow `i % flows` with size
//! `sizes[i % sizes.len()]`. That mapping is fixed so that tests can recompute what any
//! received datagram must be.
//!
//! Sends go through `fanout-userspace`'s batched `sendmmsg` layer, one batch per flow socket. A
//! datagram the kernel refuses (or that finds the socket buffer full for longer than
//! [`SEND_WAIT`]) is counted as a send error and its sequence number is *not* reused, so the
//! sink sees the gap: a generator that silently retried would hide where loss happened.
//!
//! Runs are always bounded (a count, a duration, or both) and end early when the caller's stop
//! flag is set.
//!
//! Tens of thousands of flows are supported: the flow sockets can spread over several source
//! IPs and an explicit port range ([`GenConfig::bind_ips`], [`GenConfig::bind_ports`], see
//! `sockets`), the open-file limit is raised to fit them, and a send burst is capped (see
//! [`MAX_BURST`], [`MAX_REPLY_BURST`]) so that replies are read, and the clock and stop flag
//! looked at, even while one datagram per flow takes a long time to send.

mod config;
mod pacing;
mod replies;
mod sockets;
mod timer;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fanout_userspace::sys::{SendOpts, SendQueue, SendResult};
use serde::Serialize;

use crate::payload;
use crate::stats::{Latency, LatencySummary, ser_opt_secs, ser_secs};
pub use config::{GenConfig, random_stream_id};
use pacing::{Nap, Pace, Pacer};
use replies::Replies;
pub use sockets::NOFILE_SLACK;
use timer::Timer;

/// How long one `sendmmsg` batch may wait for room in a full socket buffer before the rest of
/// it counts as send errors.
pub const SEND_WAIT: Duration = Duration::from_millis(100);

/// Largest batch: the kernel's limit on messages per `sendmmsg` (UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// Most datagrams sent between two looks at the clock and the stop flag. With few flows a
/// burst is one full batch per flow, far below this; with 100,000 flows one datagram per flow
/// would be 100,000 system calls, and a run would overshoot its duration.
pub const MAX_BURST: u64 = 8192;

/// The same when replies are measured: an echo that arrives during a burst waits for its end
/// to be read, and the wait counts in its round trip. Sending costs a few microseconds per
/// datagram on loopback (the receiver's share of the work is done in the sender's system
/// call), so this keeps the wait to a few milliseconds; at flat out with 100,000 flows a
/// burst of 8,192 took over 100 ms and dominated the measured latency. Runs with few flows
/// (a full batch for each fits) are unaffected.
pub const MAX_REPLY_BURST: u64 = 512;

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
    /// The same as a histogram, for merging the results of several runs (not serialized).
    #[serde(skip)]
    pub reply_histogram: Option<Latency>,
    /// From the first send to the last new reply (seconds in JSON; `null` without replies):
    /// with `elapsed`, the window the replies arrived in.
    #[serde(serialize_with = "ser_opt_secs")]
    pub last_reply: Option<Duration>,
    /// Ports of `bind_ports` skipped because something else held them.
    pub busy_ports_skipped: u64,
    /// With `copy_to_all_targets`: copies to the further targets that could not be sent.
    pub copy_send_errors: u64,
}

/// Runs the generator until its count or duration is reached or `stop` is set.
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> io::Result<GenReport> {
    cfg.validate()?;
    let opened = sockets::open(cfg)?;
    let socks = opened.socks;
    let max_size = cfg.sizes.iter().copied().max().unwrap_or(0);
    let timer = Timer::new()?;
    let mut replies = if cfg.expect_replies {
        Some(Replies::new(&socks, cfg.stream_id, max_size, &timer)?)
    } else {
        None
    };
    let mut tx = Sender::new(cfg, &socks, max_size);
    let total = cfg.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let pacer = Pacer::new(start, cfg.rate_pps, cfg.batch);
    let burst_cap = burst_cap(cfg);
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
                wait(now, t, &timer, replies.as_mut(), &socks)?;
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(r) = &mut replies {
        r.finish(&socks, tx.sent, cfg.reply_grace, stop)?;
    }
    let mut r = report(cfg, tx, replies.as_ref(), elapsed);
    r.last_reply = replies
        .as_ref()
        .and_then(Replies::last)
        .map(|t| t.saturating_duration_since(start));
    r.busy_ports_skipped = opened.busy_skipped;
    Ok(r)
}

/// Bounds the work between two looks at the clock, the stop flag and the replies, while
/// still letting every flow fill a whole batch when sending flat out, unless there are so many
/// flows that this would take too long.
fn burst_cap(cfg: &GenConfig) -> u64 {
    let batch = cfg.batch as u64;
    let limit = if cfg.expect_replies {
        MAX_REPLY_BURST
    } else {
        MAX_BURST
    };
    batch
        .saturating_mul(u64::from(cfg.flows))
        .min(limit.max(batch))
}

/// One turn of waiting for the pacer: block on the timer (and on replies, whichever comes
/// first) unless the wait is too short for that, then spin (still reading replies: one that
/// arrived just before a send must not wait for it).
fn wait(
    now: Instant,
    until: Instant,
    timer: &Timer,
    replies: Option<&mut Replies>,
    socks: &[UdpSocket],
) -> io::Result<()> {
    match (pacing::nap(now, until), replies) {
        (Nap::Done, _) => Ok(()),
        (Nap::Block(d), Some(r)) => {
            timer.arm(d)?;
            r.poll_until_timer(socks)
        }
        (Nap::Block(d), None) => {
            timer.arm(d)?;
            timer.wait()
        }
        (Nap::Spin, Some(r)) => r.poll(socks, Duration::ZERO),
        (Nap::Spin, None) => {
            std::hint::spin_loop();
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
    /// What each buffer's filler was written for: a buffer reused for the same flow and size
    /// only gets a new header (writing 64 KB of filler per datagram would make the generator
    /// the bottleneck of large-datagram runs).
    prepared: Vec<Option<payload::Prepared>>,
    flows: Vec<FlowReport>,
    sent: u64,
    send_errors: u64,
    bytes_sent: u64,
    /// `[target, extra_targets…]`.
    targets: Vec<SocketAddr>,
    copy_errors: u64,
}

impl<'a> Sender<'a> {
    fn new(cfg: &'a GenConfig, socks: &'a [UdpSocket], max_size: usize) -> Self {
        let flows = socks
            .iter()
            .enumerate()
            .map(|(i, s)| FlowReport {
                flow: i as u32,
                local_addr: s.local_addr().unwrap_or_else(|_| {
                    let ips = cfg.source_ips();
                    SocketAddr::new(ips[i % ips.len()], 0)
                }),
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
            prepared: vec![None; cfg.batch],
            flows,
            sent: 0,
            send_errors: 0,
            bytes_sent: 0,
            targets: cfg.all_targets(),
            copy_errors: 0,
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
    /// flow) to the flow's target (or to every target); returns the index after the last one
    /// taken.
    fn send_batch(&mut self, from: u64, end: u64) -> u64 {
        let cfg = self.cfg;
        let flows = u64::from(cfg.flows);
        let flow = (from % flows) as usize;
        // One timestamp per batch: the datagrams leave within one system call.
        let ts = payload::now_ns();
        let mut i = from;
        let mut k = 0;
        while k < self.bufs.len() && i < end {
            let size = size_of(cfg, i);
            let buf = &mut self.bufs[k][..size];
            let p = match self.prepared[k] {
                Some(p) if p.fits(cfg.stream_id, flow as u32, size) => p,
                _ => {
                    let p = payload::prepare(buf, cfg.stream_id, flow as u32);
                    self.prepared[k] = Some(p);
                    p
                }
            };
            payload::stamp(buf, p, i / flows, ts);
            i += flows;
            k += 1;
        }
        if cfg.copy_to_all_targets {
            for c in 0..self.targets.len() {
                self.flush(flow, from, k, c, c > 0);
            }
        } else {
            self.flush(flow, from, k, flow % self.targets.len(), false);
        }
        i
    }

    /// Sends the first `k` encoded buffers (datagrams `from, from + flows, …` of `flow`) to
    /// target number `t`; a further copy's failures only count as copy errors.
    fn flush(&mut self, flow: usize, from: u64, k: usize, t: usize, extra_copy: bool) {
        let cfg = self.cfg;
        let flows = u64::from(cfg.flows);
        let target = self.targets[t];
        let mut tx = self.queue.tx();
        let mut j = from;
        for buf in &self.bufs[..k] {
            tx.push(&target, &buf[..size_of(cfg, j)], &SendOpts::default(), j);
            j += flows;
        }
        let f = &mut self.flows[flow];
        let (sent, errors, bytes) = (&mut self.sent, &mut self.send_errors, &mut self.bytes_sent);
        let copy_errors = &mut self.copy_errors;
        tx.flush(self.socks[flow].as_fd(), SEND_WAIT, |_, len, result| {
            let ok = result == SendResult::Sent;
            if extra_copy {
                *copy_errors += u64::from(!ok);
            } else if ok {
                *sent += 1;
                *bytes += len as u64;
                f.sent += 1;
                f.bytes_sent += len as u64;
            } else {
                *errors += 1;
                f.send_errors += 1;
            }
        });
    }
}

/// The size of datagram `i` of the run.
fn size_of(cfg: &GenConfig, i: u64) -> usize {
    cfg.sizes[(i % cfg.sizes.len() as u64) as usize]
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
        reply_histogram: replies.map(|r| r.histogram().clone()),
        last_reply: None,
        busy_ports_skipped: 0,
        copy_send_errors: tx.copy_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::config::test_config as cfg;
    use super::*;

    #[test]
    fn bursts_are_whole_batches_for_few_flows_and_short_with_replies() {
        let few = GenConfig { flows: 8, ..cfg() };
        assert_eq!(burst_cap(&few), 8 * 32);
        let many = GenConfig {
            flows: 100_000,
            ..cfg()
        };
        assert_eq!(burst_cap(&many), MAX_BURST);
        let many_replies = GenConfig {
            expect_replies: true,
            ..many
        };
        assert_eq!(burst_cap(&many_replies), MAX_REPLY_BURST);
        let huge_batch = GenConfig {
            batch: MAX_BATCH,
            expect_replies: true,
            ..cfg()
        };
        assert_eq!(burst_cap(&huge_batch), MAX_BATCH as u64);
    }

    #[test]
    fn flows_split_over_targets_or_copy_to_all() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let count = |s: &UdpSocket| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 128];
            std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
        };
        let mut c = GenConfig::new(a.local_addr().unwrap());
        c.extra_targets = vec![b.local_addr().unwrap()];
        c.flows = 4;
        c.count = Some(8);
        let r = run(&c, &AtomicBool::new(false)).unwrap();
        assert_eq!(r.sent, 8);
        assert_eq!((count(&a), count(&b)), (4, 4));
        c.copy_to_all_targets = true;
        let r = run(&c, &AtomicBool::new(false)).unwrap();
        assert_eq!((r.sent, r.copy_send_errors), (8, 0));
        assert_eq!((count(&a), count(&b)), (8, 8));
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
