//! The downstream set of a listener and the choice of target(s) for one datagram.
//!
//! A [`BackendSet`] is immutable: it is built (with its round-robin cycle or Maglev table) when
//! the configuration or discovery changes, then swapped in whole, so the data plane reads it
//! without locks and never sees half an update. Choosing is [`BackendSet::pick`]: given the
//! flow key and a per-worker round-robin cursor, it returns a [`Pick`], with no I/O.

mod maglev;
mod schedule;

use std::net::SocketAddr;

use hashbrown::HashMap;

pub use maglev::{DEFAULT_TABLE_SIZE, Maglev, is_prime};
pub use schedule::{MAX_CYCLE, Schedule};

use crate::flow::FlowKey;

/// How a listener spreads datagrams over its downstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// Smooth weighted round-robin, one downstream per datagram.
    #[default]
    RoundRobin,
    /// Maglev on the client's address: a client keeps its downstream while the set is stable.
    ConsistentHash,
    /// Every downstream gets a copy of every datagram.
    Mirror,
}

impl Distribution {
    /// The configuration spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Distribution::RoundRobin => "round_robin",
            Distribution::ConsistentHash => "consistent_hash",
            Distribution::Mirror => "mirror",
        }
    }
}

/// Whether new flows may be sent to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointState {
    /// Takes new flows.
    #[default]
    Active,
    /// Keeps the flows (sessions) it already has, gets no new ones.
    Draining,
}

/// One downstream of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Where datagrams are sent.
    pub addr: SocketAddr,
    /// Relative share of traffic (round-robin and consistent hash). At least 1.
    pub weight: u32,
    /// Whether it takes new flows.
    pub state: EndpointState,
}

impl Endpoint {
    /// An active endpoint with weight 1.
    pub const fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1,
            state: EndpointState::Active,
        }
    }

    /// The same endpoint with another weight.
    pub const fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// The target(s) chosen for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Send to the endpoint with this index in [`BackendSet::endpoints`].
    One(u32),
    /// Send a copy to every active endpoint (mirror).
    All,
    /// No active endpoint: drop with `no_downstream`.
    None,
}

/// An immutable, ready-to-use downstream set with its selection tables.
#[derive(Debug, Clone)]
pub struct BackendSet {
    distribution: Distribution,
    endpoints: Vec<Endpoint>,
    /// Indices of the active endpoints (mirror targets).
    active: Vec<u32>,
    schedule: Schedule,
    maglev: Option<Maglev>,
    by_addr: HashMap<SocketAddr, u32>,
}

