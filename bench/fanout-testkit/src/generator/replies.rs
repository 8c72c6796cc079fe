//! The generator's reply side: receives the datagrams echoed back to the flow sockets and
//! measures round-trip latency from the timestamps they carry.
//!
//! Replies are matched to requests by the echoed header alone (stream, flow, seq, send time),
//! so the generator keeps no per-request state beyond one bit per sequence number for
//! duplicate detection. Readiness of the flow sockets comes from one `mio` poller
//! (edge-triggered: every ready socket is drained until empty), so the cost does not grow with
//! the number of flows while few of them have replies waiting, and a pacing wait can block on
//! replies instead of sleeping blind.
//!
//! With many flows, many sockets are ready at once: one look at the replies fetches ready
//! sockets until the poller has no more to report (not just one [`EVENTS`]-sized helping),
//! and a socket is left as soon as a receive comes back short of a full batch, which already
//! means its queue was empty (the next arrival raises a new edge), saving the extra
//! `recvmmsg` that would only confirm it. Both keep the cost of reading 100,000 flows'
//! replies close to one system call per reply.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fanout_userspace::sys::RecvBatch;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::timer::Timer;
use crate::payload::{self, PayloadError};
use crate::stats::{DEFAULT_WINDOW_BITS, Latency, LatencySummary, Mark, SeqWindow};

/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;

/// The pacing timer's token in the poller (flow sockets are tokens `0..flows`). Its expiry
/// only ends the wait; re-arming it resets it, so it is never read.
const TIMER: Token = Token(usize::MAX);

/// Readiness events fetched per `epoll_wait`.
const EVENTS: usize = 1024;

/// Reply counters, copied into the run's report.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplyCounts {
    /// Distinct, valid replies of this run that came back to the socket that sent them.
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    /// Replies shorter than a header: valid, but not attributable to a request.
    pub(crate) short: u64,
    /// Corrupt, foreign, another run's, or arrived on the wrong flow socket.
    pub(crate) invalid: u64,
    pub(crate) recv_errors: u64,
    pub(crate) per_flow: Vec<u64>,
}

