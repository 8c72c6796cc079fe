//! A worker's sessions for one listener: the table, the upstream sockets they send from, and
//! the map that routes a downstream's reply back to its session.
//!
//! Sessions are per worker: the kernel's SO_REUSEPORT hash sends a client to the same worker
//! every time, and the upstream sockets a worker opens are polled by that worker only, so
//! replies come back to the thread that owns the session and nothing needs a lock.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use fanout_config::SessionConfig;
use fanout_core::select::{BackendSet, Distribution, Pick};
use fanout_core::session::{
    Binding, EXCLUSIVE, PortSlots, Resolved, SessionId, SessionTable, bind_new, resolve,
};
use fanout_core::{DropReason, FlowKey};
use hashbrown::HashMap;
use mio::unix::SourceFd;
use mio::{Interest, Poll};

use super::forward::{Ctx, Egress, each_datagram, flush, send_plan};
use super::{Buffers, LogLimiter, upstream_token};
use crate::listener::ListenerShared;
use crate::stats::ListenerCounters;
use crate::sys::SendOpts;
use crate::sys::socket;

/// Receive buffer of each upstream socket: replies to one port are few at a time.
const UPSTREAM_RECV_BUFFER: usize = 256 << 10;

/// One client's session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    /// The downstream it is pinned to (for mirror: the primary). `None` when each datagram
    /// picks anew (`sticky: false`).
    binding: Option<Binding>,
    /// Upstream socket index and slot key, when replies are relayed.
    upstream: Option<(u32, SocketAddr)>,
    /// The address the client sent to, to answer from it on wildcard listeners.
    local_ip: Option<IpAddr>,
}

/// Where a datagram goes.
enum Target {
    One(u32),
    All,
}

struct Upstream {
    sock: UdpSocket,
    queued: bool,
}

/// One worker's sessions of one listener.
pub(crate) struct Sessions {
    reply: bool,
    mirror: bool,
    /// Per-datagram choice with replies: each session needs a port of its own.
    exclusive: bool,
    pktinfo: bool,
    table: SessionTable<Session>,
    slots: PortSlots,
    upstream: Vec<Upstream>,
    /// (upstream socket, downstream or EXCLUSIVE) → session.
    demux: HashMap<(u32, SocketAddr), SessionId>,
    /// Upstream sockets are dual-stack IPv6 (IPv4 downstreams as mapped addresses); decided
    /// when the first one is opened.
    dual_stack: Option<bool>,
    open_errors: LogLimiter,
}

