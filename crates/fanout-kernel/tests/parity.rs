//! Kernel/userspace parity of downstream choice, through BPF_PROG_TEST_RUN.
//!
//! - Consistent hash: 10,000 IPv4 and 2,000 IPv6 distinct client flows through both programs
//!   (test mode, UF_G_NO_FIB) over 5 weighted downstreams; every output destination must be the
//!   endpoint `fanout_core::select::BackendSet::pick` chooses. This pins the C flow hash,
//!   the mod-65537 reduction and the Maglev table indexing to the Rust ones.
//! - Bank flip: a `write_set` between two packets switches the choice at once (the programs
//!   read `uf_active` per packet).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::packet::{self, Builder};
use common::*;
use fanout_core::flow::FlowKey;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Pick};

const V4_FLOWS: u32 = 10_000;
const V6_FLOWS: u32 = 2_000;

fn picked(set: &BackendSet, client: SocketAddr, cursor: &mut usize) -> SocketAddr {
    match set.pick(&FlowKey::new(client), cursor) {
        Pick::One(i) => set.endpoints()[i as usize].addr,
        other => panic!("pick for {client}: {other:?}"),
    }
}

fn client(i: u32, v6: bool) -> SocketAddr {
    let port = (1024 + i.wrapping_mul(7919) % 64_000) as u16;
    if v6 {
        let s = format!(
            "[2001:db8:{:x}:{:x}::{:x}]:{port}",
            i >> 12,
            i & 0xfff,
            i * 31
        );
        sa(&s)
    } else {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], port))
    }
}

#[test]
fn consistent_hash_matches_userspace() {
    for_each_prog("consistent_hash_matches_userspace", |prog, h| {
        let eps4 = [
            ("172.16.0.1:53", 1),
            ("172.16.0.2:53", 2),
            ("172.16.0.3:5353", 1),
            ("172.16.0.4:53", 3),
            ("172.16.0.5:53", 1),
        ];
        let eps6 = [
            ("[2001:db8:53::1]:53", 1),
            ("[2001:db8:53::2]:53", 1),
            ("[2001:db8:53::3]:53", 2),
            ("[2001:db8:53::4]:53", 1),
            ("[2001:db8:53::5]:53", 1),
        ];
        let l4 = sa("192.0.2.53:53");
        let l6 = sa("[2001:db8::53]:53");
        let set4 = h.listener(0, l4, Distribution::ConsistentHash, endpoints(&eps4), 0);
        let set6 = h.listener(1, l6, Distribution::ConsistentHash, endpoints(&eps6), 10);
        let mut per_backend = std::collections::BTreeMap::<SocketAddr, u32>::new();
        let mut cursor = 0;
        for (v6, n, listener, set) in [(false, V4_FLOWS, l4, &set4), (true, V6_FLOWS, l6, &set6)] {
            for i in 0..n {
                let c = client(i, v6);
                let frame = Builder::udp(c, listener, &i.to_le_bytes()).build();
                let r = h.run(prog, &frame);
                assert_eq!(r.code, prog.code(Verdict::Tx), "{prog:?} flow {c}");
                let got = packet::parse(&r.out).unwrap().dst;
                let want = picked(set, c, &mut cursor);
                assert_eq!(
                    got, want,
                    "{prog:?}: flow {c} went elsewhere than userspace"
                );
                *per_backend.entry(got).or_default() += 1;
            }
        }
        assert_eq!(cursor, 0, "consistent hash must not move the cursor");
        assert_eq!(per_backend.len(), 10, "every downstream got flows");
        let c = h.counters(0);
        assert_eq!(
            (c.rx_packets, c.fwd_packets),
            (V4_FLOWS.into(), V4_FLOWS.into())
        );
        eprintln!(
            "{prog:?}: {} flows agree with userspace; spread {per_backend:?}",
            V4_FLOWS + V6_FLOWS
        );
    });
}

#[test]
fn write_set_flips_the_choice_between_packets() {
    for_each_prog("write_set_flips_the_choice_between_packets", |prog, h| {
        let listener = sa("192.0.2.1:9000");
        let c = sa("198.51.100.7:5555");
        let frame = Builder::udp(c, listener, b"flip").build();
        let dst = |h: &Harness| packet::parse(&h.run(prog, &frame).out).unwrap().dst;

        // Consistent hash: set A, then set B with entirely different downstreams, then A again
        // (which lands in the bank A used first: both banks get reused).
        let a = endpoints(&[("10.10.0.1:1", 1), ("10.10.0.2:2", 1), ("10.10.0.3:3", 1)]);
        let b = endpoints(&[("10.20.0.1:1", 1), ("10.20.0.2:2", 1)]);
        let dist = Distribution::ConsistentHash;
        let set_a = h.listener(0, listener, dist, a.clone(), 0);
        let want_a = picked(&set_a, c, &mut 0);
        assert_eq!(dst(h), want_a, "{prog:?}: set A");
        let set_b = BackendSet::new(dist, b, DEFAULT_TABLE_SIZE);
        h.maps().write_set(0, &set_b, &[3, 4]).unwrap();
        assert_eq!(
            dst(h),
            picked(&set_b, c, &mut 0),
            "{prog:?}: after flip to B"
        );
        h.maps().write_set(0, &set_a, &[0, 1, 2]).unwrap();
        assert_eq!(dst(h), want_a, "{prog:?}: after flip back to A");

        // Round-robin: three downstreams, then a set of one; the cursor (past the end of
        // the new, shorter cycle or not) never leaves the new set.
        let rr = Distribution::RoundRobin;
        let three = endpoints(&[("10.30.0.1:1", 1), ("10.30.0.2:1", 1), ("10.30.0.3:1", 1)]);
        h.listener(0, listener, rr, three, 0);
        for _ in 0..2 {
            dst(h);
        }
        let one = BackendSet::new(rr, endpoints(&[("10.40.0.1:4", 1)]), DEFAULT_TABLE_SIZE);
        h.maps().write_set(0, &one, &[5]).unwrap();
        for _ in 0..3 {
            assert_eq!(dst(h), sa("10.40.0.1:4"), "{prog:?}: after flip to one");
        }
        // An empty set: no downstream.
        h.maps().write_set(0, &BackendSet::empty(rr), &[]).unwrap();
        let r = h.run(prog, &frame);
        assert_eq!(
            r.code,
            prog.code(Verdict::Drop),
            "{prog:?}: empty set drops"
        );
        let counters = h.counters(0);
        assert_eq!(counters.drops[DROP_NO_DOWNSTREAM], 1);
    });
}
