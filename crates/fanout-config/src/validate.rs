//! From the raw model to a checked [`Config`]: every rule, every error with its key path.
//!
//! Validation does not stop at the first problem: every check adds to one error list and goes
//! on with what it could read, so a user fixes a file in one pass. A listener's checks run in
//! key order (name, bind, downstreams_file, kubernetes, downstreams, session, drain_secs, health, then the
//! rules of its plane), which keeps the errors in file order; the rules that compare listeners with each other (unique names and
//! binds, the kernel plane's listener count) share what earlier listeners claimed.
//!
//! A listener needs at least one downstream in `downstreams:` unless it names a
//! `downstreams_file` or a `kubernetes` Service; then the static list may be empty or absent. The file is not read here
//! (the control plane reads it at start and on every reload), so the rules on the size of a
//! set (the kernel plane's [`crate::kernel_limits`]) are checked here on the static list only and
//! apply to the union of all sources at run time. Relative paths (`downstreams_file`,
//! `admin.token_file`) are resolved against the config file's directory when the file is
//! loaded with [`crate::load`], and kept as written by [`crate::from_yaml`].
//!
//! `health:` has its rules and its merging (a listener's section over the top-level one, key
//! by key) in [`health`]; `admin:` and the rules between endpoint addresses in [`admin`].

mod admin;
mod health;
mod kubernetes;
mod planes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_core::select::Distribution;

use crate::error::{ConfigError, ConfigErrors};
use crate::model::{
    Config, DEFAULT_DRAIN, DataplaneConfig, DownstreamConfig, Fallback, ListenerConfig,
    MAX_SESSIONS, MAX_WEIGHT, MetricsConfig, Mode, SessionConfig,
};
use crate::raw::{
    RawConfig, RawDataplane, RawDistribution, RawDownstream, RawFallback, RawListener, RawMetrics,
    RawMode, RawSession, RawWorkers, Scalar,
};

/// Collects errors while walking the raw model.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(path, reason));
    }

    /// Adds the error unless the same one is there already (a rule that several listeners
    /// inherit from one section is reported once).
    fn add_once(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        let e = ConfigError::new(path, reason);
        if !self.0.contains(&e) {
            self.0.push(e);
        }
    }
}

/// Largest `drain_secs`: an hour.
const MAX_DRAIN_SECS: i64 = 3_600;

/// What every listener's checks share besides the error list.
struct Ctx<'a> {
    /// What earlier listeners claimed.
    seen: Seen,
    /// The directory relative paths are resolved against (`None`: kept as written).
    base: Option<&'a Path>,
    /// The top-level `health:`, for the listeners to inherit.
    health: health::Top,
}

/// Checks `raw`; `base` is the directory relative paths are resolved against (the config
/// file's), `None` to keep them as written.
pub(crate) fn validate(raw: RawConfig, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let mut ctx = Ctx {
        seen: Seen::default(),
        base,
        health: health::top(raw.health.as_ref(), &mut errs),
    };
    let listeners = match raw.listeners {
        None => {
            errs.add("listeners", "required: list at least one listener");
            Vec::new()
        }
        Some(ls) if ls.is_empty() => {
            errs.add("listeners", "list at least one listener");
            Vec::new()
        }
        Some(ls) => ls
            .into_iter()
            .enumerate()
            .filter_map(|(i, l)| listener(i, l, &mut ctx, &mut errs))
            .collect(),
    };
    let metrics = metrics(raw.metrics, &mut errs);
    let dataplane = dataplane(raw.dataplane, &mut errs);
    let admin = admin::admin(raw.admin, base, &mut errs);
    admin::clashes(admin.as_ref(), metrics.as_ref(), &listeners, &mut errs);
    if errs.0.is_empty() {
        Ok(Config {
            listeners,
            metrics: metrics.unwrap_or_default(),
            dataplane: dataplane.unwrap_or_default(),
            admin,
        })
    } else {
        Err(ConfigErrors(errs.0))
    }
}

/// What earlier listeners claimed, for the rules that compare listeners with each other.
#[derive(Default)]
struct Seen {
    /// Name → index of the first listener with it.
    names: HashMap<String, usize>,
    /// Bind address (explicit port) → index of the first listener with it.
    binds: HashMap<SocketAddr, usize>,
    /// Kernel-plane listeners so far.
    kernel_listeners: usize,
}

