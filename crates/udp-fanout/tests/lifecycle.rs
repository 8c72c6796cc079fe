//! Session lifecycle when the downstream set changes at run time, driven through the control
//! plane's `Control::set_endpoints` (the call a reload or the admin API will make): sessions
//! on a removed downstream are re-pinned on their next datagram, draining downstreams keep
//! their sessions and get no new ones.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use fanout_control::{Control, Desired, Plane, Source};
use fanout_core::select::{Endpoint, EndpointState};
use fanout_testkit::{Sink, SinkHandle, SinkOptions};
use fanout_userspace::UserspacePlane;

fn echo_sink() -> SinkHandle {
    Sink::bind(
        &["127.0.0.1:0".parse().unwrap()],
        SinkOptions {
            echo: true,
            ..SinkOptions::default()
        },
    )
    .unwrap()
    .start()
    .unwrap()
}

fn ask(c: &UdpSocket, to: SocketAddr, what: &[u8]) {
    c.send_to(what, to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (what, to));
}

/// Waits until the two sinks together counted `n` datagrams (a sink may answer before its
/// counter is published).
fn settle(a: &SinkHandle, b: &SinkHandle, n: u64) {
    let t0 = std::time::Instant::now();
    while a.total_datagrams() + b.total_datagrams() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "sinks did not count {n}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn start(a: &SinkHandle, b: &SinkHandle) -> (Arc<UserspacePlane>, Control) {
    let cfg = fanout_config::from_yaml(&format!(
        "listeners: [{{name: l, bind: '127.0.0.1:0', downstreams: ['{}', '{}'], session: {{reply: true}}}}]\ndataplane: {{workers: 1}}",
        a.local_addrs()[0],
        b.local_addrs()[0]
    ))
    .unwrap();
    let plane = Arc::new(UserspacePlane::start(&cfg).unwrap());
    let control = Control::new(
        Desired::from_config(&cfg),
        vec![Arc::clone(&plane) as Arc<dyn Plane>],
    );
    (plane, control)
}

/// Replaces listener `l`'s downstreams through the control plane, which records them.
fn set(control: &Control, endpoints: Vec<Endpoint>) {
    control.set_endpoints("l", endpoints.clone()).unwrap();
    let d = control.desired();
    let l = d.listener("l").unwrap();
    assert_eq!((l.source, &l.endpoints), (Source::Runtime, &endpoints));
}

fn stop(plane: Arc<UserspacePlane>, control: Control) {
    drop(control);
    Arc::into_inner(plane).unwrap().stop();
}

#[test]
fn sessions_on_a_removed_downstream_are_repinned() {
    let (a, b) = (echo_sink(), echo_sink());
    let (plane, control) = start(&a, &b);
    let l = plane.listener("l").unwrap();
    let to = l.local_addr();
    let c = client();
    ask(&c, to, b"one");
    settle(&a, &b, 1);
    let (first, other) = if a.total_datagrams() == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(first.total_datagrams(), 1);
    // Remove the session's downstream.
    set(&control, vec![Endpoint::new(other.local_addrs()[0])]);
    ask(&c, to, b"two");
    settle(&a, &b, 2);
    assert_eq!(
        other.total_datagrams(),
        1,
        "re-pinned to the remaining downstream"
    );
    assert_eq!(first.total_datagrams(), 1);
    let snap = l.snapshot();
    assert_eq!(snap.sessions.repinned, 1);
    assert_eq!(snap.sessions.created, 1, "the same session moved");
    assert_eq!(snap.sessions_active, Some(1));
    // And it stays there.
    ask(&c, to, b"three");
    settle(&a, &b, 3);
    assert_eq!(other.total_datagrams(), 2);
    stop(plane, control);
}

#[test]
fn draining_downstreams_keep_sessions_and_get_no_new_ones() {
    let (a, b) = (echo_sink(), echo_sink());
    let (plane, control) = start(&a, &b);
    let l = plane.listener("l").unwrap();
    let to = l.local_addr();
    let c1 = client();
    ask(&c1, to, b"x");
    settle(&a, &b, 1);
    let (first, other) = if a.total_datagrams() == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let mut e1 = Endpoint::new(first.local_addrs()[0]);
    e1.state = EndpointState::Draining;
    set(&control, vec![e1, Endpoint::new(other.local_addrs()[0])]);
    for _ in 0..5 {
        ask(&c1, to, b"x");
    }
    settle(&a, &b, 6);
    assert_eq!(
        first.total_datagrams(),
        6,
        "the existing session stays on the draining downstream"
    );
    for _ in 0..5 {
        ask(&client(), to, b"new");
    }
    settle(&a, &b, 11);
    assert_eq!(other.total_datagrams(), 5, "new sessions go elsewhere");
    assert_eq!(l.snapshot().sessions.repinned, 0);
    stop(plane, control);
}

#[test]
fn emptied_set_drops_with_no_downstream_then_recovers() {
    let (a, b) = (echo_sink(), echo_sink());
    let (plane, control) = start(&a, &b);
    let l = plane.listener("l").unwrap();
    let to = l.local_addr();
    let c = client();
    ask(&c, to, b"x");
    set(&control, vec![]);
    c.send_to(b"lost", to).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while l.snapshot().dropped[fanout_core::DropReason::NoDownstream.index()] == 0 {
        assert!(std::time::Instant::now() < deadline, "drop not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    set(&control, vec![Endpoint::new(b.local_addrs()[0])]);
    ask(&c, to, b"back");
    let s = l.snapshot();
    assert_eq!(s.received, 3);
    assert_eq!(s.forwarded + s.dropped_total(), 3);
    stop(plane, control);
}
