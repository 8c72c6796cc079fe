//! nginx and Envoy in scenario (f)'s load balancer namespace: the rig's
//! [`StartExternal`](fanout_ebpf::netbench::StartExternal).
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
//! its two backends. The processes run under `ip netns exec` and `timeout` with a bounded
//! lifetime ([`Procs`]) and are stopped by PID when the rig drops the handle.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fanout_ebpf::netbench::{External, ExternalSpec, Peer};

use super::super::peers::{PeerId, PeerStatus, check, envoy, nginx};
use super::super::procs::Procs;

/// How long a proxy started for one window may live at most (it is stopped long before).
const LIFETIME: Duration = Duration::from_secs(300);

/// Listening sockets per proxy: one per worker (nginx `reuseport` with `worker_processes
/// auto`, Envoy `--concurrency 2`).
fn workers(p: Peer) -> usize {
    match p {
        Peer::NginxSession | Peer::NginxDatagram => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(1),
        Peer::EnvoySession | Peer::EnvoyPacket => 2,
    }
}

/// The loopback comparison's name for a peer.
pub(crate) fn peer_id(p: Peer) -> PeerId {
    match p {
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
        Peer::NginxSession | Peer::NginxDatagram => {
            let dir = procs.dir().to_path_buf();
            let session = peer == Peer::NginxSession;
            let conf = procs.write("nginx.conf", &nginx::conf(&dir, listen, &backends, session))?;
            let d = dir.to_string_lossy().into_owned();
            let args = [
                "-e".to_owned(),
                format!("{d}/error.log"),
                "-g".to_owned(),
                "daemon off;".to_owned(),
                "-c".to_owned(),
                conf.to_string_lossy().into_owned(),
                "-p".to_owned(),
                d,
            ];
            procs.spawn_in(ns, "nginx", "nginx", &args)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_has_its_loopback_name() {
        for p in Peer::ALL {
            assert_eq!(peer_id(p).id(), p.id());
            assert!(workers(p) >= 1);
        }
    }
}
