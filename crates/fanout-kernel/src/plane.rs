//! The running kernel plane: programs attached to their interfaces, maps kept in sync with the
//! configuration, counters read back as listener snapshots.
//!
//! Attachments are BPF links owned by this process (XDP via `bpf_link_create`, TC via TCX on
//! kernels ≥ 6.6): when the process exits, however it exits, the kernel detaches them, so a
//! crash never leaves a program forwarding traffic for a daemon that is gone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::Ebpf;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use fanout_config::{Config, ListenerConfig, Mode};
use fanout_core::select::{BackendSet, Distribution, Endpoint, EndpointState};
use fanout_core::{DropReason, EndpointSnapshot, ListenerSnapshot};

use crate::bindings::UF_MAX_ENDPOINTS;
use crate::maps::{KernelMaps, MapsError};
use crate::programs::{self, LoadError, TC_PROGRAM, XDP_PROGRAM};
use crate::watch;

/// Lifetime of a next-hop cache entry; route and neighbour changes clear the cache at once.
pub const NEXTHOP_TTL: Duration = Duration::from_secs(5);

/// `skb->mark` of mirror copies the TC program hands back to the kernel to forward.
pub const BYPASS_MARK: u32 = 0x5546_0001;

/// Why the kernel plane could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A map update failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Attaching to an interface failed.
    #[error("listener \"{listener}\": cannot attach {mode} to interface \"{interface}\": {reason}")]
    Attach {
        /// The first listener on that interface.
        listener: String,
        /// `xdp` or `tc_ebpf`.
        mode: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        reason: String,
    },
    /// No listener of that name in the kernel plane.
    #[error("no kernel-plane listener \"{0}\"")]
    UnknownListener(String),
}

/// How a program ended up attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// `xdp (native)`, `xdp (generic)` or `tc ingress`.
    pub how: &'static str,
}

struct KListener {
    name: String,
    bind: SocketAddr,
    id: u32,
    distribution: Distribution,
    endpoints: Vec<Endpoint>,
    stats_ids: Vec<u32>,
}

struct State {
    maps: KernelMaps,
    listeners: Vec<KListener>,
    free_stats: Vec<u32>,
}

/// The running kernel plane.
pub struct KernelPlane {
    _ebpf: Ebpf,
    state: Arc<Mutex<State>>,
    attachments: Vec<Attachment>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KernelPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPlane")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl KernelPlane {
    /// Loads the programs, writes every kernel-mode listener of `cfg` into the maps and attaches
    /// to the interfaces. `Ok(None)` when the configuration has no kernel-mode listener.
    pub fn start(cfg: &Config) -> Result<Option<KernelPlane>, KernelError> {
        let kernel: Vec<&ListenerConfig> = cfg
            .listeners
            .iter()
            .filter(|l| l.mode != Mode::Userspace)
            .collect();
        if kernel.is_empty() {
            return Ok(None);
        }
        let programs::Loaded { mut ebpf, mut maps } = programs::load()?;
        maps.set_globals(0, NEXTHOP_TTL, BYPASS_MARK)?;
        let mut state = State {
            maps,
            listeners: Vec::new(),
            free_stats: (0..UF_MAX_ENDPOINTS).rev().collect(),
        };
        for (id, l) in kernel.iter().enumerate() {
            let mut kl = KListener {
                name: l.name.clone(),
                bind: l.bind,
                id: id as u32,
                distribution: l.distribution,
                endpoints: Vec::new(),
                stats_ids: Vec::new(),
            };
            state.apply(&mut kl, l.endpoints())?;
            state.maps.add_listener(kl.id, kl.bind, kl.distribution)?;
            state.listeners.push(kl);
        }
        let attachments = attach_all(&mut ebpf, &kernel)?;
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let mut plane = KernelPlane {
            _ebpf: ebpf,
            state,
            attachments,
            stop,
            watcher: None,
        };
        plane.watch_routes();
        Ok(Some(plane))
    }

    /// Starts (again, if needed) the thread that clears the next-hop cache on route and
    /// neighbour changes. [`start`](Self::start) calls it; a caller that dropped privileges
    /// since may call it again so the thread is born with the reduced set.
    pub fn watch_routes(&mut self) {
        if let Some(w) = self.watcher.take() {
            self.stop.store(true, Ordering::Release);
            let _ = w.join();
            self.stop.store(false, Ordering::Release);
        }
        let (state, stop) = (Arc::clone(&self.state), Arc::clone(&self.stop));
        self.watcher = watch::spawn(stop, move || {
            if let Err(e) = lock(&state).maps.clear_nexthops() {
                tracing::warn!(error = %e, "clearing the next-hop cache failed");
            }
        });
    }

    /// Where the programs are attached.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Names of the listeners served.
    pub fn listener_names(&self) -> Vec<String> {
        lock(&self.state)
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// Replaces a listener's downstream set, live: the programs switch banks atomically.
    pub fn set_endpoints(
        &self,
        listener: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), KernelError> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let i = st
            .listeners
            .iter()
            .position(|l| l.name == listener)
            .ok_or_else(|| KernelError::UnknownListener(listener.into()))?;
        let mut kl = std::mem::replace(&mut st.listeners[i], placeholder());
        let r = st.apply(&mut kl, endpoints);
        st.listeners[i] = kl;
        r.map_err(Into::into)
    }

