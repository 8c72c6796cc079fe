//! Test harness: runs the real `udp-fanout` binary on a generated config and talks to it.
//!
//! The harness itself is `fanout_testkit::daemon` (one copy for tests and benchmarks); this
//! module only points it at the binary Cargo just built and turns its errors into panics with
//! the daemon's log, which is what a failing test should print.
//!
//! Every address is port 0: the daemon logs the ports it got, which [`Daemon::start`] reads from
//! its stderr before returning, so tests run in parallel without clashing. The process is
//! killed and the temporary directory removed when the guard drops, even if the test failed.
#![allow(dead_code)]

pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use fanout_testkit::daemon;
use fanout_testkit::netns::NsPath;

pub use fanout_testkit::prom::Scrape;

/// How long the daemon may take to report ready.
const READY: Duration = Duration::from_secs(20);

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
        let ns = netns.map(NsPath::named);
        let inner = daemon::Daemon::start_in(Path::new(bin()), yaml, READY, ns.as_ref())
            .map_err(|e| format!("{e:#}"))?;
        Ok(Daemon {
            config_path: inner.config_path().to_owned(),
            log_lines: inner.log_lines(),
            inner,
        })
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

/// Finds `name{labels} value` in metrics text (exactly these labels).
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<u64> {
    Scrape::parse(text).exact(name, labels)
}

/// Runs the binary with `args` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run udp-fanout");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[allow(unused_imports)]
pub use fanout_testkit::eventually;
