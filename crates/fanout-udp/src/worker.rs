//! One worker thread: receives batches on its share of every listener and forwards them.
//!
//! Each worker owns one SO_REUSEPORT socket per listener (the kernel spreads clients over the
//! workers by flow hash), one egress socket per address family, and all its buffers. Nothing is
//! shared with other workers except read-mostly state (the downstream set behind `ArcSwap`) and
//! its own counter slots, so the hot path takes no lock, makes no allocation, and costs two
//! system calls per batch (`recvmmsg`, `sendmmsg`), not per datagram.
//!
//! Readiness comes from epoll (through mio, edge-triggered). A socket that filled a whole batch
//! is read again on the next turn, after the other listeners had theirs, so one busy listener
//! cannot starve the others.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_core::select::Pick;
use fanout_core::{DropReason, FlowKey};
use mio::{Events, Poll, Token};

use crate::listener::{ActiveSet, ListenerShared};
use crate::stats::ListenerCounters;
use crate::sys::{RecvBatch, SLOT_SIZE, SendOpts, SendQueue, SendResult, Tx};

/// Token of the waker that interrupts `poll` for shutdown.
pub(crate) const WAKE: Token = Token(usize::MAX);

/// Batches read from one socket before giving the other sockets a turn.
const BATCHES_PER_TURN: usize = 8;

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
    pub shutdown: Arc<AtomicBool>,
}

/// The two egress queues of a worker, one per address family.
struct Egress {
    v4: Option<(UdpSocket, SendQueue)>,
    v6: Option<(UdpSocket, SendQueue)>,
    timeout: Duration,
}

/// Rate-limits repeated error logs: the first, then one per `EVERY`.
#[derive(Default)]
struct LogLimiter(u64);

impl LogLimiter {
    const EVERY: u64 = 100_000;
    fn should_log(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1 || self.0.is_multiple_of(Self::EVERY)
    }
}

pub(crate) fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        workers,
        mut poll,
        listeners,
        egress_v4,
        egress_v6,
        batch,
        send_timeout,
        shutdown,
    } = setup;
    let mut events = Events::with_capacity(256);
    let mut recv = RecvBatch::new(batch, SLOT_SIZE);
    let queue = || SendQueue::new(batch * 2);
    let mut egress = Egress {
        v4: egress_v4.map(|s| (s, queue())),
        v6: egress_v6.map(|s| (s, queue())),
        timeout: send_timeout,
    };
    // Stagger the workers' round-robin positions so they do not all start on downstream 0.
    let mut cursors: Vec<usize> = vec![id; listeners.len()];
    // Everything starts "ready" so datagrams queued before the first event are not stranded.
    let mut ready = vec![true; listeners.len()];
    let mut recv_errors = LogLimiter::default();
    tracing::debug!(
        worker = id,
        of = workers,
        listeners = listeners.len(),
        "worker started"
    );
    loop {
        let timeout = if ready.iter().any(|r| *r) {
            Some(Duration::ZERO)
        } else {
            None
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(worker = id, error = %e, "poll failed; worker stops");
            break;
        }
        for ev in events.iter() {
            if let Some(r) = ready.get_mut(ev.token().0) {
                *r = true;
            }
        }
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        for (li, (shared, sock)) in listeners.iter().enumerate() {
            if !ready[li] {
                continue;
            }
            for _ in 0..BATCHES_PER_TURN {
                match recv.recv(sock.as_fd()) {
                    Ok(0) => {
                        ready[li] = false;
                        break;
                    }
                    Ok(n) => {
                        forward(id, shared, &recv, &mut cursors[li], &mut egress);
                        if n < recv.capacity() {
                            // Edge-triggered epoll reports the next arrival; no need to spend a
                            // system call finding the socket empty.
                            ready[li] = false;
                            break;
                        }
                    }
                    Err(e) => {
                        if recv_errors.should_log() {
                            tracing::warn!(worker = id, listener = shared.name(), error = %e, "receive failed");
                        }
                        ready[li] = false;
                        break;
                    }
                }
            }
        }
    }
    tracing::debug!(worker = id, "worker stopped");
}

