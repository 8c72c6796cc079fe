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

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether privileged tests can run; prints why not, or panics when CI requires them.
pub fn privileged_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("UDP_FANOUT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{what} needs root, and UDP_FANOUT_REQUIRE_PRIVILEGED=1 says it must run");
    }
    eprintln!("SKIP: {what} needs root (network namespaces, eBPF)");
    false
}

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` with the calling thread inside this namespace (sockets created there stay
    /// there), then returns the thread to where it was.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        enter(&self.name, f)
    }
}

/// Runs `f` with the calling thread inside the namespace called `name`.
pub fn enter<T>(name: &str, f: impl FnOnce() -> T) -> T {
    use nix::sched::{CloneFlags, setns};
    let here = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
    let there = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
    setns(there.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    setns(here.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns back");
    match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

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
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short, unique names: interface names are limited to 15 bytes.
        let tag = format!("{:x}{n:x}", std::process::id() % 0xfffff);
        let net = 20 + (std::process::id() as usize * 7 + n as usize) % 200;
        let client = Netns::new(format!("ufc{tag}"));
        let lb = Netns::new(format!("ufl{tag}"));
        let (client_if, lb_if) = (format!("uc{tag}"), format!("ul{tag}"));
        sh(&[
            "ip",
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &lb_if,
            "netns",
            &lb.name,
        ]);
        let client_ip = format!("10.{net}.0.2");
        let vip = format!("10.{net}.0.1");
        client.ip(&["addr", "add", &format!("{client_ip}/24"), "dev", &client_if]);
        lb.ip(&["addr", "add", &format!("{vip}/24"), "dev", &lb_if]);
        client.ip(&["link", "set", &client_if, "up"]);
        lb.ip(&["link", "set", &lb_if, "up"]);
        client.ip(&["route", "add", "default", "via", &vip]);
        // Locally sent packets carry partial checksums that a native-XDP rewrite cannot fix
        // (see DESIGN.md); real NICs deliver complete ones.
        client.exec(&["ethtool", "-K", &client_if, "tx", "off"]);
        lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut bs = Vec::new();
        let mut ips = Vec::new();
        let mut lb_ifs = Vec::new();
        let mut b_ifs = Vec::new();
        for k in 0..backends {
            let b = Netns::new(format!("ufb{tag}{k}"));
            let (bif, lif) = (format!("ub{tag}{k}"), format!("ux{tag}{k}"));
            sh(&[
                "ip", "link", "add", &lif, "netns", &lb.name, "type", "veth", "peer", "name", &bif,
                "netns", &b.name,
            ]);
            let (lip, bip) = (
                format!("10.{net}.{}.1", k + 1),
                format!("10.{net}.{}.2", k + 1),
            );
            lb.ip(&["addr", "add", &format!("{lip}/24"), "dev", &lif]);
            b.ip(&["addr", "add", &format!("{bip}/24"), "dev", &bif]);
            lb.ip(&["link", "set", &lif, "up"]);
            b.ip(&["link", "set", &bif, "up"]);
            b.ip(&["route", "add", "default", "via", &lip]);
            // A native XDP redirect into a veth needs the peer to accept XDP frames.
            b.exec(&["ethtool", "-K", &bif, "gro", "on"]);
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
        self.client.exec(&["ping", "-c1", "-W1", &self.vip]);
        for ip in &self.backend_ips {
            self.lb.exec(&["ping", "-c1", "-W1", ip]);
        }
    }
}
