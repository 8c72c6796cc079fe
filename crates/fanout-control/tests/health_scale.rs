//! Many targets: the socket pool must serve them with a handful of descriptors, detect the
//! dead among them, and (measured, as root in a namespace) probe 10,000 a second cheaply.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod health_common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use fanout_control::health::{Health, HealthChecker};
use fanout_testkit::netns::{Netns, on_thread, privileged, unique_tag};
use health_common::{Events, Reply, Server, open_fds, thread_cpu, udp};
use tokio::sync::mpsc::unbounded_channel;

/// Waits until every one of `addrs` (of `listener`) turned `health`; the time it took.
async fn all_turn(
    ev: &mut Events,
    listener: &str,
    addrs: &[SocketAddr],
    health: Health,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let left = ev.wait_all(listener, addrs, health, within).await;
    assert!(
        left.is_empty(),
        "{} not {health:?} within {within:?}: {:?}",
        left.len(),
        left.iter().take(5).collect::<Vec<_>>()
    );
    start.elapsed()
}

#[tokio::test]
async fn a_thousand_targets_share_one_socket_and_the_dead_are_found() {
    const N: usize = 1_000;
    let mut servers = Vec::with_capacity(N);
    for _ in 0..N {
        servers.push(Server::start("127.0.0.1:0".parse().unwrap(), Reply::Pong).await);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let fds_before = open_fds();
    let (tx, rx) = unbounded_channel();
    let hc = HealthChecker::start(tx);
    let mut ev = Events::new(rx);
    let (interval, timeout, fall) = (200u64, 150u64, 2u32);
    hc.set_targets("many", Some(udp(interval, timeout, fall, 2)), addrs.clone());
    let took = all_turn(
        &mut ev,
        "many",
        &addrs,
        Health::Healthy,
        Duration::from_secs(3),
    )
    .await;
    eprintln!("{N} targets healthy after {} ms", took.as_millis());
    let fds = open_fds().saturating_sub(fds_before);
    eprintln!("descriptors opened by the checker for {N} targets: {fds}");
    assert_eq!(hc.udp_sockets(), 1);
    // Other tests of this binary run meanwhile and open a few: the point is not N.
    assert!(fds < 20, "{fds} descriptors for {N} targets");

    // Kill 100 (spread over the set): each is found, within the bound, and no other falls.
    let dead: Vec<SocketAddr> = servers.iter().step_by(10).map(|s| s.addr).collect();
    let dead_set: HashSet<SocketAddr> = dead.iter().copied().collect();
    let mut alive = Vec::new();
    for s in servers {
        if dead_set.contains(&s.addr) {
            s.stop().await;
        } else {
            alive.push(s);
        }
    }
    let bound = Duration::from_millis(fall as u64 * interval + timeout);
    let took = all_turn(&mut ev, "many", &dead, Health::Unhealthy, bound * 3).await;
    eprintln!(
        "{} dead of {N}: all unhealthy after {} ms (bound {} ms)",
        dead.len(),
        took.as_millis(),
        bound.as_millis()
    );
    assert!(took <= bound + Duration::from_millis(200), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(2 * interval)).await;
    let wrongly: Vec<_> = ev
        .drain()
        .into_iter()
        .filter(|e| !dead_set.contains(&e.addr))
        .collect();
    assert!(wrongly.is_empty(), "live targets changed: {wrongly:?}");
    assert_eq!(hc.counts().len(), N);
    for s in alive {
        s.stop().await;
    }
}

/// Echoes one datagram from the address it was sent to (IP_PKTINFO): a socket bound to
/// 0.0.0.0 would answer a probe of 127.1.0.1 from 127.0.0.1 (the route's preferred source),
/// which is not the probed target. Blocks up to the socket's read timeout.
fn answer_from_the_address_asked(sock: &UdpSocket) {
    use nix::libc;
    use nix::sys::socket::{
        ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg,
    };
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let (n, from, to) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<SockaddrIn>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) else {
            return;
        };
        let to = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|c| match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => Some(i.ipi_addr),
                _ => None,
            })
        });
        (msg.bytes, msg.address, to)
    };
    let (Some(from), Some(to)) = (from, to) else {
        return;
    };
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: to,
        ipi_addr: to,
    };
    let iov = [IoSlice::new(&buf[..n])];
    let _ = sendmsg(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::empty(),
        Some(&from),
    );
}

