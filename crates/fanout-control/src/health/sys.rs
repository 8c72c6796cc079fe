//! Socket plumbing shared by the UDP and ICMP probers: address forms, the error queue
//! (`IP_RECVERR` / `IPV6_RECVERR` + `MSG_ERRQUEUE`), and the reader loop.
//!
//! Why the error queue: the probers use a few *unconnected* sockets for all targets, so an
//! ICMP error cannot surface as a connected socket's `ECONNREFUSED` (which would need one
//! socket per target). With `IP_RECVERR` the kernel queues every ICMP error for the socket
//! with the failed datagram's original destination as the message's name, which is exactly
//! what is needed to fail the right probe at once.
//!
//! One kernel behaviour everything here works around: with `IP_RECVERR` the kernel also sets
//! the socket's pending error, which the next `recvfrom` *or `sendto`* returns once. It
//! belongs to whichever target caused it, not to the call that sees it, so readers skip it
//! and senders retry once (the failed call sent nothing).
//!
//! Every socket, ICMP ones included, is driven as a `tokio::net::UdpSocket`: std's
//! `UdpSocket` is a plain datagram-socket handle (`sendto`, `recvfrom` and readiness do not
//! care about the protocol), and tokio's safe wrapper of it spares this
//! `#![forbid(unsafe_code)]` crate `AsyncFd`'s now-`unsafe` registration. Sends use
//! `sendto` on the raw descriptor ([`send_to`]), bypassing tokio's write readiness, which is
//! not yet known for a socket opened in the same step.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendto, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Messages a reader handles before it lets other tasks run.
const BUDGET: usize = 256;

/// `addr` as probes are sent: IPv4-mapped IPv6 as plain IPv4, so it goes out of the IPv4
/// socket (the IPv6 ones are IPv6-only).
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// `addr` as replies are matched: unmapped, and IPv6 without flow label or scope (a reply's
/// source carries the interface's scope id, a configured address often not).
pub fn match_key(addr: SocketAddr) -> SocketAddr {
    match unmapped(addr) {
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0)),
        v4 => v4,
    }
}

/// [`match_key`] for an address without a port (ICMP).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match_key(SocketAddr::new(ip, 0)).ip()
}

/// A socket address from the kernel, as std's type.
pub fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    s.as_sockaddr_in6()
        .map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
}

/// Asks the kernel to queue ICMP errors on `fd` (see the module docs).
pub fn enable_recverr(fd: &impl AsFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt(fd, sockopt::Ipv6RecvErr, &true)?;
    } else {
        setsockopt(fd, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

/// Receive buffer asked for: 10,000 targets a second answer at 10 a millisecond, and a
/// runtime stalled for a while (a busy machine) must not overflow it: replies dropped there
/// would be counted as the downstreams' failures.
pub const RCVBUF: usize = 4 << 20;

/// Sets `fd`'s receive buffer to [`RCVBUF`]: beyond `net.core.rmem_max` when privileged
/// (`SO_RCVBUFFORCE`), else as far as that cap allows. Best effort.
pub fn grow_rcvbuf(fd: &impl AsFd) {
    if setsockopt(fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
        setsockopt(fd, sockopt::RcvBuf, &RCVBUF).ok();
    }
}

/// Sends `buf` to `dest` from the non-blocking `sock`, once more if the first call fails: a
/// first error may be another probe's pending ICMP error, which fails a send without sending
/// (module docs); a second is this probe's own.
pub fn send_to(sock: &impl AsRawFd, buf: &[u8], dest: SocketAddr) -> io::Result<()> {
    let to = SockaddrStorage::from(dest);
    let send = || sendto(sock.as_raw_fd(), buf, &to, MsgFlags::empty());
    send()
        .or_else(|_| send())
        .map(drop)
        .map_err(io::Error::from)
}

/// One message from a socket's error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedError {
    /// Where the datagram that failed was going (its destination address and port).
    pub dest: SocketAddr,
    /// The error, e.g. `ECONNREFUSED` for port unreachable.
    pub errno: i32,
    /// Bytes of the failed datagram's payload copied into the caller's buffer (for ICMP
    /// probes: our echo request, whose sequence number says which probe failed).
    pub len: usize,
}

/// Takes one message off `fd`'s error queue, copying the failed datagram's payload into
/// `payload`. `Ok(None)`: a message without a usable destination (skipped);
/// `Err(EAGAIN)`: the queue is empty.
pub fn recv_error(fd: &impl AsRawFd, payload: &mut [u8]) -> nix::Result<Option<QueuedError>> {
    let mut iov = [IoSliceMut::new(payload)];
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE,
    )?;
    let mut errno = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _) => {
                // Only errors about a datagram we sent: ICMP/ICMPv6 from the path, or local
                // ones (no route, message too long). The kernel sends no other origins on a
                // socket without timestamping or zerocopy.
                let origin = e.ee_origin;
                if matches!(
                    origin,
                    libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6 | libc::SO_EE_ORIGIN_LOCAL
                ) {
                    errno = Some(e.ee_errno as i32);
                }
            }
            _ => {}
        }
    }
    let dest = msg.address.as_ref().and_then(to_std);
    let len = msg.bytes;
    Ok(match (dest, errno) {
        (Some(dest), Some(errno)) => Some(QueuedError { dest, errno, len }),
        _ => None,
    })
}