    /// The counters of every kernel-plane listener.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        let st = lock(&self.state);
        st.listeners.iter().map(|l| st.snapshot(l)).collect()
    }
}

fn placeholder() -> KListener {
    KListener {
        name: String::new(),
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        id: 0,
        distribution: Distribution::RoundRobin,
        endpoints: Vec::new(),
        stats_ids: Vec::new(),
    }
}

impl State {
    /// Writes `endpoints` as `l`'s set; downstreams that stay keep their counter slots.
    fn apply(&mut self, l: &mut KListener, endpoints: Vec<Endpoint>) -> Result<(), MapsError> {
        let old: BTreeMap<SocketAddr, u32> = l
            .endpoints
            .iter()
            .map(|e| e.addr)
            .zip(l.stats_ids.iter().copied())
            .collect();
        let mut ids = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            let id = match old.get(&e.addr) {
                Some(&id) => id,
                None => {
                    let id = self.free_stats.pop().ok_or_else(|| {
                        MapsError::TooLarge(format!(
                            "more than {UF_MAX_ENDPOINTS} downstreams in the kernel plane"
                        ))
                    })?;
                    self.maps.reset_endpoint_counters(id)?;
                    id
                }
            };
            ids.push(id);
        }
        let set = BackendSet::new(
            l.distribution,
            endpoints.clone(),
            fanout_core::select::DEFAULT_TABLE_SIZE,
        );
        self.maps.write_set(l.id, &set, &ids)?;
        for (addr, id) in old {
            if !endpoints.iter().any(|e| e.addr == addr) {
                self.free_stats.push(id);
            }
        }
        l.endpoints = endpoints;
        l.stats_ids = ids;
        Ok(())
    }

    fn snapshot(&self, l: &KListener) -> ListenerSnapshot {
        let c = self.maps.listener_counters(l.id).unwrap_or_default();
        let mut dropped = [0u64; DropReason::COUNT];
        for (d, x) in dropped.iter_mut().zip(c.drops.iter()) {
            *d = *x;
        }
        let downstreams = l
            .endpoints
            .iter()
            .zip(&l.stats_ids)
            .map(|(e, &id)| {
                let (packets, bytes) = self.maps.endpoint_counters(id).unwrap_or((0, 0));
                EndpointSnapshot {
                    addr: e.addr,
                    packets,
                    bytes,
                    healthy: None,
                }
            })
            .collect();
        ListenerSnapshot {
            name: l.name.clone(),
            received: c.rx_packets,
            bytes_received: c.rx_bytes,
            forwarded: c.fwd_packets,
            bytes_forwarded: c.fwd_bytes,
            dropped,
            downstreams,
            downstream_active: l
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Active)
                .count() as u64,
            ..Default::default()
        }
    }
}

impl Drop for KernelPlane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        // Dropping `_ebpf` detaches every program (the links are ours alone).
        tracing::info!(
            attachments = self.attachments.len(),
            "kernel plane detached"
        );
    }
}

/// Attaches the XDP program to every `mode: xdp` interface and the TC program to every
/// `mode: tc_ebpf` one (each interface once, however many listeners it serves).
fn attach_all(
    ebpf: &mut Ebpf,
    listeners: &[&ListenerConfig],
) -> Result<Vec<Attachment>, KernelError> {
    let mut done: BTreeMap<(String, Mode), &'static str> = BTreeMap::new();
    for l in listeners {
        let iface = l.interface.clone().unwrap_or_default();
        if done.contains_key(&(iface.clone(), l.mode)) {
            continue;
        }
        let fail = |mode: &'static str, reason: String| KernelError::Attach {
            listener: l.name.clone(),
            mode,
            interface: iface.clone(),
            reason,
        };
        if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
            return Err(fail(l.mode.as_str(), "no such interface".into()));
        }
        let how = match l.mode {
            Mode::Xdp => {
                let prog: &mut Xdp = ebpf
                    .program_mut(XDP_PROGRAM)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| fail("xdp", "program missing".into()))?;
                match prog.attach(&iface, XdpMode::Driver) {
                    Ok(_) => "xdp (native)",
                    Err(native) => {
                        tracing::warn!(interface = %iface, error = %native, "native XDP not available; falling back to generic (skb) mode, which is slower");
                        prog.attach(&iface, XdpMode::Skb)
                            .map_err(|e| fail("xdp", format!("native: {native}; generic: {e}")))?;
                        "xdp (generic)"
                    }
                }
            }
            Mode::TcEbpf => {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(TC_PROGRAM)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| fail("tc_ebpf", "program missing".into()))?;
                if let Err(e) = prog.attach(&iface, TcAttachType::Ingress) {
                    // Kernels before 6.6 attach through a clsact qdisc, which may need adding.
                    let _ = aya::programs::tc::qdisc_add_clsact(&iface);
                    prog.attach(&iface, TcAttachType::Ingress)
                        .map_err(|e2| fail("tc_ebpf", format!("{e}; {e2}")))?;
                }
                "tc ingress"
            }
            Mode::Userspace => continue,
        };
        tracing::info!(interface = %iface, how, "kernel plane attached");
        done.insert((iface, l.mode), how);
    }
    Ok(done
        .into_iter()
        .map(|((interface, _), how)| Attachment { interface, how })
        .collect())
}