/// Checks `listeners[i]`; `None` when its name or bind is unusable (the errors say why).
/// The checks run in key order, so errors come out in the order of the file.
fn listener(
    i: usize,
    l: RawListener,
    ctx: &mut Ctx<'_>,
    errs: &mut Errors,
) -> Option<ListenerConfig> {
    let seen = &mut ctx.seen;
    let p = format!("listeners[{i}]");
    let name = listener_name(l.name, &p, i, &mut seen.names, errs);
    let bind = listener_bind(l.bind.as_ref(), &p, i, &mut seen.binds, errs);
    let mode = mode(l.mode);
    let distribution = distribution(l.distribution);
    let downstreams_file = path_key(
        l.downstreams_file.as_deref(),
        &format!("{p}.downstreams_file"),
        ctx.base,
        errs,
    );
    // Another source of downstreams (even one with errors, reported on its own): then the
    // static list may be empty.
    let has_file = l.downstreams_file.is_some() || l.kubernetes.is_some();
    let kubernetes = l
        .kubernetes
        .and_then(|k| kubernetes::kubernetes(k, &format!("{p}.kubernetes"), errs));
    let downstreams = downstreams(l.downstreams, &p, bind, has_file, errs);
    let session = l.session.and_then(|s| session(s, &p, errs));
    let drain = within(
        l.drain_secs,
        0..=MAX_DRAIN_SECS,
        format!("{p}.drain_secs"),
        " (0: sessions re-pin at once)",
        errs,
    )
    .map_or(DEFAULT_DRAIN, |s| Duration::from_secs(s as u64));
    let health = health::listener(l.health.as_ref(), &p, &ctx.health, errs);
    let fallback = fallback(l.fallback);
    if mode == Mode::Userspace {
        planes::userspace_rules(&p, l.fallback.is_some(), errs);
    } else {
        seen.kernel_listeners += 1;
        planes::kernel_rules(
            &planes::KernelListener {
                p: &p,
                mode,
                bind,
                interface: l.interface.as_deref(),
                distribution,
                downstreams: &downstreams,
                session: session.is_some(),
                count: seen.kernel_listeners,
            },
            errs,
        );
    }
    Some(ListenerConfig {
        name: name?,
        bind: bind?,
        mode,
        interface: l.interface,
        distribution,
        downstreams,
        session,
        fallback,
        downstreams_file,
        drain,
        health,
        kubernetes,
    })
}

/// `listeners[i].name`: present, well-formed, unique.
fn listener_name(
    raw: Option<String>,
    p: &str,
    i: usize,
    names: &mut HashMap<String, usize>,
    errs: &mut Errors,
) -> Option<String> {
    match raw {
        None => {
            errs.add(format!("{p}.name"), "required");
            None
        }
        Some(n) if !valid_name(&n) => {
            errs.add(
                format!("{p}.name"),
                format!("invalid name \"{n}\": use 1-64 letters, digits, '_', '-' or '.'"),
            );
            None
        }
        Some(n) => {
            if let Some(first) = names.insert(n.clone(), i) {
                errs.add(
                    format!("{p}.name"),
                    format!("duplicate name \"{n}\" (also listeners[{first}])"),
                );
            }
            Some(n)
        }
    }
}

/// `listeners[i].bind`: present, a socket address, and (unless port 0) not another
/// listener's.
fn listener_bind(
    raw: Option<&Scalar>,
    p: &str,
    i: usize,
    binds: &mut HashMap<SocketAddr, usize>,
    errs: &mut Errors,
) -> Option<SocketAddr> {
    let bind = match raw {
        None => {
            errs.add(format!("{p}.bind"), "required");
            None
        }
        Some(s) => socket_addr(s, &format!("{p}.bind"), errs),
    };
    if let Some(b) = bind.filter(|b| b.port() != 0)
        && let Some(first) = binds.insert(b, i)
    {
        errs.add(
            format!("{p}.bind"),
            format!("duplicate bind {b} (also listeners[{first}])"),
        );
    }
    bind
}

fn mode(raw: Option<RawMode>) -> Mode {
    match raw.unwrap_or(RawMode::Userspace) {
        RawMode::Userspace => Mode::Userspace,
        RawMode::Xdp => Mode::Xdp,
        RawMode::TcEbpf => Mode::TcEbpf,
    }
}

