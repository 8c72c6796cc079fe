//! Creating and tuning the plane's UDP sockets.
//!
//! Listener sockets (one per worker, shared through SO_REUSEPORT), egress sockets and the
//! sessions' upstream sockets are all made here, non-blocking, with their options set before
//! `bind` so they apply from the first datagram. socket2 covers most options; the few it
//! lacks (forced buffer sizes, packet info, UDP GRO, receive timestamps, `SO_MEMINFO`) are raw
//! `setsockopt`/`getsockopt` calls.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Buffer sizes asked of the kernel, and what it granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferSizes {
    /// SO_RCVBUF as granted (the kernel reports twice what it accounts for payload).
    pub recv: usize,
    /// SO_SNDBUF as granted.
    pub send: usize,
}

/// Options for a socket of the plane.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// Requested SO_RCVBUF in bytes (0 = kernel default).
    pub recv_buffer: usize,
    /// Requested SO_SNDBUF in bytes (0 = kernel default).
    pub send_buffer: usize,
    /// Share the address with the other workers (SO_REUSEPORT).
    pub reuse_port: bool,
    /// Ask for the destination address of each datagram (IP_PKTINFO / IPV6_RECVPKTINFO).
    pub pktinfo: bool,
}

/// Checks that nobody else holds `addr` by binding it once without SO_REUSEPORT. Another
/// process's SO_REUSEPORT group would otherwise silently share our traffic.
pub fn probe_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
}

/// Creates a non-blocking UDP socket bound to `addr`.
pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<(UdpSocket, BufferSizes)> {
    bind_with(addr, opts, false)
}

/// Like [`bind`], with IP_FREEBIND: the address need not be configured on this host (yet).
pub fn bind_freebind(
    addr: SocketAddr,
    opts: &SocketOptions,
) -> io::Result<(UdpSocket, BufferSizes)> {
    bind_with(addr, opts, true)
}

fn bind_with(
    addr: SocketAddr,
    opts: &SocketOptions,
    freebind: bool,
) -> io::Result<(UdpSocket, BufferSizes)> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    if addr.is_ipv6() {
        // A `[::]` listener serves IPv6 only; list `0.0.0.0` separately for IPv4. This keeps
        // addresses in logs and metrics unambiguous.
        s.set_only_v6(true)?;
    }
    if opts.reuse_port {
        s.set_reuse_port(true)?;
    }
    if opts.pktinfo {
        set_pktinfo(&s, addr.is_ipv6())?;
    }
    if freebind {
        if addr.is_ipv6() {
            s.set_freebind_v6(true)?;
        } else {
            s.set_freebind_v4(true)?;
        }
    }
    let sizes = set_buffers(&s, opts.recv_buffer, opts.send_buffer)?;
    s.bind(&addr.into())?;
    Ok((s.into(), sizes))
}

/// Lets further SO_REUSEPORT sockets bind `sock`'s address once it is bound. Binding port 0
/// without SO_REUSEPORT and sharing afterwards gets a port nobody else holds: the kernel's
/// choice of a port for a SO_REUSEPORT socket passes over ports that other SO_REUSEPORT
/// sockets of the same user hold, and would join their group. Linux adds the later sockets to
/// a group with this one all the same.
pub fn share_port(sock: &UdpSocket) -> io::Result<()> {
    socket2::SockRef::from(sock).set_reuse_port(true)
}

/// Creates a non-blocking, unbound-port socket of `addr`'s family for sending to downstreams.
pub fn egress(family_of: SocketAddr, opts: &SocketOptions) -> io::Result<(UdpSocket, BufferSizes)> {
    let local: SocketAddr = if family_of.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    bind(
        local,
        &SocketOptions {
            reuse_port: false,
            pktinfo: false,
            ..*opts
        },
    )
}

