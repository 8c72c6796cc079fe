//! Batched receiving: `recvmmsg` into preallocated slots.
//!
//! All memory (datagram slots, iovecs, addresses, control buffers, message headers) is
//! allocated once per worker; a batch costs one system call and no allocation. Several sockets
//! may fill one batch ([`RecvBatch::recv_append`]) so that their datagrams are processed and
//! answered together.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cmsg::{self, RecvInfo};
use super::mmsg::{MsgHeaders, NULL_IOVEC, SOCKADDR_STORAGE_LEN};
use super::sockaddr;

/// Largest UDP payload over IPv6 without jumbograms (IPv4's limit is 65,507).
pub const MAX_DATAGRAM: usize = 65_527;

/// Receive slot size: 64 KiB. A datagram is at most 65,527 bytes and a UDP GRO buffer (several
/// datagrams of one flow coalesced by the kernel) at most 65,535, so a slot filled exactly can
/// only hold something cut short (and MSG_TRUNC says so as well).
pub const SLOT_SIZE: usize = 65_536;

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
    msgs: MsgHeaders,
    len: usize,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` only ever point into buffers owned by this
// same struct (they are rewritten before each system call), so moving the struct to another
// thread moves everything they refer to with it.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.msgs.capacity())
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
            iovs: vec![NULL_IOVEC; capacity].into_boxed_slice(),
            msgs: MsgHeaders::new(capacity),
            len: 0,
        }
    }

    /// How many datagrams one call can return.
    pub fn capacity(&self) -> usize {
        self.msgs.capacity()
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
        let room = self.msgs.capacity() - start;
        if room == 0 {
            return Ok(0);
        }
        let base = self.bufs.as_mut_ptr();
        for i in start..self.msgs.capacity() {
            // SAFETY: i * slot_size + slot_size <= bufs.len() by construction.
            self.iovs[i].iov_base = unsafe { base.add(i * self.slot_size) }.cast();
            self.iovs[i].iov_len = self.slot_size;
            // One slot; room for any source address and for the whole control buffer.
            self.msgs.aim(
                i,
                SOCKADDR_STORAGE_LEN,
                &mut self.iovs[i],
                1,
                cmsg::CMSG_BUF_LEN,
            );
            self.msgs.hdrs[i].msg_len = 0;
        }
        loop {
            // SAFETY: headers start.. point at buffers owned by self that stay alive and
            // unaliased for the call; the count stays within the array.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.msgs.hdrs.as_mut_ptr().add(start),
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
        self.len == self.msgs.capacity()
    }

    /// Number of datagrams from the last [`recv`](Self::recv).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload of the `i`-th datagram (empty if out of range): cheaper than
    /// [`get`](Self::get) when the address is not needed.
    #[inline]
    pub fn data(&self, i: usize) -> &[u8] {
        if i >= self.len {
            return &[];
        }
        let len = (self.msgs.hdrs[i].msg_len as usize).min(self.slot_size);
        let start = i * self.slot_size;
        &self.bufs[start..start + len]
    }

    /// The `i`-th datagram of the last receive. `None` if `i` is out of range or the kernel
    /// reported a source address that is not IPv4/IPv6.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.len {
            return None;
        }
        let h = &self.msgs.hdrs[i];
        let src = sockaddr::read(&self.msgs.names[i], h.msg_hdr.msg_namelen)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::{pair, recv_some};
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// Sends each payload from `from` to its socket, then appends what those sockets received,
    /// in order, into one batch: one datagram each.
    fn append_one_each(from: &UdpSocket, to: [(&UdpSocket, &str); 2]) -> RecvBatch {
        for (sock, data) in to {
            from.send_to(data.as_bytes(), sock.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut rb = RecvBatch::new(4, 64);
        for (sock, _) in to {
            assert_eq!(rb.recv_append(sock.as_fd()).unwrap(), 1);
        }
        rb
    }

    #[test]
    fn append_fills_one_batch_from_several_sockets() {
        let (a, b) = pair();
        let (_c, d) = pair();
        let mut rb = append_one_each(&a, [(&b, "one"), (&d, "two")]);
        assert_eq!(rb.len(), 2);
        assert_eq!(rb.get(0).unwrap().data, b"one");
        assert_eq!(rb.get(1).unwrap().data, b"two");
        rb.clear();
        assert!(rb.is_empty());
    }

    #[test]
    fn kernel_receive_time_is_reported_when_enabled() {
        let (a, b) = pair();
        let (_c, d) = pair();
        crate::sys::socket::set_rx_timestamps(&b).unwrap();
        // The kernel turns arrival stamping on from a work queue, shortly after the first
        // socket asks for it; until then the stamp is the time of reading.
        std::thread::sleep(Duration::from_millis(50));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let rb = append_one_each(&a, [(&b, "stamped"), (&d, "plain")]);
        let stamped = rb
            .get(0)
            .unwrap()
            .info
            .rx_time_ns
            .expect("a kernel timestamp");
        // Received after it was sent, and well before we read it 20 ms later.
        assert!(stamped >= before, "{stamped} < {before}");
        assert!(stamped < before + 15_000_000, "{stamped} vs {before}");
        assert_eq!(rb.get(1).unwrap().info.rx_time_ns, None);
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
        assert_eq!(recv_some(&mut rb, &b), 1);
        assert!(rb.get(0).unwrap().truncated);
    }
}
