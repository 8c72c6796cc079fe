//! The `direct` peer: no proxy at all, the generator sends straight to the sinks. It is the
//! ceiling every proxy is measured against in the same run: what the generator and the sinks
//! manage on this machine by themselves. For a balancer's scenarios the flows are split over
//! the two sinks, for a mirror every datagram is sent to both, for request/response the echo
//! backends answer the clients themselves.

use super::super::rig::{Ctx, Proxy, Rig, loopback_sinks};
use super::super::scenario::{Shape, Spec};

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let addrs = sinks.local_addrs().to_vec();
    let mut rig = Rig::loopback(Proxy::None, sinks, addrs[0], ctx);
    rig.placement.extra_targets = addrs[1..].to_vec();
    rig.placement.copy = spec.shape == Shape::Mirror;
    Ok(rig)
}
