//! Network namespaces, commands and root checks for tests and benchmarks that need the kernel:
//! the one copy every test suite and bench in the workspace uses.
//!
//! Kernel-plane tests and the in-kernel benchmarks build throwaway topologies (client, load
//! balancer, backends joined by veth pairs) in namespaces they create and delete, so traffic
//! never leaves the machine and parallel runs never see each other. Three rules hold here:
//!
//! - a namespace is a [`Netns`] guard, deleted on `Drop`, so a failed test leaves nothing;
//! - names carry [`unique_tag`] (process id + counter), so `cargo test`'s parallel tests and a
//!   manual bench run on the same machine never collide (interface names are limited to 15
//!   bytes, hence the short hex tag);
//! - every external command runs with a time limit ([`run`]), so a wedged `ip` or `nft` fails
//!   the run instead of hanging it.
//!
//! A socket belongs to the namespace of the thread that created it: [`Netns::enter`] moves
//! the calling thread in and back, [`on_thread`] runs a closure on a fresh thread that joins
//! a namespace (and optionally a CPU) for good.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use nix::sched::{CloneFlags, CpuSet, sched_getaffinity, sched_setaffinity, setns};
use nix::unistd::Pid;

/// Set to `1` by CI: privileged tests must run there, never skip.
pub const REQUIRE_PRIVILEGED: &str = "UDP_FANOUT_REQUIRE_PRIVILEGED";

/// The time limit of [`sh`].
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Whether a privileged test (root: namespaces, eBPF) can run. Without root it prints why it
/// skips and returns `false`, unless [`REQUIRE_PRIVILEGED`] is `1`: then it panics, so CI
/// cannot pass by skipping.
pub fn privileged(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(REQUIRE_PRIVILEGED).as_deref() == Ok("1") {
        panic!("{what} needs root, and {REQUIRE_PRIVILEGED}=1 says it must run");
    }
    eprintln!("SKIP: {what} needs root (network namespaces, eBPF)");
    false
}

/// A short tag unique to this process and call (hex pid + counter), for namespace and
/// interface names.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() % 0xfffff)
}

/// Runs `args[0] args[1..]` with a time limit (killed after it); its stdout and stderr, or an
/// error carrying them.
pub fn run(args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let secs = format!("{:.1}", limit.as_secs_f64());
    let out = Command::new("timeout")
        .args(["-k", "2", &secs, program])
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

/// [`run`] with [`COMMAND_LIMIT`].
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    run(args, COMMAND_LIMIT)
}

/// A veth pair: `a` in namespace `a_ns`, its peer `b` in `b_ns`.
pub fn veth(a: &str, a_ns: &Netns, b: &str, b_ns: &Netns) -> anyhow::Result<String> {
    sh(&[
        "ip",
        "link",
        "add",
        a,
        "netns",
        a_ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        b_ns.name(),
    ])
}

/// A network namespace, deleted on drop (which also deletes the veths in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (deleting a leftover of that name first) with `lo` up.
    pub fn new(name: impl Into<String>) -> anyhow::Result<Netns> {
        let name = name.into();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name])?;
        // Deleted by Drop from here on, whatever fails below.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Turns IPv6 off inside (no router solicitations or MLD on links being measured).
    pub fn without_ipv6(self) -> anyhow::Result<Netns> {
        self.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        Ok(self)
    }

    /// The namespace's name (under /var/run/netns).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its `ip netns` file, for [`on_thread`].
    pub fn path(&self) -> NsPath {
        NsPath::named(&self.name)
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Gives `dev` the address `cidr` and brings it up.
    pub fn address_up(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        self.ip(&["addr", "add", cidr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// `ip netns exec NAME args…`.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` with the calling thread inside this namespace, then moves it back (also when
    /// `f` panics, before the panic goes on).
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        enter(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` with the calling thread inside the namespace `name`, then moves it back.
pub fn enter<T>(name: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let here = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    join(name)?;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    setns(here.as_fd(), CloneFlags::CLONE_NEWNET)
        .context("returning to the original network namespace")?;
    Ok(r.unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// Moves the calling thread into the namespace `name` for good (generator threads).
pub fn join(name: &str) -> anyhow::Result<()> {
    let path = NsPath::named(name);
    let there = File::open(&path.0).with_context(|| format!("opening {}", path.0.display()))?;
    setns(there.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))
}

/// A network namespace to run in, by its `ip netns` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsPath(pub PathBuf);

impl NsPath {
    /// The namespace `ip netns` calls `name`.
    pub fn named(name: &str) -> NsPath {
        NsPath(Path::new("/var/run/netns").join(name))
    }
}

/// Runs `f` on a new thread inside `ns` (if given) and pinned to `cpu` (if given); returns
/// its result. Threads `f` spawns inherit both; the caller's thread is never moved.
pub fn on_thread<T: Send>(
    ns: Option<&NsPath>,
    cpu: Option<usize>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let ns_file = match ns {
        Some(p) => {
            Some(File::open(&p.0).with_context(|| format!("opening namespace {}", p.0.display()))?)
        }
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(f) = &ns_file {
                setns(f.as_fd(), CloneFlags::CLONE_NEWNET).context("joining the namespace")?;
            }
            if let Some(c) = cpu {
                pin_current_thread(c)?;
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("a test or bench thread panicked"))?
    })
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_where_it_was_put() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        let on = on_thread(None, Some(last), || Ok(allowed_cpus())).unwrap();
        assert_eq!(on, vec![last]);
        // The caller is not moved.
        assert_eq!(allowed_cpus(), cpus);
    }

    #[test]
    fn commands_are_bounded_and_tags_unique() {
        assert_eq!(
            run(&["echo", "hi"], Duration::from_secs(5)).unwrap(),
            "hi\n"
        );
        assert!(run(&["sleep", "5"], Duration::from_millis(200)).is_err());
        assert!(run(&[], Duration::from_secs(1)).is_err());
        let err = sh(&["false"]).unwrap_err().to_string();
        assert!(err.contains("`false` failed"), "{err}");
        assert_ne!(unique_tag(), unique_tag());
    }

    #[test]
    fn a_namespace_is_made_entered_and_deleted() {
        if !privileged("the namespace guard test") {
            return;
        }
        let name = format!("uftk{}", unique_tag());
        let ns = Netns::new(name.clone()).unwrap().without_ipv6().unwrap();
        assert!(ns.ip(&["link", "show", "lo"]).unwrap().contains("UP"));
        let inside = ns
            .enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        drop(ns);
        assert!(!Path::new("/var/run/netns").join(&name).exists());
    }
}
