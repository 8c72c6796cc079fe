//! systemd integration: the `sd_notify` states a `Type=notify` unit expects, and the
//! watchdog keep-alive.
//!
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`), so the daemon runs the same
//! by hand, in a container or under a supervisor; a failed notification is logged at debug
//! level only, since there is nothing the daemon could do about it.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: start-up (or a reload) is complete.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ uses it to tell this reload from an
/// earlier one); [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// `WATCHDOG=1`: still alive.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to send [`watchdog`] when systemd asks for a watchdog (`WatchdogSec=`): twice
/// per period, as sd_watchdog_enabled(3) advises; `None` without one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
