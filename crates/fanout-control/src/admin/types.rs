//! The admin API's JSON contract (DESIGN.md 3b), as serde types shared by the server
//! ([`super::server`]) and its client (`udp-fanout ctl`), so the two cannot drift apart.
//!
//! Views (what the server answers) accept unknown fields when read, so an older client keeps
//! working against a newer server; request bodies (what an operator sends) refuse them, so a
//! misspelt field (`"wieght"`) is an error rather than a silent no-op.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::desired::{AdminState, Health, Source};

/// Largest request body the server reads; a bigger one is refused with 413. Every request of
/// the contract fits in a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What an operator said about a downstream: `active`, `draining` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownstreamState {
    /// Takes new flows.
    Active,
    /// Keeps its sessions for the listener's `drain_secs`, gets no new flows.
    Draining,
    /// Gets nothing; its sessions re-pin at once.
    Disabled,
}

/// What the health checks say: `healthy`, `unhealthy` or `unknown` (not probed yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Passing its probes.
    Healthy,
    /// Failing them.
    Unhealthy,
    /// Not probed yet, or no checks configured (treated as healthy).
    Unknown,
}

/// Where a downstream came from: `static`, `file`, `api` or `kubernetes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The config's `downstreams:` list.
    Static,
    /// The listener's `downstreams_file`.
    File,
    /// Added through the admin API.
    Api,
    /// A Kubernetes EndpointSlice watch.
    Kubernetes,
}

impl DownstreamState {
    /// The contract's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            DownstreamState::Active => "active",
            DownstreamState::Draining => "draining",
            DownstreamState::Disabled => "disabled",
        }
    }
}

impl HealthStatus {
    /// The contract's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

impl SourceKind {
    /// The contract's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceKind::Static => "static",
            SourceKind::File => "file",
            SourceKind::Api => "api",
            SourceKind::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for DownstreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The desired state has its own enums (it has no serde); these let `Control` fill the views
// and take the API's word without a hand-written match at each call.

impl From<AdminState> for DownstreamState {
    fn from(s: AdminState) -> Self {
        match s {
            AdminState::Active => DownstreamState::Active,
            AdminState::Draining => DownstreamState::Draining,
            AdminState::Disabled => DownstreamState::Disabled,
        }
    }
}

impl From<DownstreamState> for AdminState {
    fn from(s: DownstreamState) -> Self {
        match s {
            DownstreamState::Active => AdminState::Active,
            DownstreamState::Draining => AdminState::Draining,
            DownstreamState::Disabled => AdminState::Disabled,
        }
    }
}

impl From<Health> for HealthStatus {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy => HealthStatus::Healthy,
            Health::Unhealthy => HealthStatus::Unhealthy,
            Health::Unknown => HealthStatus::Unknown,
        }
    }
}

impl From<Source> for SourceKind {
    fn from(s: Source) -> Self {
        match s {
            Source::Static => SourceKind::Static,
            Source::File => SourceKind::File,
            Source::Api => SourceKind::Api,
            Source::Kubernetes => SourceKind::Kubernetes,
        }
    }
}

/// One listener and its downstreams: the answer of `GET /v1/listeners/{name}` (and of every
/// change to its downstreams, so a client sees the set it produced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    /// Its unique name.
    pub name: String,
    /// Where clients send (`bind`).
    pub bind: SocketAddr,
    /// `userspace`, `xdp` or `tc_ebpf`.
    pub mode: String,
    /// `round_robin`, `consistent_hash` or `mirror`.
    pub distribution: String,
    /// Every downstream, leaving ones included (as `draining`).
    pub downstreams: Vec<DownstreamView>,
}

/// One downstream of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownstreamView {
    /// `ip:port` (`[v6]:port`).
    pub address: SocketAddr,
    /// Its effective weight, 1..=`MAX_WEIGHT`.
    pub weight: u32,
    /// What an operator (or its leaving the set) made it.
    pub state: DownstreamState,
    /// What the health checks say.
    pub health: HealthStatus,
    /// Where it came from.
    pub source: SourceKind,
    /// Sessions pinned to it now.
    pub sessions: u64,
}

fn default_weight() -> u32 {
    1
}

/// The body of `POST /v1/listeners/{name}/downstreams`.
///
/// The address is a string, not a `SocketAddr`, so the server can say what is wrong with it
/// in the config's words rather than serde's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDownstream {
    /// `ip:port` (`[v6]:port`).
    pub address: String,
    /// Relative share, 1..=`MAX_WEIGHT`; 1 when absent.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// The body of `PATCH /v1/listeners/{name}/downstreams/{address}`: at least one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchDownstream {
    /// A new weight, 1..=`MAX_WEIGHT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// A new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DownstreamState>,
}

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// The success answer of `/healthz`, `/readyz` and `POST /v1/reload`: `{"status": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    /// `live`, `ready` or `reloaded`.
    pub status: String,
}
