//! The running plane on `lo` in a private network namespace: set updates, listeners added
//! and removed, and what scrapes see meanwhile.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;

use super::*;

fn ep(port: u16) -> Endpoint {
    Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The longest a scrape may take while updates run: a handful of map reads, so far below
/// both a retired bank's rest and a Maglev table write.
const SCRAPE_LIMIT: Duration = Duration::from_millis(10);

/// Between two scrapes of [`scrape_during`]: many scrapes per bank write all the same.
const SCRAPE_PAUSE: Duration = Duration::from_micros(500);

/// Starts a plane with `listeners` (YAML list items, TC on `lo`) in a private network
/// namespace, this thread's only, with `lo` up. `None` when `test` cannot run here (not
/// root): then it skips, or fails if it must run (see
/// [`fanout_testkit::netns::privileged`]).
fn plane_on_lo(test: &str, listeners: &str) -> Option<KernelPlane> {
    if !fanout_testkit::netns::privileged(test) {
        return None;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    // Commands run from this thread run in its namespace.
    sh(&["ip", "link", "set", "lo", "up"]);
    let cfg = fanout_config::from_yaml(&format!("listeners:\n{listeners}")).unwrap();
    Some(KernelPlane::start(&cfg).unwrap().unwrap())
}

fn sh(args: &[&str]) {
    fanout_testkit::netns::sh(args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Runs `updates` on another thread while this one scrapes in a loop, each scrape checked
/// against `check`; returns the slowest scrape, how many there were and what `updates`
/// returned.
fn scrape_during<T: Send>(
    plane: &KernelPlane,
    updates: impl FnOnce() -> T + Send,
    check: impl Fn(&[ListenerSnapshot]),
) -> (Duration, u32, T) {
    std::thread::scope(|s| {
        let updater = s.spawn(updates);
        let (mut slowest, mut scrapes) = (Duration::ZERO, 0u32);
        while !updater.is_finished() {
            let t = Instant::now();
            let snap = plane.snapshot();
            slowest = slowest.max(t.elapsed());
            scrapes += 1;
            check(&snap);
            // Scrapes are periodic, not a busy loop: one spinning here would compete for
            // the CPU with the updater (and parallel tests) and time its own preemption.
            std::thread::sleep(SCRAPE_PAUSE);
        }
        (slowest, scrapes, updater.join().unwrap())
    })
}

/// The counter slot of `listener`'s downstream `port`.
fn slot(plane: &KernelPlane, listener: &str, port: u16) -> u32 {
    let c = lock(&plane.counters);
    let l = c.listeners.iter().find(|l| l.name == listener).unwrap();
    let i = l
        .endpoints
        .iter()
        .position(|e| e.addr.port() == port)
        .unwrap();
    l.stats_ids[i]
}

/// A slot a listener gives up is not handed to another listener's new downstream until a
/// packet still on the retired bank can no longer count into it.
#[test]
fn a_given_up_counter_slot_rests_before_reuse() {
    let Some(plane) = plane_on_lo(
        "a_given_up_counter_slot_rests_before_reuse",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
  - {name: b, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5515", downstreams: ["127.0.0.1:7001"]}
"#,
    ) else {
        return;
    };
    let given_up = [slot(&plane, "a", 6001), slot(&plane, "b", 7001)];
    plane.set_endpoints("a", vec![ep(6002)]).unwrap();
    plane.set_endpoints("b", vec![ep(7002)]).unwrap();
    assert!(
        !given_up.contains(&slot(&plane, "b", 7002)),
        "reused while resting"
    );
    std::thread::sleep(BANK_REUSE_DELAY);
    plane.set_endpoints("b", vec![ep(7003)]).unwrap();
    // Rested slots are free again, and come first (the free list is a stack).
    assert!(given_up.contains(&slot(&plane, "b", 7003)));
}

/// Updates back to back each wait for the bank the previous one retired; scrapes meanwhile
/// must not wait with them (the wait holds only the writer's lock, not the counters').
#[test]
fn scrapes_do_not_wait_for_a_retired_bank() {
    let Some(plane) = plane_on_lo(
        "scrapes_do_not_wait_for_a_retired_bank",
        r#"
  - name: t
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5514"
    downstreams: ["127.0.0.1:6001"]
"#,
    ) else {
        return;
    };
    const UPDATES: u32 = 5;
    let sets = [vec![ep(6001), ep(6002)], vec![ep(6001)]];
    let (slowest, scrapes, took) = scrape_during(
        &plane,
        || {
            let t0 = Instant::now();
            for k in 0..UPDATES as usize {
                plane.set_endpoints("t", sets[k % 2].clone()).unwrap();
            }
            t0.elapsed()
        },
        |snap| assert_eq!(snap.len(), 1),
    );
    assert!(
        took >= BANK_REUSE_DELAY * (UPDATES - 1),
        "{UPDATES} updates took {took:?}: they did not wait for the retired banks"
    );
    assert!(
        slowest < SCRAPE_LIMIT,
        "a scrape took {slowest:?} (of {scrapes}) while updates waited"
    );
    let snap = plane.snapshot();
    assert_eq!(
        snap[0].downstreams.len(),
        sets[(UPDATES as usize - 1) % 2].len()
    );
}

/// A consistent_hash update writes the idle bank's Maglev table, 65,537 entries at one
/// bpf syscall each (tens of milliseconds): scrapes of any listener meanwhile must not wait
/// for those writes, and each sees one whole set, the old or the new.
#[test]
fn scrapes_do_not_wait_for_a_maglev_write() {
    let Some(plane) = plane_on_lo(
        "scrapes_do_not_wait_for_a_maglev_write",
        r#"
  - name: rr
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5514"
    downstreams: ["127.0.0.1:6001"]
  - name: hash
    mode: tc_ebpf
    interface: lo
    bind: "127.0.0.1:5515"
    distribution: consistent_hash
    downstreams: ["127.0.0.1:7001"]
"#,
    ) else {
        return;
    };
    const UPDATES: usize = 6;
    let sets = [vec![ep(7001), ep(7002), ep(7003)], vec![ep(7001)]];
    let (slowest, scrapes, fastest_update) = scrape_during(
        &plane,
        || {
            let mut fastest = Duration::MAX;
            for k in 0..UPDATES {
                let t = Instant::now();
                plane.set_endpoints("hash", sets[k % 2].clone()).unwrap();
                // Back to back, each update after the first rests the previous flip's
                // bank for BANK_REUSE_DELAY; the rest of its time is the bank write.
                if k > 0 {
                    fastest = fastest.min(t.elapsed().saturating_sub(BANK_REUSE_DELAY));
                }
            }
            fastest
        },
        |snap| {
            assert_eq!(snap.len(), 2);
            let n = snap[1].downstreams.len();
            assert!(n == 1 || n == 3, "a scrape saw {n} downstreams of hash");
        },
    );
    // Else a scrape stuck behind a whole write could pass too: the test would prove nothing.
    assert!(
        fastest_update > SCRAPE_LIMIT,
        "a Maglev write took only {fastest_update:?}: lower SCRAPE_LIMIT below it"
    );
    assert!(
        slowest < SCRAPE_LIMIT,
        "a scrape took {slowest:?} (of {scrapes}) while Maglev tables were written"
    );
    assert_eq!(plane.snapshot()[1].downstreams.len(), 1);
}

/// One listener as [`KernelPlane::add_listener`] takes it, from a YAML flow mapping (so
/// validated as in a configuration file).
fn listener(yaml: &str) -> ListenerConfig {
    let cfg = fanout_config::from_yaml(&format!("listeners:\n  - {yaml}\n")).unwrap();
    cfg.listeners.into_iter().next().unwrap()
}

/// Listener `name` on 127.0.0.1:`port`, TC on `lo`, forwarding to 127.0.0.1:`to`.
fn on_lo(name: &str, port: u16, to: u16) -> ListenerConfig {
    listener(&format!(
        r#"{{name: {name}, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:{port}", downstreams: ["127.0.0.1:{to}"]}}"#
    ))
}

/// How long [`received`] waits for one more datagram before it concludes none is coming.
const QUIET: Duration = Duration::from_millis(200);

fn udp_on(port: u16) -> UdpSocket {
    UdpSocket::bind(("127.0.0.1", port)).unwrap()
}

/// Sends `n` datagrams to 127.0.0.1:`port`, from one client socket.
fn send(port: u16, n: usize) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..n {
        c.send_to(format!("datagram {i}").as_bytes(), ("127.0.0.1", port))
            .unwrap();
    }
}

/// The datagrams `s` has or gets until [`QUIET`] passes without one.
fn received(s: &UdpSocket) -> usize {
    s.set_read_timeout(Some(QUIET)).unwrap();
    let mut buf = [0u8; 64];
    std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
}

fn snap(plane: &KernelPlane, name: &str) -> ListenerSnapshot {
    plane
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

fn id_of(plane: &KernelPlane, name: &str) -> u32 {
    let c = lock(&plane.counters);
    c.listeners.iter().find(|l| l.name == name).unwrap().id
}

/// Listeners, attachments, counter-slot and id bookkeeping: what a failed update must
/// leave as it found it.
fn state(plane: &KernelPlane) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let ids = format!("{:?}", lock(&plane.writer).ids);
    let c = lock(&plane.counters);
    // The free list's order too (a stack: which slot comes next), as a hash.
    let mut h = DefaultHasher::new();
    c.free_stats.hash(&mut h);
    let free = (c.free_stats.len(), h.finish());
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    format!(
        "{names:?} {:?} free slots {free:?} resting {:?} {ids}",
        c.attachments, c.resting
    )
}

/// BPF links in the kernel (any namespace, any process) to this plane's `program`.
fn links_to(plane: &KernelPlane, program: &str) -> usize {
    let prog = lock(&plane.writer)
        .ebpf
        .program(program)
        .unwrap()
        .info()
        .unwrap()
        .id();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| l.program_id() == prog)
        .count()
}

/// A listener added to a running plane forwards at once; removed, its datagrams reach a
/// socket on its address (as the userspace slow path's would) instead; re-created under
/// the same name and address, it forwards again, counting from zero. The other listener
/// forwards everything meanwhile.
#[test]
fn a_listener_added_while_running_forwards_until_removed() {
    let Some(plane) = plane_on_lo(
        "a_listener_added_while_running_forwards_until_removed",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    let (to_a, to_b, slow_b) = (udp_on(6001), udp_on(6002), udp_on(5515));
    let b = on_lo("b", 5515, 6002);
    plane.add_listener(&b).unwrap();
    assert_eq!(plane.listener_names(), ["a", "b"]);
    send(5515, 10);
    send(5514, 5);
    assert_eq!(
        (received(&to_b), received(&slow_b), received(&to_a)),
        (10, 0, 5)
    );
    let s = snap(&plane, "b");
    assert_eq!(
        (s.received, s.forwarded, s.downstreams[0].packets),
        (10, 10, 10)
    );
    let first_id = id_of(&plane, "b");

    plane.remove_listener("b").unwrap();
    assert_eq!(plane.listener_names(), ["a"]);
    assert_eq!(plane.snapshot().len(), 1);
    send(5515, 10);
    send(5514, 5);
    assert_eq!(
        (received(&to_b), received(&slow_b), received(&to_a)),
        (0, 10, 5)
    );

    // The receives since the removal waited longer than an id's rest: b gets its old id
    // back, whose counters must not show the old listener's counts.
    plane.add_listener(&b).unwrap();
    assert_eq!(id_of(&plane, "b"), first_id);
    send(5515, 10);
    assert_eq!((received(&to_b), received(&slow_b)), (10, 0));
    let s = snap(&plane, "b");
    assert_eq!(
        (s.received, s.forwarded, s.downstreams[0].packets),
        (10, 10, 10)
    );
    let s = snap(&plane, "a");
    assert_eq!((s.received, s.forwarded, s.dropped_total()), (10, 10, 0));
    assert_eq!(plane.attachments().len(), 1, "lo, once");
    assert_eq!(links_to(&plane, programs::TC_PROGRAM), 1);
}

/// A removed listener's id goes to a new listener only after it rested, and then without
/// the old listener's counts or round-robin position.
#[test]
fn a_removed_listeners_id_is_reused_after_a_rest_and_zeroed() {
    let Some(plane) = plane_on_lo(
        "a_removed_listeners_id_is_reused_after_a_rest_and_zeroed",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    let to = udp_on(6002);
    plane.add_listener(&on_lo("b", 5515, 6002)).unwrap();
    send(5515, 5);
    assert_eq!(received(&to), 5);
    let b_id = id_of(&plane, "b");
    plane.remove_listener("b").unwrap();
    plane.add_listener(&on_lo("c", 5516, 6002)).unwrap();
    assert_ne!(id_of(&plane, "c"), b_id, "reused while resting");
    std::thread::sleep(BANK_REUSE_DELAY);
    plane.add_listener(&on_lo("d", 5517, 6002)).unwrap();
    // Rested ids are free again, and come first (the free list is a stack).
    assert_eq!(id_of(&plane, "d"), b_id);
    let s = snap(&plane, "d");
    assert_eq!(
        (s.received, s.forwarded, s.downstreams[0].packets),
        (0, 0, 0)
    );
    send(5517, 3);
    assert_eq!(received(&to), 3);
    assert_eq!(snap(&plane, "d").received, 3);
}

/// Sixteen listeners at most, and the error says so; a full plane can still re-create a
/// listener: the add waits for the removed one's id to rest.
#[test]
fn the_listener_limit_holds_and_a_full_plane_waits_for_a_resting_id() {
    let Some(plane) = plane_on_lo(
        "the_listener_limit_holds_and_a_full_plane_waits_for_a_resting_id",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    for k in 1..UF_MAX_LISTENERS as u16 {
        plane
            .add_listener(&on_lo(&format!("l{k}"), 5514 + k, 6001))
            .unwrap();
    }
    let before = state(&plane);
    let err = plane.add_listener(&on_lo("over", 5600, 6001)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the kernel plane serves at most 16 listeners"
    );
    assert_eq!(state(&plane), before);
    let id = id_of(&plane, "l3");
    let t0 = Instant::now();
    plane.remove_listener("l3").unwrap();
    plane.add_listener(&on_lo("l3", 5517, 6001)).unwrap();
    assert!(
        t0.elapsed() >= BANK_REUSE_DELAY,
        "did not wait for the rest"
    );
    assert_eq!(id_of(&plane, "l3"), id);
    assert_eq!(plane.listener_names().len(), 16);
}

/// Every refused add leaves listeners, attachments, slots and ids as they were, with the
/// error start gives (or names the limit).
#[test]
fn a_failed_add_changes_nothing() {
    let Some(plane) = plane_on_lo(
        "a_failed_add_changes_nothing",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    let before = state(&plane);
    let many = |n: u16, distribution| {
        let mut l = on_lo("x", 5515, 7000);
        l.distribution = distribution;
        l.downstreams = (0..n)
            .map(|i| fanout_config::DownstreamConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                weight: 1,
            })
            .collect();
        l
    };
    let refused = [
        (
            listener(
                r#"{name: x, mode: tc_ebpf, interface: nope0, bind: "127.0.0.1:5515", downstreams: ["127.0.0.1:6002"]}"#,
            ),
            r#"listener "x": cannot attach tc_ebpf to interface "nope0": no such interface"#,
        ),
        (
            listener(r#"{name: x, bind: "127.0.0.1:5515", downstreams: ["127.0.0.1:6002"]}"#),
            r#"listener "x": mode: userspace is not served by the kernel plane"#,
        ),
        (
            on_lo("a", 5515, 6002),
            r#"listener "a": the kernel plane serves a listener of that name already"#,
        ),
        (
            on_lo("x", 5514, 6002),
            r#"listener "x": kernel-plane listener "a" is on 127.0.0.1:5514 already"#,
        ),
        (
            many(257, Distribution::RoundRobin),
            "257 downstreams; the kernel plane takes at most 256 per listener",
        ),
        (
            many(17, Distribution::Mirror),
            "17 mirror targets; the kernel plane copies to at most 16",
        ),
    ];
    for (l, why) in refused {
        let err = plane.add_listener(&l).unwrap_err();
        assert_eq!(err.to_string(), why);
        assert_eq!(state(&plane), before, "after: {why}");
    }
    let slow = udp_on(5515);
    send(5515, 2);
    assert_eq!(received(&slow), 2, "nothing registered on 5515");
    plane.add_listener(&on_lo("x", 5515, 6002)).unwrap();
    assert_eq!(id_of(&plane, "x"), 1, "the ids of failed adds are free");
}

/// The program comes off an interface with its last listener of that mode, not before,
/// and goes back on with the next one.
#[test]
fn the_last_listener_of_an_interface_detaches_it() {
    let Some(plane) = plane_on_lo(
        "the_last_listener_of_an_interface_detaches_it",
        r#"
  - {name: a, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    sh(&[
        "ip", "link", "add", "ufd0", "type", "veth", "peer", "name", "ufd1",
    ]);
    sh(&["ip", "link", "set", "ufd0", "up"]);
    let on = |name: &str, mode: &str, port: u16| {
        listener(&format!(
            r#"{{name: {name}, mode: {mode}, interface: ufd0, bind: "10.9.0.1:{port}", downstreams: ["10.9.1.1:7000"]}}"#
        ))
    };
    let interfaces = |p: &KernelPlane| -> Vec<String> {
        p.attachments()
            .into_iter()
            .map(|a| format!("{} {}", a.interface, a.how))
            .collect()
    };
    let tc = |p: &KernelPlane| links_to(p, programs::TC_PROGRAM);
    plane.add_listener(&on("b", "tc_ebpf", 5515)).unwrap();
    plane.add_listener(&on("c", "tc_ebpf", 5516)).unwrap();
    assert_eq!(interfaces(&plane), ["lo tc ingress", "ufd0 tc ingress"]);
    assert_eq!(tc(&plane), 2);
    plane.remove_listener("b").unwrap();
    assert_eq!(tc(&plane), 2, "c still uses ufd0");
    plane.remove_listener("c").unwrap();
    assert_eq!(interfaces(&plane), ["lo tc ingress"]);
    assert_eq!(tc(&plane), 1);

    // XDP is an attachment of its own.
    plane.add_listener(&on("x", "xdp", 5517)).unwrap();
    assert_eq!(interfaces(&plane), ["lo tc ingress", "ufd0 xdp (native)"]);
    assert_eq!(links_to(&plane, programs::XDP_PROGRAM), 1);
    plane.remove_listener("x").unwrap();
    assert_eq!(links_to(&plane, programs::XDP_PROGRAM), 0);
    plane.add_listener(&on("b", "tc_ebpf", 5515)).unwrap();
    assert_eq!(tc(&plane), 2, "attached again");
    plane.remove_listener("a").unwrap();
    assert_eq!(interfaces(&plane), ["ufd0 tc ingress"]);
    assert_eq!(tc(&plane), 1);
}

/// Adding a consistent_hash listener writes its Maglev table (tens of milliseconds);
/// scrapes meanwhile must not wait for that, nor for removals, and each sees a listener
/// whole (with all its downstreams) or not at all.
#[test]
fn scrapes_do_not_wait_for_listeners_added_or_removed() {
    let Some(plane) = plane_on_lo(
        "scrapes_do_not_wait_for_listeners_added_or_removed",
        r#"
  - {name: rr, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5514", downstreams: ["127.0.0.1:6001"]}
"#,
    ) else {
        return;
    };
    let hash = listener(
        r#"{name: hash, mode: tc_ebpf, interface: lo, bind: "127.0.0.1:5515", distribution: consistent_hash, downstreams: ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]}"#,
    );
    const ROUNDS: usize = 4;
    let (slowest, scrapes, fastest_add) = scrape_during(
        &plane,
        || {
            let mut fastest = Duration::MAX;
            for _ in 0..ROUNDS {
                let t = Instant::now();
                plane.add_listener(&hash).unwrap();
                fastest = fastest.min(t.elapsed());
                plane.remove_listener("hash").unwrap();
            }
            fastest
        },
        |snap| {
            assert!(
                snap.len() == 1 || snap.len() == 2,
                "{} listeners",
                snap.len()
            );
            if let Some(h) = snap.get(1) {
                assert_eq!(h.downstreams.len(), 3);
            }
        },
    );
    // Else a scrape stuck behind a whole add could pass too: the test would prove nothing.
    assert!(
        fastest_add > SCRAPE_LIMIT,
        "an add took only {fastest_add:?}: lower SCRAPE_LIMIT below it"
    );
    assert!(
        slowest < SCRAPE_LIMIT,
        "a scrape took {slowest:?} (of {scrapes}) while listeners came and went"
    );
    assert_eq!(plane.listener_names(), ["rr"]);
}
