//! udp-fanout's configuration: the YAML model, parsing, and validation.
//!
//! Loading is two steps. `raw` mirrors the YAML with serde (unknown keys rejected, and
//! serde_yaml_ng puts the key path of a type error in its message); `validate` then checks
//! meaning (addresses, uniqueness, ranges, what this build supports) and produces the typed
//! [`Config`] the rest of the program uses. Both steps report errors as
//! `key.path[i]: reason`, and everything is checked before any socket is bound, so a bad file
//! never half-starts the daemon.
//!
//! Two more pieces serve reloads: [`downstreams_file`] parses a listener's file of
//! downstreams (`FILE:LINE: reason` errors), and [`diff()`] says what changed between the
//! running config and a new one, listener by listener.
#![forbid(unsafe_code)]

mod bytes;
mod diff;
pub mod downstreams_file;
mod error;
mod model;
mod raw;
mod validate;

pub use diff::{ConfigDiff, diff};
pub use downstreams_file::FileError;
pub use error::{ConfigError, ConfigErrors};
pub use model::{
    AdminConfig, Config, DEFAULT_ADMIN_BIND, DEFAULT_DRAIN, DataplaneConfig, DownstreamConfig,
    Fallback, HealthConfig, HealthProtocol, KubernetesConfig, ListenerConfig, MAX_SESSIONS,
    MAX_WEIGHT, MetricsConfig, Mode, ServicePort, SessionConfig, kernel_limits,
};

/// Parses and validates a configuration from YAML text.
pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
    let raw = raw::parse(text)?;
    validate::validate(raw, None)
}

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    let raw = raw::parse(&text)?;
    validate::validate(raw, path.parent())
}
