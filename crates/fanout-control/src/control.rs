//! The owner of desired state: holds [`Desired`], takes every change to it (config, file,
//! admin API, health), pushes what results to the planes, and answers for all planes at once
//! (the merged metrics snapshot).
//!
//! Every change ends in [`Control::sync`], which recomputes each listener's set and pushes
//! only those that differ from what the planes have, all-or-nothing across planes: a
//! listener in `xdp`/`tc_ebpf` mode is served by the kernel plane and by the userspace plane
//! (its slow path), and if one refuses the new set (the kernel maps have fixed sizes) the
//! planes already updated are put back, so the two never disagree.
//!
//! Two locks, neither ever taken by a data-plane thread: `state` serializes changes (held
//! while a set is pushed, which for a kernel Maglev table takes milliseconds), and `view`,
//! a copy of what scrapes need (health per downstream, fail-open flags), refreshed at the end
//! of each sync, so a scrape never waits for a push.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fanout_config::{Config, DownstreamConfig};
use fanout_core::select::Endpoint;
use fanout_core::{EndpointSnapshot, ListenerSnapshot, merge_snapshots};

use crate::desired::{AdminState, ChangeError, Desired, Health};
use crate::metrics::SnapshotSource;
use crate::planes::{Plane, PlaneError};

/// Why a change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No listener of that name.
    UnknownListener(String),
    /// The desired state refused it (no such downstream, already there).
    Change(ChangeError),
    /// A plane refused the new set.
    Plane {
        /// `userspace` or `kernel`.
        plane: &'static str,
        /// Its reason.
        error: PlaneError,
    },
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::UnknownListener(n) => write!(f, "no listener named {n:?}"),
            ControlError::Change(e) => e.fmt(f),
            ControlError::Plane { plane, error } => write!(f, "{plane} plane: {error}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<ChangeError> for ControlError {
    fn from(e: ChangeError) -> Self {
        ControlError::Change(e)
    }
}

struct State {
    desired: Desired,
    /// What each plane serves now, per listener.
    pushed: HashMap<String, Vec<Endpoint>>,
    /// When (ms) the last sync's result changes by itself (a drain ends).
    next_change: Option<u64>,
}

/// What scrapes read: refreshed by every sync.
#[derive(Default)]
struct View {
    /// Per listener, each downstream's health (keyed by listener first, so a scrape looks
    /// downstreams up without building a key per downstream).
    health: HashMap<String, HashMap<SocketAddr, Health>>,
    panic: HashMap<String, bool>,
}

