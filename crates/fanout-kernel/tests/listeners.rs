//! Listeners added to and removed from a running kernel plane, end to end with real datagrams
//! in network namespaces the test creates:
//!
//! ```text
//!  client ns                 lb ns (the plane)                     backend ns
//!  10.66.0.2  --veth--  10.66.0.1 (VIP)   10.66.1.1  --veth--  10.66.1.2
//!                       :5514 a (at start) -> 10.66.1.2:7000
//!                       :5515 b (added)    -> 10.66.1.2:7001
//!                       :5515 userspace socket (what b's datagrams reach unregistered)
//! ```
//!
//! While a stream to `a` runs, `b` is added (its datagrams arrive at its downstream, from the
//! client's own address: the kernel rewrote only the destination), removed (they reach the
//! socket on its address instead, as they would the userspace plane's slow path) and added
//! again under the same name and address. The stream to `a` loses nothing meanwhile.
//!
//! Needs root: skipped with a printed reason otherwise, failing instead when
//! `UDP_FANOUT_REQUIRE_PRIVILEGED=1` (CI).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fanout_config::ListenerConfig;
use fanout_kernel::plane::KernelPlane;
use fanout_testkit::netns::{Netns, privileged, unique_tag, veth};
use fanout_testkit::{GenConfig, GenReport, Sink, SinkHandle, SinkOptions, generator};

const CLIENT: &str = "10.66.0.2";
const VIP: &str = "10.66.0.1";
const LB_BACK: &str = "10.66.1.1";
const BACKEND: &str = "10.66.1.2";
/// Datagrams of each burst to `b`.
const BURST: u64 = 500;
/// How long a burst may take to arrive.
const WAIT: Duration = Duration::from_secs(5);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Client, load balancer and one backend, joined by veth pairs; deleted on drop.
struct Topology {
    client: Netns,
    lb: Netns,
    backend: Netns,
    /// The load balancer's interface facing the client: where the programs attach.
    lb_if: String,
}

