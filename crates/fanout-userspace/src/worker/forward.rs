//! The client-to-downstream path without sessions: pick a target per datagram and send it from
//! the worker's egress socket of the downstream's address family.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use fanout_core::select::Pick;
use fanout_core::{DropReason, FlowKey};

use crate::listener::{ActiveSet, ListenerShared};
use crate::stats::ListenerCounters;
use crate::sys::{Datagram, RecvBatch, SendOpts, SendQueue, SendResult, Tx};

/// A worker's egress sockets and their queues, one per address family.
pub(crate) struct Egress {
    v4: Option<(UdpSocket, SendQueue)>,
    v6: Option<(UdpSocket, SendQueue)>,
    timeout: Duration,
    /// For the queues of sockets installed later.
    batch: usize,
    gso: bool,
}

impl Egress {
    pub(crate) fn new(
        v4: Option<UdpSocket>,
        v6: Option<UdpSocket>,
        batch: usize,
        timeout: Duration,
        gso: bool,
    ) -> Self {
        let mut e = Egress {
            v4: None,
            v6: None,
            timeout,
            batch,
            gso,
        };
        e.install(v4, v6);
        e
    }

    /// Takes the sockets of the families it has none of yet (a listener added at run time may
    /// bring downstreams of a new address family); others are dropped.
    pub(crate) fn install(&mut self, v4: Option<UdpSocket>, v6: Option<UdpSocket>) {
        let (batch, gso) = (self.batch, self.gso);
        let q = || {
            let mut q = SendQueue::new(batch * 2);
            q.set_gso(gso);
            q
        };
        for (slot, sock) in [(&mut self.v4, v4), (&mut self.v6, v6)] {
            if let (None, Some(s)) = (slot.as_ref(), sock) {
                *slot = Some((s, q()));
            }
        }
    }

    /// Opens a batch on both families.
    pub(crate) fn begin<'d>(&mut self) -> EgressTx<'_, 'd> {
        EgressTx {
            v4: self.v4.as_mut().map(|(s, q)| (&*s, q.tx())),
            v6: self.v6.as_mut().map(|(s, q)| (&*s, q.tx())),
            timeout: self.timeout,
        }
    }
}

/// An open egress batch.
pub(crate) struct EgressTx<'q, 'd> {
    v4: Option<(&'q UdpSocket, Tx<'q, 'd>)>,
    v6: Option<(&'q UdpSocket, Tx<'q, 'd>)>,
    timeout: Duration,
}

/// What a flush needs to account for results: one batch's view of a listener.
pub(crate) struct Ctx<'a> {
    pub id: usize,
    pub counters: &'a ListenerCounters,
    pub active: Guard<Arc<ActiveSet>>,
}

impl<'a> Ctx<'a> {
    /// Worker `id`'s counters of `shared` and its downstream set as of now: one lock-free
    /// `ArcSwap` load per batch, held for the whole batch, so that every datagram of it is
    /// picked and counted against the same set.
    #[inline]
    pub(crate) fn load(id: usize, shared: &'a ListenerShared) -> Self {
        Ctx {
            id,
            counters: shared.stats().slot(id),
            active: shared.backends(),
        }
    }
}

impl<'d> EgressTx<'_, 'd> {
    /// Queues one copy for endpoint `e`, flushing first when its family's batch is full.
    #[inline]
    pub(crate) fn queue(&mut self, ctx: &Ctx<'_>, e: u32, data: &'d [u8]) {
        let Some(ep) = ctx.active.set.endpoints().get(e as usize) else {
            ctx.counters.dropped(DropReason::NoDownstream);
            return;
        };
        let dst: SocketAddr = ep.addr;
        let timeout = self.timeout;
        let slot = if dst.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        let Some((sock, tx)) = slot.as_mut() else {
            ctx.counters.dropped(DropReason::SendError);
            return;
        };
        push_copy(ctx, sock, tx, timeout, &dst, e, data);
    }

    /// Sends what is queued.
    pub(crate) fn finish(mut self, ctx: &Ctx<'_>) {
        let timeout = self.timeout;
        for (sock, tx) in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
            flush(ctx, sock, tx, timeout);
        }
    }
}

/// Queues one copy of `data` for endpoint `e` at `dst` (as one more GSO segment of the previous
/// message when it can), first sending what `tx` holds on `sock` when it is full. The tag is
/// the endpoint index, as [`flush`] expects.
#[inline]
pub(crate) fn push_copy<'d>(
    ctx: &Ctx<'_>,
    sock: &UdpSocket,
    tx: &mut Tx<'_, 'd>,
    timeout: Duration,
    dst: &SocketAddr,
    e: u32,
    data: &'d [u8],
) {
    if !tx.push_coalesced(dst, data, &SendOpts::default(), u64::from(e)) {
        flush(ctx, sock, tx, timeout);
        tx.push(dst, data, &SendOpts::default(), u64::from(e));
    }
}

