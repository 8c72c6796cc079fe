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

use std::path::PathBuf;

include!("build/clang.rs");

/// The entry files of the data plane, in `bpf/`: one object with the XDP and TC programs.
const PROGRAMS: &[&str] = &["uf_lb.c"];

fn main() {
    let root = PathBuf::from(cargo_env("CARGO_MANIFEST_DIR")).join("../..");
    let bpf_dir = root.join("bpf");
    let include = bpf_dir.join("include");
    let out = PathBuf::from(cargo_env("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed=build/clang.rs");

    for name in PROGRAMS {
        let src = bpf_dir.join(name);
        let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("prog");
        compile_bpf(&src, &[&include], &out.join(format!("{stem}.o")));
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
