//! Throwaway network namespaces for kernel-plane tests: a client, a load balancer and backends
//! joined by veth pairs, all created by the test and deleted by guards' `Drop`, with names
//! unique per process and test so tests run in parallel and a failed one leaves nothing behind.
//!
//! Topology built by [`Topology::new`] (`n` backends):
//!
//! ```text
//!  client ns                lb ns                          backend ns k
//!  10.X.0.2  --veth--  10.X.0.1 (VIP, listener)
//!                          10.X.(k+1).1  --veth--  10.X.(k+1).2
//! ```
//!
//! Traffic never leaves the namespaces.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use fanout_testkit::netns::{Netns, privileged as privileged_or_skip};

/// Runs a command (time-limited), panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    fanout_testkit::netns::sh(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A namespace for a test: created or the test fails.
fn netns(name: String) -> Netns {
    Netns::new(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ip -n NS args…`, panicking on failure.
pub fn ip(ns: &Netns, args: &[&str]) -> String {
    ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ip netns exec NS args…`, panicking on failure.
pub fn exec(ns: &Netns, args: &[&str]) -> String {
    ns.exec(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `f` inside `ns`, panicking if the thread cannot get there and back.
pub fn enter<T>(ns: &Netns, f: impl FnOnce() -> T) -> T {
    ns.enter(f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A veth pair: `a` in namespace `a_ns`, `b` in `b_ns`.
fn veth(a: &str, a_ns: &Netns, b: &str, b_ns: &Netns) {
    fanout_testkit::netns::veth(a, a_ns, b, b_ns).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Gives `dev` in `ns` the address `cidr` and brings it up.
fn address_up(ns: &Netns, dev: &str, cidr: &str) {
    ns.address_up(dev, cidr).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Client, load balancer and backends wired together.
pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    /// The client's address.
    pub client_ip: String,
    /// The load balancer's address facing the client: the listener's address.
    pub vip: String,
    /// Backend addresses.
    pub backend_ips: Vec<String>,
    /// LB interface facing the client (attach point).
    pub lb_if: String,
    /// Client interface.
    pub client_if: String,
    /// LB interfaces facing each backend.
    pub lb_backend_ifs: Vec<String>,
    /// Each backend's interface.
    pub backend_ifs: Vec<String>,
}

impl Topology {
    /// Builds the namespaces for `backends` backends.
    pub fn new(backends: usize) -> Topology {
        // Short, unique names: interface names are limited to 15 bytes.
        let tag = fanout_testkit::netns::unique_tag();
        // A per-topology 10.X/16, so that a leak between parallel tests would show.
        let net = 20 + tag.bytes().fold(0usize, |h, b| h * 31 + b as usize) % 200;
        let client = netns(format!("ufc{tag}"));
        let lb = netns(format!("ufl{tag}"));
        let (client_if, lb_if) = (format!("uc{tag}"), format!("ul{tag}"));
        veth(&client_if, &client, &lb_if, &lb);
        let client_ip = format!("10.{net}.0.2");
        let vip = format!("10.{net}.0.1");
        address_up(&client, &client_if, &format!("{client_ip}/24"));
        address_up(&lb, &lb_if, &format!("{vip}/24"));
        ip(&client, &["route", "add", "default", "via", &vip]);
        // Locally sent packets carry partial checksums that a native-XDP rewrite cannot fix
        // (see DESIGN.md); real NICs deliver complete ones.
        exec(&client, &["ethtool", "-K", &client_if, "tx", "off"]);
        exec(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut bs = Vec::new();
        let mut ips = Vec::new();
        let mut lb_ifs = Vec::new();
        let mut b_ifs = Vec::new();
        for k in 0..backends {
            let b = netns(format!("ufb{tag}{k}"));
            let (bif, lif) = (format!("ub{tag}{k}"), format!("ux{tag}{k}"));
            veth(&lif, &lb, &bif, &b);
            let (lip, bip) = (
                format!("10.{net}.{}.1", k + 1),
                format!("10.{net}.{}.2", k + 1),
            );
            address_up(&lb, &lif, &format!("{lip}/24"));
            address_up(&b, &bif, &format!("{bip}/24"));
            ip(&b, &["route", "add", "default", "via", &lip]);
            // A native XDP redirect into a veth needs the peer to accept XDP frames.
            exec(&b, &["ethtool", "-K", &bif, "gro", "on"]);
            bs.push(b);
            ips.push(bip);
            lb_ifs.push(lif);
            b_ifs.push(bif);
        }
        Topology {
            client,
            lb,
            backends: bs,
            client_ip,
            vip,
            backend_ips: ips,
            lb_if,
            client_if,
            lb_backend_ifs: lb_ifs,
            backend_ifs: b_ifs,
        }
    }

    /// Resolves every neighbour once (a ping each way), so the fast path has next hops.
    pub fn warm_neighbours(&self) {
        exec(&self.client, &["ping", "-c1", "-W1", &self.vip]);
        for ip in &self.backend_ips {
            exec(&self.lb, &["ping", "-c1", "-W1", ip]);
        }
    }
}

#[allow(unused_macros)] // used by the kernel-plane test files only
/// An `xdp` and a `tc_ebpf` test of `check(mode)`, each run only when privileged (`what` names
/// what is skipped otherwise).
macro_rules! in_both_modes {
    ($check:ident, $what:literal, $xdp:ident, $tc:ident) => {
        #[test]
        fn $xdp() {
            if crate::common::netns::privileged_or_skip(concat!("xdp ", $what)) {
                $check("xdp");
            }
        }

        #[test]
        fn $tc() {
            if crate::common::netns::privileged_or_skip(concat!("tc_ebpf ", $what)) {
                $check("tc_ebpf");
            }
        }
    };
}
