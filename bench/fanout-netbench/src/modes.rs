//! What runs in the load balancer's namespace during a window ([`Mode`]), and the traffic it
//! is given ([`Traffic`]).
//!
//! Modes:
//! - `idle`: nothing runs; the machine's background CPU, subtracted from every other mode.
//! - `generator only`: the frames are counted and dropped by XDP on the load balancer's
//!   ingress: what generating them (and receiving them on the veth) costs, included in every
//!   mode below.
//! - `plain forwarding`: the load balancer only routes (`ip_forward=1`); the client sends to
//!   the two backends' addresses directly, alternating. No udp-fanout.
//! - `kernel plane xdp` / `kernel plane tc_ebpf`: udp-fanout's [`KernelPlane`], started in this
//!   process from the load balancer's namespace.
//! - `userspace plane`: udp-fanout's userspace plane, same listener, default settings (one
//!   worker per CPU), started in this process from the load balancer's namespace.
//! - `udp-tee` / `nginx …` / `Envoy …` ([`Mode::Peer`]): a third-party userspace proxy on the
//!   same listener, started by the caller in the load balancer's namespace
//!   ([`crate::external`]), for comparing userspace proxies where the proxy, not the
//!   generator, is the limit. nginx and Envoy cannot mirror; the tee (the seed's socat
//!   broadcast design) can only mirror.
//!
//! Traffic: 64-byte datagrams to the listener, balanced round-robin over many flows, or
//! mirrored to both backends, or one heavy flow (a single 5-tuple). For a mirror, plain
//! forwarding is the client sending each datagram to both backends itself (two frames per
//! datagram); XDP cannot copy a frame, so the XDP plane has no mirror.

use anyhow::{Context as _, anyhow};
use fanout_core::ListenerSnapshot;

use crate::external::{External, Peer};
use crate::topology::{BACKEND_PORT, BACKENDS, PORT, VIP, backend_ip, dotted};
use fanout_kernel::plane::KernelPlane;
use fanout_userspace::UserspacePlane;

/// What runs in the load balancer during a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Nothing: the background.
    Idle,
    /// The generator's frames dropped at the load balancer's ingress.
    GenOnly,
    /// Plain kernel forwarding, no udp-fanout.
    Plain,
    /// Kernel plane, `mode: xdp`.
    Xdp,
    /// Kernel plane, `mode: tc_ebpf`.
    Tc,
    /// The userspace plane.
    Userspace,
    /// A third-party userspace proxy.
    Peer(Peer),
}

impl Mode {
    /// The modes that run in this process (no third-party proxy).
    pub const IN_PROCESS: [Mode; 6] = [
        Mode::Idle,
        Mode::GenOnly,
        Mode::Plain,
        Mode::Xdp,
        Mode::Tc,
        Mode::Userspace,
    ];

    /// Every mode, in the order a round runs them: those in this process, then the peers.
    pub const ALL: [Mode; 11] = with_peers(Mode::IN_PROCESS);

    /// The modes that forward traffic.
    pub const FORWARDING: [Mode; 9] =
        with_peers([Mode::Plain, Mode::Xdp, Mode::Tc, Mode::Userspace]);

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle (background)",
            Mode::GenOnly => "generator only (dropped at lb ingress)",
            Mode::Plain => "plain kernel forwarding",
            Mode::Xdp => "kernel plane, xdp",
            Mode::Tc => "kernel plane, tc_ebpf",
            Mode::Userspace => "userspace plane",
            Mode::Peer(p) => p.name(),
        }
    }

    /// A short identifier (JSON, progress lines).
    pub fn id(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::GenOnly => "generator-only",
            Mode::Plain => "plain",
            Mode::Xdp => "xdp",
            Mode::Tc => "tc_ebpf",
            Mode::Userspace => "userspace",
            Mode::Peer(p) => p.id(),
        }
    }

    /// Whether udp-fanout's kernel plane runs.
    pub fn is_kernel_plane(self) -> bool {
        matches!(self, Mode::Xdp | Mode::Tc)
    }

    /// Whether a userspace proxy forwards (udp-fanout's userspace plane or a peer): its
    /// sockets may overflow, and its sends leave the UDP checksum to (absent) offload.
    pub fn is_socket_proxy(self) -> bool {
        matches!(self, Mode::Userspace | Mode::Peer(_))
    }
}

/// `first`, then every third-party proxy ([`Peer::ALL`]): `M` must be `N + Peer::ALL.len()`
/// (checked when the constant is evaluated, so at build time).
const fn with_peers<const N: usize, const M: usize>(first: [Mode; N]) -> [Mode; M] {
    assert!(
        M == N + Peer::ALL.len(),
        "wrong length for the modes and the peers"
    );
    let mut out = [Mode::Idle; M];
    let mut i = 0;
    while i < N {
        out[i] = first[i];
        i += 1;
    }
    while i < M {
        out[i] = Mode::Peer(Peer::ALL[i - N]);
        i += 1;
    }
    out
}

/// The traffic of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Traffic {
    /// Round-robin over the backends, many flows.
    Balance,
    /// A copy to every backend.
    Mirror,
    /// Round-robin over the backends, one flow (a single 5-tuple).
    HeavyFlow,
}

