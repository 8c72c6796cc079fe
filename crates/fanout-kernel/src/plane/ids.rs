//! Listener ids: which of the kernel plane's per-listener map entries a new listener gets, and
//! when a removed listener's id may be given out again.
//!
//! An id indexes every per-listener map: `uf_active`, the two banks, `uf_rr_cursor` and
//! `uf_listener_stats`. A packet that found a listener in `uf_listeners` just before the
//! listener was removed still runs with its id for a moment (one program run), reading
//! `uf_active[id]` and then that bank. Were the id handed at once to a new listener, whose
//! first set write flips `uf_active[id]` to a bank just written, that packet could read the new
//! listener's set under the old listener's lookup: an old listener's datagram sent to a new
//! listener's downstream. So a removed listener's id rests for [`BANK_REUSE_DELAY`], the rule
//! that already keeps a retired bank intact and a given-up counter slot unused, and for the
//! same reason: far longer than any program run.
//!
//! Unlike a counter slot, a resting id is never handed out early. When no id is free,
//! [`ListenerIds::take`] waits out the oldest one's rest instead (at most
//! [`BANK_REUSE_DELAY`], as [`SetMaps::write_set`](crate::maps::SetMaps::write_set) waits for a
//! retired bank), so a full plane can still re-create a listener (remove, then add).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::maps::BANK_REUSE_DELAY;

/// The listener ids of a running plane that no listener has: free ones, and resting ones.
#[derive(Debug)]
pub(super) struct ListenerIds {
    /// A stack: lowest id on top at first, so the start's listener `i` gets id `i`. Ids come
    /// back on top, so the most recently freed one is used first (as counter slots are).
    free: Vec<u32>,
    /// Ids of removed listeners, oldest first, with when they were removed.
    resting: VecDeque<(u32, Instant)>,
}

/// What [`ListenerIds::poll`] found.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A free id, now taken.
    Id(u32),
    /// None free; the oldest resting one is free after this long.
    Wait(Duration),
    /// Every id belongs to a listener.
    Full,
}

impl ListenerIds {
    /// Ids `0..count`, all free.
    pub(super) fn new(count: u32) -> Self {
        ListenerIds {
            free: (0..count).rev().collect(),
            resting: VecDeque::new(),
        }
    }

    /// An id for a new listener: a free one, else the oldest resting one once its rest is
    /// over (sleeping until then). `None` when every id belongs to a listener.
    pub(super) fn take(&mut self) -> Option<u32> {
        loop {
            match self.poll(Instant::now()) {
                Next::Id(id) => return Some(id),
                Next::Wait(d) => std::thread::sleep(d),
                Next::Full => return None,
            }
        }
    }

    /// Gives back an id that no program can have seen (its listener was never registered).
    pub(super) fn give_back(&mut self, id: u32) {
        self.free.push(id);
    }

    /// Takes back the id of a listener unregistered at `now`: it rests first.
    pub(super) fn retire(&mut self, id: u32, now: Instant) {
        self.resting.push_back((id, now));
    }

    /// Frees the ids whose rest is over at `now`, then takes a free one if there is one.
    fn poll(&mut self, now: Instant) -> Next {
        while let Some(&(id, since)) = self.resting.front()
            && now.saturating_duration_since(since) >= BANK_REUSE_DELAY
        {
            self.resting.pop_front();
            self.free.push(id);
        }
        if let Some(id) = self.free.pop() {
            return Next::Id(id);
        }
        match self.resting.front() {
            Some(&(_, since)) => {
                Next::Wait(BANK_REUSE_DELAY.saturating_sub(now.saturating_duration_since(since)))
            }
            None => Next::Full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_handed_out_lowest_first() {
        let mut ids = ListenerIds::new(3);
        let now = Instant::now();
        let got: Vec<Next> = (0..4).map(|_| ids.poll(now)).collect();
        assert_eq!(got, [Next::Id(0), Next::Id(1), Next::Id(2), Next::Full]);
    }

    #[test]
    fn a_removed_listeners_id_rests_before_reuse() {
        let mut ids = ListenerIds::new(3);
        let t0 = Instant::now();
        assert_eq!((ids.poll(t0), ids.poll(t0)), (Next::Id(0), Next::Id(1)));
        ids.retire(0, t0);
        // Another id is free: that one, not the resting one.
        assert_eq!(ids.poll(t0), Next::Id(2));
        // None free: the rest of the oldest resting id's rest.
        assert_eq!(
            ids.poll(t0 + BANK_REUSE_DELAY / 4),
            Next::Wait(BANK_REUSE_DELAY - BANK_REUSE_DELAY / 4)
        );
        assert_eq!(ids.poll(t0 + BANK_REUSE_DELAY), Next::Id(0));
        assert_eq!(ids.poll(t0 + BANK_REUSE_DELAY), Next::Full);
    }

    #[test]
    fn rested_and_given_back_ids_come_first() {
        let mut ids = ListenerIds::new(4);
        let t0 = Instant::now();
        assert_eq!((ids.poll(t0), ids.poll(t0)), (Next::Id(0), Next::Id(1)));
        ids.retire(1, t0);
        assert_eq!(ids.poll(t0 + BANK_REUSE_DELAY), Next::Id(1));
        // A failed add gives its id back: the next add gets the same one.
        ids.give_back(1);
        assert_eq!(ids.poll(t0 + BANK_REUSE_DELAY), Next::Id(1));
        assert_eq!(ids.poll(t0 + BANK_REUSE_DELAY), Next::Id(2));
    }

    #[test]
    fn take_waits_out_a_rest_when_nothing_is_free() {
        let mut ids = ListenerIds::new(1);
        assert_eq!(ids.take(), Some(0));
        assert_eq!(ids.take(), None);
        let t0 = Instant::now();
        ids.retire(0, t0);
        assert_eq!(ids.take(), Some(0));
        assert!(t0.elapsed() >= BANK_REUSE_DELAY, "reused while resting");
    }
}
