//! The userspace data plane: portable, unprivileged, fast.
//!
//! - [`sys`]: batched `recvmmsg`/`sendmmsg` with ancillary data, socket set-up (the only unsafe
//!   code of the plane).
//! - [`stats`]: per-worker, cache-line-padded counters.
//! - [`listener`]: a listener's shared state: its downstream set (swapped whole) and counters.
//! - `worker`: the per-core loop: receive a batch, pick targets, send a batch.
//! - [`plane`]: binding everything up front, starting and stopping the workers.

mod limits;
pub mod listener;
pub mod plane;
pub mod stats;
pub mod sys;
mod worker;

pub use listener::ListenerShared;
pub use plane::{BoundPlane, PlaneError, UserspacePlane, worker_count};
