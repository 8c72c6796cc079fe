//! What udp-fanout's tests and benchmarks share, once: tooling, never linked into the
//! `udp-fanout` binary (it is only ever a dev-dependency or a bench crate's dependency).
//!
//! A UDP proxy's correctness and performance are both statements about datagrams: did each
//! one arrive, once, unchanged, at the right backend, and how fast and how late. The traffic
//! tools here make every datagram answer those questions by itself, with no side channel
//! between the two ends, so the same code serves the integration tests (through this library)
//! and the benchmarks (`fanout-bench`, `fanout-netbench`).
//!
//! - [`payload`]: the datagram format: header, checksum and filler that make any change,
//!   truncation, duplication or reordering detectable.
//! - [`generator`]: sends at a controlled rate from many source ports, measures echoes.
//! - [`sink`]: receives on many ports and counts everything per port, source and flow.
//! - [`stats`]: the report types shared by both sides (flow statistics, latency percentiles).
//! - [`daemon`]: runs the real `udp-fanout` binary on a config and observes it from outside.
//! - [`netns`]: network-namespace guards, bounded commands, the root check CI relies on.
//! - [`prom`]: the Prometheus text format the daemon's `/metrics` speaks, parsed.
//! - [`procfs`]: what a process and the kernel hold (`/proc` readers).
//! - [`http`]: a plain HTTP/1.1 GET for scraping and admin endpoints.
//! - [`addrs`], [`limits`]: source address lists and the open-file limit, for runs that
//!   simulate very many clients.
//! - [`eventually`], [`assert_contains`]: the bounded wait and the text check every test
//!   suite here would otherwise write again.
//!
//! All socket I/O goes through `fanout-userspace`'s batched `recvmmsg`/`sendmmsg` layer, so the
//! tools stress a proxy with the same batching the proxy itself uses, and this crate needs no
//! `unsafe`.
#![forbid(unsafe_code)]

pub mod addrs;
pub mod daemon;
pub mod generator;
pub mod http;
pub mod limits;
pub mod netns;
pub mod payload;
pub mod procfs;
pub mod prom;
pub mod sink;
pub mod stats;

pub use generator::{FlowReport, GenConfig, GenReport};
pub use sink::{PortReport, Sink, SinkHandle, SinkOptions, SinkReport};
pub use stats::{FlowStats, LatencySummary};

/// Asserts that `text` contains every one of `wanted`, showing `text` when one is missing: a
/// generated config or report checked line by line, as one table.
#[track_caller]
pub fn assert_contains(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "{w:?} missing from:\n{text}");
    }
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; whether it did (one last
/// try after the limit, so a slow machine's last chance counts).
pub fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}
