//! Checksum sweep through both programs (test mode): thousands of sources, ports and payload
//! lengths, IPv4 and IPv6; every rewritten output must verify and equal the builder's
//! from-scratch frame, so incremental updates (RFC 1624) and the 0 -> 0xffff rule are right.
#![allow(clippy::unwrap_used)]

mod common;

use common::packet::{self, Builder};
use common::*;

/// Many sources and payloads through both programs: every rewritten checksum verifies and
/// equals a from-scratch computation.
#[test]
fn checksum_sweep() {
    for_each_prog("checksum_sweep", |prog, h| {
        let set = h.single(0, sa("10.0.0.1:5000"), "10.200.30.40:9999", 0);
        let set6 = h.single(
            1,
            sa("[2001:db8::1]:5000"),
            "[2001:db8:abcd::ef01]:65535",
            10,
        );
        let mut ffff = 0;
        for i in 0..3000u32 {
            let (src, target) = if i % 3 == 0 {
                (sa(&format!("[2001:db8::{:x}]:{}", i, i % 65536)), &set6)
            } else {
                (sa(&format!("192.0.{}.{}:{}", i / 256, i % 256, i)), &set)
            };
            let dst = if src.is_ipv4() {
                sa("10.0.0.1:5000")
            } else {
                sa("[2001:db8::1]:5000")
            };
            let b = Builder::udp(src, dst, &i.to_be_bytes().repeat(1 + (i % 5) as usize));
            let r = h.run(prog, &b.build());
            assert_eq!(r.code, prog.code(Verdict::Tx));
            let want = b.redirected(target.endpoints()[0].addr, 63).build();
            packet::check_checksums(&r.out).unwrap_or_else(|e| panic!("{prog:?} #{i}: {e}"));
            assert_eq!(r.out, want, "{prog:?} #{i}");
            if packet::parse(&r.out).unwrap().udp_check == 0xffff {
                ffff += 1;
            }
        }
        eprintln!("{prog:?}: 3000 checksums verified ({ffff} came out as 0xffff)");
    });
}

/// A payload for `b` whose UDP checksum, computed for destination `dst`, is 0 before the
/// RFC 768 rule (sent as 0xffff): the last payload word is chosen to make the sum 0xffff.
fn zero_sum_payload(b: &Builder, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut payload = b.payload.clone();
    let n = payload.len();
    payload[n - 2..].copy_from_slice(&[0, 0]);
    let probe = Builder {
        payload: payload.clone(),
        ..b.redirected(dst, b.ttl)
    };
    let f = probe.build();
    let p = packet::parse(&f).unwrap();
    // The sum of everything but the checksum field is ~check (check = ~sum); the missing word
    // must bring it to 0xffff.
    let rest = !p.udp_check;
    let w = 0xffff - packet::fold(u64::from(rest));
    payload[n - 2..].copy_from_slice(&w.to_be_bytes());
    payload
}

/// Rewrites whose checksum computes to zero must leave as 0xffff, and inputs that carry 0xffff
/// (a computed zero) must be updated like any other value.
#[test]
fn zero_checksum_results_are_sent_as_ffff() {
    for_each_prog("zero_checksum_results_are_sent_as_ffff", |prog, h| {
        let v4 = ("192.0.2.77:4321", "10.0.0.1:5000", "10.9.8.7:6543");
        let v6 = (
            "[2001:db8::77]:4321",
            "[2001:db8::1]:5000",
            "[2001:db8:9::7]:6543",
        );
        for (id, (client, bind, backend)) in (0u32..).zip([v4, v6]) {
            h.single(id, sa(bind), backend, id * 10);
            let base = Builder::udp(sa(client), sa(bind), &[0x42; 16]);
            // The zero sum is made for the output (summed with the downstream's address) or
            // for the input (with the listener's).
            for (output, what) in [(true, "output sum zero"), (false, "input 0xffff")] {
                let zero_for = sa(if output { backend } else { bind });
                let b = Builder {
                    payload: zero_sum_payload(&base, zero_for),
                    ..base.clone()
                };
                let (frame, want) = (b.build(), b.redirected(sa(backend), 63).build());
                let ffff = packet::parse(if output { &want } else { &frame }).unwrap();
                assert_eq!(ffff.udp_check, 0xffff, "{client}: {what}");
                let r = h.run(prog, &frame);
                assert_eq!(r.out, want, "{prog:?} {client}: {what}");
                packet::check_checksums(&r.out).unwrap();
            }
        }
    });
}
