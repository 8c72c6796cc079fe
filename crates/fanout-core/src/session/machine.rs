//! The session state machine of one listener (on one worker): client datagrams, downstream
//! replies and the passing of time go in, actions come out.
//!
//! It owns everything a data plane must remember about sessions: the [`SessionTable`] (LRU,
//! idle expiry), the [`PortSlots`] (which upstream socket each session sends from) and the reply
//! demultiplexer ((upstream socket, downstream) → session). It owns no socket and reads no
//! clock: the caller passes `now` in milliseconds and performs the [`Action`]s and [`Reply`]s
//! it gets back. Keeping the decisions pure is what lets several drivers share one set of
//! rules: the userspace worker drives it with real sockets, property tests drive it with
//! random traffic, set changes and clocks, and the kernel-plane sessions (planned) will be
//! checked against it by replaying one packet trace through both, as the stateless parity
//! tests already do for selection.
//!
//! The per-datagram path allocates nothing (actions are small `Copy` enums returned by value;
//! the table and maps only grow, up to their bounds) and takes no lock: a machine belongs to one
//! thread.
//!
//! Opening an upstream socket is the one step that is the caller's and can fail after the
//! machine has decided. So an action may carry `via: UpstreamPort { new: true, .. }`: the caller
//! opens that socket first and, if it cannot, calls [`SessionMachine::open_failed`], which
//! undoes the session (or the move) that needed it, exactly as if the machine had found no
//! port in the first place.
//!
//! It also counts, per downstream address, the live sessions pinned to it (for `mirror`: to
//! the primary), for the admin API's `sessions` of each downstream. The count follows every
//! session event: +1 when a session is created (or moved) onto a downstream, −1 when it moves
//! away or ends (expiry, eviction, removal, an open-failure undo), and nothing else, so the
//! per-datagram path never touches it. Sessions without a binding (per-datagram choice with
//! replies: each datagram picks anew) count toward no downstream. Counts are by address, not
//! by index in the set: a session pinned to a downstream that left the set still counts for
//! it until it is re-pinned or ends. The caller publishes only what changed
//! ([`SessionMachine::take_pinned_changes`]); [`SessionMachine::pinned_to`] reads any count.

use std::net::{IpAddr, SocketAddr};

use hashbrown::HashMap;

use super::{
    Acquired, Binding, EXCLUSIVE, EndReason, PortSlots, Resolved, SessionId, SessionTable,
    bind_new, resolve,
};
use crate::accounting::{DropReason, SessionCounts};
use crate::flow::FlowKey;
use crate::select::{BackendSet, Distribution, Pick};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// How one machine's sessions behave: the listener's `session:` section, sized for the share
/// of sessions this machine holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    /// The listener's distribution (for `mirror`, replies come from the primary only).
    pub distribution: Distribution,
    /// A client keeps its downstream for the life of its session. Sessions without `reply`
    /// are always sticky: pinning is the only thing they do.
    pub sticky: bool,
    /// Downstream replies are relayed to the client, so sessions need upstream ports.
    pub reply: bool,
    /// Sessions held at most; the least recently used is evicted beyond.
    pub max_sessions: usize,
    /// A session ends after this long without traffic in either direction.
    pub idle_ms: u64,
    /// Upstream sockets opened at most.
    pub max_upstream_ports: u32,
    /// The round-robin position to start at (workers stagger theirs).
    pub cursor: usize,
}

/// The upstream socket a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamPort {
    /// Index of the socket in the caller's pool (0, 1, 2, ... in the order they are opened).
    pub index: u32,
    /// The caller must open socket `index` before sending: it is the next one of the pool.
    pub new: bool,
}

/// What to do with one client datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it to the endpoint with index `to` in the set, from upstream socket `via` (from any
    /// socket of the caller's when `None`: no reply is expected).
    Send {
        /// Endpoint index in the [`BackendSet`] the datagram was decided on.
        to: u32,
        /// The session's upstream socket.
        via: Option<UpstreamPort>,
    },
    /// Send a copy to every active endpoint of the set (mirror), from `via`.
    Mirror {
        /// The session's upstream socket.
        via: Option<UpstreamPort>,
    },
    /// Drop it and count it under this reason.
    Drop(DropReason),
}

/// What to do with one datagram that arrived on an upstream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Relay it to `client`, from the listener's address (`local_ip` on wildcard listeners).
    Relay {
        /// The session's client.
        client: SocketAddr,
        /// The address the client wrote to, when the caller recorded it.
        local_ip: Option<IpAddr>,
    },
    /// Drop it and count it under this reason.
    Drop(DropReason),
}