/// Creates a non-blocking upstream socket for sessions, bound to an ephemeral port. `dual`:
/// an IPv6 socket that also reaches IPv4 downstreams through mapped addresses, so one pool of
/// ports serves both families.
pub fn upstream(dual: bool, recv_buffer: usize) -> io::Result<UdpSocket> {
    let (domain, local): (Domain, SocketAddr) = if dual {
        (Domain::IPV6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
    } else {
        (Domain::IPV4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    if dual {
        s.set_only_v6(false)?;
    }
    if recv_buffer > 0 {
        s.set_recv_buffer_size(recv_buffer)?;
    }
    s.bind(&local.into())?;
    Ok(s.into())
}

/// Enables UDP GRO on a receiving socket: the kernel may hand over several datagrams of one
/// flow, of equal size, in one buffer, with their size in a `UDP_GRO` control message
/// ([`crate::sys::RecvInfo::gro_segment`]). Returns false when the kernel does not support it.
pub fn set_gro(sock: &UdpSocket, on: bool) -> bool {
    setsockopt_int(sock, libc::SOL_UDP, libc::UDP_GRO, on.into()).is_ok()
}

/// Asks the kernel to stamp every datagram received on `sock` with the time it arrived
/// (`SO_TIMESTAMPNS`, wall-clock nanoseconds, in [`crate::sys::RecvInfo::rx_time_ns`]), so a
/// receiver can tell network latency apart from its own wake-up delay. Used by the benchmark
/// tools; the data plane does not need it.
pub fn set_rx_timestamps(sock: &impl AsFd) -> io::Result<()> {
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

fn set_pktinfo(s: &Socket, v6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    setsockopt_int(s, level, name, one)
}

/// Sets socket buffers, forcing past `net.core.[rw]mem_max` when we have CAP_NET_ADMIN and
/// falling back to the capped value otherwise.
fn set_buffers(s: &Socket, recv: usize, send: usize) -> io::Result<BufferSizes> {
    if recv > 0 {
        let v = recv.min(i32::MAX as usize / 2) as libc::c_int;
        if setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_err() {
            s.set_recv_buffer_size(recv)?;
        }
    }
    if send > 0 {
        let v = send.min(i32::MAX as usize / 2) as libc::c_int;
        if setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v).is_err() {
            s.set_send_buffer_size(send)?;
        }
    }
    Ok(BufferSizes {
        recv: s.recv_buffer_size()?,
        send: s.send_buffer_size()?,
    })
}

/// Sets an integer (or boolean) socket option: the one raw `setsockopt` behind every option
/// socket2 does not cover.
fn setsockopt_int(s: &impl AsFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer/length pair describing one c_int that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams the kernel dropped on this socket because its receive buffer was full
/// (`SK_MEMINFO_DROPS`). These never reached udp-fanout, so they are reported apart from its
/// own accounting.
pub fn kernel_drops(sock: &impl AsFd) -> Option<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: a valid fd and an output buffer whose length we pass; the kernel writes at most
    // `len` bytes and updates it.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 && len as usize > SK_MEMINFO_DROPS * 4 {
        Some(u64::from(info[SK_MEMINFO_DROPS]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: SocketOptions = SocketOptions {
        recv_buffer: 1 << 20,
        send_buffer: 1 << 20,
        reuse_port: true,
        pktinfo: true,
    };

    #[test]
    fn reuse_port_group_shares_an_address_but_probe_sees_it_taken() {
        let (a, _) = bind("127.0.0.1:0".parse().unwrap(), &OPTS).unwrap();
        let addr = a.local_addr().unwrap();
        let (b, _) = bind(addr, &OPTS).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert!(probe_free(addr).is_err());
        drop((a, b));
        assert!(probe_free(addr).is_ok());
    }

    #[test]
    fn buffers_are_set_and_drops_readable() {
        let (a, sizes) = bind("127.0.0.1:0".parse().unwrap(), &OPTS).unwrap();
        assert!(sizes.recv > 0 && sizes.send > 0);
        assert_eq!(kernel_drops(&a), Some(0));
    }

    #[test]
    fn egress_matches_family() {
        let (s, _) = egress("[::1]:9".parse().unwrap(), &OPTS).unwrap();
        assert!(s.local_addr().unwrap().is_ipv6());
        let (s, _) = egress("127.0.0.1:9".parse().unwrap(), &OPTS).unwrap();
        assert!(s.local_addr().unwrap().is_ipv4());
    }
}