/// Flows of the many-flow traffic (a power of two: the generator masks).
pub const FLOWS: u32 = 1024;

impl Traffic {
    /// Every traffic shape.
    pub const ALL: [Traffic; 3] = [Traffic::Balance, Traffic::Mirror, Traffic::HeavyFlow];

    /// One line for people.
    pub fn title(self) -> String {
        match self {
            Traffic::Balance => format!(
                "load-balance 64-byte datagrams, {FLOWS} flows, round-robin to {BACKENDS} backends"
            ),
            Traffic::Mirror => format!("mirror 64-byte datagrams to {BACKENDS} backends"),
            Traffic::HeavyFlow => format!(
                "one heavy flow (a single 5-tuple) of 64-byte datagrams, round-robin to \
                 {BACKENDS} backends"
            ),
        }
    }

    /// A short identifier.
    pub fn id(self) -> &'static str {
        match self {
            Traffic::Balance => "balance",
            Traffic::Mirror => "mirror",
            Traffic::HeavyFlow => "heavy-flow",
        }
    }

    /// Distinct source ports.
    pub fn flows(self) -> u32 {
        match self {
            Traffic::HeavyFlow => 1,
            Traffic::Balance | Traffic::Mirror => FLOWS,
        }
    }

    /// Copies of each datagram the backends get, together.
    pub fn copies(self) -> u64 {
        match self {
            Traffic::Mirror => BACKENDS as u64,
            Traffic::Balance | Traffic::HeavyFlow => 1,
        }
    }

    /// Frames the client sends per datagram in `mode`: plain forwarding has no mirror, so the
    /// client sends each copy itself.
    pub fn frames_per_datagram(self, mode: Mode) -> u64 {
        if mode == Mode::Plain {
            self.copies()
        } else {
            1
        }
    }

    /// The listener's `distribution:`.
    pub fn distribution(self) -> &'static str {
        match self {
            Traffic::Mirror => "mirror",
            Traffic::Balance | Traffic::HeavyFlow => "round_robin",
        }
    }

    /// Why `mode` cannot carry this traffic, if it cannot.
    pub fn not_applicable(self, mode: Mode) -> Option<&'static str> {
        match (self, mode) {
            (Traffic::Mirror, Mode::Xdp) => Some("XDP cannot copy a frame: mirror needs tc_ebpf"),
            (Traffic::Mirror, Mode::Peer(Peer::NginxSession | Peer::NginxDatagram)) => {
                Some("nginx's stream module has no UDP mirroring")
            }
            (Traffic::Mirror, Mode::Peer(Peer::EnvoySession | Peer::EnvoyPacket)) => {
                Some("Envoy's udp_proxy has no mirroring")
            }
            (Traffic::Balance | Traffic::HeavyFlow, Mode::Peer(Peer::UdpTee)) => {
                Some("a mirror only: it cannot balance")
            }
            _ => None,
        }
    }

    /// How `mode` carries this traffic, when a reader needs to know.
    pub fn note(self, mode: Mode) -> Option<&'static str> {
        Some(match (self, mode) {
            (Traffic::Balance, Mode::Plain) => {
                "the client sends to the backends' addresses, alternating"
            }
            (Traffic::Mirror, Mode::Plain) => {
                "the client sends every datagram to both backends itself"
            }
            (Traffic::HeavyFlow, Mode::Plain) => {
                "the client sends to the backends' addresses, alternating, from one source \
                 port; no GRO when forwarding (rx-udp-gro-forwarding off, the default)"
            }
            (Traffic::Mirror, Mode::Tc) => "bpf_clone_redirect: one copy per backend",
            (Traffic::Mirror, Mode::Peer(Peer::UdpTee)) => {
                "the seed's design, as on loopback: one socat on the listener re-sends every \
                 datagram to 127.255.255.255 (the namespace's lo) on a second port, where one \
                 socat per backend (reuseaddr, same port) receives it and relays it to that \
                 backend: 3 processes, 3 sends per datagram"
            }
            (Traffic::HeavyFlow, Mode::Userspace) => {
                "one worker gets the flow (SO_REUSEPORT hashes the 4-tuple), but UDP GRO hands \
                 it up to 64 datagrams per read and GSO sends them in runs; socket drops are \
                 counted per GRO skb"
            }
            (Traffic::HeavyFlow, Mode::Peer(Peer::EnvoySession | Peer::EnvoyPacket)) => {
                "Envoy sets UDP_GRO on its listening sockets (whatever prefer_gro says), so the \
                 one flow reaches it in GRO batches; the backends then get IP fragments (other \
                 frames), as if batches were forwarded whole"
            }
            (Traffic::HeavyFlow, Mode::Peer(p)) if p.per_session() => {
                "one session: every datagram goes to the backend the first one chose, from the \
                 one worker SO_REUSEPORT picked"
            }
            (Traffic::HeavyFlow, Mode::Peer(_)) => {
                "balanced per datagram, but one worker gets the flow (SO_REUSEPORT hashes the \
                 4-tuple)"
            }
            (Traffic::Balance, Mode::Peer(p)) if p.per_session() => {
                "a session per flow, each balanced round-robin"
            }
            _ => return None,
        })
    }
}

