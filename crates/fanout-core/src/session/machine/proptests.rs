//! Random sequences of client datagrams, replies, set changes, clock advances, sweeps and
//! failed socket opens, driven the way a data plane drives the machine, with its invariants
//! checked after every step; now and then the per-downstream session counts are published the
//! way a worker does, and what was published must match.

use hashbrown::HashMap;
use proptest::prelude::*;

use super::*;
use crate::select::{DEFAULT_TABLE_SIZE, Endpoint, EndpointState};

/// Downstream addresses `ds(1..=POOL)`; `ds(0)` is a stranger, never in any set.
const POOL: u8 = 5;

fn ds(i: u8) -> SocketAddr {
    if i == 0 {
        SocketAddr::from(([203, 0, 113, 9], 53))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 6000 + u16::from(i)))
    }
}

fn client(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 1000 + u16::from(i)))
}

#[derive(Debug, Clone)]
enum Op {
    Datagram {
        client: u8,
        fail_open: bool,
    },
    Reply {
        port: u32,
        from: u8,
    },
    /// Which pool members are in the set, which of those drain, and a rotation of their order
    /// (so indices move while addresses stay).
    SetChange {
        present: u8,
        draining: u8,
        rotate: u8,
    },
    Advance(u64),
    Expire(usize),
    /// Take the per-downstream count changes, as a worker does after a batch.
    Publish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..12, prop::bool::weighted(0.15))
            .prop_map(|(client, fail_open)| Op::Datagram { client, fail_open }),
        4 => (0u32..8, 0u8..=POOL).prop_map(|(port, from)| Op::Reply { port, from }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(present, draining, rotate)| Op::SetChange { present, draining, rotate }),
        2 => (0u64..700).prop_map(Op::Advance),
        1 => (1usize..6).prop_map(Op::Expire),
        2 => Just(Op::Publish),
    ]
}

fn config() -> impl Strategy<Value = MachineConfig> {
    let dist = prop_oneof![
        Just(Distribution::RoundRobin),
        Just(Distribution::ConsistentHash),
        Just(Distribution::Mirror),
    ];
    (
        dist,
        any::<bool>(),
        any::<bool>(),
        1usize..8,
        1u32..6,
        0usize..4,
    )
        .prop_map(
            |(distribution, sticky, reply, max_sessions, max_upstream_ports, cursor)| {
                MachineConfig {
                    distribution,
                    sticky,
                    reply,
                    max_sessions,
                    idle_ms: 1_000,
                    max_upstream_ports,
                    cursor,
                }
            },
        )
}

fn build(d: Distribution, present: u8, draining: u8, rotate: u8) -> BackendSet {
    let mut eps: Vec<Endpoint> = (1..=POOL)
        .filter(|i| present & (1 << (i - 1)) != 0)
        .map(|i| {
            let mut e = Endpoint::new(ds(i));
            if draining & (1 << (i - 1)) != 0 {
                e.state = EndpointState::Draining;
            }
            e
        })
        .collect();
    if !eps.is_empty() {
        let n = usize::from(rotate) % eps.len();
        eps.rotate_left(n);
    }
    BackendSet::new(d, eps, DEFAULT_TABLE_SIZE)
}

/// What the data plane around the machine knows.
struct Io {
    set: BackendSet,
    generation: u64,
    now: u64,
    /// Upstream sockets it opened.
    opened: u32,
    /// The per-downstream session counts as last published.
    published: HashMap<SocketAddr, u64>,
}

fn check(m: &SessionMachine, io: &Io) -> Result<(), TestCaseError> {
    let c = m.counts();
    prop_assert_eq!(c.active, m.table.len() as u64);
    prop_assert_eq!(c.created, c.active + c.expired + c.evicted + c.removed);
    prop_assert!(m.table.len() <= m.table.capacity());
    prop_assert_eq!(m.slots.opened(), io.opened, "machine and sockets agree");
    let mut per_key: HashMap<SocketAddr, u32> = HashMap::new();
    let mut with_port = 0u64;
    for (sid, _, s) in m.table.iter() {
        prop_assert_eq!(s.upstream.is_some(), m.reply);
        let Some((k, key)) = s.upstream else { continue };
        with_port += 1;
        prop_assert!(k < io.opened);
        prop_assert_eq!(key, s.binding.map_or(EXCLUSIVE, |b| b.downstream));
        prop_assert_eq!(m.demux.get(&(k, key)), Some(&sid), "replies find it");
        *per_key.entry(key).or_default() += 1;
    }
    for (key, n) in &per_key {
        prop_assert_eq!(m.slots.in_use(key), *n, "its slot is held");
    }
    prop_assert_eq!(m.demux.len() as u64, with_port);
    prop_assert_eq!(m.slots.total_in_use(), with_port, "no slot leaks");
    // Per-downstream counts: exactly the live sessions pinned there, so they add up to the
    // sessions with a binding.
    let mut pinned: HashMap<SocketAddr, u64> = HashMap::new();
    for (_, s) in m.sessions() {
        if let Some(d) = s.downstream {
            *pinned.entry(d).or_default() += 1;
        }
    }
    let bound: u64 = pinned.values().sum();
    let counted: u64 = m.pinned.by_downstream.values().map(|e| e.live).sum();
    prop_assert_eq!(counted, bound, "the counts add up to the pinned sessions");
    if m.exclusive {
        prop_assert_eq!(bound, 0, "per-datagram sessions are pinned nowhere");
    } else {
        prop_assert_eq!(bound, c.active, "every other session is pinned");
    }
    for i in 0..=POOL {
        let d = ds(i);
        prop_assert_eq!(m.pinned_to(&d), pinned.get(&d).copied().unwrap_or(0));
    }
    for (d, e) in &m.pinned.by_downstream {
        prop_assert!(e.live > 0 || e.changed, "{d}: a stale entry");
        prop_assert_eq!(e.changed, m.pinned.changed.contains(d));
    }
    prop_assert!(m.pinned.changed.len() <= m.pinned.by_downstream.len());
    Ok(())
}

