//! The kernel plane end to end, in network namespaces the tests create: a client namespace
//! sends through a load-balancer namespace (udp-fanout with its XDP or TC program attached) to
//! backend namespaces. Checks that every datagram arrives byte-exact where the distribution
//! says, with the client's own source address (the kernel rewrote only the destination), that a
//! live downstream change loses nothing, that counters match, and that programs are detached
//! however the daemon ends.
//!
//! Needs root: skipped with a printed reason otherwise, and failing instead when
//! `UDP_FANOUT_REQUIRE_PRIVILEGED=1` (CI).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::netns::{Topology, enter, ip, privileged_or_skip, sh};
use common::{Daemon, WAIT, eventually, generate, landed, total, traffic, wait_total};
use fanout_core::FlowKey;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint, Pick};
use fanout_testkit::{GenReport, Sink, SinkHandle, SinkOptions};

const PORT: u16 = 5514;
const SINK_PORT: u16 = 7000;

/// One sink per backend namespace on `backend_ip:7000`.
fn sinks(t: &Topology) -> Vec<SinkHandle> {
    t.backends
        .iter()
        .zip(&t.backend_ips)
        .map(|(ns, ip)| {
            enter(ns, || {
                let addr: SocketAddr = format!("{ip}:{SINK_PORT}").parse().unwrap();
                Sink::serve(&[addr], SinkOptions::default()).unwrap()
            })
        })
        .collect()
}

fn send(t: &Topology, count: u64, flows: u32, sizes: &[usize], rate: u64) -> GenReport {
    let target: SocketAddr = format!("{}:{PORT}", t.vip).parse().unwrap();
    enter(&t.client, || {
        let mut g = traffic(target, count, flows, sizes, rate);
        g.bind_ip = t.client_ip.parse().unwrap();
        let r = generate(&g);
        assert_eq!(r.sent, count, "{r:?}");
        r
    })
}

fn config(t: &Topology, mode: &str, distribution: &str, backends: usize) -> String {
    let ds: Vec<String> = t.backend_ips[..backends]
        .iter()
        .map(|ip| format!("'{ip}:{SINK_PORT}'"))
        .collect();
    format!(
        "listeners: [{{name: k, bind: '{}:{PORT}', mode: {mode}, interface: {}, distribution: {distribution}, downstreams: [{}]}}]\nmetrics: {{bind: '127.0.0.1:0'}}",
        t.vip,
        t.lb_if,
        ds.join(", ")
    )
}

/// A topology of `backends` backends with a sink on each, and the daemon on the load balancer
/// (`mode`, `distribution` over all backends), its neighbours resolved.
fn serve(backends: usize, mode: &str, distribution: &str) -> (Topology, Vec<SinkHandle>, Daemon) {
    let t = Topology::new(backends);
    let s = sinks(&t);
    let d = Daemon::start_in(Some(t.lb.name()), &config(&t, mode, distribution, backends));
    t.warm_neighbours();
    (t, s, d)
}

/// Every sink saw only the client's address as source: the kernel plane forwarded (the
/// userspace slow path would have sent from the load balancer's own address).
fn assert_client_source(t: &Topology, s: &[SinkHandle]) {
    for x in s {
        for src in x.snapshot().ports[0].sources.keys() {
            assert_eq!(
                src.ip().to_string(),
                t.client_ip,
                "forwarded by userspace, not the kernel"
            );
        }
    }
}

/// The labels of listener `k`'s counters.
const K: &str = "listener=\"k\"";

/// Listener `k`'s counter `name`.
fn metric(d: &Daemon, name: &str) -> u64 {
    d.metric(name, K)
        .unwrap_or_else(|| panic!("{name} missing:\n{}", d.scrape()))
}

