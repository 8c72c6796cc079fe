//! Third-party userspace proxies (nginx, Envoy, and the socat broadcast tee `udp-tee` that was
//! this project's seed design for mirroring) as modes of the rig, so that udp-fanout's
//! userspace plane can be compared with them where the proxy, not the generator, is the
//! limit: the in-kernel generator offers several million datagrams per second, which no
//! userspace proxy carries on this kind of machine, while a userspace sender on loopback (the
//! other scenarios of `fanout-bench compare`) tops out near what the proxies carry.
//!
//! This crate knows what each peer is ([`Peer`]) and where it must listen and send
//! ([`ExternalSpec`]), but not how to configure or start it: that is the caller's
//! ([`StartExternal`], as [`crate::StartUserspace`] is for the userspace plane), which writes
//! the proxy's config, starts its processes in the load balancer's namespace and hands back an
//! [`External`] that stops them by PID when dropped. The rig then waits until the proxy has
//! bound its listening sockets in that namespace ([`wait_bound`]) and carries traffic (a
//! startup probe in [`crate::measure`]), and adds the proxy processes' CPU time to the
//! window's accounting ([`crate::cpu`]). A proxy made of several processes that talk to each
//! other (the tee) can ask whether its inner sockets are bound yet with [`udp_bound_in`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::modes::Traffic;
use crate::topology::{BACKEND_PORT, BACKENDS, Netns, PORT, VIP, backend_ip};

/// A third-party proxy, in one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The seed's mirror: socat re-sending every datagram to the loopback broadcast address,
    /// one socat per backend receiving that and relaying it (mirror only).
    UdpTee,
    /// nginx stream UDP proxy, session mode (the default `proxy_responses`).
    NginxSession,
    /// nginx stream UDP proxy, per datagram (`proxy_responses 0`).
    NginxDatagram,
    /// Envoy `udp_proxy`, per-session load balancing (the default).
    EnvoySession,
    /// Envoy `udp_proxy`, `use_per_packet_load_balancing: true`.
    EnvoyPacket,
}

impl Peer {
    /// Every peer, in table order.
    pub const ALL: [Peer; 5] = [
        Peer::UdpTee,
        Peer::NginxSession,
        Peer::NginxDatagram,
        Peer::EnvoySession,
        Peer::EnvoyPacket,
    ];

    /// A short identifier (as `fanout-bench compare --peers` names it).
    pub fn id(self) -> &'static str {
        match self {
            Peer::UdpTee => "udp-tee",
            Peer::NginxSession => "nginx-session",
            Peer::NginxDatagram => "nginx-datagram",
            Peer::EnvoySession => "envoy-session",
            Peer::EnvoyPacket => "envoy-packet",
        }
    }

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::UdpTee => "udp-tee (socat broadcast)",
            Peer::NginxSession => "nginx, session mode",
            Peer::NginxDatagram => "nginx, per-datagram",
            Peer::EnvoySession => "Envoy, per-session",
            Peer::EnvoyPacket => "Envoy, per-packet",
        }
    }

    /// Whether a client's datagrams stick to the backend its first one chose.
    pub fn per_session(self) -> bool {
        matches!(self, Peer::NginxSession | Peer::EnvoySession)
    }
}

/// Where a proxy runs, listens and sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSpec {
    /// The load balancer's namespace (under /var/run/netns): the proxy runs in it.
    pub netns: String,
    /// The listener: VIP:PORT.
    pub listen: SocketAddrV4,
    /// The backends, to be balanced round-robin (or each sent a copy, for a mirror).
    pub backends: Vec<SocketAddrV4>,
    /// The traffic it will carry.
    pub traffic: Traffic,
}

impl ExternalSpec {
    /// The spec for the rig's load balancer namespace `netns`.
    pub fn new(netns: &str, traffic: Traffic) -> ExternalSpec {
        ExternalSpec {
            netns: netns.to_owned(),
            listen: SocketAddrV4::new(Ipv4Addr::from(VIP), PORT),
            backends: (0..BACKENDS)
                .map(|k| SocketAddrV4::new(Ipv4Addr::from(backend_ip(k)), BACKEND_PORT))
                .collect(),
            traffic,
        }
    }
}

/// A running proxy the caller started. Dropping it stops its processes (by PID) and waits
/// for them.
pub trait External: Send {
    /// The PIDs whose CPU time is the proxy's (every process of it, not a wrapper that only
    /// waits).
    fn pids(&self) -> Vec<u32>;
    /// Listening sockets it binds on the listener's port (one per worker with `reuseport`).
    fn sockets(&self) -> usize;
    /// Fails (with its log) if a process of it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()>;
}

/// Starts a peer as `spec` says, in `spec.netns`.
pub type StartExternal = fn(Peer, &ExternalSpec) -> anyhow::Result<Box<dyn External>>;

/// How long a proxy may take to bind its port.
pub const STARTUP: Duration = Duration::from_secs(15);

use fanout_testkit::procfs::udp_bound as bound;

/// UDP sockets bound to `port` in the network namespace `netns` (under /var/run/netns),
/// counted from a short-lived thread that joins it: for a caller that starts a proxy there
/// and must wait for its inner sockets (the tee's per-backend relays) before going on.
pub fn udp_bound_in(netns: &str, port: u16) -> anyhow::Result<usize> {
    let name = netns.to_owned();
    std::thread::spawn(move || {
        fanout_testkit::netns::join(&name)?;
        bound(port)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("counting UDP sockets in {netns}: the thread panicked"))?
}

/// Waits until `ext` has bound its sockets on the listener's port in `ns`, failing early if
/// it exits.
pub(crate) fn wait_bound(ns: &Netns, ext: &mut dyn External) -> anyhow::Result<()> {
    let end = Instant::now() + STARTUP;
    let want = ext.sockets().max(1);
    loop {
        ext.check_alive()?;
        let n = ns.enter(|| bound(PORT))??;
        if n >= want {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("{n} of {want} sockets bound to UDP port {PORT} after {STARTUP:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime + cutime + cstime of `pids` (their reaped children included), ticks.
pub(crate) fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| fanout_testkit::procfs::ticks(p))
        .map(|t| t.own + t.children)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_names_the_vip_and_both_backends() {
        let s = ExternalSpec::new("ns", Traffic::Balance);
        assert_eq!(s.listen.to_string(), "10.77.0.1:5514");
        assert_eq!(s.backends.len(), BACKENDS);
        assert_eq!(s.backends[1].to_string(), "10.77.2.2:7000");
        assert!(Peer::NginxSession.per_session() && !Peer::EnvoyPacket.per_session());
        assert!(!Peer::UdpTee.per_session());
        assert_eq!(Peer::ALL.len(), 5);
        assert!(ticks_of(&[std::process::id()]) > 0 || ticks_of(&[]) == 0);
    }
}
