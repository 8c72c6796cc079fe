//! Batched sending: `sendmmsg` from borrowed buffers, with UDP GSO for runs to one destination.
//!
//! Sends borrow the bytes they send (usually straight from the receive slots, so a mirrored
//! datagram is never copied), which the [`Tx`] lifetime enforces. All other memory is allocated
//! once per queue.
//!
//! **GSO.** Consecutive datagrams of equal size to the same destination, pushed with
//! [`Tx::push_coalesced`], become one message whose iovecs point at each datagram and which
//! carries a `UDP_SEGMENT` control message: the kernel builds one large packet, runs the route
//! lookup, netfilter and qdisc once, and cuts it into the original datagrams as late as
//! possible (on the NIC, or in software). Datagram boundaries are kept exactly: each iovec is one
//! segment, and only the last segment of a message may be shorter. If the kernel or the route
//! refuses GSO (old kernel, `EIO` from a device without checksum offload), the queue sends that
//! message's datagrams one by one instead and stops coalescing: nothing is lost.

use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::cmsg::{self, SendOpts};
use super::mmsg::{MsgHeaders, NULL_IOVEC};
use super::sockaddr;

/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Most payload bytes in one GSO message: one IP packet's worth, with room for headers.
const MAX_GSO_BYTES: usize = 65_000;

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
    /// `MAX_GSO_SEGMENTS` iovecs per message.
    iovs: Box<[libc::iovec]>,
    msgs: MsgHeaders,
    dsts: Box<[Option<SocketAddr>]>,
    tags: Box<[u64]>,
    opts: Box<[SendOpts]>,
    /// Segments in each message (1 without GSO).
    segs: Box<[u16]>,
    /// Payload bytes in each message.
    bytes: Box<[usize]>,
    len: usize,
    gso: bool,
}

// SAFETY: the raw pointers in `iovs` and `msgs` point into the queue's own buffers, or into
// caller data borrowed for the lifetime of a `Tx`, which cannot outlive the borrow of the queue;
// they are rebuilt before each system call.
unsafe impl Send for SendQueue {}

impl std::fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendQueue")
            .field("capacity", &self.msgs.capacity())
            .field("len", &self.len)
            .field("gso", &self.gso)
            .finish()
    }
}

impl SendQueue {
    /// Room for `capacity` messages per system call. GSO coalescing is on.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        SendQueue {
            iovs: vec![NULL_IOVEC; capacity * MAX_GSO_SEGMENTS].into_boxed_slice(),
            msgs: MsgHeaders::new(capacity),
            dsts: vec![None; capacity].into_boxed_slice(),
            tags: vec![0; capacity].into_boxed_slice(),
            opts: vec![SendOpts::default(); capacity].into_boxed_slice(),
            segs: vec![0; capacity].into_boxed_slice(),
            bytes: vec![0; capacity].into_boxed_slice(),
            len: 0,
            gso: true,
        }
    }

    /// Turns GSO coalescing off (or back on).
    pub fn set_gso(&mut self, on: bool) {
        self.gso = on;
    }

    /// Whether pushes may coalesce (off after the kernel refused a GSO send).
    pub fn gso(&self) -> bool {
        self.gso
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
    /// Number of messages queued (a GSO message holds several datagrams).
    pub fn len(&self) -> usize {
        self.q.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.len == 0
    }

    /// True when the next push of a new message would not fit.
    pub fn is_full(&self) -> bool {
        self.q.len == self.q.msgs.capacity()
    }

    /// Queues `data` for `dst` as a message of its own. `tag` comes back with the datagram's
    /// result in [`flush`](Self::flush). Returns false (and queues nothing) when full.
    pub fn push(&mut self, dst: &SocketAddr, data: &'d [u8], opts: &SendOpts, tag: u64) -> bool {
        let q = &mut *self.q;
        let i = q.len;
        if i == q.msgs.capacity() {
            return false;
        }
        q.iovs[i * MAX_GSO_SEGMENTS] = iovec(data);
        q.dsts[i] = Some(*dst);
        q.tags[i] = tag;
        q.opts[i] = *opts;
        q.segs[i] = 1;
        q.bytes[i] = data.len();
        q.len += 1;
        true
    }

    /// Queues `data` for `dst`, appended to the previous message as one more GSO segment when
    /// that message goes to the same destination with the same tag and options and the segment
    /// fits the GSO rules (equal sizes, only the last may be shorter, bounded count and bytes).
    /// Returns false (and queues nothing) when a new message would be needed and the queue is
    /// full.
    pub fn push_coalesced(
        &mut self,
        dst: &SocketAddr,
        data: &'d [u8],
        opts: &SendOpts,
        tag: u64,
    ) -> bool {
        let q = &mut *self.q;
        if q.gso && q.len > 0 && !data.is_empty() && opts.gso_segment.is_none() {
            let m = q.len - 1;
            let segs = q.segs[m] as usize;
            let seg_size = q.iovs[m * MAX_GSO_SEGMENTS].iov_len;
            let last = q.iovs[m * MAX_GSO_SEGMENTS + segs - 1].iov_len;
            if q.dsts[m] == Some(*dst)
                && q.tags[m] == tag
                && q.opts[m] == *opts
                && segs < MAX_GSO_SEGMENTS
                && last == seg_size
                && data.len() <= seg_size
                && q.bytes[m] + data.len() <= MAX_GSO_BYTES
            {
                q.iovs[m * MAX_GSO_SEGMENTS + segs] = iovec(data);
                q.segs[m] += 1;
                q.bytes[m] += data.len();
                return true;
            }
        }
        self.push(dst, data, opts, tag)
    }

    /// Sends everything queued on `fd`, calling `on_result(tag, bytes, result)` once per
    /// datagram (per GSO segment), in order. When the socket is full, waits up to `wait` in
    /// total for room, then reports the rest as [`SendResult::BufferFull`]. A datagram the
    /// kernel refuses is reported and skipped; the others still go out. The batch is empty
    /// afterwards.
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        wait: Duration,
        mut on_result: impl FnMut(u64, usize, SendResult),
    ) {
        let q = &mut *self.q;
        let n = q.len;
        for i in 0..n {
            prepare(q, i);
        }
        let mut start = 0usize;
        let mut waited = false;
        while start < n {
            // SAFETY: headers start..n were prepared above and point at queue-owned buffers and
            // at payloads borrowed for 'd, which outlives this Tx.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    q.msgs.hdrs.as_mut_ptr().add(start),
                    (n - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                for i in start..start + rc as usize {
                    report(q, i, SendResult::Sent, &mut on_result);
                }
                start += rc as usize;
                continue;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => {}
                libc::EAGAIN if !waited && wait_writable(fd, wait) => waited = true,
                libc::EAGAIN => {
                    for i in start..n {
                        report(q, i, SendResult::BufferFull, &mut on_result);
                    }
                    start = n;
                }
                libc::EIO | libc::EINVAL | libc::ENOPROTOOPT if q.segs[start] > 1 => {
                    // The kernel or the route cannot do GSO: stop coalescing and send this
                    // message's datagrams one at a time.
                    q.gso = false;
                    tracing::warn!(
                        errno,
                        "UDP GSO refused; sending datagrams one by one from now on"
                    );
                    send_each(q, start, fd, &mut on_result);
                    start += 1;
                }
                errno => {
                    report(q, start, SendResult::Error(errno), &mut on_result);
                    start += 1;
                }
            }
        }
        q.len = 0;
    }
}