impl Sessions {
    pub(crate) fn new(shared: &ListenerShared, cfg: SessionConfig, workers: usize) -> Self {
        let mirror = shared.backends().set.distribution() == Distribution::Mirror;
        let per_worker = cfg.max_sessions.div_ceil(workers.max(1));
        Sessions {
            reply: cfg.reply,
            mirror,
            exclusive: cfg.reply && !cfg.sticky && !mirror,
            pktinfo: cfg.reply && shared.local_addr().ip().is_unspecified(),
            table: SessionTable::new(per_worker, cfg.idle_timeout.as_millis() as u64),
            slots: PortSlots::new(u32::try_from(per_worker).unwrap_or(u32::MAX)),
            upstream: Vec::new(),
            demux: HashMap::new(),
            dual_stack: None,
            open_errors: LogLimiter::default(),
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
        _listener: &UdpSocket,
        cursor: &mut usize,
        bufs: &mut Buffers,
        egress: &mut Egress,
        poll: &Poll,
        now: u64,
    ) {
        let counters = shared.stats().slot(id);
        let active = shared.backends();
        let ctx = Ctx {
            id,
            counters,
            active: &active,
        };
        let set = &active.set;
        let generation = active.generation;
        let Buffers {
            recv,
            upstream_sends,
            plan,
            ..
        } = &mut *bufs;
        upstream_sends.clear();
        plan.clear();
        each_datagram(recv, counters, |piece, d| {
            let key = FlowKey::new(d.src);
            let sid = match self.table.lookup(&d.src, now) {
                Some(sid) => sid,
                None => {
                    let local_ip = if self.pktinfo { d.info.local_ip } else { None };
                    match self.create(
                        d.src, local_ip, set, generation, cursor, li, poll, counters, now,
                    ) {
                        Ok(sid) => sid,
                        Err(reason) => return counters.dropped(reason),
                    }
                }
            };
            let target = match self.target(sid, set, generation, &key, cursor, li, poll, counters) {
                Ok(t) => t,
                Err(reason) => return counters.dropped(reason),
            };
            let up = self
                .table
                .get(sid)
                .and_then(|(_, s)| s.upstream)
                .map(|(k, _)| k);
            match (up, target) {
                (Some(k), Target::One(e)) => upstream_sends.push((k, e, piece)),
                (Some(k), Target::All) => {
                    upstream_sends.extend(set.active().iter().map(|&e| (k, e, piece)))
                }
                (None, Target::One(e)) => plan.push((e, piece)),
                (None, Target::All) => plan.extend(set.active().iter().map(|&e| (e, piece))),
            }
        });
        send_plan(&ctx, recv, plan, egress);
        self.flush_upstream(&ctx, bufs);
        counters.set_sessions_active(self.table.len());
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
                if !tx.push_coalesced(&dst, data, &SendOpts::default(), u64::from(e)) {
                    flush(ctx, &up.sock, &mut tx, timeout);
                    tx.push(&dst, data, &SendOpts::default(), u64::from(e));
                }
            }
            flush(ctx, &up.sock, &mut tx, timeout);
            start = end;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        client: SocketAddr,
        local_ip: Option<IpAddr>,
        set: &BackendSet,
        generation: u64,
        cursor: &mut usize,
        li: usize,
        poll: &Poll,
        counters: &ListenerCounters,
        now: u64,
    ) -> Result<SessionId, DropReason> {
        let key = FlowKey::new(client);
        let binding = if self.exclusive {
            if set.active().is_empty() {
                return Err(DropReason::NoDownstream);
            }
            None
        } else {
            Some(bind_new(set, generation, &key, cursor).ok_or(DropReason::NoDownstream)?)
        };
        if self.table.is_full() {
            // Make room first: the evicted session's port slot may be the one this session
            // needs when the pool is at its limit.
            if let Some((_, _, old)) = self.table.pop_lru() {
                release(&mut self.slots, &mut self.demux, &old);
                counters.session_evicted();
            }
        }
        let upstream = if self.reply {
            let slot_key = match binding {
                Some(b) if !self.exclusive => b.downstream,
                _ => EXCLUSIVE,
            };
            Some((self.acquire(slot_key, li, poll)?, slot_key))
        } else {
            None
        };
        let (sid, evicted) = self.table.insert(
            client,
            Session {
                binding,
                upstream,
                local_ip,
            },
            now,
        );
        debug_assert!(evicted.is_none(), "room was made above");
        if let Some(u) = upstream {
            self.demux.insert(u, sid);
        }
        counters.session_created();
        Ok(sid)
    }

    /// Where the session's datagram goes, re-pinning it when its downstream left the set.
    #[allow(clippy::too_many_arguments)]
    fn target(
        &mut self,
        sid: SessionId,
        set: &BackendSet,
        generation: u64,
        key: &FlowKey,
        cursor: &mut usize,
        li: usize,
        poll: &Poll,
        counters: &ListenerCounters,
    ) -> Result<Target, DropReason> {
        let Some((_, sess)) = self.table.get(sid) else {
            return Err(DropReason::NoSession);
        };
        let sess = *sess;
        let Some(mut b) = sess.binding else {
            // Per-datagram choice.
            return match set.pick(key, cursor) {
                Pick::One(e) => Ok(Target::One(e)),
                Pick::All => Ok(Target::All),
                Pick::None => Err(DropReason::NoDownstream),
            };
        };
        let r = resolve(set, generation, &mut b, key, cursor);
        if let Some(s) = self.table.get_mut(sid) {
            s.binding = Some(b);
        }
        let one = match r {
            Resolved::Same(i) => i,
            Resolved::Repinned { from, to } => {
                counters.session_repinned();
                if let Some((k, slot_key)) = sess.upstream
                    && slot_key == from
                {
                    self.rekey(sid, k, from, b.downstream, li, poll)?;
                }
                to
            }
            Resolved::Gone => return Err(DropReason::NoDownstream),
        };
        if self.mirror {
            Ok(Target::All)
        } else {
            Ok(Target::One(one))
        }
    }

