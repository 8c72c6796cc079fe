//! The object loads (both programs pass the verifier) and runs: a frame that is not IP is
//! left to the kernel by both programs.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn loads_and_runs() {
    if !privileged("loads_and_runs") {
        return;
    }
    let h = Harness::new();
    let frame = [0u8; 64];
    assert_eq!(h.run(Prog::Xdp, &frame).code, XDP_PASS);
    assert_eq!(h.run(Prog::Tc, &frame).code, TC_ACT_OK);
}

/// BPF_PROG_TEST_RUN itself refuses frames shorter than an Ethernet header, so a truncated
/// Ethernet header can only be tested as far as the kernel lets through (see the fixtures'
/// cut VLAN tag); this pins that limit.
#[test]
fn test_run_refuses_frames_shorter_than_ethernet() {
    if !privileged("test_run_refuses_frames_shorter_than_ethernet") {
        return;
    }
    let h = Harness::new();
    for prog in PROGS {
        assert!(h.try_run(prog, &[0u8; 13]).is_err(), "{prog:?}");
        assert!(h.try_run(prog, &[0u8; 14]).is_ok(), "{prog:?}");
    }
}

/// The largest frames a test run gives a program whole: TC takes at most
/// `Prog::Tc.max_frame()` bytes (more is EINVAL); XDP takes more, but only the first
/// `Prog::Xdp.max_frame()` are in the linear buffer, the rest in fragments a program not
/// loaded with `xdp.frags` cannot see, so a bigger datagram looks cut and is dropped as
/// malformed (outside test runs such a program is never given multi-buffer frames).
#[test]
fn test_run_frame_size_limits() {
    if !privileged("test_run_frame_size_limits") {
        return;
    }
    let mut h = Harness::no_fib();
    let bind = sa("10.0.0.1:5000");
    h.single(0, bind, "10.1.0.1:6001", 0);
    let frame = |total: usize| {
        common::packet::Builder::udp(sa("192.0.2.1:1"), bind, &vec![7; total - 42]).build()
    };
    for prog in PROGS {
        let r = h.run(prog, &frame(prog.max_frame()));
        assert_eq!(
            r.code,
            prog.code(Verdict::Tx),
            "{prog:?}: largest whole frame"
        );
    }
    assert!(
        h.try_run(Prog::Tc, &frame(Prog::Tc.max_frame() + 1))
            .is_err()
    );
    let r = h.run(Prog::Xdp, &frame(Prog::Xdp.max_frame() + 1));
    assert_eq!(r.code, XDP_DROP, "XDP: datagram beyond the linear buffer");
    let c = h.counters(0);
    assert_eq!((c.fwd_packets, c.drops[DROP_MALFORMED]), (2, 1));
}