fn iovec(data: &[u8]) -> libc::iovec {
    // The kernel only reads from iov_base for sends; the cast to *mut is what the C type demands.
    libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    }
}

/// Fills message `i`'s header: address, iovecs and control messages (`UDP_SEGMENT` when it
/// holds several datagrams).
fn prepare(q: &mut SendQueue, i: usize) {
    let Some(dst) = q.dsts[i] else { return };
    let m = &mut q.msgs;
    let namelen = sockaddr::write(&dst, &mut m.names[i]);
    let segs = q.segs[i] as usize;
    let mut opts = q.opts[i];
    if segs > 1 {
        opts.gso_segment = u16::try_from(q.iovs[i * MAX_GSO_SEGMENTS].iov_len).ok();
    }
    let clen = cmsg::build(&opts, &mut m.ctrl[i], &mut m.hdrs[i].msg_hdr);
    m.aim(i, namelen, &mut q.iovs[i * MAX_GSO_SEGMENTS], segs, clen);
}

/// Reports every datagram of message `i` with `result`.
fn report(
    q: &SendQueue,
    i: usize,
    result: SendResult,
    on_result: &mut impl FnMut(u64, usize, SendResult),
) {
    for s in 0..q.segs[i] as usize {
        on_result(q.tags[i], q.iovs[i * MAX_GSO_SEGMENTS + s].iov_len, result);
    }
}

