//! Rate control for the generator: when the next datagrams are due, and how to wait for them.
//!
//! Datagram `k` of a run is due at `start + k / rate`, an absolute schedule, so rounding and
//! wake-up lateness never accumulate into drift: a late wake-up is followed by a burst that
//! catches up. To keep the cost per datagram low at high rates, the pacer waits until a
//! *granule* of datagrams is due (as many as fall in [`GRANULE_TIME`], at most one send batch)
//! and sends them with one `sendmmsg`; the granule is 1 at low rates, where each datagram is
//! timed on its own.
//!
//! Waiting blocks on a precise timer ([`super::timer`]) for all but the shortest waits, which
//! are spun: spinning through the gaps of a moderate rate would take a core from the proxy
//! under test on a two-core machine, and a sleep overshoots by the timer slack (about 50 µs),
//! which would halve a 20 kpps rate.

use std::time::{Duration, Instant};

/// The time over which due datagrams are gathered into one burst at high rates. It bounds the
/// burst jitter a receiver sees.
pub(crate) const GRANULE_TIME: Duration = Duration::from_micros(200);

use super::timer::SPIN_BELOW;

/// What the pacer says to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Send this many datagrams now.
    Send(u64),
    /// Nothing is due yet; come back at this instant.
    WaitUntil(Instant),
}

/// The schedule of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    start: Instant,
    /// Datagrams per second; 0 = unlimited.
    rate: u64,
    granule: u64,
}

impl Pacer {
    pub(crate) fn new(start: Instant, rate: u64, batch: usize) -> Self {
        let per_granule = u128::from(rate) * GRANULE_TIME.as_nanos() / 1_000_000_000;
        let granule = u64::try_from(per_granule)
            .unwrap_or(u64::MAX)
            .clamp(1, batch.max(1) as u64);
        Pacer {
            start,
            rate,
            granule,
        }
    }

    /// With `sent` datagrams sent so far and `remaining` left in the run, what to do at `now`.
    pub(crate) fn next(&self, now: Instant, sent: u64, remaining: u64) -> Pace {
        if self.rate == 0 {
            return Pace::Send(remaining);
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        // Datagram k is due at k / rate, so floor(elapsed * rate) + 1 of them are due by now.
        let due = u64::try_from(elapsed * u128::from(self.rate) / 1_000_000_000)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let available = due.saturating_sub(sent).min(remaining);
        let want = self.granule.min(remaining);
        if available >= want {
            Pace::Send(available)
        } else {
            Pace::WaitUntil(self.due_at(sent + want - 1))
        }
    }

    /// When datagram `index` is due.
    pub(crate) fn due_at(&self, index: u64) -> Instant {
        let ns = u128::from(index) * 1_000_000_000 / u128::from(self.rate.max(1));
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.start + Duration::from_nanos(ns)
    }
}

/// How to spend the time until `until`, decided once per loop turn so that the caller can
/// check its stop flag and replies between turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nap {
    /// Already there.
    Done,
    /// Block (on the timer, and on replies if any) this long.
    Block(Duration),
    /// Too short to block: yield or spin once.
    Spin,
}

pub(crate) fn nap(now: Instant, until: Instant) -> Nap {
    match until.checked_duration_since(now) {
        None => Nap::Done,
        Some(d) if d.is_zero() => Nap::Done,
        Some(d) if d >= SPIN_BELOW => Nap::Block(d),
        Some(_) => Nap::Spin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_rate_sends_everything() {
        let t = Instant::now();
        let p = Pacer::new(t, 0, 32);
        assert_eq!(p.next(t, 0, 1000), Pace::Send(1000));
    }

    #[test]
    fn low_rate_times_each_datagram() {
        let t = Instant::now();
        let p = Pacer::new(t, 10, 32);
        assert_eq!(p.granule, 1);
        assert_eq!(p.next(t, 0, 100), Pace::Send(1));
        assert_eq!(
            p.next(t, 1, 99),
            Pace::WaitUntil(t + Duration::from_millis(100))
        );
        assert_eq!(p.next(t + Duration::from_millis(100), 1, 99), Pace::Send(1));
        // A late wake-up catches up in one burst.
        assert_eq!(p.next(t + Duration::from_millis(450), 1, 99), Pace::Send(4));
    }

    #[test]
    fn high_rate_gathers_granules() {
        let t = Instant::now();
        let p = Pacer::new(t, 1_000_000, 32);
        assert_eq!(p.granule, 32);
        // At 1 Mpps the first 32 are due at 31 µs.
        assert_eq!(
            p.next(t, 0, 10_000),
            Pace::WaitUntil(t + Duration::from_micros(31))
        );
        assert_eq!(
            p.next(t + Duration::from_micros(31), 0, 10_000),
            Pace::Send(32)
        );
        // The tail of a run is not held back waiting for a full granule.
        assert_eq!(
            p.next(t + Duration::from_secs(1), 9_990, 10),
            Pace::Send(10)
        );
    }

    #[test]
    fn nap_sleeps_long_and_spins_short() {
        let t = Instant::now();
        assert_eq!(nap(t, t), Nap::Done);
        assert_eq!(nap(t + Duration::from_millis(1), t), Nap::Done);
        assert_eq!(nap(t, t + Duration::from_micros(5)), Nap::Spin);
        assert_eq!(
            nap(t, t + Duration::from_micros(50)),
            Nap::Block(Duration::from_micros(50))
        );
    }
}
