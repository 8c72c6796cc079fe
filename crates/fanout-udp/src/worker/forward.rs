//! The client-to-downstream path without sessions: pick a target per datagram and send it from
//! the worker's egress socket of the downstream's address family.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use fanout_core::select::Pick;
use fanout_core::{DropReason, FlowKey};

use crate::listener::{ActiveSet, ListenerShared};
use crate::stats::ListenerCounters;
use crate::sys::{RecvBatch, SendOpts, SendQueue, SendResult, Tx};

/// A worker's egress sockets and their queues, one per address family.
pub(crate) struct Egress {
    v4: Option<(UdpSocket, SendQueue)>,
    v6: Option<(UdpSocket, SendQueue)>,
    timeout: Duration,
}

impl Egress {
    pub(crate) fn new(
        v4: Option<UdpSocket>,
        v6: Option<UdpSocket>,
        batch: usize,
        timeout: Duration,
        gso: bool,
    ) -> Self {
        let q = || {
            let mut q = SendQueue::new(batch * 2);
            q.set_gso(gso);
            q
        };
        Egress {
            v4: v4.map(|s| (s, q())),
            v6: v6.map(|s| (s, q())),
            timeout,
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

/// What a flush needs to account for results.
pub(crate) struct Ctx<'a> {
    pub id: usize,
    pub counters: &'a ListenerCounters,
    pub active: &'a ActiveSet,
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
        if !tx.push_coalesced(&dst, data, &SendOpts::default(), u64::from(e)) {
            flush(ctx, sock, tx, timeout);
            tx.push(&dst, data, &SendOpts::default(), u64::from(e));
        }
    }

    /// Sends what is queued.
    pub(crate) fn finish(mut self, ctx: &Ctx<'_>) {
        let timeout = self.timeout;
        for (sock, tx) in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
            flush(ctx, sock, tx, timeout);
        }
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

/// Forwards one received batch of a listener without sessions.
///
/// Targets are chosen first into `plan` as (endpoint, datagram) pairs, then sent grouped by
/// endpoint in arrival order, so runs to one downstream leave as GSO messages.
pub(crate) fn stateless(
    id: usize,
    shared: &ListenerShared,
    recv: &RecvBatch,
    cursor: &mut usize,
    egress: &mut Egress,
    plan: &mut Vec<(u32, u32)>,
) {
    let counters = shared.stats().slot(id);
    let active = shared.backends();
    let ctx = Ctx {
        id,
        counters,
        active: &active,
    };
    let set = &active.set;
    plan.clear();
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
            Pick::One(e) => plan.push((e, i as u32)),
            Pick::All => plan.extend(set.active().iter().map(|&e| (e, i as u32))),
        }
    }
    plan.sort_unstable();
    let mut tx = egress.begin();
    for &(e, i) in plan.iter() {
        tx.queue(&ctx, e, recv.data(i as usize));
    }
    tx.finish(&ctx);
}
