//! Smooth weighted round-robin, precomputed.
//!
//! nginx's smooth weighted round-robin interleaves downstreams as evenly as their weights allow
//! (weights 5,1,1 give `a a b a c a a`, not `a a a a a b c`). Running it per datagram costs
//! O(downstreams); instead the whole cycle is computed once when the downstream set is built and
//! each worker walks it with a cursor, which is O(1) per datagram and exactly the same sequence.
//! The kernel plane writes the same array into a BPF map and walks it with per-CPU counters.
//!
//! The cycle is `sum(weights) / gcd(weights)` entries long, so over one cycle every downstream is
//! chosen exactly `weight / gcd` times: weights are honoured exactly, not statistically.

/// The largest cycle we precompute. Configuration validation keeps weights small enough
/// (see `MAX_WEIGHT` in the config crate) that real sets stay far below this.
pub const MAX_CYCLE: usize = 1 << 22;

/// A precomputed smooth weighted round-robin cycle of downstream indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    slots: Box<[u32]>,
}

impl Schedule {
    /// Builds the cycle for `weights` (index = downstream). Zero weights never get a slot; an
    /// empty or all-zero input gives an empty schedule. Cycles longer than [`MAX_CYCLE`] are
    /// scaled down proportionally (weights then hold to within one slot per downstream).
    pub fn new(weights: &[u32]) -> Self {
        Self::bounded(weights, MAX_CYCLE)
    }

    /// Like [`new`](Self::new) but with at most `max_len` slots (the kernel plane's map has a
    /// fixed size): longer cycles are scaled down proportionally, each downstream keeping at
    /// least one slot.
    pub fn bounded(weights: &[u32], max_len: usize) -> Self {
        let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
        if g == 0 {
            return Schedule {
                slots: Box::new([]),
            };
        }
        let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
        let total: u64 = w.iter().sum();
        let max_len = max_len.max(weights.len()) as u64;
        if total > max_len {
            for x in &mut w {
                if *x > 0 {
                    *x = (*x * max_len / total).max(1);
                }
            }
        }
        let total: u64 = w.iter().sum();
        let signed: Vec<i64> = w.iter().map(|&x| x as i64).collect();
        let mut current = vec![0i64; w.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0usize;
            for i in 0..signed.len() {
                current[i] += signed[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            slots.push(best as u32);
        }
        Schedule {
            slots: slots.into_boxed_slice(),
        }
    }

    /// Length of one cycle.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no downstream has a weight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The downstream at position `cursor` of the cycle (wraps around).
    #[inline]
    pub fn at(&self, cursor: usize) -> Option<u32> {
        if self.slots.is_empty() {
            None
        } else {
            Some(self.slots[cursor % self.slots.len()])
        }
    }

    /// The whole cycle, e.g. to copy into a BPF map.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_example_is_smooth() {
        let s = Schedule::new(&[5, 1, 1]);
        assert_eq!(s.slots(), &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_alternate() {
        let s = Schedule::new(&[1, 1, 1]);
        assert_eq!(s.slots(), &[0, 1, 2]);
        let s = Schedule::new(&[4, 4]);
        assert_eq!(s.slots(), &[0, 1], "common factor is divided out");
    }

    #[test]
    fn bounded_cycles_keep_proportions() {
        let s = Schedule::bounded(&[3_000, 1_000, 1], 400);
        assert!(s.len() <= 400 + 3);
        let count = |i| s.slots().iter().filter(|&&x| x == i).count();
        assert!(
            count(0).abs_diff(3 * count(1)) <= 3,
            "{} vs 3 x {}",
            count(0),
            count(1)
        );
        assert_eq!(count(2), 1, "a tiny weight keeps one slot");
    }

    #[test]
    fn zero_and_empty() {
        assert!(Schedule::new(&[]).is_empty());
        assert!(Schedule::new(&[0, 0]).is_empty());
        assert_eq!(Schedule::new(&[0, 3]).slots(), &[1]);
        assert_eq!(Schedule::new(&[]).at(7), None);
    }

    proptest! {
        #[test]
        fn weights_are_exact_over_a_cycle(weights in proptest::collection::vec(1u32..50, 1..12)) {
            let s = Schedule::new(&weights);
            let g = weights.iter().copied().fold(0, gcd);
            let mut counts = vec![0u32; weights.len()];
            for &i in s.slots() {
                counts[i as usize] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w / g);
            }
        }

        #[test]
        fn no_downstream_waits_longer_than_needed(weights in proptest::collection::vec(1u32..20, 2..8)) {
            // Smoothness: a downstream with share w/W never waits more than twice its fair gap
            // W/w (a plain weighted round-robin would make light ones wait a whole cycle).
            let s = Schedule::new(&weights);
            let n = s.len();
            for (i, _) in weights.iter().enumerate() {
                let positions: Vec<usize> = (0..2 * n).filter(|&p| s.at(p) == Some(i as u32)).collect();
                let count = positions.len() / 2;
                let bound = 2 * n.div_ceil(count);
                for pair in positions.windows(2) {
                    prop_assert!(pair[1] - pair[0] <= bound, "gap {} > {}", pair[1] - pair[0], bound);
                }
            }
        }
    }
}
