//! Running the real `udp-fanout` binary for a test or a benchmark: spawn it on a generated
//! config, learn its addresses from its log, scrape its metrics, and stop it.
//!
//! Every address in a scenario's config is port 0, so nothing clashes with whatever else runs
//! on the machine; the daemon logs the ports it got (`listening listener=NAME addr=ADDR`,
//! `metrics endpoint … addr=ADDR`) before `udp-fanout ready`, and [`Daemon::start`] reads
//! them from its stderr. A thread keeps reading stderr for the daemon's whole life (a full
//! pipe would block its logging, and with it the daemon) and keeps the lines (up to
//! [`LOG_KEEP`]), which tests assert on and which go into any error about the daemon.
//!
//! The guard kills the process when dropped, so an error half-way through a test or scenario
//! leaves no daemon behind holding ports and memory.
//!
//! [`Daemon::start_in`] runs it inside a network namespace (`ip netns exec`, which execs, so
//! the child's PID is the daemon's); its metrics endpoint is then on that namespace's
//! loopback, and [`Daemon::scrape`] fetches it from a thread that joined the namespace.
//!
//! [`Daemon::launch`] takes a [`Launch`] for the rest (environment variables, such as a
//! systemd `NOTIFY_SOCKET`). With an `admin:` section the API's address is learnt from the
//! log too (`admin API at http://ADDR/v1/listeners`), and [`Daemon::admin_request`] talks to
//! it; [`Daemon::signal`] sends a signal (SIGHUP reloads); [`Daemon::wait_log`] waits for a
//! line (a reload's outcome, a listener bound again on a new port).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::netns::{NsPath, on_thread};
use crate::prom::Scrape;

/// Log lines kept (the oldest go first past this).
pub const LOG_KEEP: usize = 10_000;

/// Log lines shown in errors.
const LOG_TAIL: usize = 40;

/// A running `udp-fanout`. Killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// Holds the config file for as long as the daemon runs.
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    metrics: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    workers: Option<u32>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Lines read so far, including those no longer kept: the index of the next line.
    lines: Arc<AtomicUsize>,
    /// The stderr reader, finished once the daemon's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
    /// The network namespace it runs in (none: the bench's own).
    netns: Option<NsPath>,
}

/// How to start the daemon, beyond its config: see [`Daemon::launch`].
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The network namespace to run it in (none: the caller's).
    pub netns: Option<NsPath>,
    /// Environment variables to set for it.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables to remove from what it inherits.
    pub env_remove: Vec<OsString>,
}

impl Launch {
    /// Sets `key=value` in the daemon's environment.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes `key` from the daemon's environment.
    #[must_use]
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Launch {
        self.env_remove.push(key.into());
        self
    }
}

/// Value of ` key=` in a tracing log line (quotes removed).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[start..].split_whitespace().next()?.trim_matches('"'))
}

impl Daemon {
    /// Writes `yaml` to a temporary file, starts `bin --config FILE`, and waits up to
    /// `timeout` for it to log `udp-fanout ready`.
    pub fn start(bin: &Path, yaml: &str, timeout: Duration) -> anyhow::Result<Daemon> {
        Self::start_in(bin, yaml, timeout, None)
    }

    /// [`Daemon::start`] inside network namespace `netns` (if given).
    pub fn start_in(
        bin: &Path,
        yaml: &str,
        timeout: Duration,
        netns: Option<&NsPath>,
    ) -> anyhow::Result<Daemon> {
        let how = Launch {
            netns: netns.cloned(),
            ..Launch::default()
        };
        Self::launch(bin, yaml, timeout, &how)
    }

