//! Ancillary data (control messages) on UDP sockets: the packet-info of received datagrams (the
//! address a client sent to, needed to answer from it on wildcard listeners), UDP GRO segment
//! sizes, and the source-address and GSO options of sent datagrams.

use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of control buffer per message: room for one packet-info, one segment-size and one
/// timestamp message with headers and padding (32 + 24 + 32), rounded up generously.
pub(crate) const CMSG_BUF_LEN: usize = 128;

/// A control-message buffer aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_BUF_LEN]);

impl CmsgBuf {
    pub(crate) const ZERO: CmsgBuf = CmsgBuf([0; CMSG_BUF_LEN]);
}

/// What was found in a received datagram's control messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvInfo {
    /// The destination address of the datagram (IP_PKTINFO / IPV6_PKTINFO), when enabled.
    pub local_ip: Option<IpAddr>,
    /// The size of each coalesced datagram when UDP GRO merged several (UDP_GRO).
    pub gro_segment: Option<u16>,
    /// When the kernel received the datagram, in nanoseconds since the Unix epoch
    /// (SO_TIMESTAMPNS, when enabled with [`crate::sys::socket::set_rx_timestamps`]).
    pub rx_time_ns: Option<u64>,
}

/// Parses the control messages of one received message.
///
/// # Safety
/// `hdr.msg_control` / `msg_controllen` must describe a buffer the kernel filled (as after
/// `recvmmsg`), valid for reads for the duration of the call.
pub(crate) unsafe fn parse(hdr: &libc::msghdr) -> RecvInfo {
    let mut info = RecvInfo::default();
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return info;
    }
    // SAFETY: the caller guarantees the header describes a kernel-filled control buffer; the
    // CMSG_* macros stay within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return complete headers inside the buffer.
        let c = unsafe { &*cmsg };
        // SAFETY: CMSG_DATA points at the payload of this header, inside the buffer.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        let payload_len = c.cmsg_len as usize - (data as usize - cmsg as usize);
        match (c.cmsg_level, c.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
                if payload_len >= mem::size_of::<libc::in_pktinfo>() =>
            {
                // SAFETY: length checked; read_unaligned because cmsg data has no alignment
                // guarantee for the struct.
                let pi: libc::in_pktinfo = unsafe { std::ptr::read_unaligned(data.cast()) };
                info.local_ip = Some(IpAddr::V4(Ipv4Addr::from(pi.ipi_addr.s_addr.to_ne_bytes())));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if payload_len >= mem::size_of::<libc::in6_pktinfo>() =>
            {
                // SAFETY: as above.
                let pi: libc::in6_pktinfo = unsafe { std::ptr::read_unaligned(data.cast()) };
                info.local_ip = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
            }
            (libc::SOL_UDP, libc::UDP_GRO) if payload_len >= mem::size_of::<libc::c_int>() => {
                // SAFETY: as above.
                let seg: libc::c_int = unsafe { std::ptr::read_unaligned(data.cast()) };
                info.gro_segment = u16::try_from(seg).ok();
            }
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                if payload_len >= mem::size_of::<libc::timespec>() =>
            {
                // SAFETY: as above.
                let ts: libc::timespec = unsafe { std::ptr::read_unaligned(data.cast()) };
                info.rx_time_ns = u64::try_from(ts.tv_sec)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000_000))
                    .and_then(|ns| ns.checked_add(u64::try_from(ts.tv_nsec).ok()?));
            }
            _ => {}
        }
        // SAFETY: hdr and cmsg are valid as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    info
}

/// Options of one datagram to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOpts {
    /// Source address to send from (for replies on wildcard-bound sockets).
    pub src_ip: Option<IpAddr>,
    /// Segment size for UDP GSO: the payload is cut into datagrams of this size.
    pub gso_segment: Option<u16>,
}