/// Takes the changes into `io.published` and checks it now holds every count.
fn publish(m: &mut SessionMachine, io: &mut Io) -> Result<(), TestCaseError> {
    let mut seen = Vec::new();
    m.take_pinned_changes(|d, n| {
        seen.push(d);
        io.published.insert(d, n);
    });
    let before = seen.len();
    seen.sort_unstable();
    seen.dedup();
    prop_assert_eq!(seen.len(), before, "each downstream reported once");
    for i in 0..=POOL {
        let d = ds(i);
        prop_assert_eq!(
            io.published.get(&d).copied().unwrap_or(0),
            m.pinned_to(&d),
            "published {}",
            d
        );
    }
    prop_assert!(m.pinned.changed.is_empty());
    Ok(())
}

fn datagram(
    m: &mut SessionMachine,
    io: &mut Io,
    c: SocketAddr,
    fail_open: bool,
) -> Result<(), TestCaseError> {
    let before = m.session(&c);
    let a = m.on_datagram(c, None, &io.set, io.generation, io.now);
    let via = match a {
        Action::Send { to, via } => {
            let ep = io.set.endpoints().get(to as usize).copied();
            prop_assert!(ep.is_some());
            let after = m.session(&c);
            prop_assert!(after.is_some());
            if let (Some(ep), Some(d)) = (ep, after.and_then(|s| s.downstream)) {
                prop_assert_eq!(ep.addr, d, "sent where it is pinned");
            }
            via
        }
        Action::Mirror { via } => {
            prop_assert!(m.mirror && !io.set.active().is_empty());
            via
        }
        Action::Drop(r) => {
            prop_assert!(matches!(
                r,
                DropReason::NoDownstream | DropReason::NoUpstreamPort
            ));
            if before.is_none() {
                prop_assert!(m.session(&c).is_none(), "a drop creates no session");
            }
            return Ok(());
        }
    };
    if let (Some(b), Some(a)) = (
        before.and_then(|s| s.downstream),
        m.session(&c).and_then(|s| s.downstream),
    ) && !m.mirror
        && io.set.position(&b).is_some()
    {
        prop_assert_eq!(a, b, "sticky while the downstream stays in the set");
    }
    if before.is_none()
        && let Some(d) = m.session(&c).and_then(|s| s.downstream)
    {
        let i = io.set.position(&d);
        prop_assert!(
            i.is_some_and(|i| io.set.active().contains(&i)),
            "new sessions go to active downstreams"
        );
    }
    let Some(p) = via else {
        prop_assert!(!m.reply);
        return Ok(());
    };
    prop_assert_eq!(m.session(&c).and_then(|s| s.port), Some(p.index));
    if !p.new {
        prop_assert!(p.index < io.opened);
    } else {
        prop_assert_eq!(p.index, io.opened, "sockets open in order");
        if fail_open {
            prop_assert_eq!(m.open_failed(p), DropReason::NoUpstreamPort);
            prop_assert!(m.session(&c).is_none());
        } else {
            io.opened += 1;
        }
    }
    Ok(())
}

fn reply(m: &mut SessionMachine, io: &Io, port: u32, from: u8) -> Result<(), TestCaseError> {
    match m.on_reply(port, ds(from), &io.set, io.now) {
        Reply::Relay { client, .. } => {
            let s = m.session(&client);
            prop_assert!(s.is_some(), "relayed only to a client with a session");
            prop_assert_eq!(s.and_then(|s| s.port), Some(port));
            prop_assert!(from != 0, "never from a stranger");
        }
        Reply::Drop(r) => {
            if from == 0 {
                prop_assert_eq!(r, DropReason::UnknownSource);
            }
        }
    }
    Ok(())
}

fn run(cfg: MachineConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = SessionMachine::new(cfg);
    let mut io = Io {
        set: build(cfg.distribution, 0b111, 0, 0),
        generation: 1,
        now: 0,
        opened: 0,
        published: HashMap::new(),
    };
    for op in ops {
        match op {
            Op::Datagram {
                client: c,
                fail_open,
            } => datagram(&mut m, &mut io, client(c), fail_open)?,
            Op::Reply { port, from } => reply(&mut m, &io, port, from)?,
            Op::SetChange {
                present,
                draining,
                rotate,
            } => {
                io.set = build(cfg.distribution, present, draining, rotate);
                io.generation += 1;
            }
            Op::Advance(ms) => io.now += ms,
            Op::Expire(budget) => {
                let mut ended = Vec::new();
                let n = m.expire(io.now, budget, |e| ended.push(e));
                prop_assert_eq!(n, ended.len());
                prop_assert!(n <= budget);
                for e in ended {
                    prop_assert!(m.session(&e.client).is_none());
                    prop_assert_eq!(e.reason, EndReason::Expired);
                }
            }
            Op::Publish => publish(&mut m, &mut io)?,
        }
        check(&m, &io)?;
    }
    publish(&mut m, &mut io)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_under_random_traffic(cfg in config(), ops in prop::collection::vec(op(), 1..200)) {
        run(cfg, ops)?;
    }
}
