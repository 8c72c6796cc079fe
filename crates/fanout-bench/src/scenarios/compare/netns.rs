//! A throwaway three-namespace topology for the in-kernel peers (nftables, and udp-fanout's
//! own kernel plane), deleted by its guard's `Drop`.
//!
//! ```text
//!  client ns              router ns                    backend ns
//!  198.18.1.2 --veth-- 198.18.1.1   198.18.2.1 --veth-- 198.18.2.2, 198.18.2.3
//!                      (VIP 198.18.0.10 routed here)     (and the VIP on lo, for dup'd copies)
//! ```
//!
//! nftables forwards in the kernel, so it cannot be measured on loopback like the userspace
//! proxies: packets must be routed through a namespace where its rules run. Addresses are from
//! 198.18.0.0/15, the range set aside for benchmarks (RFC 2544), and exist only inside these
//! namespaces, which have no route anywhere else: no traffic leaves them. The veth MTU is the
//! largest allowed (65,535), so that 64,000-byte datagrams cross unfragmented, as they do on
//! loopback for the other peers. Names carry the process id and a counter, so parallel runs
//! (a test and a manual run) do not collide.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use super::placement::NsPath;
use super::procs;

/// The client's address.
pub(crate) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The address clients send to.
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The two backend addresses.
pub(crate) const BACKENDS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(198, 18, 2, 2), Ipv4Addr::new(198, 18, 2, 3)];
/// The port clients send to, on the VIP.
pub(crate) const VIP_PORT: u16 = 5000;
/// The backends' port.
pub(crate) const BACKEND_PORT: u16 = 6000;

const LIMIT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, with a time limit.
fn run(args: &[&str]) -> anyhow::Result<String> {
    procs::output(args[0], &args[1..], LIMIT)
}

/// The three namespaces and their links. Deleted on drop.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Namespace names: client, router, backend.
    names: [String; 3],
    /// The router's interface towards the backends.
    pub(crate) router_backend_if: String,
    /// The router's interface towards the client (where the clients' datagrams arrive).
    pub(crate) router_client_if: String,
}

impl Topology {
    /// Creates the namespaces, links and addresses.
    pub(crate) fn new() -> anyhow::Result<Topology> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}{n:x}", std::process::id() % 0xfffff);
        let mut t = Topology {
            names: [
                format!("ufxc{tag}"),
                format!("ufxr{tag}"),
                format!("ufxb{tag}"),
            ],
            router_backend_if: format!("uxb{tag}"),
            router_client_if: format!("uxr{tag}"),
        };
        for name in &t.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        // Deleted by Drop from here on, whatever fails below.
        let created = t.names.clone();
        t.names = Default::default();
        for (i, name) in created.iter().enumerate() {
            run(&["ip", "netns", "add", name])?;
            t.names[i].clone_from(name);
            run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        }
        t.wire(&tag).context("wiring the namespaces")?;
        Ok(t)
    }

    fn wire(&self, tag: &str) -> anyhow::Result<()> {
        let [c, r, b] = &self.names;
        let (cif, rcif, bif) = (
            format!("uxc{tag}"),
            &self.router_client_if,
            format!("uxd{tag}"),
        );
        let rbif = &self.router_backend_if;
        run(&[
            "ip", "link", "add", &cif, "netns", c, "type", "veth", "peer", "name", rcif, "netns", r,
        ])?;
        run(&[
            "ip", "link", "add", rbif, "netns", r, "type", "veth", "peer", "name", &bif, "netns", b,
        ])?;
        let addrs = [
            (c, &cif, format!("{CLIENT_IP}/24")),
            (r, rcif, "198.18.1.1/24".to_owned()),
            (r, rbif, "198.18.2.1/24".to_owned()),
            (b, &bif, format!("{}/24", BACKENDS[0])),
            (b, &bif, format!("{}/24", BACKENDS[1])),
        ];
        for (ns, dev, addr) in &addrs {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
        }
        for (ns, dev) in [(c, &cif), (r, rcif), (r, rbif), (b, &bif)] {
            run(&["ip", "-n", ns, "link", "set", dev, "mtu", "65535", "up"])?;
        }
        for (ns, gw) in [(c, "198.18.1.1"), (b, "198.18.2.1")] {
            run(&["ip", "-n", ns, "route", "add", "default", "via", gw])?;
        }
        // Mirrored copies (`dup to`) keep the VIP as their destination: the backend
        // namespace must take them as its own.
        run(&[
            "ip",
            "-n",
            b,
            "addr",
            "add",
            &format!("{VIP}/32"),
            "dev",
            "lo",
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        Ok(())
    }

    /// The client namespace.
    pub(crate) fn client(&self) -> NsPath {
        NsPath::named(&self.names[0])
    }

    /// The router namespace (where nftables' rules or udp-fanout's kernel plane run).
    pub(crate) fn router(&self) -> NsPath {
        NsPath::named(&self.names[1])
    }

    /// The backend namespace.
    pub(crate) fn backend(&self) -> NsPath {
        NsPath::named(&self.names[2])
    }

    /// Loads an nftables ruleset into the router namespace.
    pub(crate) fn load_rules(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let p = path.to_string_lossy();
        run(&["ip", "netns", "exec", &self.names[1], "nft", "-f", &p])?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.names.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
