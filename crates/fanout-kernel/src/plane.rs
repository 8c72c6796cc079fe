//! The running kernel plane: programs attached to their interfaces, maps kept in sync with the
//! configuration, counters read back as listener snapshots.
//!
//! Listeners come and go while the plane runs. [`KernelPlane::start`] adds the configuration's
//! kernel-mode listeners one at a time with [`KernelPlane::add_listener`], the call a reload
//! makes too, and [`KernelPlane::remove_listener`] takes one away again. What a listener holds,
//! and how each is given back:
//!
//! - an **id** (`ids`): its entry in every per-listener map (banks, `uf_active`, round-robin
//!   cursor, counters). A removed listener's id rests for [`BANK_REUSE_DELAY`] before another
//!   listener gets it;
//! - one **counter slot** per downstream (`Counters`), which also rests when given up;
//! - its **registration** in `uf_listeners`/`uf_ports`, the one step that makes the programs
//!   forward its datagrams: made last when adding (after its set is written), undone first
//!   when removing. Unregistered, its datagrams pass to the kernel's stack, so a userspace
//!   socket on its address (the slow path) gets them;
//! - a share of an **attachment** (`attach`): the program goes onto an interface with the
//!   first listener of that interface and mode, and comes off with the last.
//!
//! Re-creating a listener (same name, changed settings) is a removal and then an add: the new
//! one counts from zero, and if it was the only listener of its interface, the program comes
//! off and goes back on in between (its datagrams meanwhile go to the slow path). On a full
//! plane the add waits for the removed listener's id to rest (at most [`BANK_REUSE_DELAY`]).
//!
//! Attachments are BPF links owned by this process (XDP via `bpf_link_create`, TC via TCX on
//! kernels ≥ 6.6): when the process exits, however it exits, the kernel detaches them, so a
//! crash never leaves a program forwarding traffic for a daemon that is gone.

mod attach;
mod ids;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::Ebpf;
use fanout_config::{Config, ListenerConfig, Mode};
use fanout_core::accounting::downstream_snapshots;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint};
use fanout_core::{DropReason, ListenerSnapshot};

use crate::bindings::{UF_MAX_ENDPOINTS, UF_MAX_LISTENERS};
use crate::maps::{
    BANK_REUSE_DELAY, KernelMaps, MapsError, NexthopCache, SetMaps, StatsMaps, socket_words,
};
use crate::programs::{self, LoadError};
use crate::watch;
use attach::{Links, Target};
use ids::ListenerIds;

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
    /// A map update failed, or a limit of the maps was reached (the text names it).
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
    /// A listener the kernel plane cannot add as configured: not a kernel mode, or its name
    /// or address taken by a listener it serves.
    #[error("listener \"{listener}\": {reason}")]
    Refused {
        /// The listener.
        listener: String,
        /// Why.
        reason: String,
    },
}

/// How a program ended up attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// `xdp (native)`, `xdp (generic)` or `tc ingress`.
    pub how: &'static str,
}

/// A listener as the plane serves it. `interface` and `mode` say which attachment it shares
/// (the program is detached with the last listener of the pair); `bind` is its
/// `uf_listeners` key.
struct KListener {
    name: String,
    id: u32,
    bind: SocketAddr,
    mode: Mode,
    interface: String,
    distribution: Distribution,
    endpoints: Vec<Endpoint>,
    stats_ids: Vec<u32>,
}

/// What a scrape reads: the counter maps and, per listener, its current downstreams with their
/// counter slots; and, so that listing them never waits for an update either, the
/// attachments.
///
/// Why a scrape reads whole counters although updates run beside it: a slot is zeroed for a
/// new downstream only while it is in `free_stats`, that is while no listener here lists it,
/// and a listener's list changes (slots in, slots out to `free_stats`) only under this
/// struct's lock, which the scrape holds. So the slots a scrape reads are never reset under it.
/// The same holds for a listener's own counters: they are zeroed (for a new listener) before
/// it is listed here, and a removed one is unlisted in one step.
///
/// A slot a listener gave up rests in `resting` for [`BANK_REUSE_DELAY`] before it is free:
/// a packet may still be running on that listener's retired bank, which names the slot, and
/// its count must not land on whichever downstream gets the slot next. Only when every other
/// slot is taken is a resting one handed out early (then one such count can go astray).
struct Counters {
    stats: StatsMaps,
    /// In the order they were added: the configuration's for those of the start.
    listeners: Vec<KListener>,
    free_stats: Vec<u32>,
    /// Slots given up, oldest first, with when.
    resting: VecDeque<(u32, Instant)>,
    /// A copy of the writer's, updated by every change of them.
    attachments: Vec<Attachment>,
}

