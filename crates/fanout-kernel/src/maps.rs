//! Typed access to the kernel plane's maps: writing listeners and downstream sets, reading
//! counters, managing the next-hop cache.
//!
//! A downstream set is replaced without the programs ever seeing half of it: each listener has
//! two banks, the new set is written completely into the idle one (downstreams, round-robin
//! cycle, Maglev table, header), and only then is `uf_active` flipped to it, one 32-bit write.
//! A packet that read the old bank number finishes on the old bank, which stays intact until the
//! next update; updates wait [`BANK_REUSE_DELAY`] after a flip before rewriting a bank, far longer
//! than any program run. [`KernelMaps::bank_reuse_wait`] tells a caller how long that wait is,
//! so it can wait without holding its own locks (see `plane.rs`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use fanout_core::select::{BackendSet, Distribution, Schedule};

use crate::bindings::*;

/// How long a bank that was just retired stays untouched.
pub const BANK_REUSE_DELAY: Duration = Duration::from_millis(20);

/// A map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The object has no map of that name (build mismatch).
    #[error("BPF object has no map {0}")]
    Missing(&'static str),
    /// A map call failed.
    #[error("map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// The error.
        source: MapError,
    },
    /// The set does not fit the kernel plane's fixed-size maps.
    #[error("{0}")]
    TooLarge(String),
}

fn err(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// Summed per-CPU counters of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Datagrams for the listener.
    pub rx_packets: u64,
    /// Their UDP payload bytes.
    pub rx_bytes: u64,
    /// Datagrams (copies) sent to downstreams, including those handed to kernel forwarding.
    pub fwd_packets: u64,
    /// Their payload bytes.
    pub fwd_bytes: u64,
    /// Of the forwarded, those handed to the kernel's forwarding (neighbour not resolved yet).
    pub passed: u64,
    /// Drops by reason (index = `fanout_core::DropReason::index`).
    pub drops: [u64; UF_DROP_MAX as usize],
}

/// The maps of one loaded object.
pub struct KernelMaps {
    listeners: HashMap<MapData, uf_listener_key, uf_listener>,
    ports: Array<MapData, uf_port>,
    active: Array<MapData, u32>,
    banks: Array<MapData, uf_bank>,
    backends: Array<MapData, uf_backend>,
    rr: Array<MapData, u32>,
    maglev: Array<MapData, u32>,
    listener_stats: PerCpuArray<MapData, uf_listener_stats>,
    endpoint_stats: PerCpuArray<MapData, uf_endpoint_stats>,
    nexthops: HashMap<MapData, uf_nexthop_key, uf_nexthop>,
    globals: Array<MapData, uf_globals>,
    /// When each listener's bank was last flipped.
    flipped: FlipTimes,
}

/// When each listener's `uf_active` was last flipped, and so how long until the bank that flip
/// retired may be rewritten.
#[derive(Debug, Clone, Default)]
struct FlipTimes([Option<Instant>; UF_MAX_LISTENERS as usize]);

impl FlipTimes {
    /// How long from `now` until listener `id`'s idle bank may be rewritten: zero when it was
    /// never flipped or [`BANK_REUSE_DELAY`] has passed since.
    fn reuse_wait(&self, id: u32, now: Instant) -> Duration {
        self.0[id as usize].map_or(Duration::ZERO, |t| {
            BANK_REUSE_DELAY.saturating_sub(now.saturating_duration_since(t))
        })
    }

    /// Listener `id` flipped at `now`.
    fn flipped(&mut self, id: u32, now: Instant) {
        self.0[id as usize] = Some(now);
    }
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

macro_rules! take {
    ($ebpf:expr, $name:literal) => {{
        let m = $ebpf.take_map($name).ok_or(MapsError::Missing($name))?;
        m.try_into().map_err(err($name))?
    }};
}

/// The key of a listener or next-hop address: network-order words, IPv4 in word 0.
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], 4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], 6)
        }
    }
}

