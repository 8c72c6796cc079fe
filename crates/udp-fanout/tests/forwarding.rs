//! End-to-end forwarding through the real binary on loopback: distribution, byte-exact
//! datagrams of every size, IPv6, unreachable downstreams, and metrics that match the traffic.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{
    Daemon, METRICS, WAIT, addr_of, generate, landed, one_listener, recording_sinks, sinks,
    traffic, wait_total,
};
use fanout_core::FlowKey;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint, Pick};
use fanout_testkit::{GenReport, SinkHandle, payload};

/// `downstreams:` items with these weights: `{address: '…', weight: w}`.
fn downstream_list(sinks: &[SinkHandle], weights: &[u32]) -> String {
    sinks
        .iter()
        .zip(weights)
        .map(|(s, w)| format!("{{address: '{}', weight: {w}}}", addr_of(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts the daemon with one listener over the sinks `s`, each of weight 1: `listener` holds
/// the listener's other keys.
fn over(s: &[SinkHandle], listener: &str) -> Daemon {
    let ds = downstream_list(s, &vec![1; s.len()]);
    Daemon::start(&one_listener(listener, &ds, &[]))
}

/// Sends `count` datagrams over `flows` flows cycling `sizes`, all of which must go out.
fn send(target: SocketAddr, count: u64, flows: u32, sizes: &[usize]) -> GenReport {
    let r = generate(&traffic(target, count, flows, sizes, 50_000));
    assert_eq!(r.sent, count, "generator could not send everything: {r:?}");
    r
}

#[test]
fn round_robin_spreads_exactly_by_weight() {
    let s = sinks(3, "127.0.0.1");
    let d = Daemon::start(&one_listener(
        "name: rr, bind: '127.0.0.1:0', distribution: round_robin",
        &downstream_list(&s, &[1, 2, 3]),
        &[METRICS],
    ));
    // One flow: one worker's cycle, so the shares are exact.
    send(d.addr("rr"), 6_000, 1, &[64]);
    wait_total(&s, 6_000);
    let got: Vec<u64> = s.iter().map(|x| x.total_datagrams()).collect();
    assert_eq!(got, [1_000, 2_000, 3_000]);
    for x in &s {
        let r = x.snapshot();
        assert_eq!((r.total_corrupt(), r.total_duplicates()), (0, 0));
    }
}

#[test]
fn round_robin_over_three_equal_downstreams_with_many_flows() {
    let s = sinks(3, "127.0.0.1");
    let d = over(&s, "name: rr, bind: '127.0.0.1:0'");
    send(d.addr("rr"), 9_000, 16, &[64, 512]);
    wait_total(&s, 9_000);
    for x in &s {
        // Each worker cycles on its own, so a share is exact up to one cycle per worker.
        let n = x.total_datagrams();
        assert!((2_990..=3_010).contains(&n), "uneven: {n}");
    }
}

#[test]
fn mirror_delivers_every_size_byte_exact_to_every_downstream() {
    let s = recording_sinks(2, "127.0.0.1");
    let d = over(&s, "name: tee, bind: '127.0.0.1:0', distribution: mirror");
    let sizes = [0usize, 1, 1400, 9000, 65_507];
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = Vec::new();
    for (seq, &size) in sizes.iter().enumerate() {
        let bytes = payload::expected(size, 7, 1, seq as u64, payload::now_ns());
        client.send_to(&bytes, d.addr("tee")).unwrap();
        sent.push(bytes);
        // Sizes this different can be reordered by nothing on loopback, but keep it obvious.
        std::thread::sleep(Duration::from_millis(2));
    }
    for x in &s {
        let r = x.wait_for(sizes.len() as u64, WAIT);
        let port = r.port(addr_of(x)).unwrap();
        assert_eq!(port.records.len(), sizes.len());
        for (got, want) in port.records.iter().zip(&sent) {
            assert_eq!(got.len(), want.len());
            assert!(got == want, "payload of {} bytes differs", want.len());
        }
        assert_eq!(port.corrupt, 0);
    }
}

#[test]
fn mirror_under_load_loses_nothing() {
    let s = sinks(2, "127.0.0.1");
    let d = over(&s, "name: tee, bind: '127.0.0.1:0', distribution: mirror");
    let r = send(d.addr("tee"), 20_000, 8, &[64, 1400]);
    for x in &s {
        let rep = x.wait_for(r.sent, WAIT);
        assert_eq!(rep.total_datagrams(), r.sent);
        assert_eq!(rep.total_unique(), r.sent);
        assert_eq!((rep.total_corrupt(), rep.total_duplicates()), (0, 0));
    }
}

#[test]
fn consistent_hash_keeps_each_client_on_the_downstream_maglev_predicts() {
    let s = sinks(3, "127.0.0.1");
    let d = over(
        &s,
        "name: ch, bind: '127.0.0.1:0', distribution: consistent_hash",
    );
    let r = send(d.addr("ch"), 6_400, 64, &[100]);
    wait_total(&s, 6_400);
    // Where each client landed, by the flow id the generator wrote in its payloads.
    let landed = landed(&s, &r);
    assert_eq!(landed.len(), 64, "every client seen");
    // The same Maglev table, computed here, predicts every choice.
    let eps: Vec<Endpoint> = s.iter().map(|x| Endpoint::new(addr_of(x))).collect();
    let set = BackendSet::new(Distribution::ConsistentHash, eps, DEFAULT_TABLE_SIZE);
    let mut used = [false; 3];
    for f in &r.per_flow {
        let at = &landed[&f.flow];
        assert_eq!(
            at.len(),
            1,
            "client {} split over downstreams {at:?}",
            f.local_addr
        );
        let Pick::One(want) = set.pick(&FlowKey::new(f.local_addr), &mut 0) else {
            panic!()
        };
        assert_eq!(at[0], want as usize, "client {}", f.local_addr);
        used[at[0]] = true;
    }
    assert!(
        used.iter().all(|u| *u),
        "64 clients should reach all 3 downstreams"
    );
}

#[test]
fn ipv6_listener_and_downstreams() {
    let s = recording_sinks(2, "::1");
    let d = over(&s, "name: v6, bind: '[::1]:0', distribution: mirror");
    assert!(d.addr("v6").is_ipv6());
    let r = send(d.addr("v6"), 500, 4, &[0, 48, 1200, 65_527]);
    for x in &s {
        let rep = x.wait_for(r.sent, WAIT);
        assert_eq!(rep.total_datagrams(), 500);
        assert_eq!(rep.total_corrupt(), 0);
        assert_eq!(rep.port(addr_of(x)).unwrap().bytes, r.bytes_sent);
    }
}

#[test]
fn ipv4_listener_to_ipv6_downstream_and_back() {
    let (s6, s4) = (sinks(1, "::1"), sinks(1, "127.0.0.1"));
    let d = Daemon::start(&format!(
        "listeners:\n- {{name: four, bind: '127.0.0.1:0', downstreams: ['{}']}}\n- {{name: six, bind: '[::1]:0', downstreams: ['{}']}}",
        addr_of(&s6[0]),
        addr_of(&s4[0])
    ));
    send(d.addr("four"), 300, 2, &[64]);
    send(d.addr("six"), 200, 2, &[64]);
    assert_eq!(s6[0].wait_for(300, WAIT).total_valid(), 300);
    assert_eq!(s4[0].wait_for(200, WAIT).total_valid(), 200);
}

#[test]
fn unreachable_downstream_does_not_stall_the_others() {
    // A closed port answers with ICMP port unreachable; the live downstream must get its share
    // and the worker must keep going.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let s = sinks(1, "127.0.0.1");
    let d = Daemon::start(&one_listener(
        "name: rr, bind: '127.0.0.1:0'",
        &format!("'{closed_addr}', '{}'", addr_of(&s[0])),
        &[METRICS],
    ));
    send(d.addr("rr"), 4_000, 1, &[64]);
    assert_eq!(s[0].wait_for(2_000, WAIT).total_datagrams(), 2_000);
    let l = r#"listener="rr""#;
    d.wait_metric("udp_fanout_packets_received_total", l, 4_000);
    let fwd = d.metric("udp_fanout_packets_forwarded_total", l).unwrap();
    let send_err = d
        .metric(
            "udp_fanout_packets_dropped_total",
            r#"listener="rr",reason="send_error""#,
        )
        .unwrap();
    assert_eq!(
        fwd + send_err,
        4_000,
        "every datagram forwarded or dropped with a reason"
    );
}

#[test]
fn metrics_equal_the_traffic() {
    // A v6 listener mirrored to one v6 and one v4 downstream: datagrams too large for IPv4 are
    // forwarded to the v6 one and dropped (too_large) for the v4 one.
    let (s6, s4) = (sinks(1, "::1"), sinks(1, "127.0.0.1"));
    let d = Daemon::start(&one_listener(
        "name: m, bind: '[::1]:0', distribution: mirror",
        &format!("'{}', '{}'", addr_of(&s6[0]), addr_of(&s4[0])),
        &[METRICS],
    ));
    let small = send(d.addr("m"), 1_000, 4, &[100, 300]);
    let big = send(d.addr("m"), 5, 1, &[65_520]);
    assert_eq!(s6[0].wait_for(1_005, WAIT).total_datagrams(), 1_005);
    assert_eq!(s4[0].wait_for(1_000, WAIT).total_datagrams(), 1_000);
    let l = r#"listener="m""#;
    d.wait_metric("udp_fanout_packets_received_total", l, 1_005);
    let text = d.scrape();
    let m = |name: &str, labels: &str| {
        common::metric_value(&text, name, labels)
            .unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{text}"))
    };
    let bytes_in = small.bytes_sent + big.bytes_sent;
    assert_eq!(m("udp_fanout_packets_received_total", l), 1_005);
    assert_eq!(m("udp_fanout_bytes_received_total", l), bytes_in);
    assert_eq!(m("udp_fanout_packets_forwarded_total", l), 2_005);
    assert_eq!(
        m("udp_fanout_bytes_forwarded_total", l),
        bytes_in + small.bytes_sent
    );
    assert_eq!(
        m(
            "udp_fanout_packets_dropped_total",
            r#"listener="m",reason="too_large""#
        ),
        5
    );
    let dropped_total: u64 = text
        .lines()
        .filter(|x| x.starts_with("udp_fanout_packets_dropped_total{listener=\"m\""))
        .filter_map(|x| x.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(dropped_total, 5, "only the too-large copies are dropped");
    let ep6 = format!(r#"listener="m",endpoint="{}""#, addr_of(&s6[0]));
    let ep4 = format!(r#"listener="m",endpoint="{}""#, addr_of(&s4[0]));
    assert_eq!(m("udp_fanout_downstream_packets_total", &ep6), 1_005);
    assert_eq!(m("udp_fanout_downstream_packets_total", &ep4), 1_000);
    assert_eq!(m("udp_fanout_downstream_active", l), 2);
    // The accounting identity: every copy forwarded or dropped with a reason.
    assert_eq!(
        m("udp_fanout_packets_received_total", l) * 2,
        2_005 + dropped_total
    );
    let (status, body) = d.http_get("/healthz");
    assert!(status.contains("200") && body.contains("ok"));
}

#[test]
fn several_listeners_are_all_served() {
    // Each listener has its own sockets in every worker; all of them must be read.
    let s = sinks(3, "127.0.0.1");
    let d = Daemon::start(&format!(
        "listeners:\n\
         - {{name: a, bind: '127.0.0.1:0', downstreams: ['{}']}}\n\
         - {{name: b, bind: '127.0.0.1:0', distribution: consistent_hash, downstreams: ['{}']}}\n\
         - {{name: c, bind: '127.0.0.1:0', distribution: mirror, downstreams: ['{}'], session: {{reply: true}}}}",
        addr_of(&s[0]),
        addr_of(&s[1]),
        addr_of(&s[2])
    ));
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        send(d.addr(name), 300, 4, &[64]);
        assert_eq!(
            s[i].wait_for(300, WAIT).total_datagrams(),
            300,
            "listener {name}"
        );
    }
}

/// Sends `payloads` to `to` as one GSO run (the kernel keeps it as one buffer on loopback, so a
/// GRO-enabled listener receives it coalesced).
fn send_gso(to: SocketAddr, payloads: &[Vec<u8>]) {
    use fanout_userspace::sys::{SendOpts, SendQueue};
    use std::os::fd::AsFd;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut q = SendQueue::new(8);
    let mut tx = q.tx();
    for p in payloads {
        assert!(tx.push_coalesced(&to, p, &SendOpts::default(), 0));
    }
    let mut sent = 0;
    tx.flush(sock.as_fd(), Duration::from_secs(1), |_, _, r| {
        sent += usize::from(r == fanout_userspace::sys::SendResult::Sent)
    });
    assert_eq!(sent, payloads.len());
}

#[test]
fn gro_buffers_are_split_back_into_their_datagrams() {
    // A client sending GSO runs (like QUIC stacks do) reaches the listener as GRO buffers of
    // many datagrams; each must be counted, balanced and delivered on its own, byte-exact.
    let (s, t) = (recording_sinks(2, "127.0.0.1"), sinks(2, "127.0.0.1"));
    let d = Daemon::start(&format!(
        "listeners:\n- {{name: rr, bind: '127.0.0.1:0', downstreams: [{}]}}\n- {{name: tee, bind: '127.0.0.1:0', distribution: mirror, downstreams: [{}]}}\nmetrics: {{bind: '127.0.0.1:0'}}",
        downstream_list(&s, &[1, 1]),
        downstream_list(&t, &[1, 1])
    ));
    let payloads: Vec<Vec<u8>> = (0..60u64)
        .map(|seq| payload::expected(500, 9, 0, seq, payload::now_ns()))
        .collect();
    send_gso(d.addr("rr"), &payloads[..]);
    send_gso(d.addr("tee"), &payloads[..]);
    wait_total(&s, 60);
    // One flow, one worker: the round-robin alternates exactly, datagram by datagram.
    let got: Vec<Vec<Vec<u8>>> = s
        .iter()
        .map(|x| x.snapshot().ports[0].records.clone())
        .collect();
    assert_eq!(got[0].len(), 30);
    assert_eq!(got[1].len(), 30);
    let merged: Vec<Vec<u8>> = got[0]
        .iter()
        .zip(&got[1])
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let want_a: Vec<Vec<u8>> = payloads.clone();
    let mut want_b = payloads.clone();
    for pair in want_b.chunks_mut(2) {
        pair.swap(0, 1);
    }
    assert!(
        merged == want_a || merged == want_b,
        "datagrams changed or reordered"
    );
    for x in &t {
        let rep = x.wait_for(60, WAIT);
        assert_eq!(
            (
                rep.total_datagrams(),
                rep.total_unique(),
                rep.total_corrupt()
            ),
            (60, 60, 0)
        );
    }
    d.wait_metric("udp_fanout_packets_received_total", "listener=\"rr\"", 60);
    for (name, listener, want) in [
        ("udp_fanout_packets_forwarded_total", "rr", 60),
        ("udp_fanout_packets_received_total", "tee", 60),
        ("udp_fanout_packets_forwarded_total", "tee", 120),
        ("udp_fanout_bytes_received_total", "rr", 60 * 500),
    ] {
        let got = d.metric(name, &format!("listener=\"{listener}\""));
        assert_eq!(got, Some(want), "{name} of {listener}");
    }
}
