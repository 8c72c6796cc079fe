//! The session table: client address → session, bounded in size (LRU eviction) and in time
//! (idle expiry).
//!
//! Entries live in a slab (a `Vec` reused through a free list) threaded on an intrusive
//! doubly-linked list in recency order, with a hash map from client address to slab index. So
//! lookup, touch, insert, evict and remove are all O(1) and allocation-free once the table has
//! grown, and expiry walks from the least recently used end and stops at the first live entry.
//!
//! Time is passed in by the caller (milliseconds on any monotonic clock), so the table has no
//! clock of its own and tests drive it with a fake one. The hash map uses a randomly seeded
//! hasher: keys are client addresses, which clients choose.

use std::net::SocketAddr;

use hashbrown::HashMap;

/// Index of a session in its table. Stable for the session's life; reused after it ends.
pub type SessionId = u32;

const NIL: u32 = u32::MAX;

/// A session is moved to the front of the recency list at most this often (milliseconds).
pub const RELINK_MS: u64 = 1_000;

#[derive(Debug)]
struct Entry<V> {
    key: SocketAddr,
    /// `None` while the slot is free.
    value: Option<V>,
    last_seen: u64,
    /// When the entry was last moved to the front: the list is ordered by this.
    linked_at: u64,
    prev: u32,
    next: u32,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// No traffic for the idle timeout.
    Expired,
    /// Pushed out by a new session while the table was full.
    Evicted,
    /// Removed by the owner (e.g. its downstream vanished and no other could take it).
    Removed,
}

/// A bounded, idle-expiring session table.
#[derive(Debug)]
pub struct SessionTable<V> {
    map: HashMap<SocketAddr, SessionId>,
    slab: Vec<Entry<V>>,
    free: Vec<SessionId>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    capacity: usize,
    idle_ms: u64,
}

impl<V> SessionTable<V> {
    /// A table holding at most `capacity` sessions (at least 1), expiring them after `idle_ms`
    /// without traffic. Memory grows with use up to `capacity`, not up front.
    pub fn new(capacity: usize, idle_ms: u64) -> Self {
        SessionTable {
            map: HashMap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
            idle_ms,
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Maximum number of sessions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The session of `client`, without touching it.
    pub fn find(&self, client: &SocketAddr) -> Option<SessionId> {
        self.map.get(client).copied()
    }

    /// The session of `client`, marked as used at `now`.
    pub fn lookup(&mut self, client: &SocketAddr, now: u64) -> Option<SessionId> {
        let id = *self.map.get(client)?;
        self.touch(id, now);
        Some(id)
    }

    /// Marks session `id` as used at `now` (traffic in either direction).
    pub fn touch(&mut self, id: SessionId, now: u64) {
        if !self.is_live(id) {
            return;
        }
        let e = &mut self.slab[id as usize];
        e.last_seen = now;
        // Moving an entry to the front touches its neighbours (cache misses at scale), so a
        // busy session is moved at most once per RELINK_MS; between moves only its timestamp
        // changes. The list stays ordered by `linked_at`, and expiry gives entries touched
        // since their last move a second chance instead of ending them.
        if self.head != id && now.saturating_sub(e.linked_at) >= RELINK_MS {
            e.linked_at = now;
            self.unlink(id);
            self.push_front(id);
        }
    }

    /// The client and value of a live session.
    pub fn get(&self, id: SessionId) -> Option<(&SocketAddr, &V)> {
        let e = self.slab.get(id as usize)?;
        Some((&e.key, e.value.as_ref()?))
    }

    /// The value of a live session, mutably.
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut V> {
        self.slab.get_mut(id as usize)?.value.as_mut()
    }

    /// Adds a session for `client` (which must not have one). When the table is full, the least
    /// recently used session is evicted first and returned, so the caller can release what it
    /// held. Never blocks, never fails.
    pub fn insert(
        &mut self,
        client: SocketAddr,
        value: V,
        now: u64,
    ) -> (SessionId, Option<(SocketAddr, V)>) {
        debug_assert!(!self.map.contains_key(&client));
        let evicted = if self.map.len() >= self.capacity && self.tail != NIL {
            let lru = self.tail;
            self.take(lru)
        } else {
            None
        };
        let entry = Entry {
            key: client,
            value: Some(value),
            last_seen: now,
            linked_at: now,
            prev: NIL,
            next: NIL,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slab[id as usize] = entry;
                id
            }
            None => {
                self.slab.push(entry);
                (self.slab.len() - 1) as SessionId
            }
        };
        self.push_front(id);
        self.map.insert(client, id);
        (id, evicted)
    }

    /// True when an insert would evict.
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.capacity
    }

