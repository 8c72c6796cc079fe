//! The route path (no UF_G_NO_FIB) through BPF_PROG_TEST_RUN, in a private network namespace
//! whose routes decide what bpf_fib_lookup answers: a veth with a permanent neighbour
//! (SUCCESS), an address without one (NO_NEIGH), a local address (NOT_FWDED), blackhole /
//! unreachable / prohibit routes, and a namespace with forwarding off (FWD_DISABLED). Also the
//! next-hop cache: filled on success, used while valid, ignored when expired or disabled.
//!
//! A test run returns the redirect verdict without carrying it out, so XDP_REDIRECT /
//! TC_ACT_REDIRECT plus the rewritten frame (MACs, TTL) is what can be checked here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::packet::{self, Builder, ETH_P_8021Q};
use common::*;
use fanout_core::select::Distribution;
use fanout_kernel::bindings::uf_nexthop;

const UF0_MAC: [u8; 6] = [0x02, 0, 0, 0x88, 0, 1];
const NEIGH4_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x04];
const NEIGH6_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x06];

/// Forwarding on, uf0 (veth) with 10.88.0.1/24 and 2001:db8:88::1/64, permanent neighbours
/// .2 / ::2, and routes that refuse.
fn routed() -> u32 {
    sh("echo 1 > /proc/sys/net/ipv4/ip_forward \
        && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding \
        && ip link add name uf0 type veth peer name uf1 \
        && ip link set uf0 address 02:00:00:88:00:01 && ip link set uf0 up && ip link set uf1 up \
        && ip addr add 10.88.0.1/24 dev uf0 \
        && ip neigh add 10.88.0.2 lladdr 02:aa:bb:cc:dd:04 dev uf0 nud permanent \
        && ip -6 addr add 2001:db8:88::1/64 dev uf0 nodad \
        && ip -6 neigh add 2001:db8:88::2 lladdr 02:aa:bb:cc:dd:06 dev uf0 nud permanent \
        && ip route add blackhole 10.99.0.0/16 \
        && ip route add unreachable 10.98.0.0/16 \
        && ip route add prohibit 10.97.0.0/16");
    nix::net::if_::if_nametoindex("uf0").unwrap()
}

/// One listener per downstream: 10.0.0.1:(7000 + id) / [2001:db8::1]:(7000 + id).
fn listen(h: &mut Harness, id: u32, backend: &str) -> Builder {
    let v6 = backend.starts_with('[');
    let bind = if v6 {
        sa(&format!("[2001:db8::1]:{}", 7000 + id))
    } else {
        sa(&format!("10.0.0.1:{}", 7000 + id))
    };
    h.listener(
        id,
        bind,
        Distribution::RoundRobin,
        endpoints(&[(backend, 1)]),
        id,
    );
    let client = if v6 {
        sa("[2001:db8:c::1]:3333")
    } else {
        sa("192.0.2.1:3333")
    };
    Builder::udp(client, bind, b"route me")
}

struct Expect {
    backend: &'static str,
    xdp: u32,
    tc: u32,
    /// TTL of the output (64 in): 63 when the program transmits, 64 when the kernel forwards.
    ttl_xdp: u8,
    ttl_tc: u8,
    /// Ethernet addresses written (dst, src), for transmitted frames.
    macs: Option<([u8; 6], [u8; 6])>,
    /// (fwd, passed, send_error) per program run.
    xdp_counts: (u64, u64, u64),
    tc_counts: (u64, u64, u64),
}

