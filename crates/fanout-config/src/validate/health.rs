//! `health:` sections: the top-level default, each listener's override, and how they combine.
//!
//! **Merging is key by key** (as nginx and Envoy users expect): a listener's `health:` takes
//! every key it sets from itself and every other key from the top-level section, then from the
//! defaults. `enabled` is merged like any other key, so a top-level `enabled: false` section
//! is a template that a listener opts into with `health: {enabled: true}`, and a listener's
//! `health: {enabled: false}` turns checks off for that listener alone. `interval_secs` and
//! `interval_ms` are one key (`interval`) for merging, as are the two `timeout` forms: a
//! listener's `interval_ms` replaces a top-level `interval_secs`.
//!
//! Checks come in two steps. Each section's keys are checked on their own and reported at
//! their own path (`health.fall`, `listeners[2].health.send`). The rules that relate keys
//! (timeout within the interval, no UDP-only key with `protocol: icmp`) are checked on the
//! merged result and reported at the key that breaks them, in the most specific section that
//! sets one of them; the top-level section must satisfy them on its own too. An error that
//! comes only from top-level keys is reported once, not once per listener.
//!
//! A UDP-only key (`send`, `expect`, `port`) inherited from the top-level section by a
//! listener whose own section sets `protocol: icmp` is ignored rather than an error: the
//! listener cannot unset it, and it means nothing to an ICMP check.

use std::time::Duration;

use super::{Errors, within};
use crate::model::{HealthConfig, HealthProtocol};
use crate::raw::{RawHealth, RawHealthProtocol};

/// Largest probe payload: the largest UDP payload over IPv4.
const MAX_PAYLOAD: usize = 65_507;

/// A key's checked value and the path it was written at.
#[derive(Debug, Clone)]
struct At<T> {
    v: T,
    path: String,
}

/// One section's keys, each checked on its own; `None`: not set here.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    enabled: Option<At<bool>>,
    protocol: Option<At<HealthProtocol>>,
    interval: Option<At<Duration>>,
    timeout: Option<At<Duration>>,
    fall: Option<At<u32>>,
    rise: Option<At<u32>>,
    send: Option<At<Vec<u8>>>,
    expect: Option<At<Vec<u8>>>,
    port: Option<At<u16>>,
}

/// The top-level `health:` as checked, for the listeners to inherit.
#[derive(Debug)]
pub(super) enum Top {
    /// No top-level section.
    Absent,
    /// Present but with errors (already reported): listeners resolve nothing from it.
    Invalid,
    /// Present and valid: its keys, and what a listener without a section of its own gets.
    Valid {
        keys: Box<Keys>,
        resolved: Option<HealthConfig>,
    },
}

/// Checks the top-level `health:`.
pub(super) fn top(raw: Option<&RawHealth>, errs: &mut Errors) -> Top {
    let Some(raw) = raw else { return Top::Absent };
    let Some(keys) = section(raw, "health", errs) else {
        return Top::Invalid;
    };
    let before = errs.0.len();
    let resolved = resolve(&keys, "health", errs);
    if errs.0.len() > before {
        return Top::Invalid;
    }
    Top::Valid {
        keys: Box::new(keys),
        resolved,
    }
}

/// `listeners[i].health` merged over the top-level section: the checks to run, `None` when
/// there are none (disabled, or neither section present) or the sections have errors.
pub(super) fn listener(
    raw: Option<&RawHealth>,
    p: &str,
    top: &Top,
    errs: &mut Errors,
) -> Option<HealthConfig> {
    let path = format!("{p}.health");
    let Some(raw) = raw else {
        return match top {
            Top::Valid { resolved, .. } => resolved.clone(),
            Top::Absent | Top::Invalid => None,
        };
    };
    let own = section(raw, &path, errs)?;
    match top {
        Top::Absent => resolve(&own, &path, errs),
        Top::Valid { keys, .. } => resolve(&merge(own, keys), &path, errs),
        Top::Invalid => None,
    }
}

