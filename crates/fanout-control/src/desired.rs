//! Desired state: for every listener, the downstreams it should send to and where that list
//! came from.
//!
//! This is the control plane's single source of truth. Sources produce endpoint lists, health
//! (planned) filters them, and the result is pushed whole to every plane serving the
//! listener. Keeping the desired list here, rather than reading it back from a plane, means
//! a plane can be rebuilt, or a second plane (the kernel fast path and its userspace slow
//! path serve the same listener) brought in line, from one place.
//!
//! Today the only source is the config file's static `downstreams:` list. File, Kubernetes
//! and admin-API sources and health checks are planned; each will be a [`Source`] variant.

use fanout_config::Config;
use fanout_core::select::Endpoint;

/// Where a listener's downstream list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The config file's `downstreams:` list.
    Static,
    /// Set at runtime through [`crate::Control::set_endpoints`] (an embedding program or a
    /// test; the admin API that will use it is planned).
    Runtime,
}

impl Source {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Runtime => "runtime",
        }
    }
}

/// One listener's desired downstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredListener {
    /// The listener's name.
    pub name: String,
    /// Where `endpoints` came from.
    pub source: Source,
    /// Its downstreams, in source order.
    pub endpoints: Vec<Endpoint>,
}

/// Every listener's desired downstreams.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    listeners: Vec<DesiredListener>,
}

impl Desired {
    /// The state a validated config asks for.
    pub fn from_config(cfg: &Config) -> Desired {
        Desired {
            listeners: cfg
                .listeners
                .iter()
                .map(|l| DesiredListener {
                    name: l.name.clone(),
                    source: Source::Static,
                    endpoints: l.endpoints(),
                })
                .collect(),
        }
    }

    /// Listener `name`'s desired state.
    pub fn listener(&self, name: &str) -> Option<&DesiredListener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Every listener, in config order.
    pub fn listeners(&self) -> &[DesiredListener] {
        &self.listeners
    }

    /// Replaces listener `name`'s downstreams; `false` if there is no such listener.
    pub(crate) fn set(&mut self, name: &str, source: Source, endpoints: Vec<Endpoint>) -> bool {
        match self.listeners.iter_mut().find(|l| l.name == name) {
            Some(l) => {
                l.source = source;
                l.endpoints = endpoints;
                true
            }
            None => false,
        }
    }
}
