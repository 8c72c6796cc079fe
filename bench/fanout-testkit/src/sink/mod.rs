//! The counting sink: receives on any number of UDP sockets, verifies every datagram, and
//! counts loss, duplication, reordering, corruption and latency per port, per source and per
//! flow ([`account`]). It can also echo every datagram back to its source, to stand in for a
//! backend that answers, and record payloads for byte-exact assertions.
//!
//! One thread serves all sockets: a sink stands in for a proxy's backends, and a test or a
//! benchmark wants to start a handful of them without a thread each. Readiness comes from
//! `mio` (edge-triggered epoll); ready sockets are served round-robin a few `recvmmsg` batches
//! at a time so that one flooded port cannot starve the others, and each stays on the ready
//! list until a receive finds it empty (as edge-triggering requires).
//!
//! Latency ends at the datagram's arrival in the kernel (`SO_TIMESTAMPNS` on every socket), not
//! when this thread reads it: on a small machine the sink's own wake-up can take longer than the
//! proxy under test, and would be charged to it. Without a kernel stamp the read time is used.
//!
//! The counters live behind a mutex taken once per batch; a separate atomic total lets
//! [`SinkHandle::wait_for`] poll cheaply without copying reports, so tests wait for traffic
//! instead of sleeping.

pub mod account;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fanout_userspace::sys::socket::{self, SocketOptions};
use fanout_userspace::sys::{RecvBatch, SLOT_SIZE, SendOpts, SendQueue, SendResult};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use account::{Arrival, SinkState};
pub use account::{MAX_FLOWS, PortReport, SinkReport};

/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;

/// Batches taken from one ready socket before moving to the next.
const BATCHES_PER_TURN: usize = 8;

/// How long an echo batch may wait for room in the socket buffer.
const ECHO_WAIT: Duration = Duration::from_millis(10);

const WAKE: Token = Token(usize::MAX);

/// How the sink behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Send every datagram back to its source.
    pub echo: bool,
    /// Keep a copy of every received payload (see `record_limit`).
    pub record: bool,
    /// SO_RCVBUF (and SO_SNDBUF when echoing) per socket in bytes; 0 = kernel default.
    pub recv_buffer: usize,
    /// Most bytes of recorded payloads kept over all ports; the rest is counted only.
    pub record_limit: usize,
    /// Most flows tracked (loss, duplicates, reordering, per-flow latency) per port and over
    /// all ports; datagrams of further flows are only counted (`untracked`). Tracking costs a
    /// few KiB per flow, so a sink facing 100,000 flows whose per-flow accounting nobody reads
    /// sets this low, even to 0.
    pub max_flows: usize,
}

impl Default for SinkOptions {
    /// No echo, no recording (64 MiB limit when turned on), 8 MiB receive buffers: large
    /// enough that a sink briefly descheduled on a busy two-core machine does not drop;
    /// [`MAX_FLOWS`] flows tracked.
    fn default() -> Self {
        SinkOptions {
            echo: false,
            record: false,
            recv_buffer: 8 << 20,
            record_limit: 64 << 20,
            max_flows: MAX_FLOWS,
        }
    }
}

impl SinkOptions {
    /// The defaults, sending every datagram back: a backend that answers.
    pub fn echoing() -> Self {
        SinkOptions {
            echo: true,
            ..SinkOptions::default()
        }
    }

    /// The defaults, keeping every payload: for byte-exact assertions.
    pub fn recording() -> Self {
        SinkOptions {
            record: true,
            ..SinkOptions::default()
        }
    }
}

/// Bound sockets, not yet served.
#[derive(Debug)]
pub struct Sink {
    socks: Vec<UdpSocket>,
    addrs: Vec<SocketAddr>,
    opts: SinkOptions,
}

