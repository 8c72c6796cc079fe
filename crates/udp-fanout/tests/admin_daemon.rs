//! The admin API and `udp-fanout ctl` against the real daemon (DESIGN.md 3b, "Admin API"):
//! every endpoint, with traffic checked after each change (a downstream added gets its share,
//! a weight moves the split, draining and disabled ones get no new flows, a removed one
//! drains and goes), reloads through the API, the API's changes kept across a SIGHUP reload,
//! every `ctl` command, the bearer token, and the rule that a non-loopback bind needs one.
//!
//! The listener keeps no sessions, so every datagram is chosen on its own: one client's
//! datagrams are spread by the weights, which is what [`split`] measures.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    Daemon, METRICS, WAIT, addr_of, ctl, eventually, run_cli, sinks, spread, write_in_place,
};
use fanout_control::admin::ListenerView;
use fanout_testkit::SinkHandle;
use serde_json::{Value, json};

/// Listener `l` over `statics`, draining for 1 s, with the admin API (`admin` holds its keys
/// but `bind`) and metrics.
fn config(statics: &[&SinkHandle], admin: &str) -> String {
    let list: Vec<String> = statics
        .iter()
        .map(|s| format!("'{}'", addr_of(s)))
        .collect();
    format!(
        "listeners:\n- {{name: l, bind: '127.0.0.1:0', drain_secs: 1, downstreams: [{}]}}\n{METRICS}\nadmin: {{bind: '127.0.0.1:0'{admin}}}",
        list.join(", ")
    )
}

/// Asserts that `share` is `want`, each within `slack` (a round-robin cycle restarts when the
/// set changes, and the datagrams may be split over the workers).
#[track_caller]
fn assert_split(share: &[u64], want: &[u64], slack: u64) {
    let ok = share.iter().zip(want).all(|(s, w)| s.abs_diff(*w) <= slack);
    assert!(ok, "split {share:?}, expected {want:?} (± {slack})");
}