/// The control plane's state and the planes it drives.
pub struct Control {
    state: Mutex<State>,
    view: Mutex<View>,
    /// A reload may start a plane (the first kernel-plane listener), hence the lock.
    planes: Mutex<Vec<Arc<dyn Plane>>>,
    origin: Instant,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let planes = self.planes();
        let kinds: Vec<&str> = planes.iter().map(|p| p.kind()).collect();
        f.debug_struct("Control").field("planes", &kinds).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    /// Takes charge of `planes`, which were started on `cfg` (so they serve its static
    /// downstreams already).
    pub fn new(cfg: &Config, planes: Vec<Arc<dyn Plane>>) -> Control {
        let pushed = cfg
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.endpoints()))
            .collect();
        Control {
            state: Mutex::new(State {
                desired: Desired::from_config(cfg),
                pushed,
                next_change: None,
            }),
            view: Mutex::new(View::default()),
            planes: Mutex::new(planes),
            origin: Instant::now(),
        }
    }

    /// The planes, now.
    pub fn planes(&self) -> Vec<Arc<dyn Plane>> {
        lock(&self.planes).clone()
    }

    /// Takes charge of one more plane (started by a reload).
    pub fn add_plane(&self, plane: Arc<dyn Plane>) {
        lock(&self.planes).push(plane);
    }

    /// Milliseconds since this control plane started: the clock of [`Desired`].
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A copy of the desired state.
    pub fn desired(&self) -> Desired {
        lock(&self.state).desired.clone()
    }

    /// Applies `f` to listener `name`'s desired state, then syncs.
    fn change(
        &self,
        name: &str,
        f: impl FnOnce(&mut crate::desired::ListenerState, u64) -> Result<(), ChangeError>,
    ) -> Result<(), ControlError> {
        let now = self.now();
        let mut st = lock(&self.state);
        let l = st
            .desired
            .listener_mut(name)
            .ok_or_else(|| ControlError::UnknownListener(name.to_owned()))?;
        let before = l.clone();
        f(l, now)?;
        let result = self.sync_locked(&mut st, now);
        if result.is_err() {
            // A plane refused the new set: the planes kept the old one, and so does the
            // desired state, or every later sync would try (and log) it again.
            if let Some(l) = st.desired.listener_mut(name) {
                *l = before;
            }
            let _ = self.sync_locked(&mut st, now);
        }
        result
    }

    /// Replaces listener `name`'s `downstreams_file` entries.
    pub fn set_file(&self, name: &str, list: Vec<DownstreamConfig>) -> Result<(), ControlError> {
        self.change(name, |l, now| {
            l.set_file(list, now);
            Ok(())
        })
    }

    /// Replaces listener `name`'s Kubernetes endpoints (each with whether it is terminating).
    pub fn set_kubernetes(
        &self,
        name: &str,
        list: Vec<(SocketAddr, bool)>,
    ) -> Result<(), ControlError> {
        self.change(name, |l, now| {
            l.set_kubernetes(list, now);
            Ok(())
        })
    }

    /// The admin API adds a downstream.
    pub fn api_add(&self, name: &str, addr: SocketAddr, weight: u32) -> Result<(), ControlError> {
        self.change(name, |l, now| l.api_add(addr, weight, now))
    }

    /// The admin API removes a downstream (drained, or at once).
    pub fn api_remove(
        &self,
        name: &str,
        addr: SocketAddr,
        at_once: bool,
    ) -> Result<(), ControlError> {
        self.change(name, |l, now| l.api_remove(addr, at_once, now))
    }

    /// The admin API sets a downstream's weight and/or state.
    pub fn api_patch(
        &self,
        name: &str,
        addr: SocketAddr,
        weight: Option<u32>,
        state: Option<AdminState>,
    ) -> Result<(), ControlError> {
        self.change(name, |l, now| l.api_patch(addr, weight, state, now))
    }

    /// The health checks' verdict on a downstream.
    pub fn set_health(
        &self,
        name: &str,
        addr: SocketAddr,
        health: Health,
    ) -> Result<(), ControlError> {
        self.change(name, |l, _| {
            l.set_health(addr, health);
            Ok(())
        })
    }

    /// Many health verdicts at once, with one sync: at start, or when a switch fails, a
    /// checker reports thousands of changes together, and one sync per change would recompute
    /// every set thousands of times. Verdicts for listeners that are gone are ignored.
    pub fn set_health_many(
        &self,
        verdicts: &[(String, SocketAddr, Health)],
    ) -> Result<(), ControlError> {
        let now = self.now();
        let mut st = lock(&self.state);
        for (name, addr, health) in verdicts {
            if let Some(l) = st.desired.listener_mut(name) {
                l.set_health(*addr, *health);
            }
        }
        self.sync_locked(&mut st, now)
    }

    /// A reloaded config's desired part: static lists and drain times of the listeners that
    /// stay, new listeners, removed ones forgotten. The caller has already made the planes
    /// serve exactly `cfg`'s listeners.
    pub fn apply_config(&self, cfg: &Config) -> Result<(), ControlError> {
        self.apply_reload(cfg, Vec::new())
    }

    /// [`apply_config`](Self::apply_config) with the listeners' `downstreams_file` entries
    /// read for it, in one sync: a reload of a 10,000-downstream file is mostly syncs, and
    /// the intermediate one (new config, old file) would push nothing useful.
    pub fn apply_reload(
        &self,
        cfg: &Config,
        files: Vec<(String, Vec<DownstreamConfig>)>,
    ) -> Result<(), ControlError> {
        let now = self.now();
        let mut st = lock(&self.state);
        st.desired.apply_config(cfg, now);
        for (name, list) in files {
            if let Some(l) = st.desired.listener_mut(&name) {
                l.set_file(list, now);
            }
        }
        let names: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
        st.pushed.retain(|n, _| names.contains(&n.as_str()));
        for l in &cfg.listeners {
            // A new or re-created listener's planes start on its static list.
            st.pushed
                .entry(l.name.clone())
                .or_insert_with(|| l.endpoints());
        }
        self.sync_locked(&mut st, now)
    }

    /// Forgets what was pushed to listener `name`, so the next sync pushes it again (the
    /// listener was re-created and its planes start on its static list).
    pub fn mark_recreated(&self, name: &str, endpoints: Vec<Endpoint>) {
        lock(&self.state).pushed.insert(name.to_owned(), endpoints);
    }

    /// Recomputes every listener's set at the current time and pushes those that changed;
    /// returns when the next change falls due by itself (a drain ending), in ms from now.
    pub fn sync(&self) -> Result<Option<u64>, ControlError> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.sync_locked(&mut st, now)?;
        Ok(st.next_change.map(|t| t.saturating_sub(now)))
    }

    fn sync_locked(&self, st: &mut State, now: u64) -> Result<(), ControlError> {
        let mut first_err = None;
        let mut next: Option<u64> = None;
        let names: Vec<String> = st
            .desired
            .listeners()
            .iter()
            .map(|l| l.name().to_owned())
            .collect();
        let mut view = View::default();
        for name in names {
            let Some(l) = st.desired.listener_mut(&name) else {
                continue;
            };
            l.expire(now);
            let c = l.endpoints(now);
            next = match (next, c.next_change) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            view.health.insert(
                name.clone(),
                l.downstreams().iter().map(|d| (d.addr, d.health)).collect(),
            );
            view.panic.insert(name.clone(), c.panic);
            let old = st.pushed.get(&name).cloned().unwrap_or_default();
            if old == c.endpoints {
                continue;
            }
            match self.push(&name, &c.endpoints, &old) {
                Ok(()) => {
                    if c.panic {
                        tracing::warn!(listener = %name, "no healthy downstream: serving all active ones (fail open)");
                    }
                    st.pushed.insert(name, c.endpoints);
                }
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "cannot apply the new downstream set");
                    first_err.get_or_insert(e);
                }
            }
        }
        *lock(&self.view) = view;
        st.next_change = next;
        first_err.map_or(Ok(()), Err)
    }

    /// Pushes `new` to every plane serving `name`, or, if one refuses, `old` back to those
    /// already updated.
    fn push(&self, name: &str, new: &[Endpoint], old: &[Endpoint]) -> Result<(), ControlError> {
        let planes = self.planes();
        let serving: Vec<&Arc<dyn Plane>> = planes
            .iter()
            .filter(|p| p.listener_names().iter().any(|n| n == name))
            .collect();
        for (i, p) in serving.iter().enumerate() {
            if let Err(error) = p.set_endpoints(name, new.to_vec()) {
                for done in &serving[..i] {
                    if let Err(e) = done.set_endpoints(name, old.to_vec()) {
                        tracing::error!(listener = name, plane = done.kind(), error = %e, "cannot restore the previous downstreams");
                    }
                }
                return Err(ControlError::Plane {
                    plane: p.kind(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// Every listener's counters, summed over the planes (a kernel-plane listener's fast path
    /// and slow path are one listener to its users), with each downstream's health.
    ///
    /// An unhealthy downstream is left out of the set the planes serve, so their snapshots do
    /// not list it; it is added here (nothing sent to it since it left, health 0), or
    /// `udp_fanout_downstream_health` would never read 0 outside fail open.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        let mut snaps = merge_snapshots(self.planes().iter().flat_map(|p| p.snapshot()));
        let view = lock(&self.view);
        let none = HashMap::new();
        for s in &mut snaps {
            let health = view.health.get(&s.name).unwrap_or(&none);
            for d in &mut s.downstreams {
                d.healthy = match health.get(&d.addr) {
                    Some(Health::Healthy) => Some(true),
                    Some(Health::Unhealthy) => Some(false),
                    _ => d.healthy,
                };
            }
            let listed: std::collections::HashSet<SocketAddr> =
                s.downstreams.iter().map(|d| d.addr).collect();
            let mut sick: Vec<SocketAddr> = health
                .iter()
                .filter(|(addr, h)| **h == Health::Unhealthy && !listed.contains(*addr))
                .map(|(addr, _)| *addr)
                .collect();
            sick.sort_unstable();
            let sessions = s.sessions_active.map(|_| 0);
            s.downstreams
                .extend(sick.into_iter().map(|addr| EndpointSnapshot {
                    addr,
                    packets: 0,
                    bytes: 0,
                    healthy: Some(false),
                    sessions,
                }));
        }
        snaps
    }

    /// What the health checks last said about listener `name`'s downstream `addr`, as of
    /// the last sync.
    pub fn health(&self, name: &str, addr: SocketAddr) -> Health {
        lock(&self.view)
            .health
            .get(name)
            .and_then(|h| h.get(&addr))
            .copied()
            .unwrap_or_default()
    }

    /// Whether listener `name` serves all active downstreams because none is healthy.
    pub fn panicking(&self, name: &str) -> bool {
        lock(&self.view).panic.get(name).copied().unwrap_or(false)
    }

    /// [`snapshot`](Self::snapshot) as the metrics exporter's source.
    pub fn snapshot_source(self: &Arc<Self>) -> SnapshotSource {
        let me = Arc::clone(self);
        Arc::new(move || me.snapshot())
    }
}

#[cfg(test)]
mod tests;
