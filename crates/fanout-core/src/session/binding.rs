//! Which downstream a session is bound to, and what happens when the downstream set changes.
//!
//! A session remembers its downstream by address, plus the index it had in the set current
//! when it last looked (and that set's generation), so the common case, an unchanged set, is
//! one integer comparison per datagram. When the set has changed:
//!
//! - the downstream is still in the set (taking new flows, or draining): the session stays;
//! - it is gone (removed through `fanout_control::Control::set_endpoints`; reload, the admin
//!   API and health checks, all planned, will remove downstreams the same way): the session is
//!   re-pinned to a downstream chosen as for a new flow, and the caller counts it.
//!
//! This is the rule users of Cilium, IPVS and Envoy ask for: UDP flows must not stay pinned to a
//! backend that no longer exists.

use std::net::SocketAddr;

use crate::flow::FlowKey;
use crate::select::{BackendSet, Distribution, Pick};

/// A session's downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The downstream's address (its identity across set changes).
    pub downstream: SocketAddr,
    /// Its index in the set of generation `generation`.
    pub index: u32,
    /// The set generation `index` is valid for.
    pub generation: u64,
}

/// The outcome of checking a binding against the current set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Still bound to the same downstream, at this index.
    Same(u32),
    /// The old downstream left; now bound to the downstream at this index.
    Repinned {
        /// The downstream that left.
        from: SocketAddr,
        /// The new downstream's index.
        to: u32,
    },
    /// The old downstream left and no downstream takes new flows.
    Gone,
}

/// Chooses the downstream of a new session, or `None` when nothing takes new flows. For
/// `mirror`, the session's downstream is the primary: the first active one, whose replies are
/// relayed.
pub fn bind_new(
    set: &BackendSet,
    generation: u64,
    key: &FlowKey,
    cursor: &mut usize,
) -> Option<Binding> {
    let index = match set.distribution() {
        Distribution::Mirror => *set.active().first()?,
        _ => match set.pick(key, cursor) {
            Pick::One(i) => i,
            Pick::All | Pick::None => return None,
        },
    };
    let downstream = set.endpoints().get(index as usize)?.addr;
    Some(Binding {
        downstream,
        index,
        generation,
    })
}

