//! The layout rules that the folder tree promises (docs/ARCHITECTURE.md), checked so they
//! stay true: the binary links no tooling crate from `bench/`, and the pure crates stay free
//! of I/O dependencies.
//!
//! It asks Cargo itself (`cargo tree`, offline: the lock file already holds everything), so a
//! new dependency edge that breaks a rule fails here, in CI, rather than in review.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::process::Command;

/// `cargo tree` of `package`, normal (non-dev, non-build) dependencies only.
fn tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn crates_in(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn the_binary_links_no_tooling() {
    let t = tree("udp-fanout");
    let names = crates_in(&t);
    assert!(names.contains(&"fanout-userspace") && names.contains(&"fanout-kernel"));
    for tooling in ["fanout-testkit", "fanout-bench", "fanout-netbench"] {
        assert!(
            !names.contains(&tooling),
            "udp-fanout links {tooling}:\n{t}"
        );
    }
}

#[test]
fn the_core_does_no_io() {
    let t = tree("fanout-core");
    for io in ["tokio", "mio", "socket2", "libc", "nix", "aya"] {
        assert!(
            !crates_in(&t).contains(&io),
            "fanout-core depends on {io}:\n{t}"
        );
    }
}
