//! Desired state: for every listener, which downstreams it has, where each came from, what an
//! operator said about it, how healthy it is, and from all that, the endpoint list the planes
//! should serve right now.
//!
//! This is the control plane's single source of truth, and it is pure: time is passed in (ms
//! since an origin the caller keeps), so every rule below is unit-tested without sockets or
//! clocks. [`crate::Control`] owns one, feeds it (config, file, admin API, health), and pushes
//! [`ListenerState::endpoints`] to the planes whenever it changes.
//!
//! The rules, as the contract states them (DESIGN.md 3b):
//!
//! - A listener's members are the union of its sources: the config's `downstreams:`
//!   ([`Source::Static`]), its `downstreams_file` ([`Source::File`]), a Kubernetes Service's
//!   endpoints ([`Source::Kubernetes`]) and what the admin API added ([`Source::Api`]), less
//!   what the API removed. An address in several sources is one downstream; its weight is the
//!   API's if set, else the file's, else the config's (Kubernetes endpoints carry no weight:
//!   1 unless another source gives one).
//! - An endpoint Kubernetes reports as terminating (but still serving) is draining from the
//!   moment it was first seen so, exactly as if the API had drained it; when it then leaves
//!   the Service, its drain goes on from that same moment, not from the removal, so a pod's
//!   sessions get `drain` in all, whichever way it goes.
//! - What the API says (added, removed, weight, state) is kept across reloads until the API
//!   says otherwise: a reload replaces the static and file sources only.
//! - State `active` takes new flows; `draining` keeps its sessions for `drain` and gets no new
//!   flows, then its sessions re-pin; `disabled` gets nothing, its sessions re-pin at once.
//! - A member that leaves the set (source edit, reload, API delete) drains the same way: it
//!   stays in the pushed set as draining for `drain`, then goes. `drain` zero: at once.
//! - Health: an unhealthy downstream gets no new flows and its sessions re-pin (it is left out
//!   of the pushed set); unknown (not probed yet, or no checks) counts as healthy. When no
//!   active downstream is healthy, all active ones are served (fail open, [`Computed::panic`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use fanout_config::{Config, DownstreamConfig, ListenerConfig};
use fanout_core::select::{Endpoint, EndpointState};

/// Where a downstream came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The config file's `downstreams:` list.
    Static,
    /// The listener's `downstreams_file`.
    File,
    /// A Kubernetes Service's EndpointSlices (`kubernetes:`).
    Kubernetes,
    /// Added through the admin API.
    Api,
}

impl Source {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::File => "file",
            Source::Kubernetes => "kubernetes",
            Source::Api => "api",
        }
    }
}

/// What an operator said about a downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    /// Takes new flows.
    #[default]
    Active,
    /// Keeps its sessions for the drain time, gets no new flows.
    Draining,
    /// Gets nothing.
    Disabled,
}

impl AdminState {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// What the health checks say about a downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not probed yet, or no checks: treated as healthy.
    #[default]
    Unknown,
    /// Passing.
    Healthy,
    /// Failing: no new flows, sessions re-pin.
    Unhealthy,
}

impl Health {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What the admin API said about one address of a listener; kept across reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Override {
    /// Added through the API, with this weight.
    added: Option<u32>,
    /// Removed through the API (whatever its other sources say).
    removed: bool,
    /// Weight set through the API.
    weight: Option<u32>,
    /// State set through the API.
    state: Option<AdminState>,
}

/// One downstream as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamInfo {
    /// Its address.
    pub addr: SocketAddr,
    /// Its effective weight.
    pub weight: u32,
    /// Its effective state (`draining` too while it leaves the set).
    pub state: AdminState,
    /// Its health.
    pub health: Health,
    /// Where it came from (the first of API, file, config that lists it; for one leaving the
    /// set, where it was last).
    pub source: Source,
    /// Whether it is on its way out (left every source, or removed through the API).
    pub leaving: bool,
}

/// The endpoint list to push, and what goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// What the planes should serve, in member order.
    pub endpoints: Vec<Endpoint>,
    /// No active downstream is healthy, so all active ones are served regardless (fail open).
    pub panic: bool,
    /// The earliest time (ms) at which the result changes by itself (a drain ends).
    pub next_change: Option<u64>,
}

/// A member of the set, derived from the sources each time (never stored).
#[derive(Debug, Clone, Copy)]
struct Member {
    addr: SocketAddr,
    weight: u32,
    source: Source,
}

