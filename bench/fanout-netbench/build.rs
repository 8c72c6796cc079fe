//! Compiles the benchmark's own BPF object, `bpf/bench_gen.c` (the in-kernel generator, the
//! counting sinks and the softirq timers), into `$OUT_DIR/bench_gen.o`, which
//! `src/object.rs` embeds. The product's programs are built by `crates/fanout-kernel`'s build
//! script; nothing of this crate ends up in the `udp-fanout` binary. Both use the same
//! compile step, `crates/fanout-kernel/build/clang.rs`.

use std::path::PathBuf;

include!("../../crates/fanout-kernel/build/clang.rs");

fn main() {
    let dir = PathBuf::from(cargo_env("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(cargo_env("OUT_DIR")).join("bench_gen.o");
    println!("cargo:rerun-if-changed=../../crates/fanout-kernel/build/clang.rs");
    compile_bpf(&dir.join("bpf/bench_gen.c"), &[], &out);
}
