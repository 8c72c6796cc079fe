//! `udp-fanout ctl`: the real binary against the real admin router, served in-process over
//! `FakeOps` on 127.0.0.1:0. Every command, its text and `--json` output, the token, and the
//! exit codes and messages of failures (server refusals, connection refused).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{ctl, run_cli};
use fanout_control::admin::fake::{BackgroundServer, FakeOps};
use fanout_control::admin::{AdminOps, DownstreamState, ListenerView};

/// The sample fake, served without a token.
fn serve() -> (Arc<FakeOps>, BackgroundServer) {
    let ops = Arc::new(FakeOps::sample());
    let server = BackgroundServer::admin(ops.clone(), None).unwrap();
    (ops, server)
}

/// Runs a command that must succeed; returns its stdout.
fn ok(admin: SocketAddr, args: &[&str]) -> String {
    let (code, out, err) = ctl(admin, args);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    assert_eq!(err, "", "ctl {args:?}");
    out
}

/// Runs a command that must fail; returns its one-line stderr message.
fn fails(admin: SocketAddr, args: &[&str]) -> String {
    let (code, _, err) = ctl(admin, args);
    assert_eq!(code, 1, "ctl {args:?}: {err}");
    let msg = err
        .strip_prefix("udp-fanout ctl: ")
        .unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(msg.lines().count(), 1, "{err:?}");
    msg.trim_end().to_owned()
}

const SAMPLE_TABLE: &str = "\
LISTENER  ADDRESS         WEIGHT  STATE   HEALTH     SOURCE  SESSIONS
syslog    127.0.0.1:6001       1  active  healthy    static        12
syslog    127.0.0.1:6002       3  active  unhealthy  static         0
dns       [::1]:5353           1  active  unknown    file        1234
";

#[test]
fn list_prints_an_aligned_table() {
    let (_ops, s) = serve();
    assert_eq!(ok(s.addr(), &["list"]), SAMPLE_TABLE);
}

#[test]
fn list_of_one_listener() {
    let (_ops, s) = serve();
    let out = ok(s.addr(), &["list", "dns"]);
    assert_eq!(
        out,
        "\
LISTENER  ADDRESS     WEIGHT  STATE   HEALTH   SOURCE  SESSIONS
dns       [::1]:5353       1  active  unknown  file        1234
"
    );
}

#[test]
fn list_shows_a_listener_without_downstreams() {
    let ops = Arc::new(FakeOps::sample());
    ops.remove_downstream("dns", "[::1]:5353".parse().unwrap(), true)
        .unwrap();
    let s = BackgroundServer::admin(ops.clone(), None).unwrap();
    let out = ok(s.addr(), &["list", "dns"]);
    assert_eq!(
        out,
        "\
LISTENER  ADDRESS  WEIGHT  STATE  HEALTH  SOURCE  SESSIONS
dns       -             -  -      -       -              -
"
    );
}

#[test]
fn list_json_is_the_servers() {
    let (ops, s) = serve();
    let all: Vec<ListenerView> = serde_json::from_str(&ok(s.addr(), &["--json", "list"])).unwrap();
    assert_eq!(all, ops.listeners());
    // The options may follow the command too.
    let one: ListenerView =
        serde_json::from_str(&ok(s.addr(), &["list", "syslog", "--json"])).unwrap();
    assert_eq!(Some(one), ops.listener("syslog"));
}

#[test]
fn list_of_an_unknown_listener_fails_with_the_servers_message() {
    let (_ops, s) = serve();
    assert_eq!(
        fails(s.addr(), &["list", "nope"]),
        "no listener named \"nope\""
    );
}

#[test]
fn status_reports_liveness_readiness_and_listeners() {
    let (ops, s) = serve();
    let out = ok(s.addr(), &["status"]);
    let want = format!(
        "admin      {}\nlive       yes\nready      yes\nlisteners  2\n",
        s.addr()
    );
    assert_eq!(out, want);
    let v: serde_json::Value = serde_json::from_str(&ok(s.addr(), &["status", "--json"])).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"admin": s.addr().to_string(), "live": true, "ready": true, "listeners": 2})
    );
    ops.set_ready(false);
    let (code, out, err) = ctl(s.addr(), &["status"]);
    assert_eq!(code, 1);
    assert!(out.contains("live       yes\nready      no\n"), "{out}");
    assert_eq!(
        err,
        "udp-fanout ctl: not ready: not every listener is bound and knows its downstreams (a Kubernetes watch has not listed yet)\n"
    );
}

