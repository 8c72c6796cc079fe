//! The socat peers: a plain relay, and the broadcast tee that was this project's seed design
//! for mirroring.
//!
//! socat cannot balance: `socat -u UDP4-RECV:port UDP4-SENDTO:sink` relays one listener to one
//! downstream, so in the balancing scenarios everything goes to the first sink (the table says
//! so); it shows what the simplest userspace relay costs. For the reply path,
//! `UDP4-RECVFROM:port,fork` forks a process per request that relays the request and its
//! answer (each ending 0.1 s after its last datagram; socat refuses `max-children` there, so
//! the number alive is bounded only by how fast socat forks).
//!
//! The tee (`udp-tee`) receives on the listener and re-sends every datagram to the loopback
//! broadcast address 127.255.255.255 on a second port, where one `socat … UDP4-RECV:P,
//! reuseaddr` per sink (all bound to the same port) each get a copy and relay it to their sink.
//!
//! All socat processes copy through a 65,536-byte buffer (`-b`; the default of 8,192 would
//! cut the 64,000-byte datagrams of scenario d) and get 8 MiB receive buffers
//! (`SO_RCVBUFFORCE`, level 1 option 33, set before bind with `setsockopt-listen`), as
//! udp-fanout has.
//!
//! The tee's arguments ([`tee_in`], [`tee_out`]) are shared with scenario (f), which runs the
//! same design in its load balancer's namespace (`kernel::proxies`), so that both comparisons
//! measure the same thing.

use std::net::UdpSocket;

use anyhow::Context as _;

use super::super::procs::{self, Procs};
use super::super::rig::{Ctx, Rig, free_port, loopback_sinks};
use super::super::scenario::{Shape, Spec};

const BUF: &str = "-b65536";
const RCVBUF: &str = "setsockopt-listen=1:33:x00008000";

/// Arguments of a one-way relay from `listen` (a socat address) to `to`.
fn relay(listen: &str, to: &str) -> Vec<String> {
    vec![
        BUF.into(),
        "-u".into(),
        format!("{listen},{RCVBUF}"),
        format!("UDP4-SENDTO:{to}"),
    ]
}

/// Where the tee re-sends: loopback's broadcast address (a network namespace's `lo` has it
/// too).
pub(crate) const TEE_BROADCAST: &str = "127.255.255.255";

/// The tee's entry: receives on `listen` (a socat `UDP4-RECV:…` address) and re-sends every
/// datagram to [`TEE_BROADCAST`] on port `fan`.
pub(crate) fn tee_in(listen: &str, fan: u16) -> Vec<String> {
    relay(listen, &format!("{TEE_BROADCAST}:{fan},broadcast"))
}

/// One of the tee's outputs: receives the broadcast on port `fan` (every output binds it,
/// with `reuseaddr`, so each gets a copy) and relays it to `to`.
pub(crate) fn tee_out(fan: u16, to: &str) -> Vec<String> {
    relay(&format!("UDP4-RECV:{fan},reuseaddr"), to)
}

pub(super) fn start_relay(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let sink = sinks.local_addrs()[0];
    let port = free_port()?;
    let mut p = Procs::new("socat", ctx.lifetime)?;
    let args = if spec.shape == Shape::RequestReply {
        vec![
            BUF.into(),
            "-T0.1".into(),
            // `max-children` and the PREBIND socket option are refused by RECVFROM's forked
            // children (each exits with "option(s) could not be used"); `so-rcvbuf` works
            // (capped at net.core.rmem_max).
            format!("UDP4-RECVFROM:{port},bind=127.0.0.1,fork,so-rcvbuf=8388608"),
            format!("UDP4-SENDTO:{sink}"),
        ]
    } else {
        relay(
            &format!("UDP4-RECV:{port},bind=127.0.0.1"),
            &sink.to_string(),
        )
    };
    p.spawn("socat", "socat", &args)?;
    Rig::procs_on_loopback(p, sinks, port, spec, ctx)
}

pub(super) fn start_tee(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let fan = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .context("finding a free port for the broadcast")?
        .port();
    let mut p = Procs::new("udp-tee", ctx.lifetime)?;
    for (i, sink) in sinks.local_addrs().iter().enumerate() {
        let args = tee_out(fan, &sink.to_string());
        p.spawn(&format!("tee-out{i}"), "socat", &args)?;
    }
    procs::wait_udp_bound(fan, sinks.local_addrs().len(), ctx.startup)?;
    let port = free_port()?;
    let args = tee_in(&format!("UDP4-RECV:{port},bind=127.0.0.1"), fan);
    p.spawn("tee-in", "socat", &args)?;
    Rig::procs_on_loopback(p, sinks, port, spec, ctx)
}
