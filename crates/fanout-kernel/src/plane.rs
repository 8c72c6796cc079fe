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
    /// The maps and the listeners' bookkeeping. Scrapes ([`snapshot`](Self::snapshot)) and
    /// the route watcher take it too, so it is only ever held for map calls, never for a wait.
    state: Arc<Mutex<State>>,
    /// Held for the whole of a [`set_endpoints`](Self::set_endpoints), its wait included: one
    /// update at a time, so no other flip can happen between measuring how long a listener's
    /// retired bank must rest and rewriting it.
    writer: Mutex<()>,
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
        let state = State::with_listeners(maps, &kernel)?;
        let attachments = attach_all(&mut ebpf, &kernel)?;
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let mut plane = KernelPlane {
            _ebpf: ebpf,
            state,
            writer: Mutex::new(()),
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
    ///
    /// Why a packet never sees a half-written set: the programs read `uf_active` once per
    /// packet and then only that bank; the new set goes into the other, idle bank, and
    /// `uf_active` is flipped to it (one 32-bit map write) only once the bank is complete. The
    /// bank the flip retires may still be read by packets that started before it, so it is
    /// rewritten no sooner than [`BANK_REUSE_DELAY`](crate::maps::BANK_REUSE_DELAY) later,
    /// orders of magnitude longer than a program run.
    ///
    /// That wait happens here, with the state lock released, so scrapes and the route watcher
    /// carry on during it. It stays sufficient because the writer lock is held throughout: the
    /// only other flips of a running plane are other calls of this method, which wait for it.
    /// [`KernelMaps::write_set`] checks the time again and would sleep if it were not.
    pub fn set_endpoints(
        &self,
        listener: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), KernelError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let wait = {
            let st = lock(&self.state);
            let i = st.position(listener)?;
            st.maps.bank_reuse_wait(st.listeners[i].id)?
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut st = lock(&self.state);
        let st = &mut *st;
        let i = st.position(listener)?;
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
    /// Writes `listeners` into fresh maps, listener `i` with id `i`: each one's downstream set
    /// first, then its `uf_listeners` entry, so the programs never find a listener without a
    /// set.
    fn with_listeners(maps: KernelMaps, listeners: &[&ListenerConfig]) -> Result<Self, MapsError> {
        let mut state = State {
            maps,
            listeners: Vec::new(),
            free_stats: (0..UF_MAX_ENDPOINTS).rev().collect(),
        };
        for (id, l) in listeners.iter().enumerate() {
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
        Ok(state)
    }

    /// The index of the listener called `name`.
    fn position(&self, name: &str) -> Result<usize, KernelError> {
        self.listeners
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| KernelError::UnknownListener(name.into()))
    }

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
/// `mode: tc_ebpf` one (each interface once, however many listeners it serves), in
/// configuration order; on the first failure, stops there with its cause. The attachments are
/// listed by interface name.
fn attach_all(
    ebpf: &mut Ebpf,
    listeners: &[&ListenerConfig],
) -> Result<Vec<Attachment>, KernelError> {
    let mut done: BTreeMap<(String, Mode), &'static str> = BTreeMap::new();
    for t in targets(listeners) {
        t.check_interface()?;
        let how = match t.mode {
            Mode::Xdp => attach_xdp(ebpf, &t)?,
            Mode::TcEbpf => attach_tc(ebpf, &t)?,
            Mode::Userspace => continue,
        };
        tracing::info!(interface = %t.interface, how, "kernel plane attached");
        done.insert((t.interface, t.mode), how);
    }
    Ok(done
        .into_iter()
        .map(|((interface, _), how)| Attachment { interface, how })
        .collect())
}

/// One program to attach to one interface, and the first listener that asked for it (named in
/// errors).
struct Target<'a> {
    listener: &'a str,
    interface: String,
    mode: Mode,
}

impl Target<'_> {
    fn fail(&self, reason: impl Into<String>) -> KernelError {
        KernelError::Attach {
            listener: self.listener.to_owned(),
            mode: self.mode.as_str(),
            interface: self.interface.clone(),
            reason: reason.into(),
        }
    }

    /// Fails with "no such interface" unless the interface exists (in this network namespace).
    fn check_interface(&self) -> Result<(), KernelError> {
        nix::net::if_::if_nametoindex(self.interface.as_str())
            .map(drop)
            .map_err(|_| self.fail("no such interface"))
    }
}

