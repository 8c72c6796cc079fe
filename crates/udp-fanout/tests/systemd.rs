//! sd_notify through the real binary, against a real notify socket: a Unix datagram socket in a
//! temporary directory, named to the daemon by `NOTIFY_SOCKET` as systemd does for a
//! `Type=notify` unit. The daemon says `READY=1` once it serves, `RELOADING=1` with
//! `MONOTONIC_USEC` then `READY=1` around a reload, `WATCHDOG=1` twice per `WATCHDOG_USEC`
//! (when `WATCHDOG_PID` is unset or names it), and `STOPPING=1` when told to stop.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Daemon, Launch, METRICS, WAIT, addr_of, client, counts, eventually, route, sinks,
    write_in_place,
};
use fanout_testkit::SinkHandle;

/// A notify socket and everything received on it, with when.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    g.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((Instant::now(), msg));
                }
            }
        });
        NotifySocket {
            _dir: dir,
            path,
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// How the daemon is started: with this socket and a watchdog of `watchdog_usec` (none:
    /// no watchdog), `WATCHDOG_PID` as given (none: unset).
    fn launch(&self, watchdog_usec: Option<u64>, watchdog_pid: Option<u32>) -> Launch {
        let mut how = Launch::default()
            .env("NOTIFY_SOCKET", &self.path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        if let Some(us) = watchdog_usec {
            how = how.env("WATCHDOG_USEC", us.to_string());
        }
        if let Some(pid) = watchdog_pid {
            how = how.env("WATCHDOG_PID", pid.to_string());
        }
        how
    }

    /// Every message so far.
    fn messages(&self) -> Vec<(Instant, String)> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Messages other than `WATCHDOG=1`, in order.
    fn states(&self) -> Vec<String> {
        self.messages()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m != "WATCHDOG=1\n")
            .collect()
    }

    /// Waits until the messages other than `WATCHDOG=1` number `n`.
    fn wait_states(&self, n: usize) -> Vec<String> {
        assert!(
            eventually(WAIT, || self.states().len() >= n),
            "expected {n} state messages, got {:?}",
            self.states()
        );
        self.states()
    }

    /// When each `WATCHDOG=1` came.
    fn watchdogs(&self) -> Vec<Instant> {
        self.messages()
            .into_iter()
            .filter(|(_, m)| m == "WATCHDOG=1\n")
            .map(|(t, _)| t)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CLOCK_MONOTONIC now, in microseconds: the clock `MONOTONIC_USEC` is read from.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap() / 1_000
}

fn one_listener(s: &[SinkHandle]) -> String {
    common::one_listener(
        "name: l, bind: '127.0.0.1:0'",
        &common::addresses(s),
        &[METRICS],
    )
}

#[test]
fn ready_reloading_watchdog_and_stopping_reach_the_notify_socket() {
    let n = NotifySocket::new();
    let s = sinks(1, "127.0.0.1");
    // WatchdogSec=200ms: a keep-alive every 100 ms.
    let mut d = Daemon::launch(&one_listener(&s), &n.launch(Some(200_000), None));
    assert_eq!(n.wait_states(1), ["READY=1\n"], "first READY=1");
    // It is ready when it says so: it forwards.
    client().send_to(b"x", d.addr("l")).unwrap();
    common::wait_total(&s, 1);

    // Watchdog: about every 100 ms.
    std::thread::sleep(Duration::from_millis(1_200));
    let dogs = n.watchdogs();
    let gaps: Vec<Duration> = dogs.windows(2).map(|w| w[1] - w[0]).collect();
    let window = dogs.last().copied().unwrap() - dogs[0];
    eprintln!(
        "{} WATCHDOG=1 in {window:?}, gaps {:?}..{:?}",
        dogs.len(),
        gaps.iter().min().unwrap(),
        gaps.iter().max().unwrap()
    );
    assert!(dogs.len() >= 9, "{} keep-alives in 1.2 s", dogs.len());
    let per = window / u32::try_from(gaps.len()).unwrap();
    assert!(
        per >= Duration::from_millis(90) && per <= Duration::from_millis(110),
        "one keep-alive every {per:?}, not every 100 ms"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(200)),
        "a gap of half the watchdog period or more: {gaps:?}"
    );

    // Reload: RELOADING=1 with the monotonic time it began, then READY=1.
    let t0 = monotonic_usec();
    d.hup();
    let states = n.wait_states(3);
    let t1 = monotonic_usec();
    assert_eq!(states[2], "READY=1\n", "{states:?}");
    let reloading: Vec<&str> = states[1].lines().collect();
    assert_eq!(reloading.len(), 2, "{states:?}");
    assert_eq!(reloading[0], "RELOADING=1");
    let usec: u64 = reloading[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{states:?}"))
        .parse()
        .unwrap();
    assert!(
        (t0..=t1).contains(&usec),
        "MONOTONIC_USEC={usec} not within the reload ({t0}..={t1})"
    );
    assert_eq!(d.reloads("success"), 1);
    // A second one, by the config file this time (saved as is).
    write_in_place(&d.config_path, &one_listener(&s));
    let states = n.wait_states(5);
    assert!(
        states[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{states:?}"
    );
    assert_eq!(states[4], "READY=1\n");

    // Still alive after all that (keep-alives go on), then STOPPING=1 on SIGTERM.
    let before = n.watchdogs().len();
    std::thread::sleep(Duration::from_millis(300));
    assert!(n.watchdogs().len() >= before + 2, "keep-alives stopped");
    let (st, _) = d.terminate(WAIT);
    assert!(st.success(), "{st}");
    let states = n.wait_states(6);
    assert_eq!(states[5], "STOPPING=1\n", "{states:?}");
    assert_eq!(states.len(), 6, "{states:?}");
}

#[test]
fn no_watchdog_for_another_process_or_without_watchdog_usec() {
    let s = sinks(1, "127.0.0.1");
    // WATCHDOG_PID names another process: the watchdog is not ours.
    let other = NotifySocket::new();
    let _d = Daemon::launch(&one_listener(&s), &other.launch(Some(200_000), Some(1)));
    // No WATCHDOG_USEC at all.
    let none = NotifySocket::new();
    let _e = Daemon::launch(&one_listener(&s), &none.launch(None, None));
    for n in [&other, &none] {
        assert_eq!(n.wait_states(1), ["READY=1\n"]);
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        other.watchdogs().len(),
        0,
        "a keep-alive for another process"
    );
    assert_eq!(none.watchdogs().len(), 0, "a keep-alive without a watchdog");
}

/// The keep-alive timer must not hold back the control plane's own timers: with a watchdog
/// every 100 ms, a drain of 1 s still ends after 1 s (a removed downstream's session re-pins).
#[test]
fn a_drain_ends_on_time_under_a_fast_watchdog() {
    let n = NotifySocket::new();
    let s = sinks(2, "127.0.0.1");
    let both: Vec<&SinkHandle> = s.iter().collect();
    let config = |ds: &[&SinkHandle]| {
        let list: Vec<String> = ds.iter().map(|x| format!("'{}'", addr_of(x))).collect();
        format!(
            "listeners:\n- {{name: l, bind: '127.0.0.1:0', session: {{sticky: true}}, drain_secs: 1, downstreams: [{}]}}\n{METRICS}",
            list.join(", ")
        )
    };
    let d = Daemon::launch(&config(&both), &n.launch(Some(200_000), None));
    let to = d.addr("l");
    let c = client();
    let mut before = counts(&both);
    let x = route(&c, to, &both, &mut before);
    let y = 1 - x;
    write_in_place(&d.config_path, &config(&[both[y]]));
    let mark = d.mark();
    d.hup();
    d.wait_log("configuration reloaded trigger=\"SIGHUP\"", mark);
    let t0 = Instant::now();
    let repinned = loop {
        if route(&c, to, &both, &mut before) == y {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "the drain of 1 s has not ended after {:?} (keep-alives every 100 ms)",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("drain_secs 1 under a 100 ms keep-alive: re-pinned after {repinned:?}");
    assert!(
        repinned >= Duration::from_millis(900) && repinned <= Duration::from_millis(1_600),
        "re-pinned after {repinned:?}"
    );
    assert!(n.watchdogs().len() >= 8);
}