fn distribution(raw: Option<RawDistribution>) -> Distribution {
    match raw.unwrap_or(RawDistribution::RoundRobin) {
        RawDistribution::RoundRobin => Distribution::RoundRobin,
        RawDistribution::ConsistentHash => Distribution::ConsistentHash,
        RawDistribution::Mirror => Distribution::Mirror,
    }
}

fn fallback(raw: Option<RawFallback>) -> Fallback {
    match raw {
        None | Some(RawFallback::None) => Fallback::None,
        Some(RawFallback::Userspace) => Fallback::Userspace,
    }
}

/// `listeners[i].downstreams`: a list of valid, distinct downstreams, not empty unless the
/// listener has another source (`has_file`: a `downstreams_file` or `kubernetes`).
fn downstreams(
    raw: Option<Vec<RawDownstream>>,
    p: &str,
    bind: Option<SocketAddr>,
    has_file: bool,
    errs: &mut Errors,
) -> Vec<DownstreamConfig> {
    let Some(raw) = raw else {
        if !has_file {
            errs.add(
                format!("{p}.downstreams"),
                "required: list at least one downstream (or name a downstreams_file, or a kubernetes service)",
            );
        }
        return Vec::new();
    };
    if raw.is_empty() && !has_file {
        errs.add(
            format!("{p}.downstreams"),
            "list at least one downstream (or name a downstreams_file, or a kubernetes service)",
        );
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (j, d) in raw.into_iter().enumerate() {
        let dp = format!("{p}.downstreams[{j}]");
        let addr = match &d.address {
            None => {
                errs.add(format!("{dp}.address"), "required");
                None
            }
            Some(s) => socket_addr(s, &dp, errs),
        };
        let weight = weight(d.weight, &dp, errs);
        let Some(addr) = addr else { continue };
        if !usable_downstream(addr, &dp, bind, errs) {
            continue;
        }
        if let Some(first) = seen.insert(addr, j) {
            errs.add(
                dp,
                format!("duplicate downstream {addr} (also downstreams[{first}])"),
            );
            continue;
        }
        if let Some(weight) = weight {
            out.push(DownstreamConfig { addr, weight });
        }
    }
    out
}

/// A downstream's weight: 1 when not given, else `1..=MAX_WEIGHT`.
fn weight(raw: Option<i64>, dp: &str, errs: &mut Errors) -> Option<u32> {
    match raw {
        None => Some(1),
        Some(w) if w < 1 => {
            errs.add(
                format!("{dp}.weight"),
                format!("weight {w} is invalid: must be at least 1"),
            );
            None
        }
        Some(w) if w > i64::from(MAX_WEIGHT) => {
            errs.add(
                format!("{dp}.weight"),
                format!("weight {w} is invalid: must be at most {MAX_WEIGHT}"),
            );
            None
        }
        Some(w) => u32::try_from(w).ok(),
    }
}

/// Whether datagrams can be sent to `addr`: a real port, a named host, not the listener
/// itself. Reports the first reason it cannot.
fn usable_downstream(
    addr: SocketAddr,
    dp: &str,
    bind: Option<SocketAddr>,
    errs: &mut Errors,
) -> bool {
    match unusable(addr, bind) {
        None => true,
        Some(reason) => {
            errs.add(dp, reason);
            false
        }
    }
}

/// Why datagrams cannot be sent to `addr` from a listener on `bind`, if they cannot. The same
/// words for the config's list and a downstreams file.
pub(crate) fn unusable(addr: SocketAddr, bind: Option<SocketAddr>) -> Option<String> {
    if addr.port() == 0 {
        Some(format!("downstream {addr} has port 0"))
    } else if addr.ip().is_unspecified() {
        Some(format!(
            "downstream {addr} is an unspecified address; name a host"
        ))
    } else if Some(addr) == bind {
        Some(format!(
            "downstream {addr} is the listener itself (forwarding loop)"
        ))
    } else {
        None
    }
}

fn session(raw: RawSession, p: &str, errs: &mut Errors) -> Option<SessionConfig> {
    let mut s = SessionConfig::default();
    let before = errs.0.len();
    s.sticky = raw.sticky.unwrap_or(true);
    s.reply = raw.reply.unwrap_or(false);
    if !s.sticky && !s.reply {
        errs.add(
            format!("{p}.session"),
            "with sticky: false and reply: false a session does nothing; remove the section or enable one",
        );
    }
    let mut checked = |key: &str, raw, range, note: &str| {
        within(raw, range, format!("{p}.session.{key}"), note, errs)
    };
    let week = 7 * 86_400;
    if let Some(t) = checked(
        "idle_timeout_secs",
        raw.idle_timeout_secs,
        1..=week,
        " (a week)",
    ) {
        s.idle_timeout = Duration::from_secs(t as u64);
    }
    if let Some(m) = checked(
        "max_sessions",
        raw.max_sessions,
        1..=MAX_SESSIONS as i64,
        "",
    ) {
        s.max_sessions = m as usize;
    }
    (errs.0.len() == before).then_some(s)
}

fn metrics(raw: Option<RawMetrics>, errs: &mut Errors) -> Option<MetricsConfig> {
    let raw = raw?;
    let mut m = MetricsConfig {
        enabled: raw.enabled.unwrap_or(true),
        ..MetricsConfig::default()
    };
    if let Some(b) = &raw.bind {
        m.bind = socket_addr(b, "metrics.bind", errs)?;
    }
    Some(m)
}

fn dataplane(raw: Option<RawDataplane>, errs: &mut Errors) -> Option<DataplaneConfig> {
    let raw = raw?;
    let mut d = DataplaneConfig::default();
    let mut checked = |key: &str, raw, range, note: &str| {
        within(raw, range, format!("dataplane.{key}"), note, errs)
    };
    let workers = match raw.workers {
        None | Some(RawWorkers::Auto) => None,
        Some(RawWorkers::Count(n)) => Some(n),
    };
    if let Some(n) = checked("workers", workers, 1..=1024, " or \"auto\"") {
        d.workers = n as usize;
    }
    if let Some(b) = checked("batch_size", raw.batch_size, 1..=1024, "") {
        d.batch_size = b as usize;
    }
    if let Some(s) = raw.recv_buffer {
        d.recv_buffer = s.0;
    }
    if let Some(s) = raw.send_buffer {
        d.send_buffer = s.0;
    }
    if let Some(b) = checked("busy_poll_us", raw.busy_poll_us, 0..=1_000_000, "") {
        d.busy_poll = Duration::from_micros(b as u64);
    }
    if let Some(g) = raw.gro {
        d.gro = g;
    }
    if let Some(g) = raw.gso {
        d.gso = g;
    }
    if let Some(t) = checked("send_timeout_ms", raw.send_timeout_ms, 0..=10_000, "") {
        d.send_timeout = Duration::from_millis(t as u64);
    }
    Some(d)
}

/// An integer key with bounds: `raw` if it is given and lies in `range`. Out of range, an error
/// at `path` that names the range, followed by `note` (`0 is invalid: use 1..=1024 or
/// "auto"`), and `None`; every such key says it the same way.
fn within(
    raw: Option<i64>,
    range: RangeInclusive<i64>,
    path: impl Into<String>,
    note: &str,
    errs: &mut Errors,
) -> Option<i64> {
    let value = raw?;
    if range.contains(&value) {
        return Some(value);
    }
    errs.add(
        path,
        format!(
            "{value} is invalid: use {}..={}{note}",
            range.start(),
            range.end()
        ),
    );
    None
}

/// A path key: not empty; relative paths joined to `base` when there is one.
fn path_key(
    raw: Option<&str>,
    path: &str,
    base: Option<&Path>,
    errs: &mut Errors,
) -> Option<PathBuf> {
    let raw = raw?;
    if raw.trim().is_empty() {
        errs.add(path, "empty path: name a file");
        return None;
    }
    let p = Path::new(raw);
    Some(match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    })
}

fn socket_addr(s: &Scalar, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match s.0.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = address_hint(&s.0);
            errs.add(path, format!("invalid socket address \"{}\"{hint}", s.0));
            None
        }
    }
}

/// A hint for an address that does not parse as `ip:port` (empty when there is none to give).
pub(crate) fn address_hint(s: &str) -> &'static str {
    if s.contains("::") && !s.contains('[') {
        " (write IPv6 as [addr]:port)"
    } else if !s.contains(':') {
        " (expected ip:port, e.g. 127.0.0.1:5514)"
    } else {
        ""
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
