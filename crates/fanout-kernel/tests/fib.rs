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

const UF0_MAC: [u8; 6] = [0x02, 0, 0, 0x88, 0, 1];
const NEIGH4_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x04];
/// What 10.88.0.2 changes to in `next_hop_cache_is_used_while_valid`.
const NEIGH4_NEW_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x44];
const NEIGH6_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x06];

/// Forwarding on, uf0 (veth) with 10.88.0.1/24 and 2001:db8:88::1/64, permanent neighbours
/// .2 / ::2, and routes that refuse.
fn routed() -> u32 {
    sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
    let uf0 = veth_uf0(Some("02:00:00:88:00:01"), "10.88.0.1/24");
    sh(
        "ip neigh add 10.88.0.2 lladdr 02:aa:bb:cc:dd:04 dev uf0 nud permanent \
        && ip -6 addr add 2001:db8:88::1/64 dev uf0 nodad \
        && ip -6 neigh add 2001:db8:88::2 lladdr 02:aa:bb:cc:dd:06 dev uf0 nud permanent \
        && ip route add blackhole 10.99.0.0/16 \
        && ip route add unreachable 10.98.0.0/16 \
        && ip route add prohibit 10.97.0.0/16",
    );
    uf0
}

/// One listener per downstream: 10.0.0.1:(7000 + id) / [2001:db8::1]:(7000 + id).
fn listen(h: &mut Harness, id: u32, backend: &str) -> Builder {
    let v6 = backend.starts_with('[');
    let bind = if v6 {
        sa(&format!("[2001:db8::1]:{}", 7000 + id))
    } else {
        sa(&format!("10.0.0.1:{}", 7000 + id))
    };
    h.single(id, bind, backend, id);
    let client = if v6 {
        sa("[2001:db8:c::1]:3333")
    } else {
        sa("192.0.2.1:3333")
    };
    Builder::udp(client, bind, b"route me")
}

/// What a program does with a datagram (TTL 64) for a downstream, by the route it finds.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Rewritten (TTL 63) and redirected.
    Redirect,
    /// Rewritten, TTL kept, and handed to the kernel's forwarding (which decrements it).
    KernelForwards,
    /// Rewritten, TTL kept, and left to the kernel, which delivers locally.
    Local,
    /// Dropped as a send error.
    Refused,
}

impl Route {
    /// (verdict, TTL of the output, (fwd, passed, send_error) counted).
    fn expect(self, prog: Prog) -> (u32, u8, (u64, u64, u64)) {
        let redirect = match prog {
            Prog::Xdp => XDP_REDIRECT,
            Prog::Tc => TC_ACT_REDIRECT,
        };
        match self {
            Route::Redirect => (redirect, 63, (1, 0, 0)),
            Route::KernelForwards => (prog.code(Verdict::Pass), 64, (1, 1, 0)),
            Route::Local => (prog.code(Verdict::Pass), 64, (1, 0, 0)),
            Route::Refused => (prog.code(Verdict::Drop), 64, (0, 0, 1)),
        }
    }
}

