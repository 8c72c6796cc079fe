//! The validated configuration: typed, checked, ready to use.
//!
//! These types are what the rest of the program sees, so they hold only values that passed
//! validation: addresses are parsed, defaults are filled in, durations are `Duration`s. A
//! value of them therefore never needs re-checking; the limits that validation enforces (such
//! as [`MAX_WEIGHT`] and [`kernel_limits`]) are defined here, beside the fields they bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fanout_core::select::{DEFAULT_TABLE_SIZE, Distribution, Endpoint};

/// Largest downstream weight. Keeps the precomputed round-robin cycle small.
pub const MAX_WEIGHT: u32 = 10_000;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Tuning of the userspace data plane.
    pub dataplane: DataplaneConfig,
    /// The admin HTTP API (`admin:`); `None`: no API.
    pub admin: Option<AdminConfig>,
}

/// The admin HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens (`admin.bind`, default 127.0.0.1:9091).
    pub bind: SocketAddr,
    /// A file holding the bearer token every request must carry (`admin.token_file`).
    /// Required for a bind other than loopback.
    pub token_file: Option<PathBuf>,
}

/// The admin API's default address.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9091";

/// How a downstream is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthProtocol {
    /// A UDP datagram to the downstream (or `port`); any reply, or one starting with `expect`,
    /// passes; a timeout or an ICMP port-unreachable fails.
    #[default]
    Udp,
    /// ICMP echo (ping sockets without root where allowed, raw sockets with root).
    Icmp,
}

/// Active health checks of a listener's downstreams (`health:`, top level as the default,
/// a listener's own overriding it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Probe kind.
    pub protocol: HealthProtocol,
    /// Time between two probes of one downstream.
    pub interval: Duration,
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Consecutive failures that make a downstream unhealthy.
    pub fall: u32,
    /// Consecutive successes that make it healthy again.
    pub rise: u32,
    /// UDP: the probe's payload.
    pub send: Vec<u8>,
    /// UDP: a reply must start with this; `None`: any reply passes.
    pub expect: Option<Vec<u8>>,
    /// UDP: probe this port instead of the downstream's.
    pub port: Option<u16>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            protocol: HealthProtocol::Udp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            send: b"ping".to_vec(),
            expect: None,
            port: None,
        }
    }
}

/// How long a removed or drained downstream keeps its sessions, by default (`drain_secs`).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// Which data plane serves a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Mode {
    /// Userspace workers (portable, no privileges).
    #[default]
    Userspace,
    /// eBPF XDP program on `interface`.
    Xdp,
    /// eBPF TC ingress program on `interface`.
    TcEbpf,
}

impl Mode {
    /// The configuration spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Userspace => "userspace",
            Mode::Xdp => "xdp",
            Mode::TcEbpf => "tc_ebpf",
        }
    }
}

/// What a kernel-plane listener does when its program cannot be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Fail start-up with the reason.
    #[default]
    None,
    /// Serve the listener with the userspace plane instead (logged as a warning).
    Userspace,
}

/// Limits of the kernel plane (sizes of its maps; see bpf/include/uf_structs.h).
pub mod kernel_limits {
    /// Listeners served by the kernel plane.
    pub const LISTENERS: usize = 16;
    /// Downstreams per kernel-plane listener.
    pub const DOWNSTREAMS: usize = 256;
    /// Copies per datagram for a kernel-plane mirror.
    pub const MIRROR: usize = 16;
}

/// One downstream as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamConfig {
    /// Where to send.
    pub addr: SocketAddr,
    /// Relative share, 1..=MAX_WEIGHT.
    pub weight: u32,
}

