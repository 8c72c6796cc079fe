//! Test harness: runs the real `udp-fanout` binary on a generated config and talks to it.
//!
//! Every address is port 0: the daemon logs the ports it got, which [`Daemon::start`] reads from
//! its stderr before returning, so tests run in parallel without clashing. The process is
//! killed and the temporary directory removed when the guard drops, even if the test failed.
#![allow(dead_code)]

pub mod netns;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_udp-fanout")
}

/// A running daemon. Killed on drop.
pub struct Daemon {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    metrics: Option<SocketAddr>,
    log: mpsc::Receiver<String>,
    pub log_lines: Vec<String>,
    /// The network namespace the daemon runs in, if not ours.
    netns: Option<String>,
}

/// Writes `yaml` to a fresh temporary file.
pub fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("udp-fanout.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

impl Daemon {
    /// Starts the daemon on `yaml` and waits until it reports ready.
    pub fn start(yaml: &str) -> Daemon {
        Self::start_in(None, yaml)
    }

    /// Starts the daemon inside network namespace `netns` (when given).
    pub fn start_in(netns: Option<&str>, yaml: &str) -> Daemon {
        match Self::try_start_in(netns, yaml) {
            Ok(d) => d,
            Err(log) => panic!("udp-fanout did not become ready; log:\n{log}"),
        }
    }

    /// Like [`start_in`](Self::start_in); on failure returns the log instead of panicking.
    pub fn try_start_in(netns: Option<&str>, yaml: &str) -> Result<Daemon, String> {
        let (dir, path) = write_config(yaml);
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .arg("--log-level")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn udp-fanout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child: Some(child),
            _dir: dir,
            config_path: path,
            listeners: HashMap::new(),
            metrics: None,
            log: rx,
            log_lines: Vec::new(),
            netns: netns.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match d.log.recv_timeout(left) {
                Ok(line) => {
                    if line.contains(" listening ")
                        && let (Some(name), Some(addr)) =
                            (field(&line, "listener"), field(&line, "addr"))
                    {
                        d.listeners
                            .insert(name.to_string(), addr.parse().expect("listener addr"));
                    }
                    if line.contains("metrics endpoint")
                        && let Some(addr) = field(&line, "addr")
                    {
                        d.metrics = Some(addr.parse().expect("metrics addr"));
                    }
                    let ready = line.contains("udp-fanout ready");
                    d.log_lines.push(line);
                    if ready {
                        return Ok(d);
                    }
                }
                Err(_) => return Err(d.log_lines.join("\n")),
            }
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.listeners))
    }

    /// The metrics endpoint's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("metrics endpoint not enabled")
    }

    /// `GET path` on the metrics endpoint; returns (status line, headers+body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        match &self.netns {
            Some(ns) => netns::enter(ns, || http_get(self.metrics_addr(), path)),
            None => http_get(self.metrics_addr(), path),
        }
    }

    /// The metrics text.
    pub fn scrape(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert!(status.contains("200"), "scrape failed: {status}");
        body
    }

    /// Value of the sample `name{labels}` (labels in exported order, e.g.
    /// `listener="a",reason="send_error"`), or `None` if absent.
    pub fn metric(&self, name: &str, labels: &str) -> Option<u64> {
        metric_value(&self.scrape(), name, labels)
    }

    /// The exit status, once the process has exited (reaped here).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(st)
    }

    /// PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the status and time taken.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                while let Ok(l) = self.log.try_recv() {
                    self.log_lines.push(l);
                }
                return (st, t0.elapsed());
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("udp-fanout did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (status, rest) = out.split_once("\r\n").unwrap_or((&out, ""));
    (status.to_string(), rest.to_string())
}

/// Finds `name{labels} value` in metrics text.
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
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

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
