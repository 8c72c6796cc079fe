//! What a reload changes: the difference between the running config and the new one.
//!
//! A reload applies a valid config as a diff, so that what did not change is not touched (no
//! datagram lost, sessions kept). Listeners are matched by name; for each, the diff says what
//! the control plane must do:
//!
//! - `unchanged`: nothing.
//! - `downstreams_changed`: only what a running listener takes in place changed:
//!   `downstreams`, `downstreams_file` (the path), `kubernetes` (the watch is restarted),
//!   `drain` or `health`. The set is swapped
//!   whole, the listener stays bound. Whether the *contents* of a downstreams file changed is
//!   not known here (this is pure): the caller compares what it reads.
//! - `recreated`: `bind`, `mode`, `interface`, `distribution`, `session` or `fallback`
//!   changed: the listener is closed and bound again (its sessions are lost).
//! - `added`, `removed`: a name only in the new, or only in the old config (a renamed listener
//!   is both).
//!
//! The top-level sections are flags (`admin_changed`, `metrics_changed`,
//! `dataplane_changed`): the caller decides which of them need a restart.
//!
//! Every list is in config order: the new config's for the first four, the old one's for
//! `removed`.

use std::collections::{HashMap, HashSet};

use crate::model::{Config, ListenerConfig};

/// What changed from one config to the next; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Listeners with nothing changed.
    pub unchanged: Vec<String>,
    /// Listeners whose downstreams, downstreams_file, kubernetes, drain or health changed, and
    /// nothing else.
    pub downstreams_changed: Vec<String>,
    /// Listeners that must be closed and bound again (bind, mode, interface, distribution,
    /// session or fallback changed).
    pub recreated: Vec<String>,
    /// Listeners only in the new config.
    pub added: Vec<String>,
    /// Listeners only in the old config.
    pub removed: Vec<String>,
    /// `admin:` changed (added, removed, or a key).
    pub admin_changed: bool,
    /// `metrics:` changed.
    pub metrics_changed: bool,
    /// `dataplane:` changed.
    pub dataplane_changed: bool,
}

impl ConfigDiff {
    /// Nothing changed at all.
    pub fn is_empty(&self) -> bool {
        self.downstreams_changed.is_empty()
            && self.recreated.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && !self.admin_changed
            && !self.metrics_changed
            && !self.dataplane_changed
    }
}

/// How one listener changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    InPlace,
    Recreate,
}

/// The difference between `old` (running) and `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let before: HashMap<&str, &ListenerConfig> =
        old.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut d = ConfigDiff {
        admin_changed: old.admin != new.admin,
        metrics_changed: old.metrics != new.metrics,
        dataplane_changed: old.dataplane != new.dataplane,
        ..ConfigDiff::default()
    };
    for l in &new.listeners {
        let name = l.name.clone();
        match before.get(l.name.as_str()).map(|o| change(o, l)) {
            None => d.added.push(name),
            Some(Change::None) => d.unchanged.push(name),
            Some(Change::InPlace) => d.downstreams_changed.push(name),
            Some(Change::Recreate) => d.recreated.push(name),
        }
    }
    let after: HashSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    d.removed = old
        .listeners
        .iter()
        .filter(|l| !after.contains(l.name.as_str()))
        .map(|l| l.name.clone())
        .collect();
    d
}

/// How listener `old` became `new` (same name).
fn change(old: &ListenerConfig, new: &ListenerConfig) -> Change {
    // Every field named, so that a new one cannot be forgotten here: it must be put in one
    // of the two groups to compile.
    let ListenerConfig {
        name: _,
        bind,
        mode,
        interface,
        fallback,
        distribution,
        downstreams,
        session,
        downstreams_file,
        drain,
        health,
        kubernetes,
    } = old;
    let recreate = *bind != new.bind
        || *mode != new.mode
        || *interface != new.interface
        || *fallback != new.fallback
        || *distribution != new.distribution
        || *session != new.session;
    let in_place = *downstreams != new.downstreams
        || *downstreams_file != new.downstreams_file
        || *drain != new.drain
        || *health != new.health
        || *kubernetes != new.kubernetes;
    if recreate {
        Change::Recreate
    } else if in_place {
        Change::InPlace
    } else {
        Change::None
    }
}

#[cfg(test)]
mod tests;
