//! The checker's state behind one lock: listeners and their targets, the probes in flight,
//! the timers, and the sockets. The timer task ([`Engine::run_due`]) and the socket readers
//! (`on_*` methods) are its only drivers, each holding the lock for one short, non-blocking
//! step (a `sendto` on a non-blocking socket at most), so nothing here awaits.
//!
//! A probe in flight is keyed by what its answer will carry ([`ProbeKey`]): for UDP the pool
//! socket and the probed address (a reply's source, an error's original destination), for
//! ICMP the address and the sequence number. An answer with no probe under its key (late,
//! after its timeout, or not ours) is ignored.
//!
//! Probes keep their rate even when `timeout` exceeds `interval`, so a target may have
//! several in flight and detection stays within `fall × interval + timeout`. An ICMP answer
//! names its probe (sequence number); a UDP one cannot (the payload is the operator's), so
//! it answers the target's oldest probe in flight, which is right for the question asked
//! (does it answer?). At most [`MAX_IN_FLIGHT`] per target, a bound on memory for absurd
//! ratios; a probe due beyond it is skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use fanout_config::{HealthConfig, HealthProtocol};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use super::icmp::{IcmpKind, IcmpProbes};
use super::schedule::{MIN_PERIOD, Schedule, Timer, next_due, phase};
use super::state::Tracker;
use super::sys::{ip_key, match_key, unmapped};
use super::udp::UdpProbes;
use super::{Health, HealthEvent, ProbeCounts};

/// Probes one target may have in flight (see the module docs).
const MAX_IN_FLIGHT: usize = 16;

/// What the checker's tasks share.
#[derive(Debug)]
pub struct Shared {
    engine: Mutex<Engine>,
    /// Rings the timer task when new targets may be due earlier than it planned.
    pub wake: Notify,
}

impl Shared {
    /// A checker with no targets, spawning its socket readers on `rt`.
    pub fn new(rt: Handle, events: UnboundedSender<HealthEvent>) -> Arc<Shared> {
        Arc::new_cyclic(|me| Shared {
            engine: Mutex::new(Engine::new(Spawner { rt, me: me.clone() }, events)),
            wake: Notify::new(),
        })
    }

    /// The engine. A panic while it was held leaves it usable (every step keeps it
    /// consistent), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Spawns socket readers; they hold the checker weakly, so dropping it ends them.
#[derive(Clone)]
pub struct Spawner {
    rt: Handle,
    me: Weak<Shared>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

impl Spawner {
    /// Spawns `f(checker)` on the checker's runtime.
    pub fn spawn<F>(&self, f: impl FnOnce(Weak<Shared>) -> F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.me.clone())).abort_handle()
    }

    /// Enters the runtime (registering a socket with its reactor needs it).
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.rt.enter()
    }
}

/// What an answer to a probe in flight will carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ProbeKey {
    Udp { slot: usize, dest: SocketAddr },
    Icmp { dest: IpAddr, seq: u16 },
}

#[derive(Debug)]
struct Target {
    listener: Arc<str>,
    addr: SocketAddr,
    spec: Arc<HealthConfig>,
    /// Bumped when its schedule changes: older probe timers are skipped.
    generation: u64,
    tracker: Tracker,
    counts: ProbeCounts,
    /// The probes in flight, oldest first: token (matches the deadline timer) and key.
    inflight: VecDeque<(u64, ProbeKey)>,
    /// UDP: the probed address and the pool slot it goes out of.
    udp: Option<(SocketAddr, usize)>,
}

