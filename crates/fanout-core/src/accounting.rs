//! Why a datagram was dropped.
//!
//! Every datagram a listener receives ends up either forwarded (once per target) or dropped with
//! exactly one of these reasons, so that `received == forwarded + dropped` holds per target at
//! every scrape once traffic stops. The list is closed on purpose: metrics label values are
//! fixed, dashboards and alerts can rely on them, and the per-worker counters are a plain array
//! indexed by the reason.

use crate::select::{Endpoint, EndpointState};

/// A reason for dropping a datagram (or one copy of it, for mirrored listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// The listener has no downstream to send to (the set is empty, or no downstream in it
    /// takes new flows).
    NoDownstream = 0,
    /// The kernel refused the send (unreachable network, permission, bad address, ...).
    SendError = 1,
    /// The egress socket stayed full for longer than the configured send timeout.
    BufferFull = 2,
    /// The datagram was larger than the receive buffer and arrived cut short.
    Truncated = 3,
    /// The datagram could not be parsed (kernel plane: bad headers).
    Malformed = 4,
    /// A reply came from an address that is no downstream of the listener.
    UnknownSource = 5,
    /// A reply arrived for a client that has no session (expired or evicted).
    NoSession = 6,
    /// The datagram is too large for the destination's address family.
    TooLarge = 7,
    /// A reply from a mirror's shadow downstream (only the primary's replies are relayed).
    ShadowReply = 8,
    /// No upstream socket could be opened for a new session (file descriptor or port limit).
    NoUpstreamPort = 9,
}

impl DropReason {
    /// Number of reasons; counters are arrays of this length.
    pub const COUNT: usize = 10;

    /// Every reason, in `repr` order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::NoDownstream,
        DropReason::SendError,
        DropReason::BufferFull,
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::NoSession,
        DropReason::TooLarge,
        DropReason::ShadowReply,
        DropReason::NoUpstreamPort,
    ];

    /// The `reason` label value used in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::NoDownstream => "no_downstream",
            DropReason::SendError => "send_error",
            DropReason::BufferFull => "buffer_full",
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::NoSession => "no_session",
            DropReason::TooLarge => "too_large",
            DropReason::ShadowReply => "shadow_reply",
            DropReason::NoUpstreamPort => "no_upstream_port",
        }
    }

    /// Index into a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}

/// What one endpoint (downstream) of a listener has been sent, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// The downstream's address.
    pub addr: std::net::SocketAddr,
    /// Datagrams sent to it.
    pub packets: u64,
    /// Payload bytes sent to it.
    pub bytes: u64,
    /// Health as last probed; `None` when no health check is configured.
    pub healthy: Option<bool>,
    /// Live sessions pinned to it now (for mirror listeners: with it as their primary; shadows
    /// count none). `None` when the listener keeps no sessions (and from the kernel plane,
    /// which keeps none yet). Sessions that pick a downstream per datagram (`sticky: false`
    /// with replies) are pinned to none, so they count here for no downstream.
    pub sessions: Option<u64>,
}

/// How many sessions began, ended and moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionCounts {
    /// Sessions created.
    pub created: u64,
    /// Sessions ended after their idle timeout.
    pub expired: u64,
    /// Sessions evicted (least recently used) to make room in a full table.
    pub evicted: u64,
    /// Sessions moved to another downstream because theirs left the set.
    pub repinned: u64,
}

/// The counters of one listener at one moment, as both data planes report them. The metrics
/// exporter turns these into the Prometheus series of the user-facing contract.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerSnapshot {
    /// Listener name (the `listener` label).
    pub name: String,
    /// Datagrams received from clients.
    pub received: u64,
    /// Payload bytes received from clients.
    pub bytes_received: u64,
    /// Datagrams sent to downstreams (a mirrored datagram counts once per copy).
    pub forwarded: u64,
    /// Payload bytes sent to downstreams.
    pub bytes_forwarded: u64,
    /// Drops, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::COUNT],
    /// Per-downstream counters of the current downstream set.
    pub downstreams: Vec<EndpointSnapshot>,
    /// Downstreams currently taking new flows.
    pub downstream_active: u64,
    /// Live sessions, when the listener keeps sessions.
    pub sessions_active: Option<u64>,
    /// Replies relayed from downstreams back to clients.
    pub replies: u64,
    /// Datagrams received from downstreams on the reply path.
    pub replies_received: u64,
    /// Reply-path drops, indexed by [`DropReason::index`].
    pub replies_dropped: [u64; DropReason::COUNT],
    /// Session lifecycle counters; zero for listeners without sessions.
    pub sessions: SessionCounts,
    /// Datagrams the kernel dropped before udp-fanout could read them (socket buffer full).
    pub socket_drops: u64,
}

impl ListenerSnapshot {
    /// Total drops over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// The downstream half of a listener's snapshot, alike in both planes: one
/// [`EndpointSnapshot`] per endpoint of the listener's current set, in order, with what `sent`
/// gives for it ((packets, bytes), in the same order; the list ends with the shorter of the
/// two), and how many of the endpoints take new flows (`downstream_active`). `healthy` is left
/// `None`: the data planes do not probe health. `sessions` is left `None` too: a plane that
/// keeps sessions fills it in.
pub fn downstream_snapshots(
    endpoints: &[Endpoint],
    sent: impl IntoIterator<Item = (u64, u64)>,
) -> (Vec<EndpointSnapshot>, u64) {
    let downstreams = endpoints
        .iter()
        .zip(sent)
        .map(|(e, (packets, bytes))| EndpointSnapshot {
            addr: e.addr,
            packets,
            bytes,
            healthy: None,
            sessions: None,
        })
        .collect();
    let active = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Active)
        .count() as u64;
    (downstreams, active)
}

