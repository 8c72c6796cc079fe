//! One worker thread: receives batches on its share of every listener and forwards them, and
//! relays the replies of the sessions it owns.
//!
//! Each worker owns one SO_REUSEPORT socket per listener (the kernel spreads clients over the
//! workers by flow hash, so a client always reaches the same worker and its session lives there
//! without locks), egress sockets, the upstream sockets of its sessions, and all its buffers.
//! Nothing is shared with other workers except read-mostly state (the downstream set behind
//! `ArcSwap`) and its own counter slots, so the hot path takes no lock, makes no allocation,
//! and costs a handful of system calls per batch, not per datagram.
//!
//! Readiness comes from epoll (through mio, edge-triggered) into a ready queue. A socket that
//! filled a whole batch goes back to the end of the queue, after the others had their turn, so
//! one busy listener cannot starve the rest.
//!
//! The set of listeners can change while the worker runs (`command`): the plane queues a
//! [`Command`] on the worker's channel and fires its `Waker`, the same one that interrupts it
//! for shutdown. The worker drains the channel only after a poll that returned the waker's
//! event, between taking the events and serving the ready queue, so the cost on the data path
//! is one comparison per event that was already there. A listener's slot in `ports` is its
//! token's high half; a removed listener leaves an empty slot (reused by the next one added)
//! so that the other listeners' tokens, and their epoll registrations, never change.

mod command;
mod forward;
mod reply;
mod session;

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::listener::ListenerShared;
use crate::sys::{RecvBatch, SLOT_SIZE, SendQueue};
use forward::{Egress, Piece};
use session::Sessions;

pub(crate) use command::{AddListener, Command};

/// Token of the waker that interrupts `poll` for shutdown and for commands.
pub(crate) const WAKE: Token = Token(usize::MAX);

/// Batches read from one socket before giving the other sockets a turn.
const BATCHES_PER_TURN: usize = 8;

/// How often idle sessions are swept out.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Sessions ended per listener per sweep, at most: bounds the pause a sweep can cause.
const SWEEP_BUDGET: usize = 4096;

/// Tokens: the listener index in the high half, 0 for the listener socket or `1 + k` for
/// upstream socket `k` of its sessions.
pub(crate) fn listener_token(li: usize) -> Token {
    Token(li << 32)
}

fn upstream_token(li: usize, k: u32) -> Token {
    Token((li << 32) | (k as usize + 1))
}

fn split_token(t: Token) -> (usize, Option<u32>) {
    let li = t.0 >> 32;
    match (t.0 & 0xffff_ffff) as u32 {
        0 => (li, None),
        k => (li, Some(k - 1)),
    }
}

/// Everything a worker needs, prepared (and bound) before its thread starts.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub workers: usize,
    pub poll: Poll,
    pub listeners: Vec<(Arc<ListenerShared>, Arc<UdpSocket>)>,
    pub egress_v4: Option<UdpSocket>,
    pub egress_v6: Option<UdpSocket>,
    pub batch: usize,
    pub send_timeout: Duration,
    pub gso: bool,
    pub busy_poll: Duration,
    pub shutdown: Arc<AtomicBool>,
    /// Listeners to add and remove, with `WAKE` fired after each.
    pub commands: Receiver<Command>,
}

/// One listener as one worker sees it.
pub(crate) struct Port {
    shared: Arc<ListenerShared>,
    sock: Arc<UdpSocket>,
    /// Round-robin position of this worker (its session machine keeps its own).
    cursor: usize,
    /// Queued for reading.
    queued: bool,
    sessions: Option<Sessions>,
}

impl Port {
    /// Worker `id`'s (of `workers`) share of listener `shared`, queued for reading so that
    /// datagrams that arrived before the first event are read.
    fn new(shared: Arc<ListenerShared>, sock: Arc<UdpSocket>, id: usize, workers: usize) -> Self {
        let sessions = shared
            .session()
            .map(|cfg| Sessions::new(&shared, cfg, workers, id));
        Port {
            shared,
            sock,
            // Stagger the workers' round-robin positions so they do not all start on
            // downstream 0.
            cursor: id,
            queued: true,
            sessions,
        }
    }
}

/// Rate-limits repeated error logs: the first, then one per `EVERY`.
#[derive(Default)]
pub(crate) struct LogLimiter(u64);

impl LogLimiter {
    const EVERY: u64 = 100_000;
    pub(crate) fn should_log(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1 || self.0.is_multiple_of(Self::EVERY)
    }
}