#[test]
fn route_outcomes() {
    if !privileged("route_outcomes") {
        return;
    }
    let none = (0, 0, 1);
    let cases = [
        // SUCCESS: next hop known.
        Expect {
            backend: "10.88.0.2:9000",
            xdp: XDP_REDIRECT,
            tc: TC_ACT_REDIRECT,
            ttl_xdp: 63,
            ttl_tc: 63,
            macs: Some((NEIGH4_MAC, UF0_MAC)),
            xdp_counts: (1, 0, 0),
            tc_counts: (1, 0, 0),
        },
        Expect {
            backend: "[2001:db8:88::2]:9000",
            xdp: XDP_REDIRECT,
            tc: TC_ACT_REDIRECT,
            ttl_xdp: 63,
            ttl_tc: 63,
            macs: Some((NEIGH6_MAC, UF0_MAC)),
            xdp_counts: (1, 0, 0),
            tc_counts: (1, 0, 0),
        },
        // NO_NEIGH: XDP hands the rewritten packet to the kernel's forwarding (which resolves
        // the neighbour and decrements the TTL); TC uses bpf_redirect_neigh.
        Expect {
            backend: "10.88.0.3:9000",
            xdp: XDP_PASS,
            tc: TC_ACT_REDIRECT,
            ttl_xdp: 64,
            ttl_tc: 63,
            macs: None,
            xdp_counts: (1, 1, 0),
            tc_counts: (1, 0, 0),
        },
        Expect {
            backend: "[2001:db8:88::3]:9000",
            xdp: XDP_PASS,
            tc: TC_ACT_REDIRECT,
            ttl_xdp: 64,
            ttl_tc: 63,
            macs: None,
            xdp_counts: (1, 1, 0),
            tc_counts: (1, 0, 0),
        },
        // NOT_FWDED: the downstream is local; the kernel delivers.
        Expect {
            backend: "10.88.0.1:9000",
            xdp: XDP_PASS,
            tc: TC_ACT_OK,
            ttl_xdp: 64,
            ttl_tc: 64,
            macs: None,
            xdp_counts: (1, 0, 0),
            tc_counts: (1, 0, 0),
        },
        // Refused by the routing table.
        Expect {
            backend: "10.99.0.1:9000",
            xdp: XDP_DROP,
            tc: TC_ACT_SHOT,
            ttl_xdp: 64,
            ttl_tc: 64,
            macs: None,
            xdp_counts: none,
            tc_counts: none,
        },
        Expect {
            backend: "10.98.0.1:9000",
            xdp: XDP_DROP,
            tc: TC_ACT_SHOT,
            ttl_xdp: 64,
            ttl_tc: 64,
            macs: None,
            xdp_counts: none,
            tc_counts: none,
        },
        Expect {
            backend: "10.97.0.1:9000",
            xdp: XDP_DROP,
            tc: TC_ACT_SHOT,
            ttl_xdp: 64,
            ttl_tc: 64,
            macs: None,
            xdp_counts: none,
            tc_counts: none,
        },
    ];
    for cache in [false, true] {
        let mut h = Harness::new();
        routed();
        let flags = if cache { 0 } else { UF_G_NO_NEXTHOP_CACHE };
        h.maps()
            .set_globals(flags, Duration::from_secs(60), 0)
            .unwrap();
        for (id, e) in cases.iter().enumerate() {
            let b = listen(&mut h, id as u32, e.backend);
            for (prog, code, ttl, counts) in [
                (Prog::Xdp, e.xdp, e.ttl_xdp, e.xdp_counts),
                (Prog::Tc, e.tc, e.ttl_tc, e.tc_counts),
            ] {
                let ctx = format!("{prog:?} to {} (cache {cache})", e.backend);
                let before = h.maps().listener_counters(id as u32).unwrap();
                let r = h.run(prog, &b.build());
                assert_eq!(r.code, code, "{ctx}: verdict");
                let c = h.maps().listener_counters(id as u32).unwrap();
                let got = (
                    c.fwd_packets - before.fwd_packets,
                    c.passed - before.passed,
                    c.drops[DROP_SEND_ERROR] - before.drops[DROP_SEND_ERROR],
                );
                assert_eq!(got, counts, "{ctx}: (fwd, passed, send_error)");
                if counts.0 == 0 {
                    continue;
                }
                let mut want = b.redirected(sa(e.backend), ttl);
                if let Some((dst, src)) = e.macs {
                    (want.eth_dst, want.eth_src) = (dst, src);
                }
                assert_eq!(r.out, want.build(), "{ctx}: output");
                packet::check_checksums(&r.out).unwrap();
            }
        }
        // Only SUCCESS lookups fill the cache, and only when it is on.
        let cached = h.maps().nexthops().len();
        assert_eq!(cached, if cache { 2 } else { 0 }, "cache {cache}: entries");
    }
}

