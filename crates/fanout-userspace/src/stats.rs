//! Lock-free counters written by the workers and summed at scrape time.
//!
//! Every counter has one slot per worker, each slot on its own cache line, and only that
//! worker ever writes it. A single writer needs no atomic read-modify-write: a relaxed load and
//! store compile to plain moves on x86, so counting costs about a nanosecond per datagram and
//! workers never contend. Readers (the metrics endpoint) sum the slots with relaxed loads; once
//! traffic stops, the sums are exact.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use fanout_core::DropReason;

/// Adds `n` to a counter that only the calling worker writes.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One worker's counters for one listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    received: AtomicU64,
    bytes_received: AtomicU64,
    forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    replies: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
    replies_received: AtomicU64,
    replies_dropped: [AtomicU64; DropReason::COUNT],
    sessions_created: AtomicU64,
    sessions_expired: AtomicU64,
    sessions_evicted: AtomicU64,
    sessions_repinned: AtomicU64,
    /// A gauge: this worker's live sessions, stored after every batch.
    sessions_active: AtomicU64,
}

impl ListenerCounters {
    /// A datagram of `bytes` arrived from a client.
    #[inline]
    pub fn received(&self, bytes: usize) {
        bump(&self.received, 1);
        bump(&self.bytes_received, bytes as u64);
    }

    /// A datagram (or copy) of `bytes` went to a downstream.
    #[inline]
    pub fn forwarded(&self, bytes: usize) {
        bump(&self.forwarded, 1);
        bump(&self.bytes_forwarded, bytes as u64);
    }

    /// A reply was relayed to a client.
    #[inline]
    pub fn replied(&self) {
        bump(&self.replies, 1);
    }

    /// A datagram (or copy) was dropped.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        bump(&self.dropped[reason.index()], 1);
    }

    /// A datagram arrived from a downstream on the reply path.
    #[inline]
    pub fn reply_received(&self) {
        bump(&self.replies_received, 1);
    }

    /// A reply-path datagram was dropped.
    #[inline]
    pub fn reply_dropped(&self, reason: DropReason) {
        bump(&self.replies_dropped[reason.index()], 1);
    }

    /// Adds session lifecycle events in bulk: a worker's session machine counts them itself,
    /// and this adds what happened since the worker last published.
    #[inline]
    pub fn sessions_changed(&self, d: fanout_core::SessionCounts) {
        bump(&self.sessions_created, d.created);
        bump(&self.sessions_expired, d.expired);
        bump(&self.sessions_evicted, d.evicted);
        bump(&self.sessions_repinned, d.repinned);
    }

    /// Publishes this worker's number of live sessions.
    #[inline]
    pub fn set_sessions_active(&self, n: usize) {
        self.sessions_active.store(n as u64, Ordering::Relaxed);
    }
}

/// Per-worker slots of a listener's counters.
#[derive(Debug)]
pub struct ListenerStats {
    slots: Box<[CachePadded<ListenerCounters>]>,
}

/// Summed listener counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerTotals {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams (copies) forwarded.
    pub forwarded: u64,
    /// Bytes forwarded.
    pub bytes_forwarded: u64,
    /// Replies relayed.
    pub replies: u64,
    /// Drops by reason.
    pub dropped: [u64; DropReason::COUNT],
    /// Datagrams received on the reply path.
    pub replies_received: u64,
    /// Reply-path drops by reason.
    pub replies_dropped: [u64; DropReason::COUNT],
    /// Session lifecycle.
    pub sessions: fanout_core::SessionCounts,
    /// Live sessions over all workers.
    pub sessions_active: u64,
}