impl Topology {
    fn new() -> Topology {
        let tag = unique_tag();
        let ns =
            |role: &str| must(Netns::new(format!("ufk{role}{tag}")).and_then(Netns::without_ipv6));
        let t = Topology {
            client: ns("c"),
            lb: ns("l"),
            backend: ns("b"),
            lb_if: format!("ul{tag}"),
        };
        let (client_if, back_if, backend_if) =
            (format!("uc{tag}"), format!("ux{tag}"), format!("ub{tag}"));
        must(veth(&client_if, &t.client, &t.lb_if, &t.lb));
        must(veth(&back_if, &t.lb, &backend_if, &t.backend));
        for (ns, dev, ip) in [
            (&t.client, &client_if, CLIENT),
            (&t.lb, &t.lb_if, VIP),
            (&t.lb, &back_if, LB_BACK),
            (&t.backend, &backend_if, BACKEND),
        ] {
            must(ns.address_up(dev, &format!("{ip}/24")));
        }
        must(t.client.ip(&["route", "add", "default", "via", VIP]));
        must(t.backend.ip(&["route", "add", "default", "via", LB_BACK]));
        must(t.lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
        // Locally sent datagrams carry partial checksums a native-XDP rewrite cannot complete
        // (real NICs deliver complete ones), and a native XDP redirect into a veth needs GRO on
        // the peer to take the frames.
        must(t.client.exec(&["ethtool", "-K", &client_if, "tx", "off"]));
        must(t.backend.exec(&["ethtool", "-K", &backend_if, "gro", "on"]));
        // Neighbours resolved, so the programs redirect rather than pass to the kernel.
        must(t.client.exec(&["ping", "-c1", "-W1", VIP]));
        must(t.lb.exec(&["ping", "-c1", "-W1", BACKEND]));
        t
    }

    /// A listener YAML flow mapping on the load balancer's client-facing interface.
    fn listener(&self, name: &str, mode: &str, port: u16, to: u16) -> String {
        format!(
            "{{name: {name}, mode: {mode}, interface: {}, bind: '{VIP}:{port}', downstreams: ['{BACKEND}:{to}']}}",
            self.lb_if
        )
    }

    /// A sink on `addr` in `ns`.
    fn sink(ns: &Netns, addr: SocketAddr) -> SinkHandle {
        must(ns.enter(|| Sink::serve(&[addr], SinkOptions::default()).unwrap()))
    }

    /// Sends `count` datagrams from the client to the VIP's `port` at `rate` per second.
    fn send(&self, port: u16, count: u64, rate: u64) -> GenReport {
        let mut g = GenConfig::new(addr(VIP, port));
        g.count = Some(count);
        g.rate_pps = rate;
        g.flows = 4;
        g.sizes = vec![200];
        g.bind_ip = CLIENT.parse::<IpAddr>().unwrap();
        let r = must(
            self.client
                .enter(|| generator::run(&g, &AtomicBool::new(false)).unwrap()),
        );
        assert_eq!(r.sent, count, "{r:?}");
        r
    }
}

fn parse(yaml: &str) -> ListenerConfig {
    let cfg = fanout_config::from_yaml(&format!("listeners:\n  - {yaml}\n")).unwrap();
    cfg.listeners.into_iter().next().unwrap()
}

/// Waits until `s` has `n` datagrams in all, then checks it got no more.
fn lands(s: &SinkHandle, n: u64, what: &str) {
    let r = s.wait_for(n, WAIT);
    assert_eq!(r.total_datagrams(), n, "{what}");
    assert_eq!((r.total_corrupt(), r.total_duplicates()), (0, 0), "{what}");
}

/// Every datagram at `s` came from the client's own address: the kernel plane forwarded it.
fn from_client(s: &SinkHandle) {
    for src in s.snapshot().ports[0].sources.keys() {
        assert_eq!(
            src.ip().to_string(),
            CLIENT,
            "not forwarded by the kernel plane"
        );
    }
}

fn add_and_remove_while_running(mode: &str) {
    let t = Topology::new();
    let to_a = Topology::sink(&t.backend, addr(BACKEND, 7000));
    let to_b = Topology::sink(&t.backend, addr(BACKEND, 7001));
    let slow_b = Topology::sink(&t.lb, addr(VIP, 5515));
    let cfg = fanout_config::from_yaml(&format!(
        "listeners:\n  - {}\n",
        t.listener("a", mode, 5514, 7000)
    ))
    .unwrap();
    // The plane, and every change to it, in the load balancer's namespace: interfaces are
    // looked up there.
    let plane = must(t.lb.enter(|| KernelPlane::start(&cfg).unwrap().unwrap()));
    let in_lb = |f: &dyn Fn(&KernelPlane)| must(t.lb.enter(|| f(&plane)));
    let b = parse(&t.listener("b", mode, 5515, 7001));
    std::thread::scope(|sc| {
        // 3 s of traffic to a, spanning everything below.
        let stream = sc.spawn(|| t.send(5514, 12_000, 4_000));
        in_lb(&|p| p.add_listener(&b).unwrap());
        assert_eq!(plane.listener_names(), ["a", "b"]);
        t.send(5515, BURST, 5_000);
        lands(&to_b, BURST, "b, added");
        from_client(&to_b);

        in_lb(&|p| p.remove_listener("b").unwrap());
        assert_eq!(plane.listener_names(), ["a"]);
        t.send(5515, BURST, 5_000);
        lands(&slow_b, BURST, "the socket on b's address, b removed");
        assert_eq!(to_b.total_datagrams(), BURST, "b's downstream, b removed");

        in_lb(&|p| p.add_listener(&b).unwrap());
        t.send(5515, BURST, 5_000);
        lands(&to_b, 2 * BURST, "b, added again");
        assert_eq!(slow_b.total_datagrams(), BURST, "the socket, b added again");
        assert!(
            !stream.is_finished(),
            "the stream to a ended before b's changes did"
        );
        let r = stream.join().unwrap();
        lands(&to_a, r.sent, "a, throughout");
    });
    from_client(&to_a);
    let snap = plane.snapshot();
    let (a, b) = (&snap[0], &snap[1]);
    assert_eq!(
        (a.received, a.forwarded, a.dropped_total()),
        (12_000, 12_000, 0)
    );
    // Re-created: its counts start again from zero.
    assert_eq!(
        (b.name.as_str(), b.received, b.forwarded),
        ("b", BURST, BURST)
    );
}

#[test]
fn xdp_listeners_come_and_go_while_running() {
    if privileged("xdp listeners added and removed while running") {
        add_and_remove_while_running("xdp");
    }
}

#[test]
fn tc_listeners_come_and_go_while_running() {
    if privileged("tc_ebpf listeners added and removed while running") {
        add_and_remove_while_running("tc_ebpf");
    }
}