/// One listener's desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerState {
    name: String,
    drain_ms: u64,
    static_list: Vec<DownstreamConfig>,
    file_list: Vec<DownstreamConfig>,
    /// The Kubernetes Service's endpoints (serving ones, terminating included), by address.
    kube_list: Vec<SocketAddr>,
    /// Since when (ms) each terminating endpoint of `kube_list` has been terminating.
    kube_terminating: HashMap<SocketAddr, u64>,
    /// API additions in the order they were made (their place in the member order).
    api_order: Vec<SocketAddr>,
    overrides: HashMap<SocketAddr, Override>,
    health: HashMap<SocketAddr, Health>,
    /// Since when (ms) an address has been draining by the API's word.
    draining_since: HashMap<SocketAddr, u64>,
    /// Former members on their way out: weight, where they came from, since when (ms).
    leaving: Vec<(SocketAddr, u32, Source, u64)>,
}

/// Why the admin API's change was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// No such downstream on the listener.
    NoSuchDownstream(SocketAddr),
    /// Adding an address the listener already has.
    Exists(SocketAddr),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::NoSuchDownstream(a) => write!(f, "no downstream {a}"),
            ChangeError::Exists(a) => write!(f, "downstream {a} already exists"),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ListenerState {
    /// A listener as the config describes it (its file's entries come separately).
    pub fn new(cfg: &ListenerConfig) -> ListenerState {
        ListenerState {
            name: cfg.name.clone(),
            drain_ms: ms(cfg.drain),
            static_list: cfg.downstreams.clone(),
            file_list: Vec::new(),
            kube_list: Vec::new(),
            kube_terminating: HashMap::new(),
            api_order: Vec::new(),
            overrides: HashMap::new(),
            health: HashMap::new(),
            draining_since: HashMap::new(),
            leaving: Vec::new(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The members, in order: config, file, Kubernetes, API additions; the API's removals
    /// left out.
    /// Linear in the sources' length (10,000 downstreams are a normal set).
    fn members(&self) -> Vec<Member> {
        let mut out: Vec<Member> = Vec::new();
        let mut index: HashMap<SocketAddr, usize> = HashMap::new();
        // `weight: None`: the source has no word on weights (Kubernetes), keep another's.
        let mut push = |addr: SocketAddr, weight: Option<u32>, source: Source| {
            if self.overrides.get(&addr).is_some_and(|o| o.removed) {
                return;
            }
            match index.get(&addr) {
                // A later source's weight wins; the API's own weight wins over both below.
                Some(&i) => {
                    if let Some(w) = weight {
                        out[i].weight = w;
                    }
                    out[i].source = source;
                }
                None => {
                    index.insert(addr, out.len());
                    out.push(Member {
                        addr,
                        weight: weight.unwrap_or(1),
                        source,
                    });
                }
            }
        };
        for d in &self.static_list {
            push(d.addr, Some(d.weight), Source::Static);
        }
        for d in &self.file_list {
            push(d.addr, Some(d.weight), Source::File);
        }
        for a in &self.kube_list {
            push(*a, None, Source::Kubernetes);
        }
        for a in &self.api_order {
            if let Some(w) = self.overrides.get(a).and_then(|o| o.added) {
                push(*a, Some(w), Source::Api);
            }
        }
        for m in &mut out {
            if let Some(w) = self.overrides.get(&m.addr).and_then(|o| o.weight) {
                m.weight = w;
            }
        }
        out
    }

    /// Replaces the config's part (a reload): the static list and the drain time. Members
    /// that leave start draining at `now`.
    pub fn set_static(&mut self, cfg: &ListenerConfig, now: u64) {
        let before = self.members();
        self.static_list = cfg.downstreams.clone();
        self.drain_ms = ms(cfg.drain);
        self.note_leavers(&before, now);
    }

    /// Replaces the file's part. Members that leave start draining at `now`.
    pub fn set_file(&mut self, list: Vec<DownstreamConfig>, now: u64) {
        let before = self.members();
        self.file_list = list;
        self.note_leavers(&before, now);
    }

    /// Replaces the Kubernetes part: every serving endpoint, and whether it is terminating
    /// (draining). Members that leave start draining at `now`, or, if they were terminating
    /// already, go on draining from when they started to.
    pub fn set_kubernetes(&mut self, list: Vec<(SocketAddr, bool)>, now: u64) {
        let before = self.members();
        let was = std::mem::take(&mut self.kube_terminating);
        self.kube_terminating = list
            .iter()
            .filter(|(_, terminating)| *terminating)
            .map(|(a, _)| (*a, was.get(a).copied().unwrap_or(now)))
            .collect();
        self.kube_list = list.into_iter().map(|(a, _)| a).collect();
        self.note_leavers_since(&before, now, &was);
    }

    /// Former members not in the set any more go to `leaving`; returning ones come back.
    fn note_leavers(&mut self, before: &[Member], now: u64) {
        self.note_leavers_since(before, now, &HashMap::new());
    }

    /// [`note_leavers`](Self::note_leavers), where a leaver found in `since` has been
    /// draining from that time rather than `now`.
    fn note_leavers_since(
        &mut self,
        before: &[Member],
        now: u64,
        since: &HashMap<SocketAddr, u64>,
    ) {
        let after: HashSet<SocketAddr> = self.members().iter().map(|m| m.addr).collect();
        self.leaving.retain(|(a, ..)| !after.contains(a));
        let mut leaving: HashSet<SocketAddr> = self.leaving.iter().map(|(a, ..)| *a).collect();
        for m in before {
            if !after.contains(&m.addr) && leaving.insert(m.addr) {
                let from = since.get(&m.addr).copied().unwrap_or(now);
                self.leaving.push((m.addr, m.weight, m.source, from));
            }
        }
    }

    /// The admin API adds `addr` with `weight`.
    pub fn api_add(&mut self, addr: SocketAddr, weight: u32, now: u64) -> Result<(), ChangeError> {
        if self.members().iter().any(|m| m.addr == addr) {
            return Err(ChangeError::Exists(addr));
        }
        let before = self.members();
        let o = self.overrides.entry(addr).or_default();
        o.added = Some(weight);
        o.removed = false;
        o.weight = None;
        o.state = None;
        self.draining_since.remove(&addr);
        self.api_order.retain(|a| *a != addr);
        self.api_order.push(addr);
        self.note_leavers(&before, now);
        Ok(())
    }

    /// The admin API removes `addr`: it drains for the drain time, or goes at once (`now_`).
    pub fn api_remove(
        &mut self,
        addr: SocketAddr,
        at_once: bool,
        now: u64,
    ) -> Result<(), ChangeError> {
        let before = self.members();
        if !before.iter().any(|m| m.addr == addr) {
            // Already leaving: `?now=true` cuts the drain short.
            if at_once && self.leaving.iter().any(|(a, ..)| *a == addr) {
                self.leaving.retain(|(a, ..)| *a != addr);
                return Ok(());
            }
            return Err(ChangeError::NoSuchDownstream(addr));
        }
        let o = self.overrides.entry(addr).or_default();
        *o = Override {
            removed: true,
            ..Override::default()
        };
        self.api_order.retain(|a| *a != addr);
        self.draining_since.remove(&addr);
        self.note_leavers(&before, now);
        if at_once {
            self.leaving.retain(|(a, ..)| *a != addr);
        }
        Ok(())
    }

    /// The admin API sets `addr`'s weight and/or state.
    pub fn api_patch(
        &mut self,
        addr: SocketAddr,
        weight: Option<u32>,
        state: Option<AdminState>,
        now: u64,
    ) -> Result<(), ChangeError> {
        if !self.members().iter().any(|m| m.addr == addr) {
            return Err(ChangeError::NoSuchDownstream(addr));
        }
        let o = self.overrides.entry(addr).or_default();
        if let Some(w) = weight {
            o.weight = Some(w);
        }
        if let Some(s) = state {
            o.state = Some(s);
            if s == AdminState::Draining {
                self.draining_since.entry(addr).or_insert(now);
            } else {
                self.draining_since.remove(&addr);
            }
        }
        Ok(())
    }

    /// Records what the health checks say about `addr`.
    pub fn set_health(&mut self, addr: SocketAddr, health: Health) {
        self.health.insert(addr, health);
    }

    /// What the health checks last said about `addr`.
    pub fn health(&self, addr: SocketAddr) -> Health {
        self.health.get(&addr).copied().unwrap_or_default()
    }

    /// Every address health checks should probe: members and those still draining out.
    pub fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.members().iter().map(|m| m.addr).collect();
        v.extend(self.leaving.iter().map(|(a, ..)| *a));
        v
    }

    /// The API's word if it said anything, else draining while Kubernetes says terminating.
    fn state_of(&self, addr: SocketAddr) -> AdminState {
        match self.overrides.get(&addr).and_then(|o| o.state) {
            Some(s) => s,
            None if self.kube_terminating.contains_key(&addr) => AdminState::Draining,
            None => AdminState::Active,
        }
    }

    /// Since when `addr` has been draining: by the API's word, else by Kubernetes'.
    fn draining_since(&self, addr: SocketAddr) -> Option<u64> {
        match self.overrides.get(&addr).and_then(|o| o.state) {
            Some(_) => self.draining_since.get(&addr).copied(),
            None => self.kube_terminating.get(&addr).copied(),
        }
    }

    /// Forgets the leavers whose drain is over at `now` (call before [`endpoints`]).
    ///
    /// [`endpoints`]: Self::endpoints
    pub fn expire(&mut self, now: u64) {
        let drain = self.drain_ms;
        self.leaving
            .retain(|&(.., since)| now < since.saturating_add(drain));
    }

    /// The set to serve at `now`.
    pub fn endpoints(&self, now: u64) -> Computed {
        let drain = self.drain_ms;
        let mut next: Option<u64> = None;
        let mut note = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        let mut active = Vec::new();
        let mut sick = Vec::new();
        let mut draining = Vec::new();
        for m in self.members() {
            let e = Endpoint::new(m.addr).with_weight(m.weight);
            match self.state_of(m.addr) {
                AdminState::Disabled => {}
                AdminState::Draining => {
                    let since = self.draining_since(m.addr).unwrap_or(now);
                    let end = since.saturating_add(drain);
                    if now < end {
                        note(end);
                        draining.push(drained(e));
                    }
                }
                AdminState::Active if self.health(m.addr) == Health::Unhealthy => sick.push(e),
                AdminState::Active => active.push(e),
            }
        }
        for &(addr, weight, _, since) in &self.leaving {
            let end = since.saturating_add(drain);
            if now < end {
                note(end);
                draining.push(drained(Endpoint::new(addr).with_weight(weight)));
            }
        }
        let panic = active.is_empty() && !sick.is_empty();
        if panic {
            active = sick;
        }
        active.extend(draining);
        Computed {
            endpoints: active,
            panic,
            next_change: next,
        }
    }

    /// Every downstream for the API: members, then those leaving.
    pub fn downstreams(&self) -> Vec<DownstreamInfo> {
        let mut out: Vec<DownstreamInfo> = self
            .members()
            .iter()
            .map(|m| DownstreamInfo {
                addr: m.addr,
                weight: m.weight,
                state: self.state_of(m.addr),
                health: self.health(m.addr),
                source: m.source,
                leaving: false,
            })
            .collect();
        out.extend(
            self.leaving
                .iter()
                .map(|&(addr, weight, source, _)| DownstreamInfo {
                    addr,
                    weight,
                    state: AdminState::Draining,
                    health: self.health(addr),
                    source,
                    leaving: true,
                }),
        );
        out
    }
}

fn drained(mut e: Endpoint) -> Endpoint {
    e.state = EndpointState::Draining;
    e
}

/// Every listener's desired state, in config order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    listeners: Vec<ListenerState>,
}

impl Desired {
    /// The state a validated config asks for (files not read yet).
    pub fn from_config(cfg: &Config) -> Desired {
        Desired {
            listeners: cfg.listeners.iter().map(ListenerState::new).collect(),
        }
    }

    /// Listener `name`'s state.
    pub fn listener(&self, name: &str) -> Option<&ListenerState> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Listener `name`'s state, to change.
    pub fn listener_mut(&mut self, name: &str) -> Option<&mut ListenerState> {
        self.listeners.iter_mut().find(|l| l.name == name)
    }

    /// Every listener, in config order.
    pub fn listeners(&self) -> &[ListenerState] {
        &self.listeners
    }

    /// Applies a reloaded config: listeners that stay keep what the API and health checks
    /// said and take the new static part; new ones start fresh; removed ones are dropped;
    /// `recreated` ones (bind, mode, ... changed) keep the API's word as well, since they are
    /// the same listener to their users.
    pub fn apply_config(&mut self, cfg: &Config, now: u64) {
        let mut next = Vec::with_capacity(cfg.listeners.len());
        for l in &cfg.listeners {
            match self.listeners.iter().position(|o| o.name == l.name) {
                Some(i) => {
                    let mut s = self.listeners.swap_remove(i);
                    s.set_static(l, now);
                    next.push(s);
                }
                None => next.push(ListenerState::new(l)),
            }
        }
        self.listeners = next;
    }
}

#[cfg(test)]
mod tests;
