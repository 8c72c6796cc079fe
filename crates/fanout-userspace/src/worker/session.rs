//! A worker's sessions for one listener: the I/O around fanout-core's [`SessionMachine`]. The
//! machine decides (which downstream, which upstream port, which client a reply is for, when a
//! session ends); this owns the upstream sockets it names, their mio registration, and the
//! sends.
//!
//! Sessions are per worker: the kernel's SO_REUSEPORT hash sends a client to the same worker
//! every time, and the upstream sockets a worker opens are polled by that worker only, so
//! replies come back to the thread that owns the session and nothing needs a lock.
//!
//! Each downstream's `sessions` (live sessions pinned to it) is a per-worker gauge in its
//! [`EndpointStats`](crate::stats::EndpointStats): after a batch or a sweep, the worker stores
//! the machine's count of every downstream whose count changed (nothing when no session began,
//! moved or ended), and all of them when it takes up a new downstream set, since a downstream
//! that left and came back has fresh counters. A sweep (every 250 ms) also looks at the set,
//! so a new set is published within that even without traffic.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use fanout_config::SessionConfig;
use fanout_core::select::BackendSet;
use fanout_core::session::{Action, MachineConfig, Reply, SessionMachine, UpstreamPort};
use fanout_core::{DropReason, SessionCounts};
use mio::unix::SourceFd;
use mio::{Interest, Poll};

use super::forward::{Ctx, Egress, each_datagram, flush, push_copy, send_plan};
use super::{Buffers, LogLimiter, upstream_token};
use crate::listener::{ActiveSet, ListenerShared};
use crate::stats::ListenerCounters;
use crate::sys::socket;

/// Receive buffer of each upstream socket: replies to one port are few at a time.
const UPSTREAM_RECV_BUFFER: usize = 256 << 10;

struct Upstream {
    sock: UdpSocket,
    queued: bool,
}

/// One worker's sessions of one listener.
pub(crate) struct Sessions {
    pktinfo: bool,
    machine: SessionMachine,
    /// Socket `k` of the machine's pool is `upstream[k]`.
    upstream: Vec<Upstream>,
    /// Upstream sockets are dual-stack IPv6 (IPv4 downstreams as mapped addresses); decided
    /// when the first one is opened.
    dual_stack: Option<bool>,
    open_errors: LogLimiter,
    /// The machine's counts as last added to the listener's counters: the machine counts
    /// from zero, the counters of a listener outlive it.
    published: SessionCounts,
    /// Generation of the downstream set the per-downstream session gauges were last written
    /// for (0: none yet).
    pinned_generation: u64,
}

impl Sessions {
    /// `cursor` is where this worker's round-robin starts.
    pub(crate) fn new(
        shared: &ListenerShared,
        cfg: SessionConfig,
        workers: usize,
        cursor: usize,
    ) -> Self {
        let per_worker = cfg.max_sessions.div_ceil(workers.max(1));
        let machine = SessionMachine::new(MachineConfig {
            distribution: shared.backends().set.distribution(),
            sticky: cfg.sticky,
            reply: cfg.reply,
            max_sessions: per_worker,
            idle_ms: cfg.idle_timeout.as_millis() as u64,
            max_upstream_ports: u32::try_from(per_worker).unwrap_or(u32::MAX),
            cursor,
        });
        Sessions {
            pktinfo: cfg.reply && shared.local_addr().ip().is_unspecified(),
            machine,
            upstream: Vec::new(),
            dual_stack: None,
            open_errors: LogLimiter::default(),
            published: SessionCounts::default(),
            pinned_generation: 0,
        }
    }

    /// The "queued for reading" flag of upstream socket `k`.
    pub(crate) fn queued_flag(&mut self, k: u32) -> Option<&mut bool> {
        self.upstream.get_mut(k as usize).map(|u| &mut u.queued)
    }

