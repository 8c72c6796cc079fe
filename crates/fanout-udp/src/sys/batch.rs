//! Batched datagram I/O: `recvmmsg` into preallocated slots and `sendmmsg` from borrowed
//! buffers.
//!
//! All memory (datagram slots, iovecs, addresses, control buffers, message headers) is
//! allocated once per worker; a batch costs one system call and no allocation. Sends borrow the
//! bytes they send (usually straight from the receive slots, so a mirrored datagram is never
//! copied), which the [`Tx`] lifetime enforces.

use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::cmsg::{self, CmsgBuf, RecvInfo, SendOpts};
use super::sockaddr;

/// Largest UDP payload over IPv6 without jumbograms (IPv4's limit is 65,507).
pub const MAX_DATAGRAM: usize = 65_527;

/// Receive slot size: one byte more than the largest datagram, so a datagram that fills the
/// slot exactly can only be a truncated one (and MSG_TRUNC says so as well).
pub const SLOT_SIZE: usize = MAX_DATAGRAM + 1;

/// One received datagram (or, with UDP GRO, several same-sized ones coalesced).
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// Who sent it.
    pub src: SocketAddr,
    /// Control-message information (destination address, GRO segment size).
    pub info: RecvInfo,
    /// The kernel cut it short: it did not fit the slot.
    pub truncated: bool,
}

/// Preallocated state for `recvmmsg`.
pub struct RecvBatch {
    slot_size: usize,
    bufs: Box<[u8]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[CmsgBuf]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` only ever point into buffers owned by this
// same struct (they are rewritten before each system call), so moving the struct to another
// thread moves everything they refer to with it.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.hdrs.len())
            .field("slot_size", &self.slot_size)
            .field("len", &self.len)
            .finish()
    }
}

impl RecvBatch {
    /// Room for `capacity` datagrams of up to `slot_size` bytes each.
    pub fn new(capacity: usize, slot_size: usize) -> Self {
        let capacity = capacity.max(1);
        RecvBatch {
            slot_size,
            bufs: vec![0u8; capacity * slot_size].into_boxed_slice(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ]
            .into_boxed_slice(),
            names: vec![sockaddr::zeroed(); capacity].into_boxed_slice(),
            ctrl: vec![CmsgBuf::ZERO; capacity].into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            hdrs: vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// How many datagrams one call can return.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to `capacity` datagrams without blocking. Returns how many arrived; 0 means
    /// the socket had nothing (EAGAIN).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.len = 0;
        self.recv_append(fd)
    }

    /// Receives into the slots after the datagrams already held, keeping those: several
    /// sockets with a few datagrams each fill one batch, which is then processed (and answered
    /// with one `sendmmsg`) together. Returns how many arrived; 0 when the socket had nothing
    /// or the batch is already full.
    pub fn recv_append(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let start = self.len;
        let room = self.hdrs.len() - start;
        if room == 0 {
            return Ok(0);
        }
        let base = self.bufs.as_mut_ptr();
        for i in start..self.hdrs.len() {
            // SAFETY: i * slot_size + slot_size <= bufs.len() by construction.
            self.iovs[i].iov_base = unsafe { base.add(i * self.slot_size) }.cast();
            self.iovs[i].iov_len = self.slot_size;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
            h.msg_controllen = cmsg::CMSG_BUF_LEN as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        loop {
            // SAFETY: headers start.. point at buffers owned by self that stay alive and
            // unaliased for the call; the count stays within the array.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(start),
                    room as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                self.len = start + rc as usize;
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// Forgets the datagrams held.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// True when no slot is free.
    pub fn is_full(&self) -> bool {
        self.len == self.hdrs.len()
    }

    /// Number of datagrams from the last [`recv`](Self::recv).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th datagram of the last receive. `None` if `i` is out of range or the kernel
    /// reported a source address that is not IPv4/IPv6.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        let src = sockaddr::read(&self.names[i], h.msg_hdr.msg_namelen)?;
        let len = (h.msg_len as usize).min(self.slot_size);
        let start = i * self.slot_size;
        // SAFETY: the header's control pointer/length were set by us and updated by the kernel
        // for this message.
        let info = unsafe { cmsg::parse(&h.msg_hdr) };
        Some(Datagram {
            data: &self.bufs[start..start + len],
            src,
            info,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len >= self.slot_size,
        })
    }
}

/// The outcome of one queued datagram after a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Handed to the kernel.
    Sent,
    /// The socket stayed full past the flush's timeout.
    BufferFull,
    /// The kernel refused this datagram (errno).
    Error(i32),
}

/// Preallocated state for `sendmmsg`. Use it through [`SendQueue::tx`].
pub struct SendQueue {
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[CmsgBuf]>,
    hdrs: Box<[libc::mmsghdr]>,
    tags: Box<[u64]>,
    len: usize,
}

// SAFETY: see RecvBatch: the pointers are into the struct's own buffers, or into caller data
// borrowed for the lifetime of a `Tx`, which cannot outlive the borrow of the queue.
unsafe impl Send for SendQueue {}

impl std::fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendQueue")
            .field("capacity", &self.hdrs.len())
            .field("len", &self.len)
            .finish()
    }
}

impl SendQueue {
    /// Room for `capacity` datagrams per system call.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        SendQueue {
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ]
            .into_boxed_slice(),
            names: vec![sockaddr::zeroed(); capacity].into_boxed_slice(),
            ctrl: vec![CmsgBuf::ZERO; capacity].into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
            hdrs: vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; capacity].into_boxed_slice(),
            tags: vec![0; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// Starts a batch whose payloads borrow data living for `'d`.
    pub fn tx<'d>(&mut self) -> Tx<'_, 'd> {
        self.len = 0;
        Tx {
            q: self,
            _data: PhantomData,
        }
    }
}