/// Writes the control messages for `opts` into `buf` and returns the length to put in
/// `msg_controllen` (0 when there is nothing to send).
///
/// `hdr` is scratch: only its control fields are used, to walk the buffer with the CMSG macros.
pub(crate) fn build(opts: &SendOpts, buf: &mut CmsgBuf, hdr: &mut libc::msghdr) -> usize {
    if opts.src_ip.is_none() && opts.gso_segment.is_none() {
        return 0;
    }
    buf.0.fill(0);
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    hdr.msg_controllen = CMSG_BUF_LEN as _;
    let mut used = 0usize;
    // SAFETY: hdr describes `buf`, which is CMSG_BUF_LEN bytes, aligned, and large enough for the
    // at most two small messages written here (checked by the debug assertion below and by the
    // unit test); CMSG_NXTHDR returns null rather than running past the buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        if let Some(ip) = opts.src_ip {
            match ip {
                IpAddr::V4(v4) => {
                    let pi = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(v4.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    used += put(cmsg, libc::IPPROTO_IP, libc::IP_PKTINFO, &pi);
                }
                IpAddr::V6(v6) => {
                    let pi = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: v6.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    used += put(cmsg, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pi);
                }
            }
            hdr.msg_controllen = used as _;
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            hdr.msg_controllen = CMSG_BUF_LEN as _;
        }
        if let Some(seg) = opts.gso_segment {
            if cmsg.is_null() {
                // Cannot happen with CMSG_BUF_LEN = 128; keep what fits rather than overflow.
                return used;
            }
            used += put(cmsg, libc::SOL_UDP, libc::UDP_SEGMENT, &seg);
        }
    }
    debug_assert!(used <= CMSG_BUF_LEN);
    used
}

/// Points `h`'s control fields at the first `len` bytes of `buf` (a [`build`] result, or the
/// whole buffer for the kernel to fill), or at nothing when `len` is 0: the message then
/// carries no control data. Per message on the hot path, hence inlined.
#[inline]
pub(crate) fn set_control(h: &mut libc::msghdr, buf: &mut CmsgBuf, len: usize) {
    if len == 0 {
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
    } else {
        h.msg_control = buf.0.as_mut_ptr().cast();
        h.msg_controllen = len as _;
    }
}

/// Writes one control message at `cmsg` and returns its CMSG_SPACE.
///
/// # Safety
/// `cmsg` must point to at least `CMSG_SPACE(size_of::<T>())` writable bytes, aligned for
/// `cmsghdr`.
unsafe fn put<T: Copy>(cmsg: *mut libc::cmsghdr, level: i32, ty: i32, value: &T) -> usize {
    let size = mem::size_of::<T>() as u32;
    // SAFETY: the caller guarantees room and alignment for the header and payload.
    unsafe {
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = ty;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<T>(), *value);
        libc::CMSG_SPACE(size) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr_for(buf: &mut CmsgBuf, len: usize) -> libc::msghdr {
        // SAFETY: msghdr is plain old data.
        let mut h: libc::msghdr = unsafe { mem::zeroed() };
        h.msg_control = buf.0.as_mut_ptr().cast();
        h.msg_controllen = len as _;
        h
    }

    #[test]
    fn build_then_parse_round_trips_what_parse_understands() {
        let mut buf = CmsgBuf::ZERO;
        // SAFETY: plain old data.
        let mut scratch: libc::msghdr = unsafe { mem::zeroed() };
        let opts = SendOpts {
            src_ip: Some("::1".parse().unwrap()),
            gso_segment: Some(1200),
        };
        let len = build(&opts, &mut buf, &mut scratch);
        assert!(len > 0 && len <= CMSG_BUF_LEN);
        // The send-side IPV6_PKTINFO has the same layout as the receive side, so parse reads the
        // address back; UDP_SEGMENT is not UDP_GRO, so it is ignored by parse.
        let h = hdr_for(&mut buf, len);
        // SAFETY: h describes a buffer we just filled.
        let info = unsafe { parse(&h) };
        assert_eq!(info.local_ip, Some("::1".parse().unwrap()));
        assert_eq!(info.gro_segment, None);
    }

    #[test]
    fn nothing_to_send_is_empty() {
        let mut buf = CmsgBuf::ZERO;
        // SAFETY: plain old data.
        let mut scratch: libc::msghdr = unsafe { mem::zeroed() };
        assert_eq!(build(&SendOpts::default(), &mut buf, &mut scratch), 0);
        let h = hdr_for(&mut buf, 0);
        // SAFETY: empty control buffer.
        assert_eq!(unsafe { parse(&h) }, RecvInfo::default());
    }
}
