//! Which upstream socket a session sends from.
//!
//! With the reply path on, a downstream's answer is matched to its client by the pair
//! (udp-fanout's local port it arrived on, the downstream's address). So two sessions may share
//! an upstream socket as long as they talk to different downstreams, and the number of sockets
//! needed is the largest number of sessions on any one downstream, not the number of sessions:
//! 100,000 clients over 8 downstreams need about 12,500 sockets, not 100,000. The port space
//! forces no fewer: a downstream can only tell clients apart by our source port.
//!
//! This module is the bookkeeping only (pure, no sockets): it hands out socket *indices* per
//! key and says when a new socket must be opened. The key is the downstream's address, or
//! [`EXCLUSIVE`] for sessions that talk to every downstream from one port (per-datagram
//! balancing with replies), which therefore need a socket of their own.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use hashbrown::HashMap;

/// The key for sessions that need a socket no other session uses.
pub const EXCLUSIVE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// A socket index handed out by [`PortSlots::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// Index of the socket in the caller's pool.
    pub socket: u32,
    /// The caller must open socket `socket` first (it is the next index of the pool).
    pub new: bool,
}

#[derive(Debug, Default)]
struct KeySlots {
    /// Sockets whose slot for this key was used and is free again.
    free: Vec<u32>,
    /// Sockets `next..opened` have never been used for this key.
    next: u32,
    in_use: u32,
}

/// Slot bookkeeping for one pool of upstream sockets.
#[derive(Debug)]
pub struct PortSlots {
    opened: u32,
    max_sockets: u32,
    keys: HashMap<SocketAddr, KeySlots>,
}

impl PortSlots {
    /// A pool that may grow to `max_sockets` sockets.
    pub fn new(max_sockets: u32) -> Self {
        PortSlots {
            opened: 0,
            max_sockets,
            keys: HashMap::new(),
        }
    }

    /// Sockets opened so far.
    pub fn opened(&self) -> u32 {
        self.opened
    }

    /// Slots of `key` in use: the sessions of that key (one socket each).
    pub fn in_use(&self, key: &SocketAddr) -> u32 {
        self.keys.get(key).map_or(0, |k| k.in_use)
    }

    /// Slots in use over all keys (tests check it against the live sessions).
    #[cfg(test)]
    pub(super) fn total_in_use(&self) -> u64 {
        self.keys.values().map(|k| u64::from(k.in_use)).sum()
    }

    /// A socket whose slot for `key` is free, or `None` when the pool is at its limit.
    pub fn acquire(&mut self, key: SocketAddr) -> Option<Acquired> {
        let opened = self.opened;
        let k = self.keys.entry(key).or_default();
        if let Some(s) = k.free.pop() {
            k.in_use += 1;
            return Some(Acquired {
                socket: s,
                new: false,
            });
        }
        if k.next < opened {
            let s = k.next;
            k.next += 1;
            k.in_use += 1;
            return Some(Acquired {
                socket: s,
                new: false,
            });
        }
        if opened >= self.max_sockets {
            if k.in_use == 0 {
                self.keys.remove(&key);
            }
            return None;
        }
        let s = opened;
        self.opened += 1;
        k.next = self.opened;
        k.in_use += 1;
        Some(Acquired {
            socket: s,
            new: true,
        })
    }

    /// Undoes an [`acquire`](Self::acquire) that returned `new: true` whose socket could not
    /// be opened.
    pub fn abandon_new(&mut self, key: SocketAddr, socket: u32) {
        if socket + 1 == self.opened {
            self.opened -= 1;
        }
        if let Some(k) = self.keys.get_mut(&key) {
            k.next = k.next.min(self.opened);
            k.in_use = k.in_use.saturating_sub(1);
            if k.in_use == 0 {
                self.keys.remove(&key);
            }
        }
    }

    /// Frees the slot of `key` on `socket`.
    pub fn release(&mut self, key: SocketAddr, socket: u32) {
        if let Some(k) = self.keys.get_mut(&key) {
            k.in_use = k.in_use.saturating_sub(1);
            if k.in_use == 0 {
                // Everything free again: forget the key (downstreams come and go).
                self.keys.remove(&key);
            } else {
                k.free.push(socket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 53))
    }

    #[test]
    fn sessions_on_different_downstreams_share_sockets() {
        let mut p = PortSlots::new(100);
        let a = p.acquire(d(1)).unwrap();
        assert_eq!(
            a,
            Acquired {
                socket: 0,
                new: true
            }
        );
        let b = p.acquire(d(2)).unwrap();
        assert_eq!(
            b,
            Acquired {
                socket: 0,
                new: false
            },
            "same socket, other downstream"
        );
        let c = p.acquire(d(1)).unwrap();
        assert_eq!(
            c,
            Acquired {
                socket: 1,
                new: true
            },
            "same downstream needs another port"
        );
        assert_eq!(p.opened(), 2);
    }

    #[test]
    fn sockets_needed_is_the_busiest_downstream() {
        let mut p = PortSlots::new(1_000_000);
        for i in 0..100_000u32 {
            p.acquire(d((i % 8) as u8)).unwrap();
        }
        assert_eq!(p.opened(), 12_500);
    }

    #[test]
    fn released_slots_are_reused_and_limits_hold() {
        let mut p = PortSlots::new(2);
        let a = p.acquire(d(1)).unwrap();
        let b = p.acquire(d(1)).unwrap();
        assert_eq!(p.acquire(d(1)), None, "limit reached");
        p.release(d(1), a.socket);
        assert_eq!(
            p.acquire(d(1)),
            Some(Acquired {
                socket: a.socket,
                new: false
            })
        );
        p.release(d(1), b.socket);
        p.release(d(1), a.socket);
        // All free: the key is forgotten and starts again at socket 0.
        assert_eq!(
            p.acquire(d(1)),
            Some(Acquired {
                socket: 0,
                new: false
            })
        );
    }

    #[test]
    fn exclusive_sessions_get_distinct_sockets() {
        let mut p = PortSlots::new(10);
        let s: Vec<u32> = (0..5)
            .map(|_| p.acquire(EXCLUSIVE).unwrap().socket)
            .collect();
        assert_eq!(s, [0, 1, 2, 3, 4]);
        // A shared-key session can still use those sockets for its own downstream.
        assert_eq!(
            p.acquire(d(9)).unwrap(),
            Acquired {
                socket: 0,
                new: false
            }
        );
    }

    #[test]
    fn abandoning_a_failed_open() {
        let mut p = PortSlots::new(10);
        let a = p.acquire(d(1)).unwrap();
        assert!(a.new);
        p.abandon_new(d(1), a.socket);
        assert_eq!(p.opened(), 0);
        assert_eq!(
            p.acquire(d(1)).unwrap(),
            Acquired {
                socket: 0,
                new: true
            }
        );
    }
}
