//! TC mirror through BPF_PROG_TEST_RUN, and what the test run can show of it.
//!
//! A test run does execute `bpf_clone_redirect` (the clone really goes to the device), while
//! the program's own verdict (`bpf_redirect`, `bpf_redirect_neigh`) is only returned, not
//! carried out. So, in a private network namespace with `lo` up:
//! - clones sent to `lo` (next hops cached with ifindex 1) are captured with an AF_PACKET
//!   socket: every copy but the last is checked (destination, TTL, MACs, checksums), the last
//!   one is the program's output;
//! - copies whose neighbour is unknown are re-injected on ingress with the bypass mark, which
//!   is restored on the original skb afterwards (seen in ctx_out);
//! - clones to an interface that does not exist fail, and count send_error.
//!
//! The real delivery to several receivers is checked end-to-end in network namespaces by the
//! udp-fanout crate's tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::packet::{self, Builder};
use common::*;
use fanout_core::select::Distribution;
use fanout_kernel::bindings::uf_nexthop;
use nix::sys::socket::{
    AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, socket,
};

const BYPASS: u32 = 0x5546_0001;
const LISTENER: &str = "10.0.0.4:5500";
const TARGETS: [&str; 3] = ["10.77.0.10:1001", "10.77.0.11:1002", "10.77.0.12:1003"];
const PACKET_HOST: u8 = 0;
const PACKET_OTHERHOST: u8 = 3;
const PACKET_OUTGOING: u8 = 4;

fn setup(flags: u32, bypass: u32) -> Harness {
    let mut h = Harness::with_globals(flags, Duration::from_secs(60), bypass);
    let eps: Vec<(&str, u32)> = TARGETS.iter().map(|t| (*t, 1)).collect();
    h.listener(0, sa(LISTENER), Distribution::Mirror, endpoints(&eps), 0);
    h
}

fn datagram() -> Builder {
    Builder::udp(sa("192.0.2.9:4444"), sa(LISTENER), b"mirror me")
}

fn hop(ifindex: u32, n: u8) -> uf_nexthop {
    nexthop(ifindex, [0x02, 0xee, 0, 0, 0, n], [0x02, 0xdd, 0, 0, 0, n])
}

fn ip(s: &str) -> IpAddr {
    sa(s).ip()
}

/// An AF_PACKET socket for every frame in this thread's namespace.
fn capture() -> OwnedFd {
    socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK,
        SockProtocol::EthAll,
    )
    .unwrap()
}

/// Frames captured so far: (packet type, bytes).
fn captured(fd: &OwnedFd) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok((n, from)) = recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
        v.push((from.map_or(255, |a| a.pkttype()), buf[..n].to_vec()));
    }
    v
}

/// The captured frames whose packet type `keep` accepts.
fn of_type(frames: &[(u8, Vec<u8>)], keep: impl Fn(u8) -> bool) -> Vec<&[u8]> {
    frames
        .iter()
        .filter(|(t, _)| keep(*t))
        .map(|(_, f)| f.as_slice())
        .collect()
}

/// Mirror set-up with every target's next hop cached on `ifindex` (its MACs numbered as the
/// target).
fn cached_on(ifindex: u32) -> Harness {
    let mut h = setup(0, BYPASS);
    for (i, t) in TARGETS.iter().enumerate() {
        h.maps()
            .insert_nexthop(ip(t), hop(ifindex, i as u8))
            .unwrap();
    }
    h
}

/// Runs the datagram through TC: the last copy is redirected, the clones before it fail.
fn only_the_last_copy_leaves(h: &Harness) -> Run {
    let r = h.run(Prog::Tc, &datagram().build());
    assert_eq!(r.code, TC_ACT_REDIRECT);
    let c = h.counters(0);
    assert_eq!((c.fwd_packets, c.drops[DROP_SEND_ERROR]), (1, 2));
    r
}

fn assert_copy(frame: &[u8], to: &str, n: u8) {
    let p = packet::parse(frame).unwrap();
    assert_eq!(p.dst, sa(to));
    assert_eq!(p.ttl, 63, "copy to {to}");
    assert_eq!(p.eth_dst, hop(0, n).dmac, "copy to {to}");
    assert_eq!(p.eth_src, hop(0, n).smac, "copy to {to}");
    assert_eq!(p.payload, b"mirror me");
    packet::check_checksums(frame).unwrap_or_else(|e| panic!("copy to {to}: {e}"));
}

#[test]
fn mirror_in_test_mode_rewrites_once_per_target() {
    if !privileged("mirror_in_test_mode_rewrites_once_per_target") {
        return;
    }
    let mut h = setup(UF_G_NO_FIB, BYPASS);
    let b = datagram();
    let r = h.run(Prog::Tc, &b.build());
    assert_eq!(r.code, TC_ACT_OK);
    assert_eq!(
        r.out,
        b.redirected(sa(TARGETS[2]), 63).build(),
        "last target"
    );
    let c = h.counters(0);
    assert_eq!((c.rx_packets, c.fwd_packets, c.fwd_bytes), (1, 3, 27));
    for sid in 0..3 {
        assert_eq!(h.maps().endpoint_counters(sid).unwrap(), (1, 9));
    }
    // XDP cannot mirror: it leaves such datagrams alone and counts nothing.
    let r = h.run(Prog::Xdp, &b.build());
    assert_eq!((r.code, r.out), (XDP_PASS, b.build()));
    assert_eq!(h.counters(0).rx_packets, 1);
}

