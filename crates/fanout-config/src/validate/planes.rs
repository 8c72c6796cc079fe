//! The rules of each data plane: what the kernel plane cannot do (its programs rewrite headers
//! in place and have fixed-size maps) is rejected before anything starts, and what only the
//! kernel plane has is refused on a userspace listener.
//!
//! The sizes checked here are those of the static `downstreams:` list; a listener with a
//! `downstreams_file` (or admin API additions) is held to the same limits on the union of its
//! sources at run time ([`crate::downstreams_file::check_for`] checks the static list and the
//! file together).

use std::net::SocketAddr;

use fanout_core::select::Distribution;

use super::Errors;
use crate::model::{DownstreamConfig, Mode, kernel_limits};

/// What only makes sense for a kernel-plane listener is refused on a userspace one.
pub(super) fn userspace_rules(p: &str, has_fallback: bool, errs: &mut Errors) {
    if has_fallback {
        errs.add(
            format!("{p}.fallback"),
            "only kernel-plane listeners (mode: xdp or tc_ebpf) fall back",
        );
    }
}

/// What the kernel-plane rules look at.
pub(super) struct KernelListener<'a> {
    pub(super) p: &'a str,
    pub(super) mode: Mode,
    pub(super) bind: Option<SocketAddr>,
    pub(super) interface: Option<&'a str>,
    pub(super) distribution: Distribution,
    pub(super) downstreams: &'a [DownstreamConfig],
    pub(super) session: bool,
    /// How many kernel listeners so far, this one included.
    pub(super) count: usize,
}

/// The kernel plane rewrites headers in place and has fixed-size maps: what it cannot do is
/// rejected here, before anything starts.
pub(super) fn kernel_rules(k: &KernelListener<'_>, errs: &mut Errors) {
    kernel_addressing(k, errs);
    kernel_features(k, errs);
    kernel_capacity(k, errs);
}

/// An interface to attach to, an explicit port, and downstreams of the listener's address
/// family (the programs rewrite headers in place, they cannot translate).
fn kernel_addressing(k: &KernelListener<'_>, errs: &mut Errors) {
    let (p, mode) = (k.p, k.mode.as_str());
    if k.interface.is_none_or(str::is_empty) {
        errs.add(
            format!("{p}.interface"),
            format!("required with mode: {mode} (the network interface to attach to)"),
        );
    }
    let Some(b) = k.bind else { return };
    if b.port() == 0 {
        errs.add(
            format!("{p}.bind"),
            format!("mode: {mode} needs an explicit port"),
        );
    }
    for (j, d) in k.downstreams.iter().enumerate() {
        if d.addr.is_ipv4() != b.is_ipv4() {
            errs.add(
                format!("{p}.downstreams[{j}]"),
                format!("{} is not of the listener's address family; mode: {mode} rewrites headers in place and cannot translate between IPv4 and IPv6", d.addr),
            );
        }
    }
}

/// What the programs do not do: copy a packet in XDP, keep sessions.
fn kernel_features(k: &KernelListener<'_>, errs: &mut Errors) {
    let (p, mode) = (k.p, k.mode.as_str());
    if k.distribution == Distribution::Mirror && k.mode == Mode::Xdp {
        errs.add(
            format!("{p}.distribution"),
            "mirror needs mode: tc_ebpf (XDP cannot copy a packet) or mode: userspace",
        );
    }
    if k.session {
        errs.add(
            format!("{p}.session"),
            format!("sessions and the reply path are served by the userspace plane; use mode: userspace (mode: {mode} keeps no sessions)"),
        );
    }
}

/// The sizes of the kernel plane's maps: downstreams per listener, mirror copies, listeners.
fn kernel_capacity(k: &KernelListener<'_>, errs: &mut Errors) {
    let (p, mode) = (k.p, k.mode.as_str());
    if k.downstreams.len() > kernel_limits::DOWNSTREAMS {
        errs.add(
            format!("{p}.downstreams"),
            format!(
                "mode: {mode} takes at most {} downstreams",
                kernel_limits::DOWNSTREAMS
            ),
        );
    }
    if k.distribution == Distribution::Mirror && k.downstreams.len() > kernel_limits::MIRROR {
        errs.add(
            format!("{p}.downstreams"),
            format!(
                "a kernel mirror copies to at most {} downstreams",
                kernel_limits::MIRROR
            ),
        );
    }
    if k.count == kernel_limits::LISTENERS + 1 {
        errs.add(
            format!("{p}.mode"),
            format!(
                "the kernel plane serves at most {} listeners",
                kernel_limits::LISTENERS
            ),
        );
    }
}
