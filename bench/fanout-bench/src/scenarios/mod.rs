//! Scenarios: benchmarks of the real `udp-fanout` binary that take more than a generator and
//! a sink, because they need the daemon started on a particular config and observed from
//! outside (its memory, descriptors and metrics) while the traffic runs.
//!
//! A scenario is a library function taking the daemon's path, so that the CLI runs it at full
//! scale by hand and a test runs it in miniature against the binary the workspace just built.
//! It reports what it measured and asserts nothing: whether a number is good is for the
//! person reading it.
//!
//! - [`session_scale`]: session capacity, memory per session, reply throughput.
//! - [`compare`]: udp-fanout against socat, nginx, Envoy, nftables and no proxy at all.
//! - [`control_scale`]: the control plane at 10,000 downstreams: reload latency and loss,
//!   health-check CPU.

pub mod compare;
pub mod control_probe;
pub mod control_report;
pub mod control_scale;
pub mod session_clients;
mod session_markdown;
pub mod session_report;
pub mod session_scale;

/// The median of `sorted` (ascending, not empty): the mean of the middle two for an even count.
pub(crate) fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}
