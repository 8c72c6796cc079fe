//! The admin API over a real socket: every route and every error code of the contract
//! (DESIGN.md 3b), against the in-memory `FakeOps`.
//!
//! Requests are written by hand over a `TcpStream` so a test can send exactly what a broken
//! or hostile client would (bad JSON, no token, a huge body, odd methods).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use fanout_control::admin::fake::{BackgroundServer, FakeOps};
use fanout_control::admin::{
    AdminOps, DownstreamState, HealthStatus, ListenerView, MAX_BODY_BYTES, SourceKind, read_token,
};
use serde_json::Value;

/// One answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn listener(&self) -> ListenerView {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole answer.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// The sample fake behind a server without a token.
fn open() -> (Arc<FakeOps>, BackgroundServer) {
    let ops = Arc::new(FakeOps::sample());
    let server = BackgroundServer::admin(ops.clone(), None).unwrap();
    (ops, server)
}

fn get(s: &BackgroundServer, path: &str) -> Resp {
    send(s.addr(), "GET", path, &[], b"")
}

fn with_body(s: &BackgroundServer, method: &str, path: &str, body: &str) -> Resp {
    send(
        s.addr(),
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Checks an error answer: its status, the JSON error form, and words of its message.
fn assert_error(r: &Resp, status: u16, words: &[&str]) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{r:?}"
    );
    let v = r.json();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {r:?}"));
    assert_eq!(v.as_object().unwrap().len(), 1, "{r:?}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

const DS: &str = "/v1/listeners/syslog/downstreams";

#[test]
fn lists_every_listener() {
    let (_ops, s) = open();
    let r = get(&s, "/v1/listeners");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let all: Vec<ListenerView> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(all, FakeOps::sample().listeners());
    // The contract's field names and spellings, as a client sees them.
    let v = r.json();
    assert_eq!(v[0]["name"], "syslog");
    assert_eq!(v[0]["bind"], "127.0.0.1:5514");
    assert_eq!(v[0]["mode"], "userspace");
    assert_eq!(v[0]["distribution"], "round_robin");
    let d = &v[0]["downstreams"][1];
    assert_eq!(d["address"], "127.0.0.1:6002");
    assert_eq!(d["weight"], 3);
    assert_eq!(d["state"], "active");
    assert_eq!(d["health"], "unhealthy");
    assert_eq!(d["source"], "static");
    assert_eq!(d["sessions"], 0);
    assert_eq!(v[1]["downstreams"][0]["address"], "[::1]:5353");
}

#[test]
fn gets_one_listener_or_404() {
    let (_ops, s) = open();
    let r = get(&s, "/v1/listeners/dns");
    assert_eq!(r.status, 200);
    let l = r.listener();
    assert_eq!(
        (l.name.as_str(), l.distribution.as_str()),
        ("dns", "mirror")
    );
    assert_error(
        &get(&s, "/v1/listeners/nope"),
        404,
        &["no listener", "nope"],
    );
}

#[test]
fn adds_a_downstream_with_201() {
    let (ops, s) = open();
    let r = with_body(
        &s,
        "POST",
        DS,
        r#"{"address": "127.0.0.1:6003", "weight": 5}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let d = r.listener().downstreams.pop().unwrap();
    assert_eq!(d.address, "127.0.0.1:6003".parse().unwrap());
    assert_eq!(
        (d.weight, d.state, d.source),
        (5, DownstreamState::Active, SourceKind::Api)
    );
    assert_eq!(d.health, HealthStatus::Unknown);
    // Weight defaults to 1; IPv6 works.
    let r = with_body(&s, "POST", DS, r#"{"address": "[::1]:6004"}"#);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        ops.calls(),
        ["add syslog 127.0.0.1:6003 w5", "add syslog [::1]:6004 w1"]
    );
    // It is listed from then on.
    let l = get(&s, "/v1/listeners/syslog").listener();
    assert_eq!(l.downstreams.len(), 4);
}

#[test]
fn adding_an_address_already_there_is_409() {
    let (_ops, s) = open();
    let r = with_body(&s, "POST", DS, r#"{"address": "127.0.0.1:6001"}"#);
    assert_error(&r, 409, &["127.0.0.1:6001", "already exists"]);
}

#[test]
fn adding_to_an_unknown_listener_is_404() {
    let (_ops, s) = open();
    let r = with_body(
        &s,
        "POST",
        "/v1/listeners/nope/downstreams",
        r#"{"address": "127.0.0.1:7"}"#,
    );
    assert_error(&r, 404, &["no listener", "nope"]);
}

#[test]
fn bad_add_bodies_are_400() {
    let (ops, s) = open();
    let cases: &[(&str, &[&str])] = &[
        ("{not json", &["invalid JSON"]),
        ("", &["invalid JSON"]),
        ("[]", &["invalid JSON"]),
        (r#"{"weight": 2}"#, &["missing field `address`"]),
        (
            r#"{"address": "127.0.0.1:7", "wieght": 2}"#,
            &["unknown field `wieght`"],
        ),
        (
            r#"{"address": "nonsense"}"#,
            &["invalid socket address \"nonsense\"", "ip:port"],
        ),
        (r#"{"address": "::1:53"}"#, &["[addr]:port"]),
        (r#"{"address": "127.0.0.1:0"}"#, &["port 0"]),
        (r#"{"address": "0.0.0.0:53"}"#, &["unspecified"]),
        (r#"{"address": "127.0.0.1:5514"}"#, &["forwarding loop"]),
        (
            r#"{"address": "127.0.0.1:7", "weight": 0}"#,
            &["weight 0", "1..=10000"],
        ),
        (
            r#"{"address": "127.0.0.1:7", "weight": 10001}"#,
            &["weight 10001", "1..=10000"],
        ),
        (
            r#"{"address": "127.0.0.1:7", "weight": -1}"#,
            &["invalid JSON", "-1"],
        ),
        (
            r#"{"address": "127.0.0.1:7", "weight": "x"}"#,
            &["invalid JSON"],
        ),
    ];
    for (body, words) in cases {
        let r = with_body(&s, "POST", DS, body);
        assert_error(&r, 400, words);
    }
    // Nothing refused by the server's own checks reached the control plane.
    assert!(ops.calls().is_empty(), "{:?}", ops.calls());
}

#[test]
fn the_weight_limit_is_inclusive() {
    let (_ops, s) = open();
    let r = with_body(
        &s,
        "POST",
        DS,
        r#"{"address": "127.0.0.1:7", "weight": 10000}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
}

#[test]
fn patches_weight_and_state() {
    let (ops, s) = open();
    let path = format!("{DS}/127.0.0.1:6002");
    let r = with_body(&s, "PATCH", &path, r#"{"weight": 7}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.listener().downstreams[1].weight, 7);
    let r = with_body(&s, "PATCH", &path, r#"{"state": "disabled"}"#);
    assert_eq!(r.listener().downstreams[1].state, DownstreamState::Disabled);
    let r = with_body(&s, "PATCH", &path, r#"{"state": "draining", "weight": 2}"#);
    let d = &r.listener().downstreams[1];
    assert_eq!((d.state, d.weight), (DownstreamState::Draining, 2));
    let r = with_body(&s, "PATCH", &path, r#"{"state": "active"}"#);
    assert_eq!(r.listener().downstreams[1].state, DownstreamState::Active);
    assert_eq!(ops.calls().len(), 4);
}

#[test]
fn an_ipv6_address_is_percent_encoded_in_the_path() {
    let (ops, s) = open();
    let r = with_body(
        &s,
        "PATCH",
        "/v1/listeners/dns/downstreams/%5B%3A%3A1%5D%3A5353",
        r#"{"weight": 4}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ops.calls(), ["patch dns [::1]:5353 Some(4) None"]);
}

#[test]
fn bad_patches_are_400_or_404() {
    let (ops, s) = open();
    let path = format!("{DS}/127.0.0.1:6001");
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"state": "sleeping"}"#,
            &["unknown variant `sleeping`", "draining"],
        ),
        (r#"{"state": "Active"}"#, &["unknown variant"]),
        ("{}", &["nothing to change"]),
        (r#"{"weight": null}"#, &["nothing to change"]),
        (r#"{"colour": "red"}"#, &["unknown field `colour`"]),
        (r#"{"weight": 0}"#, &["weight 0"]),
        (r#"{"weight": 20000}"#, &["weight 20000"]),
        ("weight=3", &["invalid JSON"]),
    ];
    for (body, words) in cases {
        assert_error(&with_body(&s, "PATCH", &path, body), 400, words);
    }
    let bad_addr = with_body(&s, "PATCH", &format!("{DS}/nonsense"), r#"{"weight": 2}"#);
    assert_error(&bad_addr, 400, &["invalid socket address"]);
    let bad_escape = with_body(&s, "PATCH", &format!("{DS}/%FF"), r#"{"weight": 2}"#);
    assert_error(&bad_escape, 400, &["invalid path"]);
    assert!(ops.calls().is_empty(), "{:?}", ops.calls());
    let unknown = with_body(
        &s,
        "PATCH",
        &format!("{DS}/127.0.0.1:9999"),
        r#"{"weight": 2}"#,
    );
    assert_error(&unknown, 404, &["no downstream 127.0.0.1:9999"]);
    let no_listener = with_body(
        &s,
        "PATCH",
        "/v1/listeners/x/downstreams/127.0.0.1:6001",
        r#"{"weight": 2}"#,
    );
    assert_error(&no_listener, 404, &["no listener"]);
}

#[test]
fn delete_drains_unless_now() {
    let (ops, s) = open();
    let r = send(
        s.addr(),
        "DELETE",
        &format!("{DS}/127.0.0.1:6001"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.listener().downstreams[0].state, DownstreamState::Draining);
    let r = send(
        s.addr(),
        "DELETE",
        &format!("{DS}/127.0.0.1:6002?now=true"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.listener().downstreams.len(), 1);
    assert_eq!(
        ops.calls(),
        [
            "remove syslog 127.0.0.1:6001 now=false",
            "remove syslog 127.0.0.1:6002 now=true"
        ]
    );
}

#[test]
fn bad_deletes_are_400_or_404() {
    let (_ops, s) = open();
    let del = |path: &str| send(s.addr(), "DELETE", path, &[], b"");
    assert_error(
        &del(&format!("{DS}/127.0.0.1:6001?now=maybe")),
        400,
        &["now"],
    );
    assert_error(
        &del(&format!("{DS}/127.0.0.1:6001?nwo=true")),
        400,
        &["unknown query parameter"],
    );
    assert_error(
        &del(&format!("{DS}/6001")),
        400,
        &["invalid socket address"],
    );
    assert_error(
        &del(&format!("{DS}/127.0.0.1:9999")),
        404,
        &["no downstream"],
    );
    assert_error(
        &del("/v1/listeners/x/downstreams/127.0.0.1:6001"),
        404,
        &["no listener"],
    );
}

#[test]
fn reload_is_200_or_400_with_the_error() {
    let (ops, s) = open();
    let r = send(s.addr(), "POST", "/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "reloaded");
    ops.fail_reload(Some("listeners[1].bind: invalid socket address \"x\""));
    let r = send(s.addr(), "POST", "/v1/reload", &[], b"");
    assert_error(
        &r,
        400,
        &["listeners[1].bind: invalid socket address \"x\""],
    );
    assert_eq!(ops.calls(), ["reload", "reload"]);
}

#[test]
fn healthz_and_readyz_follow_the_control_plane() {
    let (ops, s) = open();
    assert_eq!(get(&s, "/healthz").json()["status"], "live");
    assert_eq!(get(&s, "/readyz").json()["status"], "ready");
    ops.set_ready(false);
    assert_eq!(get(&s, "/healthz").status, 200);
    assert_error(&get(&s, "/readyz"), 503, &["not ready"]);
    ops.set_live(false);
    assert_error(&get(&s, "/healthz"), 503, &["not live"]);
}

#[test]
fn unknown_routes_are_404() {
    let (_ops, s) = open();
    for path in [
        "/",
        "/v1",
        "/v1/listeners/syslog/x",
        "/v2/listeners",
        "/v1/listeners/",
    ] {
        assert_error(&get(&s, path), 404, &["no route"]);
    }
}

#[test]
fn a_wrong_method_is_405_with_allow() {
    let (_ops, s) = open();
    let cases = [
        ("DELETE", "/v1/listeners", "GET"),
        ("POST", "/v1/listeners/syslog", "GET"),
        ("GET", DS, "POST"),
        ("GET", "/v1/reload", "POST"),
        (
            "PUT",
            "/v1/listeners/syslog/downstreams/127.0.0.1:6001",
            "PATCH",
        ),
        ("POST", "/healthz", "GET"),
    ];
    for (method, path, allowed) in cases {
        let r = send(s.addr(), method, path, &[], b"");
        assert_error(&r, 405, &["not allowed"]);
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("no Allow: {r:?}"));
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow}");
    }
    let r = send(
        s.addr(),
        "GET",
        "/v1/listeners/syslog/downstreams/127.0.0.1:6001",
        &[],
        b"",
    );
    assert_eq!(r.header("allow"), Some("PATCH,DELETE"));
}

#[test]
fn a_body_over_the_limit_is_413() {
    let (ops, s) = open();
    let pad = "x".repeat(MAX_BODY_BYTES);
    let body = format!(r#"{{"address": "127.0.0.1:7", "pad": "{pad}"}}"#);
    assert_error(&with_body(&s, "POST", DS, &body), 413, &["too large"]);
    assert!(ops.calls().is_empty());
}

#[test]
fn with_a_token_every_request_needs_it() {
    let ops = Arc::new(FakeOps::sample());
    let s = BackgroundServer::admin(ops.clone(), Some("s3cret")).unwrap();
    for path in ["/v1/listeners", "/healthz", "/readyz", "/nope"] {
        let r = send(s.addr(), "GET", path, &[], b"");
        assert_error(&r, 401, &["missing bearer token"]);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let wrong = [("Authorization", "Bearer s3cre")];
    assert_error(
        &send(s.addr(), "GET", "/v1/listeners", &wrong, b""),
        401,
        &["invalid token"],
    );
    let longer = [("Authorization", "Bearer s3cret2")];
    assert_error(
        &send(s.addr(), "GET", "/v1/listeners", &longer, b""),
        401,
        &["invalid token"],
    );
    let basic = [("Authorization", "Basic s3cret")];
    assert_error(
        &send(s.addr(), "GET", "/v1/listeners", &basic, b""),
        401,
        &["missing"],
    );
    // A refused request changes nothing.
    assert_error(&send(s.addr(), "POST", "/v1/reload", &wrong, b""), 401, &[]);
    assert!(ops.calls().is_empty());
    for auth in ["Bearer s3cret", "bearer s3cret"] {
        let ok = [("Authorization", auth)];
        assert_eq!(send(s.addr(), "GET", "/v1/listeners", &ok, b"").status, 200);
    }
    let ok = [("Authorization", "Bearer s3cret")];
    assert_eq!(send(s.addr(), "POST", "/v1/reload", &ok, b"").status, 200);
    assert_error(
        &send(s.addr(), "GET", "/nope", &ok, b""),
        404,
        &["no route"],
    );
}

#[test]
fn without_a_token_no_header_is_needed() {
    let (_ops, s) = open();
    let any = [("Authorization", "Bearer whatever")];
    assert_eq!(
        send(s.addr(), "GET", "/v1/listeners", &any, b"").status,
        200
    );
}

#[test]
fn read_token_trims_and_refuses_empty_files() {
    let dir = std::env::temp_dir().join(format!("fanout-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    assert_eq!(read_token(&file("ok", "  abc123\n")).unwrap(), "abc123");
    assert!(
        read_token(&file("empty", " \n\t\n"))
            .unwrap_err()
            .contains("is empty")
    );
    assert!(
        read_token(&file("two", "abc def\n"))
            .unwrap_err()
            .contains("one token")
    );
    let missing = read_token(&dir.join("missing")).unwrap_err();
    assert!(
        missing.contains("cannot read token file") && missing.contains("missing"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
