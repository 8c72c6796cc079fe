//! `admin:` (the HTTP admin API) and the rules between the addresses of the whole file.
//!
//! No section, no API. With one, `bind` defaults to [`DEFAULT_ADMIN_BIND`]; anything but a
//! loopback address needs `token_file`, because the API can change where traffic goes. The
//! token file is not read here: the API reads it at start and on every reload, so a rotated
//! token is picked up without touching the config (only an empty path is refused).

use std::net::SocketAddr;
use std::path::Path;

use super::{Errors, path_key, socket_addr};
use crate::model::{AdminConfig, DEFAULT_ADMIN_BIND, ListenerConfig, MetricsConfig};
use crate::raw::RawAdmin;

/// Checks `admin:`; `base` is the directory relative paths are resolved against.
pub(super) fn admin(
    raw: Option<RawAdmin>,
    base: Option<&Path>,
    errs: &mut Errors,
) -> Option<AdminConfig> {
    let raw = raw?;
    let token_file = path_key(raw.token_file.as_deref(), "admin.token_file", base, errs);
    let bind = match &raw.bind {
        Some(b) => socket_addr(b, "admin.bind", errs)?,
        None => DEFAULT_ADMIN_BIND
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9091))),
    };
    if raw.token_file.is_none() && !bind.ip().is_loopback() {
        errs.add(
            "admin.token_file",
            "required when admin.bind is not a loopback address",
        );
    }
    Some(AdminConfig { bind, token_file })
}

/// The endpoints must not share an address: admin with metrics (both TCP, so a wildcard
/// address overlaps every address of its port), admin or metrics with a listener.
pub(super) fn clashes(
    admin: Option<&AdminConfig>,
    metrics: Option<&MetricsConfig>,
    listeners: &[ListenerConfig],
    errs: &mut Errors,
) {
    let metrics = metrics.filter(|m| m.enabled);
    if let Some(m) = metrics {
        for (i, l) in listeners.iter().enumerate() {
            if l.bind == m.bind && m.bind.port() != 0 {
                errs.add(
                    format!("listeners[{i}].bind"),
                    format!("{} is also metrics.bind", l.bind),
                );
            }
        }
    }
    let Some(a) = admin.filter(|a| a.bind.port() != 0) else {
        return;
    };
    if let Some(m) = metrics.filter(|m| overlap(m.bind, a.bind)) {
        errs.add(
            "admin.bind",
            format!("{} overlaps metrics.bind ({})", a.bind, m.bind),
        );
    }
    for (i, l) in listeners.iter().enumerate() {
        if l.bind == a.bind {
            errs.add(
                "admin.bind",
                format!("{} is also listeners[{i}].bind", a.bind),
            );
        }
    }
}

/// Whether two TCP binds would collide: one port, and one address or a wildcard covering the
/// other (`[::]` covers IPv4 too: sockets are dual-stack by default).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, x: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || x.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}
