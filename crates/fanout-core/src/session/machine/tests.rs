//! One test per kind of decision the machine makes, with a fake clock.
//!
//! Most tests drive a [`Rig`], a machine and the downstream set it decides over, so that a
//! test reads as the datagrams, replies and set changes it feeds in and the decisions it
//! expects back.

use std::net::Ipv4Addr;

use super::*;
use crate::select::{DEFAULT_TABLE_SIZE, Endpoint, EndpointState};

fn ds(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], port))
}

const STRANGER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(203, 0, 113, 5),
    53,
));

fn set_of(d: Distribution, eps: Vec<Endpoint>) -> BackendSet {
    BackendSet::new(d, eps, DEFAULT_TABLE_SIZE)
}

fn set(d: Distribution, ports: &[u16]) -> BackendSet {
    set_of(d, ports.iter().map(|&p| Endpoint::new(ds(p))).collect())
}

/// Room for 100 sessions on 100 ports, a 10 s idle timeout, the cursor at 0: limits no test
/// reaches unless it lowers one.
fn cfg(d: Distribution, sticky: bool, reply: bool) -> MachineConfig {
    MachineConfig {
        distribution: d,
        sticky,
        reply,
        max_sessions: 100,
        idle_ms: 10_000,
        max_upstream_ports: 100,
        cursor: 0,
    }
}

/// Upstream port `index`, the next one the caller must open.
fn fresh(index: u32) -> UpstreamPort {
    UpstreamPort { index, new: true }
}

fn new(index: u32) -> Option<UpstreamPort> {
    Some(fresh(index))
}

fn old(index: u32) -> Option<UpstreamPort> {
    Some(UpstreamPort { index, new: false })
}

fn send(to: u32, via: Option<UpstreamPort>) -> Action {
    Action::Send { to, via }
}

fn relay(c: SocketAddr) -> Reply {
    Reply::Relay {
        client: c,
        local_ip: None,
    }
}

fn balanced(c: &Counts) -> bool {
    c.created == c.active + c.expired + c.evicted + c.removed
}

const RR: Distribution = Distribution::RoundRobin;

/// A machine and the downstream set it decides over, of generation `generation` (bumped
/// whenever the set is replaced, as the machine expects).
struct Rig {
    m: SessionMachine,
    s: BackendSet,
    generation: u64,
}

impl Rig {
    /// A machine of `cfg` deciding over `s`, generation 1.
    fn new(cfg: MachineConfig, s: BackendSet) -> Rig {
        Rig {
            m: SessionMachine::new(cfg),
            s,
            generation: 1,
        }
    }

    /// A datagram from `client(port)` at `now` (ms), to a local address the caller does not know.
    fn datagram(&mut self, port: u16, now: u64) -> Action {
        self.m
            .on_datagram(client(port), None, &self.s, self.generation, now)
    }

    /// A datagram from `from` on upstream port `index` at `now` (ms).
    fn reply(&mut self, index: u32, from: SocketAddr, now: u64) -> Reply {
        self.m.on_reply(index, from, &self.s, now)
    }

    /// The downstream set changes to `s`: the next generation.
    fn change(&mut self, s: BackendSet) {
        self.s = s;
        self.generation += 1;
    }
}

#[test]
fn a_new_session_is_pinned_and_shares_ports_across_downstreams() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2, 3]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    // Another downstream: the same port tells the two sessions apart.
    assert_eq!(r.datagram(2, 0), send(1, old(0)));
    // Round-robin has moved on; the session has not.
    assert_eq!(r.datagram(1, 1), send(0, old(0)));
    assert_eq!(r.datagram(3, 1), send(2, old(0)));
    // A second session on downstream 0 needs a second port.
    assert_eq!(r.datagram(4, 1), send(0, new(1)));
    let c = r.m.counts();
    assert_eq!((c.created, c.active), (4, 4));
    assert_eq!(r.m.ports_opened(), 2);
    assert_eq!(
        r.m.session(&client(1)),
        Some(SessionInfo {
            downstream: Some(ds(1)),
            port: Some(0),
            local_ip: None
        })
    );
}