#[test]
fn mirror_clones_to_cached_next_hops() {
    if !privileged("mirror_clones_to_cached_next_hops") {
        return;
    }
    let h = cached_on(1);
    let cap = capture();
    let r = h.run(Prog::Tc, &datagram().build());
    assert_eq!(
        r.code, TC_ACT_REDIRECT,
        "the last copy leaves with bpf_redirect"
    );
    assert_copy(&r.out, TARGETS[2], 2);
    let frames = captured(&cap);
    let out = of_type(&frames, |t| t == PACKET_OUTGOING);
    assert_eq!(out.len(), 2, "one clone per target but the last");
    assert_copy(out[0], TARGETS[0], 0);
    assert_copy(out[1], TARGETS[1], 1);
    assert_eq!(h.outcomes(0), (3, 0, 0), "(fwd, passed, send_error)");
}

#[test]
fn mirror_clone_to_a_missing_interface_counts_send_error() {
    if !privileged("mirror_clone_to_a_missing_interface_counts_send_error") {
        return;
    }
    // bpf_redirect only records the target: the missing device is found when the kernel
    // carries the redirect out, which a test run does not do.
    let r = only_the_last_copy_leaves(&cached_on(999_999));
    assert_copy(&r.out, TARGETS[2], 2);
}

/// Route known, neighbour not: copies go back in on ingress with the bypass mark for the
/// kernel to forward (and resolve); the last leaves with bpf_redirect_neigh.
fn unresolved_setup(bypass: u32) -> Harness {
    let h = setup(UF_G_NO_NEXTHOP_CACHE, bypass);
    veth_uf0(None, "10.77.0.1/24");
    h
}

#[test]
fn mirror_reinjects_copies_without_neighbour() {
    if !privileged("mirror_reinjects_copies_without_neighbour") {
        return;
    }
    let h = unresolved_setup(BYPASS);
    let cap = capture();
    let b = datagram();
    let r = h.run_tc_mark(&b.build(), 0x1234);
    assert_eq!(
        r.code, TC_ACT_REDIRECT,
        "bpf_redirect_neigh for the last copy"
    );
    assert_eq!(r.mark, 0x1234, "the original skb keeps its mark");
    let last = packet::parse(&r.out).unwrap();
    assert_eq!((last.dst, last.ttl), (sa(TARGETS[2]), 63));
    let frames = captured(&cap);
    let back = of_type(&frames, |t| t == PACKET_HOST || t == PACKET_OTHERHOST);
    assert_eq!(back.len(), 2, "two copies re-injected");
    for (f, t) in back.iter().zip(TARGETS) {
        let p = packet::parse(f).unwrap();
        // The kernel forwards these: it decrements the TTL, so they leave us unchanged, with
        // the frame's own Ethernet addresses.
        assert_eq!((p.dst, p.ttl), (sa(t), 64));
        assert_eq!((p.eth_dst, p.eth_src), (b.eth_dst, b.eth_src));
        packet::check_checksums(f).unwrap();
    }
    assert_eq!(h.outcomes(0), (3, 2, 0), "(fwd, passed, send_error)");
}

/// Copy 0 leaves through a cached next hop (its MACs are written into the skb), copy 1 has no
/// neighbour and is re-injected: it must carry the frame's own MACs again, or the kernel would
/// see a frame for another host. Copy 2 leaves through its cached next hop.
#[test]
fn mirror_mixed_next_hops_restore_the_frame_macs() {
    if !privileged("mirror_mixed_next_hops_restore_the_frame_macs") {
        return;
    }
    let mut h = unresolved_setup(BYPASS);
    h.globals(0, Duration::from_secs(60), BYPASS);
    h.maps().insert_nexthop(ip(TARGETS[0]), hop(1, 0)).unwrap();
    h.maps().insert_nexthop(ip(TARGETS[2]), hop(1, 2)).unwrap();
    let cap = capture();
    let b = datagram();
    let r = h.run(Prog::Tc, &b.build());
    assert_eq!(r.code, TC_ACT_REDIRECT);
    assert_copy(&r.out, TARGETS[2], 2);
    let frames = captured(&cap);
    let sent = of_type(&frames, |t| t == PACKET_OUTGOING);
    assert_eq!(sent.len(), 1);
    assert_copy(sent[0], TARGETS[0], 0);
    let back: Vec<packet::Parsed> = of_type(&frames, |t| t != PACKET_OUTGOING)
        .into_iter()
        .map(|f| packet::parse(f).unwrap())
        .filter(|p| p.dst == sa(TARGETS[1]))
        .collect();
    assert_eq!(back.len(), 1, "copy 1 re-injected");
    assert_eq!((back[0].eth_dst, back[0].eth_src), (b.eth_dst, b.eth_src));
    assert_eq!(back[0].ttl, 64);
    let c = h.counters(0);
    assert_eq!((c.fwd_packets, c.passed), (3, 1));
}

#[test]
fn mirror_without_bypass_mark_does_not_reinject() {
    if !privileged("mirror_without_bypass_mark_does_not_reinject") {
        return;
    }
    only_the_last_copy_leaves(&unresolved_setup(0));
}

#[test]
fn packets_with_the_bypass_mark_are_left_alone() {
    if !privileged("packets_with_the_bypass_mark_are_left_alone") {
        return;
    }
    let h = setup(UF_G_NO_FIB, BYPASS);
    let f = datagram().build();
    let r = h.run_tc_mark(&f, BYPASS);
    assert_eq!((r.code, r.out, r.mark), (TC_ACT_OK, f.clone(), BYPASS));
    assert_eq!(h.counters(0).rx_packets, 0);
    // Any other mark is processed.
    let r = h.run_tc_mark(&f, BYPASS + 1);
    assert_eq!(packet::parse(&r.out).unwrap().dst, sa(TARGETS[2]));
}
