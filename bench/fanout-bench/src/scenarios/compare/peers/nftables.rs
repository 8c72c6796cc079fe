//! The `nftables` peer: the in-kernel reference. The router namespace of a
//! [`Topology`] forwards the clients' datagrams to the backends with nftables rules:
//! `dnat to numgen inc mod 2 map {…}` to balance (conntrack remembers each flow's choice, so
//! it balances flows, not datagrams, and relays the answers back by itself) and
//! `dup to <backend>` plus a DNAT to mirror (the duplicate keeps the original destination,
//! which the backend namespace owns on its loopback). The generator runs in the client
//! namespace and the sinks in the backend namespace, each created on a thread that joined
//! the namespace. There is no process to measure: the forwarding work is done by the kernel
//! in the sending and receiving threads' system calls and softirqs.

use std::net::SocketAddr;

use anyhow::Context as _;

use super::super::netns::{BACKEND_PORT, BACKENDS, Topology, VIP, VIP_PORT as PORT};
use super::super::rig::{Ctx, Proxy, Rig, start_sinks};
use super::super::scenario::{Shape, Spec};

/// The router's ruleset for `shape`; `backend_if` is its interface towards the backends.
pub(super) fn ruleset(shape: Shape, backend_if: &str) -> String {
    let [b1, b2] = BACKENDS;
    let (dup, nat) = match shape {
        Shape::Mirror => (
            format!(
                "  chain mirror {{\n    type filter hook prerouting priority raw; policy accept;\n    \
                 ip daddr {VIP} udp dport {PORT} dup to {b2} device \"{backend_if}\"\n  }}\n"
            ),
            format!("dnat to {b1}:{BACKEND_PORT}"),
        ),
        Shape::Balance | Shape::RequestReply => (
            String::new(),
            format!("dnat to numgen inc mod 2 map {{ 0 : {b1}, 1 : {b2} }} : {BACKEND_PORT}"),
        ),
    };
    format!(
        "table ip ufbench {{\n{dup}  chain balance {{\n    type nat hook prerouting priority dstnat; \
         policy accept;\n    ip daddr {VIP} udp dport {PORT} {nat}\n  }}\n}}\n"
    )
}

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let topo = Topology::new()?;
    let sink_addrs: Vec<SocketAddr> = match spec.shape {
        // The duplicate arrives addressed to the VIP.
        Shape::Mirror => vec![
            SocketAddr::from((BACKENDS[0], BACKEND_PORT)),
            SocketAddr::from((VIP, PORT)),
        ],
        Shape::Balance | Shape::RequestReply => BACKENDS
            .iter()
            .map(|&ip| SocketAddr::from((ip, BACKEND_PORT)))
            .collect(),
    };
    let echo = spec.shape == Shape::RequestReply;
    let sinks = start_sinks(&sink_addrs, echo, Some(&topo.backend()), ctx.pinning.sink)?;
    let rules = tempfile::NamedTempFile::new().context("creating the ruleset file")?;
    std::fs::write(rules.path(), ruleset(spec.shape, &topo.router_backend_if))?;
    topo.load_rules(rules.path())
        .context("loading the nftables rules")?;
    let mut rig = Rig::routed(Proxy::None, sinks, topo);
    rig.wait_ready(spec, ctx.startup)?;
    Ok(rig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_balance_or_mirror() {
        let lb = ruleset(Shape::Balance, "uxb1");
        fanout_testkit::assert_contains(
            &lb,
            &["numgen inc mod 2 map { 0 : 198.18.2.2, 1 : 198.18.2.3 } : 6000"],
        );
        assert!(!lb.contains("dup to"), "{lb}");
        let m = ruleset(Shape::Mirror, "uxb1");
        fanout_testkit::assert_contains(
            &m,
            &[
                "dup to 198.18.2.3 device \"uxb1\"",
                "dnat to 198.18.2.2:6000",
            ],
        );
    }
}
