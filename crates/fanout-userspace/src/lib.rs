//! The userspace data plane: portable, unprivileged, fast.
//!
//! - [`sys`]: batched `recvmmsg`/`sendmmsg` with ancillary data, socket set-up (the only unsafe
//!   code of the plane).
//! - [`stats`]: per-worker, cache-line-padded counters.
//! - [`listener`]: a listener's shared state: its downstream set (swapped whole) and counters.
//! - `worker`: the per-core loop: receive a batch, pick targets, send a batch.
//! - [`plane`]: binding everything up front, starting and stopping the workers, and adding or
//!   removing listeners while they run (reload).
//!
//! `unsafe` is denied everywhere but in [`sys`], so a new system call cannot slip into the
//! worker loop or the plane's set-up without going through the one module that is reviewed
//! for it.
#![deny(unsafe_code)]

mod limits;
pub mod listener;
pub mod plane;
pub mod stats;
#[allow(unsafe_code)] // The plane's system calls; every block says why it is sound.
pub mod sys;
mod worker;

pub use listener::ListenerShared;
pub use plane::{BoundPlane, PlaneError, UserspacePlane, worker_count};
