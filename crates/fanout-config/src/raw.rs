//! The configuration exactly as written: serde types that mirror the YAML.
//!
//! Unknown keys are rejected everywhere (`deny_unknown_fields`), so a typo such as
//! `downstream:` is an error rather than a silently ignored key. Required keys are `Option`s
//! here so that validation can say which one is missing with its full path; addresses are kept
//! as text so that validation can quote the bad value.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::bytes::ByteSize;
use crate::error::{ConfigError, ConfigErrors};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub listeners: Option<Vec<RawListener>>,
    pub metrics: Option<RawMetrics>,
    pub dataplane: Option<RawDataplane>,
    pub admin: Option<RawAdmin>,
    pub health: Option<RawHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Option<String>,
    pub bind: Option<Scalar>,
    pub mode: Option<RawMode>,
    pub interface: Option<String>,
    pub fallback: Option<RawFallback>,
    pub distribution: Option<RawDistribution>,
    pub downstreams: Option<Vec<RawDownstream>>,
    pub session: Option<RawSession>,
    pub downstreams_file: Option<String>,
    pub drain_secs: Option<i64>,
    pub health: Option<RawHealth>,
    pub kubernetes: Option<RawKubernetes>,
}

/// `kubernetes: { namespace, service, port, prefer_same_node, node_name }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKubernetes {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub port: Option<Scalar>,
    pub prefer_same_node: Option<bool>,
    pub node_name: Option<String>,
}

/// `admin: { bind, token_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub bind: Option<Scalar>,
    pub token_file: Option<String>,
}

/// A `health:` section, top level or a listener's. Every key is optional so that a listener's
/// section can be merged over the top-level one key by key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub enabled: Option<bool>,
    pub protocol: Option<RawHealthProtocol>,
    pub interval_secs: Option<i64>,
    pub interval_ms: Option<i64>,
    pub timeout_secs: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub fall: Option<i64>,
    pub rise: Option<i64>,
    pub send: Option<String>,
    pub expect: Option<String>,
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawHealthProtocol {
    Udp,
    Icmp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub sticky: Option<bool>,
    pub reply: Option<bool>,
    pub idle_timeout_secs: Option<i64>,
    pub max_sessions: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawMode {
    Userspace,
    Xdp,
    TcEbpf,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFallback {
    None,
    Userspace,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawDistribution {
    RoundRobin,
    ConsistentHash,
    Mirror,
}

/// A downstream: `"ip:port"` or `{ address: "ip:port", weight: 3 }`.
///
/// The map form is the derived deserializer: `remote = "Self"` makes the derive an inherent
/// `RawDownstream::deserialize` instead of the trait impl, so that the impl below can take the
/// string form itself and hand a map to it, with one list of fields for both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(crate) struct RawDownstream {
    pub address: Option<Scalar>,
    pub weight: Option<i64>,
}

impl<'de> Deserialize<'de> for RawDownstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDownstream;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address \"ip:port\" or a map { address, weight }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDownstream, E> {
                Ok(RawDownstream {
                    address: Some(Scalar(v.to_owned())),
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDownstream, A::Error> {
                RawDownstream::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub enabled: Option<bool>,
    pub bind: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataplane {
    pub workers: Option<RawWorkers>,
    pub batch_size: Option<i64>,
    pub recv_buffer: Option<ByteSize>,
    pub send_buffer: Option<ByteSize>,
    pub send_timeout_ms: Option<i64>,
    pub gso: Option<bool>,
    pub gro: Option<bool>,
    pub busy_poll_us: Option<i64>,
}

/// `workers: 4` or `workers: auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawWorkers {
    Auto,
    Count(i64),
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawWorkers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of workers or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                Ok(RawWorkers::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawWorkers, E> {
                if v == "auto" {
                    Ok(RawWorkers::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar kept as text (strings and numbers alike), so validation can quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address like \"127.0.0.1:5514\" or \"[::1]:5514\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses YAML into the raw model. Errors carry the key path where parsing stopped.
pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(ConfigErrors::one(ConfigError::new(
            "",
            "the configuration is empty (expected a `listeners:` list)",
        )));
    }
    // serde_yaml_ng already prefixes its messages with the key path (`listeners[0].mode:
    // unknown variant ...`) and ends them with the line and column, which is what we want.
    serde_yaml_ng::from_str(text).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(loc) = e.location().filter(|_| !msg.contains(" at line ")) {
            msg = format!("{msg} at line {} column {}", loc.line(), loc.column());
        }
        ConfigErrors::one(ConfigError::new("", msg))
    })
}