/// Checks `b` against `set` (of `generation`) and updates it. For `mirror` sessions the primary
/// follows the set: it is always the first active downstream.
pub fn resolve(
    set: &BackendSet,
    generation: u64,
    b: &mut Binding,
    key: &FlowKey,
    cursor: &mut usize,
) -> Resolved {
    if b.generation == generation {
        return Resolved::Same(b.index);
    }
    let still_there = match set.distribution() {
        Distribution::Mirror => set
            .active()
            .first()
            .filter(|&&i| set.endpoints()[i as usize].addr == b.downstream)
            .copied(),
        _ => set.position(&b.downstream),
    };
    if let Some(i) = still_there {
        b.index = i;
        b.generation = generation;
        return Resolved::Same(i);
    }
    let from = b.downstream;
    match bind_new(set, generation, key, cursor) {
        Some(nb) => {
            *b = nb;
            Resolved::Repinned { from, to: nb.index }
        }
        None => Resolved::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{DEFAULT_TABLE_SIZE, Endpoint, EndpointState};

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn key(port: u16) -> FlowKey {
        FlowKey::new(SocketAddr::from(([192, 0, 2, 9], port)))
    }

    fn set_of(d: Distribution, eps: Vec<Endpoint>) -> BackendSet {
        BackendSet::new(d, eps, DEFAULT_TABLE_SIZE)
    }

    /// A set of the downstreams on these loopback ports, in this order.
    fn set(d: Distribution, ports: &[u16]) -> BackendSet {
        set_of(d, ports.iter().map(|&p| ep(p)).collect())
    }

    const RR: Distribution = Distribution::RoundRobin;

    #[test]
    fn sticky_round_robin_keeps_its_downstream_while_the_set_changes() {
        let set1 = set(RR, &[1, 2, 3]);
        let mut cur = 1;
        let mut b = bind_new(&set1, 1, &key(1), &mut cur).unwrap();
        assert_eq!(b.downstream.port(), 2);
        // Many datagrams later, round-robin would have moved on; the session does not.
        for _ in 0..10 {
            assert_eq!(
                resolve(&set1, 1, &mut b, &key(1), &mut cur),
                Resolved::Same(1)
            );
        }
        // A downstream is added in front: the index changes, the downstream does not.
        let set2 = set(RR, &[9, 1, 2, 3]);
        assert_eq!(
            resolve(&set2, 2, &mut b, &key(1), &mut cur),
            Resolved::Same(2)
        );
        assert_eq!(b.downstream.port(), 2);
        assert_eq!(b.generation, 2);
    }

    #[test]
    fn consistent_hash_sessions_stay_even_when_maglev_would_move_them() {
        let all: Vec<Endpoint> = (1..=5).map(ep).collect();
        let set1 = set_of(Distribution::ConsistentHash, all[..4].to_vec());
        let set2 = set_of(Distribution::ConsistentHash, all.clone());
        let mut moved_by_maglev = 0;
        for p in 0..500 {
            let mut b = bind_new(&set1, 1, &key(p), &mut 0).unwrap();
            let before = b.downstream;
            assert!(matches!(
                resolve(&set2, 2, &mut b, &key(p), &mut 0),
                Resolved::Same(_)
            ));
            assert_eq!(b.downstream, before);
            if bind_new(&set2, 2, &key(p), &mut 0).unwrap().downstream != before {
                moved_by_maglev += 1;
            }
        }
        assert!(
            moved_by_maglev > 0,
            "the test must cover keys Maglev remaps"
        );
    }

    #[test]
    fn repin_when_the_downstream_disappears() {
        let set1 = set(RR, &[1, 2]);
        let mut b = bind_new(&set1, 1, &key(1), &mut 0).unwrap();
        assert_eq!(b.downstream.port(), 1);
        let set2 = set(RR, &[2, 3]);
        let r = resolve(&set2, 2, &mut b, &key(1), &mut 0);
        assert_eq!(
            r,
            Resolved::Repinned {
                from: ep(1).addr,
                to: 0
            }
        );
        assert_eq!(b.downstream.port(), 2);
        let empty = BackendSet::empty(RR);
        assert_eq!(resolve(&empty, 3, &mut b, &key(1), &mut 0), Resolved::Gone);
    }

    #[test]
    fn draining_downstreams_keep_their_sessions_but_get_no_new_ones() {
        let mut eps = vec![ep(1), ep(2)];
        let set1 = set_of(RR, eps.clone());
        let mut b = bind_new(&set1, 1, &key(1), &mut 0).unwrap();
        assert_eq!(b.downstream.port(), 1);
        eps[0].state = EndpointState::Draining;
        let set2 = set_of(RR, eps);
        assert_eq!(
            resolve(&set2, 2, &mut b, &key(1), &mut 0),
            Resolved::Same(0)
        );
        for p in 2..20 {
            assert_eq!(
                bind_new(&set2, 2, &key(p), &mut 0)
                    .unwrap()
                    .downstream
                    .port(),
                2
            );
        }
    }

    #[test]
    fn mirror_primary_is_the_first_active_downstream() {
        let set1 = set(Distribution::Mirror, &[1, 2, 3]);
        let mut b = bind_new(&set1, 1, &key(1), &mut 0).unwrap();
        assert_eq!(b.downstream.port(), 1);
        let set2 = set(Distribution::Mirror, &[2, 3]);
        assert_eq!(
            resolve(&set2, 2, &mut b, &key(1), &mut 0),
            Resolved::Repinned {
                from: ep(1).addr,
                to: 0
            }
        );
        assert_eq!(b.downstream.port(), 2);
    }
}
