//! The ICMP echo prober's sockets: one per address family, shared by every ICMP target.
//!
//! Which socket: a *ping socket* (`SOCK_DGRAM` + `IPPROTO_ICMP`/`ICMPV6`) when the process's
//! group is in `net.ipv4.ping_group_range` (no privilege needed; the kernel picks the echo
//! identifier and routes only our replies to us), else a *raw socket* (`SOCK_RAW`, needs
//! `CAP_NET_RAW`), which sees every ICMP packet the host receives and so filters by our
//! identifier and payload marker. Neither: probes fail (counted as failures, logged once),
//! as HAProxy counts a check it cannot run as failed. The kind chosen is logged.
//!
//! Replies are matched by (source address, sequence number): every probe gets the next
//! sequence number of its family, so targets with the same address (one downstream in two
//! listeners, or the same host on two ports) are told apart. ICMP errors about our echo
//! requests (host unreachable) come through the error queue, quoting the request, whose
//! sequence number fails that probe at once.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Weak};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, socket,
};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::engine::{Shared, Spawner};
use super::sys::{self, Step};

/// How the checker sends ICMP echo requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// An unprivileged ping socket.
    Ping,
    /// A raw socket (root or `CAP_NET_RAW`).
    Raw,
}

/// Starts every echo payload, so a raw socket can tell our replies from others'.
const MARKER: &[u8; 16] = b"udp-fanout-hc\0\0\0";
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

#[derive(Debug)]
struct IcmpSock {
    /// An ICMP socket in tokio's datagram wrapper (see the `sys` module docs).
    fd: UdpSocket,
    kind: IcmpKind,
    /// Our echo identifier (raw sockets; a ping socket's is the kernel's).
    ident: u16,
}

#[derive(Debug)]
enum Slot {
    Untried,
    Open(Arc<IcmpSock>),
    /// Could not open one: the reason, for every probe's error.
    Failed(String),
}

/// The ICMP sockets (v4, v6) and their sequence counters.
#[derive(Debug)]
pub struct IcmpProbes {
    spawner: Spawner,
    socks: [Slot; 2],
    seq: [u16; 2],
    tasks: Vec<AbortHandle>,
}

impl IcmpProbes {
    /// No sockets yet: the first ICMP probe of a family opens its socket.
    pub fn new(spawner: Spawner) -> IcmpProbes {
        IcmpProbes {
            spawner,
            socks: [Slot::Untried, Slot::Untried],
            seq: [0, 0],
            tasks: Vec::new(),
        }
    }

    /// The next sequence number for a probe to an address of family `v6`.
    pub fn next_seq(&mut self, v6: bool) -> u16 {
        let s = &mut self.seq[usize::from(v6)];
        *s = s.wrapping_add(1);
        *s
    }

    /// The socket kind in use for a family, once one is open.
    pub fn kind(&self, v6: bool) -> Option<IcmpKind> {
        match &self.socks[usize::from(v6)] {
            Slot::Open(s) => Some(s.kind),
            _ => None,
        }
    }

    /// Sends echo request `seq` to `dest`.
    pub fn send(&mut self, dest: IpAddr, seq: u16) -> io::Result<()> {
        let v6 = dest.is_ipv6();
        let sock = self.socket(v6)?;
        let pkt = echo_request(v6, sock.kind, sock.ident, seq);
        sys::send_to(&sock.fd, &pkt, SocketAddr::new(dest, 0))
    }

    fn socket(&mut self, v6: bool) -> io::Result<Arc<IcmpSock>> {
        let slot = &mut self.socks[usize::from(v6)];
        if let Slot::Untried = slot {
            *slot = match open(v6, &self.spawner) {
                Ok(sock) => {
                    let sock = Arc::new(sock);
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    tracing::info!("ICMP health checks ({family}) use a {:?} socket", sock.kind);
                    let s = Arc::clone(&sock);
                    self.tasks
                        .push(self.spawner.spawn(move |me| reader(me, v6, s)));
                    Slot::Open(sock)
                }
                Err(e) => {
                    tracing::error!("ICMP health checks cannot run, every probe fails: {e}");
                    Slot::Failed(e.to_string())
                }
            };
        }
        match slot {
            Slot::Open(s) => Ok(Arc::clone(s)),
            Slot::Failed(why) => Err(io::Error::other(why.clone())),
            Slot::Untried => Err(io::Error::other("ICMP socket not opened")),
        }
    }
}

