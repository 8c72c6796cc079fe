//! Sessions and the reply path through the real binary: replies come back from the listener's
//! address, every client gets its own answers, stickiness, idle expiry, a full table, mirror
//! shadows, strangers on upstream ports, and wildcard listeners answering from the address the
//! client wrote to.
//!
//! Every test runs a [`Rig`]: the daemon with one listener, [`L`], over a few sinks (echoing
//! ones, unless a test says otherwise), so that a test reads as the listener's keys, the
//! traffic and what comes back.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{
    Daemon, METRICS, WAIT, addresses, ask, client, echo_sinks, eventually, generate, landed,
    one_listener, sinks, traffic, wait_total,
};
use fanout_testkit::{GenReport, SinkHandle};

/// The name of the listener every test configures.
const L: &str = "l";

/// The daemon with listener [`L`] over the sinks `s`.
struct Rig {
    s: Vec<SinkHandle>,
    d: Daemon,
}

impl Rig {
    /// Listener [`L`] over `s`: `keys` holds the listener's keys but its name and downstreams
    /// (`bind: '127.0.0.1:0', session: {reply: true}`), `rest` the config's other lines.
    fn over(s: Vec<SinkHandle>, keys: &str, rest: &[&str]) -> Rig {
        let listener = format!("name: {L}, {keys}");
        let d = Daemon::start(&one_listener(&listener, &addresses(&s), rest));
        Rig { s, d }
    }

    /// Listener [`L`] over `n` echo sinks on 127.0.0.1.
    fn echo(n: usize, keys: &str, rest: &[&str]) -> Rig {
        Rig::over(echo_sinks(n, "127.0.0.1"), keys, rest)
    }

    /// The listener's address.
    fn addr(&self) -> SocketAddr {
        self.d.addr(L)
    }

    /// `count` requests over `flows` clients, waiting for every answer.
    fn request(&self, count: u64, flows: u32) -> GenReport {
        let mut g = traffic(self.addr(), count, flows, &[64, 200], 20_000);
        g.expect_replies = true;
        g.reply_grace = Duration::from_secs(2);
        generate(&g)
    }

    /// The listener's sample of `name`.
    fn metric(&self, name: &str) -> u64 {
        self.d
            .metric(name, &format!("listener=\"{L}\""))
            .unwrap_or_else(|| panic!("{name} missing:\n{}", self.d.scrape()))
    }

    /// Waits up to [`WAIT`] for the listener's sample of `name` to read `want`.
    fn wait_metric(&self, name: &str, want: u64) {
        self.d.wait_metric(name, &format!("listener=\"{L}\""), want);
    }

    /// Checks the listener's samples: `(name, value)` each.
    fn assert_metrics(&self, want: &[(&str, u64)]) {
        for &(name, value) in want {
            assert_eq!(self.metric(name), value, "{name}");
        }
    }

    /// The listener's reply-path datagrams dropped for `reason`.
    fn reply_drop(&self, reason: &str) -> u64 {
        self.d
            .metric(
                "udp_fanout_replies_dropped_total",
                &format!("listener=\"{L}\",reason=\"{reason}\""),
            )
            .unwrap()
    }

    /// Checks that the `clients` clients of generator run `run` were each pinned to one sink.
    fn assert_sticky(&self, run: &GenReport, clients: usize) {
        let at = landed(&self.s, run);
        assert_eq!(at.len(), clients);
        assert!(
            at.values().all(|sinks| sinks.len() == 1),
            "a sticky client was split: {at:?}"
        );
    }
}

/// Checks that each of the `n` requests got its answer, at the client that sent it.
fn assert_all_answered(r: &GenReport, n: u64) {
    assert_eq!((r.replies_received, r.reply_invalid), (n, 0), "{r:?}");
}

#[test]
fn reply_comes_back_from_the_listener_address() {
    let t = Rig::echo(2, "bind: '127.0.0.1:0', session: {reply: true}", &[]);
    let c = client();
    for i in 0..5u8 {
        ask(&c, t.addr(), &[i; 40]);
    }
}

#[test]
fn many_clients_each_get_their_own_answers() {
    let t = Rig::echo(3, "bind: '127.0.0.1:0', session: {reply: true}", &[METRICS]);
    let r = t.request(6_000, 60);
    assert_eq!(r.replies_received, 6_000, "{r:?}");
    assert_eq!(
        (r.reply_invalid, r.reply_duplicates),
        (0, 0),
        "answers reached the wrong client"
    );
    assert!(r.per_flow.iter().all(|f| f.replies == f.sent));
    t.wait_metric("udp_fanout_replies_total", 6_000);
    t.assert_metrics(&[
        ("udp_fanout_replies_received_total", 6_000),
        ("udp_fanout_sessions_created_total", 60),
        ("udp_fanout_sessions_active", 60),
    ]);
    // Sticky (the default): each client's requests all went to one downstream.
    t.assert_sticky(&r, 60);
    assert!(
        t.s.iter().all(|x| x.total_datagrams() > 0),
        "new sessions are still spread"
    );
}

#[test]
fn consistent_hash_and_ipv6_with_replies() {
    let keys = "bind: '[::1]:0', distribution: consistent_hash, session: {reply: true}";
    let t = Rig::over(echo_sinks(2, "::1"), keys, &[]);
    assert_all_answered(&t.request(2_000, 20), 2_000);
}

