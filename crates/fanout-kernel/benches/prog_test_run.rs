//! ns/packet of the kernel plane's programs, measured by the kernel (BPF_PROG_TEST_RUN with a
//! large repeat reports the mean duration per run).
//!
//! `cargo bench -p fanout-kernel --bench prog_test_run` measures with repeat = 1,000,000 (seven
//! rounds; median, min and max of the kernel's means shown); under `cargo test --all-targets`
//! it runs each path with repeat = 1,000 as a check. Without root it prints `SKIP` and succeeds
//! (or fails with UDP_FANOUT_REQUIRE_PRIVILEGED=1).
//!
//! Repeats run on the previous repeat's output (the kernel does not reset its buffer), so every
//! measured path is made idempotent: each downstream address:port is also a listener whose
//! only downstream is itself, so after the first repeat every repeat takes the same full path
//! (lookup, selection, rewrite, route), and UF_G_KEEP_TTL keeps the TTL from running down. The
//! counters prove it: every repeat is received and forwarded once, nothing else is counted.
//! The route paths run in a private network namespace with a veth and a permanent neighbour,
//! so bpf_fib_lookup succeeds.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::packet::{Builder, ETH_P_ARP};
use common::*;
use fanout_core::select::Distribution;
use fanout_kernel::maps::ListenerCounters;

/// Listeners: 0 = round-robin over RR_BACKENDS, 1.. their self-listeners; CH_ID = consistent
/// hash over CH_BACKENDS, then theirs.
const RR_BIND: &str = "10.0.0.1:5000";
const RR_BACKENDS: [&str; 3] = ["10.88.0.2:6001", "10.88.0.2:6002", "10.88.0.2:6003"];
const CH_ID: u32 = 4;
const CH_BIND: &str = "10.0.0.1:5300";
const CH_BACKENDS: [&str; 5] = [
    "10.88.0.2:5301",
    "10.88.0.2:5302",
    "10.88.0.2:5303",
    "10.88.0.2:5304",
    "10.88.0.2:5305",
];
const LISTENERS: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not for a listener: nothing counted.
    Pass,
    /// Received and forwarded once per repeat.
    Forward,
}

struct Path {
    name: String,
    prog: Prog,
    flags: u32,
    frame: Vec<u8>,
    verdict: u32,
    kind: Kind,
}

fn verdict_name(prog: Prog, code: u32) -> &'static str {
    match (prog, code) {
        (Prog::Xdp, XDP_DROP) => "XDP_DROP",
        (Prog::Xdp, XDP_PASS) => "XDP_PASS",
        (Prog::Xdp, XDP_TX) => "XDP_TX",
        (Prog::Xdp, XDP_REDIRECT) => "XDP_REDIRECT",
        (Prog::Tc, TC_ACT_OK) => "TC_ACT_OK",
        (Prog::Tc, TC_ACT_SHOT) => "TC_ACT_SHOT",
        (Prog::Tc, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
        _ => "?",
    }
}