/// `over`'s keys, and `under`'s where `over` does not set one.
fn merge(over: Keys, under: &Keys) -> Keys {
    Keys {
        enabled: over.enabled.or_else(|| under.enabled.clone()),
        protocol: over.protocol.or_else(|| under.protocol.clone()),
        interval: over.interval.or_else(|| under.interval.clone()),
        timeout: over.timeout.or_else(|| under.timeout.clone()),
        fall: over.fall.or_else(|| under.fall.clone()),
        rise: over.rise.or_else(|| under.rise.clone()),
        send: over.send.or_else(|| under.send.clone()),
        expect: over.expect.or_else(|| under.expect.clone()),
        port: over.port.or_else(|| under.port.clone()),
    }
}

/// Checks every key of the section at `p` on its own; `None` if any is invalid.
fn section(raw: &RawHealth, p: &str, errs: &mut Errors) -> Option<Keys> {
    let before = errs.0.len();
    let at = |key: &str| format!("{p}.{key}");
    let mut k = Keys {
        enabled: raw.enabled.map(|v| At {
            v,
            path: at("enabled"),
        }),
        protocol: raw.protocol.map(|v| At {
            v: match v {
                RawHealthProtocol::Udp => HealthProtocol::Udp,
                RawHealthProtocol::Icmp => HealthProtocol::Icmp,
            },
            path: at("protocol"),
        }),
        interval: duration(raw.interval_secs, raw.interval_ms, p, "interval", errs),
        timeout: duration(raw.timeout_secs, raw.timeout_ms, p, "timeout", errs),
        ..Keys::default()
    };
    let count = |key: &str, v: Option<i64>, errs: &mut Errors| {
        within(v, 1..=100, at(key), "", errs).map(|v| At {
            v: v as u32,
            path: at(key),
        })
    };
    k.fall = count("fall", raw.fall, errs);
    k.rise = count("rise", raw.rise, errs);
    k.port = within(raw.port, 1..=65_535, at("port"), "", errs).map(|v| At {
        v: v as u16,
        path: at("port"),
    });
    k.send = raw.send.as_deref().and_then(|s| {
        payload(s, &at("send"), errs).map(|v| At {
            v,
            path: at("send"),
        })
    });
    k.expect = raw.expect.as_deref().and_then(|s| {
        let v = payload(s, &at("expect"), errs)?;
        if v.is_empty() {
            errs.add(
                at("expect"),
                "empty: every reply starts with it; leave expect out to accept any reply",
            );
            return None;
        }
        Some(At {
            v,
            path: at("expect"),
        })
    });
    (errs.0.len() == before).then_some(k)
}

/// `{base}_secs` or `{base}_ms` (not both) of the section at `p`, more than zero.
fn duration(
    secs: Option<i64>,
    ms: Option<i64>,
    p: &str,
    base: &str,
    errs: &mut Errors,
) -> Option<At<Duration>> {
    let why = if base == "timeout" {
        "a probe needs time for its answer"
    } else {
        "probes need time between them"
    };
    let mut one = |key: String, v: i64, max: i64, unit: fn(u64) -> Duration| {
        if v < 1 || v > max {
            errs.add(
                &key,
                format!("{v} is invalid: use 1..={max} ({why}, and at most an hour)"),
            );
            return None;
        }
        Some(At {
            v: unit(v as u64),
            path: key,
        })
    };
    match (secs, ms) {
        (Some(_), Some(_)) => {
            errs.add(
                format!("{p}.{base}_ms"),
                format!("give {base}_secs or {base}_ms, not both"),
            );
            None
        }
        (Some(s), None) => one(format!("{p}.{base}_secs"), s, 3_600, Duration::from_secs),
        (None, Some(m)) => one(
            format!("{p}.{base}_ms"),
            m,
            3_600_000,
            Duration::from_millis,
        ),
        (None, None) => None,
    }
}

/// A probe payload: `"hex:0a0b..."` for bytes, else the text's UTF-8 bytes.
fn payload(s: &str, path: &str, errs: &mut Errors) -> Option<Vec<u8>> {
    let bytes = match s.strip_prefix("hex:") {
        Some(h) => match hex(h) {
            Some(b) => b,
            None => {
                errs.add(
                    path,
                    format!("invalid hex \"{h}\": after \"hex:\" write pairs of hex digits, e.g. \"hex:0a0b\""),
                );
                return None;
            }
        },
        None => s.as_bytes().to_vec(),
    };
    if bytes.len() > MAX_PAYLOAD {
        errs.add(
            path,
            format!(
                "{} bytes is too long: a UDP payload holds at most {MAX_PAYLOAD}",
                bytes.len()
            ),
        );
        return None;
    }
    Some(bytes)
}

