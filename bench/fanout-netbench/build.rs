//! Compiles the benchmark's own BPF object, `bpf/bench_gen.c` (the in-kernel generator, the
//! counting sinks and the softirq timers), into `$OUT_DIR/bench_gen.o`, which
//! `src/object.rs` embeds. The product's programs are built by `crates/fanout-kernel`'s build
//! script; nothing of this crate ends up in the `udp-fanout` binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = dir.join("bpf/bench_gen.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("bench_gen.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} ({e}): install clang (scripts/install-deps.sh build) or set CLANG=/path/to/clang")
        });
    assert!(
        status.success(),
        "clang failed to compile {}",
        src.display()
    );
}