/// The counter slots for a new set of listener `id`, claimed before its bank is written and
/// published (or released) once the write is done.
struct Claim {
    id: u32,
    distribution: Distribution,
    /// The slot of each new endpoint, in order: kept for those that stay, fresh for the rest.
    ids: Vec<u32>,
    /// Of `ids`, those taken from `free_stats` (already zeroed).
    fresh: Vec<u32>,
}

/// What an update holds throughout: the maps that define listeners and sets, the loaded object
/// (whose programs own the attachments), the listener ids not in use, and the attachments.
struct Writer {
    /// Its holder is the only one who can flip a bank, which is what makes
    /// [`SetMaps::write_set`]'s rest of the retired bank sufficient.
    sets: SetMaps,
    ebpf: Ebpf,
    ids: ListenerIds,
    links: Links,
}

/// The running kernel plane.
///
/// Three locks, one per group of maps, so that no user waits for another's work: a scrape
/// takes only `counters`, the route watcher only `nexthops`, and an update (a set, or a
/// listener added or removed) holds `writer` throughout (a retired bank's or a removed id's
/// rest, the bank writes, a Maglev table being 65,537 syscalls, attaching) but `counters` only
/// for short bookkeeping steps of a few map calls. Lock order: `writer`, then `counters`.
pub struct KernelPlane {
    writer: Mutex<Writer>,
    /// Counters and the listeners' published sets, for [`snapshot`](Self::snapshot).
    counters: Mutex<Counters>,
    /// The next-hop cache, for the route watcher.
    nexthops: Arc<Mutex<NexthopCache>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KernelPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPlane")
            .field("attachments", &self.attachments())
            .finish_non_exhaustive()
    }
}

/// Locks `m`, poisoned or not: a panic while it was held leaves at worst a half-written idle
/// bank (never flipped to, and rewritten in full by the next update) or stale bookkeeping,
/// neither of which makes the programs misroute.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The details of a listener [`KernelPlane::remove_listener`] needs, and whether it is the last
/// one on its interface and mode.
struct Leaving {
    id: u32,
    bind: SocketAddr,
    distribution: Distribution,
    interface: String,
    mode: Mode,
    last_on_interface: bool,
}

impl KernelPlane {
    /// Loads the programs and adds every kernel-mode listener of `cfg`
    /// ([`add_listener`](Self::add_listener)), in configuration order: listener `i` gets id
    /// `i`, and the first listener of an interface attaches its program, named if that fails.
    /// On a failure the plane is dropped, which detaches whatever was attached. `Ok(None)` when
    /// the configuration has no kernel-mode listener.
    pub fn start(cfg: &Config) -> Result<Option<KernelPlane>, KernelError> {
        let kernel: Vec<&ListenerConfig> = cfg
            .listeners
            .iter()
            .filter(|l| l.mode != Mode::Userspace)
            .collect();
        if kernel.is_empty() {
            return Ok(None);
        }
        let mut plane = KernelPlane::load()?;
        for l in kernel {
            plane.add_listener(l)?;
        }
        plane.watch_routes();
        Ok(Some(plane))
    }

