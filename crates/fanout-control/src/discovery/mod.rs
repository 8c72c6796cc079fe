//! Kubernetes discovery (DESIGN.md 3b, "Kubernetes"): a listener with `kubernetes:` gets its
//! downstreams from a Service's EndpointSlices, kept current by a watch.
//!
//! ```text
//! set_targets ─▶ one task per listener: client ─▶ kube-rs watcher (list, watch, bookmarks)
//!                     │  slices by name ─▶ select (slices.rs, pure) ─▶ DiscoveryEvent ─▶ Control
//!                     └─ status: up (listed since the last error), synced (listed once)
//! ```
//!
//! - `slices.rs`: the pure rules (conditions, port, family, merge, same node).
//! - `watch.rs`: the task, what each failure means, and why it starts over on one.
//! - `backoff.rs`: the retry delays.
//!
//! The tasks run on the control plane's runtime and only send events; the event loop applies
//! them with [`crate::Control::set_kubernetes`], one at a time like every other change, so a
//! discovery update never interleaves with a reload. A task whose listener's `kubernetes:`
//! changed is replaced; its events carry a generation so a late one from the old task is
//! ignored ([`Discovery::is_current`]).

mod backoff;
mod slices;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fanout_config::KubernetesConfig;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

pub use slices::{Selected, Selector, select};

/// A listener's discovered downstreams changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEvent {
    /// The listener.
    pub listener: String,
    /// Which watch of the listener sent it (see [`Discovery::is_current`]).
    pub generation: u64,
    /// Every downstream, and whether it is terminating (draining), sorted by address.
    pub endpoints: Vec<(SocketAddr, bool)>,
}

/// A watch's state, shared with its task.
#[derive(Debug, Default)]
pub(crate) struct Status {
    /// Listed since the last error: the set is current.
    pub up: AtomicBool,
    /// Listed at least once: the set is known.
    pub synced: AtomicBool,
    /// Failures so far (only the first of a run of them is logged as a warning).
    pub failures: AtomicU64,
}

/// A listener's watch as the metrics and readiness see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchState {
    /// The listener.
    pub listener: String,
    /// Listed since the last error (`udp_fanout_discovery_up`).
    pub up: bool,
    /// Listed at least once since the watch started.
    pub synced: bool,
}

struct Watch {
    cfg: KubernetesConfig,
    v6: bool,
    generation: u64,
    status: Arc<Status>,
    task: AbortHandle,
}

/// The watches of every listener with `kubernetes:`; dropping it stops them.
pub struct Discovery {
    events: UnboundedSender<DiscoveryEvent>,
    watches: Mutex<HashMap<String, Watch>>,
    generations: AtomicU64,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// No watches yet; their changes will go to `events`.
    pub fn new(events: UnboundedSender<DiscoveryEvent>) -> Discovery {
        Discovery {
            events,
            watches: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }

    /// Watches `cfg` for `listener` (bound to IPv6 if `v6`), or stops watching with `None`.
    /// The same config keeps the running watch; a different one replaces it (the set stays
    /// until the new watch has listed). Returns whether a watch stopped, so the caller can
    /// clear the listener's Kubernetes part.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, when a watch is to start (like `tokio::spawn`).
    pub fn set_target(&self, listener: &str, cfg: Option<&KubernetesConfig>, v6: bool) -> bool {
        let mut w = self.lock();
        if let (Some(old), Some(new)) = (w.get(listener), cfg)
            && old.cfg == *new
            && old.v6 == v6
        {
            return false;
        }
        let stopped = w.remove(listener).inspect(|old| old.task.abort()).is_some();
        let Some(cfg) = cfg else {
            return stopped;
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = watch::Spec {
            listener: listener.to_owned(),
            generation,
            namespace: cfg.namespace.clone(),
            service: cfg.service.clone(),
            selector: Selector {
                port: cfg.port.clone(),
                v6,
                prefer_node: prefer_node(listener, cfg),
            },
        };
        let status = Arc::new(Status::default());
        let task = tokio::spawn(watch::run(spec, Arc::clone(&status), self.events.clone()));
        tracing::info!(listener, namespace = %cfg.namespace, service = %cfg.service, port = %cfg.port, "watching kubernetes EndpointSlices");
        w.insert(
            listener.to_owned(),
            Watch {
                cfg: cfg.clone(),
                v6,
                generation,
                status,
                task: task.abort_handle(),
            },
        );
        false
    }

    /// The listeners being watched.
    pub fn listeners(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Whether `ev` comes from the listener's current watch (not one since replaced).
    pub fn is_current(&self, ev: &DiscoveryEvent) -> bool {
        self.lock()
            .get(&ev.listener)
            .is_some_and(|w| w.generation == ev.generation)
    }

    /// Every watch, sorted by listener.
    pub fn states(&self) -> Vec<WatchState> {
        let mut v: Vec<WatchState> = self
            .lock()
            .iter()
            .map(|(name, w)| WatchState {
                listener: name.clone(),
                up: w.status.up.load(Ordering::Relaxed),
                synced: w.status.synced.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.listener.cmp(&b.listener));
        v
    }

    /// Whether every watch has listed at least once (a listener whose endpoints are not known
    /// yet is not ready to serve; one whose API server went away later keeps its set).
    pub fn synced(&self) -> bool {
        self.lock()
            .values()
            .all(|w| w.status.synced.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watch>> {
        // A panic while holding it leaves a map that is still whole.
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for w in self.lock().values() {
            w.task.abort();
        }
    }
}

/// This node's name when `prefer_same_node` is on: `node_name`, else `$NODE_NAME`.
fn prefer_node(listener: &str, cfg: &KubernetesConfig) -> Option<String> {
    if !cfg.prefer_same_node {
        return None;
    }
    let node = cfg
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
    if node.is_none() {
        tracing::warn!(
            listener,
            "prefer_same_node is set but neither node_name nor $NODE_NAME is; every node's endpoints are used"
        );
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_config::ServicePort;

    fn cfg(service: &str) -> KubernetesConfig {
        KubernetesConfig {
            namespace: "ns".into(),
            service: service.into(),
            port: ServicePort::Number(53),
            prefer_same_node: false,
            node_name: None,
        }
    }

    fn event(listener: &str, generation: u64) -> DiscoveryEvent {
        DiscoveryEvent {
            listener: listener.into(),
            generation,
            endpoints: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_same_config_keeps_its_watch_and_a_new_one_replaces_it() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let d = Discovery::new(tx);
        assert!(d.synced(), "no watch: nothing to wait for");
        assert!(!d.set_target("a", Some(&cfg("svc")), false));
        assert!(d.is_current(&event("a", 1)));
        assert!(!d.set_target("a", Some(&cfg("svc")), false));
        assert!(d.is_current(&event("a", 1)), "unchanged: same watch");
        assert!(!d.set_target("a", Some(&cfg("other")), false));
        assert!(
            !d.is_current(&event("a", 1)),
            "a late event of the old watch"
        );
        assert!(d.is_current(&event("a", 2)));
        assert!(
            !d.set_target("a", Some(&cfg("other")), true),
            "family change"
        );
        assert!(d.is_current(&event("a", 3)));
        assert!(!d.synced(), "a watch that has not listed");
        assert_eq!(
            d.states(),
            vec![WatchState {
                listener: "a".into(),
                up: false,
                synced: false
            }]
        );
        assert!(d.set_target("a", None, false), "stopped");
        assert!(!d.set_target("a", None, false), "nothing to stop");
        assert!(!d.is_current(&event("a", 3)));
        assert!(d.listeners().is_empty() && d.synced());
    }
}
