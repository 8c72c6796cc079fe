//! Sessions and the reply path through the real binary: replies come back from the listener's
//! address, every client gets its own answers, stickiness, idle expiry, a full table, mirror
//! shadows, strangers on upstream ports, and wildcard listeners answering from the address the
//! client wrote to.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{
    Daemon, METRICS, WAIT, addresses, echo_sinks, eventually, one_listener, sinks, wait_total,
};
use fanout_testkit::{GenConfig, GenReport, SinkHandle, generator};

/// Starts the daemon with one listener over the sinks `s` (by address): `listener` holds the
/// listener's other keys, `rest` the config's other lines.
fn over(s: &[SinkHandle], listener: &str, rest: &[&str]) -> Daemon {
    Daemon::start(&one_listener(listener, &addresses(s), rest))
}

/// `count` requests over `flows` clients, waiting for every answer.
fn request(target: SocketAddr, count: u64, flows: u32) -> GenReport {
    let mut g = GenConfig::new(target);
    g.count = Some(count);
    g.flows = flows;
    g.sizes = vec![64, 200];
    g.rate_pps = 20_000;
    g.expect_replies = true;
    g.reply_grace = Duration::from_secs(2);
    generator::run(&g, &AtomicBool::new(false)).unwrap()
}

fn metric(d: &Daemon, name: &str, listener: &str) -> u64 {
    d.metric(name, &format!("listener=\"{listener}\""))
        .unwrap_or_else(|| panic!("{name} missing:\n{}", d.scrape()))
}

fn reply_drop(d: &Daemon, listener: &str, reason: &str) -> u64 {
    d.metric(
        "udp_fanout_replies_dropped_total",
        &format!("listener=\"{listener}\",reason=\"{reason}\""),
    )
    .unwrap()
}

#[test]
fn reply_comes_back_from_the_listener_address() {
    let s = echo_sinks(2, "127.0.0.1");
    let d = over(
        &s,
        "name: dns, bind: '127.0.0.1:0', session: {reply: true}",
        &[],
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..5u8 {
        client.send_to(&[i; 40], d.addr("dns")).unwrap();
        let mut buf = [0u8; 100];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(
            from,
            d.addr("dns"),
            "the reply must come from the address the client sent to"
        );
        assert_eq!(&buf[..n], &[i; 40]);
    }
}

#[test]
fn many_clients_each_get_their_own_answers() {
    let s = echo_sinks(3, "127.0.0.1");
    let d = over(
        &s,
        "name: rr, bind: '127.0.0.1:0', session: {reply: true}",
        &[METRICS],
    );
    let r = request(d.addr("rr"), 6_000, 60);
    assert_eq!(r.replies_received, 6_000, "{r:?}");
    assert_eq!(
        (r.reply_invalid, r.reply_duplicates),
        (0, 0),
        "answers reached the wrong client"
    );
    assert!(r.per_flow.iter().all(|f| f.replies == f.sent));
    d.wait_metric("udp_fanout_replies_total", "listener=\"rr\"", 6_000);
    assert_eq!(metric(&d, "udp_fanout_replies_received_total", "rr"), 6_000);
    assert_eq!(metric(&d, "udp_fanout_sessions_created_total", "rr"), 60);
    assert_eq!(metric(&d, "udp_fanout_sessions_active", "rr"), 60);
    // Sticky (the default): each client's requests all went to one downstream.
    let mut at: BTreeMap<u32, usize> = BTreeMap::new();
    for x in &s {
        for f in &x.snapshot().ports[0].flows {
            *at.entry(f.flow).or_default() += 1;
        }
    }
    assert_eq!(at.len(), 60);
    assert!(
        at.values().all(|&n| n == 1),
        "a sticky client was split: {at:?}"
    );
    assert!(
        s.iter().all(|x| x.total_datagrams() > 0),
        "new sessions are still spread"
    );
}

#[test]
fn consistent_hash_and_ipv6_with_replies() {
    let s = echo_sinks(2, "::1");
    let d = over(
        &s,
        "name: v6, bind: '[::1]:0', distribution: consistent_hash, session: {reply: true}",
        &[],
    );
    let r = request(d.addr("v6"), 2_000, 20);
    assert_eq!((r.replies_received, r.reply_invalid), (2_000, 0), "{r:?}");
}

#[test]
fn ipv4_clients_with_ipv6_and_ipv4_downstreams() {
    // Upstream sockets are dual-stack: one pool serves both families.
    let mut s = echo_sinks(1, "::1");
    s.extend(echo_sinks(1, "127.0.0.1"));
    let d = over(
        &s,
        "name: mixed, bind: '127.0.0.1:0', session: {reply: true}",
        &[],
    );
    let r = request(d.addr("mixed"), 1_000, 20);
    assert_eq!((r.replies_received, r.reply_invalid), (1_000, 0), "{r:?}");
    assert!(s.iter().all(|x| x.total_datagrams() > 0));
}

#[test]
fn non_sticky_sessions_spread_each_datagram_and_still_answer() {
    let s = echo_sinks(2, "127.0.0.1");
    let listener = "name: rr, bind: '127.0.0.1:0', session: {reply: true, sticky: false}";
    let d = over(&s, listener, &[]);
    let r = request(d.addr("rr"), 1_000, 1);
    assert_eq!((r.replies_received, r.reply_invalid), (1_000, 0), "{r:?}");
    // One client, one worker: its datagrams alternate exactly.
    assert_eq!(s[0].wait_for(500, WAIT).total_datagrams(), 500);
    assert_eq!(s[1].wait_for(500, WAIT).total_datagrams(), 500);
}

#[test]
fn idle_sessions_expire_and_free_their_slot() {
    let s = echo_sinks(1, "127.0.0.1");
    let listener = "name: idle, bind: '127.0.0.1:0', session: {reply: true, idle_timeout_secs: 1}";
    let d = over(&s, listener, &[METRICS]);
    let r = request(d.addr("idle"), 30, 3);
    assert_eq!(r.replies_received, 30);
    assert_eq!(metric(&d, "udp_fanout_sessions_active", "idle"), 3);
    assert!(eventually(Duration::from_secs(5), || metric(
        &d,
        "udp_fanout_sessions_active",
        "idle"
    ) == 0));
    assert_eq!(metric(&d, "udp_fanout_sessions_expired_total", "idle"), 3);
    // A client that comes back gets a new session and its answers.
    let r = request(d.addr("idle"), 10, 1);
    assert_eq!(r.replies_received, 10);
    assert_eq!(metric(&d, "udp_fanout_sessions_created_total", "idle"), 4);
}

#[test]
fn a_full_table_evicts_and_never_blocks() {
    let s = echo_sinks(1, "127.0.0.1");
    let listener = "name: small, bind: '127.0.0.1:0', session: {reply: true, max_sessions: 4}";
    let d = over(&s, listener, &[METRICS, "dataplane: {workers: 1}"]);
    // 10 clients in turn on a 4-session table: each new one evicts the oldest, and every
    // request still gets its answer (the requester's session is the newest).
    for _ in 0..10 {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.send_to(b"ping", d.addr("small")).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], d.addr("small")));
    }
    assert_eq!(metric(&d, "udp_fanout_sessions_active", "small"), 4);
    assert_eq!(metric(&d, "udp_fanout_sessions_evicted_total", "small"), 6);
    assert_eq!(metric(&d, "udp_fanout_sessions_created_total", "small"), 10);
}