    /// Moves a session's upstream slot from downstream `from` to `to`.
    fn rekey(
        &mut self,
        sid: SessionId,
        k: u32,
        from: SocketAddr,
        to: SocketAddr,
        li: usize,
        poll: &Poll,
    ) -> Result<(), DropReason> {
        self.slots.release(from, k);
        self.demux.remove(&(k, from));
        match self.acquire(to, li, poll) {
            Ok(k2) => {
                self.demux.insert((k2, to), sid);
                if let Some(s) = self.table.get_mut(sid) {
                    s.upstream = Some((k2, to));
                }
                Ok(())
            }
            Err(reason) => {
                // No port for the new downstream: end the session; the client's next datagram
                // starts a new one.
                // (Its old slot is already released above.)
                self.table.remove(sid);
                Err(reason)
            }
        }
    }

    /// A socket whose slot for `slot_key` is free, opening one if needed.
    fn acquire(&mut self, slot_key: SocketAddr, li: usize, poll: &Poll) -> Result<u32, DropReason> {
        let a = self
            .slots
            .acquire(slot_key)
            .ok_or(DropReason::NoUpstreamPort)?;
        if a.new
            && let Err(e) = self.open(li, a.socket, poll)
        {
            self.slots.abandon_new(slot_key, a.socket);
            if self.open_errors.should_log() {
                tracing::warn!(
                    error = %e,
                    sockets = self.upstream.len(),
                    "cannot open an upstream socket for a new session (raise RLIMIT_NOFILE or \
                     net.ipv4.ip_local_port_range); dropping with reason no_upstream_port"
                );
            }
            return Err(DropReason::NoUpstreamPort);
        }
        Ok(a.socket)
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

    /// The session a reply on socket `k` from `src` belongs to, or why there is none.
    pub(crate) fn route_reply(
        &self,
        k: u32,
        src: SocketAddr,
        set: &BackendSet,
    ) -> Result<SessionId, DropReason> {
        let is_downstream = set.position(&src).is_some();
        if self.exclusive {
            let sid = self.demux.get(&(k, EXCLUSIVE)).copied();
            return match (sid, is_downstream) {
                (Some(sid), true) => Ok(sid),
                (_, false) => Err(DropReason::UnknownSource),
                (None, true) => Err(DropReason::NoSession),
            };
        }
        if let Some(&sid) = self.demux.get(&(k, src)) {
            return Ok(sid);
        }
        if !is_downstream {
            Err(DropReason::UnknownSource)
        } else if self.mirror
            && set
                .active()
                .first()
                .map(|&i| set.endpoints()[i as usize].addr)
                != Some(src)
        {
            Err(DropReason::ShadowReply)
        } else {
            Err(DropReason::NoSession)
        }
    }

    /// Refreshes a session on reply traffic and returns where to answer.
    pub(crate) fn reply_target(
        &mut self,
        sid: SessionId,
        now: u64,
    ) -> Option<(SocketAddr, Option<IpAddr>)> {
        self.table.touch(sid, now);
        self.table.get(sid).map(|(client, s)| (*client, s.local_ip))
    }

    /// Ends sessions idle past the timeout (at most `budget`).
    pub(crate) fn expire(&mut self, counters: &ListenerCounters, now: u64, budget: usize) {
        let Sessions {
            table,
            slots,
            demux,
            ..
        } = self;
        table.expire(now, budget, |_, _, s| {
            release(slots, demux, &s);
            counters.session_expired();
        });
        counters.set_sessions_active(table.len());
    }
}

/// Frees what an ended session held.
fn release(slots: &mut PortSlots, demux: &mut HashMap<(u32, SocketAddr), SessionId>, s: &Session) {
    if let Some((k, slot_key)) = s.upstream {
        slots.release(slot_key, k);
        demux.remove(&(k, slot_key));
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