/// Sends a batch and accounts every datagram of it: forwarded (listener and endpoint counters,
/// the tag is the endpoint index) or dropped with the reason the kernel gave.
pub(crate) fn flush(ctx: &Ctx<'_>, sock: &UdpSocket, tx: &mut Tx<'_, '_>, timeout: Duration) {
    if tx.is_empty() {
        return;
    }
    tx.flush(sock.as_fd(), timeout, |tag, bytes, result| match result {
        SendResult::Sent => {
            ctx.counters.forwarded(bytes);
            if let Some(s) = ctx.active.stats.get(tag as usize) {
                s.sent(ctx.id, bytes);
            }
        }
        r => ctx.counters.dropped(send_drop_reason(r)),
    });
}

/// The drop reason for a failed send.
pub(crate) fn send_drop_reason(r: SendResult) -> DropReason {
    match r {
        SendResult::BufferFull => DropReason::BufferFull,
        SendResult::Error(libc::EMSGSIZE) => DropReason::TooLarge,
        SendResult::Error(_) | SendResult::Sent => DropReason::SendError,
    }
}

/// One datagram of a receive batch: a slot, or one segment of a slot that UDP GRO filled with
/// several datagrams of the same flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Piece {
    pub slot: u32,
    pub off: u32,
    pub len: u32,
}

impl Piece {
    /// Its bytes.
    #[inline]
    pub(crate) fn data<'a>(&self, recv: &'a RecvBatch) -> &'a [u8] {
        let d = recv.data(self.slot as usize);
        let (off, len) = (self.off as usize, self.len as usize);
        d.get(off..off + len).unwrap_or(&[])
    }
}

/// Calls `f` once per datagram of the batch, splitting GRO buffers into their datagrams, and
/// counts every datagram received; those that cannot be forwarded at all (unreadable source,
/// truncated) are counted as dropped here and never reach `f`.
pub(crate) fn each_datagram(
    recv: &RecvBatch,
    counters: &ListenerCounters,
    mut f: impl FnMut(Piece, &Datagram<'_>),
) {
    for i in 0..recv.len() {
        let Some(d) = recv.get(i) else {
            counters.received(0);
            counters.dropped(DropReason::Malformed);
            continue;
        };
        if d.truncated {
            counters.received(d.data.len());
            counters.dropped(DropReason::Truncated);
            continue;
        }
        let seg = d
            .info
            .gro_segment
            .map(usize::from)
            .filter(|&s| s > 0 && s < d.data.len());
        match seg {
            None => {
                counters.received(d.data.len());
                f(
                    Piece {
                        slot: i as u32,
                        off: 0,
                        len: d.data.len() as u32,
                    },
                    &d,
                );
            }
            Some(seg) => {
                for (c, chunk) in d.data.chunks(seg).enumerate() {
                    counters.received(chunk.len());
                    f(
                        Piece {
                            slot: i as u32,
                            off: (c * seg) as u32,
                            len: chunk.len() as u32,
                        },
                        &d,
                    );
                }
            }
        }
    }
}

/// Sends a plan of (endpoint, datagram) pairs from the egress sockets, grouped by endpoint in
/// arrival order so runs to one downstream leave as GSO messages.
pub(crate) fn send_plan(
    ctx: &Ctx<'_>,
    recv: &RecvBatch,
    plan: &mut [(u32, Piece)],
    egress: &mut Egress,
) {
    if plan.is_empty() {
        return;
    }
    plan.sort_unstable();
    let mut tx = egress.begin();
    for &(e, piece) in plan.iter() {
        tx.queue(ctx, e, piece.data(recv));
    }
    tx.finish(ctx);
}

/// Forwards one received batch of a listener without sessions.
pub(crate) fn stateless(
    id: usize,
    shared: &ListenerShared,
    recv: &RecvBatch,
    cursor: &mut usize,
    egress: &mut Egress,
    plan: &mut Vec<(u32, Piece)>,
) {
    let ctx = Ctx::load(id, shared);
    let (counters, set) = (ctx.counters, &ctx.active.set);
    plan.clear();
    each_datagram(recv, counters, |piece, d| {
        match set.pick(&FlowKey::new(d.src), cursor) {
            Pick::None => counters.dropped(DropReason::NoDownstream),
            Pick::One(e) => plan.push((e, piece)),
            Pick::All => plan.extend(set.active().iter().map(|&e| (e, piece))),
        }
    });
    send_plan(&ctx, recv, plan, egress);
}