/// A session that ended, as reported by [`SessionMachine::expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its client.
    pub client: SocketAddr,
    /// Its downstream, when it was pinned to one.
    pub downstream: Option<SocketAddr>,
    /// The upstream socket it used (its slot there is already free again).
    pub port: Option<u32>,
    /// Why it ended.
    pub reason: EndReason,
}

/// What is known about one live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The downstream it is pinned to (for mirror: the primary); `None` when each datagram
    /// picks anew.
    pub downstream: Option<SocketAddr>,
    /// Its upstream socket, when replies are relayed.
    pub port: Option<u32>,
    /// The address the client wrote to, as given when the session began.
    pub local_ip: Option<IpAddr>,
}

/// Session lifecycle counts since the machine was made. Every session ever created is either
/// live or ended in exactly one way: `created == active + expired + evicted + removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Sessions created.
    pub created: u64,
    /// Ended after the idle timeout.
    pub expired: u64,
    /// Ended to make room in a full table.
    pub evicted: u64,
    /// Moved to another downstream because theirs left the set.
    pub repinned: u64,
    /// Ended because their new downstream had no upstream port for them.
    pub removed: u64,
    /// Live sessions.
    pub active: u64,
}

impl Counts {
    /// The counters the metrics report (`removed` has no series of its own).
    pub fn sessions(&self) -> SessionCounts {
        SessionCounts {
            created: self.created,
            expired: self.expired,
            evicted: self.evicted,
            repinned: self.repinned,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Session {
    /// `None` when each datagram picks anew (per-datagram balancing with replies).
    binding: Option<Binding>,
    /// Upstream socket index and its slot key, when replies are relayed.
    upstream: Option<(u32, SocketAddr)>,
    local_ip: Option<IpAddr>,
}

/// Live sessions pinned to each downstream, and which of the counts changed since the caller
/// last took them. Only addresses with live sessions, or with a change not taken yet, have an
/// entry: the map is bounded by the downstreams in use, and once grown it takes no allocation
/// (an entry removed at zero leaves its room for the next).
#[derive(Debug, Default)]
struct Pinned {
    by_downstream: HashMap<SocketAddr, PinnedCount>,
    /// Addresses whose count changed since [`SessionMachine::take_pinned_changes`], each once.
    changed: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PinnedCount {
    live: u64,
    /// Listed in `changed`.
    changed: bool,
}

impl Pinned {
    fn add(&mut self, downstream: SocketAddr) {
        self.entry(downstream).live += 1;
    }

    fn sub(&mut self, downstream: SocketAddr) {
        let e = self.entry(downstream);
        debug_assert!(e.live > 0, "a session ended that was never counted");
        e.live = e.live.saturating_sub(1);
    }

    /// A session's binding changed from `from` to `to` (either may be none).
    fn moved(&mut self, from: Option<SocketAddr>, to: Option<SocketAddr>) {
        if from == to {
            return;
        }
        if let Some(d) = from {
            self.sub(d);
        }
        if let Some(d) = to {
            self.add(d);
        }
    }

    fn entry(&mut self, downstream: SocketAddr) -> &mut PinnedCount {
        let e = self.by_downstream.entry(downstream).or_default();
        if !e.changed {
            e.changed = true;
            self.changed.push(downstream);
        }
        e
    }

    fn get(&self, downstream: &SocketAddr) -> u64 {
        self.by_downstream.get(downstream).map_or(0, |e| e.live)
    }

    fn take_changes(&mut self, mut f: impl FnMut(SocketAddr, u64)) {
        for d in self.changed.drain(..) {
            let live = match self.by_downstream.get_mut(&d) {
                Some(e) => {
                    e.changed = false;
                    e.live
                }
                None => 0,
            };
            if live == 0 {
                self.by_downstream.remove(&d);
            }
            f(d, live);
        }
    }
}

/// A decision that needs a socket the caller has yet to open, kept until the next input so
/// [`SessionMachine::open_failed`] can take it back.
#[derive(Debug, Clone, Copy)]
struct Pending {
    sid: SessionId,
    socket: u32,
    slot_key: SocketAddr,
    /// The session was created for this datagram (else it was moved to another downstream).
    created: bool,
    /// The round-robin position before this datagram's pick, when an undo must restore it.
    cursor: Option<usize>,
}

enum Target {
    One(u32),
    All,
}

/// One listener's sessions on one worker, as a pure state machine.
#[derive(Debug)]
pub struct SessionMachine {
    reply: bool,
    mirror: bool,
    /// Per-datagram choice with replies: a session talks to every downstream from one port,
    /// so that port must be its own.
    exclusive: bool,
    table: SessionTable<Session>,
    slots: PortSlots,
    /// (upstream socket, downstream or [`EXCLUSIVE`]) → session.
    demux: HashMap<(u32, SocketAddr), SessionId>,
    cursor: usize,
    /// Lifecycle counts; `active` is filled in by [`counts`](Self::counts).
    counts: Counts,
    /// Live sessions per downstream.
    pinned: Pinned,
    pending: Option<Pending>,
}

impl SessionMachine {
    /// An empty machine.
    pub fn new(cfg: MachineConfig) -> Self {
        let mirror = cfg.distribution == Distribution::Mirror;
        SessionMachine {
            reply: cfg.reply,
            mirror,
            exclusive: cfg.reply && !cfg.sticky && !mirror,
            table: SessionTable::new(cfg.max_sessions, cfg.idle_ms),
            slots: PortSlots::new(cfg.max_upstream_ports),
            demux: HashMap::new(),
            cursor: cfg.cursor,
            counts: Counts::default(),
            pinned: Pinned::default(),
            pending: None,
        }
    }

    /// Decides one datagram from `client` (which wrote to `local_ip`, if the caller knows),
    /// against `set` of generation `generation` (bumped whenever the set is replaced), at
    /// `now` ms. Creates, re-pins and evicts sessions as needed.
    pub fn on_datagram(
        &mut self,
        client: SocketAddr,
        local_ip: Option<IpAddr>,
        set: &BackendSet,
        generation: u64,
        now: u64,
    ) -> Action {
        self.pending = None;
        let key = FlowKey::new(client);
        match self.table.lookup(&client, now) {
            Some(sid) => self.existing(sid, &key, set, generation),
            None => self.create(client, local_ip, &key, set, generation, now),
        }
    }

    /// The caller could not open the new socket `port` of the last action: takes back the
    /// session (or the move to another downstream) that needed it and returns the reason to
    /// count the datagram under. Call it before the next input: only the last action's new
    /// port can be taken back, and a report that matches none changes nothing.
    pub fn open_failed(&mut self, port: UpstreamPort) -> DropReason {
        let Some(p) = self.pending.take_if(|p| p.socket == port.index) else {
            return DropReason::NoUpstreamPort;
        };
        self.slots.abandon_new(p.slot_key, p.socket);
        self.demux.remove(&(p.socket, p.slot_key));
        self.end(p.sid);
        if p.created {
            // As if it had never been made: the metrics never see it.
            self.counts.created = self.counts.created.saturating_sub(1);
        } else {
            self.counts.removed += 1;
        }
        if let Some(c) = p.cursor {
            self.cursor = c;
        }
        DropReason::NoUpstreamPort
    }

    /// Decides one datagram that arrived on upstream socket `port` from `from` (in its plain,
    /// not IPv4-mapped, form), with `set` the listener's current set, at `now` ms. A relayed
    /// reply keeps its session alive.
    pub fn on_reply(&mut self, port: u32, from: SocketAddr, set: &BackendSet, now: u64) -> Reply {
        let sid = match self.route_reply(port, from, set) {
            Ok(sid) => sid,
            Err(reason) => return Reply::Drop(reason),
        };
        self.table.touch(sid, now);
        match self.table.get(sid) {
            Some((client, s)) => Reply::Relay {
                client: *client,
                local_ip: s.local_ip,
            },
            None => Reply::Drop(DropReason::NoSession),
        }
    }

    /// Ends up to `budget` sessions idle at `now`, calling `on_end` for each; returns how many
    /// ended. Bounded so a sweep never stalls the data path: call again for the rest.
    pub fn expire(&mut self, now: u64, budget: usize, mut on_end: impl FnMut(Ended)) -> usize {
        self.pending = None;
        let SessionMachine {
            table,
            slots,
            demux,
            counts,
            pinned,
            ..
        } = self;
        table.expire(now, budget, |_, client, s| {
            release(slots, demux, &s);
            pinned.moved(downstream(&s), None);
            counts.expired += 1;
            on_end(ended(client, &s, EndReason::Expired));
        })
    }

    /// A lower bound of the milliseconds from `now` until a session may expire (`None` when
    /// there are none).
    pub fn next_expiry(&self, now: u64) -> Option<u64> {
        self.table.next_expiry(now)
    }

    /// Lifecycle counts, with `active` as of now.
    pub fn counts(&self) -> Counts {
        Counts {
            active: self.table.len() as u64,
            ..self.counts
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Live sessions pinned to `downstream` (for `mirror`: with it as their primary), whether
    /// or not it is in the current set. Sessions without a binding count for no downstream.
    pub fn pinned_to(&self, downstream: &SocketAddr) -> u64 {
        self.pinned.get(downstream)
    }

    /// Calls `f` with every downstream whose [`pinned_to`](Self::pinned_to) count changed since
    /// the last call, and its count now (0 included, once), each downstream once. Costs nothing
    /// when no session began, moved or ended in between; allocates nothing.
    pub fn take_pinned_changes(&mut self, f: impl FnMut(SocketAddr, u64)) {
        self.pinned.take_changes(f);
    }

    /// Upstream sockets the caller should have open: the pool's size.
    pub fn ports_opened(&self) -> u32 {
        self.slots.opened()
    }

    /// The session of `client`, without touching it.
    pub fn session(&self, client: &SocketAddr) -> Option<SessionInfo> {
        let (_, s) = self.table.get(self.table.find(client)?)?;
        Some(info(s))
    }

    /// Every live session, most recently used first.
    pub fn sessions(&self) -> impl Iterator<Item = (SocketAddr, SessionInfo)> + '_ {
        self.table.iter().map(|(_, c, s)| (*c, info(s)))
    }

    fn create(
        &mut self,
        client: SocketAddr,
        local_ip: Option<IpAddr>,
        key: &FlowKey,
        set: &BackendSet,
        generation: u64,
        now: u64,
    ) -> Action {
        let before = self.cursor;
        let (binding, target) = if self.exclusive {
            // Picked before anything changes, so a failure below can put the cursor back: a
            // datagram that found no port must not move the round-robin.
            match pick(set, key, &mut self.cursor) {
                Some(t) => (None, t),
                None => return Action::Drop(DropReason::NoDownstream),
            }
        } else {
            match bind_new(set, generation, key, &mut self.cursor) {
                Some(b) => (Some(b), self.pinned_target(b.index)),
                None => return Action::Drop(DropReason::NoDownstream),
            }
        };
        if self.table.is_full() {
            // Make room first: the evicted session's port slot may be the one this session
            // needs when the pool is at its limit.
            if let Some((_, _, old)) = self.table.pop_lru() {
                release(&mut self.slots, &mut self.demux, &old);
                self.pinned.moved(downstream(&old), None);
                self.counts.evicted += 1;
            }
        }
        let slot_key = binding.map_or(EXCLUSIVE, |b| b.downstream);
        let acquired = if self.reply {
            let Some(a) = self.slots.acquire(slot_key) else {
                if self.exclusive {
                    self.cursor = before;
                }
                return Action::Drop(DropReason::NoUpstreamPort);
            };
            Some(a)
        } else {
            None
        };
        let upstream = acquired.map(|a| (a.socket, slot_key));
        let session = Session {
            binding,
            upstream,
            local_ip,
        };
        let (sid, evicted) = self.table.insert(client, session, now);
        debug_assert!(evicted.is_none(), "room was made above");
        if let Some(u) = upstream {
            self.demux.insert(u, sid);
        }
        self.counts.created += 1;
        self.pinned.moved(None, binding.map(|b| b.downstream));
        if let Some(a) = acquired.filter(|a| a.new) {
            self.pending = Some(Pending {
                sid,
                socket: a.socket,
                slot_key,
                created: true,
                cursor: self.exclusive.then_some(before),
            });
        }
        action(target, acquired.map(port))
    }

    /// A datagram of a live session: where it goes, re-pinning the session when its
    /// downstream left the set.
    fn existing(
        &mut self,
        sid: SessionId,
        key: &FlowKey,
        set: &BackendSet,
        generation: u64,
    ) -> Action {
        let Some(s) = self.table.get(sid).map(|(_, s)| *s) else {
            return Action::Drop(DropReason::NoSession);
        };
        let mut via = s.upstream.map(|(k, _)| UpstreamPort {
            index: k,
            new: false,
        });
        let Some(mut b) = s.binding else {
            return match pick(set, key, &mut self.cursor) {
                Some(t) => action(t, via),
                None => Action::Drop(DropReason::NoDownstream),
            };
        };
        let r = resolve(set, generation, &mut b, key, &mut self.cursor);
        if let Some(v) = self.table.get_mut(sid) {
            v.binding = Some(b);
        }
        let one = match r {
            Resolved::Same(i) => i,
            Resolved::Repinned { from, to } => {
                self.counts.repinned += 1;
                self.pinned.moved(Some(from), Some(b.downstream));
                if let Some((k, slot_key)) = s.upstream
                    && slot_key == from
                {
                    match self.rekey(sid, k, from, b.downstream) {
                        Ok(p) => via = Some(p),
                        Err(reason) => return Action::Drop(reason),
                    }
                }
                to
            }
            Resolved::Gone => return Action::Drop(DropReason::NoDownstream),
        };
        action(self.pinned_target(one), via)
    }

    /// Moves a session's upstream slot from downstream `from` to `to`: the port it used may
    /// already carry another session of `to`.
    fn rekey(
        &mut self,
        sid: SessionId,
        k: u32,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Result<UpstreamPort, DropReason> {
        self.slots.release(from, k);
        self.demux.remove(&(k, from));
        let Some(a) = self.slots.acquire(to) else {
            // No port for the new downstream: end the session (its old slot is already free);
            // the client's next datagram starts a new one.
            self.end(sid);
            self.counts.removed += 1;
            return Err(DropReason::NoUpstreamPort);
        };
        self.demux.insert((a.socket, to), sid);
        if let Some(s) = self.table.get_mut(sid) {
            s.upstream = Some((a.socket, to));
        }
        if a.new {
            self.pending = Some(Pending {
                sid,
                socket: a.socket,
                slot_key: to,
                created: false,
                cursor: None,
            });
        }
        Ok(port(a))
    }

    /// The session a reply on socket `k` from `src` belongs to, or why there is none.
    fn route_reply(
        &self,
        k: u32,
        src: SocketAddr,
        set: &BackendSet,
    ) -> Result<SessionId, DropReason> {
        let is_downstream = set.position(&src).is_some();
        if self.exclusive {
            // The port is the session's own, but only a downstream may answer on it.
            let sid = self.demux.get(&(k, EXCLUSIVE)).copied();
            return match (sid, is_downstream) {
                (Some(sid), true) => Ok(sid),
                (_, false) => Err(DropReason::UnknownSource),
                (None, true) => Err(DropReason::NoSession),
            };
        }
        // A session's own downstream is answered even after it left the set: its session
        // still stands until the next datagram re-pins it.
        if let Some(&sid) = self.demux.get(&(k, src)) {
            return Ok(sid);
        }
        if !is_downstream {
            Err(DropReason::UnknownSource)
        } else if self.mirror && primary(set) != Some(src) {
            Err(DropReason::ShadowReply)
        } else {
            Err(DropReason::NoSession)
        }
    }

    /// Ends session `sid` outside expiry and eviction (removal, an undo): it leaves the table
    /// and its downstream's count. Its port slot is the caller's to free.
    fn end(&mut self, sid: SessionId) {
        if let Some((_, s)) = self.table.remove(sid) {
            self.pinned.moved(downstream(&s), None);
        }
    }

    fn pinned_target(&self, index: u32) -> Target {
        if self.mirror {
            Target::All
        } else {
            Target::One(index)
        }
    }
}

/// The per-datagram choice, `None` when nothing takes new flows.
fn pick(set: &BackendSet, key: &FlowKey, cursor: &mut usize) -> Option<Target> {
    match set.pick(key, cursor) {
        Pick::One(e) => Some(Target::One(e)),
        Pick::All => Some(Target::All),
        Pick::None => None,
    }
}

fn action(t: Target, via: Option<UpstreamPort>) -> Action {
    match t {
        Target::One(to) => Action::Send { to, via },
        Target::All => Action::Mirror { via },
    }
}

fn port(a: Acquired) -> UpstreamPort {
    UpstreamPort {
        index: a.socket,
        new: a.new,
    }
}

/// The mirror's primary: the downstream whose replies are relayed.
fn primary(set: &BackendSet) -> Option<SocketAddr> {
    let &i = set.active().first()?;
    set.endpoints().get(i as usize).map(|e| e.addr)
}

/// Frees what an ended session held.
fn release(slots: &mut PortSlots, demux: &mut HashMap<(u32, SocketAddr), SessionId>, s: &Session) {
    if let Some((k, slot_key)) = s.upstream {
        slots.release(slot_key, k);
        demux.remove(&(k, slot_key));
    }
}

/// The downstream a session is pinned to, if any.
fn downstream(s: &Session) -> Option<SocketAddr> {
    s.binding.map(|b| b.downstream)
}

fn ended(client: SocketAddr, s: &Session, reason: EndReason) -> Ended {
    Ended {
        client,
        downstream: downstream(s),
        port: s.upstream.map(|(k, _)| k),
        reason,
    }
}

fn info(s: &Session) -> SessionInfo {
    SessionInfo {
        downstream: downstream(s),
        port: s.upstream.map(|(k, _)| k),
        local_ip: s.local_ip,
    }
}