#[test]
fn sessions_without_replies_pin_but_need_no_port() {
    let mut r = Rig::new(cfg(RR, true, false), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, None));
    assert_eq!(r.datagram(1, 0), send(0, None));
    assert_eq!(r.datagram(2, 0), send(1, None));
    assert_eq!(r.m.ports_opened(), 0);
}

#[test]
fn sticky_sessions_keep_their_downstream_across_set_changes() {
    let mut r = Rig::new(cfg(RR, true, false), set(RR, &[1, 2, 3]));
    r.datagram(1, 0);
    assert_eq!(r.datagram(2, 0), send(1, None));
    // A downstream is added in front: the index moves, the downstream does not.
    r.change(set(RR, &[9, 1, 2, 3]));
    for t in 1..5 {
        assert_eq!(r.datagram(2, t), send(2, None));
    }
    assert_eq!(r.m.counts().repinned, 0);
}

#[test]
fn a_removed_downstream_repins_its_sessions_and_moves_their_port_slot() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    assert_eq!(r.datagram(2, 0), send(1, old(0)));
    // ds(1) leaves; client 1 moves to ds(2), which already has client 2 on port 0.
    r.change(set(RR, &[2, 3]));
    assert_eq!(r.datagram(1, 1), send(0, new(1)));
    assert_eq!(r.m.counts().repinned, 1);
    assert_eq!(
        r.m.session(&client(1)).and_then(|i| i.downstream),
        Some(ds(2))
    );
    assert_eq!(r.reply(1, ds(2), 2), relay(client(1)));
    assert_eq!(r.reply(0, ds(2), 2), relay(client(2)));
    assert_eq!(
        r.reply(0, ds(1), 2),
        Reply::Drop(DropReason::UnknownSource),
        "the old downstream's slot was freed and it is no downstream now"
    );
    assert!(balanced(&r.m.counts()));
}

#[test]
fn draining_downstreams_keep_their_sessions_but_get_no_new_ones() {
    let mut eps = vec![Endpoint::new(ds(1)), Endpoint::new(ds(2))];
    let mut r = Rig::new(cfg(RR, true, true), set_of(RR, eps.clone()));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    eps[0].state = EndpointState::Draining;
    r.change(set_of(RR, eps));
    assert_eq!(r.datagram(1, 1), send(0, old(0)));
    for p in 2..8 {
        assert!(matches!(r.datagram(p, 1), Action::Send { to: 1, .. }));
    }
    assert_eq!(r.m.counts().repinned, 0);
    assert_eq!(r.reply(0, ds(1), 2), relay(client(1)));
}

#[test]
fn no_downstream_drops_without_creating_or_ending_sessions() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1]));
    r.datagram(1, 0);
    r.change(BackendSet::empty(RR));
    let none = Action::Drop(DropReason::NoDownstream);
    assert_eq!(r.datagram(1, 1), none);
    assert_eq!(r.datagram(2, 1), none);
    assert_eq!(r.m.counts().created, 1);
    // The session survived and finds its downstream again when it comes back.
    r.change(set(RR, &[1]));
    assert_eq!(r.datagram(1, 2), send(0, old(0)));
    assert_eq!(r.m.counts().repinned, 0);
}