    /// Ends the least recently used session and returns it (`None` if empty).
    pub fn pop_lru(&mut self) -> Option<(SessionId, SocketAddr, V)> {
        let id = self.tail;
        if id == NIL {
            return None;
        }
        self.take(id).map(|(k, v)| (id, k, v))
    }

    /// Ends session `id` and returns its client and value.
    pub fn remove(&mut self, id: SessionId) -> Option<(SocketAddr, V)> {
        self.take(id)
    }

    /// Ends up to `limit` sessions idle since before `now - idle`, calling `on_end` for each;
    /// returns how many ended. Bounded so a sweep never stalls the data path; call again for
    /// the rest.
    pub fn expire(
        &mut self,
        now: u64,
        limit: usize,
        mut on_end: impl FnMut(SessionId, SocketAddr, V),
    ) -> usize {
        let (mut ended, mut steps) = (0, 0);
        while steps < limit && self.tail != NIL {
            steps += 1;
            let id = self.tail;
            let e = &mut self.slab[id as usize];
            if now.saturating_sub(e.last_seen) < self.idle_ms {
                if e.last_seen > e.linked_at {
                    // Used since it was last moved: move it now and look further.
                    e.linked_at = e.last_seen;
                    self.unlink(id);
                    self.push_front(id);
                    continue;
                }
                break;
            }
            if let Some((k, v)) = self.take(id) {
                on_end(id, k, v);
                ended += 1;
            }
        }
        ended
    }

    /// A lower bound of the milliseconds until the next session expires (`None` if empty).
    pub fn next_expiry(&self, now: u64) -> Option<u64> {
        let e = self.slab.get(self.tail as usize)?;
        Some((e.linked_at + self.idle_ms).saturating_sub(now))
    }