/// The listener key for `addr`.
pub fn listener_key(addr: SocketAddr) -> uf_listener_key {
    let (w, family) = addr_words(addr.ip());
    uf_listener_key {
        addr: w,
        port: addr.port().to_be(),
        family,
        pad: 0,
    }
}

fn backend(addr: SocketAddr, stats_id: u32) -> uf_backend {
    let (w, family) = addr_words(addr.ip());
    uf_backend {
        addr: w,
        port: addr.port().to_be(),
        family,
        pad: 0,
        stats_id,
    }
}

fn dist_code(d: Distribution) -> u32 {
    match d {
        Distribution::RoundRobin => UF_DIST_ROUND_ROBIN,
        Distribution::ConsistentHash => UF_DIST_CONSISTENT_HASH,
        Distribution::Mirror => UF_DIST_MIRROR,
    }
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(KernelMaps {
            listeners: take!(ebpf, "uf_listeners"),
            ports: take!(ebpf, "uf_ports"),
            active: take!(ebpf, "uf_active"),
            banks: take!(ebpf, "uf_banks"),
            backends: take!(ebpf, "uf_backends"),
            rr: take!(ebpf, "uf_rr"),
            maglev: take!(ebpf, "uf_maglev"),
            listener_stats: take!(ebpf, "uf_listener_stats"),
            endpoint_stats: take!(ebpf, "uf_endpoint_stats"),
            nexthops: take!(ebpf, "uf_nexthops"),
            globals: take!(ebpf, "uf_globals"),
            flipped: FlipTimes::default(),
        })
    }

    /// Sets the global flags (`UF_G_*`), next-hop cache lifetime and mirror bypass mark.
    pub fn set_globals(
        &mut self,
        flags: u32,
        nexthop_ttl: Duration,
        bypass_mark: u32,
    ) -> Result<(), MapsError> {
        let g = uf_globals {
            flags,
            nexthop_ttl_ms: u32::try_from(nexthop_ttl.as_millis()).unwrap_or(u32::MAX),
            bypass_mark,
            pad: 0,
        };
        self.globals.set(0, g, 0).map_err(err("uf_globals"))
    }

    /// Registers listener `id` for datagrams to `addr` (an unspecified address matches any
    /// destination address with that port). Write its set first with [`write_set`]. Also
    /// rewrites the port's `uf_ports` entry, the programs' lookup fast path.
    ///
    /// [`write_set`]: Self::write_set
    pub fn add_listener(
        &mut self,
        id: u32,
        addr: SocketAddr,
        distribution: Distribution,
    ) -> Result<(), MapsError> {
        check_id(id)?;
        let v = uf_listener {
            id,
            distribution: dist_code(distribution),
        };
        let key = listener_key(addr);
        self.listeners
            .insert(key, v, 0)
            .map_err(err("uf_listeners"))?;
        self.sync_port(key.port, key.family)
    }

    /// Unregisters the listener on `addr` (and updates its port's `uf_ports` entry).
    pub fn remove_listener(&mut self, addr: SocketAddr) -> Result<(), MapsError> {
        let key = listener_key(addr);
        match self.listeners.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(err("uf_listeners")(e)),
        }
        self.sync_port(key.port, key.family)
    }

    /// Rewrites the `uf_ports` entry of (`port`, `family`) from `uf_listeners`: none, the one
    /// listener (so the programs need no hash lookup), or "several" (they look it up).
    fn sync_port(&mut self, port: u16, family: u8) -> Result<(), MapsError> {
        let same: Vec<(uf_listener_key, uf_listener)> = self
            .listeners
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.port == port && k.family == family)
            .collect();
        let mut entry = uf_port::default();
        match same.as_slice() {
            [] => entry.state = UF_PORT_NONE,
            [(k, v)] => {
                entry.state = UF_PORT_ONE;
                entry.addr = k.addr;
                entry.id = v.id;
                entry.distribution = v.distribution;
            }
            _ => entry.state = UF_PORT_MANY,
        }
        let index = u32::from(u16::from_be(port)) * 2 + u32::from(family == 6);
        self.ports.set(index, entry, 0).map_err(err("uf_ports"))
    }

    /// How long until listener `id`'s idle bank may be rewritten by [`write_set`]: zero unless
    /// its last flip was less than [`BANK_REUSE_DELAY`] ago. A caller that holds a lock other
    /// threads need can release it, wait this long, and call [`write_set`] after, which then
    /// does not sleep, provided nothing flipped the listener in between.
    ///
    /// [`write_set`]: Self::write_set
    pub fn bank_reuse_wait(&self, id: u32) -> Result<Duration, MapsError> {
        check_id(id)?;
        Ok(self.flipped.reuse_wait(id, Instant::now()))
    }

    /// Writes `set` as listener `id`'s downstreams (into the idle bank, then flips to it).
    /// `stats_ids[i]` is the counter slot of `set.endpoints()[i]`.
    ///
    /// Sleeps first if the idle bank was retired less than [`BANK_REUSE_DELAY`] ago (see
    /// [`bank_reuse_wait`](Self::bank_reuse_wait)): the rule that a bank is not rewritten while
    /// a packet may still be reading it is kept here, whatever the caller did.
    pub fn write_set(
        &mut self,
        id: u32,
        set: &BackendSet,
        stats_ids: &[u32],
    ) -> Result<(), MapsError> {
        check_id(id)?;
        check_fits(set)?;
        let wait = self.bank_reuse_wait(id)?;
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let current = self.active.get(&id, 0).map_err(err("uf_active"))?;
        let next = 1 - (current & 1);
        let bank_index = id * UF_BANKS + next;
        self.write_backends(bank_index, set, stats_ids)?;
        let mut header = self.write_choice(bank_index, set)?;
        if set.active().is_empty() {
            // Nothing takes traffic: every datagram is dropped with no_downstream.
            header.rr_len = 0;
            header.mirror_count = 0;
            header.count = 0;
        }
        // The header last: with it the bank is complete, and only then is it made active.
        self.banks
            .set(bank_index, header, 0)
            .map_err(err("uf_banks"))?;
        self.active.set(id, next, 0).map_err(err("uf_active"))?;
        self.flipped.flipped(id, Instant::now());
        Ok(())
    }

    /// The bank's downstream array: `set.endpoints()` in order, each with its counter slot.
    fn write_backends(
        &mut self,
        bank_index: u32,
        set: &BackendSet,
        stats_ids: &[u32],
    ) -> Result<(), MapsError> {
        for (i, e) in set.endpoints().iter().enumerate() {
            let sid = stats_ids.get(i).copied().unwrap_or(0);
            self.backends
                .set(
                    bank_index * UF_MAX_BACKENDS + i as u32,
                    backend(e.addr, sid),
                    0,
                )
                .map_err(err("uf_backends"))?;
        }
        Ok(())
    }

    /// What the programs choose with, by distribution: the round-robin cycle or the Maglev
    /// table written into the bank's slice of `uf_rr` / `uf_maglev`, or the mirror targets in
    /// the header. Returns the bank's header, not written yet.
    fn write_choice(&mut self, bank_index: u32, set: &BackendSet) -> Result<uf_bank, MapsError> {
        let mut header = uf_bank {
            count: set.endpoints().len() as u32,
            ..Default::default()
        };
        match set.distribution() {
            Distribution::RoundRobin => {
                let sched = Schedule::bounded(&rr_weights(set), UF_RR_SLOTS as usize);
                for (k, &slot) in sched.slots().iter().enumerate() {
                    self.rr
                        .set(bank_index * UF_RR_SLOTS + k as u32, slot, 0)
                        .map_err(err("uf_rr"))?;
                }
                header.rr_len = sched.len() as u32;
            }
            Distribution::ConsistentHash => {
                if let Some(m) = set.maglev() {
                    for (k, &slot) in m.table().iter().enumerate() {
                        self.maglev
                            .set(bank_index * UF_MAGLEV_SIZE + k as u32, slot, 0)
                            .map_err(err("uf_maglev"))?;
                    }
                }
            }
            Distribution::Mirror => {
                for (k, &slot) in set.active().iter().enumerate() {
                    header.mirror[k] = slot as u16;
                }
                header.mirror_count = set.active().len() as u32;
            }
        }
        Ok(header)
    }

    /// Listener `id`'s counters summed over CPUs.
    pub fn listener_counters(&self, id: u32) -> Result<ListenerCounters, MapsError> {
        let per_cpu = self
            .listener_stats
            .get(&id, 0)
            .map_err(err("uf_listener_stats"))?;
        let mut c = ListenerCounters::default();
        for s in per_cpu.iter() {
            c.rx_packets += s.rx_packets;
            c.rx_bytes += s.rx_bytes;
            c.fwd_packets += s.fwd_packets;
            c.fwd_bytes += s.fwd_bytes;
            c.passed += s.passed;
            for (d, x) in c.drops.iter_mut().zip(s.drops.iter()) {
                *d += x;
            }
        }
        Ok(c)
    }

    /// (packets, bytes) sent to the downstream with counter slot `stats_id`.
    pub fn endpoint_counters(&self, stats_id: u32) -> Result<(u64, u64), MapsError> {
        let per_cpu = self
            .endpoint_stats
            .get(&stats_id, 0)
            .map_err(err("uf_endpoint_stats"))?;
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes)))
    }

    /// Zeroes a counter slot before it is given to a new downstream.
    pub fn reset_endpoint_counters(&mut self, stats_id: u32) -> Result<(), MapsError> {
        let n = aya::util::nr_cpus()
            .map_err(|(_, e)| err("uf_endpoint_stats")(MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![uf_endpoint_stats::default(); n])
            .map_err(|e| err("uf_endpoint_stats")(MapError::IoError(e)))?;
        self.endpoint_stats
            .set(stats_id, zeros, 0)
            .map_err(err("uf_endpoint_stats"))
    }

    /// Forgets every cached next hop (routes or neighbours changed).
    pub fn clear_nexthops(&mut self) -> Result<usize, MapsError> {
        let keys: Vec<uf_nexthop_key> = self.nexthops.keys().filter_map(Result::ok).collect();
        for k in &keys {
            match self.nexthops.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(err("uf_nexthops")(e)),
            }
        }
        Ok(keys.len())
    }

    /// Entries in the next-hop cache.
    pub fn nexthops(&self) -> Vec<(uf_nexthop_key, uf_nexthop)> {
        self.nexthops.iter().filter_map(Result::ok).collect()
    }

    /// Puts a next hop into the cache (tests and benchmarks).
    pub fn insert_nexthop(&mut self, dst: IpAddr, hop: uf_nexthop) -> Result<(), MapsError> {
        let (addr, family) = addr_words(dst);
        let key = uf_nexthop_key {
            addr,
            family: u32::from(family),
        };
        self.nexthops
            .insert(key, hop, 0)
            .map_err(err("uf_nexthops"))
    }
}

