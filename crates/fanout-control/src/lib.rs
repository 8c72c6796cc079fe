//! The control plane around the data planes: today the Prometheus exporter and its HTTP
//! endpoint; discovery, health checks and the admin API join it later.
//!
//! It runs on a small tokio runtime on the main thread, apart from the data-plane workers, so
//! nothing it does (a slow scrape, a stalled client) can delay a datagram.

pub mod http;
pub mod metrics;

pub use metrics::{Exporter, SnapshotSource};