    /// Forwards one received batch through the sessions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        id: usize,
        li: usize,
        shared: &ListenerShared,
        bufs: &mut Buffers,
        egress: &mut Egress,
        poll: &Poll,
        now: u64,
    ) {
        let ctx = Ctx::load(id, shared);
        let (counters, set) = (ctx.counters, &ctx.active.set);
        let generation = ctx.active.generation;
        let Buffers {
            recv,
            upstream_sends,
            plan,
            ..
        } = &mut *bufs;
        upstream_sends.clear();
        plan.clear();
        each_datagram(recv, counters, |piece, d| {
            let local_ip = if self.pktinfo { d.info.local_ip } else { None };
            let (one, via) = match self
                .machine
                .on_datagram(d.src, local_ip, set, generation, now)
            {
                Action::Send { to, via } => (Some(to), via),
                Action::Mirror { via } => (None, via),
                Action::Drop(reason) => return counters.dropped(reason),
            };
            let up = match via {
                Some(p) if p.new => match self.open_new(li, p, poll) {
                    Ok(()) => Some(p.index),
                    Err(reason) => return counters.dropped(reason),
                },
                Some(p) => Some(p.index),
                None => None,
            };
            match (up, one) {
                (Some(k), Some(e)) => upstream_sends.push((k, e, piece)),
                (Some(k), None) => {
                    upstream_sends.extend(set.active().iter().map(|&e| (k, e, piece)))
                }
                (None, Some(e)) => plan.push((e, piece)),
                (None, None) => plan.extend(set.active().iter().map(|&e| (e, piece))),
            }
        });
        send_plan(&ctx, recv, plan, egress);
        self.flush_upstream(&ctx, bufs);
        self.publish(id, counters, &ctx.active);
    }

    /// Copies the machine's session counts into the listener's counters, and the
    /// per-downstream ones into the gauges of `active`, the set the worker works with.
    fn publish(&mut self, id: usize, counters: &ListenerCounters, active: &ActiveSet) {
        self.publish_pinned(id, active);
        let c = self.machine.counts();
        let now = c.sessions();
        let was = self.published;
        // Never negative (an open failure only takes back a creation of the same batch), and
        // wrapping like the counters themselves, so the sums stay exact either way.
        counters.sessions_changed(SessionCounts {
            created: now.created.wrapping_sub(was.created),
            expired: now.expired.wrapping_sub(was.expired),
            evicted: now.evicted.wrapping_sub(was.evicted),
            repinned: now.repinned.wrapping_sub(was.repinned),
        });
        self.published = now;
        counters.set_sessions_active(c.active as usize);
    }

    /// Stores this worker's sessions per downstream into the gauges of `active`'s endpoints:
    /// those that changed, or all of them when `active` is a set not written yet. A downstream
    /// outside the set is not listed in snapshots; its count is written once it is back.
    fn publish_pinned(&mut self, id: usize, active: &ActiveSet) {
        let set = &active.set;
        if active.generation == self.pinned_generation {
            self.machine.take_pinned_changes(|d, n| {
                if let Some(s) = set.position(&d).and_then(|i| active.stats.get(i as usize)) {
                    s.set_sessions(id, n);
                }
            });
            return;
        }
        self.machine.take_pinned_changes(|_, _| {});
        for (e, s) in set.endpoints().iter().zip(active.stats.iter()) {
            s.set_sessions(id, self.machine.pinned_to(&e.addr));
        }
        self.pinned_generation = active.generation;
    }

    /// Sends the batch's datagrams bound for upstream sockets: one `sendmmsg` per socket.
    fn flush_upstream(&self, ctx: &Ctx<'_>, bufs: &mut Buffers) {
        if bufs.upstream_sends.is_empty() {
            return;
        }
        // Group by socket, then downstream (so runs leave as GSO messages), keeping each
        // client's datagrams in arrival order.
        bufs.upstream_sends.sort_unstable();
        let endpoints = ctx.active.set.endpoints();
        let dual = self.dual_stack == Some(true);
        let timeout = bufs.send_timeout;
        let mut start = 0;
        while start < bufs.upstream_sends.len() {
            let k = bufs.upstream_sends[start].0;
            let end = start
                + bufs.upstream_sends[start..]
                    .iter()
                    .take_while(|x| x.0 == k)
                    .count();
            let Some(up) = self.upstream.get(k as usize) else {
                (start..end).for_each(|_| ctx.counters.dropped(DropReason::SendError));
                start = end;
                continue;
            };
            let mut tx = bufs.upstream_q.tx();
            for &(_, e, piece) in &bufs.upstream_sends[start..end] {
                let Some(ep) = endpoints.get(e as usize) else {
                    ctx.counters.dropped(DropReason::NoDownstream);
                    continue;
                };
                let data = piece.data(&bufs.recv);
                let dst = if dual { mapped(ep.addr) } else { ep.addr };
                push_copy(ctx, &up.sock, &mut tx, timeout, &dst, e, data);
            }
            flush(ctx, &up.sock, &mut tx, timeout);
            start = end;
        }
    }

    /// Opens the new upstream socket the machine chose; when that fails, the machine takes its
    /// decision back and says what the datagram is dropped for.
    fn open_new(&mut self, li: usize, p: UpstreamPort, poll: &Poll) -> Result<(), DropReason> {
        let Err(e) = self.open(li, p.index, poll) else {
            return Ok(());
        };
        if self.open_errors.should_log() {
            tracing::warn!(
                error = %e,
                sockets = self.upstream.len(),
                "cannot open an upstream socket for a new session (raise RLIMIT_NOFILE or \
                 net.ipv4.ip_local_port_range); dropping with reason no_upstream_port"
            );
        }
        Err(self.machine.open_failed(p))
    }

    fn open(&mut self, li: usize, k: u32, poll: &Poll) -> std::io::Result<()> {
        debug_assert_eq!(k as usize, self.upstream.len());
        let sock = match self.dual_stack {
            Some(dual) => socket::upstream(dual, UPSTREAM_RECV_BUFFER)?,
            None => match socket::upstream(true, UPSTREAM_RECV_BUFFER) {
                Ok(s) => {
                    self.dual_stack = Some(true);
                    s
                }
                Err(_) => {
                    let s = socket::upstream(false, UPSTREAM_RECV_BUFFER)?;
                    self.dual_stack = Some(false);
                    s
                }
            },
        };
        poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            upstream_token(li, k),
            Interest::READABLE,
        )?;
        self.upstream.push(Upstream {
            sock,
            queued: false,
        });
        Ok(())
    }

    /// Reads what upstream socket `k` has into the batch (after what it already holds). True
    /// when the batch filled up, so the socket may have more.
    pub(crate) fn read_upstream(
        &mut self,
        k: u32,
        bufs: &mut Buffers,
        errors: &mut LogLimiter,
    ) -> bool {
        let Some(up) = self.upstream.get_mut(k as usize) else {
            return false;
        };
        up.queued = false;
        match bufs.recv.recv_append(up.sock.as_fd()) {
            Ok(n) => {
                bufs.reply_src.extend(std::iter::repeat_n(k, n));
                n > 0 && bufs.recv.is_full()
            }
            Err(e) => {
                if errors.should_log() {
                    tracing::warn!(error = %e, "receive on an upstream socket failed");
                }
                false
            }
        }
    }

    /// Decides a reply that arrived on upstream socket `k` from `src` (plain form).
    pub(crate) fn on_reply(
        &mut self,
        k: u32,
        src: SocketAddr,
        set: &BackendSet,
        now: u64,
    ) -> Reply {
        self.machine.on_reply(k, src, set, now)
    }

    /// Ends sessions idle past the timeout (at most `budget`) and publishes the counts of
    /// worker `id`. Upstream sockets are pooled, not per session, so nothing is closed here.
    pub(crate) fn expire(&mut self, id: usize, shared: &ListenerShared, now: u64, budget: usize) {
        self.machine.expire(now, budget, |_| {});
        self.publish(id, shared.stats().slot(id), &shared.backends());
    }
}

/// An IPv4 address as IPv4-mapped IPv6 (for dual-stack sockets); IPv6 unchanged.
fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// The plain form of an address a dual-stack socket reports (`::ffff:a.b.c.d` → `a.b.c.d`).
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn mapping_round_trips() {
        let a: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let m = mapped(a);
        assert_eq!(
            m.ip(),
            IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]))
        );
        assert_eq!(canonical(m), a);
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(mapped(v6), v6);
        assert_eq!(canonical(v6), v6);
    }
}
