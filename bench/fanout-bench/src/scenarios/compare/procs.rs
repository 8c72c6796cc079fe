//! The peers' processes: started with a bounded lifetime, observed through `/proc`, stopped by
//! PID.
//!
//! Every third-party proxy runs under `timeout -k 3 LIFETIME …`, so that even if the bench is
//! killed outright the proxy ends by itself within the run's time bound; the bench stops it
//! earlier by sending SIGTERM to the `timeout` process it started, which passes the signal on
//! (and follows with SIGKILL if it is ignored). Only processes this module started, or their
//! descendants, are ever signalled, and always by PID.
//!
//! The cost of a proxy is what its processes spend: user plus system CPU time from
//! `/proc/PID/stat`, including that of children they have already reaped (socat's forked
//! relays), summed over the whole process tree below the `timeout` wrapper (nginx's master and
//! workers); and their peak resident memory, `VmHWM`, summed likewise.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use fanout_testkit::procfs;
pub(crate) use fanout_testkit::procfs::{all_cpus_jiffies, peak_rss_kib};
use fanout_testkit::procfs::{clock_ticks, descendants, stat_fields};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a stopped process may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// How long a killed process may take to be gone.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A set of started processes and the directory holding their configs and logs. Stopped on
/// drop.
#[derive(Debug)]
pub(crate) struct Procs {
    what: String,
    lifetime: Duration,
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Procs {
    /// An empty set for peer `what`, whose processes will end by themselves after `lifetime`.
    pub(crate) fn new(what: &str, lifetime: Duration) -> anyhow::Result<Procs> {
        Ok(Procs {
            what: what.to_owned(),
            lifetime,
            children: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix("ufbench-")
                .tempdir()
                .context("creating a temporary directory")?,
        })
    }

    /// The directory for configs and logs.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` in the directory; returns the path.
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir().join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// Starts `program args…` under `timeout`, its output going to `NAME.log`.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
    ) -> anyhow::Result<()> {
        self.spawn_in(None, name, program, args)
    }

    /// [`Self::spawn`] in the network namespace `netns` (`ip netns exec NETNS timeout …`;
    /// `ip` execs `timeout` in place, so the PID is still the wrapper's).
    pub(crate) fn spawn_in(
        &mut self,
        netns: Option<&str>,
        name: &str,
        program: &str,
        args: &[String],
    ) -> anyhow::Result<()> {
        let log = self.dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let secs = self.lifetime.as_secs().max(1).to_string();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "timeout"]);
                c
            }
            None => Command::new("timeout"),
        };
        let child = cmd
            .args(["-k", "3", &secs, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {program} (under timeout)"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// The PIDs of the peer's processes: every descendant of the wrappers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let roots: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        descendants(&roots)
    }

    /// Fails, with the end of the logs, if any process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(st) = c.try_wait().context("checking on a peer process")? {
                bail!(
                    "{} ({name}) exited ({st}); its log:\n{}",
                    self.what,
                    log_tail(&self.dir.path().join(format!("{name}.log")))
                );
            }
        }
        Ok(())
    }

    /// The last lines of every log in the directory.
    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for (name, _) in &self.children {
            let t = log_tail(&self.dir().join(format!("{name}.log")));
            if !t.is_empty() {
                s.push_str(&format!("[{name}]\n{t}\n"));
            }
        }
        s
    }

    /// Stops every process: SIGTERM to each wrapper (which passes it on), then SIGKILL to
    /// whatever of the tree is left after the grace period.
    pub(crate) fn stop(&mut self) {
        // With their start times, so that a PID reused in the meantime is left alone.
        let tree: Vec<(u32, Option<u64>)> = self
            .pids()
            .into_iter()
            .map(|p| (p, start_time(p)))
            .collect();
        for (_, c) in &self.children {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let end = Instant::now() + STOP_GRACE;
        for (_, c) in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut killed = Vec::new();
        for (pid, started) in tree {
            if started.is_some()
                && start_time(pid) == started
                && is_alive(pid)
                && let Ok(raw) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                killed.push((pid, started));
            }
        }
        for (_, c) in &mut self.children {
            // Our own child: its PID cannot be reused before it is waited for.
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        // SIGKILL is delivered, not done: a process dies when the kernel next schedules it.
        // Wait (bounded) so that "stopped" means gone, for the next run's measurements too.
        let end = Instant::now() + KILL_GRACE;
        while killed
            .iter()
            .any(|&(p, started)| start_time(p) == started && is_alive(p))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter says it is gone.
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// When process `pid` started (field 22 of its stat), which tells it from a later process
/// that got the same PID.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// CPU seconds process `pid` has used (its own threads and its reaped children), as
/// (user, system); `None` once it is gone.
pub(crate) fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let t = procfs::ticks(pid)?;
    let hz = clock_ticks();
    Some((t.user as f64 / hz, t.system as f64 / hz))
}

/// User + system CPU seconds of `pid`; `None` once it is gone.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_times(pid).map(|(u, s)| u + s)
}

