//! A listener's state shared between its workers and the control plane: its current downstream
//! set (swapped whole through `ArcSwap`, so workers never lock or see half an update), its
//! counters, and its sockets (kept here to read the kernel's drop counts at scrape time).
//!
//! A listener removed at run time ([`UserspacePlane::remove_listener`]) lets go of its sockets
//! here too (`ListenerShared::close_sockets`), so its port is free once the workers have
//! dropped theirs, even while someone still holds the `Arc<ListenerShared>` (a scrape in
//! progress, a caller that kept what `add_listener` returned). The sockets sit behind a mutex
//! for that: only the control side (set-up, removal, scrapes) takes it, never a worker.
//!
//! [`UserspacePlane::remove_listener`]: crate::UserspacePlane::remove_listener

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
    /// Index = worker; emptied when the listener is removed.
    sockets: Mutex<Vec<Arc<UdpSocket>>>,
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
            sockets: Mutex::new(sockets),
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

    fn lock_sockets(&self) -> MutexGuard<'_, Vec<Arc<UdpSocket>>> {
        // The guarded code cannot panic halfway; a poisoned list is still a whole list.
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Worker `w`'s socket (`None` once the listener is closed).
    pub(crate) fn socket(&self, w: usize) -> Option<Arc<UdpSocket>> {
        self.lock_sockets().get(w).cloned()
    }

    /// Drops this side's references to the sockets: once the workers dropped theirs too, the
    /// descriptors are closed and the port is free. Called when the listener is removed.
    pub(crate) fn close_sockets(&self) {
        let sockets = std::mem::take(&mut *self.lock_sockets());
        drop(sockets);
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
        let (mut downstreams, downstream_active) = downstream_snapshots(
            active.set.endpoints(),
            active.stats.iter().map(|s| s.totals()),
        );
        if self.has_sessions {
            // Same order as the endpoints: `stats[i]` counts `endpoints()[i]`.
            for (d, s) in downstreams.iter_mut().zip(active.stats.iter()) {
                d.sessions = Some(s.sessions());
            }
        }
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
                .lock_sockets()
                .iter()
                .filter_map(|s| socket::kernel_drops(s.as_ref()))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(session: &str) -> ListenerShared {
        let cfg = fanout_config::from_yaml(&format!(
            "listeners:\n\
             - {{name: l, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001', \
             '127.0.0.1:7002']{session}}}\n"
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("local address");
        // Two workers' slots.
        ListenerShared::new(
            &cfg.listeners[0],
            addr,
            vec![Arc::new(sock.try_clone().expect("clone")), Arc::new(sock)],
        )
    }

    fn sessions(l: &ListenerShared) -> Vec<(u16, Option<u64>)> {
        l.snapshot()
            .downstreams
            .iter()
            .map(|d| (d.addr.port(), d.sessions))
            .collect()
    }

    #[test]
    fn per_downstream_sessions_are_listed_only_with_sessions() {
        let plain = shared("");
        assert_eq!(sessions(&plain), [(7001, None), (7002, None)]);
        let l = shared(", session: {reply: true}");
        assert_eq!(sessions(&l), [(7001, Some(0)), (7002, Some(0))]);
        // Per-worker gauges, summed.
        let b = l.backends();
        b.stats[0].set_sessions(0, 2);
        b.stats[0].set_sessions(1, 3);
        b.stats[1].set_sessions(1, 1);
        drop(b);
        assert_eq!(sessions(&l), [(7001, Some(5)), (7002, Some(1))]);
        // A downstream that stays keeps its gauges; a new one starts at zero.
        let eps = |ports: &[u16]| {
            ports
                .iter()
                .map(|&p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], p))))
                .collect()
        };
        l.set_endpoints(eps(&[7003, 7001]));
        assert_eq!(sessions(&l), [(7003, Some(0)), (7001, Some(5))]);
    }
}
