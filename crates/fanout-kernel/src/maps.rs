//! Typed access to the kernel plane's maps: writing listeners and downstream sets, reading
//! counters, managing the next-hop cache.
//!
//! The maps come in three groups, by who uses them in a running plane (`plane.rs`), so that
//! each can sit behind its own lock and no user waits for another's work:
//!
//! - [`SetMaps`]: listeners, ports, globals and the double-banked downstream sets, written by
//!   updates (a set replaced, a listener added or removed). Replacing a set is atomic for the
//!   programs (idle bank written in full, then one flip; see [`SetMaps`] for why), and a Maglev
//!   table is 65,537 writes.
//! - [`StatsMaps`]: the per-CPU counters, read by every scrape; zeroed per downstream slot and
//!   per listener id before reuse.
//! - [`NexthopCache`]: the next-hop cache, cleared by the route watcher.
//!
//! [`KernelMaps`] holds all three for code that drives the maps from one thread (the tests and
//! benchmarks), with the methods of each.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use fanout_core::select::{BackendSet, Distribution};

use crate::bindings::*;

macro_rules! take {
    ($ebpf:expr, $name:literal) => {{
        let m = $ebpf.take_map($name).ok_or(MapsError::Missing($name))?;
        m.try_into().map_err(err($name))?
    }};
}

mod sets;

pub use sets::{BANK_REUSE_DELAY, SetMaps};

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

/// The maps of one loaded object, in their three groups.
#[derive(Debug)]
pub struct KernelMaps {
    /// Listeners and downstream sets.
    pub sets: SetMaps,
    /// Counters.
    pub stats: StatsMaps,
    /// Cached next hops.
    pub nexthop_cache: NexthopCache,
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

/// A socket address as the programs' structs spell it (`uf_listener_key`, `uf_backend`): the
/// [`addr_words`], the port in network order, and the family (4 or 6).
pub(crate) fn socket_words(addr: SocketAddr) -> ([u32; 4], u16, u8) {
    let (words, family) = addr_words(addr.ip());
    (words, addr.port().to_be(), family)
}

/// The listener key for `addr`.
pub fn listener_key(addr: SocketAddr) -> uf_listener_key {
    let (addr, port, family) = socket_words(addr);
    uf_listener_key {
        addr,
        port,
        family,
        pad: 0,
    }
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(KernelMaps {
            sets: SetMaps::take(ebpf)?,
            stats: StatsMaps {
                listener_stats: take!(ebpf, "uf_listener_stats"),
                endpoint_stats: take!(ebpf, "uf_endpoint_stats"),
            },
            nexthop_cache: NexthopCache {
                nexthops: take!(ebpf, "uf_nexthops"),
            },
        })
    }

    /// [`SetMaps::set_globals`].
    pub fn set_globals(&mut self, flags: u32, ttl: Duration, mark: u32) -> Result<(), MapsError> {
        self.sets.set_globals(flags, ttl, mark)
    }

    /// [`SetMaps::add_listener`].
    pub fn add_listener(
        &mut self,
        id: u32,
        addr: SocketAddr,
        distribution: Distribution,
    ) -> Result<(), MapsError> {
        self.sets.add_listener(id, addr, distribution)
    }

    /// [`SetMaps::remove_listener`].
    pub fn remove_listener(&mut self, addr: SocketAddr) -> Result<(), MapsError> {
        self.sets.remove_listener(addr)
    }

    /// [`SetMaps::bank_reuse_wait`].
    pub fn bank_reuse_wait(&self, id: u32) -> Result<Duration, MapsError> {
        self.sets.bank_reuse_wait(id)
    }

    /// [`SetMaps::write_set`].
    pub fn write_set(&mut self, id: u32, set: &BackendSet, ids: &[u32]) -> Result<(), MapsError> {
        self.sets.write_set(id, set, ids)
    }

    /// [`StatsMaps::listener_counters`].
    pub fn listener_counters(&self, id: u32) -> Result<ListenerCounters, MapsError> {
        self.stats.listener_counters(id)
    }

    /// [`StatsMaps::endpoint_counters`].
    pub fn endpoint_counters(&self, stats_id: u32) -> Result<(u64, u64), MapsError> {
        self.stats.endpoint_counters(stats_id)
    }

    /// [`StatsMaps::reset_endpoint_counters`].
    pub fn reset_endpoint_counters(&mut self, stats_id: u32) -> Result<(), MapsError> {
        self.stats.reset_endpoint_counters(stats_id)
    }

    /// [`StatsMaps::reset_listener_counters`].
    pub fn reset_listener_counters(&mut self, id: u32) -> Result<(), MapsError> {
        self.stats.reset_listener_counters(id)
    }

    /// [`SetMaps::reset_cursor`].
    pub fn reset_cursor(&mut self, id: u32) -> Result<(), MapsError> {
        self.sets.reset_cursor(id)
    }

    /// [`NexthopCache::clear_nexthops`].
    pub fn clear_nexthops(&mut self) -> Result<usize, MapsError> {
        self.nexthop_cache.clear_nexthops()
    }

    /// [`NexthopCache::nexthops`].
    pub fn nexthops(&self) -> Vec<(uf_nexthop_key, uf_nexthop)> {
        self.nexthop_cache.nexthops()
    }

    /// [`NexthopCache::insert_nexthop`].
    pub fn insert_nexthop(&mut self, dst: IpAddr, hop: uf_nexthop) -> Result<(), MapsError> {
        self.nexthop_cache.insert_nexthop(dst, hop)
    }
}

/// The per-CPU counters: `uf_listener_stats` by listener id, `uf_endpoint_stats` by counter
/// slot. The programs add to them; userspace reads them and zeroes a slot before reusing it.
pub struct StatsMaps {
    listener_stats: PerCpuArray<MapData, uf_listener_stats>,
    endpoint_stats: PerCpuArray<MapData, uf_endpoint_stats>,
}

impl std::fmt::Debug for StatsMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsMaps").finish_non_exhaustive()
    }
}

impl StatsMaps {
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
        let zeros = per_cpu_zeros("uf_endpoint_stats")?;
        self.endpoint_stats
            .set(stats_id, zeros, 0)
            .map_err(err("uf_endpoint_stats"))
    }

    /// Zeroes listener `id`'s counters before the id is given to a new listener, so that it
    /// does not start with its predecessor's counts.
    pub fn reset_listener_counters(&mut self, id: u32) -> Result<(), MapsError> {
        let zeros = per_cpu_zeros("uf_listener_stats")?;
        self.listener_stats
            .set(id, zeros, 0)
            .map_err(err("uf_listener_stats"))
    }
}

/// A default (all-zero) value for every possible CPU, to overwrite one entry of per-CPU `map`.
pub(crate) fn per_cpu_zeros<T: aya::Pod + Default>(
    map: &'static str,
) -> Result<PerCpuValues<T>, MapsError> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| err(map)(MapError::IoError(e)))?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(|e| err(map)(MapError::IoError(e)))
}

/// The programs' next-hop cache (`uf_nexthops`), which userspace only inspects and clears.
pub struct NexthopCache {
    nexthops: HashMap<MapData, uf_nexthop_key, uf_nexthop>,
}

impl std::fmt::Debug for NexthopCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexthopCache").finish_non_exhaustive()
    }
}

impl NexthopCache {
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
