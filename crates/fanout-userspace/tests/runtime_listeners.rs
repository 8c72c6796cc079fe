//! Listeners added, removed and re-created while the plane runs (what reload does), with real
//! loopback sockets and two workers: each change takes effect for every worker, a removed
//! listener's port is free, a failed change leaves the plane as it was, and a listener that
//! streams next to the changes loses no datagram and keeps its sessions and counters.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_config::{Config, ListenerConfig};
use fanout_core::ListenerSnapshot;
use fanout_testkit::{GenConfig, GenReport, Sink, SinkHandle, SinkOptions, eventually, generator};
use fanout_userspace::{ListenerShared, PlaneError, UserspacePlane};

/// Longest wait for datagrams to land.
const WAIT: Duration = Duration::from_secs(10);

/// A config of `listeners` (YAML flow-map bodies) served by two workers.
fn config(listeners: &[&str]) -> Config {
    let items: Vec<String> = listeners.iter().map(|l| format!("{{{l}}}")).collect();
    let yaml = format!(
        "listeners: [{}]\ndataplane: {{workers: 2}}",
        items.join(", ")
    );
    fanout_config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// One listener's config, as a reload would hand it over.
fn listener(body: &str) -> ListenerConfig {
    config(&[body]).listeners.remove(0)
}

fn sink(opts: SinkOptions) -> SinkHandle {
    Sink::serve(&["127.0.0.1:0".parse().unwrap()], opts).unwrap()
}

fn addr(s: &SinkHandle) -> SocketAddr {
    s.local_addrs()[0]
}

/// `count` datagrams to `to` from 8 clients, paced so that no socket buffer on the way can
/// overflow: every datagram sent must arrive.
fn traffic(to: SocketAddr, count: Option<u64>) -> GenConfig {
    let mut g = GenConfig::new(to);
    g.flows = 8;
    g.rate_pps = 4000;
    g.count = count;
    g.duration = Some(Duration::from_secs(60));
    g
}

fn send(to: SocketAddr, count: u64) -> GenReport {
    let r = generator::run(&traffic(to, Some(count)), &AtomicBool::new(false)).unwrap();
    assert_eq!((r.sent, r.send_errors), (count, 0), "sending to {to}");
    r
}

/// Waits until `s` counted exactly `n` datagrams.
fn wait_total(s: &SinkHandle, n: u64) {
    let landed = eventually(WAIT, || s.total_datagrams() >= n);
    assert!(
        landed && s.total_datagrams() == n,
        "sink {} got {} of {n}",
        addr(s),
        s.total_datagrams()
    );
}

/// `l`'s counters once `done` holds for them: a worker publishes its counts after the batch's
/// `sendmmsg`, so a sink may count a datagram before the listener does.
fn counted(l: &ListenerShared, done: impl Fn(&ListenerSnapshot) -> bool) -> ListenerSnapshot {
    eventually(WAIT, || done(&l.snapshot()));
    l.snapshot()
}

fn names(plane: &UserspacePlane) -> Vec<String> {
    plane
        .listeners()
        .iter()
        .map(|l| l.name().to_owned())
        .collect()
}

/// Sends `what` from a fresh client to `to` and checks the answer comes back from `to`.
fn ask(to: SocketAddr, what: &[u8]) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.send_to(what, to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (what, to));
}

/// The port of `a` is free: a plain bind (no SO_REUSEPORT) of it succeeds.
fn assert_free(a: SocketAddr) -> UdpSocket {
    UdpSocket::bind(a).unwrap_or_else(|e| panic!("{a} is still held: {e}"))
}