impl Sink {
    /// Binds one socket per address (port 0 picks a free port; see
    /// [`local_addrs`](Self::local_addrs)).
    pub fn bind(addrs: &[SocketAddr], opts: SinkOptions) -> io::Result<Sink> {
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a sink needs at least one address",
            ));
        }
        let mut socks = Vec::with_capacity(addrs.len());
        let mut bound = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let sock_opts = SocketOptions {
                recv_buffer: opts.recv_buffer,
                send_buffer: if opts.echo { opts.recv_buffer } else { 0 },
                reuse_port: false,
                // On a wildcard address, echoes must leave from the address the client sent
                // to, or the client would see them come from a stranger.
                pktinfo: opts.echo && addr.ip().is_unspecified(),
            };
            let (s, _) = socket::bind(addr, &sock_opts)?;
            // Latency is measured to the datagram's arrival in the kernel, not to when this
            // thread got around to reading it: the sink's own wake-up is not the proxy's.
            socket::set_rx_timestamps(&s)?;
            bound.push(s.local_addr()?);
            socks.push(s);
        }
        Ok(Sink {
            socks,
            addrs: bound,
            opts,
        })
    }

    /// Binds `addrs` and starts serving them: [`bind`](Self::bind) then
    /// [`start`](Self::start), for callers with nothing to do in between.
    pub fn serve(addrs: &[SocketAddr], opts: SinkOptions) -> io::Result<SinkHandle> {
        Sink::bind(addrs, opts)?.start()
    }

    /// `n` sinks of one socket each on `ip`, on ports the kernel picks, served: a test's
    /// stand-in backends, each counted apart.
    pub fn serve_each(n: usize, ip: IpAddr, opts: SinkOptions) -> io::Result<Vec<SinkHandle>> {
        (0..n)
            .map(|_| Sink::serve(&[SocketAddr::new(ip, 0)], opts))
            .collect()
    }

    /// The addresses actually bound, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Starts the serving thread.
    pub fn start(self) -> io::Result<SinkHandle> {
        let poll = Poll::new()?;
        for (i, s) in self.socks.iter().enumerate() {
            let fd = s.as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState::new(
                &self.addrs,
                self.opts.record,
                self.opts.record_limit,
                self.opts.max_flows,
            )),
            socks: self.socks,
            total: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: Instant::now(),
        });
        let thread_shared = Arc::clone(&shared);
        let echo = self.opts.echo;
        let thread = std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || serve(&thread_shared, poll, echo))?;
        Ok(SinkHandle {
            shared,
            waker,
            thread: Some(thread),
            addrs: self.addrs,
        })
    }
}

/// What the serving thread and the handle share.
#[derive(Debug)]
struct Shared {
    socks: Vec<UdpSocket>,
    state: Mutex<SinkState>,
    /// Datagrams accounted so far, published after each batch's accounting.
    total: AtomicU64,
    stop: AtomicBool,
    started: Instant,
}

impl Shared {
    /// A panic while holding the lock can only leave counters mid-update; they are still the
    /// best information there is.
    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self) -> SinkReport {
        let drops: Vec<Option<u64>> = self.socks.iter().map(socket::kernel_drops).collect();
        self.lock().report(self.started.elapsed(), &drops)
    }
}

