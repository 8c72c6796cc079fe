//! Generator → sink on loopback: counts, flows, sources, byte-exact payloads, echoes, pacing.
//! Everything binds port 0 on 127.0.0.1 or ::1, and every wait is bounded.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fanout_testkit::payload::{self, HEADER_LEN};
use fanout_testkit::{GenConfig, GenReport, Sink, SinkOptions, generator};

const WAIT: Duration = Duration::from_secs(10);

fn sink(addrs: &[&str], opts: SinkOptions) -> fanout_testkit::SinkHandle {
    let addrs: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| a.parse().expect("test address"))
        .collect();
    Sink::serve(&addrs, opts).expect("starting the sink")
}

fn gen_to(target: SocketAddr, f: impl FnOnce(&mut GenConfig)) -> (GenConfig, GenReport) {
    let mut cfg = GenConfig::new(target);
    f(&mut cfg);
    let report = generator::run(&cfg, &AtomicBool::new(false)).expect("generator run");
    (cfg, report)
}

/// `count` datagrams over `flows` flows cycling `sizes` at `rate` per second; with `replies`,
/// waiting up to 5 s for every echo.
fn send(
    target: SocketAddr,
    count: u64,
    flows: u32,
    sizes: &[usize],
    rate: u64,
    replies: bool,
) -> (GenConfig, GenReport) {
    gen_to(target, |c| {
        c.count = Some(count);
        c.flows = flows;
        c.sizes = sizes.to_vec();
        c.rate_pps = rate;
        if replies {
            c.expect_replies = true;
            c.reply_grace = Duration::from_secs(5);
        }
    })
}

#[test]
fn ten_thousand_datagrams_over_eight_flows_arrive_exactly_once() {
    let s = sink(&["127.0.0.1:0"], SinkOptions::default());
    // Fast, but paced: the sink shares two cores with the generator and other tests.
    let (cfg, g) = send(s.local_addrs()[0], 10_000, 8, &[64, 1400], 100_000, false);
    assert_eq!((g.sent, g.send_errors), (10_000, 0));
    assert_eq!(g.bytes_sent, 5_000 * 64 + 5_000 * 1400);
    let r = s.wait_for(10_000, WAIT);
    let r2 = s.stop();
    assert_eq!(r.total_datagrams(), 10_000, "{r:#?}");
    assert_eq!(r2.total_datagrams(), 10_000, "more than sent arrived");
    assert_eq!(r.total_corrupt(), 0);
    assert_eq!(r.total_short() + r.total_not_ours(), 0);
    assert_eq!(r.total_duplicates(), 0);
    assert_eq!(r.total_unique(), 10_000);
    assert_eq!(r.total_lost(), 0);
    assert_eq!(r.flows.len(), 8);
    let port = &r.ports[0];
    assert_eq!(port.sources.len(), 8);
    for f in &g.per_flow {
        assert_eq!(f.sent, 1_250);
        let stats = r.flow(cfg.stream_id, f.flow).unwrap();
        assert_eq!(stats.unique, f.sent, "flow {}", f.flow);
        assert_eq!(stats.highest_seq, Some(f.sent - 1));
        // Each flow came from its own socket.
        assert_eq!(port.sources[&f.local_addr], f.sent);
    }
    let lat = port.latency.unwrap();
    assert_eq!(lat.count, 10_000);
    assert!(lat.max_ns < 10_000_000_000);
}

#[test]
fn recorded_payloads_are_byte_identical_to_what_was_sent() {
    let sizes = vec![0, 1, 1400, 9000, payload::MAX_V4_PAYLOAD];
    let s = sink(&["127.0.0.1:0"], SinkOptions::recording());
    let (cfg, g) = send(s.local_addrs()[0], 30, 3, &sizes, 2_000, false);
    assert_eq!(g.sent, 30);
    let r = s.wait_for(30, WAIT);
    let port = &r.ports[0];
    assert_eq!(port.records.len(), 30);
    assert_eq!(port.records_dropped, 0);
    assert_eq!(port.short, 12);
    assert_eq!(port.valid, 18);
    let flows = u64::from(cfg.flows);
    let mut indices = BTreeSet::new();
    for rec in &port.records {
        if rec.len() < HEADER_LEN {
            assert_eq!(rec, &payload::expected(rec.len(), 0, 0, 0, 0));
            continue;
        }
        let h = payload::decode(rec).unwrap();
        assert_eq!(h.stream, cfg.stream_id);
        let i = h.seq * flows + u64::from(h.flow);
        assert_eq!(rec.len(), sizes[(i % sizes.len() as u64) as usize]);
        assert_eq!(
            rec,
            &payload::expected(rec.len(), cfg.stream_id, h.flow, h.seq, h.ts_ns)
        );
        indices.insert(i);
    }
    // Every headered datagram of the run, each once.
    let want: BTreeSet<u64> = (0..30)
        .filter(|i| sizes[(i % 5) as usize] >= HEADER_LEN)
        .collect();
    assert_eq!(indices, want);
}

