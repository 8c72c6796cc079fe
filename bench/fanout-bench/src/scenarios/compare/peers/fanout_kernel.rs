//! The `udp-fanout-kernel` peer: udp-fanout's kernel plane in the in-kernel peers' topology.
//!
//! nftables (the in-kernel reference) can only be measured where packets are routed, so it
//! runs in a three-namespace [`Topology`]; udp-fanout's kernel plane runs in exactly the same
//! one, in the router namespace where nftables' rules would be, so the two in-kernel rows of a
//! table compare like with like. The daemon is the real binary with `mode: tc_ebpf` on the
//! router's client-facing veth: the TC program rewrites each datagram's destination to a
//! backend and redirects it (`bpf_redirect_neigh`), or, for a mirror, sends one
//! `bpf_clone_redirect` copy per backend. TC rather than XDP because the veths carry
//! 64,000-byte datagrams in (d), larger than a page, which an XDP program without
//! multi-buffer support cannot be attached for; the balance scenarios' XDP figures are in
//! scenario (f).
//!
//! The generator and sinks are placed as for nftables (client and backend namespaces). The
//! daemon's own CPU is not a measure of its cost here: the work is done in the kernel, in the
//! sending and receiving threads' softirqs, as for nftables. There is no reply path: the
//! kernel plane keeps no sessions (replies would go from the backends straight to the client,
//! with the backend's address), so (e) does not apply.

use std::net::SocketAddr;
use std::time::Duration;

use super::super::netns::{BACKEND_PORT, BACKENDS, Topology, VIP, VIP_PORT as PORT};
use super::super::rig::{Ctx, Proxy, Rig, start_sinks};
use super::super::scenario::{Shape, Spec};
use fanout_testkit::daemon::Daemon;

/// The daemon's config: the listener on the VIP, served by TC on `interface`.
pub(super) fn yaml(shape: Shape, interface: &str) -> String {
    let distribution = match shape {
        Shape::Mirror => "mirror",
        Shape::Balance | Shape::RequestReply => "round_robin",
    };
    let downstreams: Vec<String> = BACKENDS
        .iter()
        .map(|ip| format!("'{ip}:{BACKEND_PORT}'"))
        .collect();
    format!(
        "listeners:\n  - name: bench\n    bind: '{VIP}:{PORT}'\n    mode: tc_ebpf\n    \
         interface: {interface}\n    distribution: {distribution}\n    downstreams: [{}]\n\
         metrics: {{bind: '127.0.0.1:0'}}\n",
        downstreams.join(", ")
    )
}

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let topo = Topology::new()?;
    let sink_addrs: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|&ip| SocketAddr::from((ip, BACKEND_PORT)))
        .collect();
    let sinks = start_sinks(&sink_addrs, false, Some(&topo.backend()), ctx.pinning.sink)?;
    let daemon = Daemon::start_in(
        ctx.udp_fanout,
        &yaml(spec.shape, &topo.router_client_if),
        ctx.startup.max(Duration::from_secs(10)),
        Some(&topo.router()),
    )?;
    let mut rig = Rig::routed(Proxy::Fanout(Box::new(daemon)), sinks, topo);
    rig.wait_ready(spec, ctx.startup.max(Duration::from_secs(2)))?;
    Ok(rig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_put_the_listener_on_tc() {
        let m = yaml(Shape::Mirror, "uxr1");
        fanout_testkit::assert_contains(
            &m,
            &[
                "mode: tc_ebpf",
                "interface: uxr1",
                "distribution: mirror",
                "downstreams: ['198.18.2.2:6000', '198.18.2.3:6000']",
            ],
        );
        assert!(yaml(Shape::Balance, "x").contains("distribution: round_robin"));
    }
}