    /// Every live session, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &SocketAddr, &V)> {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            let e = &self.slab[id as usize];
            cur = e.next;
            e.value.as_ref().map(|v| (id, &e.key, v))
        })
    }

    fn is_live(&self, id: SessionId) -> bool {
        self.slab
            .get(id as usize)
            .is_some_and(|e| e.value.is_some())
    }

    fn take(&mut self, id: SessionId) -> Option<(SocketAddr, V)> {
        if !self.is_live(id) {
            return None;
        }
        self.unlink(id);
        let e = &mut self.slab[id as usize];
        let key = e.key;
        let value = e.value.take()?;
        self.map.remove(&key);
        self.free.push(id);
        Some((key, value))
    }

    fn unlink(&mut self, id: SessionId) {
        let (prev, next) = {
            let e = &self.slab[id as usize];
            (e.prev, e.next)
        };
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let e = &mut self.slab[id as usize];
        e.prev = NIL;
        e.next = NIL;
    }

    fn push_front(&mut self, id: SessionId) {
        let old = self.head;
        {
            let e = &mut self.slab[id as usize];
            e.prev = NIL;
            e.next = old;
        }
        if old != NIL {
            self.slab[old as usize].prev = id;
        } else {
            self.tail = id;
        }
        self.head = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn insert_lookup_and_touch_order() {
        let mut t = SessionTable::new(10, 10_000);
        let (a, _) = t.insert(addr(1), "a", 0);
        let (b, _) = t.insert(addr(2), "b", 0);
        assert_eq!(t.lookup(&addr(1), RELINK_MS), Some(a));
        assert_eq!(t.lookup(&addr(3), RELINK_MS), None);
        let order: Vec<_> = t.iter().map(|(id, _, v)| (id, *v)).collect();
        assert_eq!(order, [(a, "a"), (b, "b")], "most recent first");
        assert_eq!(t.get(b), Some((&addr(2), &"b")));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn full_table_evicts_the_least_recently_used() {
        let mut t = SessionTable::new(3, 10_000);
        for p in 1..=3 {
            t.insert(addr(p), p, 0);
        }
        t.lookup(&addr(1), RELINK_MS); // 2 is now the LRU
        assert!(t.is_full());
        let (_, evicted) = t.insert(addr(4), 4, RELINK_MS + 1);
        assert_eq!(evicted, Some((addr(2), 2)));
        assert_eq!(t.len(), 3);
        assert!(t.find(&addr(2)).is_none());
        assert!(t.find(&addr(1)).is_some() && t.find(&addr(4)).is_some());
        let (_, k, v) = t.pop_lru().unwrap();
        assert_eq!((k, v), (addr(3), 3));
        assert!(!t.is_full());
    }

    #[test]
    fn idle_sessions_expire_with_a_fake_clock() {
        let mut t = SessionTable::new(10, 5_000);
        t.insert(addr(1), 1, 0);
        t.insert(addr(2), 2, 500);
        t.insert(addr(3), 3, 600);
        // 1 is touched shortly after it was linked: only its timestamp moves, not its place.
        let id1 = t.find(&addr(1)).unwrap();
        t.touch(id1, 900);
        assert_eq!(t.next_expiry(900), Some(4_100), "a lower bound");
        let mut ended = Vec::new();
        assert_eq!(
            t.expire(4_999, 10, |_, k, v| ended.push((k, v))),
            0,
            "nothing idle for 5 s yet"
        );
        // At 5,000 entry 1 is at the tail but was used at 900: second chance, not expired.
        assert_eq!(t.expire(5_000, 10, |_, k, v| ended.push((k, v))), 0);
        assert_eq!(t.expire(5_500, 10, |_, k, v| ended.push((k, v))), 1);
        assert_eq!(ended, [(addr(2), 2)]);
        assert_eq!(
            t.expire(5_600, 10, |_, k, v| ended.push((k, v))),
            1,
            "3, idle since 600"
        );
        assert_eq!(t.expire(5_899, 10, |_, k, v| ended.push((k, v))), 0);
        assert_eq!(
            t.expire(5_900, 10, |_, k, v| ended.push((k, v))),
            1,
            "1, idle since 900"
        );
        assert_eq!(ended, [(addr(2), 2), (addr(3), 3), (addr(1), 1)]);
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(7_000), None);
    }

    #[test]
    fn expiry_is_bounded_per_call() {
        let mut t = SessionTable::new(1_000, 10);
        for p in 0..500 {
            t.insert(addr(p), p, 0);
        }
        assert_eq!(t.expire(100, 64, |_, _, _| {}), 64);
        assert_eq!(t.len(), 436);
        // A busy session is never expired, however the list is ordered.
        let busy = t.iter().last().map(|(id, _, _)| id).unwrap();
        t.touch(busy, 95);
        assert_eq!(t.expire(100, 1_000, |_, _, _| {}), 435);
        assert_eq!(t.len(), 1);
        assert!(t.get(busy).is_some());
        t.insert(addr(9_999), 1, 100);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn ids_are_reused_and_stale_ids_are_harmless() {
        let mut t = SessionTable::new(2, 10);
        let (a, _) = t.insert(addr(1), 1, 0);
        assert_eq!(t.remove(a), Some((addr(1), 1)));
        assert_eq!(t.remove(a), None);
        t.touch(a, 5); // stale: no effect, no panic
        assert!(t.get(a).is_none());
        let (b, _) = t.insert(addr(2), 2, 0);
        assert_eq!(a, b, "slot reused");
        assert_eq!(t.get(b), Some((&addr(2), &2)));
    }

    #[test]
    fn heavy_churn_keeps_list_and_map_consistent() {
        let mut t = SessionTable::new(64, 50);
        let mut now = 0;
        for round in 0..20_000u32 {
            now += 1;
            let port = (round.wrapping_mul(2_654_435_761) % 200) as u16;
            match t.lookup(&addr(port), now) {
                Some(id) if round % 7 == 0 => {
                    t.remove(id);
                }
                Some(_) => {}
                None => {
                    t.insert(addr(port), port, now);
                }
            }
            if round % 100 == 0 {
                t.expire(now, 8, |_, _, _| {});
            }
            assert!(t.len() <= 64);
        }
        let listed: Vec<_> = t.iter().map(|(_, k, _)| *k).collect();
        assert_eq!(listed.len(), t.len());
        for k in listed {
            assert!(t.find(&k).is_some());
        }
    }
}