pub(crate) struct Replies {
    poll: Poll,
    events: Events,
    ready: Vec<usize>,
    rb: RecvBatch,
    stream: u32,
    seen: Vec<SeqWindow>,
    latency: Latency,
    counts: ReplyCounts,
    /// When the last new reply was read.
    last: Option<Instant>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("stream", &self.stream)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Replies {
    /// Registers every flow socket; `max_size` is the largest datagram of the run (echoes are
    /// the same size).
    pub(crate) fn new(
        socks: &[UdpSocket],
        stream: u32,
        max_size: usize,
        timer: &Timer,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        for (i, s) in socks.iter().enumerate() {
            fanout_userspace::sys::socket::set_rx_timestamps(s)?;
            let fd = s.as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)?;
        }
        poll.registry()
            .register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Replies {
            poll,
            events: Events::with_capacity(socks.len().clamp(1, EVENTS)),
            ready: Vec::new(),
            // One byte of slack so that a reply longer than anything sent shows up as
            // truncated instead of being silently cut to a plausible length.
            rb: RecvBatch::new(RECV_BATCH, max_size.max(payload::HEADER_LEN) + 1),
            stream,
            seen: vec![SeqWindow::new(DEFAULT_WINDOW_BITS); socks.len()],
            latency: Latency::new(3),
            counts: ReplyCounts {
                per_flow: vec![0; socks.len()],
                ..ReplyCounts::default()
            },
            last: None,
        })
    }

    /// Waits for replies until the (armed) pacing timer expires, draining every socket that
    /// has some; returns at the first wake-up, replies or timer.
    pub(crate) fn poll_until_timer(&mut self, socks: &[UdpSocket]) -> io::Result<()> {
        self.poll_for(socks, None)
    }

    /// Waits up to `timeout` for replies (zero: just look) and drains every socket that has
    /// some.
    pub(crate) fn poll(&mut self, socks: &[UdpSocket], timeout: Duration) -> io::Result<()> {
        self.poll_for(socks, Some(timeout))
    }

    fn poll_for(&mut self, socks: &[UdpSocket], timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = timeout;
        // Bounded, so that sockets refilling as fast as they are read cannot hold the caller
        // here: every socket ready now is reached within this many helpings.
        for _ in 0..=socks.len() / EVENTS {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                Err(e) => return Err(e),
            }
            // Taken out of self for the loop, so draining (which needs &mut self) can run
            // while the list is walked; put back to keep its allocation.
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(self.events.iter().map(|e| e.token().0));
            for &i in &ready {
                if let Some(s) = socks.get(i) {
                    self.drain(i, s);
                }
            }
            let full = ready.len() >= self.events.capacity();
            self.ready = ready;
            if !full {
                break;
            }
            timeout = Some(Duration::ZERO);
        }
        Ok(())
    }

    /// After the last send: collects replies until `expected` have come back, the grace
    /// period is over, or `stop` is set.
    pub(crate) fn finish(
        &mut self,
        socks: &[UdpSocket],
        expected: u64,
        grace: Duration,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let end = Instant::now() + grace;
        loop {
            if self.counts.unique + self.counts.short >= expected || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return Ok(());
            };
            // Short slices so that a stop request is noticed promptly.
            self.poll(socks, left.min(Duration::from_millis(20)))?;
        }
    }

    pub(crate) fn counts(&self) -> &ReplyCounts {
        &self.counts
    }

    pub(crate) fn latency(&self) -> Option<LatencySummary> {
        self.latency.summary()
    }

    /// The round-trip histogram itself.
    pub(crate) fn histogram(&self) -> &Latency {
        &self.latency
    }

    /// When the last new reply was read, if any was.
    pub(crate) fn last(&self) -> Option<Instant> {
        self.last
    }

    /// Edge-triggered readiness is reported once, so the socket must be read until empty: a
    /// receive that returns less than a full batch has found it so.
    fn drain(&mut self, flow: usize, sock: &UdpSocket) {
        let mut errors = 0;
        loop {
            let n = match self.rb.recv(sock.as_fd()) {
                Ok(0) => return,
                Ok(n) => n,
                // A pending socket error (say, an ICMP report) is consumed by the failed call,
                // so reading on is right; a persistent one must not spin forever, and the
                // next arriving datagram re-arms the edge anyway.
                Err(_) if errors < 3 => {
                    errors += 1;
                    self.counts.recv_errors += 1;
                    continue;
                }
                Err(_) => {
                    self.counts.recv_errors += 1;
                    return;
                }
            };
            let now = payload::now_ns();
            let before = self.counts.unique + self.counts.short;
            for i in 0..n {
                let Some(d) = self.rb.get(i) else {
                    self.counts.invalid += 1;
                    continue;
                };
                if d.truncated {
                    self.counts.invalid += 1;
                    continue;
                }
                let verdict = payload::decode(d.data);
                // The kernel's arrival time: the round trip ends when the reply is here, not
                // when the generator (busy sending) reads it.
                self.account(flow, verdict, d.info.rx_time_ns.unwrap_or(now));
            }
            if self.counts.unique + self.counts.short > before {
                self.last = Some(Instant::now());
            }
            if n < RECV_BATCH {
                return;
            }
        }
    }

    fn account(&mut self, flow: usize, verdict: Result<payload::Header, PayloadError>, now: u64) {
        let h = match verdict {
            Ok(h) => h,
            Err(PayloadError::Short) => {
                self.counts.short += 1;
                return;
            }
            Err(_) => {
                self.counts.invalid += 1;
                return;
            }
        };
        if h.stream != self.stream || h.flow as usize != flow {
            self.counts.invalid += 1;
            return;
        }
        match self.seen[flow].mark(h.seq) {
            Mark::Duplicate => self.counts.duplicates += 1,
            Mark::New | Mark::TooOld => {
                self.counts.unique += 1;
                self.counts.per_flow[flow] += 1;
                self.latency.record(now.saturating_sub(h.ts_ns));
            }
        }
    }
}