/// Hex digit pairs (whitespace between them ignored).
fn hex(h: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = h
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

/// The checks `k` describes, with the rules that relate keys; `own` is the path of the most
/// specific section (`health` or `listeners[i].health`). `None` when disabled or invalid.
fn resolve(k: &Keys, own: &str, errs: &mut Errors) -> Option<HealthConfig> {
    if !k.enabled.as_ref().is_none_or(|e| e.v) {
        return None;
    }
    let d = HealthConfig::default();
    let interval = k.interval.as_ref().map_or(d.interval, |i| i.v);
    let mut h = HealthConfig {
        protocol: k.protocol.as_ref().map_or(d.protocol, |p| p.v),
        interval,
        timeout: k.timeout.as_ref().map_or(d.timeout.min(interval), |t| t.v),
        fall: k.fall.as_ref().map_or(d.fall, |f| f.v),
        rise: k.rise.as_ref().map_or(d.rise, |r| r.v),
        ..d
    };
    let mut ok = timeout_within_interval(k, own, errs);
    if let Some(proto) = k.protocol.as_ref().filter(|p| p.v == HealthProtocol::Icmp) {
        ok &= udp_only(k, proto, own, errs);
    } else {
        h.send = k.send.as_ref().map_or(h.send, |s| s.v.clone());
        h.expect = k.expect.as_ref().map(|e| e.v.clone());
        h.port = k.port.as_ref().map(|p| p.v);
    }
    ok.then_some(h)
}

/// A probe must be answered (or given up) before the next one goes out. False if broken.
fn timeout_within_interval(k: &Keys, own: &str, errs: &mut Errors) -> bool {
    // The default timeout is never longer than the interval, so only a set one can be.
    let Some(t) = &k.timeout else { return true };
    let (interval, from) = match &k.interval {
        Some(i) => (i.v, i.path.as_str()),
        None => (HealthConfig::default().interval, "the default"),
    };
    if t.v <= interval {
        return true;
    }
    let (path, reason) = if !within_section(&t.path, own) && within_section(from, own) {
        (
            from,
            format!(
                "{} is shorter than the timeout ({}, {}): a probe must be answered before the next one goes out",
                show(interval),
                show(t.v),
                t.path
            ),
        )
    } else {
        (
            t.path.as_str(),
            format!(
                "{} is longer than the interval ({}, {from}): a probe must be answered before the next one goes out, so make timeout <= interval",
                show(t.v),
                show(interval)
            ),
        )
    };
    errs.add_once(path, reason);
    false
}

/// `send`, `expect` and `port` mean nothing to ICMP echo. One inherited from the top-level
/// section by a listener that chose `protocol: icmp` itself is ignored; one set beside the
/// protocol, or in a more specific section, is an error. False if any is.
fn udp_only(k: &Keys, proto: &At<HealthProtocol>, own: &str, errs: &mut Errors) -> bool {
    let set = [
        k.send.as_ref().map(|a| a.path.as_str()),
        k.expect.as_ref().map(|a| a.path.as_str()),
        k.port.as_ref().map(|a| a.path.as_str()),
    ];
    let mut ok = true;
    for path in set.into_iter().flatten() {
        if !within_section(path, own) && within_section(&proto.path, own) {
            continue;
        }
        // Worded from the key's own section, so that an error that comes only from the
        // top-level section reads the same for every listener (and is reported once).
        let also = if section_of(&proto.path) == section_of(path) {
            String::new()
        } else {
            format!(", set at {}", proto.path)
        };
        errs.add_once(
            path,
            format!("only for protocol: udp (this check is protocol: icmp{also}, and an echo request carries no payload or port of yours)"),
        );
        ok = false;
    }
    ok
}

/// Whether the key at `path` is in the section at `section`.
fn within_section(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The section of the key at `path` (`listeners[0].health` for `listeners[0].health.send`).
fn section_of(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(s, _)| s)
}

/// `5s`, `1500ms`.
fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