    /// [`Daemon::start`] as `how` says (namespace, environment).
    pub fn launch(
        bin: &Path,
        yaml: &str,
        timeout: Duration,
        how: &Launch,
    ) -> anyhow::Result<Daemon> {
        let netns = how.netns.as_ref();
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let path = write_config(dir.path(), yaml)?;
        let mut cmd = match netns {
            Some(ns) => {
                let name =
                    ns.0.file_name()
                        .ok_or_else(|| anyhow!("namespace path {} has no name", ns.0.display()))?;
                let mut c = Command::new("ip");
                c.args(["netns", "exec"]).arg(name).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        for k in &how.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &how.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr pipe"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let lines = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (reader_tail, reader_lines) = (Arc::clone(&tail), Arc::clone(&lines));
        let reader = std::thread::Builder::new()
            .name("udp-fanout-log".into())
            .spawn(move || read_log(stderr, &reader_tail, &reader_lines, &tx))
            .context("starting the log reader")?;
        let mut d = Daemon {
            child: Some(child),
            _dir: dir,
            config_path: path,
            listeners: HashMap::new(),
            metrics: None,
            admin: None,
            workers: None,
            tail,
            lines,
            reader: Some(reader),
            netns: netns.cloned(),
        };
        d.wait_ready(&rx, timeout)?;
        Ok(d)
    }

    fn wait_ready(&mut self, rx: &mpsc::Receiver<String>, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                self.kill();
                bail!(
                    "udp-fanout did not become ready within {timeout:?}; its log:\n{}",
                    self.log_tail()
                );
            };
            if line.contains(" listening ")
                && let (Some(name), Some(addr)) = (field(&line, "listener"), field(&line, "addr"))
            {
                let addr = addr
                    .parse()
                    .with_context(|| format!("listener address in {line:?}"))?;
                self.listeners.insert(name.to_owned(), addr);
            }
            if line.contains("metrics endpoint")
                && let Some(addr) = field(&line, "addr")
            {
                self.metrics = Some(addr.parse().with_context(|| format!("in {line:?}"))?);
            }
            if line.contains("admin API at")
                && let Some(addr) = field(&line, "addr")
            {
                self.admin = Some(addr.parse().with_context(|| format!("in {line:?}"))?);
            }
            if line.contains("udp-fanout ready") {
                self.workers = field(&line, "workers").and_then(|w| w.parse().ok());
                return Ok(());
            }
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("udp-fanout is not running"))
    }