#[test]
fn ipv4_clients_with_ipv6_and_ipv4_downstreams() {
    // Upstream sockets are dual-stack: one pool serves both families.
    let mut s = echo_sinks(1, "::1");
    s.extend(echo_sinks(1, "127.0.0.1"));
    let t = Rig::over(s, "bind: '127.0.0.1:0', session: {reply: true}", &[]);
    assert_all_answered(&t.request(1_000, 20), 1_000);
    assert!(t.s.iter().all(|x| x.total_datagrams() > 0));
}

#[test]
fn non_sticky_sessions_spread_each_datagram_and_still_answer() {
    let keys = "bind: '127.0.0.1:0', session: {reply: true, sticky: false}";
    let t = Rig::echo(2, keys, &[]);
    assert_all_answered(&t.request(1_000, 1), 1_000);
    // One client, one worker: its datagrams alternate exactly.
    assert_eq!(t.s[0].wait_for(500, WAIT).total_datagrams(), 500);
    assert_eq!(t.s[1].wait_for(500, WAIT).total_datagrams(), 500);
}

#[test]
fn idle_sessions_expire_and_free_their_slot() {
    let keys = "bind: '127.0.0.1:0', session: {reply: true, idle_timeout_secs: 1}";
    let t = Rig::echo(1, keys, &[METRICS]);
    let r = t.request(30, 3);
    assert_eq!(r.replies_received, 30);
    assert_eq!(t.metric("udp_fanout_sessions_active"), 3);
    assert!(eventually(Duration::from_secs(5), || t
        .metric("udp_fanout_sessions_active")
        == 0));
    assert_eq!(t.metric("udp_fanout_sessions_expired_total"), 3);
    // A client that comes back gets a new session and its answers.
    let r = t.request(10, 1);
    assert_eq!(r.replies_received, 10);
    assert_eq!(t.metric("udp_fanout_sessions_created_total"), 4);
}

#[test]
fn a_full_table_evicts_and_never_blocks() {
    let keys = "bind: '127.0.0.1:0', session: {reply: true, max_sessions: 4}";
    let t = Rig::echo(1, keys, &[METRICS, "dataplane: {workers: 1}"]);
    // 10 clients in turn on a 4-session table: each new one evicts the oldest, and every
    // request still gets its answer (the requester's session is the newest).
    for _ in 0..10 {
        ask(&client(), t.addr(), b"ping");
    }
    t.assert_metrics(&[
        ("udp_fanout_sessions_active", 4),
        ("udp_fanout_sessions_evicted_total", 6),
        ("udp_fanout_sessions_created_total", 10),
    ]);
}

#[test]
fn mirror_relays_only_the_primary_and_counts_shadow_replies() {
    let keys = "bind: '127.0.0.1:0', distribution: mirror, session: {reply: true}";
    let t = Rig::echo(3, keys, &[METRICS]);
    let r = t.request(1_000, 10);
    assert_eq!(
        (r.replies_received, r.reply_duplicates, r.reply_invalid),
        (1_000, 0, 0),
        "{r:?}"
    );
    for x in &t.s {
        assert_eq!(
            x.wait_for(1_000, WAIT).total_datagrams(),
            1_000,
            "every downstream gets every request"
        );
    }
    assert!(eventually(WAIT, || t.reply_drop("shadow_reply") == 2_000));
    t.assert_metrics(&[
        ("udp_fanout_replies_received_total", 3_000),
        ("udp_fanout_replies_total", 1_000),
    ]);
}

#[test]
fn replies_from_strangers_are_dropped_and_counted() {
    let t = Rig::echo(1, "bind: '127.0.0.1:0', session: {reply: true}", &[METRICS]);
    let r = t.request(10, 1);
    assert_eq!(r.replies_received, 10);
    // The downstream saw udp-fanout's upstream port: a stranger sends there.
    let upstream: SocketAddr = *t.s[0].snapshot().ports[0].sources.keys().next().unwrap();
    let upstream = SocketAddr::new("127.0.0.1".parse().unwrap(), upstream.port());
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..7 {
        stranger.send_to(b"spoof", upstream).unwrap();
    }
    assert!(eventually(WAIT, || t.reply_drop("unknown_source") == 7));
    t.assert_metrics(&[
        ("udp_fanout_replies_total", 10),
        ("udp_fanout_replies_received_total", 17),
    ]);
}

#[test]
fn wildcard_listener_answers_from_the_address_the_client_wrote_to() {
    let t = Rig::echo(1, "bind: '0.0.0.0:0', session: {reply: true}", &[]);
    let port = t.addr().port();
    for ip in ["127.0.0.1", "127.0.0.2", "127.3.4.5"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        ask(&client(), to, b"hello");
    }
}

#[test]
fn sticky_sessions_without_replies_pin_clients_for_round_robin() {
    let t = Rig::over(
        sinks(2, "127.0.0.1"),
        "bind: '127.0.0.1:0', session: {sticky: true}",
        &[],
    );
    let r = generate(&traffic(t.addr(), 2_000, 20, &[64], 20_000));
    wait_total(&t.s, 2_000);
    t.assert_sticky(&r, 20);
}