impl BackendSet {
    /// Builds the set and its tables. For `ConsistentHash`, `table_size` must be prime.
    pub fn new(distribution: Distribution, endpoints: Vec<Endpoint>, table_size: u32) -> Self {
        let active: Vec<u32> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state == EndpointState::Active && e.weight > 0)
            .map(|(i, _)| i as u32)
            .collect();
        let weight_of = |e: &Endpoint| {
            if e.state == EndpointState::Active {
                e.weight
            } else {
                0
            }
        };
        let schedule = match distribution {
            Distribution::RoundRobin => {
                Schedule::new(&endpoints.iter().map(weight_of).collect::<Vec<_>>())
            }
            _ => Schedule::new(&[]),
        };
        let maglev = match distribution {
            Distribution::ConsistentHash => Some(Maglev::new(
                &endpoints
                    .iter()
                    .map(|e| (e.addr, weight_of(e)))
                    .collect::<Vec<_>>(),
                table_size,
            )),
            _ => None,
        };
        let by_addr = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.addr, i as u32))
            .collect();
        BackendSet {
            distribution,
            endpoints,
            active,
            schedule,
            maglev,
            by_addr,
        }
    }

    /// An empty set (every datagram is dropped with `no_downstream`).
    pub fn empty(distribution: Distribution) -> Self {
        BackendSet::new(distribution, Vec::new(), DEFAULT_TABLE_SIZE)
    }

    /// The distribution this set was built for.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }

    /// All endpoints, active or draining, in configuration order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Indices of the endpoints that take new flows.
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    /// The round-robin cycle (empty unless `RoundRobin`).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The Maglev table (only for `ConsistentHash`).
    pub fn maglev(&self) -> Option<&Maglev> {
        self.maglev.as_ref()
    }

    /// Index of the endpoint with this address, if it is in the set.
    pub fn position(&self, addr: &SocketAddr) -> Option<u32> {
        self.by_addr.get(addr).copied()
    }

    /// Chooses the target(s) of one datagram. `cursor` is the caller's round-robin position;
    /// it advances only for round-robin picks.
    #[inline]
    pub fn pick(&self, key: &FlowKey, cursor: &mut usize) -> Pick {
        match self.distribution {
            Distribution::RoundRobin => match self.schedule.at(*cursor) {
                Some(i) => {
                    *cursor = cursor.wrapping_add(1);
                    Pick::One(i)
                }
                None => Pick::None,
            },
            Distribution::ConsistentHash => {
                match self.maglev.as_ref().and_then(|m| m.lookup(key.hash())) {
                    Some(i) => Pick::One(i),
                    None => Pick::None,
                }
            }
            Distribution::Mirror => {
                if self.active.is_empty() {
                    Pick::None
                } else {
                    Pick::All
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 6000 + u16::from(i)))))
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_advances_cursor() {
        let set = BackendSet::new(Distribution::RoundRobin, eps(3), DEFAULT_TABLE_SIZE);
        let key = FlowKey::new("10.0.0.1:1".parse().unwrap());
        let mut cur = 0;
        let picks: Vec<Pick> = (0..6).map(|_| set.pick(&key, &mut cur)).collect();
        assert_eq!(
            picks,
            [
                Pick::One(0),
                Pick::One(1),
                Pick::One(2),
                Pick::One(0),
                Pick::One(1),
                Pick::One(2)
            ]
        );
        assert_eq!(cur, 6);
    }

    #[test]
    fn consistent_hash_is_stable_per_client() {
        let set = BackendSet::new(Distribution::ConsistentHash, eps(4), DEFAULT_TABLE_SIZE);
        let mut cur = 0;
        for port in 1000..1100u16 {
            let key = FlowKey::new(SocketAddr::from(([192, 0, 2, 1], port)));
            let first = set.pick(&key, &mut cur);
            for _ in 0..5 {
                assert_eq!(set.pick(&key, &mut cur), first);
            }
        }
        assert_eq!(cur, 0, "consistent hash does not use the cursor");
    }

    #[test]
    fn draining_endpoints_get_no_new_flows() {
        let mut e = eps(3);
        e[1].state = EndpointState::Draining;
        let set = BackendSet::new(Distribution::RoundRobin, e.clone(), DEFAULT_TABLE_SIZE);
        let key = FlowKey::new("10.0.0.1:1".parse().unwrap());
        let mut cur = 0;
        for _ in 0..10 {
            assert_ne!(set.pick(&key, &mut cur), Pick::One(1));
        }
        let set = BackendSet::new(Distribution::ConsistentHash, e.clone(), DEFAULT_TABLE_SIZE);
        assert!(set.maglev().unwrap().table().iter().all(|&i| i != 1));
        let set = BackendSet::new(Distribution::Mirror, e, DEFAULT_TABLE_SIZE);
        assert_eq!(set.active(), &[0, 2]);
        assert_eq!(set.position(&"127.0.0.1:6002".parse().unwrap()), Some(1));
    }

    #[test]
    fn empty_sets_pick_none() {
        let key = FlowKey::new("10.0.0.1:1".parse().unwrap());
        let mut cur = 0;
        for d in [
            Distribution::RoundRobin,
            Distribution::ConsistentHash,
            Distribution::Mirror,
        ] {
            assert_eq!(BackendSet::empty(d).pick(&key, &mut cur), Pick::None);
        }
    }
}
