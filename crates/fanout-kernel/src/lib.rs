//! The kernel data plane: XDP and TC programs written in C (`bpf/`), compiled by `build.rs`,
//! loaded and kept in sync with the configuration through aya.
//!
//! - [`bindings`]: the map layouts, generated from `bpf/include/uf_structs.h`.
//! - [`maps`]: typed map access: listeners, double-banked downstream sets, counters, next hops.
//! - [`netbench`]: not part of the data plane: the network-namespace benchmark rig (plain
//!   forwarding vs kernel plane vs userspace plane) shared by the `netns_forwarding` bench
//!   and `fanout-bench compare`'s scenario (f).
pub mod bindings;
pub mod maps;
pub mod netbench;
pub mod plane;
pub mod programs;
mod watch;

/// The compiled BPF object (both programs, their maps).
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uf_lb.o"));
