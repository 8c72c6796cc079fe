//! The owner of desired state: holds [`Desired`], pushes it to the planes, and answers for
//! all planes at once (the merged metrics snapshot).
//!
//! Every runtime change of a listener's downstreams goes through [`Control::set_endpoints`],
//! which is all-or-nothing across planes: a listener in `xdp`/`tc_ebpf` mode is served by the
//! kernel plane and by the userspace plane (its slow path), and if one refuses the new set
//! (the kernel maps have fixed sizes) the planes already updated are put back, so the two
//! never disagree. The lock is the control plane's own; no data-plane thread ever takes it.

use std::sync::{Arc, Mutex, PoisonError};

use fanout_core::select::Endpoint;
use fanout_core::{ListenerSnapshot, merge_snapshots};

use crate::desired::{Desired, Source};
use crate::metrics::SnapshotSource;
use crate::planes::{Plane, PlaneError};

/// Why a change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No listener of that name.
    UnknownListener(String),
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
            ControlError::Plane { plane, error } => write!(f, "{plane} plane: {error}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The control plane's state and the planes it drives.
pub struct Control {
    desired: Mutex<Desired>,
    planes: Vec<Arc<dyn Plane>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.planes.iter().map(|p| p.kind()).collect();
        f.debug_struct("Control").field("planes", &kinds).finish()
    }
}

impl Control {
    /// Takes charge of `planes`, which were started on the config `desired` came from (so they
    /// already serve it).
    pub fn new(desired: Desired, planes: Vec<Arc<dyn Plane>>) -> Control {
        Control {
            desired: Mutex::new(desired),
            planes,
        }
    }

    /// A copy of the desired state.
    pub fn desired(&self) -> Desired {
        self.desired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces listener `name`'s downstreams in every plane serving it, or in none.
    pub fn set_endpoints(&self, name: &str, endpoints: Vec<Endpoint>) -> Result<(), ControlError> {
        let mut desired = self.desired.lock().unwrap_or_else(PoisonError::into_inner);
        let old = desired
            .listener(name)
            .ok_or_else(|| ControlError::UnknownListener(name.to_owned()))?
            .endpoints
            .clone();
        let serving: Vec<&Arc<dyn Plane>> = self
            .planes
            .iter()
            .filter(|p| p.listener_names().iter().any(|n| n == name))
            .collect();
        for (i, p) in serving.iter().enumerate() {
            if let Err(error) = p.set_endpoints(name, endpoints.clone()) {
                for done in &serving[..i] {
                    if let Err(e) = done.set_endpoints(name, old.clone()) {
                        tracing::error!(listener = name, plane = done.kind(), error = %e, "cannot restore the previous downstreams");
                    }
                }
                return Err(ControlError::Plane {
                    plane: p.kind(),
                    error,
                });
            }
        }
        desired.set(name, Source::Runtime, endpoints);
        Ok(())
    }

    /// Every listener's counters, summed over the planes (a kernel-plane listener's fast path
    /// and slow path are one listener to its users).
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        merge_snapshots(self.planes.iter().flat_map(|p| p.snapshot()))
    }

    /// [`snapshot`](Self::snapshot) as the metrics exporter's source.
    pub fn snapshot_source(self: &Arc<Self>) -> SnapshotSource {
        let me = Arc::clone(self);
        Arc::new(move || me.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A plane that records what it was given and can be told to refuse.
    struct Fake {
        kind: &'static str,
        names: Vec<String>,
        refuse: bool,
        sets: Mutex<Vec<(String, Vec<SocketAddr>)>>,
    }

    impl Fake {
        fn new(kind: &'static str, names: &[&str], refuse: bool) -> Arc<Fake> {
            Arc::new(Fake {
                kind,
                names: names.iter().map(|n| n.to_string()).collect(),
                refuse,
                sets: Mutex::new(Vec::new()),
            })
        }

        fn sets(&self) -> Vec<(String, Vec<SocketAddr>)> {
            self.sets.lock().unwrap().clone()
        }
    }

    impl Plane for Fake {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn listener_names(&self) -> Vec<String> {
            self.names.clone()
        }
        fn set_endpoints(&self, name: &str, e: Vec<Endpoint>) -> Result<(), PlaneError> {
            if self.refuse {
                return Err(PlaneError("map full".into()));
            }
            let addrs = e.iter().map(|e| e.addr).collect();
            self.sets.lock().unwrap().push((name.to_owned(), addrs));
            Ok(())
        }
        fn snapshot(&self) -> Vec<ListenerSnapshot> {
            self.names
                .iter()
                .map(|n| ListenerSnapshot {
                    name: n.clone(),
                    received: 10,
                    ..ListenerSnapshot::default()
                })
                .collect()
        }
    }

    fn desired() -> Desired {
        let yaml = "listeners:\n\
                    - {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001']}\n\
                    - {name: k, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7002']}\n";
        Desired::from_config(&fanout_config::from_yaml(yaml).unwrap())
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_new_set_reaches_every_plane_serving_the_listener() {
        let (user, kern) = (
            Fake::new("userspace", &["a", "k"], false),
            Fake::new("kernel", &["k"], false),
        );
        let c = Control::new(desired(), vec![user.clone(), kern.clone()]);
        assert_eq!(c.desired().listener("k").unwrap().source, Source::Static);
        c.set_endpoints("k", vec![ep(9001), ep(9002)]).unwrap();
        let want = vec![("k".to_owned(), vec![ep(9001).addr, ep(9002).addr])];
        assert_eq!(user.sets(), want);
        assert_eq!(kern.sets(), want);
        let d = c.desired();
        assert_eq!(d.listener("k").unwrap().endpoints, vec![ep(9001), ep(9002)]);
        assert_eq!(d.listener("k").unwrap().source, Source::Runtime);
        // Only the planes serving "a" hear about it.
        c.set_endpoints("a", vec![ep(9003)]).unwrap();
        assert_eq!(kern.sets().len(), 1);
        assert_eq!(user.sets().len(), 2);
    }

    #[test]
    fn a_refused_set_changes_nothing_anywhere() {
        let (user, kern) = (
            Fake::new("userspace", &["k"], false),
            Fake::new("kernel", &["k"], true),
        );
        let c = Control::new(desired(), vec![user.clone(), kern.clone()]);
        let before = c.desired();
        let e = c.set_endpoints("k", vec![ep(9001)]).unwrap_err();
        assert_eq!(e.to_string(), "kernel plane: map full");
        // The userspace plane got the new set, then the old one back.
        assert_eq!(
            user.sets(),
            vec![
                ("k".to_owned(), vec![ep(9001).addr]),
                ("k".to_owned(), vec![ep(7002).addr]),
            ]
        );
        assert_eq!(c.desired(), before);
        assert_eq!(
            c.set_endpoints("nope", vec![]),
            Err(ControlError::UnknownListener("nope".into()))
        );
    }

    #[test]
    fn counters_of_both_planes_add_up_per_listener() {
        let (user, kern) = (
            Fake::new("userspace", &["a", "k"], false),
            Fake::new("kernel", &["k"], false),
        );
        let c = Arc::new(Control::new(desired(), vec![user, kern]));
        let snap = (c.snapshot_source())();
        let by_name: Vec<(String, u64)> =
            snap.iter().map(|s| (s.name.clone(), s.received)).collect();
        assert_eq!(by_name, vec![("a".to_owned(), 10), ("k".to_owned(), 20)]);
    }
}