/// The changes made while `steady` streams: add `dyn` (sessions, replies) and use it, remove
/// it (port free, nothing forwarded any more), re-create it on the same port towards another
/// sink and use that.
fn churn(plane: &UserspacePlane, first: &SinkHandle, second: &SinkHandle) {
    let added = plane
        .add_listener(&listener(&format!(
            "name: dyn, bind: '127.0.0.1:0', session: {{reply: true}}, downstreams: ['{}']",
            addr(first)
        )))
        .unwrap();
    let at = added.local_addr();
    assert_eq!(names(plane), ["steady", "dyn"]);
    assert!(Arc::ptr_eq(&plane.listener("dyn").unwrap(), &added));
    ask(at, b"through an added listener");
    send(at, 400);
    wait_total(first, 401);
    // The echoes are relayed after the sink counted them.
    assert!(eventually(WAIT, || added.snapshot().replies == 401));
    let s = added.snapshot();
    assert_eq!((s.received, s.forwarded, s.dropped_total()), (401, 401, 0));
    assert_eq!(s.sessions_active, Some(9), "one session per client");
    // The sessions' upstream sockets, as the sink saw them: held while the listener is.
    let upstream: Vec<SocketAddr> = first.snapshot().ports[0].sources.keys().copied().collect();
    assert_eq!(upstream.len(), 9, "one upstream socket per session");
    assert!(upstream.iter().all(|&a| UdpSocket::bind(a).is_err()));

    plane.remove_listener("dyn").unwrap();
    assert_eq!(names(plane), ["steady"]);
    assert!(plane.listener("dyn").is_none());
    // Sessions and their sockets went with it.
    for &a in &upstream {
        drop(assert_free(a));
    }
    // Free, and what is sent there now reaches whoever holds the port, not the old sink.
    let probe = assert_free(at);
    probe.set_read_timeout(Some(WAIT)).unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"after removal", at)
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = probe.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after removal");
    drop(probe);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(first.total_datagrams(), 401, "a removed listener forwarded");

    let again = plane
        .add_listener(&listener(&format!(
            "name: dyn, bind: '{at}', downstreams: ['{}']",
            addr(second)
        )))
        .unwrap();
    assert_eq!(again.local_addr(), at);
    send(at, 400);
    wait_total(second, 400);
    assert_eq!(first.total_datagrams(), 401);
    let s = counted(&again, |s| s.forwarded >= 400);
    assert_eq!(
        (s.received, s.forwarded, s.sessions_active),
        (400, 400, None)
    );
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn listeners_come_and_go_while_another_streams_losing_nothing() {
    let steady_sink = sink(SinkOptions::echoing());
    let (first, second) = (sink(SinkOptions::echoing()), sink(SinkOptions::default()));
    let plane = UserspacePlane::start(&config(&[&format!(
        "name: steady, bind: '127.0.0.1:0', session: {{reply: true}}, downstreams: ['{}']",
        addr(&steady_sink)
    )]))
    .unwrap();
    let steady = plane.listener("steady").unwrap();
    let stop = AtomicBool::new(false);
    let mut g = traffic(steady.local_addr(), None);
    g.expect_replies = true;
    let run = std::thread::scope(|sc| {
        let stream = sc.spawn(|| generator::run(&g, &stop).unwrap());
        // Ends the stream however this closure ends, so that a failed check fails at once.
        let ending = StopOnDrop(&stop);
        // Let the stream run, its sessions exist, before anything changes, and after.
        assert!(eventually(WAIT, || steady.snapshot().sessions_active
            == Some(8)
            && steady_sink.total_datagrams() >= 1000));
        churn(&plane, &first, &second);
        let after = steady_sink.total_datagrams();
        assert!(eventually(WAIT, || steady_sink.total_datagrams() >= after + 1000));
        drop(ending);
        stream.join().unwrap()
    });
    assert!(run.sent > 2000 && run.send_errors == 0, "{run:?}");
    wait_total(&steady_sink, run.sent);
    // Every echo relayed back (the generator itself stops reading replies when told to stop).
    let s = counted(&steady, |s| s.replies >= run.sent);
    assert!(run.replies_received > 0 && run.replies_received <= run.sent);
    // The same listener, its counters and sessions from before the changes.
    assert!(Arc::ptr_eq(&plane.listener("steady").unwrap(), &steady));
    assert_eq!(
        (s.received, s.forwarded, s.dropped_total(), s.replies),
        (run.sent, run.sent, 0, run.sent)
    );
    assert_eq!((s.sessions.created, s.sessions_active), (8, Some(8)));
    plane.stop();
}

#[test]
fn adding_on_a_taken_port_fails_as_at_start_and_changes_nothing() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let s = sink(SinkOptions::default());
    let on_taken = format!("name: late, bind: '{at}', downstreams: ['{}']", addr(&s));
    let at_start = UserspacePlane::start(&config(&[&on_taken])).unwrap_err();

    let plane = UserspacePlane::start(&config(&[&format!(
        "name: l, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&s)
    )]))
    .unwrap();
    let l = plane.listener("l").unwrap();
    send(l.local_addr(), 100);
    wait_total(&s, 100);
    counted(&l, |s| s.forwarded >= 100);
    let before = plane.snapshot();
    let e = plane.add_listener(&listener(&on_taken)).unwrap_err();
    assert!(matches!(e, PlaneError::Bind { .. }), "{e:?}");
    assert_eq!(e.to_string(), at_start.to_string());
    assert_eq!(
        e.to_string(),
        format!("listener \"late\": cannot bind {at}: address already in use")
    );
    assert_eq!(names(&plane), ["l"]);
    assert_eq!(plane.snapshot(), before);
    // A name already served is refused too, before anything is bound.
    let twice = format!(
        "name: l, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&s)
    );
    let e = plane.add_listener(&listener(&twice)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "listener \"l\": already served by the userspace plane"
    );
    assert!(Arc::ptr_eq(&plane.listener("l").unwrap(), &l));
    send(l.local_addr(), 100);
    wait_total(&s, 200);
    // The port is still the other socket's alone: it gets what is sent there.
    taken.set_read_timeout(Some(WAIT)).unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"still mine", at)
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = taken.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");
    plane.stop();
}

