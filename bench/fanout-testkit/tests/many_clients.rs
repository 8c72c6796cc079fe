//! Many client addresses: flows spread over several source IPs on an explicit port range,
//! allocated deterministically so that a second run gets the same addresses.
//!
//! The addresses (127.0.77.1–3, ports 21000–21149) are private to this test: nothing else in
//! the workspace binds explicit ports there, and everything else uses ephemeral ports.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fanout_testkit::{GenConfig, GenReport, Sink, SinkOptions, generator};

const PORTS: (u16, u16) = (21_000, 21_149);

fn ips() -> Vec<IpAddr> {
    fanout_testkit::addrs::parse_ip_list("127.0.77.1-127.0.77.3").expect("address range")
}

fn run(target: SocketAddr) -> GenReport {
    let mut g = GenConfig::new(target);
    g.flows = 300;
    g.count = Some(300);
    g.rate_pps = 20_000;
    g.bind_ips = ips();
    g.bind_ports = Some(PORTS);
    g.expect_replies = true;
    g.reply_grace = Duration::from_secs(5);
    generator::run(&g, &AtomicBool::new(false)).expect("generator run")
}

#[test]
fn three_hundred_flows_over_three_ips_get_the_same_addresses_twice() {
    let sink = Sink::serve(
        &["127.0.0.1:0".parse().expect("addr")],
        SinkOptions::echoing(),
    )
    .expect("start sink");
    let first = run(sink.local_addrs()[0]);
    assert_eq!(
        (first.sent, first.replies_received),
        (300, 300),
        "{first:#?}"
    );
    let ips = ips();
    let used: Vec<SocketAddr> = first.per_flow.iter().map(|f| f.local_addr).collect();
    // Flow i is on IP i % 3, and each IP's flows take its ports in order.
    for (i, a) in used.iter().enumerate() {
        assert_eq!(a.ip(), ips[i % 3], "flow {i}");
        assert!((PORTS.0..=PORTS.1).contains(&a.port()), "flow {i}: {a}");
        if i >= 3 {
            assert!(a.port() > used[i - 3].port(), "flow {i}: {a}");
        }
    }
    if first.busy_ports_skipped == 0 {
        let expected: Vec<SocketAddr> = (0..300)
            .map(|i| SocketAddr::new(ips[i % 3], PORTS.0 + (i / 3) as u16))
            .collect();
        assert_eq!(used, expected);
    }
    let report = sink.wait_for(300, Duration::from_secs(10));
    let seen: BTreeSet<SocketAddr> = report.ports[0].sources.keys().copied().collect();
    assert_eq!(seen, used.iter().copied().collect::<BTreeSet<_>>());
    assert!(report.ports[0].sources.values().all(|&n| n == 1));

    let second = run(sink.local_addrs()[0]);
    assert_eq!(second.replies_received, 300, "{second:#?}");
    let again: Vec<SocketAddr> = second.per_flow.iter().map(|f| f.local_addr).collect();
    assert_eq!(again, used, "the second run got other addresses");
    let report = sink.wait_for(600, Duration::from_secs(10));
    assert_eq!(report.ports[0].sources.len(), 300);
    assert!(report.ports[0].sources.values().all(|&n| n == 2));
}

#[test]
fn a_port_range_too_small_for_the_flows_is_refused_before_sending() {
    let mut g = GenConfig::new("127.0.0.1:9".parse().expect("addr"));
    g.flows = 31;
    g.count = Some(31);
    g.bind_ips = ips();
    g.bind_ports = Some((21_200, 21_209));
    let e = generator::run(&g, &AtomicBool::new(false)).expect_err("too few ports");
    assert!(e.to_string().contains("need 11 ports per IP"), "{e}");
}
