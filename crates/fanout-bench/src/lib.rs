//! udp-fanout's benchmark and test traffic: a load generator and a counting sink that agree
//! on a verifiable datagram format.
//!
//! A UDP proxy's correctness and performance are both statements about datagrams: did each
//! one arrive, once, unchanged, at the right backend, and how fast and how late. This crate
//! makes every datagram answer those questions by itself, with no side channel between the
//! two ends, so the same tools serve the integration tests of the other crates (through the
//! library) and benchmark scripts (through the `udp-fanout-bench` binary's JSON output).
//!
//! - [`payload`]: the datagram format: header, checksum and filler that make any change,
//!   truncation, duplication or reordering detectable.
//! - [`generator`]: sends at a controlled rate from many source ports, measures echoes.
//! - [`sink`]: receives on many ports and counts everything per port, source and flow.
//! - [`stats`]: the report types shared by both sides (flow statistics, latency percentiles).
//! - [`scenarios`]: benchmarks that run the real `udp-fanout` binary and observe it from
//!   outside, such as [`scenarios::session_scale`] (session capacity and cost) and
//!   [`scenarios::compare`] (udp-fanout against other proxies, on the same machine and run).
//! - [`addrs`], [`limits`]: source address lists and the open-file limit, for runs that
//!   simulate very many clients.
//!
//! All socket I/O goes through `fanout-userspace`'s batched `recvmmsg`/`sendmmsg` layer, so the
//! bench stresses a proxy with the same batching the proxy itself uses, and this crate needs
//! no `unsafe`.
#![forbid(unsafe_code)]

pub mod addrs;
pub mod generator;
pub mod limits;
pub mod payload;
pub mod scenarios;
pub mod sink;
pub mod stats;

pub use generator::{FlowReport, GenConfig, GenReport};
pub use sink::{PortReport, Sink, SinkHandle, SinkOptions, SinkReport};
pub use stats::{FlowStats, LatencySummary};
