//! The benchmark's network: a client, a load balancer and two backends, each in a network
//! namespace of its own, joined by veth pairs; every namespace is deleted when its guard is
//! dropped, whatever fails in between.
//!
//! ```text
//!  client ns              lb ns                               backend ns k (k = 0, 1)
//!  10.77.0.2 --veth-- 10.77.0.1 (listener :5514)
//!                      10.77.(k+1).1 --veth-- 10.77.(k+1).2 (:7000, bench_sink XDP)
//! ```
//!
//! The addresses exist only inside these namespaces, which have no route anywhere else: no
//! benchmark traffic leaves them. Names carry the process id and a per-process counter, so a
//! test and a manual run at the same time do not collide, and a leftover of a killed run with
//! the same name is deleted first.
//!
//! What the generator needs from the links (see [`crate::generator`]): one queue per CPU on
//! every veth, GRO on the load balancer's ingress veth (its NAPI must be on for native XDP
//! frames to be taken in at all), and a spare veth pair, left down, to hold the generator
//! attached.

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow, bail};
pub use fanout_testkit::netns::Netns;
use fanout_testkit::netns::{sh, unique_tag};

/// The client's address.
pub const CLIENT_IP: [u8; 4] = [10, 77, 0, 2];
/// The load balancer's listener address (the VIP).
pub const VIP: [u8; 4] = [10, 77, 0, 1];
/// The listener's port.
pub const PORT: u16 = 5514;
/// The backends' port.
pub const BACKEND_PORT: u16 = 7000;
/// Backends behind the load balancer.
pub const BACKENDS: usize = 2;
/// The client veth's MAC address.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0x75, 0x66, 0, 0, 0x01];
/// The load balancer's client-facing MAC address.
pub const MAC_LB: [u8; 6] = [0x02, 0x75, 0x66, 0, 0, 0x02];

/// Backend `k`'s address.
pub fn backend_ip(k: usize) -> [u8; 4] {
    [10, 77, k as u8 + 1, 2]
}

/// The load balancer's address on backend `k`'s link.
pub fn lb_backend_ip(k: usize) -> [u8; 4] {
    [10, 77, k as u8 + 1, 1]
}

fn mac_lb_backend(k: usize) -> [u8; 6] {
    [0x02, 0x75, 0x66, 0, k as u8 + 1, 0x01]
}

fn mac_backend(k: usize) -> [u8; 6] {
    [0x02, 0x75, 0x66, 0, k as u8 + 1, 0x02]
}

