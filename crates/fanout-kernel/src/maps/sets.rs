//! The maps an update writes: listeners, ports, globals, the double-banked downstream sets and
//! the round-robin cursors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use fanout_core::select::{BackendSet, Distribution, Schedule};

use super::{MapsError, err, listener_key, per_cpu_zeros, socket_words};
use crate::bindings::*;

/// How long a bank that was just retired stays untouched.
pub const BANK_REUSE_DELAY: Duration = Duration::from_millis(20);

/// The maps that define listeners and their downstream sets: `uf_listeners`, `uf_ports`,
/// `uf_globals`, and per listener two banks (`uf_banks` headers, `uf_backends`, `uf_rr`,
/// `uf_maglev` slices) of which `uf_active` names the one the programs use, and the
/// listener's round-robin cursors (`uf_rr_cursor`, which the programs advance).
///
/// Why the programs never see half a set: they read `uf_active` once per packet and then only
/// that bank. [`write_set`](Self::write_set) writes the idle bank completely (downstreams,
/// round-robin cycle or Maglev table, header last) and only then flips `uf_active` to it, one
/// 32-bit write. A packet that read the old bank number finishes on the old bank, which stays
/// intact: it is rewritten no sooner than [`BANK_REUSE_DELAY`] after the flip that retired it,
/// far longer than any program run.
///
/// These maps are apart from the counters ([`StatsMaps`](super::StatsMaps)) so that their owner
/// can hold them through a whole update (tens of milliseconds for a Maglev table, one syscall
/// per entry) without holding up anyone who only reads counters.
pub struct SetMaps {
    listeners: HashMap<MapData, uf_listener_key, uf_listener>,
    ports: Array<MapData, uf_port>,
    globals: Array<MapData, uf_globals>,
    active: Array<MapData, u32>,
    banks: Array<MapData, uf_bank>,
    backends: Array<MapData, uf_backend>,
    rr: Array<MapData, u32>,
    maglev: Array<MapData, u32>,
    rr_cursor: PerCpuArray<MapData, u32>,
    /// When each listener's bank was last flipped. Kept with the maps it describes: whoever
    /// may flip (holds `&mut self`) is the one who knows when the last flip was.
    flipped: FlipTimes,
}

impl std::fmt::Debug for SetMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetMaps").finish_non_exhaustive()
    }
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

fn backend(addr: SocketAddr, stats_id: u32) -> uf_backend {
    let (addr, port, family) = socket_words(addr);
    uf_backend {
        addr,
        port,
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

impl SetMaps {
    /// Takes these maps out of a loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(SetMaps {
            listeners: take!(ebpf, "uf_listeners"),
            ports: take!(ebpf, "uf_ports"),
            globals: take!(ebpf, "uf_globals"),
            active: take!(ebpf, "uf_active"),
            banks: take!(ebpf, "uf_banks"),
            backends: take!(ebpf, "uf_backends"),
            rr: take!(ebpf, "uf_rr"),
            maglev: take!(ebpf, "uf_maglev"),
            rr_cursor: take!(ebpf, "uf_rr_cursor"),
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

    /// Puts listener `id`'s round-robin cursor back to the start of the cycle on every CPU, so
    /// that a listener given a used id walks its cycle from the start, as on fresh maps. Only
    /// for an id no registered listener has: the programs advance the cursors without a lock.
    pub fn reset_cursor(&mut self, id: u32) -> Result<(), MapsError> {
        check_id(id)?;
        let zeros = per_cpu_zeros("uf_rr_cursor")?;
        self.rr_cursor
            .set(id, zeros, 0)
            .map_err(err("uf_rr_cursor"))
    }

    /// How long until listener `id`'s idle bank may be rewritten by [`write_set`] (which waits
    /// that long itself): zero unless its last flip was less than [`BANK_REUSE_DELAY`] ago.
    ///
    /// [`write_set`]: Self::write_set
    pub fn bank_reuse_wait(&self, id: u32) -> Result<Duration, MapsError> {
        check_id(id)?;
        Ok(self.flipped.reuse_wait(id, Instant::now()))
    }

    /// Writes `set` as listener `id`'s downstreams (into the idle bank, then flips to it).
    /// `stats_ids[i]` is the counter slot of `set.endpoints()[i]`.
    ///
    /// Sleeps first if the idle bank was retired less than [`BANK_REUSE_DELAY`] ago: the rule
    /// that a bank is not rewritten while a packet may still be reading it is kept here, by
    /// the only code that flips. Whoever holds these maps for it blocks other writers only.
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
}