    /// Worker threads, as the daemon reported when ready.
    pub fn workers(&self) -> Option<u32> {
        self.workers
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("udp-fanout logged no address for listener {name:?}"))
    }

    /// The admin API's address, if it has one.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.admin
            .ok_or_else(|| anyhow!("udp-fanout logged no admin API address"))
    }

    /// The address listener `name` was last bound to, as the log says now: after a reload
    /// that added or re-created it, its new address (the one [`listener`](Self::listener)
    /// knows is from start-up).
    pub fn latest_listener(&self, name: &str) -> Option<SocketAddr> {
        let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().rev().find_map(|line| {
            if !line.contains(" listening ") || field(line, "listener") != Some(name) {
                return None;
            }
            field(line, "addr")?.parse().ok()
        })
    }

    /// Lines logged so far (including those no longer kept): a mark for
    /// [`wait_log`](Self::wait_log).
    pub fn log_mark(&self) -> usize {
        self.lines.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for a line at or after `mark` (from [`log_mark`](Self::log_mark))
    /// that contains `needle`; returns it and the mark just after it.
    pub fn wait_log(
        &self,
        needle: &str,
        mark: usize,
        timeout: Duration,
    ) -> anyhow::Result<(String, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                // The reader counts a line while holding the tail's lock, so the two agree.
                let first = self.lines.load(Ordering::Acquire).saturating_sub(t.len());
                let skip = mark.saturating_sub(first);
                if let Some((i, line)) = t
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .find(|(_, l)| l.contains(needle))
                {
                    return Ok((line.clone(), first + i + 1));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "udp-fanout logged no line with {needle:?} within {timeout:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `sig` to the daemon (SIGHUP: reload).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid()?).context("pid out of range")?);
        kill(pid, sig).with_context(|| format!("sending {sig} to udp-fanout"))
    }

    /// A request to the admin API (from inside the daemon's namespace): `method path` with
    /// `body` (JSON) and the bearer `token` if given; the status code and the body.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let addr = self.admin_addr()?;
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let call = || crate::http::request(addr, method, path, &headers, body);
        match &self.netns {
            Some(ns) => on_thread(Some(ns), None, call),
            None => call(),
        }
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = t.len().saturating_sub(LOG_TAIL);
        t.iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every log line so far (up to [`LOG_KEEP`]).
    pub fn log_lines(&self) -> Vec<String> {
        let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().cloned().collect()
    }

    /// The config file it runs on.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The metrics endpoint's address, if it has one.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        self.metrics
            .ok_or_else(|| anyhow!("udp-fanout logged no metrics endpoint"))
    }

    /// `GET path` on the metrics endpoint (from inside the daemon's namespace): the status
    /// line and the body.
    pub fn http_get(&self, path: &str) -> anyhow::Result<(String, String)> {
        let addr = self.metrics_addr()?;
        match &self.netns {
            Some(ns) => on_thread(Some(ns), None, || crate::http::get(addr, path)),
            None => crate::http::get(addr, path),
        }
    }

    /// The value of the series `name{labels}` (exactly those labels, written as in the text,
    /// e.g. `listener="a",reason="send_error"`) in a fresh scrape; `None` if absent.
    pub fn metric(&self, name: &str, labels: &str) -> anyhow::Result<Option<u64>> {
        Ok(Scrape::parse(&self.scrape()?).exact(name, labels))
    }

    /// The exit status, once the process has exited (reaped here).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.finish_log();
        Some(st)
    }

    /// Fails, with the end of its log, if the daemon has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(c) = self.child.as_mut() else {
            bail!("udp-fanout is not running");
        };
        if let Some(st) = c.try_wait().context("checking on udp-fanout")? {
            self.child = None;
            bail!("udp-fanout exited ({st}); its log:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// `GET /metrics`: the exposition text.
    pub fn scrape(&self) -> anyhow::Result<String> {
        let (status, body) = self.http_get("/metrics")?;
        if !status.contains(" 200") {
            bail!("GET /metrics: {status}");
        }
        Ok(body)
    }

    /// Sends SIGTERM and waits up to `limit` for the exit (then kills it); returns the status
    /// and how long the shutdown took.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("udp-fanout is not running"))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to udp-fanout")?;
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().context("waiting for udp-fanout")? {
                let took = t0.elapsed();
                self.finish_log();
                return Ok((st, took));
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("udp-fanout did not exit within {limit:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (briefly) for the log reader to reach the end of stderr, so that
    /// [`log_lines`](Self::log_lines) holds the daemon's last words.
    fn finish_log(&mut self) {
        let end = Instant::now() + Duration::from_secs(2);
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(r) = self.reader.take_if(|r| r.is_finished()) {
            let _ = r.join();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the daemon's stderr to its end: every line into the tail, and to `tx` while
/// [`Daemon::start`] still listens.
fn read_log(
    stderr: impl Read,
    tail: &Mutex<VecDeque<String>>,
    lines: &AtomicUsize,
    tx: &mpsc::Sender<String>,
) {
    let mut forward = true;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        {
            let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if t.len() == LOG_KEEP {
                t.pop_front();
            }
            t.push_back(line.clone());
            lines.fetch_add(1, Ordering::AcqRel);
        }
        if forward && tx.send(line).is_err() {
            forward = false;
        }
    }
}

/// Writes `yaml` to `udp-fanout.yaml` in `dir`; its path.
pub fn write_config(dir: &Path, yaml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("udp-fanout.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_tracing_lines() {
        let l = "2026-01-01T00:00:00Z  INFO fanout_userspace::plane: listening listener=bench \
                 addr=127.0.0.1:40000 workers=2";
        assert_eq!(field(l, "listener"), Some("bench"));
        assert_eq!(field(l, "addr"), Some("127.0.0.1:40000"));
        assert_eq!(field(l, "nope"), None);
        assert_eq!(field("x name=\"a b\"", "name"), Some("a"));
    }

    #[test]
    fn a_binary_that_never_gets_ready_is_an_error_with_its_log() {
        let e = Daemon::start(Path::new("/bin/false"), "", Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("did not become ready"), "{e}");
        let e = Daemon::start(
            Path::new("/nonexistent/udp-fanout"),
            "",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("starting /nonexistent"), "{e:#}");
    }
}
