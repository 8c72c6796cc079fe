//! The TC program on a datagram whose IP and UDP headers are not in the skb's linear area.
//!
//! The program parses what is linear first and pulls the headers in (`bpf_skb_pull_data`) only
//! when that parse comes up short: pulling on every packet reallocated the head of each large
//! datagram and cost the 64 KB mirror about a tenth of its rate. This checks the slow branch
//! still forwards: a frame sent from an `AF_PACKET` socket is built with only its Ethernet
//! header in the linear area when it is a page or more (the kernel's `packet_snd` keeps
//! `hard_header_len` linear and puts the rest in pages), and a veth hands the skb over as it
//! is. If the program failed to parse it, the kernel would deliver the datagram to udp-fanout's
//! slow-path socket and the userspace plane would forward it from the load balancer's own
//! address instead of the client's.
//!
//! Needs root: skipped with a printed reason otherwise, and failing instead when
//! `UDP_FANOUT_REQUIRE_PRIVILEGED=1` (CI).

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::netns::{Topology, enter, ip, privileged_or_skip};
use common::{Daemon, eventually};

const PORT: u16 = 5514;
const SINK_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 40_000;
/// Larger than a page, so that `packet_snd` builds a paged skb.
const PAYLOAD: usize = 6_000;
const MTU: &str = "9000";

/// The MAC address of `dev` as `ip link show` prints it.
fn mac_of(ns: &common::netns::Netns, dev: &str) -> [u8; 6] {
    let out = ip(ns, &["link", "show", "dev", dev]);
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

/// One's-complement sum of 16-bit words, folded (the IPv4 header checksum).
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: none, which IPv4 allows).
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&s.ip().octets());
    ip[16..20].copy_from_slice(&d.ip().octets());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&s.port().to_be_bytes());
    f.extend_from_slice(&d.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Sends `frame` as it is on interface `ifindex` of the calling thread's namespace.
fn send_raw(ifindex: u32, dst_mac: [u8; 6], frame: &[u8]) {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh, valid descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = i32::try_from(ifindex).unwrap();
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst_mac);
    // SAFETY: the buffer and the address are valid for the lengths given, for the whole call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        n,
        isize::try_from(frame.len()).unwrap(),
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn tc_forwards_a_datagram_whose_headers_are_in_paged_data() {
    if !privileged_or_skip("tc_ebpf with headers in paged data") {
        return;
    }
    let t = Topology::new(1);
    for (ns, dev) in [
        (&t.client, &t.client_if),
        (&t.lb, &t.lb_if),
        (&t.lb, &t.lb_backend_ifs[0]),
        (&t.backends[0], &t.backend_ifs[0]),
    ] {
        ip(ns, &["link", "set", "dev", dev, "mtu", MTU]);
    }
    let sink_addr: SocketAddr = format!("{}:{SINK_PORT}", t.backend_ips[0]).parse().unwrap();
    let sink = enter(&t.backends[0], || UdpSocket::bind(sink_addr).unwrap());
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let yaml = format!(
        "listeners: [{{name: k, bind: '{}:{PORT}', mode: tc_ebpf, interface: {}, downstreams: ['{sink_addr}']}}]\nmetrics: {{bind: '127.0.0.1:0'}}",
        t.vip, t.lb_if
    );
    let d = Daemon::start_in(Some(t.lb.name()), &yaml);
    t.warm_neighbours();

    let client: Ipv4Addr = t.client_ip.parse().unwrap();
    let src = SocketAddr::from((client, CLIENT_PORT));
    let dst: SocketAddr = format!("{}:{PORT}", t.vip).parse().unwrap();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 % 251) as u8).collect();
    let lb_mac = mac_of(&t.lb, &t.lb_if);
    let client_mac = mac_of(&t.client, &t.client_if);
    let f = frame(lb_mac, client_mac, src, dst, &payload);
    enter(&t.client, || {
        let ifindex = nix::net::if_::if_nametoindex(t.client_if.as_str()).unwrap();
        send_raw(ifindex, lb_mac, &f);
    });

    let mut buf = vec![0u8; 65_536];
    let (n, from) = sink
        .recv_from(&mut buf)
        .expect("the datagram never arrived");
    assert_eq!(&buf[..n], &payload[..], "payload changed on the way");
    assert_eq!(from, src, "forwarded by userspace, not by the TC program");
    let forwarded = |d: &Daemon| {
        d.metric("udp_fanout_packets_forwarded_total", "listener=\"k\"")
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(5), || forwarded(&d) == 1));
}
