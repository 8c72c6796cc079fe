//! ICMP echo checks (and UDP where the namespace makes a case), as root: success over
//! loopback with whatever socket the host allows, a ping socket where a namespace's
//! `ping_group_range` allows it, immediate failure where there is no route (the send
//! fails), and timeouts where `lo` is down (sent, dropped, never answered). Every namespace is created and deleted here, and no
//! probe leaves it. Without root these skip, saying why.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod health_common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_control::health::{Health, HealthChecker, IcmpKind};
use fanout_testkit::netns::{Netns, on_thread, privileged, unique_tag};
use health_common::{Events, icmp, udp};
use tokio::sync::mpsc::unbounded_channel;

const MARGIN: Duration = Duration::from_millis(150);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn checker() -> (HealthChecker, Events) {
    let (tx, rx) = unbounded_channel();
    (HealthChecker::start(tx), Events::new(rx))
}

/// Runs `body` on a fresh thread inside `ns`, on its own current-thread runtime (sockets
/// belong to the namespace of the thread that opens them).
fn in_netns<F: Future<Output = ()>>(ns: &Netns, body: impl FnOnce() -> F + Send) {
    on_thread(Some(&ns.path()), None, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(body());
        Ok(())
    })
    .expect("test thread in the namespace");
}

/// Whether gid 0 may open ping sockets here (`net.ipv4.ping_group_range`).
fn ping_sockets_allowed() -> bool {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let v: Vec<i64> = range
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    matches!(v.as_slice(), [lo, hi] if *lo <= 0 && 0 <= *hi)
}

#[tokio::test]
async fn echo_to_loopback_succeeds_as_root() {
    if !privileged("ICMP echo with a raw socket") {
        return;
    }
    let (hc, mut ev) = checker();
    let v4 = addr("127.0.0.1:5514");
    hc.set_targets("icmp", Some(icmp(30, 500, 2, 2)), vec![v4]);
    assert!(
        ev.wait("icmp", v4, Health::Healthy, Duration::from_secs(2))
            .await
            .is_some()
    );
    let want = if ping_sockets_allowed() {
        IcmpKind::Ping
    } else {
        IcmpKind::Raw
    };
    assert_eq!(hc.icmp_socket_kind(false), Some(want));
    // A second listener with the same address: told apart by sequence number.
    hc.set_targets("icmp2", Some(icmp(30, 500, 2, 2)), vec![v4]);
    assert!(
        ev.wait("icmp2", v4, Health::Healthy, Duration::from_secs(2))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    for (_, c) in hc.counts() {
        assert_eq!(c.failure, 0, "{c:?}");
    }

    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        let v6 = addr("[::1]:5514");
        hc.set_targets("icmp6", Some(icmp(30, 500, 2, 2)), vec![v6]);
        assert!(
            ev.wait("icmp6", v6, Health::Healthy, Duration::from_secs(2))
                .await
                .is_some()
        );
    } else {
        eprintln!("SKIP (IPv6 part): no IPv6 loopback");
    }
}

#[test]
fn a_ping_socket_is_used_where_ping_group_range_allows() {
    if !privileged("a network namespace") {
        return;
    }
    let ns = Netns::new(format!("hcp{}", unique_tag())).unwrap();
    // Per namespace: lets every group open ping sockets in this one only.
    ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .unwrap();
    in_netns(&ns, || async {
        let (hc, mut ev) = checker();
        let v4 = addr("127.0.0.1:0");
        hc.set_targets("ping", Some(icmp(30, 500, 2, 2)), vec![v4]);
        assert!(
            ev.wait("ping", v4, Health::Healthy, Duration::from_secs(2))
                .await
                .is_some()
        );
        assert_eq!(hc.icmp_socket_kind(false), Some(IcmpKind::Ping));
    });
}

#[test]
fn with_no_route_probes_fail_at_once() {
    if !privileged("a network namespace") {
        return;
    }
    // Only lo (up) in here: 10.254.9.9 has no route, so every send fails.
    let ns = Netns::new(format!("hcr{}", unique_tag())).unwrap();
    in_netns(&ns, || async {
        let (hc, mut ev) = checker();
        let target = addr("10.254.9.9:9");
        let (interval, fall) = (30u64, 2u32);
        let start = Instant::now();
        hc.set_targets("icmp", Some(icmp(interval, 2_000, fall, 2)), vec![target]);
        hc.set_targets("udp", Some(udp(interval, 2_000, fall, 2)), vec![target]);
        for l in ["icmp", "udp"] {
            let down = ev
                .wait(l, target, Health::Unhealthy, Duration::from_secs(3))
                .await;
            let took = down.expect("never unhealthy") - start;
            eprintln!("{l}, no route: unhealthy after {} ms", took.as_millis());
            // From Unknown: first probe within an interval, no waiting for the 2 s timeout.
            assert!(took <= Duration::from_millis(fall as u64 * interval) + MARGIN);
        }
        for ((l, _), c) in hc.counts() {
            assert_eq!(c.success, 0, "{l}: {c:?}");
        }
    });
}

