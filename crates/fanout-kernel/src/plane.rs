//! The running kernel plane: programs attached to their interfaces, maps kept in sync with the
//! configuration, counters read back as listener snapshots.
//!
//! Attachments are BPF links owned by this process (XDP via `bpf_link_create`, TC via TCX on
//! kernels ≥ 6.6): when the process exits, however it exits, the kernel detaches them, so a
//! crash never leaves a program forwarding traffic for a daemon that is gone.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use fanout_config::{Config, ListenerConfig, Mode};
use fanout_core::accounting::downstream_snapshots;
use fanout_core::select::{BackendSet, Distribution, Endpoint};
use fanout_core::{DropReason, ListenerSnapshot};

use crate::bindings::UF_MAX_ENDPOINTS;
use crate::maps::{BANK_REUSE_DELAY, KernelMaps, MapsError, NexthopCache, SetMaps, StatsMaps};
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
    id: u32,
    distribution: Distribution,
    endpoints: Vec<Endpoint>,
    stats_ids: Vec<u32>,
}

/// What a scrape reads: the counter maps and, per listener, its current downstreams with their
/// counter slots.
///
/// Why a scrape reads whole counters although updates run beside it: a slot is zeroed for a
/// new downstream only while it is in `free_stats`, that is while no listener here lists it,
/// and a listener's list changes (slots in, slots out to `free_stats`) only under this
/// struct's lock, which the scrape holds. So the slots a scrape reads are never reset under it.
///
/// A slot a listener gave up rests in `resting` for [`BANK_REUSE_DELAY`] before it is free:
/// a packet may still be running on that listener's retired bank, which names the slot, and
/// its count must not land on whichever downstream gets the slot next. Only when every other
/// slot is taken is a resting one handed out early (then one such count can go astray).
struct Counters {
    stats: StatsMaps,
    /// Fixed at start, in configuration order; listener `i` has id `i`.
    listeners: Vec<KListener>,
    free_stats: Vec<u32>,
    /// Slots given up, oldest first, with when.
    resting: VecDeque<(u32, Instant)>,
}

/// The counter slots for an update of listener `index`, claimed before its bank is written
/// and published (or released) once the write is done.
struct Claim {
    index: usize,
    id: u32,
    distribution: Distribution,
    /// The slot of each new endpoint, in order: kept for those that stay, fresh for the rest.
    ids: Vec<u32>,
    /// Of `ids`, those taken from `free_stats` (already zeroed).
    fresh: Vec<u32>,
}