/// Sends the datagrams of GSO message `i` one by one (GSO was refused).
fn send_each(
    q: &mut SendQueue,
    i: usize,
    fd: BorrowedFd<'_>,
    on_result: &mut impl FnMut(u64, usize, SendResult),
) {
    let segs = q.segs[i] as usize;
    for s in 0..segs {
        let mut iov = q.iovs[i * MAX_GSO_SEGMENTS + s];
        let opts = q.opts[i];
        let ctrl = &mut q.msgs.ctrl[i];
        let mut hdr = q.msgs.hdrs[i].msg_hdr;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        let clen = cmsg::build(&opts, ctrl, &mut hdr);
        cmsg::set_control(&mut hdr, ctrl, clen);
        // SAFETY: `hdr` points at the queue's own address and control buffers and at one iovec
        // on this stack frame, all alive for the call.
        let rc = unsafe { libc::sendmsg(fd.as_raw_fd(), &hdr, libc::MSG_DONTWAIT) };
        let result = if rc >= 0 {
            SendResult::Sent
        } else {
            match io::Error::last_os_error().raw_os_error().unwrap_or(0) {
                libc::EAGAIN => SendResult::BufferFull,
                e => SendResult::Error(e),
            }
        };
        on_result(q.tags[i], iov.iov_len, result);
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
    use crate::sys::recv::{RecvBatch, SLOT_SIZE};
    use crate::sys::testing::{pair, recv_some};
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn receive_all(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let mut rb = RecvBatch::new(64, SLOT_SIZE);
        let mut got = Vec::new();
        for _ in 0..200 {
            let n = rb.recv(sock.as_fd()).unwrap();
            for i in 0..n {
                let d = rb.get(i).unwrap();
                assert!(!d.truncated);
                got.push(d.data.to_vec());
            }
            if got.len() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
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
                assert!(tx.push_coalesced(&dst, p, &SendOpts::default(), i as u64));
            }
            tx.flush(tx_sock.as_fd(), Duration::from_millis(100), |t, n, r| {
                results.push((t, n, r))
            });
            assert!(tx.is_empty());
        }
        assert_eq!(results.len(), payloads.len());
        assert!(results.iter().all(|r| r.2 == SendResult::Sent));
        assert_eq!(receive_all(&rx_sock, payloads.len()), payloads);
    }

    #[test]
    fn gso_coalesces_runs_and_keeps_every_datagram_whole() {
        let (tx_sock, rx_sock) = pair();
        let dst = rx_sock.local_addr().unwrap();
        // 100 datagrams of 100 bytes, then a shorter one: two GSO messages (64 + 37 segments).
        let mut payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100]).collect();
        payloads.push(vec![0xee; 40]);
        let mut q = SendQueue::new(8);
        let mut results = Vec::new();
        {
            let mut tx = q.tx();
            for p in &payloads {
                assert!(tx.push_coalesced(&dst, p, &SendOpts::default(), 7));
            }
            assert_eq!(tx.len(), 2, "coalesced into GSO messages");
            tx.flush(tx_sock.as_fd(), Duration::from_millis(100), |t, n, r| {
                results.push((t, n, r))
            });
        }
        assert_eq!(results.len(), 101);
        assert!(
            results
                .iter()
                .all(|&(t, _, r)| t == 7 && r == SendResult::Sent)
        );
        assert_eq!(results.iter().map(|r| r.1).sum::<usize>(), 100 * 100 + 40);
        assert_eq!(
            receive_all(&rx_sock, 101),
            payloads,
            "boundaries and order kept"
        );
    }

    #[test]
    fn a_gro_socket_receives_a_gso_run_as_one_buffer() {
        let (tx_sock, rx_sock) = pair();
        assert!(crate::sys::socket::set_gro(&rx_sock, true));
        let dst = rx_sock.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 300]).collect();
        let mut q = SendQueue::new(4);
        {
            let mut tx = q.tx();
            for p in &payloads {
                tx.push_coalesced(&dst, p, &SendOpts::default(), 0);
            }
            tx.flush(tx_sock.as_fd(), Duration::from_millis(100), |_, _, _| {});
        }
        let mut rb = RecvBatch::new(8, SLOT_SIZE);
        assert_eq!(recv_some(&mut rb, &rx_sock), 1, "one GRO buffer");
        let d = rb.get(0).unwrap();
        assert_eq!(d.info.gro_segment, Some(300));
        assert_eq!(d.data, payloads.concat().as_slice());
    }

    #[test]
    fn coalescing_stops_at_a_new_destination_size_or_tag() {
        let (_a, b) = pair();
        let (_c, d) = pair();
        let (x, y) = (b.local_addr().unwrap(), d.local_addr().unwrap());
        let small = [1u8; 10];
        let big = [2u8; 20];
        let mut q = SendQueue::new(8);
        let mut tx = q.tx();
        tx.push_coalesced(&x, &small, &SendOpts::default(), 1);
        tx.push_coalesced(&x, &small, &SendOpts::default(), 1);
        tx.push_coalesced(&y, &small, &SendOpts::default(), 1); // other destination
        tx.push_coalesced(&y, &big, &SendOpts::default(), 1); // larger than the segment size
        tx.push_coalesced(&y, &big, &SendOpts::default(), 2); // other tag
        tx.push_coalesced(&y, &[], &SendOpts::default(), 2); // empty datagrams never coalesce
        assert_eq!(tx.len(), 5);
    }

    #[test]
    fn disabled_gso_sends_one_message_per_datagram() {
        let (tx_sock, rx_sock) = pair();
        let dst = rx_sock.local_addr().unwrap();
        let data = [3u8; 50];
        let mut q = SendQueue::new(8);
        q.set_gso(false);
        let mut tx = q.tx();
        for _ in 0..4 {
            tx.push_coalesced(&dst, &data, &SendOpts::default(), 0);
        }
        assert_eq!(tx.len(), 4);
        let mut sent = 0;
        tx.flush(tx_sock.as_fd(), Duration::from_millis(100), |_, _, r| {
            sent += usize::from(r == SendResult::Sent)
        });
        assert_eq!(sent, 4);
        assert_eq!(receive_all(&rx_sock, 4).len(), 4);
    }

    #[test]
    fn refused_datagram_is_reported_and_the_rest_still_go_out() {
        // An IPv6 destination on an IPv4 socket fails for that one message only.
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