/// The distinct (interface, mode) pairs of `listeners`, in order of first appearance.
fn targets<'a>(listeners: &[&'a ListenerConfig]) -> Vec<Target<'a>> {
    let mut out: Vec<Target<'a>> = Vec::new();
    for l in listeners.iter().filter(|l| l.mode != Mode::Userspace) {
        let interface = l.interface.clone().unwrap_or_default();
        if !out
            .iter()
            .any(|t| t.interface == interface && t.mode == l.mode)
        {
            out.push(Target {
                listener: &l.name,
                interface,
                mode: l.mode,
            });
        }
    }
    out
}

/// Attaches the XDP program in native (driver) mode, or in generic (skb) mode where the
/// driver has no XDP support.
fn attach_xdp(ebpf: &mut Ebpf, t: &Target<'_>) -> Result<&'static str, KernelError> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| t.fail("program missing"))?;
    match prog.attach(&t.interface, XdpMode::Driver) {
        Ok(_) => Ok("xdp (native)"),
        Err(native) => {
            tracing::warn!(interface = %t.interface, error = %native, "native XDP not available; falling back to generic (skb) mode, which is slower");
            prog.attach(&t.interface, XdpMode::Skb)
                .map_err(|e| t.fail(format!("native: {native}; generic: {e}")))?;
            Ok("xdp (generic)")
        }
    }
}

/// Attaches the TC program at ingress: through TCX where the kernel has it (≥ 6.6), else
/// through a clsact qdisc, added if missing.
fn attach_tc(ebpf: &mut Ebpf, t: &Target<'_>) -> Result<&'static str, KernelError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| t.fail("program missing"))?;
    if let Err(e) = prog.attach(&t.interface, TcAttachType::Ingress) {
        // Kernels before 6.6 attach through a clsact qdisc, which may need adding.
        let _ = aya::programs::tc::qdisc_add_clsact(&t.interface);
        prog.attach(&t.interface, TcAttachType::Ingress)
            .map_err(|e2| t.fail(format!("{e}; {e2}")))?;
    }
    Ok("tc ingress")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;
    use crate::maps::BANK_REUSE_DELAY;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Updates back to back each wait for the bank the previous one retired; scrapes meanwhile
    /// must not wait with them (they take the state lock, which the wait does not hold).
    #[test]
    fn scrapes_do_not_wait_for_a_retired_bank() {
        if !fanout_testkit::netns::privileged("scrapes_do_not_wait_for_a_retired_bank") {
            return;
        }
        // A private network namespace (this thread's only): the TC program goes on its `lo`.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let cfg = fanout_config::from_yaml(
            r#"
listeners:
  - name: t
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5514"
    downstreams: ["127.0.0.1:6001"]
"#,
        )
        .unwrap();
        let plane = KernelPlane::start(&cfg).unwrap().unwrap();
        const UPDATES: u32 = 5;
        let sets = [vec![ep(6001), ep(6002)], vec![ep(6001)]];
        std::thread::scope(|s| {
            let updater = s.spawn(|| {
                let t0 = Instant::now();
                for k in 0..UPDATES as usize {
                    plane.set_endpoints("t", sets[k % 2].clone()).unwrap();
                }
                t0.elapsed()
            });
            let (mut slowest, mut scrapes) = (Duration::ZERO, 0u32);
            while !updater.is_finished() {
                let t = Instant::now();
                assert_eq!(plane.snapshot().len(), 1);
                slowest = slowest.max(t.elapsed());
                scrapes += 1;
            }
            let took = updater.join().unwrap();
            assert!(
                took >= BANK_REUSE_DELAY * (UPDATES - 1),
                "{UPDATES} updates took {took:?}: they did not wait for the retired banks"
            );
            assert!(
                slowest < BANK_REUSE_DELAY / 2,
                "a scrape took {slowest:?} (of {scrapes}) while updates waited"
            );
        });
        let snap = plane.snapshot();
        assert_eq!(
            snap[0].downstreams.len(),
            sets[(UPDATES as usize - 1) % 2].len()
        );
    }
}
