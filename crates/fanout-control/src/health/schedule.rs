//! When each probe is sent and when each one times out: one min-heap of timers for the whole
//! checker, drained by a single task.
//!
//! Why not a task (or a `tokio::time::interval`) per target: 10,000 targets would be 10,000
//! timers in tokio's wheel and 10,000 wake-ups a second, each a task poll. One heap costs
//! O(log n) per probe, and [`SLACK`] lets one wake-up send every probe due within the next
//! millisecond (tokio's timers have millisecond resolution anyway), so the wake-ups are
//! bounded by 1,000 a second whatever the number of targets.
//!
//! Entries are never removed: a target that is removed or rescheduled bumps its generation
//! and its old entries are skipped when they come up (lazy deletion), which keeps the heap
//! simple and its size bounded by about two entries per target.
//!
//! Probes of one target are spread over its interval by a fixed phase derived from
//! (listener, address), so 10,000 targets added at once do not probe in the same instant,
//! and a target that stays across [`set_targets`](super::HealthChecker::set_targets) keeps
//! its phase.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How far ahead of its time a timer may fire, so one wake-up serves a batch.
pub const SLACK: Duration = Duration::from_millis(1);

/// The shortest interval and timeout honoured (a zero one would spin).
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// What a timer is for. Ordered only so heap entries with equal times have an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Target `id` is due for a probe, if it is still at generation `generation`.
    Probe { id: u64, generation: u64 },
    /// The probe `token` of target `id` times out, if it is still in flight.
    Deadline { id: u64, token: u64 },
}

/// The pending timers, earliest first.
#[derive(Debug, Default)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Schedule {
    /// Adds `timer` to fire at `at`.
    pub fn push(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// Takes the earliest timer if it is due by `now` (give or take [`SLACK`]).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now + SLACK {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// When the earliest timer fires.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// The offset into its interval at which a target is probed, from 0 to `interval`: fixed
/// per (listener, address), so targets are spread and keep their slot across updates.
pub fn phase(listener: &str, addr: SocketAddr, interval: Duration) -> Duration {
    let mut h = DefaultHasher::new();
    listener.hash(&mut h);
    addr.hash(&mut h);
    let nanos = interval.as_nanos().max(1);
    let offset = u128::from(h.finish()) % nanos;
    // offset < interval, which fits a Duration.
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// When the probe after one due at `due` is due: one interval later, or, if the checker fell
/// more than an interval behind (a stalled runtime), one interval from `now`, so missed
/// probes are skipped rather than sent in a burst.
pub fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next <= now { now + interval } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.push(
            t0 + Duration::from_millis(30),
            Timer::Probe {
                id: 3,
                generation: 0,
            },
        );
        s.push(
            t0 + Duration::from_millis(10),
            Timer::Probe {
                id: 1,
                generation: 0,
            },
        );
        s.push(
            t0 + Duration::from_millis(20),
            Timer::Deadline { id: 2, token: 9 },
        );
        assert_eq!(s.next(), Some(t0 + Duration::from_millis(10)));
        assert!(s.pop_due(t0).is_none(), "nothing is due yet");
        let due: Vec<Timer> = std::iter::from_fn(|| s.pop_due(t0 + Duration::from_millis(20)))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            due,
            vec![
                Timer::Probe {
                    id: 1,
                    generation: 0
                },
                Timer::Deadline { id: 2, token: 9 }
            ]
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn slack_lets_a_timer_fire_a_little_early() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.push(
            t0 + SLACK,
            Timer::Probe {
                id: 1,
                generation: 0,
            },
        );
        assert!(s.pop_due(t0).is_some());
    }

    #[test]
    fn phases_spread_targets_over_the_interval() {
        let interval = Duration::from_secs(1);
        let mut buckets = [0usize; 10];
        for i in 0..10_000u32 {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5514));
            let p = phase("syslog", addr, interval);
            assert!(p < interval);
            buckets[(p.as_millis() / 100) as usize] += 1;
        }
        // Uniform would be 1,000 each; allow 20%.
        for b in buckets {
            assert!((800..=1200).contains(&b), "uneven spread: {buckets:?}");
        }
    }

    #[test]
    fn phase_is_stable_and_differs_by_listener() {
        let a: SocketAddr = "127.0.0.1:6001".parse().unwrap();
        let i = Duration::from_millis(1000);
        assert_eq!(phase("x", a, i), phase("x", a, i));
        assert_ne!(phase("x", a, i), phase("y", a, i));
    }

    #[test]
    fn next_due_keeps_the_rate_and_skips_missed_probes() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_due(t0, i, t0 + Duration::from_millis(5)), t0 + i);
        let late = t0 + Duration::from_millis(350);
        assert_eq!(next_due(t0, i, late), late + i);
    }
}
