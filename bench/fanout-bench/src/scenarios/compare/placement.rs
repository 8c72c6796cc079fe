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
//! (the sink's server) inherits both. The caller's own thread is never moved. That mechanism
//! is `fanout_testkit::netns::on_thread`; this module decides only where things go.

use serde::Serialize;

pub(crate) use fanout_testkit::netns::{NsPath, allowed_cpus, on_thread};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_and_sink_get_the_first_two_cpus() {
        let cpus = allowed_cpus();
        let p = Pinning::default_for_machine();
        if cpus.len() >= 2 {
            assert_eq!((p.generator, p.sink), (Some(cpus[0]), Some(cpus[1])));
            assert!(p.describe().contains("CPU"));
        }
        assert_eq!(Pinning::NONE.describe(), "nothing pinned");
    }
}