/// The round-robin weights of `set`'s downstreams: their own for those taking new flows, 0 for
/// the others (so they keep their index but get no slot).
fn rr_weights(set: &BackendSet) -> Vec<u32> {
    set.endpoints()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if set.active().contains(&(i as u32)) {
                e.weight
            } else {
                0
            }
        })
        .collect()
}

/// Refuses a set larger than the kernel plane's fixed-size maps hold.
fn check_fits(set: &BackendSet) -> Result<(), MapsError> {
    let eps = set.endpoints();
    if eps.len() > UF_MAX_BACKENDS as usize {
        return Err(MapsError::TooLarge(format!(
            "{} downstreams; the kernel plane takes at most {UF_MAX_BACKENDS} per listener",
            eps.len()
        )));
    }
    if set.distribution() == Distribution::Mirror && set.active().len() > UF_MAX_MIRROR as usize {
        return Err(MapsError::TooLarge(format!(
            "{} mirror targets; the kernel plane copies to at most {UF_MAX_MIRROR}",
            set.active().len()
        )));
    }
    Ok(())
}

fn check_id(id: u32) -> Result<(), MapsError> {
    if id >= UF_MAX_LISTENERS {
        Err(MapsError::TooLarge(format!(
            "the kernel plane serves at most {UF_MAX_LISTENERS} listeners"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_match_the_userspace_indices() {
        use fanout_core::DropReason as R;
        assert_eq!(UF_DROP_MAX as usize, R::COUNT);
        for (c, r) in [
            (UF_DROP_NO_DOWNSTREAM, R::NoDownstream),
            (UF_DROP_SEND_ERROR, R::SendError),
            (UF_DROP_BUFFER_FULL, R::BufferFull),
            (UF_DROP_TRUNCATED, R::Truncated),
            (UF_DROP_MALFORMED, R::Malformed),
            (UF_DROP_UNKNOWN_SOURCE, R::UnknownSource),
            (UF_DROP_NO_SESSION, R::NoSession),
            (UF_DROP_TOO_LARGE, R::TooLarge),
            (UF_DROP_SHADOW_REPLY, R::ShadowReply),
            (UF_DROP_NO_UPSTREAM_PORT, R::NoUpstreamPort),
        ] {
            assert_eq!(c as usize, r.index(), "{r}");
        }
    }

    #[test]
    fn a_bank_never_flipped_may_be_written_at_once() {
        let f = FlipTimes::default();
        assert_eq!(f.reuse_wait(0, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_retired_bank_rests_for_the_reuse_delay() {
        let mut f = FlipTimes::default();
        let t0 = Instant::now();
        f.flipped(3, t0);
        assert_eq!(f.reuse_wait(3, t0), BANK_REUSE_DELAY);
        let later = t0 + BANK_REUSE_DELAY / 4;
        assert_eq!(
            f.reuse_wait(3, later),
            BANK_REUSE_DELAY - BANK_REUSE_DELAY / 4
        );
        assert_eq!(f.reuse_wait(3, t0 + BANK_REUSE_DELAY), Duration::ZERO);
        assert_eq!(f.reuse_wait(3, t0 + 2 * BANK_REUSE_DELAY), Duration::ZERO);
        // Other listeners have their own banks.
        assert_eq!(f.reuse_wait(2, t0), Duration::ZERO);
        // A clock read before the flip (another thread's) waits the whole delay, no more.
        assert_eq!(
            f.reuse_wait(3, t0 - Duration::from_millis(1)),
            BANK_REUSE_DELAY
        );
    }

    #[test]
    fn maglev_size_matches_the_userspace_plane() {
        assert_eq!(UF_MAGLEV_SIZE, fanout_core::select::DEFAULT_TABLE_SIZE);
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        // Sizes are the sums of their fields: a hole would differ between compilers.
        assert_eq!(std::mem::size_of::<uf_listener_key>(), 16 + 2 + 1 + 1);
        assert_eq!(std::mem::size_of::<uf_listener>(), 8);
        assert_eq!(std::mem::size_of::<uf_port>(), 32);
        assert_eq!(
            std::mem::size_of::<uf_bank>(),
            16 + 2 * UF_MAX_MIRROR as usize
        );
        assert_eq!(std::mem::size_of::<uf_backend>(), 16 + 2 + 1 + 1 + 4);
        assert_eq!(
            std::mem::size_of::<uf_listener_stats>(),
            8 * (5 + UF_DROP_MAX as usize)
        );
        assert_eq!(std::mem::size_of::<uf_nexthop>(), 4 + 6 + 6 + 8);
        assert_eq!(std::mem::offset_of!(uf_nexthop, expires_ns), 16);
        assert_eq!(std::mem::size_of::<uf_globals>(), 16);
    }

    #[test]
    fn keys_are_in_network_order() {
        let k = listener_key("10.1.2.3:5514".parse().unwrap());
        assert_eq!(k.addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(k.port.to_ne_bytes(), [0x15, 0x8a]);
        assert_eq!(k.family, 4);
        let k = listener_key("[2001:db8::1]:53".parse().unwrap());
        assert_eq!(k.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(k.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(k.family, 6);
    }
}
