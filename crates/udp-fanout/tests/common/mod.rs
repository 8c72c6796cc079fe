//! Test harness: runs the real `udp-fanout` binary on a generated config and talks to it.
//!
//! The harness itself is `fanout_testkit::daemon` (one copy for tests and benchmarks); this
//! module only points it at the binary Cargo just built and turns its errors into panics with
//! the daemon's log, which is what a failing test should print.
//!
//! Every address is port 0: the daemon logs the ports it got, which [`Daemon::start`] reads from
//! its stderr before returning, so tests run in parallel without clashing. The process is
//! killed and the temporary directory removed when the guard drops, even if the test failed.
//!
//! The downstreams the tests forward to are `fanout_testkit` sinks ([`sinks`], [`echo_sinks`],
//! [`recording_sinks`]), one port each so that each is counted apart, and the usual
//! one-listener config is written by [`one_listener`]. Traffic is the testkit generator's
//! ([`traffic`], [`generate`]), or one request at a time from a [`client`] ([`ask`]); where it
//! landed is [`landed`]. The setup every test file shares is here once, and a test reads as
//! what it sends and checks.
//!
//! The control plane's tests add: [`Daemon::launch`] (environment variables), the admin API
//! ([`Daemon::api`]), signals ([`Daemon::hup`]), waiting for a log line ([`Daemon::wait_log`],
//! such as a reload's outcome), rewriting the config as a person or an editor would
//! ([`write_in_place`], [`write_by_rename`]), and UDP servers whose health can be switched
//! ([`echo::Echo`]).
#![allow(dead_code)]

pub mod echo;
#[macro_use]
pub mod netns;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fanout_testkit::daemon;
pub use fanout_testkit::daemon::{Launch, Signal};
use fanout_testkit::netns::NsPath;
use fanout_testkit::{GenConfig, GenReport, Sink, SinkHandle, SinkOptions, generator};

pub use fanout_testkit::prom::Scrape;

/// How long the daemon may take to report ready.
const READY: Duration = Duration::from_secs(20);

/// How long a test waits for traffic to arrive or counters to catch up.
pub const WAIT: Duration = Duration::from_secs(10);

/// The config line that turns the metrics endpoint on, on a loopback port.
pub const METRICS: &str = "metrics: {bind: '127.0.0.1:0'}";

/// `n` sinks of one port each on `ip` (`127.0.0.1`, `::1`), served with `opts`.
pub fn sinks_with(n: usize, ip: &str, opts: SinkOptions) -> Vec<SinkHandle> {
    let ip = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
    Sink::serve_each(n, ip, opts).expect("starting the sinks")
}

/// `n` counting sinks on `ip`.
pub fn sinks(n: usize, ip: &str) -> Vec<SinkHandle> {
    sinks_with(n, ip, SinkOptions::default())
}

/// `n` sinks on `ip` that answer every datagram.
pub fn echo_sinks(n: usize, ip: &str) -> Vec<SinkHandle> {
    sinks_with(n, ip, SinkOptions::echoing())
}

/// `n` sinks on `ip` that keep every payload.
pub fn recording_sinks(n: usize, ip: &str) -> Vec<SinkHandle> {
    sinks_with(n, ip, SinkOptions::recording())
}

/// The address of a one-port sink.
pub fn addr_of(s: &SinkHandle) -> SocketAddr {
    s.local_addrs()[0]
}