#[test]
fn replies_without_sticky_get_a_port_of_their_own() {
    let mut r = Rig::new(cfg(RR, false, true), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    assert_eq!(
        r.datagram(1, 0),
        send(1, old(0)),
        "each datagram picks anew, from the session's port"
    );
    assert_eq!(r.datagram(2, 0), send(0, new(1)));
    assert_eq!(r.datagram(3, 0), send(1, new(2)));
    assert_eq!(r.m.session(&client(1)).and_then(|i| i.downstream), None);
    assert_eq!(r.reply(0, ds(2), 1), relay(client(1)));
    assert_eq!(r.reply(1, ds(1), 1), relay(client(2)));
    assert_eq!(
        r.reply(0, STRANGER, 1),
        Reply::Drop(DropReason::UnknownSource)
    );
    assert_eq!(r.reply(7, ds(1), 1), Reply::Drop(DropReason::NoSession));
}

#[test]
fn replies_are_accepted_only_from_the_sessions_downstream_on_its_port() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(
        r.m.on_datagram(client(1), ip, &r.s, r.generation, 0),
        send(0, new(0))
    );
    assert_eq!(
        r.reply(0, ds(1), 1),
        Reply::Relay {
            client: client(1),
            local_ip: ip
        }
    );
    let drop = |why| Reply::Drop(why);
    assert_eq!(r.reply(0, ds(2), 1), drop(DropReason::NoSession));
    assert_eq!(r.reply(1, ds(1), 1), drop(DropReason::NoSession));
    assert_eq!(r.reply(0, STRANGER, 1), drop(DropReason::UnknownSource));
}

#[test]
fn a_failed_open_undoes_the_new_session() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    assert_eq!(r.m.open_failed(fresh(0)), DropReason::NoUpstreamPort);
    assert_eq!(r.m.counts(), Counts::default(), "as if it never existed");
    assert_eq!((r.m.ports_opened(), r.m.session(&client(1))), (0, None));
    assert_eq!(r.reply(0, ds(1), 1), Reply::Drop(DropReason::NoSession));
    // Binding moved the round-robin, as it did before the open was tried.
    assert_eq!(r.datagram(1, 1), send(1, new(0)));
    // A report that matches no pending open changes nothing.
    r.m.open_failed(fresh(3));
    assert_eq!(r.m.counts().active, 1);
}

#[test]
fn a_failed_open_without_sticky_leaves_the_round_robin_where_it_was() {
    let mut r = Rig::new(cfg(RR, false, true), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    r.m.open_failed(fresh(0));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
}

#[test]
fn a_failed_open_after_a_repin_ends_the_session() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    r.datagram(1, 0);
    r.datagram(2, 0);
    r.change(set(RR, &[2]));
    assert_eq!(r.datagram(1, 1), send(0, new(1)));
    r.m.open_failed(fresh(1));
    let c = r.m.counts();
    assert_eq!((c.created, c.active, c.repinned, c.removed), (2, 1, 1, 1));
    assert!(balanced(&c));
    assert_eq!((r.m.session(&client(1)), r.m.ports_opened()), (None, 1));
    assert_eq!(r.reply(0, ds(2), 2), relay(client(2)));
}