/// What a reader step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Handled one message; there may be more.
    More,
    /// Nothing left (the call would block).
    Empty,
    /// The checker is gone: the reader ends.
    Stop,
}

/// A step from a receive call's outcome: would-block is [`Step::Empty`]; any other error is
/// a pending error surfacing (see the module docs) and is skipped.
pub fn step_of<T>(r: io::Result<T>, handle: impl FnOnce(T) -> Step) -> Step {
    match r {
        Ok(v) => handle(v),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Empty,
        Err(_) => Step::More,
    }
}

/// Takes one message off `sock`'s error queue if tokio saw it ready ([`recv_error`]); as a
/// [`Step`] through `handle`.
pub fn error_step(
    sock: &UdpSocket,
    payload: &mut [u8],
    handle: impl FnOnce(QueuedError, &[u8]) -> Step,
) -> Step {
    let r = sock.try_io(Interest::ERROR, || {
        recv_error(sock, payload).map_err(io::Error::from)
    });
    step_of(r, |e| match e {
        Some(e) => handle(e, payload.get(..e.len).unwrap_or(&[])),
        None => Step::More,
    })
}

/// Serves one socket until a step says [`Step::Stop`]: on every readiness it drains the
/// receive queue (`data`) and the error queue (`errors`) until both report [`Step::Empty`],
/// at most [`BUDGET`] rounds before yielding, so one flooded socket cannot starve the
/// runtime. tokio's `try_*` calls clear its (edge-triggered) readiness on would-block, so
/// the next wait sleeps until the kernel has more.
pub async fn serve(
    sock: &UdpSocket,
    mut data: impl FnMut() -> Step,
    mut errors: impl FnMut() -> Step,
) {
    loop {
        if let Err(e) = sock.ready(Interest::READABLE | Interest::ERROR).await {
            tracing::warn!("health check socket failed, its reader stops: {e}");
            return;
        }
        let (mut data_empty, mut errors_empty) = (false, false);
        for _ in 0..BUDGET {
            if !data_empty && advance(data(), &mut data_empty) {
                return;
            }
            if !errors_empty && advance(errors(), &mut errors_empty) {
                return;
            }
            if data_empty && errors_empty {
                break;
            }
        }
        if !(data_empty && errors_empty) {
            tokio::task::yield_now().await;
        }
    }
}

/// Notes an [`Step::Empty`] in `empty`; true on [`Step::Stop`].
fn advance(step: Step, empty: &mut bool) -> bool {
    match step {
        Step::More => false,
        Step::Empty => {
            *empty = true;
            false
        }
        Step::Stop => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let m: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        assert_eq!(unmapped(m), "127.0.0.1:53".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }

    #[test]
    fn match_keys_drop_scope_and_flow() {
        let a = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 7, 3));
        let b = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 0));
        assert_eq!(match_key(a), b);
    }
}
