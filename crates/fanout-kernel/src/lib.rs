//! The kernel data plane: XDP and TC programs written in C (`bpf/`), compiled by `build.rs`,
//! loaded and kept in sync with the configuration through aya.
//!
//! - [`bindings`]: the map layouts, generated from `bpf/include/uf_structs.h`.
//! - [`maps`]: typed map access: listeners, double-banked downstream sets, counters, next hops.
//! - [`programs`]: loading the object, with verifier and permission failures made readable.
//! - [`plane`]: the running plane: attachments, live downstream changes, counter snapshots.
//! - `watch`: clears the next-hop cache when routes or neighbours change.
//!
//! All system calls go through aya and nix; the only `unsafe` of the crate is in [`bindings`]
//! (declaring the map types plain old data), and `unsafe` is denied everywhere else.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // `aya::Pod` for the generated map types; see the module.
pub mod bindings;
pub mod maps;
pub mod plane;
pub mod programs;
mod watch;

/// The compiled BPF object (both programs, their maps).
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uf_lb.o"));