#[test]
fn a_full_port_pool_drops_new_sessions() {
    let mut config = cfg(RR, false, true);
    config.max_upstream_ports = 1;
    let mut r = Rig::new(config, set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    let full = Action::Drop(DropReason::NoUpstreamPort);
    assert_eq!(r.datagram(2, 0), full);
    assert_eq!(r.m.counts().created, 1);
    // The pick was not spent on the dropped datagram.
    assert_eq!(r.datagram(1, 0), send(1, old(0)));
}

#[test]
fn a_full_table_evicts_the_least_recently_used_and_reuses_its_port() {
    let mut config = cfg(RR, true, true);
    config.max_sessions = 2;
    let mut r = Rig::new(config, set(RR, &[1]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    assert_eq!(r.datagram(2, 0), send(0, new(1)));
    r.datagram(1, 2_000);
    assert_eq!(r.datagram(3, 3_000), send(0, old(1)));
    let c = r.m.counts();
    assert_eq!((c.created, c.evicted, c.active), (3, 1, 2));
    assert_eq!(
        r.m.session(&client(2)),
        None,
        "client 2 was the least recent"
    );
    assert_eq!(r.reply(1, ds(1), 3_000), relay(client(3)));
    assert_eq!(r.reply(0, ds(1), 3_000), relay(client(1)));
}

#[test]
fn idle_sessions_expire_with_a_fake_clock() {
    let mut config = cfg(RR, true, true);
    config.idle_ms = 1_000;
    let mut r = Rig::new(config, set(RR, &[1]));
    r.datagram(1, 0);
    r.datagram(2, 500);
    assert_eq!(r.m.next_expiry(500), Some(500));
    let mut ended = Vec::new();
    assert_eq!(r.m.expire(999, 10, |e| ended.push(e)), 0);
    assert_eq!(r.m.expire(1_000, 10, |e| ended.push(e)), 1);
    assert_eq!(
        ended,
        [Ended {
            client: client(1),
            downstream: Some(ds(1)),
            port: Some(0),
            reason: EndReason::Expired
        }]
    );
    // A reply is traffic too: it keeps client 2 alive past its datagram's deadline.
    assert_eq!(r.reply(1, ds(1), 1_400), relay(client(2)));
    assert_eq!(r.m.expire(1_500, 10, |e| ended.push(e)), 0);
    assert_eq!(r.m.expire(2_400, 10, |e| ended.push(e)), 1);
    let c = r.m.counts();
    assert_eq!((c.created, c.expired, c.active), (2, 2, 0));
    assert_eq!(r.m.next_expiry(2_400), None);
    assert_eq!(r.reply(1, ds(1), 2_400), Reply::Drop(DropReason::NoSession));
    // Both slots are free again: the pool does not grow.
    assert_eq!(r.datagram(3, 2_500), send(0, old(0)));
}

#[test]
fn expiry_is_bounded_by_its_budget() {
    let mut config = cfg(RR, true, true);
    config.idle_ms = 10;
    let mut r = Rig::new(config, set(RR, &[1, 2]));
    for p in 0..20 {
        r.datagram(p, 0);
    }
    assert_eq!(r.m.expire(100, 8, |_| {}), 8);
    assert_eq!(r.m.len(), 12);
    assert_eq!(r.m.expire(100, 100, |_| {}), 12);
    assert!(r.m.is_empty());
}

#[test]
fn mirror_sends_to_all_and_relays_only_the_primary() {
    let mir = Distribution::Mirror;
    let mut r = Rig::new(cfg(mir, true, true), set(mir, &[1, 2, 3]));
    assert_eq!(r.datagram(1, 0), Action::Mirror { via: new(0) });
    assert_eq!(r.reply(0, ds(1), 0), relay(client(1)));
    let drop = |why| Reply::Drop(why);
    assert_eq!(r.reply(0, ds(2), 0), drop(DropReason::ShadowReply));
    assert_eq!(r.reply(0, STRANGER, 0), drop(DropReason::UnknownSource));
    // The primary leaves: the next one takes over, on the same port.
    r.change(set(mir, &[2, 3]));
    assert_eq!(r.datagram(1, 1), Action::Mirror { via: old(0) });
    assert_eq!(r.m.counts().repinned, 1);
    assert_eq!(r.reply(0, ds(2), 1), relay(client(1)));
    assert_eq!(r.reply(0, ds(3), 1), drop(DropReason::ShadowReply));
    let mut plain = Rig::new(cfg(mir, true, false), set(mir, &[1, 2, 3]));
    assert_eq!(plain.datagram(1, 0), Action::Mirror { via: None });
}

#[test]
fn the_cursor_starts_where_it_is_told() {
    let mut config = cfg(RR, false, true);
    config.cursor = 1;
    let mut r = Rig::new(config, set(RR, &[1, 2, 3]));
    assert_eq!(r.datagram(1, 0), send(1, new(0)));
}

#[test]
fn counts_map_to_the_metrics_counters() {
    let c = Counts {
        created: 5,
        expired: 1,
        evicted: 2,
        repinned: 3,
        removed: 1,
        active: 1,
    };
    assert_eq!(
        c.sessions(),
        SessionCounts {
            created: 5,
            expired: 1,
            evicted: 2,
            repinned: 3
        }
    );
    assert!(balanced(&c));
}

/// Live sessions pinned to `ds(p)` for each of `ports`.
fn pinned(r: &Rig, ports: &[u16]) -> Vec<u64> {
    ports.iter().map(|&p| r.m.pinned_to(&ds(p))).collect()
}

/// What changed since the last call, as (downstream port, count), by port.
fn pinned_changes(r: &mut Rig) -> Vec<(u16, u64)> {
    let mut v = Vec::new();
    r.m.take_pinned_changes(|d, n| v.push((d.port(), n)));
    v.sort_unstable();
    v
}

#[test]
fn pinned_counts_follow_creation_repin_and_expiry() {
    let mut config = cfg(RR, true, true);
    config.idle_ms = 1_000;
    let mut r = Rig::new(config, set(RR, &[1, 2]));
    for p in 1..=4 {
        r.datagram(p, 0);
    }
    assert_eq!(pinned(&r, &[1, 2]), [2, 2]);
    assert_eq!(pinned_changes(&mut r), [(1, 2), (2, 2)]);
    assert_eq!(pinned_changes(&mut r), [], "each change is reported once");
    // Traffic of live sessions changes no count.
    r.datagram(1, 100);
    r.reply(0, ds(1), 100);
    assert_eq!(pinned_changes(&mut r), []);
    // ds(1) leaves: its sessions move one by one, on their next datagram.
    r.change(set(RR, &[2, 3]));
    assert_eq!(pinned(&r, &[1, 2, 3]), [2, 2, 0], "nothing moved yet");
    r.datagram(1, 200);
    let to = r.m.session(&client(1)).and_then(|s| s.downstream).unwrap();
    assert_ne!(to, ds(1));
    assert_eq!(r.m.pinned_to(&ds(1)), 1);
    assert_eq!(
        r.m.pinned_to(&ds(2)) + r.m.pinned_to(&ds(3)),
        3,
        "moved, not added"
    );
    let changes = pinned_changes(&mut r);
    assert_eq!(changes.len(), 2);
    assert!(changes.contains(&(1, 1)) && changes.contains(&(to.port(), r.m.pinned_to(&to))));
    r.datagram(3, 200);
    assert_eq!(r.m.pinned_to(&ds(1)), 0);
    assert_eq!(r.m.counts().repinned, 2);
    // Client 1 and 3 were seen at 200, 2 and 4 at 0: those two expire first.
    assert_eq!(r.m.expire(1_000, 10, |_| {}), 2);
    assert_eq!(r.m.pinned_to(&ds(2)) + r.m.pinned_to(&ds(3)), 2);
    assert_eq!(r.m.expire(1_200, 10, |_| {}), 2);
    assert_eq!(pinned(&r, &[1, 2, 3]), [0, 0, 0]);
    let changes = pinned_changes(&mut r);
    assert!(changes.iter().all(|&(_, n)| n == 0), "{changes:?}");
    assert!(
        r.m.pinned.by_downstream.is_empty(),
        "no entry outlives its sessions"
    );
}

#[test]
fn pinned_counts_follow_eviction() {
    let mut config = cfg(RR, true, false);
    config.max_sessions = 2;
    let mut r = Rig::new(config, set(RR, &[1, 2]));
    r.datagram(1, 0);
    r.datagram(2, 0);
    assert_eq!(pinned(&r, &[1, 2]), [1, 1]);
    // Client 3 evicts client 1 (on ds(1)) and lands on ds(1) itself: round-robin came back.
    assert_eq!(r.datagram(3, 2_000), send(0, None));
    assert_eq!(r.m.counts().evicted, 1);
    assert_eq!(pinned(&r, &[1, 2]), [1, 1]);
    // Client 4 evicts client 2 (on ds(2)) and lands on ds(2).
    r.datagram(4, 3_000);
    r.datagram(5, 4_000);
    assert_eq!(r.m.counts().evicted, 3);
    assert_eq!(r.m.pinned_to(&ds(1)) + r.m.pinned_to(&ds(2)), 2);
    let by_sessions = |d| {
        r.m.sessions()
            .filter(|(_, s)| s.downstream == Some(d))
            .count() as u64
    };
    assert_eq!(r.m.pinned_to(&ds(1)), by_sessions(ds(1)));
    assert_eq!(r.m.pinned_to(&ds(2)), by_sessions(ds(2)));
}

#[test]
fn a_failed_open_takes_back_its_pinned_count() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    assert_eq!(r.datagram(1, 0), send(0, new(0)));
    r.m.open_failed(fresh(0));
    assert_eq!(pinned(&r, &[1, 2]), [0, 0]);
    // Reported (as zero) even though it came back where it was: the caller just republishes.
    assert_eq!(pinned_changes(&mut r), [(1, 0)]);
    // After a re-pin: the session ends on its new downstream, the old one lost it already.
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1, 2]));
    r.datagram(1, 0);
    r.datagram(2, 0);
    r.change(set(RR, &[2]));
    assert_eq!(r.datagram(1, 1), send(0, new(1)));
    assert_eq!(pinned(&r, &[1, 2]), [0, 2]);
    r.m.open_failed(fresh(1));
    assert_eq!(pinned(&r, &[1, 2]), [0, 1]);
    assert_eq!(r.m.len(), 1);
}

