//! A benchmark rig in network namespaces: plain kernel forwarding, the kernel plane (XDP and
//! TC) and the userspace plane under the same offered load on the same topology, measured in
//! packets per second and CPU per packet. Not used by udp-fanout itself.
//!
//! Tooling, never linked into the `udp-fanout` binary. Two benchmarks share it: this crate's
//! `netns_forwarding` bench (`cargo bench -p fanout-netbench --bench netns_forwarding`), and
//! scenario (f) of `fanout-bench`'s peer comparison (`udp-fanout-bench compare --scenarios
//! f`). It is a library, rather than a bench file, so that both run exactly the same rig; its
//! own BPF object (`bpf/bench_gen.c`, the in-kernel generator and sinks) is compiled by this
//! crate's `build.rs`, apart from the product's programs.
//!
//! ```text
//!  client ns              lb ns                               backend ns k (k = 0, 1)
//!  10.77.0.2 --veth-- 10.77.0.1 (listener :5514)
//!                      10.77.(k+1).1 --veth-- 10.77.(k+1).2 (:7000, bench_sink XDP)
//! ```
//!
//! One job per module:
//! - [`topology`]: the namespaces and veths, deleted by `Drop`; the load balancer's counters.
//! - [`object`]: `bpf/bench_gen.c`'s object (built by this crate's `build.rs`) loaded and
//!   attached.
//! - [`generator`]: the in-kernel load generator (live-frames `BPF_PROG_TEST_RUN`), paced or
//!   flat out.
//! - [`sink`]: the counting XDP sinks on the backends.
//! - [`cpu`]: CPU accounting: /proc/stat, traced network softirq time, this process +
//!   ksoftirqd.
//! - [`modes`]: what runs in the load balancer (plain forwarding, kernel plane xdp/tc_ebpf,
//!   userspace plane, third-party proxies) and the traffic shapes (balance, mirror, one heavy
//!   flow).
//! - [`external`]: third-party userspace proxies (nginx, Envoy), started by the caller in the
//!   load balancer's namespace; the rig waits for their sockets and counts their CPU.
//! - [`measure`]: one window (start, warm up, count, generate, drain, count, stop) and the
//!   checks that its counters add up.
//! - [`report`]: per-datagram CPU, % of plain forwarding, the bench's table.
//!
//! Everything here needs root (namespaces, BPF); [`is_root`] says whether to try.

pub mod cpu;
pub mod external;
pub mod generator;
pub mod measure;
pub mod modes;
pub mod object;
pub mod report;
pub mod sink;
pub mod topology;

pub use external::{External, ExternalSpec, Peer, StartExternal};
pub use measure::{Rig, RigOptions, Sample, check, check_lossless};
pub use modes::{Mode, Traffic};

/// Whether this process may build the rig: network namespaces and BPF need root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