/// The configuration of the listener for `mode` (`xdp`, `tc_ebpf` or `userspace`).
pub fn config(mode: &str, lb_if: &str, traffic: Traffic) -> anyhow::Result<fanout_config::Config> {
    let downstreams: Vec<String> = (0..BACKENDS)
        .map(|k| format!("\"{}:{BACKEND_PORT}\"", dotted(backend_ip(k))))
        .collect();
    let interface = if mode == "userspace" {
        String::new()
    } else {
        format!("    interface: {lb_if}\n")
    };
    let yaml = format!(
        "listeners:\n  - name: bench\n    bind: \"{}:{PORT}\"\n    mode: {mode}\n{interface}    \
         distribution: {}\n    downstreams: [{}]\n",
        dotted(VIP),
        traffic.distribution(),
        downstreams.join(", ")
    );
    fanout_config::from_yaml(&yaml).map_err(|e| anyhow!("config: {e}\n{yaml}"))
}

/// What runs in the load balancer during a mode.
pub(crate) enum Running {
    /// Nothing (idle, plain forwarding).
    Nothing,
    /// The sink on the load balancer's ingress (generator only).
    Sink(aya::programs::xdp::XdpLinkId),
    /// udp-fanout's kernel plane (boxed: it holds the loaded programs and maps, far larger
    /// than the other variants).
    Kernel(Box<KernelPlane>),
    /// udp-fanout's userspace plane.
    User(UserspacePlane),
    /// A third-party proxy (stopped when dropped).
    External(Box<dyn External>),
}

impl Running {
    /// The plane's listener counters, if a plane runs.
    pub(crate) fn snapshot(&self) -> Option<ListenerSnapshot> {
        match self {
            Running::Kernel(k) => k.snapshot().into_iter().next(),
            Running::User(u) => u.snapshot().into_iter().next(),
            Running::Nothing | Running::Sink(_) | Running::External(_) => None,
        }
    }

    /// The PIDs of a third-party proxy's processes (their CPU is the window's too).
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            Running::External(e) => e.pids(),
            _ => Vec::new(),
        }
    }

    /// How it is attached, for the record.
    pub(crate) fn attach(&self) -> String {
        match self {
            Running::Kernel(k) => k
                .attachments()
                .iter()
                .map(|a| a.how)
                .collect::<Vec<_>>()
                .join(", "),
            Running::Sink(_) => "xdp sink on lb ingress".into(),
            Running::Nothing | Running::User(_) | Running::External(_) => String::new(),
        }
    }
}

/// Starts the kernel plane in `mode` on the current thread's namespace.
pub(crate) fn start_kernel(mode: Mode, lb_if: &str, traffic: Traffic) -> anyhow::Result<Running> {
    let m = if mode == Mode::Xdp { "xdp" } else { "tc_ebpf" };
    let cfg = config(m, lb_if, traffic)?;
    let plane = KernelPlane::start(&cfg)
        .with_context(|| format!("starting the kernel plane ({m})"))?
        .ok_or_else(|| anyhow!("the kernel plane ({m}) has no listener"))?;
    Ok(Running::Kernel(Box::new(plane)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_lists_are_their_own_modes_then_the_peers() {
        let peers = Peer::ALL.map(Mode::Peer);
        assert_eq!(Mode::ALL[..6], Mode::IN_PROCESS);
        assert_eq!(Mode::ALL[6..], peers);
        assert_eq!(
            Mode::FORWARDING[..4],
            [Mode::Plain, Mode::Xdp, Mode::Tc, Mode::Userspace]
        );
        assert_eq!(Mode::FORWARDING[4..], peers);
    }

    #[test]
    fn configs_name_the_mode_and_distribution() {
        let c = config("tc_ebpf", "veth0", Traffic::Mirror).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].downstreams.len(), BACKENDS);
        assert!(config("userspace", "veth0", Traffic::Balance).is_ok());
        assert!(config("xdp", "veth0", Traffic::HeavyFlow).is_ok());
        assert_eq!(Traffic::Mirror.frames_per_datagram(Mode::Plain), 2);
        assert_eq!(Traffic::Mirror.frames_per_datagram(Mode::Tc), 1);
        assert!(Traffic::Mirror.not_applicable(Mode::Xdp).is_some());
        assert_eq!(Mode::Peer(Peer::NginxDatagram).id(), "nginx-datagram");
        for (traffic, peer, applies) in [
            (Traffic::Mirror, Peer::EnvoyPacket, false),
            (Traffic::HeavyFlow, Peer::NginxSession, true),
            (Traffic::Mirror, Peer::UdpTee, true),
            (Traffic::Balance, Peer::UdpTee, false),
        ] {
            let why = traffic.not_applicable(Mode::Peer(peer));
            assert_eq!(
                why.is_none(),
                applies,
                "{traffic:?} through {peer:?}: {why:?}"
            );
        }
    }
}
