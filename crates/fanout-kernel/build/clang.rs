// Compiling one BPF C file with clang: shared by the build scripts of `fanout-kernel` (the
// product's programs) and `bench/fanout-netbench` (the benchmark's own), which `include!` it,
// so both build with the same flags and the same hint when clang is missing. A build script
// cannot depend on a library crate of its own workspace without it becoming a
// build-dependency crate, and a file of two functions does not warrant one.

/// Compiles `src` for the `bpf` target into `obj`, with `includes` on the include path.
/// `CLANG` names the compiler (default `clang`, from apt: `scripts/install-deps.sh build`).
fn compile_bpf(src: &std::path::Path, includes: &[&std::path::Path], obj: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", src.display());
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = std::process::Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .args(includes.iter().map(|i| format!("-I{}", i.display())))
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} ({e}): install clang (scripts/install-deps.sh build) or set CLANG=/path/to/clang")
        });
    assert!(status.success(), "clang failed to compile {}", src.display());
}

/// An environment variable Cargo sets for build scripts.
fn cargo_env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set by cargo"))
}