fn paths() -> Vec<Path> {
    let client = sa("192.0.2.1:40000");
    let udp = |dst: &str| Builder::udp(client, sa(dst), &[0x55; 64]).build();
    let (rr, ch, not_ours) = (udp(RR_BIND), udp(CH_BIND), udp("10.0.0.1:9999"));
    let mut arp = udp(RR_BIND);
    arp[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let keep = UF_G_KEEP_TTL;
    let mut v = Vec::new();
    for prog in PROGS {
        let (tag, tx, redirect) = match prog {
            Prog::Xdp => ("XDP", XDP_TX, XDP_REDIRECT),
            Prog::Tc => ("TC", TC_ACT_OK, TC_ACT_REDIRECT),
        };
        let pass = prog.code(Verdict::Pass);
        let p = |what: &str, flags, frame: &Vec<u8>, verdict, kind| Path {
            name: format!("{tag} {what}"),
            prog,
            flags,
            frame: frame.clone(),
            verdict,
            kind,
        };
        let (no_fib, no_cache) = (UF_G_NO_FIB | keep, UF_G_NO_NEXTHOP_CACHE | keep);
        let (fwd, ignored) = (Kind::Forward, Kind::Pass);
        #[rustfmt::skip]
        let rows = [
            p("not IP (ARP): pass", keep, &arp, pass, ignored),
            p("not for us (UDP, no listener): pass", keep, &not_ours, pass, ignored),
            p("round-robin + rewrite (NO_FIB)", no_fib, &rr, tx, fwd),
            p("consistent hash + rewrite (NO_FIB)", no_fib, &ch, tx, fwd),
            p("round-robin, next-hop cache hit", keep, &rr, redirect, fwd),
            p("round-robin, bpf_fib_lookup every packet", no_cache, &rr, redirect, fwd),
        ];
        v.extend(rows);
    }
    v
}

fn setup() -> Harness {
    let mut h = Harness::new();
    veth_uf0(None, "10.88.0.1/24");
    sh("ip neigh add 10.88.0.2 lladdr 02:aa:bb:cc:dd:02 dev uf0 nud permanent");
    let eps = |list: &[&str]| endpoints(&list.iter().map(|a| (*a, 1)).collect::<Vec<_>>());
    let rr = Distribution::RoundRobin;
    let ch = Distribution::ConsistentHash;
    h.listener(0, sa(RR_BIND), rr, eps(&RR_BACKENDS), 0);
    for (i, b) in RR_BACKENDS.iter().enumerate() {
        let id = 1 + i as u32;
        h.listener(id, sa(b), rr, eps(&[b]), id * 10);
    }
    h.listener(CH_ID, sa(CH_BIND), ch, eps(&CH_BACKENDS), CH_ID * 10);
    for (i, b) in CH_BACKENDS.iter().enumerate() {
        let id = CH_ID + 1 + i as u32;
        h.listener(id, sa(b), ch, eps(&[b]), id * 10);
    }
    h
}

fn totals(h: &Harness) -> ListenerCounters {
    let mut t = ListenerCounters::default();
    for id in 0..LISTENERS {
        let c = h.counters(id);
        t.rx_packets += c.rx_packets;
        t.fwd_packets += c.fwd_packets;
        t.passed += c.passed;
        for (a, b) in t.drops.iter_mut().zip(c.drops) {
            *a += b;
        }
    }
    t
}

/// Runs one path with `repeat`; returns the kernel's mean ns per run after checking verdict,
/// output and counters.
fn measure(h: &mut Harness, path: &Path, repeat: u32) -> u64 {
    h.globals(path.flags, Duration::from_secs(3600), 0);
    h.maps().clear_nexthops().unwrap();
    if path.flags & (UF_G_NO_FIB | UF_G_NO_NEXTHOP_CACHE) == 0 {
        let hop = nexthop(2, [0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]);
        h.maps()
            .insert_nexthop(sa("10.88.0.2:0").ip(), hop)
            .unwrap();
    }
    let before = totals(h);
    let r = h.run_with(path.prog, &path.frame, None, repeat);
    let after = totals(h);
    assert_eq!(r.code, path.verdict, "{}: verdict", path.name);
    let n = u64::from(repeat);
    let (rx, fwd) = match path.kind {
        Kind::Pass => (0, 0),
        Kind::Forward => (n, n),
    };
    assert_eq!(
        after.rx_packets - before.rx_packets,
        rx,
        "{}: rx",
        path.name
    );
    assert_eq!(
        after.fwd_packets - before.fwd_packets,
        fwd,
        "{}: fwd",
        path.name
    );
    assert_eq!(after.passed, before.passed, "{}: passed", path.name);
    assert_eq!(after.drops, before.drops, "{}: drops", path.name);
    if path.kind == Kind::Forward {
        let p = common::packet::parse(&r.out).unwrap();
        assert_eq!(p.dst.ip(), sa("10.88.0.2:0").ip(), "{}: output", path.name);
        assert_eq!(p.ttl, 64, "{}: TTL kept", path.name);
        common::packet::check_checksums(&r.out).unwrap();
    }
    r.duration_ns
}

fn main() {
    if !privileged("prog_test_run bench") {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let (repeat, rounds) = if bench { (1_000_000, 7) } else { (1_000, 1) };
    let mut h = setup();
    let paths = paths();
    // Rounds go over all paths in turn, so a noisy moment (this is a shared VM) spreads over
    // the paths instead of falling on one.
    let mut ns: Vec<Vec<u64>> = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for (path, v) in paths.iter().zip(&mut ns) {
            v.push(measure(&mut h, path, repeat));
        }
    }
    println!(
        "BPF_PROG_TEST_RUN, repeat {repeat}, {rounds} round(s): kernel-reported mean ns/packet"
    );
    println!(
        "{:<48} {:>6} {:>5} {:>5}  verdict",
        "path", "median", "min", "max"
    );
    for (path, mut v) in paths.iter().zip(ns) {
        v.sort_unstable();
        println!(
            "{:<48} {:>6} {:>5} {:>5}  {}",
            path.name,
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            verdict_name(path.prog, path.verdict)
        );
    }
}