#[test]
fn mirror_relays_only_the_primary_and_counts_shadow_replies() {
    let s = echo_sinks(3, "127.0.0.1");
    let listener = "name: tee, bind: '127.0.0.1:0', distribution: mirror, session: {reply: true}";
    let d = over(&s, listener, &[METRICS]);
    let r = request(d.addr("tee"), 1_000, 10);
    assert_eq!(
        (r.replies_received, r.reply_duplicates, r.reply_invalid),
        (1_000, 0, 0),
        "{r:?}"
    );
    for x in &s {
        assert_eq!(
            x.wait_for(1_000, WAIT).total_datagrams(),
            1_000,
            "every downstream gets every request"
        );
    }
    assert!(eventually(WAIT, || reply_drop(&d, "tee", "shadow_reply") == 2_000));
    assert_eq!(
        metric(&d, "udp_fanout_replies_received_total", "tee"),
        3_000
    );
    assert_eq!(metric(&d, "udp_fanout_replies_total", "tee"), 1_000);
}

#[test]
fn replies_from_strangers_are_dropped_and_counted() {
    let s = echo_sinks(1, "127.0.0.1");
    let d = over(
        &s,
        "name: l, bind: '127.0.0.1:0', session: {reply: true}",
        &[METRICS],
    );
    let r = request(d.addr("l"), 10, 1);
    assert_eq!(r.replies_received, 10);
    // The downstream saw udp-fanout's upstream port: a stranger sends there.
    let upstream: SocketAddr = *s[0].snapshot().ports[0].sources.keys().next().unwrap();
    let upstream = SocketAddr::new("127.0.0.1".parse().unwrap(), upstream.port());
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..7 {
        stranger.send_to(b"spoof", upstream).unwrap();
    }
    assert!(eventually(WAIT, || reply_drop(&d, "l", "unknown_source") == 7));
    assert_eq!(metric(&d, "udp_fanout_replies_total", "l"), 10);
    assert_eq!(metric(&d, "udp_fanout_replies_received_total", "l"), 17);
}

#[test]
fn wildcard_listener_answers_from_the_address_the_client_wrote_to() {
    let s = echo_sinks(1, "127.0.0.1");
    let d = over(
        &s,
        "name: any, bind: '0.0.0.0:0', session: {reply: true}",
        &[],
    );
    let port = d.addr("any").port();
    for ip in ["127.0.0.1", "127.0.0.2", "127.3.4.5"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.send_to(b"hello", to).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, to, "answer must come from {to}");
    }
}

#[test]
fn sticky_sessions_without_replies_pin_clients_for_round_robin() {
    let s = sinks(2, "127.0.0.1");
    let d = over(
        &s,
        "name: logs, bind: '127.0.0.1:0', session: {sticky: true}",
        &[],
    );
    let mut g = GenConfig::new(d.addr("logs"));
    g.count = Some(2_000);
    g.flows = 20;
    g.rate_pps = 20_000;
    generator::run(&g, &AtomicBool::new(false)).unwrap();
    wait_total(&s, 2_000);
    let mut at: BTreeMap<u32, usize> = BTreeMap::new();
    for x in &s {
        for f in &x.snapshot().ports[0].flows {
            *at.entry(f.flow).or_default() += 1;
        }
    }
    assert_eq!(at.len(), 20);
    assert!(at.values().all(|&n| n == 1), "{at:?}");
}