/// One listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name, used in logs and as the `listener` metric label.
    pub name: String,
    /// Address to receive on. Port 0 picks a free port (logged at start).
    pub bind: SocketAddr,
    /// Which data plane.
    pub mode: Mode,
    /// Network interface for the kernel plane.
    pub interface: Option<String>,
    /// What to do when the kernel plane cannot attach.
    pub fallback: Fallback,
    /// How datagrams are spread over downstreams.
    pub distribution: Distribution,
    /// The static downstreams, in file order.
    pub downstreams: Vec<DownstreamConfig>,
    /// Client sessions (sticky choice, reply path); `None` = each datagram on its own.
    pub session: Option<SessionConfig>,
    /// A file of further downstreams (`downstreams_file:`), read at start and on every
    /// reload, watched for changes. A relative path is resolved against the config file's
    /// directory by [`crate::load`] and kept as written by [`crate::from_yaml`]. With it,
    /// `downstreams` may be empty.
    pub downstreams_file: Option<PathBuf>,
    /// How long a downstream that leaves the set, or is drained, keeps its sessions
    /// (`drain_secs`; zero: they re-pin at once).
    pub drain: Duration,
    /// Health checks of the downstreams: the listener's `health:` merged key by key over the
    /// top-level one (then the defaults); `None` when disabled or neither section is present.
    pub health: Option<HealthConfig>,
    /// Downstreams discovered from a Kubernetes Service's EndpointSlices (`kubernetes:`);
    /// with it, `downstreams` may be empty.
    pub kubernetes: Option<KubernetesConfig>,
}

/// Which port of a Service's endpoints to send to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServicePort {
    /// The endpoint port with this number (UDP preferred when several protocols share it).
    Number(u16),
    /// The endpoint port with this name (the Service port's `name`).
    Name(String),
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePort::Number(n) => write!(f, "{n}"),
            ServicePort::Name(s) => f.write_str(s),
        }
    }
}

/// A listener's Kubernetes discovery: the EndpointSlices of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubernetesConfig {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name (slices carry it in the `kubernetes.io/service-name` label).
    pub service: String,
    /// Which of its ports.
    pub port: ServicePort,
    /// Serve only the endpoints on this node while it has a ready one (`prefer_same_node`).
    pub prefer_same_node: bool,
    /// This node's name for `prefer_same_node` (`node_name`; default: `$NODE_NAME`, which
    /// the DaemonSet sets from the downward API).
    pub node_name: Option<String>,
}

/// Largest `max_sessions`.
pub const MAX_SESSIONS: usize = 1 << 24;

/// Client sessions of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// A client keeps its downstream for the life of its session.
    pub sticky: bool,
    /// Relay downstream replies back to the client, from the listener's address.
    pub reply: bool,
    /// A session ends after this long without traffic in either direction.
    pub idle_timeout: Duration,
    /// At most this many sessions (least recently used evicted beyond).
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            sticky: true,
            reply: false,
            idle_timeout: Duration::from_secs(60),
            max_sessions: 1 << 20,
        }
    }
}

impl ListenerConfig {
    /// The downstreams as selection endpoints.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.downstreams
            .iter()
            .map(|d| Endpoint::new(d.addr).with_weight(d.weight))
            .collect()
    }

    /// Maglev table size for consistent hashing.
    pub fn table_size(&self) -> u32 {
        DEFAULT_TABLE_SIZE
    }
}

/// The metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Where to serve it.
    pub bind: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Tuning of the userspace data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Datagrams per recvmmsg/sendmmsg call.
    pub batch_size: usize,
    /// SO_RCVBUF asked for every listener socket, bytes.
    pub recv_buffer: usize,
    /// SO_SNDBUF asked for every sending socket, bytes.
    pub send_buffer: usize,
    /// How long a worker waits for room in a full send buffer before dropping (`buffer_full`).
    pub send_timeout: Duration,
    /// Send runs of datagrams to one destination as UDP GSO messages.
    pub gso: bool,
    /// Let the kernel coalesce datagrams of one flow on receive (UDP GRO).
    pub gro: bool,
    /// Keep polling this long after traffic before sleeping (0 = off).
    pub busy_poll: Duration,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 0,
            batch_size: 64,
            recv_buffer: 8 << 20,
            send_buffer: 8 << 20,
            send_timeout: Duration::from_millis(10),
            gso: true,
            gro: true,
            busy_poll: Duration::ZERO,
        }
    }
}
