//! The machine a comparison ran on, and whether it was idle when it started.
//!
//! Figures from a shared two-core VM only mean something next to a description of it, and
//! only if nothing else was using it: a background build would take a core from whichever peer
//! happened to run at the time. The harness therefore samples `/proc/stat` for a moment and
//! reads the load average before it starts, and warns (it does not refuse: a busy machine's
//! figures are still comparable within the run, only less so) when the machine is not idle.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// CPU use above this fraction during the idle sample draws a warning.
const BUSY: f64 = 0.10;

/// Where the comparison ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// The 1-minute load average at the start.
    pub load_1m: f64,
    /// Share of CPU time busy during the idle sample.
    pub busy: f64,
}

impl Machine {
    /// Describes this machine, sampling CPU use for `sample`; returns warnings about it.
    pub fn survey(sample: Duration) -> (Machine, Vec<String>) {
        let before = cpu_times();
        std::thread::sleep(sample);
        let after = cpu_times();
        let busy = match (before, after) {
            (Some((b_idle, b_all)), Some((a_idle, a_all))) if a_all > b_all => {
                1.0 - (a_idle - b_idle) as f64 / (a_all - b_all) as f64
            }
            _ => 0.0,
        };
        let load_1m = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let m = Machine {
            cpu: cpu_model(),
            cores: super::placement::allowed_cpus().len(),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            memory_gib: meminfo_kib("MemTotal:").map_or(0.0, |k| k as f64 / 1024.0 / 1024.0),
            load_1m,
            busy,
        };
        let mut warnings = Vec::new();
        if busy > BUSY {
            warnings.push(format!(
                "the machine was {:.0} % busy before the run started: other work competes \
                 with the peers, figures are noisier",
                busy * 100.0
            ));
        }
        // The load average trails by a minute (and counts this bench's own start-up), so
        // only a load above the core count is worth a warning of its own.
        if load_1m > m.cores.max(1) as f64 {
            warnings.push(format!(
                "1-minute load average {load_1m:.2} on {} cores before the run",
                m.cores
            ));
        }
        (m, warnings)
    }

    /// One line for the method paragraph.
    pub fn describe(&self) -> String {
        format!(
            "{} cores of {} (Linux {}, {:.0} GiB)",
            self.cores, self.cpu, self.kernel, self.memory_gib
        )
    }
}

/// (idle, total) jiffies over all CPUs.
fn cpu_times() -> Option<(u64, u64)> {
    let v = super::procs::all_cpus_jiffies()?;
    // idle + iowait count as idle; guest time is already inside user.
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().take(8).sum()))
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".to_owned())
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let t = fs::read_to_string("/proc/meminfo").ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(20_454), (2026, 1, 1));
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn the_machine_is_described() {
        let (m, _) = Machine::survey(Duration::from_millis(50));
        assert!(m.cores >= 1);
        assert!((0.0..=1.0).contains(&m.busy), "{m:?}");
        assert!(m.describe().contains("cores"));
    }
}
