//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! A lookup table of prime size `M` maps `flow_hash % M` to a downstream. Each downstream walks
//! its own permutation of the table (`offset + j * skip mod M`, both derived from the
//! downstream's address) and the downstreams take turns claiming their next free slot until the
//! table is full; a downstream of weight `w` takes `w` slots per turn, so shares follow weights.
//!
//! Why Maglev rather than a hash ring: lookups are one array index (cheap in the kernel too,
//! where the table is a BPF array map written from this very code), balance is within a few
//! percent at `M = 65537`, and removing one of `N` downstreams remaps only about `1/N` of the
//! keys.
//!
//! Determinism: permutations depend only on the downstream addresses and weights, and the
//! downstreams are processed in address order, so the same set in any order, in any process, on
//! any machine gives the same table. That is what lets several nodes behind ECMP agree.

use std::net::{IpAddr, SocketAddr};

use crate::flow::murmur3_words;

/// Default (and recommended) table size: prime, and large enough for about 650 downstreams at
/// 1% imbalance.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3031; // "ev01"

/// A built Maglev lookup table. Entries are indices into the downstream list given to
/// [`Maglev::new`], in that list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Builds the table for `(address, weight)` pairs with `size` entries. `size` must be prime
    /// (checked by `is_prime`, and by config validation); downstreams with weight 0 get no
    /// entries. Returns an empty table when nothing has weight.
    ///
    /// # Panics
    /// If `size` is not prime: every permutation must visit every slot.
    pub fn new(downstreams: &[(SocketAddr, u32)], size: u32) -> Self {
        assert!(is_prime(size), "Maglev table size {size} is not prime");
        let m = u64::from(size);
        // Process in address order so the caller's ordering does not matter.
        let mut order: Vec<usize> = (0..downstreams.len())
            .filter(|&i| downstreams[i].1 > 0)
            .collect();
        order.sort_by_key(|&i| address_key(&downstreams[i].0));
        order.dedup_by_key(|i| address_key(&downstreams[*i].0));
        if order.is_empty() {
            return Maglev {
                table: Box::new([]),
            };
        }
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let words = address_words(&downstreams[i].0);
                let offset = u64::from(murmur3_words(&words, OFFSET_SEED)) % m;
                let skip = u64::from(murmur3_words(&words, SKIP_SEED)) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                let (offset, skip) = perms[k];
                for _ in 0..downstreams[i].1 {
                    let mut slot = (offset + next[k] * skip) % m;
                    while table[slot as usize] != u32::MAX {
                        next[k] += 1;
                        slot = (offset + next[k] * skip) % m;
                    }
                    table[slot as usize] = i as u32;
                    next[k] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The downstream index for a flow hash, or `None` for an empty table.
    #[inline]
    pub fn lookup(&self, hash: u32) -> Option<u32> {
        if self.table.is_empty() {
            None
        } else {
            Some(self.table[hash as usize % self.table.len()])
        }
    }

    /// The whole table (for the kernel plane's map).
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

/// True if `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Canonical identity of a downstream: IPv4-mapped IPv6 is treated as IPv4.
fn address_key(a: &SocketAddr) -> (u8, [u8; 16], u16) {
    match a.ip().to_canonical() {
        IpAddr::V4(ip) => (4, ip.to_ipv6_mapped().octets(), a.port()),
        IpAddr::V6(ip) => (6, ip.octets(), a.port()),
    }
}

/// The words a downstream's permutation is derived from: the same layout as the flow hash.
fn address_words(a: &SocketAddr) -> Vec<u32> {
    let port = a.port().to_be_bytes();
    let port_word = u32::from_le_bytes([port[0], port[1], 0, 0]);
    match a.ip().to_canonical() {
        IpAddr::V4(ip) => vec![u32::from_le_bytes(ip.octets()), port_word],
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let mut v: Vec<u32> = o
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            v.push(port_word);
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                (
                    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 5000)),
                    1,
                )
            })
            .collect()
    }

    fn shares(m: &Maglev, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &e in m.table() {
            counts[e as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / m.table().len() as f64)
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(2));
        assert!(!is_prime(65_535));
        assert!(!is_prime(1));
        assert!(is_prime(251));
    }

    #[test]
    fn table_is_full_and_in_range() {
        let d = addrs(7);
        let m = Maglev::new(&d, DEFAULT_TABLE_SIZE);
        assert_eq!(m.table().len(), DEFAULT_TABLE_SIZE as usize);
        assert!(m.table().iter().all(|&e| (e as usize) < d.len()));
    }

    #[test]
    fn equal_weights_balance_within_a_few_percent() {
        for n in [2usize, 3, 5, 10, 33, 100] {
            let m = Maglev::new(&addrs(n), DEFAULT_TABLE_SIZE);
            let ideal = 1.0 / n as f64;
            for s in shares(&m, n) {
                assert!(
                    (s - ideal).abs() / ideal < 0.03,
                    "n={n}: share {s} vs ideal {ideal}"
                );
            }
        }
    }

    #[test]
    fn weights_are_honoured() {
        let mut d = addrs(4);
        d[0].1 = 1;
        d[1].1 = 2;
        d[2].1 = 3;
        d[3].1 = 4;
        let m = Maglev::new(&d, DEFAULT_TABLE_SIZE);
        for (i, s) in shares(&m, 4).iter().enumerate() {
            let ideal = d[i].1 as f64 / 10.0;
            assert!(
                (s - ideal).abs() / ideal < 0.03,
                "downstream {i}: share {s} vs {ideal}"
            );
        }
    }

    #[test]
    fn order_of_downstreams_does_not_matter() {
        let d = addrs(9);
        let mut rev = d.clone();
        rev.reverse();
        let a = Maglev::new(&d, DEFAULT_TABLE_SIZE);
        let b = Maglev::new(&rev, DEFAULT_TABLE_SIZE);
        for (x, y) in a.table().iter().zip(b.table()) {
            assert_eq!(d[*x as usize].0, rev[*y as usize].0);
        }
    }

    #[test]
    fn removing_one_moves_about_one_nth() {
        for n in [3usize, 5, 10, 20] {
            let d = addrs(n);
            let before = Maglev::new(&d, DEFAULT_TABLE_SIZE);
            let removed = n / 2;
            let rest: Vec<_> = d
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, x)| *x)
                .collect();
            let after = Maglev::new(&rest, DEFAULT_TABLE_SIZE);
            let mut moved = 0usize;
            for (x, y) in before.table().iter().zip(after.table()) {
                let was = d[*x as usize].0;
                let now = rest[*y as usize].0;
                if was != now {
                    moved += 1;
                    continue;
                }
            }
            let frac = moved as f64 / DEFAULT_TABLE_SIZE as f64;
            let ideal = 1.0 / n as f64;
            // Keys of the removed downstream must move; Maglev moves a little more than that.
            assert!(frac >= ideal * 0.97, "n={n}: moved {frac}");
            assert!(frac <= ideal * 1.6, "n={n}: moved {frac} > 1.6 * {ideal}");
        }
    }

    #[test]
    fn adding_one_moves_about_one_over_n_plus_one() {
        let d = addrs(10);
        let before = Maglev::new(&d[..9], DEFAULT_TABLE_SIZE);
        let after = Maglev::new(&d, DEFAULT_TABLE_SIZE);
        let moved = before
            .table()
            .iter()
            .zip(after.table())
            .filter(|(x, y)| d[**x as usize].0 != d[**y as usize].0)
            .count();
        let frac = moved as f64 / DEFAULT_TABLE_SIZE as f64;
        assert!((0.1 * 0.97..=0.1 * 1.6).contains(&frac), "moved {frac}");
    }

    #[test]
    fn table_is_pinned() {
        // Part of the cross-node contract: the same set must give the same table forever.
        let m = Maglev::new(&addrs(3), DEFAULT_TABLE_SIZE);
        let head: Vec<u32> = m.table()[..16].to_vec();
        assert_eq!(head, PINNED_HEAD, "Maglev table for 3 downstreams changed");
    }

    const PINNED_HEAD: [u32; 16] = [0, 1, 1, 1, 0, 0, 0, 2, 2, 0, 2, 0, 0, 1, 2, 2];

    #[test]
    fn v6_and_mapped_are_supported() {
        let d = vec![
            ("[2001:db8::1]:53".parse().unwrap(), 1),
            ("[2001:db8::2]:53".parse().unwrap(), 1),
        ];
        let m = Maglev::new(&d, 251);
        assert_eq!(m.table().len(), 251);
        let ones = m.table().iter().filter(|&&e| e == 1).count();
        assert!(ones > 100 && ones < 151);
    }
}