#[test]
fn removing_an_unknown_listener_fails() {
    let s = sink(SinkOptions::default());
    let plane = UserspacePlane::start(&config(&[&format!(
        "name: l, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&s)
    )]))
    .unwrap();
    let e = plane.remove_listener("nope").unwrap_err();
    assert!(matches!(e, PlaneError::Unknown { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the userspace plane serves no listener \"nope\""
    );
    // Removing the last listener works, and a second time it is unknown.
    let at = plane.listener("l").unwrap().local_addr();
    plane.remove_listener("l").unwrap();
    assert!(plane.listeners().is_empty() && plane.snapshot().is_empty());
    drop(assert_free(at));
    assert!(matches!(
        plane.remove_listener("l"),
        Err(PlaneError::Unknown { .. })
    ));
    plane.stop();
}

#[test]
fn an_added_listener_of_a_new_address_family_gets_egress_sockets() {
    let Ok(v6) = Sink::serve(&["[::1]:0".parse().unwrap()], SinkOptions::default()) else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let v4 = sink(SinkOptions::default());
    let plane = UserspacePlane::start(&config(&[&format!(
        "name: four, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&v4)
    )]))
    .unwrap();
    let six = plane
        .add_listener(&listener(&format!(
            "name: six, bind: '127.0.0.1:0', downstreams: ['{}']",
            addr(&v6)
        )))
        .unwrap();
    send(six.local_addr(), 200);
    wait_total(&v6, 200);
    let s = counted(&six, |s| s.forwarded >= 200);
    assert_eq!((s.forwarded, s.dropped_total()), (200, 0));
    plane.stop();
}

#[test]
fn a_stopping_plane_adds_nothing() {
    let s = sink(SinkOptions::default());
    let plane = UserspacePlane::start(&config(&[&format!(
        "name: l, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&s)
    )]))
    .unwrap();
    plane.request_stop();
    let late = format!(
        "name: late, bind: '127.0.0.1:0', downstreams: ['{}']",
        addr(&s)
    );
    let e = plane.add_listener(&listener(&late)).unwrap_err();
    assert!(matches!(e, PlaneError::Stopped { .. }), "{e:?}");
    assert_eq!(names(&plane), ["l"]);
    plane.stop();
}

#[test]
fn a_slot_freed_between_listeners_is_reused_without_mixing_them() {
    let sinks: Vec<SinkHandle> = (0..4).map(|_| sink(SinkOptions::echoing())).collect();
    let body = |name: &str, s: &SinkHandle| {
        format!(
            "name: {name}, bind: '127.0.0.1:0', session: {{reply: true}}, downstreams: ['{}']",
            addr(s)
        )
    };
    let plane = UserspacePlane::start(&config(&[&body("first", &sinks[0])])).unwrap();
    let a = plane
        .add_listener(&listener(&body("a", &sinks[1])))
        .unwrap();
    let b = plane
        .add_listener(&listener(&body("b", &sinks[2])))
        .unwrap();
    ask(a.local_addr(), b"a");
    ask(b.local_addr(), b"b, before");
    plane.remove_listener("a").unwrap();
    // `c` takes the slot `a` left, in front of `b`'s.
    let c = plane
        .add_listener(&listener(&body("c", &sinks[3])))
        .unwrap();
    assert_eq!(names(&plane), ["first", "b", "c"]);
    for (l, n) in [(&b, 300), (&c, 200)] {
        send(l.local_addr(), n);
    }
    ask(b.local_addr(), b"b, after");
    ask(c.local_addr(), b"c");
    ask(plane.listener("first").unwrap().local_addr(), b"first");
    // A sink publishes its count after it echoed.
    wait_total(&sinks[0], 1);
    wait_total(&sinks[2], 302);
    wait_total(&sinks[3], 201);
    assert_eq!(
        [sinks[0].total_datagrams(), sinks[1].total_datagrams()],
        [1, 1]
    );
    plane.stop();
}