/// Summed [`cpu_seconds`] of `pids` (those still alive).
pub(crate) fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p)).sum()
}

/// CPU seconds of the whole machine that may belong to other work: `user + nice + system`
/// of `/proc/stat`, plus `steal` (time the hypervisor gave this VM's CPUs to others).
///
/// Less the CPU time of the bench and the peer, it tells whether anything else ran during a
/// measurement (other people's builds and tests, or a busy host). Interrupt and softirq time,
/// where the kernel does the network work of the bench itself, is accounted apart by the
/// kernel and so not counted.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let v = all_cpus_jiffies()?;
    // user nice system idle iowait irq softirq steal
    let busy = v.get(..3)?.iter().sum::<u64>() + v.get(7).copied().unwrap_or(0);
    Some(busy as f64 / clock_ticks())
}

/// CPU seconds (user + system, as [`machine_busy_seconds`] counts them) used by processes
/// other than this one and `ours` since `machine_busy_seconds` read `busy0` and `ours`
/// used `ours0`; see [`foreign_mark`].
pub(crate) fn foreign_since(mark: Option<f64>, ours: &[u32]) -> Option<f64> {
    Some((foreign_mark(ours)? - mark?).max(0.0))
}

/// A reading to take differences of: machine busy time less ours.
pub(crate) fn foreign_mark(ours: &[u32]) -> Option<f64> {
    let me = std::process::id();
    Some(machine_busy_seconds()? - cpu_seconds_of(ours) - cpu_seconds_of(&[me]))
}

/// Waits (up to `limit`) until other work on the machine uses less than `share` of a core
/// over a whole second (see [`machine_busy_seconds`]). Returns whether it got quiet.
pub(crate) fn wait_quiet(ours: &[u32], share: f64, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let mark = foreign_mark(ours);
        if mark.is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_secs(1));
        match foreign_since(mark, ours) {
            Some(f) if f < share => return true,
            Some(_) => {}
            None => return true,
        }
    }
    false
}

/// Waits until at least `sockets` UDP sockets (IPv4) of the current network namespace are
/// bound to local port `port`.
pub(crate) fn wait_udp_bound(port: u16, sockets: usize, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let n = procfs::udp_bound(port)?;
        if n >= sockets {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(anyhow!(
                "{n} of {sockets} sockets bound to UDP port {port} after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `program args…` with a time limit; its stdout and stderr, or why it failed.
pub(crate) fn output(program: &str, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let mut argv = vec![program];
    argv.extend_from_slice(args);
    fanout_testkit::netns::run(&argv, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_is_found_measured_and_stopped() {
        let mut p = Procs::new("test", Duration::from_secs(30)).unwrap();
        p.spawn(
            "sleeper",
            "sh",
            &["-c".into(), "sleep 20 & sleep 20; wait".into()],
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while p.pids().len() < 3 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let pids = p.pids();
        assert_eq!(pids.len(), 3, "sh and two sleeps: {pids:?}");
        assert!(cpu_seconds_of(&pids) >= 0.0);
        assert!(pids.iter().all(|&q| peak_rss_kib(q).is_some()));
        p.check_alive().unwrap();
        let (user, system) = cpu_times(pids[0]).unwrap();
        assert!(user >= 0.0 && system >= 0.0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
        assert!(foreign_since(foreign_mark(&pids), &pids).is_some());
        p.stop();
        assert!(pids.iter().all(|&q| !is_alive(q)), "{pids:?}");
    }

    #[test]
    fn bound_ports_are_seen_and_commands_are_bounded() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        wait_udp_bound(port, 1, Duration::from_secs(1)).unwrap();
        assert!(wait_udp_bound(port, 2, Duration::from_millis(50)).is_err());
        assert_eq!(
            output("echo", &["hi"], Duration::from_secs(5)).unwrap(),
            "hi\n"
        );
        assert!(output("sleep", &["5"], Duration::from_millis(200)).is_err());
    }
}