#[test]
fn a_repin_without_a_port_for_the_new_downstream_ends_the_count_too() {
    // One port: ds(2)'s only slot is taken by client 2, so client 1 cannot move there.
    let mut config = cfg(RR, true, true);
    config.max_upstream_ports = 1;
    let mut r = Rig::new(config, set(RR, &[1, 2]));
    r.datagram(1, 0);
    r.datagram(2, 0);
    r.change(set(RR, &[2]));
    assert_eq!(r.datagram(1, 1), Action::Drop(DropReason::NoUpstreamPort));
    assert_eq!(r.m.counts().removed, 1);
    assert_eq!(pinned(&r, &[1, 2]), [0, 1]);
}

#[test]
fn mirror_sessions_count_for_their_primary() {
    let mir = Distribution::Mirror;
    let mut r = Rig::new(cfg(mir, true, true), set(mir, &[1, 2, 3]));
    r.datagram(1, 0);
    r.datagram(2, 0);
    assert_eq!(
        pinned(&r, &[1, 2, 3]),
        [2, 0, 0],
        "shadows have no sessions"
    );
    r.change(set(mir, &[2, 3]));
    r.datagram(1, 1);
    assert_eq!(pinned(&r, &[1, 2, 3]), [1, 1, 0]);
}

#[test]
fn sessions_without_a_binding_count_for_no_downstream() {
    let mut r = Rig::new(cfg(RR, false, true), set(RR, &[1, 2]));
    for p in 1..=3 {
        r.datagram(p, 0);
    }
    assert_eq!(r.m.len(), 3);
    assert_eq!(pinned(&r, &[1, 2]), [0, 0]);
    assert_eq!(pinned_changes(&mut r), []);
}

#[test]
fn a_session_left_without_downstream_still_counts_for_its_own() {
    let mut r = Rig::new(cfg(RR, true, true), set(RR, &[1]));
    r.datagram(1, 0);
    r.change(BackendSet::empty(RR));
    assert_eq!(r.datagram(1, 1), Action::Drop(DropReason::NoDownstream));
    assert_eq!(
        r.m.pinned_to(&ds(1)),
        1,
        "it stands, pinned, until it ends or moves"
    );
}