impl ListenerStats {
    /// Slots for `workers` workers.
    pub fn new(workers: usize) -> Self {
        ListenerStats {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(ListenerCounters::default()))
                .collect(),
        }
    }

    /// The slot worker `w` writes.
    pub fn slot(&self, w: usize) -> &ListenerCounters {
        &self.slots[w % self.slots.len()]
    }

    /// The sums over all workers.
    pub fn totals(&self) -> ListenerTotals {
        let mut t = ListenerTotals::default();
        for s in self.slots.iter() {
            t.received += s.received.load(Ordering::Relaxed);
            t.bytes_received += s.bytes_received.load(Ordering::Relaxed);
            t.forwarded += s.forwarded.load(Ordering::Relaxed);
            t.bytes_forwarded += s.bytes_forwarded.load(Ordering::Relaxed);
            t.replies += s.replies.load(Ordering::Relaxed);
            for (d, c) in t.dropped.iter_mut().zip(s.dropped.iter()) {
                *d += c.load(Ordering::Relaxed);
            }
            t.replies_received += s.replies_received.load(Ordering::Relaxed);
            for (d, c) in t.replies_dropped.iter_mut().zip(s.replies_dropped.iter()) {
                *d += c.load(Ordering::Relaxed);
            }
            t.sessions.created += s.sessions_created.load(Ordering::Relaxed);
            t.sessions.expired += s.sessions_expired.load(Ordering::Relaxed);
            t.sessions.evicted += s.sessions_evicted.load(Ordering::Relaxed);
            t.sessions.repinned += s.sessions_repinned.load(Ordering::Relaxed);
            t.sessions_active += s.sessions_active.load(Ordering::Relaxed);
        }
        t
    }
}

#[derive(Debug, Default)]
struct EndpointSlot {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// A gauge: the worker's live sessions pinned to the downstream, stored when it changes.
    sessions: AtomicU64,
}

/// Per-worker counters of what one downstream was sent. Shared (through `Arc`) between
/// successive downstream sets as long as the downstream stays, so its series continues.
#[derive(Debug)]
pub struct EndpointStats {
    addr: SocketAddr,
    slots: Box<[CachePadded<EndpointSlot>]>,
}

impl EndpointStats {
    /// Counters for `addr` with slots for `workers` workers.
    pub fn new(addr: SocketAddr, workers: usize) -> Self {
        EndpointStats {
            addr,
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(EndpointSlot::default()))
                .collect(),
        }
    }

    /// The downstream these count.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Worker `w` sent a datagram of `bytes`.
    #[inline]
    pub fn sent(&self, w: usize, bytes: usize) {
        let s = &self.slots[w % self.slots.len()];
        bump(&s.packets, 1);
        bump(&s.bytes, bytes as u64);
    }

    /// Worker `w` now has `n` live sessions pinned to this downstream. Stored at session
    /// events (and when the worker takes up a new set), never per datagram.
    #[inline]
    pub fn set_sessions(&self, w: usize, n: u64) {
        self.slots[w % self.slots.len()]
            .sessions
            .store(n, Ordering::Relaxed);
    }

    /// Live sessions pinned to this downstream, summed over workers.
    pub fn sessions(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.sessions.load(Ordering::Relaxed))
            .sum()
    }

    /// (packets, bytes) summed over workers.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(p, b), s| {
            (
                p + s.packets.load(Ordering::Relaxed),
                b + s.bytes.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum() {
        let s = ListenerStats::new(3);
        s.slot(0).received(10);
        s.slot(1).received(20);
        s.slot(2).forwarded(5);
        s.slot(2).dropped(DropReason::SendError);
        let t = s.totals();
        assert_eq!(
            (t.received, t.bytes_received, t.forwarded, t.bytes_forwarded),
            (2, 30, 1, 5)
        );
        assert_eq!(t.dropped[DropReason::SendError.index()], 1);
        let e = EndpointStats::new("127.0.0.1:1".parse().unwrap(), 2);
        e.sent(0, 3);
        e.sent(1, 4);
        assert_eq!(e.totals(), (2, 7));
        // A gauge per worker: stored, not added; summed over workers.
        e.set_sessions(0, 3);
        e.set_sessions(1, 2);
        e.set_sessions(0, 1);
        assert_eq!(e.sessions(), 3);
        assert_eq!(e.totals(), (2, 7), "apart from the traffic counters");
    }
}