#[test]
fn route_outcomes() {
    if !privileged("route_outcomes") {
        return;
    }
    use Route::*;
    let (via4, via6) = (Some((NEIGH4_MAC, UF0_MAC)), Some((NEIGH6_MAC, UF0_MAC)));
    // (downstream, XDP, TC, the Ethernet addresses (dst, src) written into transmitted frames).
    let cases = [
        // SUCCESS: next hop known.
        ("10.88.0.2:9000", Redirect, Redirect, via4),
        ("[2001:db8:88::2]:9000", Redirect, Redirect, via6),
        // NO_NEIGH: XDP hands the rewritten packet to the kernel's forwarding (which resolves
        // the neighbour and decrements the TTL); TC uses bpf_redirect_neigh.
        ("10.88.0.3:9000", KernelForwards, Redirect, None),
        ("[2001:db8:88::3]:9000", KernelForwards, Redirect, None),
        // NOT_FWDED: the downstream is local; the kernel delivers.
        ("10.88.0.1:9000", Local, Local, None),
        // Refused by the routing table.
        ("10.99.0.1:9000", Refused, Refused, None),
        ("10.98.0.1:9000", Refused, Refused, None),
        ("10.97.0.1:9000", Refused, Refused, None),
    ];
    for cache in [false, true] {
        let flags = if cache { 0 } else { UF_G_NO_NEXTHOP_CACHE };
        let mut h = Harness::with_globals(flags, Duration::from_secs(60), 0);
        routed();
        for (id, (backend, xdp, tc, macs)) in (0u32..).zip(cases) {
            let b = listen(&mut h, id, backend);
            for (prog, route) in [(Prog::Xdp, xdp), (Prog::Tc, tc)] {
                let (code, ttl, counts) = route.expect(prog);
                let ctx = format!("{prog:?} to {backend} (cache {cache})");
                let (fwd, passed, failed) = h.outcomes(id);
                let r = h.run(prog, &b.build());
                assert_eq!(r.code, code, "{ctx}: verdict");
                let (f, p, e) = h.outcomes(id);
                let got = (f - fwd, p - passed, e - failed);
                assert_eq!(got, counts, "{ctx}: (fwd, passed, send_error)");
                if counts.0 == 0 {
                    continue;
                }
                let mut want = b.redirected(sa(backend), ttl);
                if let Some((dst, src)) = macs {
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
    let mut h = Harness::with_globals(0, Duration::from_secs(60), 0);
    let uf0 = routed();
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
    assert_eq!(eth_dst(&r.out), NEIGH4_NEW_MAC, "looked up again");

    // Entries of our own making: ingress interface (lo in a test run) gives XDP_TX, another
    // one XDP_REDIRECT, an expired one is ignored.
    let ip = sa("10.88.0.2:1").ip();
    let mut hop = nexthop(1, [2, 0, 0, 0, 0, 0x51], [2, 0, 0, 0, 0, 0x52]);
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!((r.code, eth_dst(&r.out)), (XDP_TX, hop.dmac), "hairpin");
    hop.ifindex = 77;
    h.maps().insert_nexthop(ip, hop).unwrap();
    assert_eq!(h.run(Prog::Xdp, &frame).code, XDP_REDIRECT);
    hop.expires_ns = 1;
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!(eth_dst(&r.out), NEIGH4_NEW_MAC, "expired: lookup");
    assert_eq!(h.maps().nexthops()[0].1.ifindex, uf0, "refilled");

    // Disabled: neither used nor filled.
    h.maps().clear_nexthops().unwrap();
    h.globals(UF_G_NO_NEXTHOP_CACHE, Duration::from_secs(60), 0);
    hop.expires_ns = u64::MAX;
    hop.ifindex = 1;
    h.maps().insert_nexthop(ip, hop).unwrap();
    let r = h.run(Prog::Xdp, &frame);
    assert_eq!((r.code, eth_dst(&r.out)), (XDP_REDIRECT, NEIGH4_NEW_MAC));
    // A zero lifetime fills nothing either.
    h.maps().clear_nexthops().unwrap();
    h.globals(0, Duration::ZERO, 0);
    h.run(Prog::Xdp, &frame);
    assert!(h.maps().nexthops().is_empty());
}

/// Both programs give `b` (listener 0, downstream 10.88.0.2:9000), rewritten with its TTL kept,
/// to the kernel; each counts it as forwarded and passed.
fn handed_to_the_kernel(h: &Harness, b: &Builder, why: &str) {
    for prog in PROGS {
        let r = h.run(prog, &b.build());
        let documented = match prog {
            Prog::Xdp => [XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&r.code),
            Prog::Tc => [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&r.code),
        };
        assert!(documented, "{prog:?}: verdict {}", r.code);
        assert_eq!(r.code, prog.code(Verdict::Pass), "{prog:?}: {why}");
        let want = b.redirected(sa("10.88.0.2:9000"), 64).build();
        assert_eq!(r.out, want, "{prog:?}: {why}");
    }
    let c = h.counters(0);
    assert_eq!((c.fwd_packets, c.passed), (2, 2), "{why}");
}

/// A namespace as a test run finds it (loopback only, forwarding off): whatever the kernel
/// answers must be one of the documented outcomes. Here that is FWD_DISABLED, which hands
/// the rewritten packet to the kernel (a local downstream still gets it).
#[test]
fn route_lookup_in_an_empty_namespace() {
    if !privileged("route_lookup_in_an_empty_namespace") {
        return;
    }
    let mut h = Harness::with_globals(UF_G_NO_NEXTHOP_CACHE, Duration::from_secs(60), 0);
    let b = listen(&mut h, 0, "10.88.0.2:9000");
    handed_to_the_kernel(&h, &b, "FWD_DISABLED goes to the kernel");
}

/// VLAN-tagged frames are rewritten but never redirected by the programs: the kernel knows
/// which VLAN the egress needs.
#[test]
fn tagged_frames_go_through_the_kernel() {
    if !privileged("tagged_frames_go_through_the_kernel") {
        return;
    }
    let mut h = Harness::with_globals(0, Duration::from_secs(60), 0);
    routed();
    let b = listen(&mut h, 0, "10.88.0.2:9000").vlan(ETH_P_8021Q, 42);
    handed_to_the_kernel(&h, &b, "tagged");
    assert!(
        h.maps().nexthops().is_empty(),
        "no lookup for tagged frames"
    );
}
