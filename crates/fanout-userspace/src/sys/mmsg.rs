//! What `recvmmsg` ([`RecvBatch`](super::RecvBatch)) and `sendmmsg`
//! ([`SendQueue`](super::SendQueue)) both keep per message: the kernel's message header and the
//! address and control buffers it points at, allocated once and re-aimed before every call.
//!
//! The iovecs are not here: the two sides lay them out differently (one slot per message to
//! receive into, up to `MAX_GSO_SEGMENTS` borrowed payloads per message to send).

use std::mem;

use super::cmsg::{self, CmsgBuf};
use super::sockaddr;

/// An iovec pointing at nothing, for initialising arrays.
pub(crate) const NULL_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// The size of a whole `sockaddr_storage`: room for any source address the kernel reports.
pub(crate) const SOCKADDR_STORAGE_LEN: libc::socklen_t =
    mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// Header `i` of `hdrs` points at `names[i]` and `ctrl[i]` once [`aim`](Self::aim)ed.
///
/// Not `Send` on its own (the headers hold raw pointers, into these buffers and into the
/// owner's iovecs); the owner, which holds everything they point at, says why it may move.
pub(crate) struct MsgHeaders {
    pub(crate) names: Box<[libc::sockaddr_storage]>,
    pub(crate) ctrl: Box<[CmsgBuf]>,
    pub(crate) hdrs: Box<[libc::mmsghdr]>,
}

impl MsgHeaders {
    /// Buffers for `capacity` messages, all zero.
    pub(crate) fn new(capacity: usize) -> Self {
        MsgHeaders {
            names: vec![sockaddr::zeroed(); capacity].into_boxed_slice(),
            ctrl: vec![CmsgBuf::ZERO; capacity].into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            hdrs: vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; capacity].into_boxed_slice(),
        }
    }

    /// How many messages one call can carry.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Points header `i` at its own address buffer (`namelen` bytes of it: the destination to
    /// send to, or room for the kernel to write the source), at the `iovlen` iovecs from `iov`,
    /// and at its own control buffer with `ctrl_len` bytes in use (none when 0). Clears the
    /// flags the kernel returns.
    ///
    /// Per message on the hot path: a few stores, inlined.
    #[inline]
    pub(crate) fn aim(
        &mut self,
        i: usize,
        namelen: libc::socklen_t,
        iov: *mut libc::iovec,
        iovlen: usize,
        ctrl_len: usize,
    ) {
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = iov;
        h.msg_iovlen = iovlen;
        h.msg_flags = 0;
        cmsg::set_control(h, &mut self.ctrl[i], ctrl_len);
    }
}