#[test]
fn add_with_and_without_weight() {
    let (ops, s) = serve();
    let out = ok(s.addr(), &["add", "syslog", "127.0.0.1:6003"]);
    assert_eq!(out, "added 127.0.0.1:6003 to syslog (weight 1)\n");
    let out = ok(s.addr(), &["add", "syslog", "[::1]:6004", "--weight", "5"]);
    assert_eq!(out, "added [::1]:6004 to syslog (weight 5)\n");
    assert_eq!(
        ops.calls(),
        ["add syslog 127.0.0.1:6003 w1", "add syslog [::1]:6004 w5"]
    );
    let table = ok(s.addr(), &["list", "syslog"]);
    assert!(
        table.contains("syslog    [::1]:6004           5  active  unknown    api            0\n"),
        "{table}"
    );
}

#[test]
fn add_json_prints_the_listener_after_the_change() {
    let (_ops, s) = serve();
    let out = ok(
        s.addr(),
        &["--json", "add", "dns", "127.0.0.1:7000", "--weight", "2"],
    );
    let l: ListenerView = serde_json::from_str(&out).unwrap();
    assert_eq!(
        l.downstreams.last().unwrap().address,
        "127.0.0.1:7000".parse().unwrap()
    );
}

#[test]
fn refused_changes_exit_1_with_the_servers_message() {
    let (ops, s) = serve();
    let a = s.addr();
    assert_eq!(
        fails(a, &["add", "syslog", "127.0.0.1:6001"]),
        "downstream 127.0.0.1:6001 already exists"
    );
    assert_eq!(
        fails(a, &["add", "nope", "127.0.0.1:1"]),
        "no listener named \"nope\""
    );
    assert_eq!(
        fails(a, &["add", "syslog", "127.0.0.1:7", "--weight", "0"]),
        "weight 0 is invalid: must be 1..=10000"
    );
    assert!(
        fails(a, &["add", "syslog", "nonsense"]).contains("invalid socket address \"nonsense\"")
    );
    assert_eq!(
        fails(a, &["weight", "syslog", "127.0.0.1:6001", "10001"]),
        "weight 10001 is invalid: must be 1..=10000"
    );
    assert_eq!(
        fails(a, &["drain", "syslog", "127.0.0.1:9"]),
        "no downstream 127.0.0.1:9"
    );
    assert_eq!(
        fails(a, &["remove", "syslog", "127.0.0.1:9", "--now"]),
        "no downstream 127.0.0.1:9"
    );
    // Only what needs the control plane's state reached it.
    assert_eq!(
        ops.calls(),
        [
            "add syslog 127.0.0.1:6001 w1",
            "patch syslog 127.0.0.1:9 None Some(Draining)",
            "remove syslog 127.0.0.1:9 now=true",
        ]
    );
}

#[test]
fn remove_drains_unless_now() {
    let (ops, s) = serve();
    let out = ok(s.addr(), &["remove", "syslog", "127.0.0.1:6001"]);
    assert_eq!(out, "removing 127.0.0.1:6001 from syslog: draining first\n");
    let out = ok(s.addr(), &["remove", "syslog", "127.0.0.1:6002", "--now"]);
    assert_eq!(out, "removed 127.0.0.1:6002 from syslog\n");
    assert_eq!(
        ops.calls(),
        [
            "remove syslog 127.0.0.1:6001 now=false",
            "remove syslog 127.0.0.1:6002 now=true"
        ]
    );
    let l = ops.listener("syslog").unwrap();
    assert_eq!(l.downstreams.len(), 1);
    assert_eq!(l.downstreams[0].state, DownstreamState::Draining);
}

