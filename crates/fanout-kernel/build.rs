//! Builds the kernel plane's BPF programs and the Rust view of their map layouts.
//!
//! - The product's programs, [`PROGRAMS`] in `bpf/`, are compiled with clang for the `bpf`
//!   target into `$OUT_DIR/<name>.o`, embedded by `src/lib.rs` with `include_bytes!`. Only
//!   these: the benchmark's own BPF object is built by `bench/fanout-netbench`.
//! - `bpf/include/uf_structs.h` (the one definition of every map key and value) goes through
//!   bindgen into `$OUT_DIR/uf_structs.rs`, so Rust and C share layouts by construction.
//!
//! clang comes from apt (`scripts/install-deps.sh` installs it); a missing clang is reported
//! with that hint rather than a bare "No such file".

use std::path::{Path, PathBuf};
use std::process::Command;

/// The entry files of the data plane, in `bpf/`: one object with the XDP and TC programs.
const PROGRAMS: &[&str] = &["uf_lb.c"];

fn main() {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR")).join("../..");
    let bpf_dir = root.join("bpf");
    let include = bpf_dir.join("include");
    let out = PathBuf::from(env("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    for name in PROGRAMS {
        let src = bpf_dir.join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&clang, &src, &include, &out);
    }
    for h in std::fs::read_dir(&include).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", h.path().display());
    }

    let bindings = bindgen::Builder::default()
        .header(include.join("uf_structs.h").to_string_lossy())
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg("-I/usr/include/x86_64-linux-gnu")
        .allowlist_type("uf_.*")
        .allowlist_var("UF_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .layout_tests(true)
        .use_core()
        .generate()
        .unwrap_or_else(|e| {
            panic!("bindgen on uf_structs.h failed: {e} (is libclang installed? apt install clang)")
        });
    bindings
        .write_to_file(out.join("uf_structs.rs"))
        .unwrap_or_else(|e| panic!("cannot write bindings: {e}"));
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set by cargo"))
}

fn compile(clang: &str, src: &Path, include: &Path, out: &Path) {
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("prog");
    let obj = out.join(format!("{stem}.o"));
    let status = Command::new(clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .arg(format!("-I{}", include.display()))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&obj)
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
