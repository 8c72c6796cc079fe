//! Session lifecycle when the downstream set changes at run time, driven through the control
//! plane (the calls the admin API makes): sessions on a removed downstream are re-pinned on
//! their next datagram, draining downstreams keep their sessions and get no new ones.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

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
        let s = echo_sinks(2, "127.0.0.1");
        let cfg = fanout_config::from_yaml(&one_listener(
            "name: l, bind: '127.0.0.1:0', session: {reply: true}",
            &addresses(&s),
            &["dataplane: {workers: 1}"],
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