#[derive(Debug)]
struct Listener {
    spec: Arc<HealthConfig>,
    targets: HashMap<SocketAddr, u64>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Engine {
    events: UnboundedSender<HealthEvent>,
    listeners: HashMap<Arc<str>, Listener>,
    targets: HashMap<u64, Target>,
    /// Which target each key of a probe in flight belongs to.
    inflight: HashMap<ProbeKey, u64>,
    schedule: Schedule,
    udp: UdpProbes,
    icmp: IcmpProbes,
    next_id: u64,
    next_token: u64,
}

impl Engine {
    fn new(spawner: Spawner, events: UnboundedSender<HealthEvent>) -> Engine {
        Engine {
            events,
            listeners: HashMap::new(),
            targets: HashMap::new(),
            inflight: HashMap::new(),
            schedule: Schedule::default(),
            udp: UdpProbes::new(spawner.clone()),
            icmp: IcmpProbes::new(spawner),
            next_id: 0,
            next_token: 0,
        }
    }

    /// Replaces `listener`'s targets (see [`super::HealthChecker::set_targets`]).
    pub fn set_targets(
        &mut self,
        listener: &str,
        cfg: Option<HealthConfig>,
        addrs: Vec<SocketAddr>,
        now: Instant,
    ) {
        let Some(cfg) = cfg else {
            self.remove_listener(listener);
            return;
        };
        let (name, mut entry) = match self.listeners.remove_entry(listener) {
            Some(e) => e,
            None => {
                let entry = Listener {
                    spec: Arc::new(cfg.clone()),
                    targets: HashMap::new(),
                };
                (Arc::from(listener), entry)
            }
        };
        if *entry.spec != cfg {
            entry.spec = Arc::new(cfg);
        }
        let wanted: HashSet<SocketAddr> = addrs.into_iter().collect();
        let mut gone = Vec::new();
        entry.targets.retain(|addr, id| {
            let keep = wanted.contains(addr);
            if !keep {
                gone.push(*id);
            }
            keep
        });
        for id in gone {
            self.remove_target(id);
        }
        for addr in wanted {
            match entry.targets.get(&addr) {
                Some(&id) => self.configure(id, &entry.spec, now, false),
                None => {
                    let id = self.add_target(&name, addr, &entry.spec, now);
                    entry.targets.insert(addr, id);
                }
            }
        }
        self.listeners.insert(name, entry);
    }

    fn remove_listener(&mut self, listener: &str) {
        if let Some(entry) = self.listeners.remove(listener) {
            for id in entry.targets.into_values() {
                self.remove_target(id);
            }
        }
    }

    fn add_target(
        &mut self,
        listener: &Arc<str>,
        addr: SocketAddr,
        spec: &Arc<HealthConfig>,
        now: Instant,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let target = Target {
            listener: Arc::clone(listener),
            addr,
            spec: Arc::clone(spec),
            generation: 0,
            tracker: Tracker::new(),
            counts: ProbeCounts::default(),
            inflight: VecDeque::new(),
            udp: None,
        };
        self.targets.insert(id, target);
        self.configure(id, spec, now, true);
        id
    }

    /// Gives target `id` the listener's `spec`: its UDP slot, and its schedule when new or
    /// when the interval changed. Health and counts are kept; a probe in flight of a kind
    /// or address that changed is dropped (its answer could no longer be matched).
    fn configure(&mut self, id: u64, spec: &Arc<HealthConfig>, now: Instant, fresh: bool) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        if !fresh && Arc::ptr_eq(&t.spec, spec) {
            return;
        }
        let dest = (spec.protocol == HealthProtocol::Udp).then(|| {
            unmapped(SocketAddr::new(
                t.addr.ip(),
                spec.port.unwrap_or(t.addr.port()),
            ))
        });
        let dest_changed = t.udp.map(|(d, _)| d) != dest;
        let probe_changed = t.spec.protocol != spec.protocol || t.spec.send != spec.send;
        if !fresh && (probe_changed || dest_changed) {
            for (_, key) in t.inflight.drain(..) {
                self.inflight.remove(&key);
            }
        }
        if dest_changed {
            if let Some((old, slot)) = t.udp.take() {
                self.udp.release(old, slot);
            }
            t.udp = dest.map(|d| (d, self.udp.assign(d)));
        }
        if fresh || t.spec.interval != spec.interval {
            t.generation += 1;
            let interval = spec.interval.max(MIN_PERIOD);
            let first = now + phase(&t.listener, t.addr, interval);
            let generation = t.generation;
            self.schedule.push(first, Timer::Probe { id, generation });
        }
        t.spec = Arc::clone(spec);
    }

