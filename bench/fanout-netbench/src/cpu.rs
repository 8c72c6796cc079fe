//! CPU accounting of a measured window, three ways, each with the same round's idle window
//! (nothing running) subtracted as the machine's background:
//!
//! - `/proc/stat` softirq / system / user over all CPUs. Tick-sampled (no
//!   `CONFIG_IRQ_TIME_ACCOUNTING` on the reference VM): a tick counts as softirq when it lands
//!   in one, including a softirq run by `local_bh_enable` in the generator's syscall; the
//!   generator's own program runs in that syscall (system). Anything else running on the
//!   machine moves these numbers.
//! - NET_RX + NET_TX softirq time traced at softirq entry and exit (raw tracepoints in
//!   `bench_gen.c`): exact, but machine-wide too.
//! - utime + stime of this process (generator threads, a plane's threads, and the softirqs
//!   they ran) plus the ksoftirqd threads: the CPU the measured traffic used, nearly immune to
//!   other load (only softirq work crossing between our tasks and others' is misattributed).
//!   When a third-party proxy runs (its own processes), their utime + stime (reaped children
//!   included) is added to this figure, and also kept apart as `proxy`.
//!
//! Figures are CPU-milliseconds per million packets, which is the same number as CPU
//! nanoseconds per packet.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::anyhow;

/// CPU time counters at one moment (or their difference over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// /proc/stat user + nice, ticks.
    pub user: u64,
    /// /proc/stat system, ticks.
    pub system: u64,
    /// /proc/stat softirq, ticks.
    pub softirq: u64,
    /// /proc/stat irq, ticks.
    pub irq: u64,
    /// /proc/stat steal, ticks.
    pub steal: u64,
    /// This process (every thread it ever had: generator, planes) plus the ksoftirqd
    /// threads, ticks: the CPU the measured traffic used, whoever else shares the machine.
    /// Includes `proxy`.
    pub own: u64,
    /// A third-party proxy's processes (utime + stime + cutime + cstime), ticks; 0 without.
    pub proxy: u64,
    /// NET_TX + NET_RX softirq time, traced (ns; not ticks).
    pub net_softirq_ns: u64,
}

/// utime + stime of a /proc/<pid>/stat (a process: all its threads, exited ones included).
fn task_ticks(stat: &str) -> u64 {
    fanout_testkit::procfs::ticks_at(stat).map_or(0, |t| t.own)
}

/// The ksoftirqd threads' /proc paths (softirq work deferred from wherever it was raised).
fn ksoftirqd() -> &'static [String] {
    static PATHS: OnceLock<Vec<String>> = OnceLock::new();
    PATHS.get_or_init(|| {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
            })
            .map(|p| p.join("stat").to_string_lossy().into_owned())
            .collect()
    })
}

impl Cpu {
    /// Reads the counters now; `net_softirq_ns` is the traced total passed in, `proxy_pids`
    /// a third-party proxy's processes (empty without).
    pub fn read(net_softirq_ns: u64, proxy_pids: &[u32]) -> anyhow::Result<Cpu> {
        let proxy = crate::external::ticks_of(proxy_pids);
        let own = task_ticks("/proc/self/stat")
            + ksoftirqd().iter().map(|p| task_ticks(p)).sum::<u64>()
            + proxy;
        let v = fanout_testkit::procfs::all_cpus_jiffies()
            .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(Cpu {
            user: at(0) + at(1),
            system: at(2),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
            own,
            proxy,
            net_softirq_ns,
        })
    }

    /// The counters' growth since `before`.
    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
            softirq: self.softirq.saturating_sub(before.softirq),
            irq: self.irq.saturating_sub(before.irq),
            steal: self.steal.saturating_sub(before.steal),
            own: self.own.saturating_sub(before.own),
            proxy: self.proxy.saturating_sub(before.proxy),
            net_softirq_ns: self.net_softirq_ns.saturating_sub(before.net_softirq_ns),
        }
    }

    /// CPU-ms per second of wall time over a window of length `window`.
    pub fn rates(&self, window: Duration) -> Rates {
        let w = window.as_secs_f64().max(1e-9);
        let k = tick_ms() / w;
        Rates {
            softirq: self.softirq as f64 * k,
            system: self.system as f64 * k,
            user: self.user as f64 * k,
            own: self.own as f64 * k,
            proxy: self.proxy as f64 * k,
            net_softirq: self.net_softirq_ns as f64 / 1e6 / w,
        }
    }
}

/// Milliseconds per tick.
pub fn tick_ms() -> f64 {
    1000.0 / fanout_testkit::procfs::clock_ticks()
}

/// CPU-ms per second of wall time (the idle window's are the machine's background).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// /proc/stat softirq.
    pub softirq: f64,
    /// /proc/stat system.
    pub system: f64,
    /// /proc/stat user.
    pub user: f64,
    /// This process + ksoftirqd (+ a proxy's processes).
    pub own: f64,
    /// A third-party proxy's processes.
    pub proxy: f64,
    /// NET_TX + NET_RX softirq, traced.
    pub net_softirq: f64,
}

impl Rates {
    /// CPU-ms per million of `count` things handled in a window of length `window`, the
    /// background `idle` removed.
    pub fn per_million(&self, idle: &Rates, window: Duration, count: u64) -> PerMillion {
        let w = window.as_secs_f64();
        let m = count.max(1) as f64 / 1e6;
        let net = |a: f64, b: f64| (a - b) * w / m;
        PerMillion {
            softirq: net(self.softirq, idle.softirq),
            system: net(self.system, idle.system),
            user: net(self.user, idle.user),
            net_softirq: net(self.net_softirq, idle.net_softirq),
            own: net(self.own, idle.own),
            proxy: net(self.proxy, idle.proxy),
        }
    }
}

/// CPU milliseconds per million packets (= CPU nanoseconds per packet).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerMillion {
    /// Machine-wide (/proc/stat), the same round's idle background removed.
    pub softirq: f64,
    /// See `softirq`.
    pub system: f64,
    /// See `softirq`.
    pub user: f64,
    /// NET_TX + NET_RX softirq time, traced, the same round's idle removed.
    pub net_softirq: f64,
    /// This process + ksoftirqd (+ a proxy's processes), the same round's idle (ksoftirqd's
    /// background) removed.
    pub own: f64,
    /// Of `own`, a third-party proxy's processes.
    pub proxy: f64,
}

impl PerMillion {
    /// softirq + system + user.
    pub fn total(&self) -> f64 {
        self.softirq + self.system + self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_million_subtracts_the_background() {
        let busy = Rates {
            net_softirq: 600.0,
            own: 900.0,
            ..Rates::default()
        };
        let idle = Rates {
            net_softirq: 100.0,
            own: 100.0,
            ..Rates::default()
        };
        // 500 CPU-ms/s of softirq over 2 s for 10 M packets: 100 ms per million (100 ns each).
        let pm = busy.per_million(&idle, Duration::from_secs(2), 10_000_000);
        assert!((pm.net_softirq - 100.0).abs() < 1e-9, "{pm:?}");
        assert!((pm.own - 160.0).abs() < 1e-9, "{pm:?}");
        let c = Cpu::read(0, &[std::process::id()]).unwrap();
        assert!(c.own >= c.proxy);
        assert!(c.user + c.system > 0);
        assert_eq!(c.since(c), Cpu::default());
    }
}