/// Buffers shared by all of a worker's paths (used one batch at a time).
pub(crate) struct Buffers {
    pub recv: RecvBatch,
    /// Upstream socket of each datagram in `recv` on the reply path.
    pub reply_src: Vec<u32>,
    /// Sends to upstream sockets: (socket, endpoint index, datagram in `recv`).
    pub upstream_sends: Vec<(u32, u32, Piece)>,
    /// Sends from the egress sockets: (endpoint index, datagram in `recv`).
    pub plan: Vec<(u32, Piece)>,
    pub upstream_q: SendQueue,
    pub reply_q: SendQueue,
    pub send_timeout: Duration,
}

struct Worker {
    id: usize,
    workers: usize,
    poll: Poll,
    /// Index = the token's listener half; `None`: a removed listener's slot.
    ports: Vec<Option<Port>>,
    /// Some listener keeps sessions (then idle ones are swept).
    has_sessions: bool,
    commands: Receiver<Command>,
    egress: Egress,
    bufs: Buffers,
    ready: Vec<Token>,
    scratch: Vec<Token>,
    clock: Instant,
    recv_errors: LogLimiter,
    busy_poll: Duration,
}

fn queue(batch: usize, gso: bool) -> SendQueue {
    let mut q = SendQueue::new(batch);
    q.set_gso(gso);
    q
}

pub(crate) fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        workers,
        poll,
        listeners,
        egress_v4,
        egress_v6,
        batch,
        send_timeout,
        gso,
        busy_poll,
        shutdown,
        commands,
    } = setup;
    let ports: Vec<Option<Port>> = listeners
        .into_iter()
        .map(|(shared, sock)| Some(Port::new(shared, sock, id, workers)))
        .collect();
    let mut w = Worker {
        id,
        workers,
        poll,
        egress: Egress::new(egress_v4, egress_v6, batch, send_timeout, gso),
        bufs: Buffers {
            recv: RecvBatch::new(batch, SLOT_SIZE),
            reply_src: Vec::with_capacity(batch),
            upstream_sends: Vec::with_capacity(batch * 4),
            plan: Vec::with_capacity(batch * 4),
            upstream_q: queue(batch, gso),
            reply_q: queue(batch, gso),
            send_timeout,
        },
        // Everything starts queued so datagrams that arrived before the first event are read.
        ready: (0..ports.len()).map(listener_token).collect(),
        has_sessions: false,
        ports,
        commands,
        scratch: Vec::new(),
        clock: Instant::now(),
        recv_errors: LogLimiter::default(),
        busy_poll,
    };
    w.update_has_sessions();
    tracing::debug!(
        worker = id,
        of = workers,
        listeners = w.ports.len(),
        "worker started"
    );
    w.run(&shutdown);
    tracing::debug!(worker = id, "worker stopped");
}

impl Worker {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn update_has_sessions(&mut self) {
        self.has_sessions = self.ports.iter().flatten().any(|p| p.sessions.is_some());
    }

    fn run(&mut self, shutdown: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let mut last_busy = Instant::now();
        loop {
            let timeout = if !self.ready.is_empty() {
                last_busy = Instant::now();
                Some(Duration::ZERO)
            } else if !self.busy_poll.is_zero() && last_busy.elapsed() < self.busy_poll {
                // Busy polling: keep asking for a while after traffic instead of sleeping, so
                // the next datagram does not pay a wake-up.
                Some(Duration::ZERO)
            } else if self.has_sessions {
                Some(next_sweep.saturating_duration_since(Instant::now()))
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                return;
            }
            let mut woken = false;
            for ev in events.iter() {
                if ev.token() == WAKE {
                    woken = true;
                } else {
                    self.enqueue(ev.token());
                }
            }
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            if woken {
                // Only now, never per batch: the plane fires the waker after each command.
                self.take_commands();
            }
            if self.has_sessions && Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            self.serve_ready();
        }
    }

    /// Queues a socket for reading unless it already is.
    fn enqueue(&mut self, t: Token) {
        let (li, up) = split_token(t);
        let Some(port) = self.ports.get_mut(li).and_then(Option::as_mut) else {
            return;
        };
        let flag = match up {
            None => &mut port.queued,
            Some(k) => match port.sessions.as_mut().and_then(|s| s.queued_flag(k)) {
                Some(f) => f,
                None => return,
            },
        };
        if !*flag {
            *flag = true;
            self.ready.push(t);
        }
    }

