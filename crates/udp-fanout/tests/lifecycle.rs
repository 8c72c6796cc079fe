//! Session lifecycle when the downstream set changes at run time, driven through the control
//! plane (the calls the admin API makes): sessions on a removed downstream are re-pinned on
//! their next datagram, draining downstreams keep their sessions and get no new ones, and each
//! downstream's count of the sessions pinned to it follows.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{addresses, ask, client, echo_sinks, eventually, one_listener};
use fanout_control::{AdminState, Control, Plane};
use fanout_testkit::SinkHandle;
use fanout_userspace::{ListenerShared, UserspacePlane};

/// What every test here runs against: two echo sinks, and a userspace plane (one worker)
/// whose listener `l` balances over them and relays replies, under a control plane.
struct Rig {
    a: SinkHandle,
    b: SinkHandle,
    plane: Arc<UserspacePlane>,
    control: Control,
    /// Listener `l`.
    l: Arc<ListenerShared>,
    /// Its address.
    to: SocketAddr,
}

impl Rig {
    fn start() -> Rig {
        Rig::with("{reply: true}", 1)
    }

    /// Listener `l` with the `session` settings `session`, on `workers` workers.
    fn with(session: &str, workers: usize) -> Rig {
        let s = echo_sinks(2, "127.0.0.1");
        let cfg = fanout_config::from_yaml(&one_listener(
            &format!("name: l, bind: '127.0.0.1:0', session: {session}"),
            &addresses(&s),
            &[&format!("dataplane: {{workers: {workers}}}")],
        ))
        .unwrap();
        let [a, b]: [SinkHandle; 2] = s.try_into().unwrap();
        let plane = Arc::new(UserspacePlane::start(&cfg).unwrap());
        let control = Control::new(&cfg, vec![Arc::clone(&plane) as Arc<dyn Plane>]);
        let l = plane.listener("l").unwrap();
        let to = l.local_addr();
        Rig {
            a,
            b,
            plane,
            control,
            l,
            to,
        }
    }

    /// Sends `what` from `c` to the listener and checks that it comes back from there,
    /// unchanged.
    fn ask(&self, c: &UdpSocket, what: &[u8]) {
        ask(c, self.to, what);
    }

    /// Waits until the two sinks together counted `n` datagrams (a sink may answer before its
    /// counter is published).
    fn settle(&self, n: u64) {
        let both = || self.a.total_datagrams() + self.b.total_datagrams();
        assert!(
            eventually(Duration::from_secs(5), || both() >= n),
            "sinks did not count {n}"
        );
    }

    /// Opens `c`'s session with `what` and returns the sink it landed on, then the other one.
    fn open_session(&self, c: &UdpSocket, what: &[u8]) -> (&SinkHandle, &SinkHandle) {
        self.ask(c, what);
        self.settle(1);
        if self.a.total_datagrams() == 1 {
            (&self.a, &self.b)
        } else {
            (&self.b, &self.a)
        }
    }

    /// Removes `addr` from listener `l` at once (no drain), as `DELETE ...?now=true` does.
    fn remove(&self, addr: SocketAddr) {
        self.control.api_remove("l", addr, true).unwrap();
        let d = self.control.desired();
        let l = d.listener("l").unwrap();
        assert!(!l.downstreams().iter().any(|x| x.addr == addr));
    }

    /// Each listed downstream of `l` with its sessions, as the listener's snapshot says.
    fn pinned(&self) -> BTreeMap<SocketAddr, Option<u64>> {
        let snap = self.l.snapshot();
        snap.downstreams
            .iter()
            .map(|d| (d.addr, d.sessions))
            .collect()
    }

    /// The sessions of `addr` in `l`'s snapshot (`None`: not listed, or not counted).
    fn pinned_to(&self, addr: SocketAddr) -> Option<u64> {
        self.pinned().get(&addr).copied().flatten()
    }

    /// `n` new clients, each with one answered request, so each with a session.
    fn clients(&self, n: usize) -> Vec<UdpSocket> {
        let cs: Vec<UdpSocket> = (0..n).map(|_| client()).collect();
        for (i, c) in cs.iter().enumerate() {
            self.ask(c, format!("hello {i}").as_bytes());
        }
        cs
    }

    /// Stops the control plane, then the plane.
    fn stop(self) {
        drop(self.control);
        Arc::into_inner(self.plane).unwrap().stop();
    }
}

#[test]
fn sessions_on_a_removed_downstream_are_repinned() {
    let r = Rig::start();
    let c = client();
    let (first, other) = r.open_session(&c, b"one");
    assert_eq!(first.total_datagrams(), 1);
    // Remove the session's downstream.
    r.remove(first.local_addrs()[0]);
    r.ask(&c, b"two");
    r.settle(2);
    assert_eq!(
        other.total_datagrams(),
        1,
        "re-pinned to the remaining downstream"
    );
    assert_eq!(first.total_datagrams(), 1);
    let snap = r.l.snapshot();
    assert_eq!(snap.sessions.repinned, 1);
    assert_eq!(snap.sessions.created, 1, "the same session moved");
    assert_eq!(snap.sessions_active, Some(1));
    // And it stays there.
    r.ask(&c, b"three");
    r.settle(3);
    assert_eq!(other.total_datagrams(), 2);
    r.stop();
}