/// A running sink. Dropping it stops the thread.
#[derive(Debug)]
pub struct SinkHandle {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl SinkHandle {
    /// The addresses the sink receives on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Datagrams received so far on all ports (cheap: no report is built).
    pub fn total_datagrams(&self) -> u64 {
        self.shared.total.load(Ordering::Acquire)
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> SinkReport {
        self.shared.report()
    }

    /// Forgets everything counted so far; the sockets stay bound and served. A benchmark
    /// that measures several times through a proxy whose config names these addresses starts
    /// each measurement from zero this way. The kernel's drop counters belong to the sockets
    /// and keep counting (see [`PortReport::kernel_drops`]).
    pub fn reset(&self) {
        let mut st = self.shared.lock();
        st.reset();
        self.shared.total.store(0, Ordering::Release);
    }

    /// Waits until at least `total` datagrams have arrived over all ports, or `timeout` has
    /// passed, then reports.
    pub fn wait_for(&self, total: u64, timeout: Duration) -> SinkReport {
        let end = Instant::now() + timeout;
        while self.total_datagrams() < total && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.snapshot()
    }

    /// Stops the thread and returns the final report.
    pub fn stop(mut self) -> SinkReport {
        self.shutdown();
        self.snapshot()
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // If waking fails the thread is stuck in poll; joining would hang, so leave it.
            if self.waker.wake().is_ok() && t.join().is_err() {
                self.shared
                    .lock()
                    .set_error("sink thread panicked".to_owned());
            }
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The serving thread's scratch: receive slots and the echo queue.
struct Scratch {
    rb: RecvBatch,
    queue: SendQueue,
    echo: bool,
}

fn serve(shared: &Shared, poll: Poll, echo: bool) {
    let mut scratch = Scratch {
        rb: RecvBatch::new(RECV_BATCH, SLOT_SIZE),
        queue: SendQueue::new(RECV_BATCH),
        echo,
    };
    if let Err(e) = serve_loop(shared, poll, &mut scratch) {
        shared.lock().set_error(format!("sink stopped: {e}"));
    }
}

fn serve_loop(shared: &Shared, mut poll: Poll, scratch: &mut Scratch) -> io::Result<()> {
    let n = shared.socks.len();
    let mut events = Events::with_capacity(n + 1);
    let mut ready = vec![false; n];
    let mut any_ready = false;
    loop {
        // While some socket still has data, only look for new events; otherwise block.
        let timeout = any_ready.then_some(Duration::ZERO);
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if let Some(r) = ready.get_mut(ev.token().0) {
                *r = true;
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        any_ready = false;
        for (i, r) in ready.iter_mut().enumerate() {
            if *r {
                *r = serve_socket(shared, i, scratch);
                any_ready |= *r;
            }
        }
    }
}

/// Serves up to [`BATCHES_PER_TURN`] batches from socket `i`; true if it may have more.
fn serve_socket(shared: &Shared, i: usize, scratch: &mut Scratch) -> bool {
    let sock = &shared.socks[i];
    let mut errors = 0;
    for _ in 0..BATCHES_PER_TURN {
        let n = match scratch.rb.recv(sock.as_fd()) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(_) => {
                shared.lock().add_recv_error(i);
                // A pending error is consumed by the failed call; a persistent one must not
                // keep the loop spinning (the next datagram re-arms the edge).
                errors += 1;
                if errors >= 3 {
                    return false;
                }
                continue;
            }
        };
        let (echoed, echo_errors) = if scratch.echo {
            echo_batch(sock, &scratch.rb, &mut scratch.queue, n)
        } else {
            (0, 0)
        };
        let at = shared.started.elapsed();
        let now = crate::payload::now_ns();
        {
            let mut st = shared.lock();
            for k in 0..n {
                match scratch.rb.get(k) {
                    Some(d) => st.account(
                        i,
                        Arrival {
                            src: d.src,
                            data: d.data,
                            truncated: d.truncated,
                        },
                        at,
                        d.info.rx_time_ns.unwrap_or(now),
                    ),
                    None => st.add_recv_error(i),
                }
            }
            st.add_echoes(i, echoed, echo_errors);
        }
        shared.total.fetch_add(n as u64, Ordering::Release);
    }
    true
}

/// Sends the `n` datagrams of the last receive back to their sources, straight from the
/// receive slots. Echoing before accounting keeps the round trip a generator measures free
/// of the sink's verification work.
fn echo_batch(sock: &UdpSocket, rb: &RecvBatch, q: &mut SendQueue, n: usize) -> (u64, u64) {
    let mut tx = q.tx();
    for k in 0..n {
        if let Some(d) = rb.get(k) {
            let opts = SendOpts {
                src_ip: d.info.local_ip,
                gso_segment: None,
            };
            tx.push(&d.src, d.data, &opts, k as u64);
        }
    }
    let (mut ok, mut failed) = (0, 0);
    tx.flush(sock.as_fd(), ECHO_WAIT, |_, _, r| {
        if r == SendResult::Sent {
            ok += 1;
        } else {
            failed += 1;
        }
    });
    (ok, failed)
}
