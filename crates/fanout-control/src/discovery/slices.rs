//! From a Service's EndpointSlices to a listener's downstreams: pure, so every rule the
//! contract states (DESIGN.md 3b, "Kubernetes") is a unit test.
//!
//! - **Merge**: a Service has one slice per 100 endpoints (by default) and per address family,
//!   and an endpoint may move between slices; every slice counts, and an address listed twice
//!   is one downstream (active wins over draining, as a slice being replaced may still say
//!   terminating for a pod another slice already says is ready again).
//! - **Family**: only slices of the listener's family (`IPv4` or `IPv6`); `FQDN` slices are
//!   skipped, as a proxy forwarding by address cannot use them.
//! - **Port**: by name, the slice port of that name (named like the Service port); by number,
//!   the endpoint port itself, which the slice must list (or list no ports at all, as a
//!   headless Service without ports does, or a port with no number, meaning "all ports").
//!   A slice without the port contributes nothing and is reported, so a wrong name shows.
//! - **Conditions**: not terminating and ready (absent counts as ready): active; terminating
//!   and serving (absent counts as serving, as the API documents): draining; anything else
//!   is left out. The first address of an endpoint is used (the API says they are fungible).
//! - **Same node** (`prefer_same_node`): while this node has an active endpoint, only this
//!   node's endpoints are served (like `internalTrafficPolicy: Local`, but falling back to
//!   every node rather than dropping when none is local).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use fanout_config::ServicePort;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

/// What to select from the slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The port, by name or number.
    pub port: ServicePort,
    /// The listener's family: IPv6 slices when true, IPv4 ones when false.
    pub v6: bool,
    /// This node, when only its endpoints are preferred.
    pub prefer_node: Option<String>,
}

/// The selection: downstreams with whether each is draining, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    /// Each downstream and whether it is terminating (draining).
    pub endpoints: Vec<(SocketAddr, bool)>,
    /// Slices of the listener's family that do not have the port (by name), for the logs.
    pub without_port: Vec<String>,
    /// Whether `prefer_node` narrowed the set to this node's endpoints.
    pub same_node_only: bool,
}

/// A kept endpoint: where, draining or not, and on which node.
struct Kept<'a> {
    addr: SocketAddr,
    draining: bool,
    node: Option<&'a str>,
}

/// Selects the downstreams of `slices` by `sel`.
pub fn select<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, sel: &Selector) -> Selected {
    let family = if sel.v6 { "IPv6" } else { "IPv4" };
    let mut out = Selected::default();
    let mut kept: Vec<Kept<'a>> = Vec::new();
    for s in slices {
        if s.address_type != family {
            continue;
        }
        let Some(port) = slice_port(s, &sel.port) else {
            out.without_port
                .push(s.metadata.name.clone().unwrap_or_default());
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            if let Some((ip, draining)) = usable(e)
                && ip.is_ipv6() == sel.v6
            {
                kept.push(Kept {
                    addr: SocketAddr::new(ip, port),
                    draining,
                    node: e.node_name.as_deref(),
                });
            }
        }
    }
    if let Some(node) = sel.prefer_node.as_deref()
        && kept.iter().any(|k| !k.draining && k.node == Some(node))
    {
        kept.retain(|k| k.node == Some(node));
        out.same_node_only = true;
    }
    let mut by_addr: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    for k in kept {
        by_addr
            .entry(k.addr)
            .and_modify(|d| *d &= k.draining)
            .or_insert(k.draining);
    }
    out.endpoints = by_addr.into_iter().collect();
    out
}

/// The port number `want` names in slice `s`, if it has it.
fn slice_port(s: &EndpointSlice, want: &ServicePort) -> Option<u16> {
    let ports = s.ports.as_deref().unwrap_or_default();
    match want {
        ServicePort::Name(name) => ports
            .iter()
            .filter(|p| p.name.as_deref() == Some(name.as_str()))
            .find_map(|p| p.port.and_then(|n| u16::try_from(n).ok())),
        ServicePort::Number(n) => {
            let all_ports = ports.is_empty() || ports.iter().any(|p| p.port.is_none());
            let listed = ports.iter().any(|p| p.port == Some(i32::from(*n)));
            (all_ports || listed).then_some(*n)
        }
    }
}

/// The endpoint's address and whether it is draining, or `None` if it is not to be served.
fn usable(e: &Endpoint) -> Option<(IpAddr, bool)> {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    let draining = match (terminating, ready, serving) {
        (false, true, _) => false,
        (true, _, true) => true,
        _ => return None,
    };
    let ip = e.addresses.first()?.parse::<IpAddr>().ok()?;
    Some((ip, draining))
}

#[cfg(test)]
mod tests;