#[test]
fn drain_disable_enable_and_weight() {
    let (ops, s) = serve();
    let a = s.addr();
    assert_eq!(
        ok(a, &["drain", "syslog", "127.0.0.1:6001"]),
        "draining 127.0.0.1:6001 on syslog\n"
    );
    assert_eq!(
        ok(a, &["disable", "syslog", "127.0.0.1:6001"]),
        "disabled 127.0.0.1:6001 on syslog\n"
    );
    assert_eq!(
        ok(a, &["enable", "syslog", "127.0.0.1:6001"]),
        "enabled 127.0.0.1:6001 on syslog\n"
    );
    assert_eq!(
        ok(a, &["weight", "syslog", "127.0.0.1:6001", "9"]),
        "weight of 127.0.0.1:6001 on syslog set to 9\n"
    );
    // An IPv6 address travels percent-encoded and arrives whole.
    ok(a, &["weight", "dns", "[::1]:5353", "4"]);
    assert_eq!(
        ops.calls(),
        [
            "patch syslog 127.0.0.1:6001 None Some(Draining)",
            "patch syslog 127.0.0.1:6001 None Some(Disabled)",
            "patch syslog 127.0.0.1:6001 None Some(Active)",
            "patch syslog 127.0.0.1:6001 Some(9) None",
            "patch dns [::1]:5353 Some(4) None",
        ]
    );
    let json = ok(a, &["--json", "drain", "dns", "[::1]:5353"]);
    let l: ListenerView = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (l.downstreams[0].state, l.downstreams[0].weight),
        (DownstreamState::Draining, 4)
    );
}

#[test]
fn reload_succeeds_or_prints_the_config_error() {
    let (ops, s) = serve();
    assert_eq!(ok(s.addr(), &["reload"]), "config reloaded\n");
    let v: serde_json::Value = serde_json::from_str(&ok(s.addr(), &["reload", "--json"])).unwrap();
    assert_eq!(v["status"], "reloaded");
    ops.fail_reload(Some("listeners[1].bind: invalid socket address \"x\""));
    assert_eq!(
        fails(s.addr(), &["reload"]),
        "listeners[1].bind: invalid socket address \"x\""
    );
    assert_eq!(ops.calls(), ["reload", "reload", "reload"]);
}

#[test]
fn the_token_file_is_sent_as_a_bearer_token() {
    let ops = Arc::new(FakeOps::sample());
    let s = BackgroundServer::admin(ops.clone(), Some("s3cret")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "guess\n").unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    assert_eq!(ok(s.addr(), &["--token-file", good, "list"]), SAMPLE_TABLE);
    assert!(ok(s.addr(), &["status", "--token-file", good]).contains("ready      yes"));
    assert_eq!(
        fails(s.addr(), &["list"]),
        "missing bearer token: send Authorization: Bearer TOKEN"
    );
    assert_eq!(
        fails(s.addr(), &["--token-file", bad, "reload"]),
        "invalid token"
    );
    assert_eq!(
        fails(s.addr(), &["--token-file", bad, "status"]),
        "invalid token"
    );
    let missing = dir.path().join("missing");
    let msg = fails(
        s.addr(),
        &["--token-file", missing.to_str().unwrap(), "list"],
    );
    assert!(
        msg.starts_with("cannot read token file") && msg.contains("missing"),
        "{msg}"
    );
    assert!(ops.calls().is_empty());
}

#[test]
fn connection_refused_names_the_address() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for cmd in [
        &["status"][..],
        &["list"],
        &["reload"],
        &["add", "a", "127.0.0.1:1"],
    ] {
        let msg = fails(addr, cmd);
        assert!(
            msg.starts_with(&format!(
                "cannot connect to the admin API at {addr}: connection refused"
            )),
            "{msg}"
        );
    }
}

#[test]
fn the_default_admin_address_is_9091() {
    // Nothing listens on 9091 in the tests (nor should anything else answer as our API).
    let (code, _, err) = run_cli(&["ctl", "list"]);
    if code == 1 && err.contains("connection refused") {
        assert!(err.contains("127.0.0.1:9091"), "{err}");
    }
    let (_, out, _) = run_cli(&["ctl", "--help"]);
    assert!(out.contains("[default: 127.0.0.1:9091]"), "{out}");
}

#[test]
fn a_bad_admin_address_is_refused() {
    let (code, _, err) = run_cli(&["ctl", "--admin", "localhost", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("udp-fanout ctl: invalid --admin \"localhost\": expected HOST:PORT"),
        "{err}"
    );
}

#[test]
fn usage_errors_are_claps() {
    let (code, _, err) = run_cli(&["ctl", "weight", "syslog", "127.0.0.1:1", "many"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run_cli(&["ctl"]);
    assert_eq!(code, 2);
    // ctl takes none of the daemon's options, and the daemon still requires --config.
    let (code, _, err) = run_cli(&["--config", "x.yaml", "ctl", "status"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cli(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
}