#[test]
fn with_lo_down_probes_time_out_within_the_bound() {
    if !privileged("a network namespace") {
        return;
    }
    // lo down keeps its routes (the kernel's loopback exception) but drops what it is sent:
    // probes to 127.0.0.1 go out and nothing comes back, not even an ICMP error.
    let ns = Netns::new(format!("hcd{}", unique_tag())).unwrap();
    ns.ip(&["link", "set", "lo", "down"]).unwrap();
    in_netns(&ns, || async {
        let (hc, mut ev) = checker();
        let target = addr("127.0.0.1:9");
        let (interval, timeout, fall) = (40u64, 60u64, 3u32);
        let start = Instant::now();
        hc.set_targets("icmp", Some(icmp(interval, timeout, fall, 2)), vec![target]);
        hc.set_targets("udp", Some(udp(interval, timeout, fall, 2)), vec![target]);
        // From Unknown the first probe comes within an interval: the contract's bound.
        let bound = Duration::from_millis(fall as u64 * interval + timeout);
        for l in ["icmp", "udp"] {
            let down = ev
                .wait(l, target, Health::Unhealthy, Duration::from_secs(3))
                .await;
            let took = down.expect("never unhealthy") - start;
            eprintln!(
                "{l}, lo down: unhealthy after {} ms (bound {} ms)",
                took.as_millis(),
                bound.as_millis()
            );
            assert!(took <= bound + MARGIN, "took {took:?}");
            let floor = Duration::from_millis((fall as u64 - 1) * interval + timeout - 5);
            assert!(took >= floor, "too fast for timeouts: {took:?}");
        }
        for ((l, _), c) in hc.counts() {
            assert_eq!(c.success, 0, "{l}: {c:?}");
        }
    });
}

#[test]
fn icmp_errors_from_a_router_fail_probes_at_once() {
    if !privileged("network namespaces and a veth pair") {
        return;
    }
    // checker (10.77.0.1) --veth-- router (10.77.0.2), which rejects 10.78.9.0/24 with
    // host unreachable and has no UDP port 9: real ICMP errors from another host, read off
    // the error queue of the sockets that sent the probes. Linux limits the router's
    // unreachables for routes (ip_error: a burst of 5, then 1 a second per source, sharing a
    // bucket with the port unreachables), so the two cases run one after the other, and
    // net.ipv4.icmp_ratelimit is 0 in the router for the port unreachables.
    let tag = unique_tag();
    let a = Netns::new(format!("hca{tag}")).unwrap();
    let b = Netns::new(format!("hcb{tag}")).unwrap();
    let (va, vb) = (format!("hcva{tag}"), format!("hcvb{tag}"));
    a.ip(&[
        "link",
        "add",
        &va,
        "type",
        "veth",
        "peer",
        "name",
        &vb,
        "netns",
        b.name(),
    ])
    .unwrap();
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", &va]).unwrap();
    a.ip(&["link", "set", &va, "up"]).unwrap();
    a.ip(&["route", "add", "10.78.0.0/16", "via", "10.77.0.2"])
        .unwrap();
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", &vb]).unwrap();
    b.ip(&["link", "set", &vb, "up"]).unwrap();
    b.ip(&["route", "add", "unreachable", "10.78.9.0/24"])
        .unwrap();
    b.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.icmp_ratelimit=0",
    ])
    .unwrap();
    in_netns(&a, || async {
        let (hc, mut ev) = checker();
        let rejected = addr("10.78.9.9:9");
        let router = addr("10.77.0.2:9");
        let (interval, fall) = (30u64, 2u32);
        // The router's own address answers echo: the path works.
        hc.set_targets("up", Some(icmp(interval, 2_000, fall, 2)), vec![router]);
        let up = ev
            .wait("up", router, Health::Healthy, Duration::from_secs(3))
            .await;
        assert!(up.is_some(), "no echo reply across the veth");
        let cases = [
            ("icmp", icmp(interval, 2_000, fall, 2), rejected),
            ("udp", udp(interval, 2_000, fall, 2), router),
        ];
        for (l, cfg, target) in cases {
            let start = Instant::now();
            hc.set_targets(l, Some(cfg), vec![target]);
            let down = ev
                .wait(l, target, Health::Unhealthy, Duration::from_secs(3))
                .await;
            let took = down.expect("never unhealthy") - start;
            eprintln!(
                "{l} to {target}: unhealthy after {} ms (ICMP error from the router)",
                took.as_millis()
            );
            // From Unknown: within fall intervals, nowhere near the 2 s timeout.
            assert!(took <= Duration::from_millis(fall as u64 * interval) + MARGIN);
            hc.set_targets(l, None, Vec::new());
        }
    });
    drop(b);
}