/// The downstream `addr` of listener `l` in the answer `v` (a listener view).
fn downstream(v: &Value, addr: SocketAddr) -> Option<Value> {
    v["downstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == addr.to_string())
        .cloned()
}

/// Path of downstream `addr` of listener `l`.
fn ds_path(addr: SocketAddr) -> String {
    format!("/v1/listeners/l/downstreams/{addr}")
}

#[test]
fn every_endpoint_against_the_daemon() {
    let s = sinks(3, "127.0.0.1");
    let all: Vec<&SinkHandle> = s.iter().collect();
    let (a, b, c) = (addr_of(&s[0]), addr_of(&s[1]), addr_of(&s[2]));
    let d = Daemon::start(&config(&all[..1], ""));
    let to = d.addr("l");

    assert_eq!(
        d.api("GET", "/healthz", None),
        (200, json!({"status": "live"}))
    );
    assert_eq!(
        d.api("GET", "/readyz", None),
        (200, json!({"status": "ready"}))
    );

    // GET: all listeners, and one.
    let one = json!({
        "name": "l", "bind": "127.0.0.1:0", "mode": "userspace", "distribution": "round_robin",
        "downstreams": [{"address": a.to_string(), "weight": 1, "state": "active",
                         "health": "unknown", "source": "static", "sessions": 0}]
    });
    assert_eq!(
        d.api("GET", "/v1/listeners", None),
        (200, json!([one.clone()]))
    );
    assert_eq!(d.api("GET", "/v1/listeners/l", None), (200, one));
    let (code, v) = d.api("GET", "/v1/listeners/nope", None);
    assert_eq!(
        (code, v["error"].as_str()),
        (404, Some("no listener named \"nope\""))
    );

    // POST: b joins and gets its share.
    let add = |addr: SocketAddr, weight: u32| {
        let body = json!({"address": addr.to_string(), "weight": weight}).to_string();
        d.api("POST", "/v1/listeners/l/downstreams", Some(&body))
    };
    let (code, v) = add(b, 1);
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        downstream(&v, b),
        Some(
            json!({"address": b.to_string(), "weight": 1, "state": "active",
                    "health": "unknown", "source": "api", "sessions": 0})
        )
    );
    assert_split(&spread(to, 200, &all), &[100, 100, 0], 2);
    let (code, v) = add(b, 1);
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    let (code, v) = d.api(
        "POST",
        "/v1/listeners/l/downstreams",
        Some(r#"{"address": "nope"}"#),
    );
    assert_eq!(code, 400, "{v}");

    // PATCH: weight, then states; traffic follows each.
    let patch =
        |addr: SocketAddr, body: Value| d.api("PATCH", &ds_path(addr), Some(&body.to_string()));
    let (code, v) = patch(b, json!({"weight": 3}));
    assert_eq!(
        (code, &downstream(&v, b).unwrap()["weight"]),
        (200, &json!(3))
    );
    assert_split(&spread(to, 400, &all), &[100, 300, 0], 4);
    let (code, v) = patch(b, json!({"state": "draining"}));
    assert_eq!(
        (code, &downstream(&v, b).unwrap()["state"]),
        (200, &json!("draining"))
    );
    assert_eq!(
        spread(to, 100, &all),
        [100, 0, 0],
        "a draining downstream got new flows"
    );
    assert_eq!(patch(b, json!({"state": "active"})).0, 200);
    assert_split(&spread(to, 400, &all), &[100, 300, 0], 4);
    let (code, v) = patch(b, json!({"state": "disabled"}));
    assert_eq!(
        (code, &downstream(&v, b).unwrap()["state"]),
        (200, &json!("disabled"))
    );
    assert_eq!(
        spread(to, 100, &all),
        [100, 0, 0],
        "a disabled downstream got traffic"
    );
    assert_eq!(patch(b, json!({"state": "active", "weight": 1})).0, 200);
    assert_split(&spread(to, 200, &all), &[100, 100, 0], 2);
    let (code, v) = patch(b, json!({}));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("nothing to change"),
        "{v}"
    );
    let (code, v) = patch(c, json!({"weight": 2}));
    assert_eq!(
        (code, v["error"].as_str()),
        (404, Some(&*format!("no downstream {c}")))
    );

    // DELETE: drains (1 s here), then goes; no new traffic meanwhile.
    let t0 = Instant::now();
    let (code, v) = d.api("DELETE", &ds_path(b), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(downstream(&v, b).unwrap()["state"], "draining");
    assert_eq!(spread(to, 50, &all), [50, 0, 0]);
    assert!(
        eventually(WAIT, || downstream(
            &d.api("GET", "/v1/listeners/l", None).1,
            b
        )
        .is_none()),
        "b was never removed"
    );
    let gone = t0.elapsed();
    assert!(
        gone >= Duration::from_millis(900) && gone < Duration::from_millis(2_000),
        "drained for {gone:?}, drain_secs is 1"
    );
    // DELETE ?now=true: at once.
    assert_eq!(add(c, 1).0, 201);
    assert_split(&spread(to, 100, &all), &[50, 0, 50], 2);
    let (code, v) = d.api("DELETE", &format!("{}?now=true", ds_path(c)), None);
    assert_eq!((code, downstream(&v, c)), (200, None));
    assert_eq!(spread(to, 50, &all), [50, 0, 0]);
    assert_eq!(d.api("DELETE", &ds_path(c), None).0, 404);
    let (code, v) = d.api("DELETE", &format!("{}?nwo=true", ds_path(a)), None);
    assert_eq!(code, 400, "a typo must not drain: {v}");

    // POST /v1/reload: 200, or 400 with the error and the old config kept.
    assert_eq!(
        d.api("POST", "/v1/reload", None),
        (200, json!({"status": "reloaded"}))
    );
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    let bad = good.replace("drain_secs: 1", "drain_secs: -1");
    write_in_place(&d.config_path, &bad);
    let (code, v) = d.api("POST", "/v1/reload", None);
    assert_eq!(code, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.starts_with("listeners[0].drain_secs"), "{e}");
    assert_eq!(
        spread(to, 20, &all),
        [20, 0, 0],
        "the old config keeps serving"
    );
    write_in_place(&d.config_path, &good);
    assert_eq!(d.api("POST", "/v1/reload", None).0, 200);

    // The rest of the contract's error forms.
    let (code, v) = d.api("GET", "/v1/nothing", None);
    assert_eq!((code, v["error"].is_string()), (404, true));
    let (code, v) = d.api("GET", "/v1/reload", None);
    assert_eq!((code, v["error"].is_string()), (405, true));
    let big = format!("{{\"address\": \"{}\"}}", "x".repeat(70_000));
    let (code, v) = d.api("POST", "/v1/listeners/l/downstreams", Some(&big));
    assert_eq!((code, v["error"].is_string()), (413, true));
}

#[test]
fn api_changes_survive_a_reload() {
    let s = sinks(3, "127.0.0.1");
    let all: Vec<&SinkHandle> = s.iter().collect();
    let (a, b, c) = (addr_of(&s[0]), addr_of(&s[1]), addr_of(&s[2]));
    let d = Daemon::start(&config(&all[..1], ""));
    let to = d.addr("l");
    let body = json!({"address": b.to_string(), "weight": 2}).to_string();
    assert_eq!(
        d.api("POST", "/v1/listeners/l/downstreams", Some(&body)).0,
        201
    );
    assert_eq!(d.api("PATCH", &ds_path(a), Some(r#"{"weight": 2}"#)).0, 200);
    assert_split(&spread(to, 200, &all), &[100, 100, 0], 2);
    // A SIGHUP reload of the same config, then a save that adds c to the static list.
    let mark = d.mark();
    d.hup();
    d.wait_log("configuration reloaded trigger=\"SIGHUP\"", mark);
    let mark = d.mark();
    write_in_place(
        &d.config_path,
        &config(&all[..1], "").replace(&format!("'{a}'"), &format!("'{a}', '{c}'")),
    );
    d.wait_log("configuration reloaded", mark);
    let (_, v) = d.api("GET", "/v1/listeners/l", None);
    let weight_source = |addr| {
        let x = downstream(&v, addr).unwrap_or_else(|| panic!("{addr} missing: {v}"));
        (
            x["weight"].as_u64().unwrap(),
            x["source"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        weight_source(a),
        (2, "static".to_owned()),
        "the API's weight was lost"
    );
    assert_eq!(
        weight_source(b),
        (2, "api".to_owned()),
        "the API's downstream was lost"
    );
    assert_eq!(weight_source(c), (1, "static".to_owned()));
    assert_split(&spread(to, 500, &all), &[200, 200, 100], 4);
    assert_eq!(d.reloads("success"), 2);
}

/// A `ctl` command that must succeed: its stdout.
#[track_caller]
fn ok(admin: SocketAddr, args: &[&str]) -> String {
    let (code, out, err) = ctl(admin, args);
    assert_eq!((code, err.as_str()), (0, ""), "ctl {args:?}");
    out
}

/// A `ctl` command that must fail: its message (after `udp-fanout ctl: `).
#[track_caller]
fn fails(admin: SocketAddr, args: &[&str]) -> String {
    let (code, _, err) = ctl(admin, args);
    assert_eq!(code, 1, "ctl {args:?}: {err}");
    err.strip_prefix("udp-fanout ctl: ")
        .unwrap_or_else(|| panic!("{err:?}"))
        .trim_end()
        .to_owned()
}

/// `list`'s table for rows of (address, weight, state, source), all unknown health and no
/// sessions, as `ctl` aligns it: two spaces between columns, numbers right-aligned.
fn table(rows: &[(SocketAddr, u32, &str, &str)]) -> String {
    let head = [
        "LISTENER", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "SOURCE", "SESSIONS",
    ];
    let mut cells: Vec<[String; 7]> = vec![head.map(str::to_owned)];
    for (addr, w, state, source) in rows {
        cells.push([
            "l".into(),
            addr.to_string(),
            w.to_string(),
            (*state).into(),
            "unknown".into(),
            (*source).into(),
            "0".into(),
        ]);
    }
    let width: Vec<usize> = (0..7)
        .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap())
        .collect();
    let mut out = String::new();
    for r in &cells {
        let line: Vec<String> = (0..7)
            .map(|i| match i {
                2 | 6 => format!("{:>w$}", r[i], w = width[i]),
                _ => format!("{:<w$}", r[i], w = width[i]),
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn ctl_against_the_daemon() {
    let s = sinks(2, "127.0.0.1");
    let all: Vec<&SinkHandle> = s.iter().collect();
    let (a, b) = (addr_of(&s[0]), addr_of(&s[1]));
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let d = Daemon::start(&config(&all[..1], ""));
    let (to, api) = (d.addr("l"), d.admin());

    assert_eq!(
        ok(api, &["status"]),
        format!("admin      {api}\nlive       yes\nready      yes\nlisteners  1\n")
    );
    assert_eq!(ok(api, &["list"]), table(&[(a, 1, "active", "static")]));
    // The header and the row line up (the table is as wide as its widest cell).
    let listed = ok(api, &["list", "l"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines[0].find("ADDRESS"), lines[1].find(&a_s), "{listed}");
    assert_eq!(
        lines[0].find("SESSIONS").map(|i| i + "SESSIONS".len()),
        Some(lines[1].len()),
        "{listed}"
    );

    assert_eq!(
        ok(api, &["add", "l", &b_s, "--weight", "3"]),
        format!("added {b} to l (weight 3)\n")
    );
    assert_eq!(
        fails(api, &["add", "l", &b_s]),
        format!("downstream {b} already exists")
    );
    assert_eq!(
        ok(api, &["list"]),
        table(&[(a, 1, "active", "static"), (b, 3, "active", "api")])
    );
    assert_split(&spread(to, 400, &all), &[100, 300], 4);
    assert_eq!(
        ok(api, &["weight", "l", &b_s, "1"]),
        format!("weight of {b} on l set to 1\n")
    );
    assert_split(&spread(to, 200, &all), &[100, 100], 2);
    assert_eq!(
        ok(api, &["drain", "l", &b_s]),
        format!("draining {b} on l\n")
    );
    assert_eq!(
        ok(api, &["list"]),
        table(&[(a, 1, "active", "static"), (b, 1, "draining", "api")])
    );
    assert_eq!(spread(to, 50, &all), [50, 0]);
    assert_eq!(
        ok(api, &["enable", "l", &b_s]),
        format!("enabled {b} on l\n")
    );
    assert_split(&spread(to, 200, &all), &[100, 100], 2);
    assert_eq!(
        ok(api, &["disable", "l", &b_s]),
        format!("disabled {b} on l\n")
    );
    assert_eq!(
        ok(api, &["list"]),
        table(&[(a, 1, "active", "static"), (b, 1, "disabled", "api")])
    );
    assert_eq!(spread(to, 50, &all), [50, 0]);
    assert_eq!(
        ok(api, &["enable", "l", &b_s]),
        format!("enabled {b} on l\n")
    );
    assert_eq!(
        ok(api, &["remove", "l", &b_s, "--now"]),
        format!("removed {b} from l\n")
    );
    assert_eq!(ok(api, &["list"]), table(&[(a, 1, "active", "static")]));
    assert_eq!(spread(to, 50, &all), [50, 0]);
    assert_eq!(
        fails(api, &["remove", "l", &b_s]),
        format!("no downstream {b}")
    );
    assert_eq!(fails(api, &["list", "nope"]), "no listener named \"nope\"");
    let json: Vec<ListenerView> = serde_json::from_str(&ok(api, &["--json", "list"])).unwrap();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0].downstreams.len(), 1);

    // reload: 0, or 1 with the config's error.
    assert_eq!(ok(api, &["reload"]), "config reloaded\n");
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    write_in_place(
        &d.config_path,
        &good.replace("name: l,", "name: l, bogus: 1,"),
    );
    let e = fails(api, &["reload"]);
    assert!(e.starts_with("listeners[0]: unknown field `bogus`"), "{e}");
    write_in_place(&d.config_path, &good);
    assert_eq!(ok(api, &["reload"]), "config reloaded\n");

    // Nothing listening: exit 1 and a hint.
    let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(fails(nobody, &["status"]).contains("connection refused"));
}

#[test]
fn a_token_guards_every_request() {
    let s = sinks(1, "127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "guess\n").unwrap();
    let d = Daemon::start(&config(
        &[&s[0]],
        &format!(", token_file: '{}'", token_file.display()),
    ));
    for path in ["/v1/listeners", "/v1/listeners/l", "/healthz"] {
        let (code, body) = d.api_as(None, "GET", path, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("missing bearer token"), "{body}");
        let (code, body) = d.api_as(Some("guess"), "GET", path, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("invalid token"), "{body}");
        let (code, body) = d.api_as(Some("s3cret-token"), "GET", path, None);
        assert_eq!(code, 200, "{path}: {body}");
    }
    // A refused change changes nothing.
    let add = r#"{"address": "127.0.0.1:9", "weight": 1}"#;
    let path = "/v1/listeners/l/downstreams";
    assert_eq!(d.api_as(None, "POST", path, Some(add)).0, 401);
    assert_eq!(d.api_as(None, "POST", "/v1/reload", None).0, 401);
    let (_, v) = d.api_as(Some("s3cret-token"), "GET", "/v1/listeners/l", None);
    assert!(!v.contains("127.0.0.1:9\""), "{v}");
    assert_eq!(d.reloads("success"), 0);

    let api = d.admin();
    let tf = token_file.display().to_string();
    let wf = wrong_file.display().to_string();
    assert!(fails(api, &["list"]).starts_with("missing bearer token"));
    assert_eq!(fails(api, &["--token-file", &wf, "list"]), "invalid token");
    let out = ok(api, &["--token-file", &tf, "list"]);
    assert!(out.starts_with("LISTENER"), "{out}");
    assert_eq!(
        ok(api, &["--token-file", &tf, "reload"]),
        "config reloaded\n"
    );
}

#[test]
fn a_non_loopback_admin_bind_needs_a_token() {
    let (dir, path) = common::write_config(
        "listeners: [{name: l, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:9']}]\nadmin: {bind: '0.0.0.0:0'}",
    );
    let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim_end(),
        "error: admin.token_file: required when admin.bind is not a loopback address"
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "listeners: [{{name: l, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:9']}}]\nadmin: {{bind: '0.0.0.0:0', token_file: '{}'}}",
            token.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!((code, out.as_str()), (0, "config OK\n"), "{err}");
}
