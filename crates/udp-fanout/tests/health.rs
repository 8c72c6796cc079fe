//! Active health checks through the real binary (DESIGN.md 3b, "Health checks"), against UDP
//! servers the tests switch between answering, hanging (still receiving, answering nothing)
//! and dead (socket closed: port unreachable): a failing downstream gets no new datagrams
//! within `fall × interval + timeout`, its health and probe counters say so, it is served
//! again after `rise` good probes; with none healthy the listener fails open; a reply that
//! does not start with `expect` is a failure; ICMP echo of loopback passes (as root); and the
//! kernel plane obeys health and the admin API's states too (its maps are rewritten), in
//! network namespaces of the tests' own.
//!
//! Every test sends a steady trickle (a datagram a millisecond, round-robin over the
//! downstreams, no sessions), so where traffic goes and when it stops is measured at the
//! servers, apart from the probes (told apart by payload).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

#[macro_use]
mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::echo::{Echo, Mode};
use common::netns::{Topology, enter, privileged_or_skip};
use common::{Daemon, METRICS, Trickle, WAIT, eventually};

/// `interval_ms: 100, timeout_ms: 100, fall: 2, rise: 2`.
const HEALTH: &str = "{interval_ms: 100, timeout_ms: 100, fall: 2, rise: 2}";

/// The contract's detection bound for [`HEALTH`]: fall × interval + timeout.
const DETECT: Duration = Duration::from_millis(2 * 100 + 100);

/// What the bound may be exceeded by here: the push of the new set, a scrape, and a loaded
/// 2-core machine running other tests' daemons.
const MARGIN: Duration = Duration::from_millis(200);

/// Listener `l` over `servers` with health checks `health`.
fn config(servers: &[&Echo], health: &str, rest: &str) -> String {
    let list: Vec<String> = servers.iter().map(|e| format!("'{}'", e.addr())).collect();
    format!(
        "listeners:\n- {{name: l, bind: '127.0.0.1:0', health: {health}, downstreams: [{}]}}\n{METRICS}\n{rest}",
        list.join(", ")
    )
}

/// Labels of downstream `addr` of listener `l`.
fn ep(addr: SocketAddr) -> String {
    format!("listener=\"l\",endpoint=\"{addr}\"")
}

/// `udp_fanout_downstream_health` of `addr` (absent: `None`).
fn health(d: &Daemon, addr: SocketAddr) -> Option<u64> {
    d.metric("udp_fanout_downstream_health", &ep(addr))
}

/// Probe results of `addr` with `result` (`success` | `failure`).
fn checks(d: &Daemon, addr: SocketAddr, result: &str) -> u64 {
    d.metric(
        "udp_fanout_health_checks_total",
        &format!("{},result=\"{result}\"", ep(addr)),
    )
    .unwrap_or(0)
}

