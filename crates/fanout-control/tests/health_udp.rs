//! UDP health checks against real servers on loopback, with real timing: a server that
//! answers, dies (port unreachable: detected at the next probes, not after a timeout) and
//! comes back; one that goes silent (the timeout path); `expect`; the `port` override; the
//! target set changing; one downstream in two listeners.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod health_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_control::health::{Health, HealthChecker};
use health_common::{Events, Reply, Server, udp};
use tokio::sync::mpsc::unbounded_channel;

const LOCAL: &str = "127.0.0.1:0";

/// Slack for scheduling on a loaded 2-core machine, added to every bound.
const MARGIN: Duration = Duration::from_millis(120);

fn checker() -> (HealthChecker, Events) {
    let (tx, rx) = unbounded_channel();
    (HealthChecker::start(tx), Events::new(rx))
}

fn local() -> SocketAddr {
    LOCAL.parse().unwrap()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Waits up to a second for `addr` in `listener` to turn healthy.
async fn assert_rises(ev: &mut Events, listener: &str, addr: SocketAddr) {
    let up = ev
        .wait(listener, addr, Health::Healthy, Duration::from_secs(1))
        .await;
    assert!(up.is_some(), "never healthy");
}

/// How long after `since` `addr` in `listener` turned `health` (waiting up to 3 s).
async fn time_until(
    ev: &mut Events,
    listener: &str,
    addr: SocketAddr,
    health: Health,
    since: Instant,
) -> Duration {
    let at = ev
        .wait(listener, addr, health, Duration::from_secs(3))
        .await;
    at.unwrap_or_else(|| panic!("never {health:?}")) - since
}

/// Silences `server` and checks that `addr` turns unhealthy within
/// fall × interval + timeout (plus the margin); returns how long it took.
async fn silence_within_bound(
    server: &Server,
    ev: &mut Events,
    addr: SocketAddr,
    (interval, timeout, fall): (u64, u64, u32),
    label: &str,
) -> Duration {
    server.set(Reply::Silent);
    let detection = time_until(ev, "l", addr, Health::Unhealthy, Instant::now()).await;
    let bound = Duration::from_millis(fall as u64 * interval + timeout);
    eprintln!(
        "{label}: unhealthy after {} ms (bound fall × interval + timeout = {} ms)",
        ms(detection),
        ms(bound)
    );
    assert!(
        detection <= bound + MARGIN,
        "took {detection:?}, bound {bound:?}"
    );
    detection
}

#[tokio::test]
async fn a_dead_port_fails_at_once_and_a_revived_one_rises() {
    let server = Server::start(local(), Reply::Pong).await;
    let addr = server.addr;
    let (hc, mut ev) = checker();
    // A timeout far above fall × interval: only the ICMP error can explain a fast fall.
    let (interval, timeout, fall, rise) = (50, 2_000, 3, 2);
    hc.set_targets("l", Some(udp(interval, timeout, fall, rise)), vec![addr]);
    assert_rises(&mut ev, "l", addr).await;

    server.stop().await;
    let detection = time_until(&mut ev, "l", addr, Health::Unhealthy, Instant::now()).await;
    let bound = Duration::from_millis(fall as u64 * interval) + MARGIN;
    eprintln!(
        "port unreachable: unhealthy after {} ms (fall {fall} × interval {interval} ms)",
        ms(detection)
    );
    assert!(
        detection <= bound,
        "took {detection:?}, bound {bound:?}: ICMP error not seen?"
    );
    assert!(
        detection < Duration::from_millis(timeout),
        "detected by timeout"
    );
    assert_eq!(hc.health("l", addr), Health::Unhealthy);

    let back = Server::start(addr, Reply::Pong).await;
    let recovery = time_until(&mut ev, "l", addr, Health::Healthy, Instant::now()).await;
    eprintln!("revived: healthy after {} ms (rise {rise})", ms(recovery));
    assert!(recovery <= Duration::from_millis(rise as u64 * interval) + MARGIN);

    let counts = hc.counts();
    assert_eq!(counts.len(), 1);
    let ((listener, a), c) = &counts[0];
    assert_eq!((listener.as_str(), *a), ("l", addr));
    assert!(c.success > rise as u64 && c.failure >= fall as u64, "{c:?}");
    assert_eq!(hc.udp_sockets(), 1);
    back.stop().await;
}

#[tokio::test]
async fn a_silent_server_fails_by_timeout_within_the_bound() {
    let server = Server::start(local(), Reply::Pong).await;
    let addr = server.addr;
    let (hc, mut ev) = checker();
    let (interval, timeout, fall) = (50u64, 40u64, 3u32);
    hc.set_targets("l", Some(udp(interval, timeout, fall, 2)), vec![addr]);
    assert_rises(&mut ev, "l", addr).await;

    let detection =
        silence_within_bound(&server, &mut ev, addr, (interval, timeout, fall), "silent").await;
    // At least fall - 1 intervals between the first and last failing probe, plus a timeout.
    let floor = Duration::from_millis((fall as u64 - 1) * interval + timeout - 5);
    assert!(detection >= floor, "too fast for a timeout: {detection:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_timeout_longer_than_the_interval_keeps_the_probe_rate() {
    let server = Server::start(local(), Reply::Late(Duration::from_millis(50))).await;
    let addr = server.addr;
    let (hc, mut ev) = checker();
    // Two or three probes in flight at a time.
    let (interval, timeout, fall) = (30u64, 100u64, 3u32);
    hc.set_targets("l", Some(udp(interval, timeout, fall, 2)), vec![addr]);
    assert_rises(&mut ev, "l", addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = hc.counts()[0].1;
    assert_eq!(c.failure, 0, "late but timely replies all count: {c:?}");
    assert!(c.success >= 8, "one probe per interval: {c:?}");

    let label = "silent, timeout > interval";
    silence_within_bound(&server, &mut ev, addr, (interval, timeout, fall), label).await;
    server.stop().await;
}

#[tokio::test]
async fn replies_must_start_with_expect() {
    let server = Server::start(local(), Reply::Fixed(b"nope, sorry".to_vec())).await;
    let addr = server.addr;
    let (hc, mut ev) = checker();
    let mut wrong = udp(30, 200, 2, 2);
    wrong.expect = Some(b"pong".to_vec());
    let mut prefix = udp(30, 200, 2, 2);
    prefix.expect = Some(b"nope".to_vec());
    hc.set_targets("wrong", Some(wrong), vec![addr]);
    hc.set_targets("prefix", Some(prefix), vec![addr]);
    let down = ev
        .wait("wrong", addr, Health::Unhealthy, Duration::from_secs(2))
        .await;
    assert!(down.is_some(), "a wrong answer must fail");
    let up = ev
        .wait("prefix", addr, Health::Healthy, Duration::from_secs(2))
        .await;
    assert!(up.is_some(), "a matching prefix must pass");
    let counts = hc.counts();
    let wrong = counts.iter().find(|((l, _), _)| l == "wrong").unwrap().1;
    assert_eq!(wrong.success, 0);
    assert!(wrong.failure >= 2);
    // The same downstream in two listeners: two pool sockets, so replies are told apart.
    assert_eq!(hc.udp_sockets(), 2);

    server.set(Reply::Pong);
    let up = ev
        .wait("wrong", addr, Health::Healthy, Duration::from_secs(2))
        .await;
    assert!(up.is_some(), "expect now met");
    server.stop().await;
}

#[tokio::test]
async fn port_overrides_the_probed_port() {
    let health = Server::start(local(), Reply::Pong).await;
    // A downstream port with nothing on it: probing it would fail.
    let closed = Server::start(local(), Reply::Silent).await;
    let downstream = closed.addr;
    closed.stop().await;
    let (hc, mut ev) = checker();
    let mut cfg = udp(30, 500, 2, 2);
    cfg.port = Some(health.addr.port());
    hc.set_targets("override", Some(cfg), vec![downstream]);
    hc.set_targets("direct", Some(udp(30, 500, 2, 2)), vec![downstream]);
    let up = ev
        .wait(
            "override",
            downstream,
            Health::Healthy,
            Duration::from_secs(2),
        )
        .await;
    assert!(up.is_some(), "the health port answers");
    let down = ev
        .wait(
            "direct",
            downstream,
            Health::Unhealthy,
            Duration::from_secs(2),
        )
        .await;
    assert!(down.is_some(), "the downstream port does not");
    assert_eq!(hc.health("override", downstream), Health::Healthy);
    health.stop().await;
}

#[tokio::test]
async fn set_targets_keeps_those_that_stay_and_forgets_the_rest() {
    let a = Server::start(local(), Reply::Pong).await;
    let b = Server::start(local(), Reply::Pong).await;
    let c = Server::start(local(), Reply::Pong).await;
    let (hc, mut ev) = checker();
    let cfg = udp(30, 200, 2, 2);
    hc.set_targets("l", Some(cfg.clone()), vec![a.addr, b.addr]);
    for s in [&a, &b] {
        assert!(
            ev.wait("l", s.addr, Health::Healthy, Duration::from_secs(1))
                .await
                .is_some()
        );
    }
    let before = hc
        .counts()
        .iter()
        .find(|((_, x), _)| *x == b.addr)
        .unwrap()
        .1;

    // A new interval too: b keeps its health and counts across the change.
    let mut slower = cfg.clone();
    slower.interval = Duration::from_millis(40);
    hc.set_targets("l", Some(slower), vec![b.addr, c.addr]);
    assert_eq!(hc.health("l", b.addr), Health::Healthy);
    assert_eq!(hc.health("l", a.addr), Health::Unknown, "a is forgotten");
    assert_eq!(hc.health("l", c.addr), Health::Unknown, "c is new");
    assert_rises(&mut ev, "l", c.addr).await;
    // Two intervals more: b was probed again under the new schedule.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = hc.counts();
    assert_eq!(counts.len(), 2, "{counts:?}");
    let after = counts.iter().find(|((_, x), _)| *x == b.addr).unwrap().1;
    assert!(
        after.success > before.success,
        "b's counts went on: {before:?} -> {after:?}"
    );
    assert!(!counts.iter().any(|((_, x), _)| *x == a.addr));
    // b stayed healthy: no second event for it.
    assert!(
        !ev.drain().iter().any(|e| e.addr == b.addr),
        "b reported again"
    );

    hc.set_targets("l", None, vec![b.addr, c.addr]);
    assert!(hc.counts().is_empty(), "no checks: nothing reported");
    assert_eq!(hc.health("l", b.addr), Health::Unknown);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ev.drain().is_empty(), "no events without checks");
    for s in [a, b, c] {
        s.stop().await;
    }
}

#[tokio::test]
async fn ipv6_loopback_rises_and_falls() {
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    };
    drop(probe);
    let server = Server::start("[::1]:0".parse().unwrap(), Reply::Pong).await;
    let addr = server.addr;
    let (hc, mut ev) = checker();
    hc.set_targets("v6", Some(udp(40, 2_000, 2, 2)), vec![addr]);
    assert_rises(&mut ev, "v6", addr).await;
    server.stop().await;
    let detection = time_until(&mut ev, "v6", addr, Health::Unhealthy, Instant::now()).await;
    eprintln!(
        "IPv6 port unreachable: unhealthy after {} ms",
        ms(detection)
    );
    assert!(
        detection <= Duration::from_millis(2 * 40) + MARGIN,
        "ICMPv6 error not seen"
    );
}

#[tokio::test]
async fn dropping_the_checker_stops_probing() {
    let server = Server::start(local(), Reply::Pong).await;
    let (hc, mut ev) = checker();
    hc.set_targets("l", Some(udp(20, 100, 2, 2)), vec![server.addr]);
    assert_rises(&mut ev, "l", server.addr).await;
    drop(hc);
    // The channel closes once every task holding the checker ended.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while ev
            .wait("l", server.addr, Health::Unhealthy, Duration::from_secs(5))
            .await
            .is_some()
        {}
    })
    .await;
    assert!(closed.is_ok(), "the checker's tasks outlived it");
    server.stop().await;
}