    /// The programs loaded, the globals written, no listener and no attachment yet.
    fn load() -> Result<KernelPlane, KernelError> {
        let programs::Loaded { ebpf, maps } = programs::load()?;
        let KernelMaps {
            mut sets,
            stats,
            nexthop_cache,
        } = maps;
        sets.set_globals(0, NEXTHOP_TTL, BYPASS_MARK)?;
        Ok(KernelPlane {
            writer: Mutex::new(Writer {
                sets,
                ebpf,
                ids: ListenerIds::new(UF_MAX_LISTENERS),
                links: Links::default(),
            }),
            counters: Mutex::new(Counters {
                stats,
                listeners: Vec::new(),
                free_stats: (0..UF_MAX_ENDPOINTS).rev().collect(),
                resting: VecDeque::new(),
                attachments: Vec::new(),
            }),
            nexthops: Arc::new(Mutex::new(nexthop_cache)),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
        })
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

    /// Where the programs are attached, by interface name.
    pub fn attachments(&self) -> Vec<Attachment> {
        lock(&self.counters).attachments.clone()
    }

    /// Names of the listeners served.
    pub fn listener_names(&self) -> Vec<String> {
        lock(&self.counters)
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// Serves listener `l` from now on (with its static downstreams), or changes nothing and
    /// says why.
    ///
    /// In order: `l` is checked (a kernel mode, a name and an address no served listener has);
    /// it gets a free listener id, whose counters and round-robin cursors are zeroed; counter
    /// slots are claimed and its set is written; its program is attached to its interface
    /// unless a listener of that interface and mode has done so; and only then is it
    /// registered in `uf_listeners`/`uf_ports`, the step that makes the programs forward its
    /// datagrams, so a program never finds a listener without a set. Last it is published to
    /// [`snapshot`](Self::snapshot) and [`listener_names`](Self::listener_names).
    ///
    /// Why registration comes after attaching: it is the only step a packet can see, so every
    /// failure before it is undone by giving the id, the slots and the attachment back as they
    /// were. Only a failed registration itself may have been seen (the `uf_listeners` entry
    /// written, `uf_ports` not): its undo unregisters again, and the id and slots rest as after
    /// a removal.
    ///
    /// Limits (the kernel plane's map sizes, `fanout_config::kernel_limits`): 16 listeners,
    /// 256 downstreams per listener, 16 mirror targets, 4,096 downstreams in all; the error
    /// names the one reached. When every id is taken but one of a listener removed less than
    /// [`BANK_REUSE_DELAY`] ago, this waits for that id (see `ids`), so a full plane can
    /// re-create a listener. Like [`set_endpoints`](Self::set_endpoints), this holds only the
    /// writer lock while it waits and writes: scrapes carry on.
    ///
    /// The interface is looked up in the calling thread's network namespace: call this from
    /// the one the plane was started in.
    pub fn add_listener(&self, l: &ListenerConfig) -> Result<(), KernelError> {
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        lock(&self.counters).check_new(l)?;
        let id = w.ids.take().ok_or_else(|| {
            MapsError::TooLarge(format!(
                "the kernel plane serves at most {UF_MAX_LISTENERS} listeners"
            ))
        })?;
        let endpoints = l.endpoints();
        let (claim, attached) = match self.prepare(w, l, id, &endpoints) {
            Ok(p) => p,
            Err(e) => {
                // Never registered: no program can have used the id.
                w.ids.give_back(id);
                return Err(e);
            }
        };
        if let Err(e) = w.sets.add_listener(id, l.bind, l.distribution) {
            self.undo_registration(w, l, claim, attached);
            return Err(e.into());
        }
        lock(&self.counters).publish_new(l, claim, endpoints, w.links.list());
        tracing::info!(listener = %l.name, id, "kernel-plane listener added");
        Ok(())
    }

    /// The steps of [`add_listener`](Self::add_listener) before registration: listener `id`'s
    /// counters and cursors zeroed (no program uses the id), counter slots claimed, the set
    /// written, the program attached if needed. Returns the claim and whether it attached.
    /// On a failure it releases the claimed slots (no reachable bank names them) and leaves
    /// the id to the caller.
    fn prepare(
        &self,
        w: &mut Writer,
        l: &ListenerConfig,
        id: u32,
        endpoints: &[Endpoint],
    ) -> Result<(Claim, bool), KernelError> {
        let claim = {
            let mut c = lock(&self.counters);
            c.stats.reset_listener_counters(id)?;
            c.claim_slots(id, l.distribution, &BTreeMap::new(), endpoints)?
        };
        let done = w
            .sets
            .reset_cursor(id)
            .map_err(KernelError::from)
            .and_then(|()| write_claimed(&mut w.sets, &claim, endpoints))
            .and_then(|()| w.links.attach(&mut w.ebpf, &Target::of(l)));
        match done {
            Ok(attached) => Ok((claim, attached)),
            Err(e) => {
                lock(&self.counters).release(claim);
                Err(e)
            }
        }
    }

    /// Undoes [`prepare`](Self::prepare) after the registration failed part-way: the
    /// `uf_listeners` entry may be written while `uf_ports` is not, so a program may have found
    /// the listener. It is unregistered again (as far as the maps let us), the program
    /// detached if `prepare` attached it, and the id and slots rest as after a removal.
    fn undo_registration(&self, w: &mut Writer, l: &ListenerConfig, claim: Claim, attached: bool) {
        if let Err(e) = w.sets.remove_listener(l.bind) {
            tracing::error!(listener = %l.name, error = %e, "cannot unregister a listener whose registration failed");
        }
        if attached {
            let interface = l.interface.as_deref().unwrap_or_default();
            w.links.detach(&mut w.ebpf, interface, l.mode);
        }
        let now = Instant::now();
        w.ids.retire(claim.id, now);
        lock(&self.counters).retire_slots(&claim.fresh, now);
    }

    /// Stops serving listener `name`: it is unregistered from `uf_listeners`/`uf_ports` (from
    /// then on the programs pass its datagrams to the kernel's stack, to a userspace socket on
    /// its address if there is one), its id and counter slots rest before reuse, the program
    /// is detached from its interface if no other listener of that interface and mode is
    /// left, and it leaves [`snapshot`](Self::snapshot) and
    /// [`listener_names`](Self::listener_names). Its counts go with it: a listener added again
    /// under the name starts from zero.
    ///
    /// If unregistering fails, the registration is put back and nothing changes. A failed
    /// detach is only logged (see `attach`): the listener is gone all the same.
    pub fn remove_listener(&self, name: &str) -> Result<(), KernelError> {
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        let leaving = lock(&self.counters).leaving(name)?;
        if let Err(e) = w.sets.remove_listener(leaving.bind) {
            // The entry may be gone from uf_listeners while uf_ports still names it.
            if let Err(back) = w
                .sets
                .add_listener(leaving.id, leaving.bind, leaving.distribution)
            {
                tracing::error!(listener = name, error = %back, "cannot restore a listener whose removal failed");
            }
            return Err(e.into());
        }
        let now = Instant::now();
        w.ids.retire(leaving.id, now);
        if leaving.last_on_interface {
            w.links
                .detach(&mut w.ebpf, &leaving.interface, leaving.mode);
        }
        lock(&self.counters).unpublish(leaving.id, now, w.links.list());
        tracing::info!(
            listener = name,
            id = leaving.id,
            "kernel-plane listener removed"
        );
        Ok(())
    }

    /// Replaces a listener's downstream set, live: the programs switch banks atomically.
    ///
    /// Why a packet never sees a half-written set: the programs read `uf_active` once per
    /// packet and then only that bank; the new set goes into the other, idle bank, and
    /// `uf_active` is flipped to it (one 32-bit map write) only once the bank is complete. The
    /// bank the flip retires may still be read by packets that started before it, so it is
    /// rewritten no sooner than [`BANK_REUSE_DELAY`] later, orders of magnitude longer than a
    /// program run ([`SetMaps::write_set`] waits for it).
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
        let mut w = lock(&self.writer);
        replace_set(&mut w.sets, &self.counters, listener, endpoints)
    }

    /// The counters of every kernel-plane listener.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        let c = lock(&self.counters);
        c.listeners.iter().map(|l| c.snapshot(l)).collect()
    }
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
    let written = write_claimed(sets, &claim, &endpoints);
    let mut c = lock(counters);
    match written {
        Ok(()) => {
            c.publish(claim, endpoints);
            Ok(())
        }
        Err(e) => {
            c.release(claim);
            Err(e)
        }
    }
}

