//! nginx, Envoy and the udp-tee in scenario (f)'s load balancer namespace: the rig's
//! [`StartExternal`](fanout_netbench::StartExternal).
//!
//! Why: in (a) the one-thread userspace generator on loopback tops out near what udp-fanout
//! carries, so its ratios to nginx and Envoy are lower bounds. (f)'s in-kernel generator
//! offers millions of datagrams per second, so there the proxy is the bottleneck, and the
//! same windows compare udp-fanout's userspace plane with them.
//!
//! The configs are the ones the loopback comparison writes ([`nginx::conf`],
//! [`envoy::bootstrap`]): nginx's stream module in session mode or with `proxy_responses 0`,
//! `worker_processes auto` and `reuseport`; Envoy's `udp_proxy` per session or per packet,
//! `--concurrency 2`; both listening on the rig's VIP:PORT and balancing round-robin over
//! its two backends. The udp-tee (mirror only) is the loopback comparison's socat broadcast
//! tee ([`socat::tee_in`], [`socat::tee_out`]) with the namespace's addresses: one socat
//! per backend bound to [`TEE_PORT`] with `reuseaddr`, relaying to that backend, and, once
//! they are bound, one socat on VIP:PORT re-sending to 127.255.255.255:[`TEE_PORT`], the
//! broadcast address of the namespace's own `lo` (which a new namespace has, like the host's).
//! The processes run under `ip netns exec` and `timeout` with a bounded lifetime ([`Procs`])
//! and are stopped by PID when the rig drops the handle.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use fanout_netbench::external::{STARTUP, udp_bound_in};
use fanout_netbench::{External, ExternalSpec, Peer};

use super::super::peers::{PeerId, PeerStatus, check, envoy, nginx, socat};
use super::super::procs::Procs;

/// How long a proxy started for one window may live at most (it is stopped long before).
const LIFETIME: Duration = Duration::from_secs(300);

/// The port the udp-tee broadcasts to inside the namespace (which has nothing else bound).
pub(crate) const TEE_PORT: u16 = 5515;

/// Listening sockets per proxy: one per worker (nginx `reuseport` with `worker_processes
/// auto`, Envoy `--concurrency 2`).
fn workers(p: Peer) -> usize {
    match p {
        // Only the tee's entry binds the listener's port.
        Peer::UdpTee => 1,
        Peer::NginxSession | Peer::NginxDatagram => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(1),
        Peer::EnvoySession | Peer::EnvoyPacket => 2,
    }
}

/// The loopback comparison's name for a peer.
pub(crate) fn peer_id(p: Peer) -> PeerId {
    match p {
        Peer::UdpTee => PeerId::UdpTee,
        Peer::NginxSession => PeerId::NginxSession,
        Peer::NginxDatagram => PeerId::NginxDatagram,
        Peer::EnvoySession => PeerId::EnvoySession,
        Peer::EnvoyPacket => PeerId::EnvoyPacket,
    }
}

/// Whether each peer is installed (and its version).
pub(crate) fn statuses() -> Vec<(Peer, PeerStatus)> {
    let ids: Vec<PeerId> = Peer::ALL.into_iter().map(peer_id).collect();
    Peer::ALL
        .into_iter()
        .zip(check(&ids, Path::new("")))
        .collect()
}

/// A proxy's processes; dropping stops them ([`Procs`]'s `Drop`).
struct Running {
    procs: Procs,
    sockets: usize,
}

impl External for Running {
    fn pids(&self) -> Vec<u32> {
        self.procs.pids()
    }
    fn sockets(&self) -> usize {
        self.sockets
    }
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.check_alive()
    }
}

/// Starts `peer` in `spec.netns`.
pub(crate) fn start(peer: Peer, spec: &ExternalSpec) -> anyhow::Result<Box<dyn External>> {
    let listen = SocketAddr::V4(spec.listen);
    let backends: Vec<SocketAddr> = spec.backends.iter().copied().map(SocketAddr::V4).collect();
    let ns = Some(spec.netns.as_str());
    let mut procs = Procs::new(peer.id(), LIFETIME)?;
    match peer {
        Peer::UdpTee => start_tee(&mut procs, spec)?,
        Peer::NginxSession | Peer::NginxDatagram => {
            let dir = procs.dir().to_path_buf();
            let session = peer == Peer::NginxSession;
            let conf = procs.write("nginx.conf", &nginx::conf(&dir, listen, &backends, session))?;
            procs.spawn_in(ns, "nginx", "nginx", &nginx::args(&dir, &conf))?;
        }
        Peer::EnvoySession | Peer::EnvoyPacket => {
            let per_packet = peer == Peer::EnvoyPacket;
            let conf = procs.write(
                "envoy.yaml",
                &envoy::bootstrap(listen, &backends, per_packet),
            )?;
            procs.spawn_in(ns, "envoy", "envoy", &envoy::args(&conf))?;
        }
    }
    Ok(Box::new(Running {
        procs,
        sockets: workers(peer),
    }))
}

/// The udp-tee: one output per backend, waited for until each has bound [`TEE_PORT`] (a
/// datagram broadcast before would reach only some), then the entry on the listener.
fn start_tee(procs: &mut Procs, spec: &ExternalSpec) -> anyhow::Result<()> {
    let ns = Some(spec.netns.as_str());
    for (i, b) in spec.backends.iter().enumerate() {
        let args = socat::tee_out(TEE_PORT, &b.to_string());
        procs.spawn_in(ns, &format!("tee-out{i}"), "socat", &args)?;
    }
    let end = Instant::now() + STARTUP;
    loop {
        procs.check_alive()?;
        let n = udp_bound_in(&spec.netns, TEE_PORT)?;
        if n >= spec.backends.len() {
            break;
        }
        if Instant::now() >= end {
            bail!(
                "{n} of {} tee outputs bound to UDP port {TEE_PORT} after {STARTUP:?}",
                spec.backends.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let listen = format!("UDP4-RECV:{},bind={}", spec.listen.port(), spec.listen.ip());
    procs.spawn_in(ns, "tee-in", "socat", &socat::tee_in(&listen, TEE_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_has_its_loopback_name() {
        for p in Peer::ALL {
            assert_eq!(peer_id(p).id(), p.id());
            assert!(workers(p) >= 1);
        }
        assert_ne!(TEE_PORT, fanout_netbench::topology::PORT);
    }
}