#[test]
fn echoed_replies_all_come_back_with_latency() {
    let s = sink(&["127.0.0.1:0"], SinkOptions::echoing());
    let (_, g) = send(s.local_addrs()[0], 2_000, 4, &[64, 512], 20_000, true);
    assert_eq!(g.sent, 2_000);
    assert_eq!(g.replies_received, 2_000, "{g:#?}");
    assert_eq!(g.reply_duplicates + g.reply_invalid + g.reply_short, 0);
    for f in &g.per_flow {
        assert_eq!(f.replies, f.sent);
    }
    let lat = g.reply_latency.unwrap();
    assert_eq!(lat.count, 2_000);
    assert!(lat.p50_ns > 0 && lat.p50_ns <= lat.p99_ns && lat.p99_ns <= lat.max_ns);
    assert!(lat.p999_ns <= lat.max_ns);
    let r = s.stop();
    assert_eq!(r.total_echoed(), 2_000);
}

#[test]
fn pacing_spreads_two_thousand_datagrams_over_about_a_fifth_of_a_second() {
    let s = sink(&["127.0.0.1:0"], SinkOptions::default());
    let t = Instant::now();
    let (_, g) = gen_to(s.local_addrs()[0], |c| {
        c.count = Some(2_000);
        c.rate_pps = 10_000;
    });
    let wall = t.elapsed();
    assert_eq!(g.sent, 2_000);
    assert!(
        g.elapsed >= Duration::from_millis(100) && g.elapsed <= Duration::from_secs(1),
        "took {:?}",
        g.elapsed
    );
    assert!(wall <= Duration::from_secs(2));
    assert!(
        g.rate_pps > 2_000.0 && g.rate_pps < 20_000.0,
        "{}",
        g.rate_pps
    );
    assert_eq!(s.wait_for(2_000, WAIT).total_unique(), 2_000);
}

#[test]
fn duration_bounds_a_run_without_a_count() {
    let s = sink(&["127.0.0.1:0"], SinkOptions::default());
    let (_, g) = gen_to(s.local_addrs()[0], |c| {
        c.duration = Some(Duration::from_millis(200));
        c.rate_pps = 1_000;
    });
    assert!(g.elapsed < Duration::from_secs(1));
    assert!((100..=300).contains(&g.sent), "sent {}", g.sent);
}

#[test]
fn ports_and_streams_are_kept_apart() {
    let s = sink(&["127.0.0.1:0", "127.0.0.1:0"], SinkOptions::default());
    let addrs = s.local_addrs().to_vec();
    assert_ne!(addrs[0], addrs[1]);
    let (a, ga) = gen_to(addrs[0], |c| {
        c.count = Some(300);
        c.flows = 3;
        c.rate_pps = 50_000;
    });
    let (b, gb) = gen_to(addrs[1], |c| {
        c.count = Some(200);
        c.flows = 2;
        c.rate_pps = 50_000;
    });
    let r = s.wait_for(500, WAIT);
    assert_eq!(r.port(addrs[0]).unwrap().datagrams, ga.sent);
    assert_eq!(r.port(addrs[1]).unwrap().datagrams, gb.sent);
    assert_eq!(r.flows.len(), 5);
    assert_eq!(r.flow(a.stream_id, 2).unwrap().unique, 100);
    assert_eq!(r.flow(b.stream_id, 1).unwrap().unique, 100);
    assert!(r.flow(b.stream_id, 2).is_none());
}

#[test]
fn corrupt_short_and_foreign_datagrams_are_told_apart() {
    let s = sink(&["127.0.0.1:0"], SinkOptions::default());
    let dst = s.local_addrs()[0];
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = payload::expected(100, 1, 0, 0, payload::now_ns());
    let mut flipped = good.clone();
    flipped[60] ^= 0x10;
    c.send_to(&good, dst).unwrap();
    c.send_to(&good, dst).unwrap();
    c.send_to(&flipped, dst).unwrap();
    c.send_to(&good[..80], dst).unwrap();
    c.send_to(&payload::expected(3, 0, 0, 0, 0), dst).unwrap();
    c.send_to(&[0xAB; 64], dst).unwrap();
    let r = s.wait_for(6, WAIT);
    let p = &r.ports[0];
    assert_eq!(p.datagrams, 6);
    assert_eq!((p.valid, p.corrupt, p.short, p.not_ours), (2, 2, 1, 1));
    assert_eq!(r.total_duplicates(), 1);
    assert_eq!(p.sources[&c.local_addr().unwrap()], 6);
}

#[test]
fn ipv6_loopback_works_when_available() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no ::1 here; skipping");
        return;
    };
    drop(probe);
    let s = sink(&["[::1]:0"], SinkOptions::echoing());
    let (_, g) = send(s.local_addrs()[0], 500, 2, &[48, 65_527], 20_000, true);
    assert_eq!(g.replies_received, 500, "{g:#?}");
    let r = s.stop();
    assert_eq!(r.total_unique(), 500);
    assert_eq!(r.ports[0].sources.len(), 2);
}
