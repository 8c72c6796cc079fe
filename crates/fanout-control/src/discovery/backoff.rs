//! Retry delays for the watch: exponential with jitter, capped, reset once a list succeeds.
//!
//! Jitter matters here more than in most clients: a DaemonSet's pods on every node lose the
//! API server at the same moment and, without it, would all come back in the same instant.
//! The delay is drawn from the upper half of the exponential step ("equal jitter"), so a retry
//! is never much sooner than the step promises. Pure, so its bounds are unit tests.

use std::time::Duration;

/// The first retry waits about this long.
pub const BASE: Duration = Duration::from_millis(250);
/// No retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(10);

/// Exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
}

impl Backoff {
    /// Delays from `base` doubling to `cap`; `seed` varies the jitter between processes.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            state: seed,
        }
    }

    /// The delay before the next retry: in `[step / 2, step]`, `step` = `base` × 2^attempts,
    /// at most `cap`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let frac = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(frac)
    }

    /// After a success: the next failure starts again at `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// splitmix64: enough randomness for jitter, no dependency.
    fn random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(BASE, CAP, 7);
        let mut step = BASE;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(CAP);
        }
        b.reset();
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn jitter_spreads_processes_apart() {
        let firsts: std::collections::BTreeSet<Duration> = (0..50)
            .map(|seed| Backoff::new(BASE, CAP, seed).next_delay())
            .collect();
        assert!(firsts.len() > 40, "{} distinct delays of 50", firsts.len());
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::new(BASE, CAP, 1);
        for _ in 0..1000 {
            assert!(b.next_delay() <= CAP);
        }
    }
}
