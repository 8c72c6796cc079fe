//! Where the bench's own threads run: on which CPU, and in which network namespace.
//!
//! On a two-core machine the generator, the proxy and the sinks fight for the same cores, and
//! the scheduler moving the generator onto the proxy's core mid-run is a large source of
//! noise. So the generator thread is pinned to the first allowed CPU and the sink thread to
//! the second, while the proxy (all its threads and processes) stays free to use every core,
//! since its default configuration (one worker per core) expects that. The same placement is
//! used for every peer, so none is favoured.
//!
//! For the in-kernel peer the generator and sinks live in network namespaces. A socket
//! belongs to the namespace its creating thread was in, so each is created on a short-lived
//! thread that first joins the namespace (`setns`) and pins itself; a thread spawned from it
//! (the sink's server) inherits both. The caller's own thread is never moved.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use nix::sched::{CloneFlags, CpuSet, sched_getaffinity, sched_setaffinity, setns};
use nix::unistd::Pid;
use serde::Serialize;

/// Which CPUs the generator and the sink threads are pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pinning {
    /// The generator's CPU, if pinned.
    pub generator: Option<usize>,
    /// The sink thread's CPU, if pinned.
    pub sink: Option<usize>,
}

impl Pinning {
    /// No pinning at all.
    pub const NONE: Pinning = Pinning {
        generator: None,
        sink: None,
    };

    /// Generator on the first CPU this process may use, sink on the second; no pinning with
    /// fewer than two.
    pub fn default_for_machine() -> Pinning {
        let cpus = allowed_cpus();
        match cpus.as_slice() {
            [g, s, ..] => Pinning {
                generator: Some(*g),
                sink: Some(*s),
            },
            _ => Pinning::NONE,
        }
    }

    /// One sentence for the report.
    pub fn describe(&self) -> String {
        match (self.generator, self.sink) {
            (Some(g), Some(s)) => format!(
                "generator thread pinned to CPU {g}, sink thread to CPU {s}; the proxy's \
                 processes and threads unpinned (free to use every core, as their default \
                 one-worker-per-core settings expect)"
            ),
            _ => "nothing pinned".to_owned(),
        }
    }
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

/// A network namespace to run in, by its `ip netns` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsPath(pub(crate) PathBuf);

impl NsPath {
    /// The namespace `ip netns` calls `name`.
    pub(crate) fn named(name: &str) -> NsPath {
        NsPath(Path::new("/var/run/netns").join(name))
    }
}

/// Runs `f` on a new thread inside `ns` (if given) and pinned to `cpu` (if given); returns
/// its result. Threads `f` spawns inherit both.
pub(crate) fn on_thread<T: Send>(
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
        .map_err(|_| anyhow!("a bench thread panicked"))?
    })
}

fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
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
        let p = Pinning::default_for_machine();
        if cpus.len() >= 2 {
            assert_eq!((p.generator, p.sink), (Some(cpus[0]), Some(cpus[1])));
            assert!(p.describe().contains("CPU"));
        }
        assert_eq!(Pinning::NONE.describe(), "nothing pinned");
    }
}
