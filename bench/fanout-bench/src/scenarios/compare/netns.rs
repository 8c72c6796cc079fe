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

use anyhow::Context as _;
use fanout_testkit::netns::{Netns, NsPath, sh as run, unique_tag};

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

/// The three namespaces and their links. Deleted on drop.
#[derive(Debug)]
pub(crate) struct Topology {
    /// The namespaces: client, router, backend.
    ns: [Netns; 3],
    /// The router's interface towards the backends.
    pub(crate) router_backend_if: String,
    /// The router's interface towards the client (where the clients' datagrams arrive).
    pub(crate) router_client_if: String,
}

impl Topology {
    /// Creates the namespaces, links and addresses.
    pub(crate) fn new() -> anyhow::Result<Topology> {
        let tag = unique_tag();
        let t = Topology {
            ns: [
                Netns::new(format!("ufxc{tag}"))?,
                Netns::new(format!("ufxr{tag}"))?,
                Netns::new(format!("ufxb{tag}"))?,
            ],
            router_backend_if: format!("uxb{tag}"),
            router_client_if: format!("uxr{tag}"),
        };
        t.wire(&tag).context("wiring the namespaces")?;
        Ok(t)
    }

    fn wire(&self, tag: &str) -> anyhow::Result<()> {
        let [c, r, b] = self.ns.each_ref().map(Netns::name);
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
        self.ns[0].path()
    }

    /// The router namespace (where nftables' rules or udp-fanout's kernel plane run).
    pub(crate) fn router(&self) -> NsPath {
        self.ns[1].path()
    }

    /// The backend namespace.
    pub(crate) fn backend(&self) -> NsPath {
        self.ns[2].path()
    }

    /// Loads an nftables ruleset into the router namespace.
    pub(crate) fn load_rules(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let p = path.to_string_lossy();
        self.ns[1].exec(&["nft", "-f", &p])?;
        Ok(())
    }
}