/// The running kernel plane.
///
/// Three locks, one per group of maps, so that no user waits for another's work: a scrape
/// takes only `counters`, the route watcher only `nexthops`, and an update holds `writer`
/// throughout (the retired bank's rest and the bank writes, a Maglev table being 65,537
/// syscalls) but `counters` only for two short bookkeeping steps. Lock order: `writer`, then
/// `counters`.
pub struct KernelPlane {
    _ebpf: Ebpf,
    /// The listener and downstream-set maps. Its holder is the only one who can flip a bank,
    /// which is what makes [`SetMaps::write_set`]'s rest of the retired bank sufficient.
    writer: Mutex<SetMaps>,
    /// Counters and the listeners' published sets, for [`snapshot`](Self::snapshot).
    counters: Mutex<Counters>,
    /// The next-hop cache, for the route watcher.
    nexthops: Arc<Mutex<NexthopCache>>,
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

/// Locks `m`, poisoned or not: a panic while it was held leaves at worst a half-written idle
/// bank (never flipped to, and rewritten in full by the next update) or stale bookkeeping,
/// neither of which makes the programs misroute.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let programs::Loaded { mut ebpf, maps } = programs::load()?;
        let KernelMaps {
            mut sets,
            stats,
            nexthop_cache,
        } = maps;
        sets.set_globals(0, NEXTHOP_TTL, BYPASS_MARK)?;
        let counters = Mutex::new(Counters {
            stats,
            listeners: Vec::new(),
            free_stats: (0..UF_MAX_ENDPOINTS).rev().collect(),
            resting: VecDeque::new(),
        });
        add_listeners(&mut sets, &counters, &kernel)?;
        let attachments = attach_all(&mut ebpf, &kernel)?;
        let mut plane = KernelPlane {
            _ebpf: ebpf,
            writer: Mutex::new(sets),
            counters,
            nexthops: Arc::new(Mutex::new(nexthop_cache)),
            attachments,
            stop: Arc::new(AtomicBool::new(false)),
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
        let (nexthops, stop) = (Arc::clone(&self.nexthops), Arc::clone(&self.stop));
        self.watcher = watch::spawn(stop, move || {
            if let Err(e) = lock(&nexthops).clear_nexthops() {
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
        lock(&self.counters)
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
    /// orders of magnitude longer than a program run ([`SetMaps::write_set`] waits for it).
    ///
    /// Both the wait and the bank writes hold only the writer lock: updates run one at a time,
    /// while scrapes and the route watcher carry on. An update takes the scrapes' lock only
    /// twice, for a few map calls each: to claim counter slots before the write and to publish
    /// the new set after the flip.
    pub fn set_endpoints(
        &self,
        listener: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), KernelError> {
        let mut sets = lock(&self.writer);
        replace_set(&mut sets, &self.counters, listener, endpoints)
    }

    /// The counters of every kernel-plane listener.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        let c = lock(&self.counters);
        c.listeners.iter().map(|l| c.snapshot(l)).collect()
    }
}

/// Writes `listeners` into fresh maps, listener `i` with id `i`: each one's downstream set
/// first, then its `uf_listeners` entry, so the programs never find a listener without a set.
fn add_listeners(
    sets: &mut SetMaps,
    counters: &Mutex<Counters>,
    listeners: &[&ListenerConfig],
) -> Result<(), KernelError> {
    for (id, l) in listeners.iter().enumerate() {
        lock(counters).listeners.push(KListener {
            name: l.name.clone(),
            id: id as u32,
            distribution: l.distribution,
            endpoints: Vec::new(),
            stats_ids: Vec::new(),
        });
        replace_set(sets, counters, &l.name, l.endpoints())?;
        sets.add_listener(id as u32, l.bind, l.distribution)?;
    }
    Ok(())
}

/// Replaces `listener`'s set, in three steps of which only the first and last take the
/// counters lock, each for a few map calls:
///
/// 1. claim counter slots for the new downstreams (zeroed before any bank points at them);
/// 2. write the idle bank and flip to it ([`SetMaps::write_set`]: the rest of the retired bank
///    and every table write), with `sets` alone;
/// 3. publish the new set to scrapes and free the slots of the downstreams that left, or, if
///    the write failed (then nothing flipped), release the claimed slots.
///
/// Between 1 and 3 a scrape still sees the old set; its slots are not freed until 3, so it
/// reads them whole. The caller holds `sets` through all three: no other update can claim or
/// publish in between.
fn replace_set(
    sets: &mut SetMaps,
    counters: &Mutex<Counters>,
    listener: &str,
    endpoints: Vec<Endpoint>,
) -> Result<(), KernelError> {
    let claim = lock(counters).claim(listener, &endpoints)?;
    let set = BackendSet::new(
        claim.distribution,
        endpoints.clone(),
        fanout_core::select::DEFAULT_TABLE_SIZE,
    );
    let written = sets.write_set(claim.id, &set, &claim.ids);
    let mut c = lock(counters);
    match written {
        Ok(()) => {
            c.publish(claim, endpoints);
            Ok(())
        }
        Err(e) => {
            c.free_stats.extend(claim.fresh);
            Err(e.into())
        }
    }
}

impl Counters {
    /// The counter slots for `endpoints` as `name`'s new set: downstreams that stay keep
    /// theirs, new ones get free slots, zeroed here (no bank points at a free slot yet).
    fn claim(&mut self, name: &str, endpoints: &[Endpoint]) -> Result<Claim, KernelError> {
        let index = self
            .listeners
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| KernelError::UnknownListener(name.into()))?;
        let l = &self.listeners[index];
        let old: BTreeMap<SocketAddr, u32> = l
            .endpoints
            .iter()
            .map(|e| e.addr)
            .zip(l.stats_ids.iter().copied())
            .collect();
        let mut claim = Claim {
            index,
            id: l.id,
            distribution: l.distribution,
            ids: Vec::with_capacity(endpoints.len()),
            fresh: Vec::new(),
        };
        for e in endpoints {
            let id = match old.get(&e.addr) {
                Some(&id) => id,
                None => match self.fresh_slot() {
                    Ok(id) => {
                        claim.fresh.push(id);
                        id
                    }
                    Err(err) => {
                        self.free_stats.extend(claim.fresh);
                        return Err(err.into());
                    }
                },
            };
            claim.ids.push(id);
        }
        Ok(claim)
    }

    /// A free counter slot, zeroed (returned to the free list if zeroing fails).
    fn fresh_slot(&mut self) -> Result<u32, MapsError> {
        while let Some(&(id, since)) = self.resting.front()
            && (since.elapsed() >= BANK_REUSE_DELAY || self.free_stats.is_empty())
        {
            self.resting.pop_front();
            self.free_stats.push(id);
        }
        let id = self.free_stats.pop().ok_or_else(|| {
            MapsError::TooLarge(format!(
                "more than {UF_MAX_ENDPOINTS} downstreams in the kernel plane"
            ))
        })?;
        if let Err(e) = self.stats.reset_endpoint_counters(id) {
            self.free_stats.push(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Makes `endpoints` (now active in the maps) the listener's set for scrapes and frees
    /// the slots of the downstreams that left.
    fn publish(&mut self, claim: Claim, endpoints: Vec<Endpoint>) {
        let l = &mut self.listeners[claim.index];
        let now = Instant::now();
        let gone = l.stats_ids.iter().filter(|id| !claim.ids.contains(id));
        self.resting.extend(gone.map(|&id| (id, now)));
        l.endpoints = endpoints;
        l.stats_ids = claim.ids;
    }

    fn snapshot(&self, l: &KListener) -> ListenerSnapshot {
        let c = self.stats.listener_counters(l.id).unwrap_or_default();
        let mut dropped = [0u64; DropReason::COUNT];
        for (d, x) in dropped.iter_mut().zip(c.drops.iter()) {
            *d = *x;
        }
        let sent = l
            .stats_ids
            .iter()
            .map(|&id| self.stats.endpoint_counters(id).unwrap_or((0, 0)));
        let (downstreams, downstream_active) = downstream_snapshots(&l.endpoints, sent);
        ListenerSnapshot {
            name: l.name.clone(),
            received: c.rx_packets,
            bytes_received: c.rx_bytes,
            forwarded: c.fwd_packets,
            bytes_forwarded: c.fwd_bytes,
            dropped,
            downstreams,
            downstream_active,
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

    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The longest a scrape may take while updates run: a handful of map reads, so far below
    /// both a retired bank's rest and a Maglev table write.
    const SCRAPE_LIMIT: Duration = Duration::from_millis(10);

    /// Between two scrapes of [`scrape_during`]: many scrapes per bank write all the same.
    const SCRAPE_PAUSE: Duration = Duration::from_micros(500);

    /// Starts a plane with `listeners` (YAML list items, TC on `lo`) in a private network
    /// namespace, this thread's only. `None` when `test` cannot run here (not root): then it
    /// skips, or fails if it must run (see [`fanout_testkit::netns::privileged`]).
    fn plane_on_lo(test: &str, listeners: &str) -> Option<KernelPlane> {
        if !fanout_testkit::netns::privileged(test) {
            return None;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let cfg = fanout_config::from_yaml(&format!("listeners:\n{listeners}")).unwrap();
        Some(KernelPlane::start(&cfg).unwrap().unwrap())
    }

    /// Runs `updates` on another thread while this one scrapes in a loop, each scrape checked
    /// against `check`; returns the slowest scrape, how many there were and what `updates`
    /// returned.
    fn scrape_during<T: Send>(
        plane: &KernelPlane,
        updates: impl FnOnce() -> T + Send,
        check: impl Fn(&[ListenerSnapshot]),
    ) -> (Duration, u32, T) {
        std::thread::scope(|s| {
            let updater = s.spawn(updates);
            let (mut slowest, mut scrapes) = (Duration::ZERO, 0u32);
            while !updater.is_finished() {
                let t = Instant::now();
                let snap = plane.snapshot();
                slowest = slowest.max(t.elapsed());
                scrapes += 1;
                check(&snap);
                // Scrapes are periodic, not a busy loop: one spinning here would compete for
                // the CPU with the updater (and parallel tests) and time its own preemption.
                std::thread::sleep(SCRAPE_PAUSE);
            }
            (slowest, scrapes, updater.join().unwrap())
        })
    }

    /// The counter slot of `listener`'s downstream `port`.
    fn slot(plane: &KernelPlane, listener: &str, port: u16) -> u32 {
        let c = lock(&plane.counters);
        let l = c.listeners.iter().find(|l| l.name == listener).unwrap();
        let i = l
            .endpoints
            .iter()
            .position(|e| e.addr.port() == port)
            .unwrap();
        l.stats_ids[i]
    }

    /// A slot a listener gives up is not handed to another listener's new downstream until a
    /// packet still on the retired bank can no longer count into it.
    #[test]
    fn a_given_up_counter_slot_rests_before_reuse() {
        let Some(plane) = plane_on_lo(
            "a_given_up_counter_slot_rests_before_reuse",
            r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
  - {name: b, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5515", downstreams: ["127.0.0.1:7001"]}
"#,
        ) else {
            return;
        };
        let given_up = [slot(&plane, "a", 6001), slot(&plane, "b", 7001)];
        plane.set_endpoints("a", vec![ep(6002)]).unwrap();
        plane.set_endpoints("b", vec![ep(7002)]).unwrap();
        assert!(
            !given_up.contains(&slot(&plane, "b", 7002)),
            "reused while resting"
        );
        std::thread::sleep(BANK_REUSE_DELAY);
        plane.set_endpoints("b", vec![ep(7003)]).unwrap();
        // Rested slots are free again, and come first (the free list is a stack).
        assert!(given_up.contains(&slot(&plane, "b", 7003)));
    }

    /// Updates back to back each wait for the bank the previous one retired; scrapes meanwhile
    /// must not wait with them (the wait holds only the writer's lock, not the counters').
    #[test]
    fn scrapes_do_not_wait_for_a_retired_bank() {
        let Some(plane) = plane_on_lo(
            "scrapes_do_not_wait_for_a_retired_bank",
            r#"
  - name: t
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5514"
    downstreams: ["127.0.0.1:6001"]
"#,
        ) else {
            return;
        };
        const UPDATES: u32 = 5;
        let sets = [vec![ep(6001), ep(6002)], vec![ep(6001)]];
        let (slowest, scrapes, took) = scrape_during(
            &plane,
            || {
                let t0 = Instant::now();
                for k in 0..UPDATES as usize {
                    plane.set_endpoints("t", sets[k % 2].clone()).unwrap();
                }
                t0.elapsed()
            },
            |snap| assert_eq!(snap.len(), 1),
        );
        assert!(
            took >= BANK_REUSE_DELAY * (UPDATES - 1),
            "{UPDATES} updates took {took:?}: they did not wait for the retired banks"
        );
        assert!(
            slowest < SCRAPE_LIMIT,
            "a scrape took {slowest:?} (of {scrapes}) while updates waited"
        );
        let snap = plane.snapshot();
        assert_eq!(
            snap[0].downstreams.len(),
            sets[(UPDATES as usize - 1) % 2].len()
        );
    }

    /// A consistent_hash update writes the idle bank's Maglev table, 65,537 entries at one
    /// bpf syscall each (tens of milliseconds): scrapes of any listener meanwhile must not wait
    /// for those writes, and each sees one whole set, the old or the new.
    #[test]
    fn scrapes_do_not_wait_for_a_maglev_write() {
        let Some(plane) = plane_on_lo(
            "scrapes_do_not_wait_for_a_maglev_write",
            r#"
  - name: rr
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5514"
    downstreams: ["127.0.0.1:6001"]
  - name: hash
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5515"
    distribution: consistent_hash
    downstreams: ["127.0.0.1:7001"]
"#,
        ) else {
            return;
        };
        const UPDATES: usize = 6;
        let sets = [vec![ep(7001), ep(7002), ep(7003)], vec![ep(7001)]];
        let (slowest, scrapes, fastest_update) = scrape_during(
            &plane,
            || {
                let mut fastest = Duration::MAX;
                for k in 0..UPDATES {
                    let t = Instant::now();
                    plane.set_endpoints("hash", sets[k % 2].clone()).unwrap();
                    // Back to back, each update after the first rests the previous flip's
                    // bank for BANK_REUSE_DELAY; the rest of its time is the bank write.
                    if k > 0 {
                        fastest = fastest.min(t.elapsed().saturating_sub(BANK_REUSE_DELAY));
                    }
                }
                fastest
            },
            |snap| {
                assert_eq!(snap.len(), 2);
                let n = snap[1].downstreams.len();
                assert!(n == 1 || n == 3, "a scrape saw {n} downstreams of hash");
            },
        );
        // Else a scrape stuck behind a whole write could pass too: the test would prove nothing.
        assert!(
            fastest_update > SCRAPE_LIMIT,
            "a Maglev write took only {fastest_update:?}: lower SCRAPE_LIMIT below it"
        );
        assert!(
            slowest < SCRAPE_LIMIT,
            "a scrape took {slowest:?} (of {scrapes}) while Maglev tables were written"
        );
        assert_eq!(plane.snapshot()[1].downstreams.len(), 1);
    }
}