/// `a.b.c.d`.
pub fn dotted(ip: [u8; 4]) -> String {
    Ipv4Addr::from(ip).to_string()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Client, load balancer and two backends (see the module docs). The backends' namespaces
/// are dropped before the load balancer's and the client's (field order).
#[derive(Debug)]
pub struct Topology {
    /// The backends' namespaces.
    pub backends: Vec<Netns>,
    /// The load balancer's namespace.
    pub lb: Netns,
    /// The client's namespace.
    pub client: Netns,
    /// The client's veth.
    pub client_if: String,
    /// Down, carries no traffic: the generator's XDP attachment point.
    pub spare_if: String,
    /// The load balancer's client-facing veth (where the listener's traffic arrives).
    pub lb_if: String,
    /// The load balancer's backend-facing veths.
    pub lb_backend_ifs: Vec<String>,
    /// The backends' veths (where the sinks are attached).
    pub backend_ifs: Vec<String>,
}

impl Topology {
    /// Creates the namespaces, links, addresses and permanent neighbours.
    pub fn new() -> anyhow::Result<Topology> {
        // Unique per process and call: namespaces and interface names (at most 15 bytes).
        // No IPv6 chatter (router solicitations, MLD) on the links being measured.
        let tag = unique_tag();
        let client = Netns::new(format!("ufnf-{tag}-c"))?.without_ipv6()?;
        let lb = Netns::new(format!("ufnf-{tag}-l"))?.without_ipv6()?;
        let (client_if, lb_if) = (format!("nfc{tag}"), format!("nfl{tag}"));
        veth(&client, &client_if, MAC_CLIENT, &lb, &lb_if, MAC_LB)?;
        let client_addr = format!("{}/24", dotted(CLIENT_IP));
        client.ip(&["addr", "add", &client_addr, "dev", &client_if])?;
        lb.ip(&["addr", "add", &format!("{}/24", dotted(VIP)), "dev", &lb_if])?;
        client.ip(&["link", "set", &client_if, "up"])?;
        lb.ip(&["link", "set", &lb_if, "up"])?;
        // A spare veth pair, left down, to hold the generator in the XDP dispatcher (see
        // the generator's docs).
        let spare_if = format!("nfs{tag}");
        let spare_peer = format!("nft{tag}");
        client.ip(&[
            "link",
            "add",
            &spare_if,
            "type",
            "veth",
            "peer",
            "name",
            &spare_peer,
        ])?;
        lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Native XDP frames (the generator's) into a veth are dropped unless the receiving
        // veth has an XDP program or GRO on (its NAPI is off otherwise).
        lb.exec(&["ethtool", "-K", &lb_if, "gro", "on"])?;
        let mut backends = Vec::new();
        let (mut lb_backend_ifs, mut backend_ifs) = (Vec::new(), Vec::new());
        for k in 0..BACKENDS {
            let b = Netns::new(format!("ufnf-{tag}-b{k}"))?.without_ipv6()?;
            let (lif, bif) = (format!("nfx{tag}{k}"), format!("nfb{tag}{k}"));
            veth(&lb, &lif, mac_lb_backend(k), &b, &bif, mac_backend(k))?;
            let lip = format!("{}/24", dotted(lb_backend_ip(k)));
            lb.ip(&["addr", "add", &lip, "dev", &lif])?;
            let bip = format!("{}/24", dotted(backend_ip(k)));
            b.ip(&["addr", "add", &bip, "dev", &bif])?;
            lb.ip(&["link", "set", &lif, "up"])?;
            b.ip(&["link", "set", &bif, "up"])?;
            // Permanent neighbours: no ARP during a run, bpf_fib_lookup finds them at once.
            lb.ip(&[
                "neigh",
                "replace",
                &dotted(backend_ip(k)),
                "lladdr",
                &mac_str(mac_backend(k)),
                "dev",
                &lif,
                "nud",
                "permanent",
            ])?;
            backends.push(b);
            lb_backend_ifs.push(lif);
            backend_ifs.push(bif);
        }
        Ok(Topology {
            backends,
            lb,
            client,
            client_if,
            spare_if,
            lb_if,
            lb_backend_ifs,
            backend_ifs,
        })
    }

    /// `xdp_xmit_errors` of the client's veth (frames its peer's ring had no room for).
    pub fn client_xmit_errors(&self) -> anyhow::Result<u64> {
        let ethtool = self.client.exec(&["ethtool", "-S", &self.client_if])?;
        Ok(ethtool
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .filter(|(k, _)| k.ends_with("xdp_xmit_errors"))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum())
    }

    /// The load balancer's link and UDP counters (read from inside its namespace).
    pub fn lb_counters(&self) -> anyhow::Result<LbCounters> {
        self.lb.enter(|| self.read_lb_counters())?
    }

    fn read_lb_counters(&self) -> anyhow::Result<LbCounters> {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
            .context("reading /proc/net/snmp")?;
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let (Some(names), Some(values)) = (udp.first(), udp.get(1)) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        let udp_stat = |stat: &str| -> u64 {
            names
                .iter()
                .position(|n| *n == stat)
                .and_then(|i| values.get(i)?.parse().ok())
                .unwrap_or(0)
        };
        // "name: rx_bytes rx_packets rx_errs rx_drop (4 more) tx_bytes tx_packets tx_errs
        // tx_drop ...". rx_packets of the client-facing veth: frames its NAPI took in,
        // whatever an XDP program there did with them. tx_drop of the backend-facing ones:
        // skbs their peer's full ring refused.
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
            .context("reading /proc/net/dev")?;
        let field = |ifname: &str, i: usize| -> anyhow::Result<u64> {
            dev.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .find(|(name, _)| *name == ifname)
                .and_then(|(_, v)| v.split_whitespace().nth(i)?.parse().ok())
                .ok_or_else(|| anyhow!("no counters for {ifname} in /proc/net/dev"))
        };
        let mut tx_drops = 0;
        for i in &self.lb_backend_ifs {
            tx_drops += field(i, 11)?;
        }
        Ok(LbCounters {
            rcvbuf_errors: udp_stat("RcvbufErrors"),
            // A send the egress veth refused returns ENOBUFS, which UDP counts here and hides
            // from the sender (no IP_RECVERR).
            sndbuf_errors: udp_stat("SndbufErrors"),
            rx: field(&self.lb_if, 1)?,
            tx_drops,
        })
    }
}

/// The load balancer's counters that explain where frames went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbCounters {
    /// Frames the client-facing veth received (rx_packets).
    pub rx: u64,
    /// Packets the backend-facing veths dropped on transmit (tx_drop).
    pub tx_drops: u64,
    /// UDP RcvbufErrors of the namespace.
    pub rcvbuf_errors: u64,
    /// UDP SndbufErrors of the namespace.
    pub sndbuf_errors: u64,
}

/// A veth pair with fixed MAC addresses, one end in each namespace, one queue per CPU: a
/// native XDP transmit into a veth picks the receive ring of the sending CPU, so with one
/// ring, senders on two CPUs would overflow it while its NAPI runs on one of them.
fn veth(
    a: &Netns,
    a_if: &str,
    a_mac: [u8; 6],
    b: &Netns,
    b_if: &str,
    b_mac: [u8; 6],
) -> anyhow::Result<()> {
    let queues = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let q = queues.as_str();
    sh(&[
        "ip",
        "link",
        "add",
        a_if,
        "address",
        &mac_str(a_mac),
        "netns",
        a.name(),
        "numtxqueues",
        q,
        "numrxqueues",
        q,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "address",
        &mac_str(b_mac),
        "netns",
        b.name(),
        "numtxqueues",
        q,
        "numrxqueues",
        q,
    ])?;
    Ok(())
}