#[test]
fn next_hop_cache_is_used_while_valid() {
    if !privileged("next_hop_cache_is_used_while_valid") {
        return;
    }
    let mut h = Harness::new();
    let uf0 = routed();
    h.maps().set_globals(0, Duration::from_secs(60), 0).unwrap();
    let b = listen(&mut h, 0, "10.88.0.2:9000");
    let frame = b.build();
    let eth_dst = |out: &[u8]| packet::parse(out).unwrap().eth_dst;

    let r = h.run(Prog::Xdp, &frame);
    assert_eq!((r.code, eth_dst(&r.out)), (XDP_REDIRECT, NEIGH4_MAC));
    let entries = h.maps().nexthops();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.ifindex, uf0);
    // The neighbour changes; the cache still answers (the daemon's rtnetlink watcher clears it
    // on such changes), and after a clear the new address is looked up.
    sh("ip neigh replace 10.88.0.2 lladdr 02:aa:bb:cc:dd:44 dev uf0 nud permanent");
    let r = h.run(Prog::Tc, &frame);
    assert_eq!(
        (r.code, eth_dst(&r.out)),
        (TC_ACT_REDIRECT, NEIGH4_MAC),
        "cache hit"
    );
    h.maps().clear_nexthops().unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!(
        eth_dst(&r.out),
        [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x44],
        "looked up again"
    );

    // Entries of our own making: ingress interface (lo in a test run) gives XDP_TX, another
    // one XDP_REDIRECT, an expired one is ignored.
    let ip = sa("10.88.0.2:1").ip();
    let mut hop = uf_nexthop {
        ifindex: 1,
        smac: [2, 0, 0, 0, 0, 0x51],
        dmac: [2, 0, 0, 0, 0, 0x52],
        expires_ns: u64::MAX,
    };
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!((r.code, eth_dst(&r.out)), (XDP_TX, hop.dmac), "hairpin");
    hop.ifindex = 77;
    h.maps().insert_nexthop(ip, hop).unwrap();
    assert_eq!(h.run(Prog::Xdp, &frame).code, XDP_REDIRECT);
    hop.expires_ns = 1;
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!(
        eth_dst(&r.out),
        [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x44],
        "expired: lookup"
    );
    assert_eq!(h.maps().nexthops()[0].1.ifindex, uf0, "refilled");

    // Disabled: neither used nor filled.
    h.maps().clear_nexthops().unwrap();
    h.maps()
        .set_globals(UF_G_NO_NEXTHOP_CACHE, Duration::from_secs(60), 0)
        .unwrap();
    hop.expires_ns = u64::MAX;
    hop.ifindex = 1;
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!(
        (r.code, eth_dst(&r.out)),
        (XDP_REDIRECT, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x44])
    );
    // A zero lifetime fills nothing either.
    h.maps().clear_nexthops().unwrap();
    h.maps().set_globals(0, Duration::ZERO, 0).unwrap();
    h.run(Prog::Xdp, &frame);
    assert!(h.maps().nexthops().is_empty());
}

/// A namespace as a test run finds it (loopback only, forwarding off): whatever the kernel
/// answers must be one of the documented outcomes. Here that is FWD_DISABLED, which hands
/// the rewritten packet to the kernel (a local downstream still gets it).
#[test]
fn route_lookup_in_an_empty_namespace() {
    if !privileged("route_lookup_in_an_empty_namespace") {
        return;
    }
    let mut h = Harness::new();
    h.maps()
        .set_globals(UF_G_NO_NEXTHOP_CACHE, Duration::from_secs(60), 0)
        .unwrap();
    let b = listen(&mut h, 0, "10.88.0.2:9000");
    for prog in [Prog::Xdp, Prog::Tc] {
        let r = h.run(prog, &b.build());
        let documented = match prog {
            Prog::Xdp => [XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&r.code),
            Prog::Tc => [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&r.code),
        };
        assert!(documented, "{prog:?}: verdict {}", r.code);
        assert_eq!(
            r.code,
            prog.code(Verdict::Pass),
            "{prog:?}: FWD_DISABLED goes to the kernel"
        );
        assert_eq!(r.out, b.redirected(sa("10.88.0.2:9000"), 64).build());
    }
    let c = h.maps().listener_counters(0).unwrap();
    assert_eq!((c.fwd_packets, c.passed), (2, 2));
}

/// VLAN-tagged frames are rewritten but never redirected by the programs: the kernel knows
/// which VLAN the egress needs.
#[test]
fn tagged_frames_go_through_the_kernel() {
    if !privileged("tagged_frames_go_through_the_kernel") {
        return;
    }
    let mut h = Harness::new();
    routed();
    h.maps().set_globals(0, Duration::from_secs(60), 0).unwrap();
    let b = listen(&mut h, 0, "10.88.0.2:9000").vlan(ETH_P_8021Q, 42);
    for prog in [Prog::Xdp, Prog::Tc] {
        let r = h.run(prog, &b.build());
        assert_eq!(r.code, prog.code(Verdict::Pass), "{prog:?}");
        assert_eq!(
            r.out,
            b.redirected(sa("10.88.0.2:9000"), 64).build(),
            "{prog:?}"
        );
    }
    let c = h.maps().listener_counters(0).unwrap();
    assert_eq!((c.fwd_packets, c.passed), (2, 2));
    assert!(
        h.maps().nexthops().is_empty(),
        "no lookup for tagged frames"
    );
}