/// A batch being filled; its payloads borrow data for `'d`. Dropping it discards what was not
/// flushed.
pub struct Tx<'q, 'd> {
    q: &'q mut SendQueue,
    _data: PhantomData<&'d [u8]>,
}

impl std::fmt::Debug for Tx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("queued", &self.q.len).finish()
    }
}

impl<'d> Tx<'_, 'd> {
    /// Number of datagrams queued.
    pub fn len(&self) -> usize {
        self.q.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.len == 0
    }

    /// True when the next push would not fit.
    pub fn is_full(&self) -> bool {
        self.q.len == self.q.hdrs.len()
    }

    /// Queues `data` for `dst`. `tag` comes back with the datagram's result in
    /// [`flush`](Self::flush). Returns false (and queues nothing) when the batch is full.
    pub fn push(&mut self, dst: &SocketAddr, data: &'d [u8], opts: &SendOpts, tag: u64) -> bool {
        let q = &mut *self.q;
        let i = q.len;
        if i == q.hdrs.len() {
            return false;
        }
        let namelen = sockaddr::write(dst, &mut q.names[i]);
        // The kernel only reads from iov_base for sends; the cast to *mut is what the C type
        // demands.
        q.iovs[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let h = &mut q.hdrs[i].msg_hdr;
        h.msg_name = (&mut q.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = &mut q.iovs[i];
        h.msg_iovlen = 1;
        h.msg_flags = 0;
        let clen = cmsg::build(opts, &mut q.ctrl[i], h);
        if clen == 0 {
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        } else {
            h.msg_control = q.ctrl[i].0.as_mut_ptr().cast();
            h.msg_controllen = clen as _;
        }
        q.tags[i] = tag;
        q.len += 1;
        true
    }

    /// Sends everything queued on `fd`, calling `on_result(tag, bytes, result)` once per
    /// datagram, in order. When the socket is full, waits up to `wait` in total for room, then
    /// reports the rest as [`SendResult::BufferFull`]. A datagram the kernel refuses is reported
    /// and skipped; the others still go out. The batch is empty afterwards.
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        wait: Duration,
        mut on_result: impl FnMut(u64, usize, SendResult),
    ) {
        let q = &mut *self.q;
        let n = q.len;
        let mut start = 0usize;
        let mut waited = false;
        while start < n {
            // SAFETY: headers start..n were filled by push and point at queue-owned buffers and
            // at payloads borrowed for 'd, which outlives this Tx.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    q.hdrs.as_mut_ptr().add(start),
                    (n - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                for i in start..start + rc as usize {
                    on_result(q.tags[i], q.iovs[i].iov_len, SendResult::Sent);
                }
                start += rc as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error().unwrap_or(0) {
                libc::EINTR => {}
                libc::EAGAIN if !waited && wait_writable(fd, wait) => waited = true,
                libc::EAGAIN => {
                    for i in start..n {
                        on_result(q.tags[i], q.iovs[i].iov_len, SendResult::BufferFull);
                    }
                    start = n;
                }
                errno => {
                    on_result(
                        q.tags[start],
                        q.iovs[start].iov_len,
                        SendResult::Error(errno),
                    );
                    start += 1;
                }
            }
        }
        q.len = 0;
    }
}

/// Waits until `fd` is writable, at most `wait`. True if it became writable.
fn wait_writable(fd: BorrowedFd<'_>, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0 && pfd.revents & libc::POLLOUT != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn send_batch_then_receive_batch_keeps_boundaries_and_bytes() {
        let (tx_sock, rx_sock) = pair();
        let dst = rx_sock.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = [0usize, 1, 1400, 9000, 65_507]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        let mut q = SendQueue::new(8);
        let mut results = Vec::new();
        {
            let mut tx = q.tx();
            for (i, p) in payloads.iter().enumerate() {
                assert!(tx.push(&dst, p, &SendOpts::default(), i as u64));
            }
            tx.flush(tx_sock.as_fd(), Duration::from_millis(100), |t, n, r| {
                results.push((t, n, r))
            });
            assert!(tx.is_empty());
        }
        assert_eq!(results.len(), payloads.len());
        assert!(results.iter().all(|r| r.2 == SendResult::Sent));
        let mut rb = RecvBatch::new(16, SLOT_SIZE);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = rb.recv(rx_sock.as_fd()).unwrap();
            for i in 0..n {
                let d = rb.get(i).unwrap();
                assert_eq!(d.src, tx_sock.local_addr().unwrap());
                assert!(!d.truncated);
                got.push(d.data.to_vec());
            }
            if got.len() == payloads.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn append_fills_one_batch_from_several_sockets() {
        let (a, b) = pair();
        let (_c, d) = pair();
        a.send_to(b"one", b.local_addr().unwrap()).unwrap();
        a.send_to(b"two", d.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut rb = RecvBatch::new(4, 64);
        assert_eq!(rb.recv_append(b.as_fd()).unwrap(), 1);
        assert_eq!(rb.recv_append(d.as_fd()).unwrap(), 1);
        assert_eq!(rb.len(), 2);
        assert_eq!(rb.get(0).unwrap().data, b"one");
        assert_eq!(rb.get(1).unwrap().data, b"two");
        rb.clear();
        assert!(rb.is_empty());
    }

    #[test]
    fn empty_socket_receives_zero() {
        let (_a, b) = pair();
        let mut rb = RecvBatch::new(4, 2048);
        assert_eq!(rb.recv(b.as_fd()).unwrap(), 0);
        assert!(rb.get(0).is_none());
    }

    #[test]
    fn small_slot_reports_truncation() {
        let (a, b) = pair();
        a.send_to(&[1u8; 100], b.local_addr().unwrap()).unwrap();
        let mut rb = RecvBatch::new(4, 64);
        let mut n = 0;
        for _ in 0..100 {
            n = rb.recv(b.as_fd()).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(n, 1);
        assert!(rb.get(0).unwrap().truncated);
    }

    #[test]
    fn refused_datagram_is_reported_and_the_rest_still_go_out() {
        // An IPv6 destination on an IPv4 socket fails with EAFNOSUPPORT/EINVAL for that one
        // message only.
        let (a, b) = pair();
        let good = b.local_addr().unwrap();
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let mut q = SendQueue::new(4);
        let mut results = Vec::new();
        let data = [5u8; 10];
        {
            let mut tx = q.tx();
            tx.push(&good, &data, &SendOpts::default(), 1);
            tx.push(&bad, &data, &SendOpts::default(), 2);
            tx.push(&good, &data, &SendOpts::default(), 3);
            tx.flush(a.as_fd(), Duration::from_millis(10), |t, _, r| {
                results.push((t, r))
            });
        }
        assert_eq!(results[0], (1, SendResult::Sent));
        assert!(matches!(results[1], (2, SendResult::Error(_))));
        assert_eq!(results[2], (3, SendResult::Sent));
    }
}
