//! The kernel data plane: XDP and TC programs written in C (`bpf/`), compiled by `build.rs`,
//! loaded and kept in sync with the configuration through aya.
//!
//! - [`bindings`]: the map layouts, generated from `bpf/include/uf_structs.h`.
//! - [`maps`]: typed map access: listeners, double-banked downstream sets, counters, next hops.
pub mod bindings;
pub mod maps;
pub mod plane;
pub mod programs;
mod watch;

/// The compiled BPF object (both programs, their maps).
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uf_lb.o"));