/// The sinks' addresses as a YAML list's items: `'127.0.0.1:1', '127.0.0.1:2'`.
pub fn addresses(sinks: &[SinkHandle]) -> String {
    sinks
        .iter()
        .map(|s| format!("'{}'", addr_of(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Datagrams the sinks counted together.
pub fn total(sinks: &[SinkHandle]) -> u64 {
    sinks.iter().map(SinkHandle::total_datagrams).sum()
}

/// Waits until the sinks together counted `n` datagrams, failing the test with what they got
/// if that takes longer than [`WAIT`].
pub fn wait_total(sinks: &[SinkHandle], n: u64) {
    assert!(
        eventually(WAIT, || total(sinks) == n),
        "sinks got {} of {n}",
        total(sinks)
    );
}

/// Where each client of the generator run `run` landed: for each flow id the generator wrote in
/// its payloads, the indices of the sinks that saw it (the sinks see udp-fanout as the source,
/// so the payload is what tells the clients apart). Fails the test if the sinks saw datagrams
/// of another stream.
pub fn landed(sinks: &[SinkHandle], run: &GenReport) -> BTreeMap<u32, Vec<usize>> {
    let mut at: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in sinks.iter().enumerate() {
        for port in &s.snapshot().ports {
            for f in &port.flows {
                assert_eq!(f.stream, run.stream_id, "a datagram of another run");
                at.entry(f.flow).or_default().push(i);
            }
        }
    }
    at
}

/// `count` datagrams to `target` from `flows` clients (source ports), cycling `sizes`, at
/// `rate` a second; a test sets anything else on what this returns.
pub fn traffic(
    target: SocketAddr,
    count: u64,
    flows: u32,
    sizes: &[usize],
    rate: u64,
) -> GenConfig {
    let mut g = GenConfig::new(target);
    g.count = Some(count);
    g.flows = flows;
    g.sizes = sizes.to_vec();
    g.rate_pps = rate;
    g
}

/// Runs the generator on `g` to the end (nothing stops it early).
pub fn generate(g: &GenConfig) -> GenReport {
    generator::run(g, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("generator: {e}"))
}

/// A client socket on loopback that waits up to [`WAIT`] for an answer.
pub fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").expect("binding a client socket");
    c.set_read_timeout(Some(WAIT))
        .expect("setting the read timeout");
    c
}

/// Sends `what` from `c` to `to` and checks that the answer is `what` again and comes from
/// `to`, the address the client wrote to (a client expects its answers from there).
pub fn ask(c: &UdpSocket, to: SocketAddr, what: &[u8]) {
    c.send_to(what, to)
        .unwrap_or_else(|e| panic!("sending to {to}: {e}"));
    // One byte more than expected, so that a longer answer shows.
    let mut buf = vec![0u8; what.len() + 1];
    let (n, from) = c
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {to}: {e}"));
    assert_eq!(
        (&buf[..n], from),
        (what, to),
        "the answer and where it came from"
    );
}

/// A config of one listener: `listener` holds its keys but the downstreams (`name: a, bind:
/// '127.0.0.1:0', …`), `downstreams` the items of its `downstreams:` list, and `rest` the
/// config's other lines (such as [`METRICS`]).
pub fn one_listener(listener: &str, downstreams: &str, rest: &[&str]) -> String {
    let mut yaml = format!("listeners: [{{{listener}, downstreams: [{downstreams}]}}]");
    for line in rest {
        yaml.push('\n');
        yaml.push_str(line);
    }
    yaml
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_udp-fanout")
}

/// A running daemon. Killed on drop.
pub struct Daemon {
    inner: daemon::Daemon,
    pub config_path: PathBuf,
    /// Its log so far; refreshed by [`terminate`](Self::terminate) and
    /// [`try_exited`](Self::try_exited), read live with [`log`](Self::log).
    pub log_lines: Vec<String>,
}

/// Writes `yaml` to a fresh temporary file.
pub fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = daemon::write_config(dir.path(), yaml).expect("write config");
    (dir, path)
}

impl Daemon {
    /// Starts the daemon on `yaml` and waits until it reports ready.
    pub fn start(yaml: &str) -> Daemon {
        Self::start_in(None, yaml)
    }

    /// Starts the daemon inside network namespace `netns` (when given).
    pub fn start_in(netns: Option<&str>, yaml: &str) -> Daemon {
        Self::try_start_in(netns, yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_in`](Self::start_in); on failure returns the error, with the log.
    pub fn try_start_in(netns: Option<&str>, yaml: &str) -> Result<Daemon, String> {
        let how = Launch {
            netns: netns.map(NsPath::named),
            ..Launch::default()
        };
        Self::try_launch(yaml, &how)
    }

    /// Starts the daemon on `yaml` as `how` says (namespace, environment).
    pub fn launch(yaml: &str, how: &Launch) -> Daemon {
        Self::try_launch(yaml, how).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`launch`](Self::launch); on failure returns the error, with the log.
    pub fn try_launch(yaml: &str, how: &Launch) -> Result<Daemon, String> {
        let inner = daemon::Daemon::launch(Path::new(bin()), yaml, READY, how)
            .map_err(|e| format!("{e:#}"))?;
        Ok(Daemon {
            config_path: inner.config_path().to_owned(),
            log_lines: inner.log_lines(),
            inner,
        })
    }

    /// The admin API's address (the config needs an `admin:` section).
    pub fn admin(&self) -> SocketAddr {
        self.inner.admin_addr().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `method path` on the admin API with the JSON `body`, without a token: the status and
    /// the JSON answer.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (code, text) = self.api_as(None, method, path, body);
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {code} {text:?} is not JSON: {e}"));
        (code, v)
    }

    /// `method path` on the admin API with `token` (if any): the status and the body.
    pub fn api_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        self.inner
            .admin_request(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: Signal) {
        self.inner.signal(sig).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        self.signal(Signal::SIGHUP);
    }

    /// Whether the process still runs (not reaped here).
    pub fn alive(&mut self) -> bool {
        self.try_exited().is_none()
    }

    /// A mark in the log: lines after it are what happens from now on.
    pub fn mark(&self) -> usize {
        self.inner.log_mark()
    }

    /// Waits up to [`WAIT`] for a line after `mark` containing `needle`; the line and the
    /// mark after it.
    pub fn wait_log(&self, needle: &str, mark: usize) -> (String, usize) {
        self.inner
            .wait_log(needle, mark, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Lines after `mark` containing `needle`, now.
    pub fn log_since(&self, needle: &str, mark: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = mark;
        while let Ok((line, next)) = self.inner.wait_log(needle, at, Duration::ZERO) {
            out.push(line);
            at = next;
        }
        out
    }

    /// Where listener `name` is bound now (after a reload that added or re-created it).
    pub fn latest(&self, name: &str) -> SocketAddr {
        self.inner
            .latest_listener(name)
            .unwrap_or_else(|| panic!("no address logged for listener {name:?}"))
    }

    /// `udp_fanout_config_reloads_total{result}` now.
    pub fn reloads(&self, result: &str) -> u64 {
        self.metric(
            "udp_fanout_config_reloads_total",
            &format!("result=\"{result}\""),
        )
        .unwrap_or_else(|| panic!("no reload counter:\n{}", self.scrape()))
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.inner.log_lines()
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.inner.listener(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path` on the metrics endpoint; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        self.inner
            .http_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// The metrics text.
    pub fn scrape(&self) -> String {
        self.inner.scrape().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Value of the sample `name{labels}` (exactly these labels, e.g.
    /// `listener="a",reason="send_error"`), or `None` if absent.
    pub fn metric(&self, name: &str, labels: &str) -> Option<u64> {
        Scrape::parse(&self.scrape()).exact(name, labels)
    }

    /// Waits up to [`WAIT`] for the sample `name{labels}` to read `want`, failing the test
    /// with the value it last had.
    pub fn wait_metric(&self, name: &str, labels: &str, want: u64) {
        assert!(
            eventually(WAIT, || self.metric(name, labels) == Some(want)),
            "{name}{{{labels}}} is {:?}, not {want}",
            self.metric(name, labels)
        );
    }

    /// The exit status, once the process has exited (reaped here).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let st = self.inner.try_exited()?;
        self.log_lines = self.inner.log_lines();
        Some(st)
    }

    /// PID of the process.
    pub fn pid(&self) -> u32 {
        self.inner.pid().expect("running")
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the status and time taken.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let r = self
            .inner
            .terminate(limit)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.log_lines = self.inner.log_lines();
        r
    }
}

/// Sends one datagram from `c` to `to` and returns the index of the sink in `s` it reached
/// (each sink's count is compared with `before`, which is then brought up to date). Fails if
/// none of them got it within [`WAIT`].
pub fn route(c: &UdpSocket, to: SocketAddr, s: &[&SinkHandle], before: &mut [u64]) -> usize {
    c.send_to(b"where do I go", to).unwrap();
    let t0 = Instant::now();
    loop {
        for (i, x) in s.iter().enumerate() {
            let n = x.total_datagrams();
            if n > before[i] {
                assert_eq!(n, before[i] + 1, "one datagram, one arrival");
                before[i] = n;
                return i;
            }
        }
        assert!(t0.elapsed() < WAIT, "a datagram to {to} reached no sink");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Counts of `s`, now.
pub fn counts(s: &[&SinkHandle]) -> Vec<u64> {
    s.iter().map(|x| x.total_datagrams()).collect()
}

/// Sends `n` datagrams to `to` from one client and returns each sink's share of them (all of
/// them reached one of `s`, and nothing else did).
pub fn spread(to: SocketAddr, n: u64, s: &[&SinkHandle]) -> Vec<u64> {
    let before = counts(s);
    let c = client();
    for _ in 0..n {
        c.send_to(b"0123456789", to).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let sum = |v: &[u64]| v.iter().sum::<u64>();
    assert!(
        eventually(WAIT, || sum(&counts(s)) >= sum(&before) + n),
        "sent {n}, the sinks got {}",
        sum(&counts(s)) - sum(&before)
    );
    // Anything more would show as a count above n.
    std::thread::sleep(Duration::from_millis(50));
    let share: Vec<u64> = counts(s).iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(sum(&share), n, "{share:?}");
    share
}

/// A datagram to the listener every millisecond, from one client socket, until dropped (so a
/// failed assertion does not leave it running).
pub struct Trickle {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    /// From a loopback client.
    pub fn to(to: SocketAddr) -> Trickle {
        Trickle::from(UdpSocket::bind("127.0.0.1:0").unwrap(), to)
    }

    /// From `c` (a socket keeps the namespace it was made in).
    pub fn from(c: UdpSocket, to: SocketAddr) -> Trickle {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.send_to(b"traffic, not a probe", to);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Overwrites `path` with `text` in place (same inode), as `echo > file` does.
pub fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Replaces `path` with `text` as editors save: a new file beside it, renamed over it.
pub fn write_by_rename(path: &Path, text: &str) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.swp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming over {}: {e}", path.display()));
}

/// A loopback port that was free a moment ago (bound and closed: a tiny race, accepted where
/// a test needs a fixed port, such as a listener re-created on a new one).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    s.local_addr().expect("local address").port()
}

/// Finds `name{labels} value` in metrics text (exactly these labels).
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<u64> {
    Scrape::parse(text).exact(name, labels)
}

/// Runs the binary with `args` to completion; returns (exit code, stdout, stderr). The
/// options' environment fallbacks must not leak in from the caller.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("UDP_FANOUT_ADMIN")
        .env_remove("UDP_FANOUT_TOKEN_FILE")
        .output()
        .expect("run udp-fanout");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

/// Runs `udp-fanout ctl --admin ADMIN ARGS...`; returns (exit code, stdout, stderr).
pub fn ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let admin = admin.to_string();
    let mut all = vec!["ctl", "--admin", admin.as_str()];
    all.extend(args);
    run_cli(&all)
}

#[allow(unused_imports)]
pub use fanout_testkit::{assert_contains, eventually};