    /// Forgets target `id`: its timers become stale, its answers unmatched.
    fn remove_target(&mut self, id: u64) {
        let Some(t) = self.targets.remove(&id) else {
            return;
        };
        for (_, key) in t.inflight {
            self.inflight.remove(&key);
        }
        if let Some((dest, slot)) = t.udp {
            self.udp.release(dest, slot);
        }
    }

    /// Fires every timer due by `now`: sends due probes, fails timed-out ones. Returns when
    /// the next timer is due.
    pub fn run_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, timer)) = self.schedule.pop_due(now) {
            match timer {
                Timer::Probe { id, generation } => self.probe_due(id, generation, at, now),
                Timer::Deadline { id, token } => self.resolve(id, |(t, _)| *t == token, false),
            }
        }
        self.schedule.next()
    }

    fn probe_due(&mut self, id: u64, generation: u64, at: Instant, now: Instant) {
        let Some(t) = self.targets.get(&id) else {
            return;
        };
        if t.generation != generation {
            return;
        }
        let interval = t.spec.interval.max(MIN_PERIOD);
        let busy = t.inflight.len() >= MAX_IN_FLIGHT;
        self.schedule
            .push(next_due(at, interval, now), Timer::Probe { id, generation });
        if !busy {
            self.send_probe(id, now);
        }
    }

    fn send_probe(&mut self, id: u64, now: Instant) {
        let Some(t) = self.targets.get(&id) else {
            return;
        };
        let (spec, addr, udp) = (Arc::clone(&t.spec), t.addr, t.udp);
        let (sent, key) = match (spec.protocol, udp) {
            (HealthProtocol::Udp, Some((dest, slot))) => (
                self.udp.send(slot, dest, &spec.send),
                ProbeKey::Udp {
                    slot,
                    dest: match_key(dest),
                },
            ),
            (HealthProtocol::Udp, None) => return,
            (HealthProtocol::Icmp, _) => {
                let ip = unmapped(addr).ip();
                let seq = self.free_seq(ip);
                (
                    self.icmp.send(ip, seq),
                    ProbeKey::Icmp {
                        dest: ip_key(ip),
                        seq,
                    },
                )
            }
        };
        match sent {
            Ok(()) => {
                let token = self.next_token;
                self.next_token += 1;
                if let Some(t) = self.targets.get_mut(&id) {
                    t.inflight.push_back((token, key));
                }
                self.inflight.insert(key, id);
                let deadline = now + spec.timeout.max(MIN_PERIOD);
                self.schedule.push(deadline, Timer::Deadline { id, token });
            }
            Err(e) => {
                tracing::debug!("health probe {key:?} not sent: {e}");
                self.record(id, false);
            }
        }
    }

    /// A sequence number for an ICMP probe to `ip` that no probe in flight uses.
    fn free_seq(&mut self, ip: IpAddr) -> u16 {
        let dest = ip_key(ip);
        let mut seq = self.icmp.next_seq(ip.is_ipv6());
        // Probes in flight are few next to 65,536 numbers: a free one is near.
        for _ in 0..u16::MAX {
            if !self.inflight.contains_key(&ProbeKey::Icmp { dest, seq }) {
                break;
            }
            seq = self.icmp.next_seq(ip.is_ipv6());
        }
        seq
    }

    /// Ends target `id`'s oldest probe in flight that `which` picks with `success`; nothing
    /// if none (it was answered or timed out already).
    fn resolve(&mut self, id: u64, which: impl Fn(&(u64, ProbeKey)) -> bool, success: bool) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        let Some(i) = t.inflight.iter().position(which) else {
            return;
        };
        let Some((_, key)) = t.inflight.remove(i) else {
            return;
        };
        // A UDP key is shared by the target's probes in flight: keep it while one is left.
        if !t.inflight.iter().any(|(_, k)| *k == key) {
            self.inflight.remove(&key);
        }
        self.record(id, success);
    }

    /// Counts one result of target `id` and reports a transition.
    fn record(&mut self, id: u64, success: bool) {
        let Some(t) = self.targets.get_mut(&id) else {
            return;
        };
        if success {
            t.counts.success += 1;
        } else {
            t.counts.failure += 1;
        }
        let Some(health) = t.tracker.record(success, t.spec.rise, t.spec.fall) else {
            return;
        };
        // The daemon's event loop logs what matters to operators (at info, first healthy
        // verdicts at debug); here only the probe-level trace.
        tracing::debug!(
            listener = &*t.listener,
            endpoint = %t.addr,
            "downstream is now {}",
            health.as_str()
        );
        let event = HealthEvent {
            listener: t.listener.to_string(),
            addr: t.addr,
            health,
        };
        // The receiver gone means nobody listens any more; probing on is harmless.
        let _ = self.events.send(event);
    }

    /// An answer carrying `key`: ends the oldest probe in flight under it, a success if
    /// `success` says so of its target's config.
    fn answer(&mut self, key: ProbeKey, success: impl FnOnce(&HealthConfig) -> bool) {
        let Some(&id) = self.inflight.get(&key) else {
            return;
        };
        let ok = self.targets.get(&id).is_some_and(|t| success(&t.spec));
        self.resolve(id, |(_, k)| *k == key, ok);
    }

    /// A datagram from `from` on UDP pool socket `slot`.
    pub fn on_udp_reply(&mut self, slot: usize, from: SocketAddr, data: &[u8]) {
        let key = ProbeKey::Udp {
            slot,
            dest: match_key(from),
        };
        self.answer(key, |spec| {
            spec.expect.as_deref().is_none_or(|e| data.starts_with(e))
        });
    }

    /// An ICMP error about a datagram socket `slot` sent to `dest`.
    pub fn on_udp_error(&mut self, slot: usize, dest: SocketAddr, errno: i32) {
        tracing::trace!("health probe to {dest} failed: errno {errno}");
        self.answer(
            ProbeKey::Udp {
                slot,
                dest: match_key(dest),
            },
            |_| false,
        );
    }

    /// An echo reply `seq` from `src`.
    pub fn on_icmp_reply(&mut self, src: IpAddr, seq: u16) {
        self.answer(
            ProbeKey::Icmp {
                dest: ip_key(src),
                seq,
            },
            |_| true,
        );
    }

    /// An ICMP error about echo request `seq` to `dest`.
    pub fn on_icmp_error(&mut self, dest: IpAddr, seq: u16, errno: i32) {
        tracing::trace!("ICMP health probe to {dest} failed: errno {errno}");
        self.answer(
            ProbeKey::Icmp {
                dest: ip_key(dest),
                seq,
            },
            |_| false,
        );
    }

    /// The health of `listener`'s target `addr`; `Unknown` if it has none.
    pub fn health(&self, listener: &str, addr: SocketAddr) -> Health {
        self.listeners
            .get(listener)
            .and_then(|l| l.targets.get(&addr))
            .and_then(|id| self.targets.get(id))
            .map_or(Health::Unknown, |t| t.tracker.health())
    }

    /// Probe results per target, sorted by listener and address.
    pub fn counts(&self) -> Vec<((String, SocketAddr), ProbeCounts)> {
        let mut v: Vec<_> = self
            .targets
            .values()
            .map(|t| ((t.listener.to_string(), t.addr), t.counts))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The ICMP socket kind of a family, once one is open.
    pub fn icmp_kind(&self, v6: bool) -> Option<IcmpKind> {
        self.icmp.kind(v6)
    }

    /// UDP sockets open.
    pub fn udp_sockets(&self) -> usize {
        self.udp.sockets()
    }
}
