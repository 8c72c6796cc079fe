//! A precise one-shot timer for the pacer's waits, as a file descriptor (`timerfd`).
//!
//! Why not `sleep` or an `epoll` timeout: both are rounded (epoll through mio to whole
//! milliseconds) or stretched by the thread's timer slack (about 50 µs), so short waits had to
//! be spun out. A spinning generator takes a whole core from the proxy under test on a small
//! machine, and a generator that stops reading replies while it spins measures its own pacing
//! period instead of the proxy's round trip. A timerfd expires on time (its hrtimer has no
//! slack) and, registered in the same poller as the flow sockets, lets one blocking wait end
//! on whichever comes first: a reply or the next send.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::{TimeSpec, TimeValLike as _};
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Waits shorter than this are spun: arming a timer and blocking costs a few microseconds of
/// system calls and a wake-up.
pub(crate) const SPIN_BELOW: Duration = Duration::from_micros(20);

/// A one-shot monotonic timer.
#[derive(Debug)]
pub(crate) struct Timer(TimerFd);

impl Timer {
    pub(crate) fn new() -> io::Result<Timer> {
        TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)
            .map(Timer)
            .map_err(io::Error::from)
    }

    /// Arms the timer to expire `after` from now (re-arming resets an earlier expiry, so a
    /// poller sees a fresh edge when this one expires).
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero time would disarm the timer instead of firing it at once.
        let ns = i64::try_from(after.as_nanos()).unwrap_or(i64::MAX).max(1);
        self.0
            .set(
                Expiration::OneShot(TimeSpec::nanoseconds(ns)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)
    }

    /// Blocks until the armed timer expires.
    pub(crate) fn wait(&self) -> io::Result<()> {
        match self.0.wait() {
            Ok(()) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn expires_after_the_armed_time() {
        let t = Timer::new().unwrap();
        let start = Instant::now();
        t.arm(Duration::from_micros(300)).unwrap();
        t.wait().unwrap();
        assert!(start.elapsed() >= Duration::from_micros(300));
    }
}