    fn serve_ready(&mut self) {
        std::mem::swap(&mut self.ready, &mut self.scratch);
        let mut reply_pending: Option<usize> = None;
        let tokens = std::mem::take(&mut self.scratch);
        for &t in &tokens {
            let (li, up) = split_token(t);
            // Replies are gathered from several upstream sockets into one batch; process them
            // before the buffer is used for anything else.
            if let Some(pl) = reply_pending
                && (up.is_none() || pl != li)
            {
                self.flush_replies(pl);
                reply_pending = None;
            }
            match up {
                None => self.serve_listener(li),
                Some(k) => {
                    if self.gather_replies(li, k) {
                        reply_pending = Some(li);
                    }
                }
            }
        }
        if let Some(pl) = reply_pending {
            self.flush_replies(pl);
        }
        self.scratch = tokens;
        self.scratch.clear();
    }

    /// Reads up to a few batches from a listener socket and forwards them.
    fn serve_listener(&mut self, li: usize) {
        self.read_listener(li);
        // The reply path appends to the same batch buffer: leave it empty.
        self.bufs.recv.clear();
    }

    fn read_listener(&mut self, li: usize) {
        let now = self.now_ms();
        let Worker {
            id,
            ports,
            egress,
            bufs,
            recv_errors,
            ready,
            ..
        } = self;
        let Some(port) = ports.get_mut(li).and_then(Option::as_mut) else {
            return;
        };
        port.queued = false;
        for _ in 0..BATCHES_PER_TURN {
            match bufs.recv.recv(port.sock.as_fd()) {
                Ok(0) => return,
                Ok(n) => {
                    match port.sessions.as_mut() {
                        None => forward::stateless(
                            *id,
                            &port.shared,
                            &bufs.recv,
                            &mut port.cursor,
                            egress,
                            &mut bufs.plan,
                        ),
                        Some(s) => s.forward(*id, li, &port.shared, bufs, egress, &self.poll, now),
                    }
                    if n < bufs.recv.capacity() {
                        // Edge-triggered epoll reports the next arrival; no need to spend a
                        // system call finding the socket empty.
                        return;
                    }
                }
                Err(e) => {
                    if recv_errors.should_log() {
                        tracing::warn!(worker = *id, listener = port.shared.name(), error = %e, "receive failed");
                    }
                    return;
                }
            }
        }
        // Still more: read again after the others had their turn.
        port.queued = true;
        ready.push(listener_token(li));
    }

    /// Reads replies from upstream socket `k` of listener `li` into the shared batch. Returns
    /// true when datagrams are waiting in the batch to be relayed.
    fn gather_replies(&mut self, li: usize, k: u32) -> bool {
        let Some(sessions) = sessions_of(&mut self.ports, li) else {
            return false;
        };
        let more = sessions.read_upstream(k, &mut self.bufs, &mut self.recv_errors);
        if more {
            // The batch filled up: relay it now and come back to this socket.
            self.flush_replies(li);
            if let Some(f) = sessions_of(&mut self.ports, li).and_then(|s| s.queued_flag(k)) {
                *f = true;
                self.ready.push(upstream_token(li, k));
            }
            return false;
        }
        !self.bufs.recv.is_empty()
    }

    fn flush_replies(&mut self, li: usize) {
        let now = self.now_ms();
        if let Some(port) = self.ports.get_mut(li).and_then(Option::as_mut)
            && let Some(s) = port.sessions.as_mut()
        {
            reply::relay(self.id, &port.shared, &port.sock, s, &mut self.bufs, now);
        }
        self.bufs.recv.clear();
        self.bufs.reply_src.clear();
    }

    fn sweep(&mut self) {
        let now = self.now_ms();
        for port in self.ports.iter_mut().flatten() {
            if let Some(s) = port.sessions.as_mut() {
                s.expire(self.id, &port.shared, now, SWEEP_BUDGET);
            }
        }
    }
}

/// The sessions of the listener in slot `li`, if it has any.
fn sessions_of(ports: &mut [Option<Port>], li: usize) -> Option<&mut Sessions> {
    ports.get_mut(li)?.as_mut()?.sessions.as_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(split_token(listener_token(3)), (3, None));
        assert_eq!(split_token(upstream_token(3, 0)), (3, Some(0)));
        assert_eq!(split_token(upstream_token(0, 70_000)), (0, Some(70_000)));
        assert_ne!(upstream_token(1 << 20, u32::MAX - 1), WAKE);
    }
}
