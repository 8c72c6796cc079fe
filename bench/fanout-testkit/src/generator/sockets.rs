//! Opening the flow sockets: which source address each flow gets.
//!
//! A load balancer with sessions keys its state on the client address, so a benchmark of
//! session capacity needs as many distinct source addresses as sessions. One IP has at most
//! 28,232 ephemeral ports (32768–60999), and the proxy under test needs ephemeral ports of its
//! own for its upstream sockets, so 100,000 clients cannot come from `127.0.0.1:0`. Flows are
//! therefore spread round-robin over several addresses (flow `i` on `ips[i % n]`, any of
//! 127.0.0.0/8 works on Linux loopback), and may bind explicit ports from a range below the
//! ephemeral one.
//!
//! Explicit ports are taken in order per IP, the `k`-th flow of an IP getting the `k`-th port
//! of the range that was free. The allocation is thus a pure function of the settings and of
//! which ports are busy: a second run with the same settings gets the same client addresses
//! (and so, against a proxy with sessions, the same sessions), unless some port changed hands
//! in between. A busy port (`EADDRINUSE`) is skipped and counted rather than fatal, since
//! whatever holds it is none of the benchmark's business; `SO_REUSEADDR` is deliberately not
//! set, as it would let a flow share a port with another socket instead of skipping it.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use fanout_userspace::sys::socket::{self, SocketOptions};

use super::GenConfig;
use crate::limits;

/// File descriptors kept free beyond one per flow: the epoll instance, stdio, and whatever
/// the caller has open.
pub const NOFILE_SLACK: u64 = 1024;

/// The open flow sockets, in flow order.
#[derive(Debug)]
pub(crate) struct FlowSockets {
    pub(crate) socks: Vec<UdpSocket>,
    /// Ports of `bind_ports` passed over because something else held them.
    pub(crate) busy_skipped: u64,
}

/// Raises RLIMIT_NOFILE to `flows + NOFILE_SLACK` and opens one socket per flow.
pub(crate) fn open(cfg: &GenConfig) -> io::Result<FlowSockets> {
    limits::raise_nofile(u64::from(cfg.flows) + NOFILE_SLACK)?;
    let opts = SocketOptions {
        recv_buffer: cfg.socket_buffer,
        send_buffer: cfg.socket_buffer,
        reuse_port: false,
        pktinfo: false,
    };
    let ips = cfg.source_ips();
    let mut ranges: Vec<PortRange> = match cfg.bind_ports {
        Some((lo, hi)) => ips.iter().map(|&ip| PortRange::new(ip, lo, hi)).collect(),
        None => Vec::new(),
    };
    let mut socks = Vec::with_capacity(cfg.flows as usize);
    for flow in 0..cfg.flows as usize {
        let k = flow % ips.len();
        let s = match ranges.get_mut(k) {
            Some(r) => r.bind_next(&opts)?,
            None => bind(SocketAddr::new(ips[k], 0), &opts)?,
        };
        socks.push(s);
    }
    let busy_skipped = ranges.iter().map(|r| r.skipped).sum();
    Ok(FlowSockets {
        socks,
        busy_skipped,
    })
}

fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpSocket> {
    socket::bind(addr, opts)
        .map(|(s, _)| s)
        .map_err(|e| io::Error::new(e.kind(), format!("binding a flow socket to {addr}: {e}")))
}

/// The ports of one IP, handed out in order.
#[derive(Debug)]
struct PortRange {
    ip: IpAddr,
    lo: u16,
    hi: u16,
    /// The next port to try; `u32` so that it can step past 65,535.
    next: u32,
    taken: u64,
    skipped: u64,
}

impl PortRange {
    fn new(ip: IpAddr, lo: u16, hi: u16) -> Self {
        PortRange {
            ip,
            lo,
            hi,
            next: u32::from(lo),
            taken: 0,
            skipped: 0,
        }
    }

    /// Binds the next free port of the range.
    fn bind_next(&mut self, opts: &SocketOptions) -> io::Result<UdpSocket> {
        while let Ok(port) = u16::try_from(self.next) {
            if port > self.hi {
                break;
            }
            self.next += 1;
            match bind(SocketAddr::new(self.ip, port), opts) {
                Ok(s) => {
                    self.taken += 1;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => self.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!(
                "source ports {}-{} on {} ran out after {} flows ({} busy ports skipped): \
                 widen bind_ports or add bind_ips",
                self.lo, self.hi, self.ip, self.taken, self.skipped
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn opts() -> SocketOptions {
        SocketOptions {
            recv_buffer: 0,
            send_buffer: 0,
            reuse_port: false,
            pktinfo: false,
        }
    }

    #[test]
    fn busy_ports_are_skipped_and_the_range_runs_out_cleanly() {
        // Find three consecutive free ports below the ephemeral range and occupy the middle.
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 41, 7));
        let lo = (20_000..30_000)
            .step_by(3)
            .find(|&p| (p..p + 3).all(|q| UdpSocket::bind(SocketAddr::new(ip, q)).is_ok()))
            .expect("three free ports");
        let blocker = UdpSocket::bind(SocketAddr::new(ip, lo + 1)).unwrap();
        let mut r = PortRange::new(ip, lo, lo + 2);
        let a = r.bind_next(&opts()).unwrap();
        let b = r.bind_next(&opts()).unwrap();
        assert_eq!(a.local_addr().unwrap().port(), lo);
        assert_eq!(b.local_addr().unwrap().port(), lo + 2);
        assert_eq!((r.taken, r.skipped), (2, 1));
        let e = r.bind_next(&opts()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(e.to_string().contains("ran out after 2 flows"), "{e}");
        drop(blocker);
    }

    #[test]
    fn the_top_of_the_port_space_does_not_wrap() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 41, 8));
        let mut r = PortRange::new(ip, 65_535, 65_535);
        // Whether or not 65535 is free, the range ends there.
        let _ = r.bind_next(&opts());
        assert!(r.bind_next(&opts()).is_err());
        assert_eq!(r.next, 65_536);
    }
}
