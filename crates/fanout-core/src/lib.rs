//! The pure logic of udp-fanout: everything that decides *where* a datagram goes, with no
//! sockets, clocks or threads in sight.
//!
//! Both data planes (the userspace workers and the eBPF programs) follow the rules written here,
//! so they are kept free of I/O: that makes them deterministic, cheap to unit- and
//! property-test, and lets a test replay one packet trace through both planes and compare every
//! choice.
//!
//! - [`flow`]: the flow key of a datagram (the client's address) and its stable hash.
//! - [`select`]: the downstream set of a listener and how one datagram picks its target(s):
//!   smooth weighted round-robin, Maglev consistent hashing, or mirroring.
//! - [`session`]: what a listener remembers about each client (LRU table, upstream ports,
//!   pinning rules) and the pure state machine the userspace workers drive.
//! - [`accounting`]: the closed list of reasons a datagram can be dropped for, and the
//!   plane-independent counter snapshots.
#![forbid(unsafe_code)]

pub mod accounting;
pub mod flow;
pub mod select;
pub mod session;

pub use accounting::{
    DropReason, EndpointSnapshot, ListenerSnapshot, SessionCounts, merge_snapshots,
};
pub use flow::{FlowKey, flow_hash};
pub use select::{BackendSet, Distribution, Endpoint, Pick};
