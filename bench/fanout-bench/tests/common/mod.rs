//! Shared by the end-to-end tests that drive the real `udp-fanout` binary.

use std::path::PathBuf;

/// The `udp-fanout` binary where cargo puts it next to this crate's
/// (`target/<profile>/udp-fanout`); `None`, after saying how to build it, when it is not there.
pub fn udp_fanout() -> Option<PathBuf> {
    let found = (|| {
        let exe = std::env::current_exe().ok()?;
        let profile_dir = exe.parent()?.parent()?;
        let bin = profile_dir.join("udp-fanout");
        bin.is_file().then_some(bin)
    })();
    if found.is_none() {
        eprintln!(
            "skipped: no udp-fanout binary next to this test's target directory; build it with \
             `cargo build -p udp-fanout` (or test the whole workspace)"
        );
    }
    found
}
