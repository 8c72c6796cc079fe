//! A listener's state shared between its workers and the control plane: its current downstream
//! set (swapped whole through `ArcSwap`, so workers never lock or see half an update), its
//! counters, and its sockets (kept here to read the kernel's drop counts at scrape time).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use arc_swap::ArcSwap;
use fanout_config::{ListenerConfig, SessionConfig};
use fanout_core::ListenerSnapshot;
use fanout_core::accounting::downstream_snapshots;
use fanout_core::select::{BackendSet, Endpoint};

use crate::stats::{EndpointStats, ListenerStats};
use crate::sys::socket;

/// A downstream set together with the counters of each of its endpoints (same order).
#[derive(Debug)]
pub struct ActiveSet {
    /// The selection tables.
    pub set: BackendSet,
    /// Counters, `stats[i]` for `set.endpoints()[i]`.
    pub stats: Vec<Arc<EndpointStats>>,
    /// Increases with every replacement; sessions compare it to know their cached downstream
    /// index is still valid.
    pub generation: u64,
}

/// What the workers and the control plane share about one listener.
#[derive(Debug)]
pub struct ListenerShared {
    name: String,
    local_addr: SocketAddr,
    table_size: u32,
    workers: usize,
    stats: ListenerStats,
    backends: ArcSwap<ActiveSet>,
    sockets: Vec<Arc<UdpSocket>>,
    session: Option<SessionConfig>,
    has_sessions: bool,
}

impl ListenerShared {
    pub(crate) fn new(
        cfg: &ListenerConfig,
        local_addr: SocketAddr,
        sockets: Vec<Arc<UdpSocket>>,
    ) -> Self {
        let (name, distribution, endpoints, table_size) = (
            cfg.name.clone(),
            cfg.distribution,
            cfg.endpoints(),
            cfg.table_size(),
        );
        let workers = sockets.len();
        let stats = endpoints
            .iter()
            .map(|e| Arc::new(EndpointStats::new(e.addr, workers)))
            .collect();
        let active = ActiveSet {
            set: BackendSet::new(distribution, endpoints, table_size),
            stats,
            generation: 1,
        };
        ListenerShared {
            name,
            local_addr,
            table_size,
            workers,
            stats: ListenerStats::new(workers),
            backends: ArcSwap::from_pointee(active),
            sockets,
            session: cfg.session,
            has_sessions: cfg.session.is_some(),
        }
    }

    /// The session settings, if the listener keeps sessions.
    pub fn session(&self) -> Option<SessionConfig> {
        self.session
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it is bound to (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The per-worker sockets (index = worker).
    pub(crate) fn sockets(&self) -> &[Arc<UdpSocket>] {
        &self.sockets
    }

    /// Its counters.
    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// The current downstream set.
    pub fn backends(&self) -> arc_swap::Guard<Arc<ActiveSet>> {
        self.backends.load()
    }

    /// Replaces the downstream set. Endpoints that stay keep their counters. Workers pick the
    /// new set up at their next batch.
    pub fn set_endpoints(&self, endpoints: Vec<Endpoint>) {
        let old = self.backends.load();
        let by_addr: HashMap<SocketAddr, &Arc<EndpointStats>> = old
            .set
            .endpoints()
            .iter()
            .map(|e| e.addr)
            .zip(old.stats.iter())
            .collect();
        let stats = endpoints
            .iter()
            .map(|e| match by_addr.get(&e.addr) {
                Some(s) => Arc::clone(s),
                None => Arc::new(EndpointStats::new(e.addr, self.workers)),
            })
            .collect();
        let set = BackendSet::new(old.set.distribution(), endpoints, self.table_size);
        let generation = old.generation + 1;
        self.backends.store(Arc::new(ActiveSet {
            set,
            stats,
            generation,
        }));
    }

    /// The counters as a plane-independent snapshot.
    pub fn snapshot(&self) -> ListenerSnapshot {
        let t = self.stats.totals();
        let active = self.backends.load();
        let (downstreams, downstream_active) = downstream_snapshots(
            active.set.endpoints(),
            active.stats.iter().map(|s| s.totals()),
        );
        ListenerSnapshot {
            name: self.name.clone(),
            received: t.received,
            bytes_received: t.bytes_received,
            forwarded: t.forwarded,
            bytes_forwarded: t.bytes_forwarded,
            dropped: t.dropped,
            downstreams,
            downstream_active,
            sessions_active: self.has_sessions.then_some(t.sessions_active),
            replies: t.replies,
            replies_received: t.replies_received,
            replies_dropped: t.replies_dropped,
            sessions: t.sessions,
            socket_drops: self
                .sockets
                .iter()
                .filter_map(|s| socket::kernel_drops(s.as_ref()))
                .sum(),
        }
    }
}
