//! Dropping what the daemon no longer needs once everything is bound and attached.
//!
//! Started as root (needed to load and attach BPF programs, force large socket buffers, raise
//! file limits), udp-fanout keeps only the capabilities it may still use: `CAP_BPF` (updating
//! its maps when downstreams change), `CAP_NET_ADMIN` (the kernel plane's netlink and socket
//! options) and `CAP_NET_BIND_SERVICE`. Everything else (`CAP_SYS_ADMIN`, `CAP_DAC_OVERRIDE`,
//! `CAP_SYS_PTRACE`, ...) is removed from the effective, permitted, inheritable and bounding
//! sets, so a compromised process cannot regain it, even through `execve`.
//!
//! One more is kept when a listener checks its downstreams by ICMP echo: `CAP_NET_RAW`. The
//! checker opens its ICMP socket at the first probe, after this drop, and where
//! `net.ipv4.ping_group_range` does not admit the process (the usual default, `1 0`) only a
//! raw socket works. A reload that adds ICMP checks later cannot get it back (restart).

use caps::{CapSet, Capability, CapsHashSet};
use fanout_config::{Config, HealthProtocol};

/// Capabilities kept after start-up.
pub const KEPT: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_BIND_SERVICE,
];

/// Drops every capability but [`KEPT`] (and `CAP_NET_RAW` when `cfg` has ICMP health checks).
/// Does nothing (and says so at debug level) when the process has no capabilities to drop.
pub fn drop_unneeded(cfg: &Config) {
    let permitted = match caps::read(None, CapSet::Permitted) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read capabilities; nothing dropped");
            return;
        }
    };
    if permitted.is_empty() {
        return;
    }
    let icmp = cfg
        .listeners
        .iter()
        .filter_map(|l| l.health.as_ref())
        .any(|h| h.protocol == HealthProtocol::Icmp);
    let keep: CapsHashSet = KEPT
        .iter()
        .copied()
        .chain(icmp.then_some(Capability::CAP_NET_RAW))
        .filter(|c| permitted.contains(c))
        .collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            // Fails without CAP_SETPCAP or for capabilities the kernel does not know: harmless.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    let result = caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .and_then(|()| caps::set(None, CapSet::Effective, &keep))
        .and_then(|()| caps::set(None, CapSet::Permitted, &keep));
    match result {
        Ok(()) => {
            let mut kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
            kept.sort();
            tracing::info!(kept = %kept.join(","), dropped = permitted.len() - keep.len(), "dropped unneeded capabilities");
        }
        Err(e) => tracing::warn!(error = %e, "could not drop capabilities"),
    }
}
