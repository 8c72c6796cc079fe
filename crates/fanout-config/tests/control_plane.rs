//! The control plane's keys (`admin`, `health`, `drain_secs`, `downstreams_file`): defaults,
//! merging, and each bad case with the message it must give.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_config::{Config, HealthConfig, HealthProtocol, from_yaml, load};

fn ok(yaml: &str) -> Config {
    match from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn err(yaml: &str) -> String {
    match from_yaml(yaml) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// The whole error text must be exactly `expected` (one error a line).
fn assert_errs(yaml: &str, expected: &[&str]) {
    assert_eq!(err(yaml), expected.join("\n"), "for:\n{yaml}");
}

/// One listener `a` with `extra` keys, and `rest` at the top level.
fn one(extra: &str, rest: &str) -> String {
    format!(
        "listeners: [{{name: a, bind: '127.0.0.1:5514', downstreams: ['127.0.0.1:6001']{extra}}}]\n{rest}"
    )
}

fn health(yaml: &str) -> Option<HealthConfig> {
    ok(yaml).listeners.remove(0).health
}

// ---- health: the seed's form, defaults, merging ----

#[test]
fn the_seed_health_form_loads_as_is() {
    let h = health(&one(
        "",
        "health: {enabled: true, interval_secs: 10, timeout_secs: 5, protocol: icmp}",
    ))
    .unwrap();
    assert_eq!(h.protocol, HealthProtocol::Icmp);
    assert_eq!(h.interval, Duration::from_secs(10));
    assert_eq!(h.timeout, Duration::from_secs(5));
    assert_eq!((h.fall, h.rise), (3, 2));
    // Block style, as the seed document writes it.
    let h = health(&one(
        "",
        "health:\n  enabled: true\n  interval_secs: 5\n  timeout_secs: 2\n  protocol: icmp\n",
    ))
    .unwrap();
    assert_eq!(h.timeout, Duration::from_secs(2));
}

#[test]
fn health_defaults() {
    assert_eq!(health(&one("", "")), None, "no section, no checks");
    let h = health(&one("", "health: {}")).unwrap();
    assert_eq!(h, HealthConfig::default());
    assert_eq!(h.protocol, HealthProtocol::Udp);
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_secs(1));
    assert_eq!((h.fall, h.rise), (3, 2));
    assert_eq!(h.send, b"ping");
    assert_eq!((h.expect, h.port), (None, None));
    assert_eq!(
        health(&one(", health: {}", "")),
        Some(HealthConfig::default())
    );
    assert_eq!(health(&one("", "health: {enabled: false}")), None);
}

#[test]
fn the_default_timeout_is_never_longer_than_the_interval() {
    let h = health(&one("", "health: {interval_ms: 500}")).unwrap();
    assert_eq!(h.timeout, Duration::from_millis(500));
    let h = health(&one("", "health: {interval_secs: 10}")).unwrap();
    assert_eq!(h.timeout, Duration::from_secs(1));
}

#[test]
fn every_key() {
    let h = health(&one(
        "",
        "health: {protocol: udp, interval_ms: 2500, timeout_ms: 300, fall: 1, rise: 100, send: 'hex:0a 0B ff', expect: pong, port: 5515}",
    ))
    .unwrap();
    assert_eq!(h.interval, Duration::from_millis(2500));
    assert_eq!(h.timeout, Duration::from_millis(300));
    assert_eq!((h.fall, h.rise), (1, 100));
    assert_eq!(h.send, vec![0x0a, 0x0b, 0xff]);
    assert_eq!(h.expect.as_deref(), Some(&b"pong"[..]));
    assert_eq!(h.port, Some(5515));
    let h = health(&one("", "health: {send: '', expect: 'hex:00'}")).unwrap();
    assert!(h.send.is_empty(), "an empty datagram is a valid probe");
    assert_eq!(h.expect, Some(vec![0]));
}

#[test]
fn a_listener_section_merges_over_the_top_level_key_by_key() {
    let yaml = "listeners:
  - {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9'], health: {fall: 7}}
  - {name: b, bind: '127.0.0.1:2', downstreams: ['127.0.0.1:9']}
  - {name: c, bind: '127.0.0.1:3', downstreams: ['127.0.0.1:9'], health: {enabled: false}}
  - {name: d, bind: '127.0.0.1:4', downstreams: ['127.0.0.1:9'], health: {interval_ms: 2500}}
health: {interval_secs: 5, timeout_secs: 2, send: hello, port: 7}
";
    let c = ok(yaml);
    let h: Vec<Option<HealthConfig>> = c.listeners.into_iter().map(|l| l.health).collect();
    let top = HealthConfig {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        send: b"hello".to_vec(),
        port: Some(7),
        ..HealthConfig::default()
    };
    assert_eq!(
        h[0],
        Some(HealthConfig {
            fall: 7,
            ..top.clone()
        })
    );
    assert_eq!(h[1], Some(top.clone()), "no section: the top-level one");
    assert_eq!(h[2], None, "enabled: false turns it off for that listener");
    assert_eq!(
        h[3],
        Some(HealthConfig {
            interval: Duration::from_millis(2500),
            ..top.clone()
        }),
        "interval_ms replaces a top-level interval_secs"
    );
}

#[test]
fn a_disabled_top_level_section_is_a_template() {
    let yaml = "listeners:
  - {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9'], health: {enabled: true}}
  - {name: b, bind: '127.0.0.1:2', downstreams: ['127.0.0.1:9'], health: {fall: 1}}
  - {name: c, bind: '127.0.0.1:3', downstreams: ['127.0.0.1:9']}
health: {enabled: false, protocol: icmp, interval_secs: 3}
";
    let c = ok(yaml);
    let a = c.listeners[0].health.clone().unwrap();
    assert_eq!(a.protocol, HealthProtocol::Icmp);
    assert_eq!(a.interval, Duration::from_secs(3));
    assert_eq!(
        c.listeners[1].health, None,
        "enabled is merged like every key"
    );
    assert_eq!(c.listeners[2].health, None);
}

#[test]
fn a_listener_alone_may_have_checks() {
    let h = health(&one(", health: {protocol: icmp, interval_secs: 2}", "")).unwrap();
    assert_eq!(h.protocol, HealthProtocol::Icmp);
    assert_eq!(h.interval, Duration::from_secs(2));
}

// ---- health: errors ----

#[test]
fn health_key_ranges() {
    assert_errs(
        &one("", "health: {fall: 0, rise: 101, port: 0}"),
        &[
            "health.fall: 0 is invalid: use 1..=100",
            "health.rise: 101 is invalid: use 1..=100",
            "health.port: 0 is invalid: use 1..=65535",
        ],
    );
    assert_errs(
        &one(", health: {port: 70000}", ""),
        &["listeners[0].health.port: 70000 is invalid: use 1..=65535"],
    );
    assert_errs(
        &one("", "health: {timeout_secs: 0}"),
        &[
            "health.timeout_secs: 0 is invalid: use 1..=3600 (a probe needs time for its answer, and at most an hour)",
        ],
    );
    assert_errs(
        &one("", "health: {interval_ms: 0}"),
        &[
            "health.interval_ms: 0 is invalid: use 1..=3600000 (probes need time between them, and at most an hour)",
        ],
    );
    assert_errs(
        &one(", health: {interval_secs: 3601}", ""),
        &[
            "listeners[0].health.interval_secs: 3601 is invalid: use 1..=3600 (probes need time between them, and at most an hour)",
        ],
    );
}

#[test]
fn secs_and_ms_together_are_an_error() {
    assert_errs(
        &one("", "health: {interval_secs: 1, interval_ms: 500}"),
        &["health.interval_ms: give interval_secs or interval_ms, not both"],
    );
    assert_errs(
        &one(", health: {timeout_secs: 1, timeout_ms: 500}", ""),
        &["listeners[0].health.timeout_ms: give timeout_secs or timeout_ms, not both"],
    );
}

#[test]
fn the_timeout_must_fit_in_the_interval() {
    assert_errs(
        &one("", "health: {interval_secs: 2, timeout_secs: 5}"),
        &[
            "health.timeout_secs: 5s is longer than the interval (2s, health.interval_secs): a probe must be answered before the next one goes out, so make timeout <= interval",
        ],
    );
    assert_errs(
        &one("", "health: {timeout_ms: 1500}"),
        &[
            "health.timeout_ms: 1500ms is longer than the interval (1s, the default): a probe must be answered before the next one goes out, so make timeout <= interval",
        ],
    );
    // The listener's own key is the one blamed, whichever of the two it set.
    assert_errs(
        &one(", health: {timeout_secs: 5}", "health: {interval_secs: 2}"),
        &[
            "listeners[0].health.timeout_secs: 5s is longer than the interval (2s, health.interval_secs): a probe must be answered before the next one goes out, so make timeout <= interval",
        ],
    );
    assert_errs(
        &one(
            ", health: {interval_secs: 1}",
            "health: {interval_secs: 5, timeout_secs: 3}",
        ),
        &[
            "listeners[0].health.interval_secs: 1s is shorter than the timeout (3s, health.timeout_secs): a probe must be answered before the next one goes out",
        ],
    );
    let h = health(&one("", "health: {interval_secs: 2, timeout_secs: 2}")).unwrap();
    assert_eq!(h.timeout, h.interval, "equal is allowed");
}

#[test]
fn payloads() {
    assert_errs(
        &one("", "health: {send: 'hex:0g'}"),
        &[
            r#"health.send: invalid hex "0g": after "hex:" write pairs of hex digits, e.g. "hex:0a0b""#,
        ],
    );
    assert_errs(
        &one(", health: {expect: 'hex:abc'}", ""),
        &[
            r#"listeners[0].health.expect: invalid hex "abc": after "hex:" write pairs of hex digits, e.g. "hex:0a0b""#,
        ],
    );
    assert_errs(
        &one("", "health: {expect: ''}"),
        &["health.expect: empty: every reply starts with it; leave expect out to accept any reply"],
    );
    let big = "x".repeat(65_508);
    assert_errs(
        &one("", &format!("health: {{send: '{big}'}}")),
        &["health.send: 65508 bytes is too long: a UDP payload holds at most 65507"],
    );
}

#[test]
fn udp_only_keys_with_icmp() {
    assert_errs(
        &one("", "health: {protocol: icmp, send: x, expect: y, port: 9}"),
        &[
            "health.send: only for protocol: udp (this check is protocol: icmp, and an echo request carries no payload or port of yours)",
            "health.expect: only for protocol: udp (this check is protocol: icmp, and an echo request carries no payload or port of yours)",
            "health.port: only for protocol: udp (this check is protocol: icmp, and an echo request carries no payload or port of yours)",
        ],
    );
    assert_errs(
        &one(", health: {port: 9}", "health: {protocol: icmp}"),
        &[
            "listeners[0].health.port: only for protocol: udp (this check is protocol: icmp, set at health.protocol, and an echo request carries no payload or port of yours)",
        ],
    );
    // Inherited by a listener that chose ICMP itself: ignored (it cannot unset them).
    let h = health(&one(
        ", health: {protocol: icmp}",
        "health: {send: hello, port: 9}",
    ))
    .unwrap();
    assert_eq!(h.protocol, HealthProtocol::Icmp);
    assert_eq!((h.port, h.expect), (None, None));
}

#[test]
fn an_error_of_the_top_level_section_is_reported_once() {
    let yaml = "listeners:
  - {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9'], health: {fall: 2}}
  - {name: b, bind: '127.0.0.1:2', downstreams: ['127.0.0.1:9'], health: {rise: 2}}
health: {protocol: icmp, send: x}
";
    assert_errs(
        yaml,
        &[
            "health.send: only for protocol: udp (this check is protocol: icmp, and an echo request carries no payload or port of yours)",
        ],
    );
}

#[test]
fn health_type_and_unknown_key_errors_name_the_path() {
    let e = err(&one("", "health: {protocol: tcp}"));
    assert!(
        e.starts_with("health.protocol: unknown variant `tcp`, expected `udp` or `icmp`"),
        "{e}"
    );
    let e = err(&one(", health: {interval: 5}", ""));
    assert!(
        e.starts_with("listeners[0].health: unknown field `interval`"),
        "{e}"
    );
    let e = err(&one("", "health: {enabled: yes please}"));
    assert!(e.starts_with("health.enabled: invalid type"), "{e}");
}

// ---- drain_secs ----

#[test]
fn drain() {
    assert_eq!(ok(&one("", "")).listeners[0].drain, Duration::from_secs(30));
    assert_eq!(
        ok(&one(", drain_secs: 0", "")).listeners[0].drain,
        Duration::ZERO
    );
    assert_eq!(
        ok(&one(", drain_secs: 3600", "")).listeners[0].drain,
        Duration::from_secs(3600)
    );
    assert_errs(
        &one(", drain_secs: 3601", ""),
        &["listeners[0].drain_secs: 3601 is invalid: use 0..=3600 (0: sessions re-pin at once)"],
    );
    assert_errs(
        &one(", drain_secs: -1", ""),
        &["listeners[0].drain_secs: -1 is invalid: use 0..=3600 (0: sessions re-pin at once)"],
    );
    assert!(
        err(&one(", drain_secs: 1.5", "")).starts_with("listeners[0].drain_secs: invalid type")
    );
}

// ---- downstreams_file ----

#[test]
fn a_downstreams_file_makes_the_static_list_optional() {
    let c = ok("listeners: [{name: a, bind: '127.0.0.1:1', downstreams_file: /etc/uf/a.txt}]");
    let l = &c.listeners[0];
    assert!(l.downstreams.is_empty());
    assert_eq!(
        l.downstreams_file.as_deref(),
        Some(Path::new("/etc/uf/a.txt"))
    );
    let c =
        ok("listeners: [{name: a, bind: '127.0.0.1:1', downstreams: [], downstreams_file: a.txt}]");
    assert_eq!(
        c.listeners[0].downstreams_file.as_deref(),
        Some(Path::new("a.txt")),
        "from_yaml keeps a relative path as written"
    );
    let c = ok(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2'], downstreams_file: a.txt}]",
    );
    assert_eq!(c.listeners[0].downstreams.len(), 1, "both sources");
    assert_eq!(ok(&one("", "")).listeners[0].downstreams_file, None);
}

#[test]
fn without_a_file_the_static_list_is_still_required() {
    assert_errs(
        "listeners: [{name: a, bind: '127.0.0.1:1'}]",
        &[
            "listeners[0].downstreams: required: list at least one downstream (or name a downstreams_file, or a kubernetes service)",
        ],
    );
    assert_errs(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: []}]",
        &[
            "listeners[0].downstreams: list at least one downstream (or name a downstreams_file, or a kubernetes service)",
        ],
    );
}

#[test]
fn an_empty_path_is_an_error() {
    assert_errs(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams_file: ''}]",
        &["listeners[0].downstreams_file: empty path: name a file"],
    );
    assert_errs(
        &one("", "admin: {token_file: ' '}"),
        &["admin.token_file: empty path: name a file"],
    );
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("fanout-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_resolves_relative_paths_against_the_config_directory() {
    let dir = TempDir::new("relative");
    let cfg = dir.0.join("uf.yaml");
    std::fs::write(
        &cfg,
        "listeners:
  - {name: a, bind: '127.0.0.1:1', downstreams_file: ds/a.txt}
  - {name: b, bind: '127.0.0.1:2', downstreams_file: /abs/b.txt}
admin: {bind: '0.0.0.0:9091', token_file: token}
",
    )
    .unwrap();
    let c = load(&cfg).unwrap();
    assert_eq!(
        c.listeners[0].downstreams_file,
        Some(dir.0.join("ds/a.txt"))
    );
    assert_eq!(
        c.listeners[1].downstreams_file,
        Some(PathBuf::from("/abs/b.txt"))
    );
    assert_eq!(c.admin.unwrap().token_file, Some(dir.0.join("token")));
}

// ---- admin ----

#[test]
fn admin_defaults() {
    assert_eq!(ok(&one("", "")).admin, None, "no section, no API");
    let a = ok(&one("", "admin: {}")).admin.unwrap();
    assert_eq!(a.bind, fanout_config::DEFAULT_ADMIN_BIND.parse().unwrap());
    assert_eq!(a.token_file, None);
    let a = ok(&one("", "admin: {bind: '[::1]:9100'}")).admin.unwrap();
    assert_eq!(a.bind, "[::1]:9100".parse().unwrap());
    let a = ok(&one(
        "",
        "admin: {bind: '0.0.0.0:9091', token_file: /etc/uf/token}",
    ))
    .admin
    .unwrap();
    assert_eq!(a.token_file.as_deref(), Some(Path::new("/etc/uf/token")));
}

#[test]
fn a_non_loopback_admin_needs_a_token() {
    for bind in ["0.0.0.0:9091", "10.1.2.3:9091", "[::]:9091"] {
        assert_errs(
            &one("", &format!("admin: {{bind: '{bind}'}}")),
            &["admin.token_file: required when admin.bind is not a loopback address"],
        );
    }
    // A token on loopback is fine too.
    assert!(from_yaml(&one("", "admin: {token_file: /t}")).is_ok());
}

#[test]
fn admin_errors() {
    assert_errs(
        &one("", "admin: {bind: localhost}"),
        &[
            r#"admin.bind: invalid socket address "localhost" (expected ip:port, e.g. 127.0.0.1:5514)"#,
        ],
    );
    let e = err(&one("", "admin: {port: 9091}"));
    assert!(e.starts_with("admin: unknown field `port`"), "{e}");
}

#[test]
fn admin_must_not_share_an_address() {
    assert_errs(
        &one("", "metrics: {bind: '127.0.0.1:9091'}\nadmin: {}"),
        &["admin.bind: 127.0.0.1:9091 overlaps metrics.bind (127.0.0.1:9091)"],
    );
    assert_errs(
        &one(
            "",
            "metrics: {bind: '0.0.0.0:9091'}\nadmin: {bind: '127.0.0.1:9091'}",
        ),
        &["admin.bind: 127.0.0.1:9091 overlaps metrics.bind (0.0.0.0:9091)"],
    );
    assert_errs(
        &one("", "admin: {bind: '127.0.0.1:5514'}"),
        &["admin.bind: 127.0.0.1:5514 is also listeners[0].bind"],
    );
    // A disabled metrics endpoint claims nothing; different ports or families are apart.
    assert!(
        from_yaml(&one(
            "",
            "metrics: {enabled: false, bind: '127.0.0.1:9091'}\nadmin: {}"
        ))
        .is_ok()
    );
    assert!(
        from_yaml(&one(
            "",
            "metrics: {bind: '0.0.0.0:9091'}\nadmin: {bind: '[::1]:9091'}"
        ))
        .is_ok()
    );
    assert!(from_yaml(&one("", "metrics: {}\nadmin: {}")).is_ok());
    // Port 0 picks a free port: never a clash.
    assert!(
        from_yaml(&one(
            "",
            "metrics: {bind: '127.0.0.1:0'}\nadmin: {bind: '127.0.0.1:0'}"
        ))
        .is_ok()
    );
}

#[test]
fn a_config_without_the_new_keys_is_unchanged() {
    let c = ok(&one("", "metrics: {}"));
    assert_eq!(c.admin, None);
    let l = &c.listeners[0];
    assert_eq!(
        (l.health.as_ref(), l.downstreams_file.as_ref()),
        (None, None)
    );
    assert_eq!(l.drain, fanout_config::DEFAULT_DRAIN);
}

#[test]
fn the_shipped_examples_still_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml")
            && let Err(e) = load(&p)
        {
            panic!("{}: {e}", p.display());
        }
    }
}