/// Merges the snapshots of several data planes: listeners of the same name (a kernel-plane
/// listener and its userspace slow path) are added up, their downstreams matched by address.
/// Order follows the first appearance of each listener.
pub fn merge_snapshots(parts: impl IntoIterator<Item = ListenerSnapshot>) -> Vec<ListenerSnapshot> {
    let mut out: Vec<ListenerSnapshot> = Vec::new();
    for s in parts {
        match out.iter_mut().find(|o| o.name == s.name) {
            None => out.push(s),
            Some(o) => add_into(o, s),
        }
    }
    out
}

fn add_into(o: &mut ListenerSnapshot, s: ListenerSnapshot) {
    o.received += s.received;
    o.bytes_received += s.bytes_received;
    o.forwarded += s.forwarded;
    o.bytes_forwarded += s.bytes_forwarded;
    for (a, b) in o.dropped.iter_mut().zip(s.dropped) {
        *a += b;
    }
    for e in s.downstreams {
        match o.downstreams.iter_mut().find(|x| x.addr == e.addr) {
            Some(x) => {
                x.packets += e.packets;
                x.bytes += e.bytes;
                x.healthy = x.healthy.or(e.healthy);
                x.sessions = add_gauges(x.sessions, e.sessions);
            }
            None => o.downstreams.push(e),
        }
    }
    o.downstream_active = o.downstream_active.max(s.downstream_active);
    o.sessions_active = add_gauges(o.sessions_active, s.sessions_active);
    o.replies += s.replies;
    o.replies_received += s.replies_received;
    for (a, b) in o.replies_dropped.iter_mut().zip(s.replies_dropped) {
        *a += b;
    }
    o.sessions.created += s.sessions.created;
    o.sessions.expired += s.sessions.expired;
    o.sessions.evicted += s.sessions.evicted;
    o.sessions.repinned += s.sessions.repinned;
    o.socket_drops += s.socket_drops;
}

/// The sum of two optional gauges: `None` only when neither side has one.
fn add_gauges(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn downstream_snapshots_pair_endpoints_with_their_counts() {
        let addr = |port| std::net::SocketAddr::from(([10, 0, 0, 1], port));
        let draining = Endpoint {
            state: EndpointState::Draining,
            ..Endpoint::new(addr(2))
        };
        let endpoints = [Endpoint::new(addr(1)), draining, Endpoint::new(addr(3))];
        let (downstreams, active) = downstream_snapshots(&endpoints, [(5, 50), (0, 0), (1, 10)]);
        let ep = |port, packets, bytes| EndpointSnapshot {
            addr: addr(port),
            packets,
            bytes,
            healthy: None,
            sessions: None,
        };
        assert_eq!(downstreams, vec![ep(1, 5, 50), ep(2, 0, 0), ep(3, 1, 10)]);
        assert_eq!(active, 2, "the draining one takes no new flows");
        // Counts for fewer endpoints than the set has: only those are listed; all still count
        // toward the active total.
        let (downstreams, active) = downstream_snapshots(&endpoints, [(7, 70)]);
        assert_eq!(downstreams, vec![ep(1, 7, 70)]);
        assert_eq!(active, 2);
    }

    #[test]
    fn same_listener_adds_up_and_others_stay() {
        let ep = |port, packets| EndpointSnapshot {
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            packets,
            bytes: packets * 10,
            healthy: None,
            sessions: None,
        };
        let a = ListenerSnapshot {
            name: "l".into(),
            received: 5,
            forwarded: 5,
            downstreams: vec![ep(1, 5)],
            downstream_active: 2,
            ..Default::default()
        };
        let mut b = ListenerSnapshot {
            name: "l".into(),
            received: 2,
            forwarded: 1,
            downstreams: vec![ep(1, 1), ep(2, 0)],
            downstream_active: 2,
            ..Default::default()
        };
        b.dropped[DropReason::Malformed.index()] = 1;
        let c = ListenerSnapshot {
            name: "other".into(),
            received: 9,
            ..Default::default()
        };
        let m = merge_snapshots([a, b, c]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].received, m[0].forwarded, m[0].dropped_total()),
            (7, 6, 1)
        );
        assert_eq!(m[0].downstreams, vec![ep(1, 6), ep(2, 0)]);
        assert_eq!(m[0].downstream_active, 2);
        assert_eq!(m[1].received, 9);
    }

    #[test]
    fn per_downstream_sessions_add_up_when_either_side_has_them() {
        let ep = |port, sessions| EndpointSnapshot {
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            packets: 0,
            bytes: 0,
            healthy: None,
            sessions,
        };
        let l = |downstreams| ListenerSnapshot {
            name: "l".into(),
            downstreams,
            ..Default::default()
        };
        let kernel = l(vec![ep(1, None), ep(2, None), ep(4, None)]);
        let user = l(vec![ep(1, Some(3)), ep(2, Some(0)), ep(3, Some(2))]);
        let again = l(vec![ep(1, Some(1))]);
        let m = merge_snapshots([kernel, user, again]);
        assert_eq!(
            m[0].downstreams,
            vec![ep(1, Some(4)), ep(2, Some(0)), ep(4, None), ep(3, Some(2))]
        );
    }
}