/// Waits (polling every 5 ms, up to [`WAIT`]) until `addr`'s health reads `want`; how long
/// that took from `since`.
fn health_becomes(d: &Daemon, addr: SocketAddr, want: u64, since: Instant) -> Duration {
    loop {
        if health(d, addr) == Some(want) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < WAIT,
            "{addr} health is {:?}, not {want}, after {:?}",
            health(d, addr),
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `e` has received traffic beyond `n`.
#[track_caller]
fn gets_traffic(e: &Echo, n: u64, what: &str) {
    assert!(
        eventually(WAIT, || e.data() > n),
        "{what}: {} got no traffic",
        e.addr()
    );
}

/// Asserts that `e` receives no traffic for `for_`.
#[track_caller]
fn no_traffic(e: &Echo, for_: Duration, what: &str) {
    let n = e.data();
    std::thread::sleep(for_);
    assert_eq!(e.data(), n, "{what}: {} still got traffic", e.addr());
}

/// One server failing (`how`: hung or dead) and recovering, with traffic flowing: returns
/// (time until the health gauge said 0, time until traffic to it stopped, time until it
/// was healthy again after it recovered).
fn fail_and_recover(how: Mode) -> (Duration, Duration, Duration) {
    let (e1, e2) = (Echo::start("127.0.0.1:0"), Echo::start("127.0.0.1:0"));
    let d = Daemon::start(&config(&[&e1, &e2], HEALTH, ""));
    let t0 = Instant::now();
    health_becomes(&d, e1.addr(), 1, t0);
    health_becomes(&d, e2.addr(), 1, t0);
    let _traffic = Trickle::to(d.addr("l"));
    gets_traffic(&e1, 0, "both healthy");
    gets_traffic(&e2, 0, "both healthy");
    let failures = checks(&d, e2.addr(), "failure");
    let t_fail = Instant::now();
    e2.set(how);
    let detected = health_becomes(&d, e2.addr(), 0, t_fail);
    // Let the last datagrams sent before the push land, then: nothing more for e2 (it is
    // still listed, with what was sent to it since it left the set: nothing).
    std::thread::sleep(Duration::from_millis(50));
    let forwarded = d
        .metric("udp_fanout_downstream_packets_total", &ep(e2.addr()))
        .unwrap();
    let n = e1.data();
    std::thread::sleep(Duration::from_millis(300));
    assert!(e1.data() > n + 100, "the healthy one took over");
    assert_eq!(
        d.metric("udp_fanout_downstream_packets_total", &ep(e2.addr())),
        Some(forwarded),
        "traffic still forwarded to the unhealthy downstream"
    );
    // When traffic stopped: the last datagram a hung server saw, or (a dead one sees
    // nothing) the last forwarded, which is before the gauge said 0.
    let stopped = match how {
        Mode::Silent => e2.last_data().unwrap().saturating_duration_since(t_fail),
        _ => detected,
    };
    let failed = checks(&d, e2.addr(), "failure");
    assert!(failed >= failures + 2, "failures {failures} -> {failed}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        checks(&d, e2.addr(), "failure") > failed,
        "probing goes on while unhealthy"
    );
    assert_eq!(
        d.metric("udp_fanout_listener_panic", "listener=\"l\""),
        Some(0)
    );

    // Back: healthy after `rise` good probes, and traffic returns.
    let n = e2.data();
    let t_back = Instant::now();
    e2.set(Mode::Answer);
    let recovered = health_becomes(&d, e2.addr(), 1, t_back);
    gets_traffic(&e2, n, "recovered");
    (detected, stopped, recovered)
}

#[test]
fn a_hung_downstream_gets_no_traffic_within_the_bound_and_returns() {
    let (detected, stopped, recovered) = fail_and_recover(Mode::Silent);
    eprintln!(
        "hung server: unhealthy after {detected:?}, traffic stopped after {stopped:?} (bound {DETECT:?}), healthy again after {recovered:?}"
    );
    assert!(detected <= DETECT + MARGIN, "detected after {detected:?}");
    assert!(
        stopped <= DETECT + MARGIN,
        "traffic stopped after {stopped:?}"
    );
    // rise × interval, plus the phase of the first probe.
    assert!(
        recovered <= Duration::from_millis(300) + MARGIN,
        "{recovered:?}"
    );
}

#[test]
fn a_dead_downstream_gets_no_traffic_within_the_bound_and_returns() {
    let (detected, _, recovered) = fail_and_recover(Mode::Closed);
    eprintln!(
        "dead server (port unreachable): unhealthy after {detected:?} (bound {DETECT:?}), healthy again after {recovered:?}"
    );
    // Each probe fails on the ICMP error, at once: fall × interval.
    assert!(
        detected <= Duration::from_millis(200) + MARGIN,
        "detected after {detected:?}"
    );
    assert!(
        recovered <= Duration::from_millis(300) + MARGIN,
        "{recovered:?}"
    );
}

#[test]
fn with_no_healthy_downstream_traffic_goes_to_all() {
    let (e1, e2) = (Echo::start("127.0.0.1:0"), Echo::start("127.0.0.1:0"));
    let d = Daemon::start(&config(&[&e1, &e2], HEALTH, ""));
    let panic = || d.metric("udp_fanout_listener_panic", "listener=\"l\"");
    let _traffic = Trickle::to(d.addr("l"));
    let t0 = Instant::now();
    health_becomes(&d, e1.addr(), 1, t0);
    health_becomes(&d, e2.addr(), 1, t0);
    assert_eq!(panic(), Some(0));
    e1.set(Mode::Silent);
    e2.set(Mode::Silent);
    let t = Instant::now();
    health_becomes(&d, e1.addr(), 0, t);
    health_becomes(&d, e2.addr(), 0, t);
    assert!(eventually(WAIT, || panic() == Some(1)), "not failing open");
    // Fail open: both get traffic.
    let (n1, n2) = (e1.data(), e2.data());
    gets_traffic(&e1, n1, "fail open");
    gets_traffic(&e2, n2, "fail open");
    assert!(
        d.log().iter().any(|l| l.contains("fail open")),
        "fail open not logged"
    );
    // One recovers: it alone is served, the panic is over.
    e1.set(Mode::Answer);
    health_becomes(&d, e1.addr(), 1, Instant::now());
    assert!(eventually(WAIT, || panic() == Some(0)));
    std::thread::sleep(Duration::from_millis(50));
    no_traffic(&e2, Duration::from_millis(300), "one healthy again");
    gets_traffic(&e1, e1.data(), "one healthy again");
}

#[test]
fn a_reply_that_does_not_match_expect_is_a_failure() {
    let good = Echo::with("127.0.0.1:0", b"hello?", Some(b"pong, all well"));
    let wrong = Echo::with("127.0.0.1:0", b"hello?", Some(b"nope"));
    let d = Daemon::start(&config(
        &[&good, &wrong],
        "{interval_ms: 100, timeout_ms: 100, fall: 2, rise: 2, send: 'hello?', expect: 'pong'}",
        "",
    ));
    let t0 = Instant::now();
    health_becomes(&d, good.addr(), 1, t0);
    health_becomes(&d, wrong.addr(), 0, t0);
    assert!(wrong.answered() >= 2, "the wrong answers were sent");
    assert_eq!(checks(&d, wrong.addr(), "success"), 0);
    assert!(checks(&d, wrong.addr(), "failure") >= 2);
    assert!(checks(&d, good.addr(), "success") >= 1);
    assert_eq!(checks(&d, good.addr(), "failure"), 0);
    let _traffic = Trickle::to(d.addr("l"));
    gets_traffic(&good, 0, "the matching one");
    no_traffic(&wrong, Duration::from_millis(300), "expect mismatch");
}

#[test]
fn icmp_echo_of_loopback_is_healthy() {
    if !privileged_or_skip("ICMP health checks (raw sockets)") {
        return;
    }
    let e = Echo::start("127.0.0.1:0");
    let d = Daemon::start(&config(
        &[&e],
        "{protocol: icmp, interval_ms: 100, timeout_ms: 100, fall: 2, rise: 2}",
        "",
    ));
    let t0 = Instant::now();
    assert!(
        eventually(WAIT, || checks(&d, e.addr(), "success") >= 3),
        "ICMP probes of 127.0.0.1 did not pass: success {}, failure {}; log:\n{}",
        checks(&d, e.addr(), "success"),
        checks(&d, e.addr(), "failure"),
        d.log().join("\n")
    );
    health_becomes(&d, e.addr(), 1, t0);
    assert_eq!(checks(&d, e.addr(), "failure"), 0);
    assert_eq!(e.probes(), 0, "ICMP checks sent UDP probes");
    // What made it work: CAP_NET_RAW (13) kept for the raw ICMP socket, as it is not without
    // ICMP checks (see kernel_plane.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(eff & (1 << 13), 0, "CapEff {eff:x}");
}

// ------------------------------------------------------------------------------------------
// The kernel plane.

const PORT: u16 = 5514;
const SERVER_PORT: u16 = 7000;

/// A backend server dies and comes back, then the admin API disables and enables the other:
/// the kernel plane follows each (the servers count what reaches them; the client's own
/// address as source shows it was the kernel plane that forwarded).
fn kernel_plane_follows_health_and_the_api(mode: &str) {
    let t = Topology::new(2);
    let servers: Vec<Echo> = t
        .backends
        .iter()
        .zip(&t.backend_ips)
        .map(|(ns, ip)| enter(ns, || Echo::start(&format!("{ip}:{SERVER_PORT}"))))
        .collect();
    let ds: Vec<String> = servers.iter().map(|e| format!("'{}'", e.addr())).collect();
    let yaml = format!(
        "listeners: [{{name: l, bind: '{}:{PORT}', mode: {mode}, interface: {}, health: {HEALTH}, downstreams: [{}]}}]\n{METRICS}\nadmin: {{bind: '127.0.0.1:0'}}",
        t.vip,
        t.lb_if,
        ds.join(", ")
    );
    let d = Daemon::start_in(Some(t.lb.name()), &yaml);
    t.warm_neighbours();
    let (b0, b1) = (&servers[0], &servers[1]);
    let t0 = Instant::now();
    health_becomes(&d, b0.addr(), 1, t0);
    health_becomes(&d, b1.addr(), 1, t0);
    let to: SocketAddr = format!("{}:{PORT}", t.vip).parse().unwrap();
    let client_bind = format!("{}:0", t.client_ip);
    let _traffic = Trickle::from(
        enter(&t.client, || UdpSocket::bind(&client_bind).unwrap()),
        to,
    );
    gets_traffic(b0, 0, "both healthy");
    gets_traffic(b1, 0, "both healthy");
    let client_ip: IpAddr = t.client_ip.parse().unwrap();
    for s in &servers {
        assert_eq!(
            s.sources(),
            [client_ip],
            "not forwarded by the kernel plane"
        );
    }

    // b1 hangs: the kernel plane stops sending to it within the bound.
    let t_fail = Instant::now();
    b1.set(Mode::Silent);
    let detected = health_becomes(&d, b1.addr(), 0, t_fail);
    std::thread::sleep(Duration::from_millis(50));
    let stopped = b1.last_data().unwrap().saturating_duration_since(t_fail);
    no_traffic(b1, Duration::from_millis(300), "unhealthy");
    gets_traffic(b0, b0.data(), "the healthy one");
    eprintln!(
        "{mode}: hung backend unhealthy after {detected:?}, kernel plane stopped sending after {stopped:?} (bound {DETECT:?})"
    );
    assert!(
        stopped <= DETECT + MARGIN,
        "traffic stopped after {stopped:?}"
    );
    // It answers again: traffic returns.
    b1.set(Mode::Answer);
    health_becomes(&d, b1.addr(), 1, Instant::now());
    gets_traffic(b1, b1.data(), "recovered");

    // The API disables b0: nothing more for it; enabled: traffic returns.
    let path = format!("/v1/listeners/l/downstreams/{}", b0.addr());
    let (code, _) = d.api("PATCH", &path, Some(r#"{"state": "disabled"}"#));
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(50));
    no_traffic(b0, Duration::from_millis(300), "disabled");
    gets_traffic(b1, b1.data(), "the other one");
    let (code, _) = d.api("PATCH", &path, Some(r#"{"state": "active"}"#));
    assert_eq!(code, 200);
    gets_traffic(b0, b0.data(), "enabled again");
    for s in &servers {
        assert_eq!(s.sources(), [t.client_ip.parse::<IpAddr>().unwrap()]);
    }
}

in_both_modes!(
    kernel_plane_follows_health_and_the_api,
    "health checks",
    xdp_follows_health_checks_and_the_api,
    tc_follows_health_checks_and_the_api
);