/// Writes `endpoints` as listener `claim.id`'s set, with the claimed slots (idle bank, flip).
fn write_claimed(
    sets: &mut SetMaps,
    claim: &Claim,
    endpoints: &[Endpoint],
) -> Result<(), KernelError> {
    let set = BackendSet::new(claim.distribution, endpoints.to_vec(), DEFAULT_TABLE_SIZE);
    Ok(sets.write_set(claim.id, &set, &claim.ids)?)
}

impl Counters {
    fn position(&self, name: &str) -> Result<usize, KernelError> {
        self.listeners
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| KernelError::UnknownListener(name.into()))
    }

    /// Refuses `l` unless the kernel plane can serve it beside the listeners it has: a kernel
    /// mode, a new name, and an address no listener here has (the programs find a listener by
    /// address, family and port, so two on one would shadow each other).
    fn check_new(&self, l: &ListenerConfig) -> Result<(), KernelError> {
        let refuse = |reason: String| {
            Err(KernelError::Refused {
                listener: l.name.clone(),
                reason,
            })
        };
        if l.mode == Mode::Userspace {
            return refuse("mode: userspace is not served by the kernel plane".into());
        }
        if self.listeners.iter().any(|k| k.name == l.name) {
            return refuse("the kernel plane serves a listener of that name already".into());
        }
        let key = socket_words(l.bind);
        if let Some(k) = self.listeners.iter().find(|k| socket_words(k.bind) == key) {
            return refuse(format!(
                "kernel-plane listener \"{}\" is on {} already",
                k.name, k.bind
            ));
        }
        Ok(())
    }

    /// The counter slots for `endpoints` as `name`'s new set: downstreams that stay keep
    /// theirs, new ones get free slots, zeroed here (no bank points at a free slot yet).
    fn claim(&mut self, name: &str, endpoints: &[Endpoint]) -> Result<Claim, KernelError> {
        let l = &self.listeners[self.position(name)?];
        let old: BTreeMap<SocketAddr, u32> = l
            .endpoints
            .iter()
            .map(|e| e.addr)
            .zip(l.stats_ids.iter().copied())
            .collect();
        let (id, distribution) = (l.id, l.distribution);
        self.claim_slots(id, distribution, &old, endpoints)
    }

    /// The slots for `endpoints` as listener `id`'s set, given its current slot per address
    /// (`old`): kept where listed, fresh for the rest (all of them for a new listener).
    fn claim_slots(
        &mut self,
        id: u32,
        distribution: Distribution,
        old: &BTreeMap<SocketAddr, u32>,
        endpoints: &[Endpoint],
    ) -> Result<Claim, KernelError> {
        let mut claim = Claim {
            id,
            distribution,
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
                        self.release(claim);
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

    /// Gives back the fresh slots of a claim no reachable bank names (its write failed, or
    /// its listener was never registered): free at once.
    fn release(&mut self, claim: Claim) {
        // Backwards: the free list is a stack, so it ends up as it was before the claim.
        self.free_stats.extend(claim.fresh.into_iter().rev());
    }

    /// Slots a program may still count into, given up at `now`: they rest first.
    fn retire_slots(&mut self, slots: &[u32], now: Instant) {
        self.resting.extend(slots.iter().map(|&id| (id, now)));
    }

    /// Makes `endpoints` (now active in the maps) the listener's set for scrapes and frees
    /// the slots of the downstreams that left.
    fn publish(&mut self, claim: Claim, endpoints: Vec<Endpoint>) {
        let Some(l) = self.listeners.iter_mut().find(|l| l.id == claim.id) else {
            return;
        };
        let now = Instant::now();
        let gone = l.stats_ids.iter().filter(|id| !claim.ids.contains(id));
        self.resting.extend(gone.map(|&id| (id, now)));
        l.endpoints = endpoints;
        l.stats_ids = claim.ids;
    }

    /// Lists the listener `l`, just registered with `claim`'s id and slots, for scrapes.
    fn publish_new(
        &mut self,
        l: &ListenerConfig,
        claim: Claim,
        endpoints: Vec<Endpoint>,
        attachments: Vec<Attachment>,
    ) {
        self.listeners.push(KListener {
            name: l.name.clone(),
            id: claim.id,
            bind: l.bind,
            mode: l.mode,
            interface: l.interface.clone().unwrap_or_default(),
            distribution: claim.distribution,
            endpoints,
            stats_ids: claim.ids,
        });
        self.attachments = attachments;
    }

    /// What removing `name` needs to know.
    fn leaving(&self, name: &str) -> Result<Leaving, KernelError> {
        let l = &self.listeners[self.position(name)?];
        let shared = self
            .listeners
            .iter()
            .any(|o| o.id != l.id && o.interface == l.interface && o.mode == l.mode);
        Ok(Leaving {
            id: l.id,
            bind: l.bind,
            distribution: l.distribution,
            interface: l.interface.clone(),
            mode: l.mode,
            last_on_interface: !shared,
        })
    }

    /// Unlists listener `id`, unregistered at `now`; its slots rest.
    fn unpublish(&mut self, id: u32, now: Instant, attachments: Vec<Attachment>) {
        if let Some(i) = self.listeners.iter().position(|l| l.id == id) {
            let l = self.listeners.remove(i);
            self.retire_slots(&l.stats_ids, now);
        }
        self.attachments = attachments;
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
        // Dropping the object (in `writer`) detaches every program (the links are ours alone).
        tracing::info!(
            attachments = lock(&self.counters).attachments.len(),
            "kernel plane detached"
        );
    }
}

#[cfg(test)]
mod tests;