fn round_robin(mode: &str) {
    let (t, s, d) = serve(3, mode, "round_robin");
    let r = send(&t, 3_000, 1, &[0, 64, 512, 1_400], 20_000);
    wait_total(&s, 3_000);
    for x in &s {
        let rep = x.snapshot();
        let n = rep.total_datagrams();
        // Exact per CPU cycle; the client's datagrams may be handled on either CPU.
        assert!((990..=1_010).contains(&n), "uneven round-robin: {n}");
        assert_eq!((rep.total_corrupt(), rep.total_duplicates()), (0, 0));
    }
    assert_client_source(&t, &s);
    d.wait_metric("udp_fanout_packets_received_total", K, 3_000);
    assert_eq!(metric(&d, "udp_fanout_packets_forwarded_total"), 3_000);
    assert_eq!(metric(&d, "udp_fanout_bytes_received_total"), r.bytes_sent);
    let per: u64 = t
        .backend_ips
        .iter()
        .map(|ip| {
            d.metric(
                "udp_fanout_downstream_packets_total",
                &format!("listener=\"k\",endpoint=\"{ip}:{SINK_PORT}\""),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(per, 3_000);
}

in_both_modes!(
    round_robin,
    "end-to-end",
    xdp_round_robin_delivers_every_datagram_byte_exact,
    tc_round_robin_delivers_every_datagram_byte_exact
);

fn consistent_hash(mode: &str) {
    let (t, s, _d) = serve(3, mode, "consistent_hash");
    let r = send(&t, 3_200, 32, &[100], 20_000);
    wait_total(&s, 3_200);
    let set = BackendSet::new(
        Distribution::ConsistentHash,
        t.backend_ips
            .iter()
            .map(|ip| Endpoint::new(format!("{ip}:{SINK_PORT}").parse().unwrap()))
            .collect(),
        DEFAULT_TABLE_SIZE,
    );
    let landed = landed(&s, &r);
    for f in &r.per_flow {
        let Pick::One(want) = set.pick(&FlowKey::new(f.local_addr), &mut 0) else {
            panic!()
        };
        assert_eq!(
            landed[&f.flow],
            vec![want as usize],
            "client {}",
            f.local_addr
        );
    }
    assert_client_source(&t, &s);
}

in_both_modes!(
    consistent_hash,
    "end-to-end",
    xdp_consistent_hash_matches_the_userspace_choice,
    tc_consistent_hash_matches_the_userspace_choice
);

#[test]
fn tc_mirror_copies_every_datagram_to_every_backend() {
    if !privileged_or_skip("tc_ebpf mirror end-to-end") {
        return;
    }
    let (t, s, d) = serve(3, "tc_ebpf", "mirror");
    let r = send(&t, 2_000, 4, &[0, 300, 1_400], 10_000);
    for x in &s {
        let rep = x.wait_for(2_000, WAIT);
        assert_eq!(rep.total_datagrams(), 2_000);
        // Empty datagrams carry no sequence number: 667 of the 2000 (every third) are counted
        // as short, the other 1333 must each arrive exactly once.
        assert_eq!((rep.total_short(), rep.total_unique()), (667, 1_333));
        assert_eq!((rep.total_corrupt(), rep.total_duplicates()), (0, 0));
    }
    assert_client_source(&t, &s);
    d.wait_metric("udp_fanout_packets_forwarded_total", K, 6_000);
    assert_eq!(metric(&d, "udp_fanout_packets_received_total"), 2_000);
    assert_eq!(
        metric(&d, "udp_fanout_bytes_forwarded_total"),
        3 * r.bytes_sent
    );
}

fn live_change(mode: &str) {
    let t = Topology::new(3);
    let s = sinks(&t);
    let cfg = fanout_config::from_yaml(&config(&t, mode, "round_robin", 3)).unwrap();
    // Both planes, as the daemon runs them (the userspace plane is the kernel plane's slow
    // path), changed together through the control plane.
    let (user, kernel) = enter(&t.lb, || {
        let user = fanout_userspace::UserspacePlane::start(&cfg).unwrap();
        let kernel = fanout_kernel::plane::KernelPlane::start(&cfg)
            .unwrap()
            .unwrap();
        (user, kernel)
    });
    let planes: Vec<std::sync::Arc<dyn fanout_control::Plane>> =
        vec![std::sync::Arc::new(kernel), std::sync::Arc::new(user)];
    let plane = fanout_control::Control::new(&cfg, planes);
    t.warm_neighbours();
    let ep = |k: usize| Endpoint::new(format!("{}:{SINK_PORT}", t.backend_ips[k]).parse().unwrap());
    let sender = std::thread::scope(|sc| {
        let h = sc.spawn(|| send(&t, 20_000, 8, &[200], 20_000));
        std::thread::sleep(Duration::from_millis(300));
        // Removed at once (no drain), as `DELETE ...?now=true` does.
        plane.api_remove("k", ep(0).addr, true).unwrap();
        // Let datagrams already on their way to backend 0 land and be counted.
        std::thread::sleep(Duration::from_millis(50));
        let before = s[0].total_datagrams();
        std::thread::sleep(Duration::from_millis(300));
        let during = s[0].total_datagrams();
        plane.api_add("k", ep(0).addr, 1).unwrap();
        let r = h.join().unwrap();
        (r, before, during)
    });
    let (r, before, during) = sender;
    assert!(
        eventually(WAIT, || total(&s) == r.sent),
        "lost {} of {}",
        r.sent - total(&s),
        r.sent
    );
    assert!(
        during == before,
        "backend 0 kept getting traffic after removal: {before} -> {during}"
    );
    assert!(
        s[0].total_datagrams() > during,
        "backend 0 gets traffic again once re-added"
    );
    // Both planes' counters, merged: every datagram received once, forwarded once.
    let snap = &plane.snapshot()[0];
    assert_eq!(
        (snap.received, snap.forwarded, snap.dropped_total()),
        (r.sent, r.sent, 0)
    );
    let desired = plane.desired();
    let mut now: Vec<_> = desired
        .listener("k")
        .unwrap()
        .downstreams()
        .iter()
        .map(|d| d.addr)
        .collect();
    now.sort();
    assert_eq!(now, vec![ep(0).addr, ep(1).addr, ep(2).addr]);
    for x in &s {
        assert_eq!(x.snapshot().total_corrupt(), 0);
    }
}

in_both_modes!(
    live_change,
    "live change",
    xdp_live_downstream_change_loses_nothing,
    tc_live_downstream_change_loses_nothing
);

/// The BPF links a process holds, from its fdinfo: (link type, link id).
fn links_of(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if let (Some(kind), Some(id)) = (field("link_type:"), field("link_id:")) {
            out.push((kind, id.parse().unwrap()));
        }
    }
    out
}

/// True while the kernel still has link `id`.
fn link_exists(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn detaches(mode: &str, signal: nix::sys::signal::Signal) {
    let t = Topology::new(1);
    let mut d = Daemon::start_in(Some(t.lb.name()), &config(&t, mode, "round_robin", 1));
    let links = links_of(d.pid());
    let want = if mode == "xdp" { "xdp" } else { "tcx" };
    assert_eq!(
        links.iter().filter(|(k, _)| k == want).count(),
        1,
        "one {want} link while running: {links:?}"
    );
    if mode == "xdp" {
        assert!(ip(&t.lb, &["-d", "link", "show", &t.lb_if]).contains("name uf_xdp"));
    }
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let t0 = Instant::now();
    while d.try_exited().is_none() {
        assert!(t0.elapsed() < WAIT, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    for (_, id) in links {
        assert!(
            eventually(Duration::from_secs(3), || !link_exists(id)),
            "link {id} left attached after {signal:?}"
        );
    }
    if mode == "xdp" {
        assert!(!ip(&t.lb, &["-d", "link", "show", &t.lb_if]).contains("prog/xdp"));
    }
}

/// [`detaches`] after SIGTERM, then after SIGKILL (a crash).
fn detaches_after_term_and_kill(mode: &str) {
    detaches(mode, nix::sys::signal::Signal::SIGTERM);
    detaches(mode, nix::sys::signal::Signal::SIGKILL);
}

in_both_modes!(
    detaches_after_term_and_kill,
    "detach",
    xdp_is_detached_after_sigterm_and_after_a_crash,
    tc_is_detached_after_sigterm_and_after_a_crash
);

#[test]
fn attach_errors_name_the_cause() {
    if !privileged_or_skip("attach errors") {
        return;
    }
    let t = Topology::new(1);
    // No such interface.
    let yaml = format!(
        "listeners: [{{name: k, bind: '{}:{PORT}', mode: xdp, interface: nope0, downstreams: ['{}:{SINK_PORT}']}}]",
        t.vip, t.backend_ips[0]
    );
    let log = Daemon::try_start_in(Some(t.lb.name()), &yaml)
        .err()
        .expect("must not start");
    assert!(
        log.contains("cannot attach xdp to interface \"nope0\": no such interface"),
        "{log}"
    );
    // Not root.
    let (_dir, path) = common::write_config(&config(&t, "xdp", "round_robin", 1));
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            t.lb.name(),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(common::bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("loading BPF programs needs root"), "{err}");
}

#[test]
fn fallback_userspace_serves_when_the_kernel_plane_cannot_attach() {
    if !privileged_or_skip("fallback") {
        return;
    }
    let t = Topology::new(1);
    let s = sinks(&t);
    let yaml = format!(
        "listeners: [{{name: k, bind: '{}:{PORT}', mode: xdp, interface: nope0, fallback: userspace, downstreams: ['{}:{SINK_PORT}']}}]",
        t.vip, t.backend_ips[0]
    );
    let d = Daemon::start_in(Some(t.lb.name()), &yaml);
    assert!(
        d.log_lines
            .iter()
            .any(|l| l.contains("kernel plane unavailable")),
        "{:?}",
        d.log_lines
    );
    send(&t, 100, 1, &[64], 10_000);
    assert_eq!(s[0].wait_for(100, WAIT).total_datagrams(), 100);
    let _ = sh(&["true"]);
}

#[test]
fn privileges_are_dropped_after_attach_in_every_thread() {
    if !privileged_or_skip("privilege drop") {
        return;
    }
    let t = Topology::new(1);
    let d = Daemon::start_in(Some(t.lb.name()), &config(&t, "xdp", "round_robin", 1));
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_BPF (39) and nothing else.
    let kept: u64 = (1 << 10) | (1 << 12) | (1 << 39);
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .unwrap()
                .trim();
            assert_eq!(
                u64::from_str_radix(v, 16).unwrap(),
                kept,
                "{field} of {:?}",
                task.path()
            );
        }
        threads += 1;
    }
    assert!(threads >= 3, "main, workers, route watcher");
}

#[test]
fn next_hop_cache_follows_a_neighbour_change_at_once() {
    if !privileged_or_skip("next-hop cache invalidation") {
        return;
    }
    // The programs cache each downstream's next hop (MAC addresses) for 5 s; a neighbour change
    // must take effect immediately (udp-fanout clears the cache on rtnetlink events), or every
    // datagram would go to the old MAC address and be dropped by the backend.
    let (t, s, _d) = serve(1, "xdp", "round_robin");
    send(&t, 500, 4, &[100], 10_000);
    assert_eq!(s[0].wait_for(500, WAIT).total_datagrams(), 500);
    // The backend changes its MAC address; the load balancer learns it (as ARP would tell it).
    let bif = &t.backend_ifs[0];
    ip(
        &t.backends[0],
        &["link", "set", "dev", bif, "address", "02:00:00:00:ab:cd"],
    );
    ip(
        &t.lb,
        &[
            "neigh",
            "replace",
            &t.backend_ips[0],
            "lladdr",
            "02:00:00:00:ab:cd",
            "dev",
            &t.lb_backend_ifs[0],
            "nud",
            "reachable",
        ],
    );
    std::thread::sleep(Duration::from_millis(100));
    send(&t, 500, 4, &[100], 10_000);
    assert_eq!(
        s[0].wait_for(1_000, WAIT).total_datagrams(),
        1_000,
        "datagrams went to the old next hop"
    );
    assert_client_source(&t, &s);
}