#[test]
fn draining_downstreams_keep_sessions_and_get_no_new_ones() {
    let r = Rig::start();
    let c1 = client();
    let (first, other) = r.open_session(&c1, b"x");
    // Drained for the listener's drain time (30 s by default, longer than this test).
    r.control
        .api_patch(
            "l",
            first.local_addrs()[0],
            None,
            Some(AdminState::Draining),
        )
        .unwrap();
    for _ in 0..5 {
        r.ask(&c1, b"x");
    }
    r.settle(6);
    assert_eq!(
        first.total_datagrams(),
        6,
        "the existing session stays on the draining downstream"
    );
    for _ in 0..5 {
        r.ask(&client(), b"new");
    }
    r.settle(11);
    assert_eq!(other.total_datagrams(), 5, "new sessions go elsewhere");
    assert_eq!(r.l.snapshot().sessions.repinned, 0);
    r.stop();
}

#[test]
fn emptied_set_drops_with_no_downstream_then_recovers() {
    let r = Rig::start();
    let c = client();
    r.ask(&c, b"x");
    r.remove(r.a.local_addrs()[0]);
    r.remove(r.b.local_addrs()[0]);
    c.send_to(b"lost", r.to).unwrap();
    let no_downstream = || r.l.snapshot().dropped[fanout_core::DropReason::NoDownstream.index()];
    assert!(
        eventually(Duration::from_secs(5), || no_downstream() > 0),
        "drop not counted"
    );
    r.control.api_add("l", r.b.local_addrs()[0], 1).unwrap();
    r.ask(&c, b"back");
    let s = r.l.snapshot();
    assert_eq!(s.received, 3);
    assert_eq!(s.forwarded + s.dropped_total(), 3);
    r.stop();
}

/// Downstreams with their sessions, as [`Rig::pinned`] lists them.
fn pinned<const N: usize>(of: [(SocketAddr, Option<u64>); N]) -> BTreeMap<SocketAddr, Option<u64>> {
    BTreeMap::from(of)
}

#[test]
fn sessions_per_downstream_add_up_and_move_with_a_repin() {
    // Two workers: each counts its own sessions, the snapshot sums them.
    let r = Rig::with("{reply: true}", 2);
    let (a, b) = (r.a.local_addrs()[0], r.b.local_addrs()[0]);
    const N: usize = 24;
    let cs = r.clients(N);
    r.settle(N as u64);
    // Sticky sessions and one datagram each: a sink's datagrams are its sessions.
    let (on_a, on_b) = (r.a.total_datagrams(), r.b.total_datagrams());
    assert_eq!(r.pinned(), pinned([(a, Some(on_a)), (b, Some(on_b))]));
    assert_eq!(on_a + on_b, N as u64);
    assert!(
        on_a > 0 && on_b > 0,
        "new sessions are spread: {on_a} + {on_b}"
    );
    assert_eq!(r.l.snapshot().sessions_active, Some(N as u64));
    // `a` leaves: its sessions stay pinned to it (it is no longer listed) until their next
    // datagram moves them.
    r.remove(a);
    assert_eq!(r.pinned(), pinned([(b, Some(on_b))]));
    for c in &cs {
        r.ask(c, b"again");
    }
    r.settle(2 * N as u64);
    assert_eq!(
        r.pinned(),
        pinned([(b, Some(N as u64))]),
        "moved, one for one"
    );
    let snap = r.l.snapshot();
    assert_eq!(snap.sessions.repinned, on_a);
    assert_eq!(snap.sessions_active, Some(N as u64));
    // `a` comes back with nothing pinned to it: new sessions may go there again.
    r.control.api_add("l", a, 1).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || r.pinned()
            == pinned([(b, Some(N as u64)), (a, Some(0))])),
        "{:?}",
        r.pinned()
    );
    r.stop();
}

#[test]
fn a_downstream_back_in_the_set_shows_the_sessions_it_kept() {
    let r = Rig::with("{reply: true}", 2);
    let (a, b) = (r.a.local_addrs()[0], r.b.local_addrs()[0]);
    r.clients(10);
    r.settle(10);
    let (on_a, on_b) = (r.a.total_datagrams(), r.b.total_datagrams());
    assert!(on_a > 0);
    // Out and back in with no traffic between: its sessions never moved, but its counters
    // in the set are new. The workers publish the count for the new set without traffic.
    r.remove(a);
    r.control.api_add("l", a, 1).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || r.pinned_to(a) == Some(on_a)),
        "{:?}",
        r.pinned()
    );
    assert_eq!(r.pinned_to(b), Some(on_b));
    r.stop();
}

#[test]
fn sessions_per_downstream_end_with_their_sessions() {
    let r = Rig::with("{reply: true, idle_timeout_secs: 1}", 2);
    r.clients(8);
    let total = |r: &Rig| r.pinned().values().map(|n| n.unwrap()).sum::<u64>();
    assert_eq!(total(&r), 8);
    assert!(
        eventually(Duration::from_secs(5), || total(&r) == 0),
        "{:?}",
        r.pinned()
    );
    let snap = r.l.snapshot();
    assert_eq!((snap.sessions_active, snap.sessions.expired), (Some(0), 8));
    r.stop();
}

#[test]
fn sessions_that_pick_per_datagram_count_for_no_downstream() {
    let r = Rig::with("{reply: true, sticky: false}", 1);
    r.clients(4);
    assert_eq!(r.l.snapshot().sessions_active, Some(4));
    let (a, b) = (r.a.local_addrs()[0], r.b.local_addrs()[0]);
    assert_eq!(r.pinned(), pinned([(a, Some(0)), (b, Some(0))]));
    r.stop();
}