/// 10,000 targets probed every second, on distinct loopback addresses in a namespace of
/// their own, answered by one server: what the checker's thread spends (it also carries the
/// loopback delivery of each probe to the server, so this is an upper bound).
#[test]
fn ten_thousand_targets_a_second_cost_little_cpu() {
    if !privileged("a network namespace for 10,000 loopback addresses") {
        return;
    }
    const N: usize = 10_000;
    const MEASURE: Duration = Duration::from_secs(5);
    let ns = Netns::new(format!("hck{}", unique_tag())).unwrap();
    let path = ns.path();
    let server_ns = path.clone();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let echo = std::thread::spawn(move || {
        on_thread(Some(&server_ns), None, move || {
            // Inside the namespace only: 0.0.0.0 there takes every 127/8 address.
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)?;
            // Room for the probes that arrive while this thread waits for a core.
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::RcvBufForce,
                &(4 << 20),
            )?;
            port_tx.send(sock.local_addr()?.port())?;
            while stop_rx.try_recv().is_err() {
                answer_from_the_address_asked(&sock);
            }
            Ok(())
        })
    });
    let port = port_rx.recv().unwrap();
    let addrs: Vec<SocketAddr> = (0..N)
        .map(|i| SocketAddr::from(([127, 1 + (i / 250) as u8, 0, 1 + (i % 250) as u8], port)))
        .collect();
    on_thread(Some(&path), None, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (tx, rx) = unbounded_channel();
            let hc = HealthChecker::start(tx);
            let mut ev = Events::new(rx);
            hc.set_targets("big", Some(udp(1_000, 500, 3, 2)), addrs.clone());
            let took = all_turn(
                &mut ev,
                "big",
                &addrs,
                Health::Healthy,
                Duration::from_secs(5),
            )
            .await;
            eprintln!("{N} targets healthy after {} ms", took.as_millis());
            let sum = |hc: &HealthChecker| {
                hc.counts()
                    .iter()
                    .fold((0, 0), |(s, f), (_, c)| (s + c.success, f + c.failure))
            };
            let (s0, f0) = sum(&hc);
            let (cpu0, t0) = (thread_cpu(), Instant::now());
            tokio::time::sleep(MEASURE).await;
            let (user1, sys1) = thread_cpu();
            let (user, sys) = (user1 - cpu0.0, sys1 - cpu0.1);
            let (cpu, wall) = (user + sys, t0.elapsed());
            let (s1, f1) = sum(&hc);
            let probes = s1 - s0;
            let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
            eprintln!(
                "{N} targets at 1 s: {probes} probes in {:.1} s; checker thread CPU {} ms \
                 (user {} ms, system {} ms) = {share:.1}% of a core, {:.1} us a probe",
                wall.as_secs_f64(),
                cpu.as_millis(),
                user.as_millis(),
                sys.as_millis(),
                cpu.as_secs_f64() * 1e6 / probes.max(1) as f64,
            );
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
            let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
            assert_eq!(f1 - f0, 0, "failures under a bounded load; {udp:?}");
            let expected = N as f64 * wall.as_secs_f64();
            assert!(
                (probes as f64) > expected * 0.95,
                "{probes} probes, expected ~{expected}"
            );
            assert!(share < 60.0, "checker thread at {share:.1}% of a core");
            assert_eq!(hc.udp_sockets(), 1);
        });
        Ok(())
    })
    .unwrap();
    stop_tx.send(()).unwrap();
    echo.join().unwrap().unwrap();
}
