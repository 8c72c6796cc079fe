//! udp-fanout's peer-comparison and session benchmarks: scenarios that run the real
//! `udp-fanout` binary (and socat, nginx, Envoy, nftables) and observe them from outside,
//! with the `udp-fanout-bench` binary to run them by hand.
//!
//! The traffic tools (payload, generator, sink, stats, the daemon harness, /proc and
//! Prometheus readers) are `fanout-testkit`'s; they are re-exported here under their old
//! paths so the CLI and the scenarios read as before.
//!
//! - [`scenarios::session_scale`]: session capacity and cost.
//! - [`scenarios::compare`]: udp-fanout against other proxies, on the same machine and run.
//! - [`human`]: how the reports and the CLI write numbers for people.
#![forbid(unsafe_code)]

pub mod human;
pub mod scenarios;

pub use fanout_testkit::{FlowReport, GenConfig, GenReport};
pub use fanout_testkit::{FlowStats, LatencySummary};
pub use fanout_testkit::{PortReport, Sink, SinkHandle, SinkOptions, SinkReport};
pub use fanout_testkit::{addrs, generator, limits, payload, sink, stats};