impl Drop for IcmpProbes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A ping socket if allowed, else a raw socket, non-blocking, error queue on.
fn open(v6: bool, spawner: &Spawner) -> io::Result<IcmpSock> {
    let (family, proto) = if v6 {
        (AddressFamily::Inet6, SockProtocol::IcmpV6)
    } else {
        (AddressFamily::Inet, SockProtocol::Icmp)
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let (fd, kind) = match socket(family, SockType::Datagram, flags, proto) {
        Ok(fd) => (fd, IcmpKind::Ping),
        Err(ping) => match socket(family, SockType::Raw, flags, proto) {
            Ok(fd) => (fd, IcmpKind::Raw),
            Err(raw) => {
                return Err(io::Error::other(format!(
                    "ping socket: {ping} (is the group in net.ipv4.ping_group_range?); \
                     raw socket: {raw} (needs CAP_NET_RAW)"
                )));
            }
        },
    };
    if kind == IcmpKind::Ping {
        // Port 0: the kernel picks a free echo identifier now rather than at first send.
        let any = if v6 {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        bind(fd.as_raw_fd(), &SockaddrStorage::from(any))?;
    }
    sys::enable_recverr(&fd, v6)?;
    sys::grow_rcvbuf(&fd);
    let _rt = spawner.enter();
    let fd = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    Ok(IcmpSock {
        fd,
        kind,
        ident: new_ident(),
    })
}

/// An echo identifier for a raw socket: differs between processes and between checkers in
/// one process, so their raw sockets ignore each other's replies.
fn new_ident() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(0x9e37, Ordering::Relaxed);
    (std::process::id() as u16) ^ n
}

/// An echo request: header, then [`MARKER`]. The checksum is ours only for IPv4 raw
/// sockets: the kernel fills it in for ping sockets and for every ICMPv6 socket (it covers
/// the IPv6 pseudo-header, which only the kernel knows).
fn echo_request(v6: bool, kind: IcmpKind, ident: u16, seq: u16) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(MARKER);
    if !v6 && kind == IcmpKind::Raw {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of one of our echo replies in `pkt` as the socket returned it (a raw
/// IPv4 socket's starts with the IP header), or `None` for anything else.
fn parse_reply(v6: bool, kind: IcmpKind, ident: u16, pkt: &[u8]) -> Option<u16> {
    let icmp = if !v6 && kind == IcmpKind::Raw {
        let ihl = usize::from(pkt.first()? & 0x0f) * 4;
        pkt.get(ihl..)?
    } else {
        pkt
    };
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.get(..2)? != [reply, 0] || icmp.get(8..24)? != MARKER {
        return None;
    }
    // A ping socket's replies all are ours; the kernel rewrote the identifier anyway.
    if kind == IcmpKind::Raw && icmp.get(4..6)? != ident.to_be_bytes() {
        return None;
    }
    Some(u16::from_be_bytes([*icmp.get(6)?, *icmp.get(7)?]))
}

/// The sequence number of our echo request an error-queue message quotes. A raw socket
/// also gets errors about others' echo requests: those have another identifier.
fn quoted_seq(v6: bool, kind: IcmpKind, ident: u16, quoted: &[u8]) -> Option<u16> {
    let request = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    if *quoted.first()? != request {
        return None;
    }
    if kind == IcmpKind::Raw && quoted.get(4..6)? != ident.to_be_bytes() {
        return None;
    }
    Some(u16::from_be_bytes([*quoted.get(6)?, *quoted.get(7)?]))
}

/// Reads echo replies and errors off one ICMP socket and hands them to the engine.
async fn reader(me: Weak<Shared>, v6: bool, sock: Arc<IcmpSock>) {
    let mut buf = vec![0u8; 2048];
    let mut quoted = [0u8; 64];
    let data = || {
        sys::step_of(sock.fd.try_recv_from(&mut buf), |(n, from)| {
            let pkt = buf.get(..n).unwrap_or(&[]);
            let Some(seq) = parse_reply(v6, sock.kind, sock.ident, pkt) else {
                return Step::More;
            };
            let Some(shared) = me.upgrade() else {
                return Step::Stop;
            };
            shared.lock().on_icmp_reply(from.ip(), seq);
            Step::More
        })
    };
    let errors = || {
        sys::error_step(&sock.fd, &mut quoted, |e, quoted| {
            let Some(seq) = quoted_seq(v6, sock.kind, sock.ident, quoted) else {
                return Step::More;
            };
            let Some(shared) = me.upgrade() else {
                return Step::Stop;
            };
            shared.lock().on_icmp_error(e.dest.ip(), seq, e.errno);
            Step::More
        })
    };
    sys::serve(&sock.fd, data, errors).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let p = echo_request(false, IcmpKind::Raw, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example sums to 0xddf2, checksum its complement.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    fn reply_of(mut req: [u8; 24], v6: bool) -> [u8; 24] {
        req[0] = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        req
    }

    #[test]
    fn parses_our_replies_only() {
        let r = reply_of(echo_request(true, IcmpKind::Ping, 0, 42), true);
        assert_eq!(parse_reply(true, IcmpKind::Ping, 0, &r), Some(42));
        // Our own request, looped back to a raw socket, is not a reply.
        let req = echo_request(false, IcmpKind::Raw, 9, 42);
        assert_eq!(parse_reply(false, IcmpKind::Ping, 9, &req), None);
        // Raw IPv4: after the IP header, and only with our identifier.
        let mut ip = vec![0x45u8];
        ip.extend([0u8; 19]);
        ip.extend(reply_of(req, false));
        assert_eq!(parse_reply(false, IcmpKind::Raw, 9, &ip), Some(42));
        assert_eq!(parse_reply(false, IcmpKind::Raw, 10, &ip), None);
        // Someone else's ping (no marker).
        let mut other = reply_of(req, false);
        other[8] = b'x';
        assert_eq!(parse_reply(false, IcmpKind::Ping, 9, &other), None);
        assert_eq!(parse_reply(false, IcmpKind::Ping, 9, &other[..6]), None);
    }

    #[test]
    fn quoted_requests_give_their_sequence() {
        let req = echo_request(false, IcmpKind::Raw, 5, 513);
        assert_eq!(quoted_seq(false, IcmpKind::Raw, 5, &req), Some(513));
        assert_eq!(
            quoted_seq(false, IcmpKind::Raw, 6, &req),
            None,
            "not our identifier"
        );
        assert_eq!(quoted_seq(false, IcmpKind::Ping, 6, &req), Some(513));
        assert_eq!(quoted_seq(true, IcmpKind::Raw, 5, &req), None);
        assert_eq!(quoted_seq(false, IcmpKind::Raw, 5, &req[..4]), None);
    }
}
