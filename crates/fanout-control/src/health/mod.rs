//! Active health checks (DESIGN.md 3b, "Health checks"): every downstream of a listener with
//! a `health:` config is probed every `interval`, by UDP or ICMP echo, and its health follows
//! `rise`/`fall`; each change is sent as a [`HealthEvent`] for the control plane to apply.
//!
//! ```text
//! set_targets ─▶ engine (one lock) ─▶ timer task: due probes ─▶ sendto on a shared socket
//!                    ▲                                             │
//!   HealthEvent ◀── tracker ◀── reader task per socket ◀── reply / ICMP error (error queue)
//! ```
//!
//! Built to probe 10,000 downstreams every second with a handful of descriptors and little
//! CPU, and to notice a dead UDP server at its next probe, not after a timeout:
//!
//! - **Sockets** (`udp.rs`, `icmp.rs`): a few unconnected sockets per address family serve all
//!   targets. Replies are matched by source address (and for ICMP, sequence number); ICMP
//!   errors, port unreachable included, come from the socket's error queue (`IP_RECVERR`),
//!   whose messages name the failed datagram's destination, and fail that probe at once.
//! - **Scheduling** (`schedule.rs`): one timer heap and one task for every probe and timeout,
//!   each target at a fixed phase within its interval, so probes are spread out rather than
//!   sent in a burst, and the task wakes at most once a millisecond however many targets.
//! - **State** (`state.rs`): pure rise/fall trackers. A target starts `Unknown` (served, as the
//!   contract says), turns `Healthy` on its first success (as Envoy does), `Unhealthy` after
//!   `fall` consecutive failures, and `Healthy` again after `rise` consecutive successes.
//!
//! Detection: a downstream that stops answering is unhealthy within `fall × interval +
//! timeout` (the last of `fall` probes times out; probes keep their rate even when `timeout`
//! exceeds `interval`), one whose port is closed or whose host is unreachable within `fall ×
//! interval` (each probe fails on its ICMP error). Hosts limit the ICMP errors they send
//! (Linux: `net.ipv4.icmp_ratelimit` per destination except over loopback,
//! `icmp_msgs_per_sec` in all; a router's unreachables for a route, 5 then 1 a second per
//! source), so with many closed ports or dead hosts some probes fall back to the timeout,
//! still within the first bound.
//!
//! Runs on the caller's tokio runtime (the control plane's small one): the engine never
//! blocks, and the lock is held for one step at a time (a non-blocking `sendto` at most).

mod engine;
mod icmp;
mod schedule;
mod state;
mod sys;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fanout_config::HealthConfig;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

pub use crate::desired::Health;
pub use icmp::IcmpKind;

use engine::Shared;

/// A downstream's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The listener whose target it is.
    pub listener: String,
    /// The downstream (as given to [`HealthChecker::set_targets`], not the probe port).
    pub addr: SocketAddr,
    /// Its new health (never `Unknown`).
    pub health: Health,
}

/// Probe results of one target, for `udp_fanout_health_checks_total{result}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounts {
    /// Probes answered (and matching `expect`).
    pub success: u64,
    /// Probes that timed out, got an ICMP error, a wrong answer, or could not be sent.
    pub failure: u64,
}

/// The health checker: owns the probing tasks and sockets; dropping it stops them all.
#[derive(Debug)]
pub struct HealthChecker {
    shared: Arc<Shared>,
    timer: AbortHandle,
}

impl HealthChecker {
    /// Starts a checker with no targets on the current tokio runtime; transitions go to
    /// `events`. Sockets are opened by the first probe that needs them.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (like `tokio::spawn`).
    pub fn start(events: UnboundedSender<HealthEvent>) -> HealthChecker {
        let rt = tokio::runtime::Handle::current();
        let shared = Shared::new(rt.clone(), events);
        let timer = rt.spawn(run_timer(Arc::clone(&shared))).abort_handle();
        HealthChecker { shared, timer }
    }

    /// Replaces `listener`'s targets with `addrs`, checked per `cfg`. Targets that stay keep
    /// their health, counts and phase (a changed interval re-phases them); new ones start
    /// `Unknown` and are first probed within one interval; those not in `addrs` are
    /// forgotten. `cfg` `None`: the listener is not checked, and its targets are forgotten
    /// (no events, `Unknown`, no counts). Safe to call from any thread.
    pub fn set_targets(&self, listener: &str, cfg: Option<HealthConfig>, addrs: Vec<SocketAddr>) {
        self.shared
            .lock()
            .set_targets(listener, cfg, addrs, Instant::now());
        self.shared.wake.notify_one();
    }

    /// What the checks say about `listener`'s downstream `addr` (`Unknown` if not checked).
    pub fn health(&self, listener: &str, addr: SocketAddr) -> Health {
        self.shared.lock().health(listener, addr)
    }

    /// Probe results of every target, sorted by (listener, address).
    pub fn counts(&self) -> Vec<((String, SocketAddr), ProbeCounts)> {
        self.shared.lock().counts()
    }

    /// The kind of ICMP socket in use for IPv4 (`v6` false) or IPv6, once the first ICMP
    /// probe of that family opened one: for diagnostics and tests.
    pub fn icmp_socket_kind(&self, v6: bool) -> Option<IcmpKind> {
        self.shared.lock().icmp_kind(v6)
    }

    /// UDP sockets open (both families): for diagnostics and tests.
    pub fn udp_sockets(&self) -> usize {
        self.shared.lock().udp_sockets()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        // The readers hold the checker weakly and end with it; the timer holds it.
        self.timer.abort();
    }
}

// The control plane shares it between tasks and threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<HealthChecker>();
};

/// The timer task: fires due timers, then sleeps until the next one or until
/// [`HealthChecker::set_targets`] rings.
async fn run_timer(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().run_due(Instant::now());
        let rung = shared.wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = rung => {}
                }
            }
            None => rung.await,
        }
    }
}