/// Picks targets for every datagram of the batch and sends them.
fn forward(
    id: usize,
    shared: &ListenerShared,
    recv: &RecvBatch,
    cursor: &mut usize,
    egress: &mut Egress,
) {
    let counters = shared.stats().slot(id);
    let active = shared.backends();
    let set = &active.set;
    let timeout = egress.timeout;
    let mut tx4 = egress.v4.as_mut().map(|(s, q)| (s as &UdpSocket, q.tx()));
    let mut tx6 = egress.v6.as_mut().map(|(s, q)| (s as &UdpSocket, q.tx()));
    for i in 0..recv.len() {
        let Some(d) = recv.get(i) else {
            counters.received(0);
            counters.dropped(DropReason::Malformed);
            continue;
        };
        counters.received(d.data.len());
        if d.truncated {
            counters.dropped(DropReason::Truncated);
            continue;
        }
        match set.pick(&FlowKey::new(d.src), cursor) {
            Pick::None => counters.dropped(DropReason::NoDownstream),
            Pick::One(e) => {
                let ctx = Ctx {
                    id,
                    counters,
                    active: &active,
                    timeout,
                };
                queue(&ctx, &mut tx4, &mut tx6, e, d.data);
            }
            Pick::All => {
                let ctx = Ctx {
                    id,
                    counters,
                    active: &active,
                    timeout,
                };
                for &e in set.active() {
                    queue(&ctx, &mut tx4, &mut tx6, e, d.data);
                }
            }
        }
    }
    let ctx = Ctx {
        id,
        counters,
        active: &active,
        timeout,
    };
    for (sock, tx) in [tx4.as_mut(), tx6.as_mut()].into_iter().flatten() {
        flush(&ctx, sock, tx);
    }
}

/// What a queue/flush needs to account for results.
struct Ctx<'a> {
    id: usize,
    counters: &'a ListenerCounters,
    active: &'a ActiveSet,
    timeout: Duration,
}

type FamilyTx<'s, 'q, 'd> = Option<(&'s UdpSocket, Tx<'q, 'd>)>;

/// Queues one copy for endpoint `e` on the queue of its family, flushing first when full.
#[inline]
fn queue<'s, 'q, 'd>(
    ctx: &Ctx<'_>,
    tx4: &mut FamilyTx<'s, 'q, 'd>,
    tx6: &mut FamilyTx<'s, 'q, 'd>,
    e: u32,
    data: &'d [u8],
) {
    let Some(ep) = ctx.active.set.endpoints().get(e as usize) else {
        ctx.counters.dropped(DropReason::NoDownstream);
        return;
    };
    let dst: SocketAddr = ep.addr;
    let slot = if dst.is_ipv4() { tx4 } else { tx6 };
    let Some((sock, tx)) = slot.as_mut() else {
        ctx.counters.dropped(DropReason::SendError);
        return;
    };
    if tx.is_full() {
        flush(ctx, sock, tx);
    }
    tx.push(&dst, data, &SendOpts::default(), u64::from(e));
}

fn flush(ctx: &Ctx<'_>, sock: &UdpSocket, tx: &mut Tx<'_, '_>) {
    if tx.is_empty() {
        return;
    }
    tx.flush(
        sock.as_fd(),
        ctx.timeout,
        |tag, bytes, result| match result {
            SendResult::Sent => {
                ctx.counters.forwarded(bytes);
                if let Some(s) = ctx.active.stats.get(tag as usize) {
                    s.sent(ctx.id, bytes);
                }
            }
            SendResult::BufferFull => ctx.counters.dropped(DropReason::BufferFull),
            SendResult::Error(libc::EMSGSIZE) => ctx.counters.dropped(DropReason::TooLarge),
            SendResult::Error(_) => ctx.counters.dropped(DropReason::SendError),
        },
    );
}
