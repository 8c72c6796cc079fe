//! The `control` scenario's report: reload latency and cost, loss on the listener the reloads
//! do not touch, the daemon's idle and health-checking CPU and memory; JSON for scripts,
//! markdown for people ([`ControlScaleReport::to_markdown`]).
//!
//! Every repeated measurement is kept as a [`Spread`] (median, 90th percentile, min, max and
//! the count), since on a shared two-core machine one number alone says little.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::human::{percentiles, thousands};
use crate::stats::LatencySummary;

/// Median, 90th percentile and range of repeated measurements, in the unit the field names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Samples.
    pub n: usize,
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples`; `None` without any.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = super::median_of_sorted(&v);
        let rank = ((n as f64 * 0.9).ceil() as usize).clamp(1, n);
        Some(Spread {
            n,
            median,
            p90: v[rank - 1],
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median (min–max, n=N)` with `digits` decimals and `unit`.
    pub fn show(&self, digits: usize, unit: &str) -> String {
        if self.n == 1 {
            return format!("{:.digits$}{unit}", self.median);
        }
        format!(
            "{:.digits$}{unit} (min {:.digits$}, max {:.digits$}; n={})",
            self.median, self.min, self.max, self.n
        )
    }

    /// [`show`](Self::show) with the 90th percentile too.
    pub fn show_p90(&self, digits: usize, unit: &str) -> String {
        if self.n < 5 {
            return self.show(digits, unit);
        }
        format!(
            "{:.digits$}{unit} (p90 {:.digits$}, min {:.digits$}, max {:.digits$}; n={})",
            self.median, self.p90, self.min, self.max, self.n
        )
    }
}

fn show_opt(s: Option<&Spread>, digits: usize, unit: &str) -> String {
    s.map_or_else(|| "-".to_owned(), |s| s.show_p90(digits, unit))
}

/// What was run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    /// Downstreams in the big set.
    pub downstreams: u32,
    /// Reloads by SIGHUP.
    pub sighup_reloads: u32,
    /// Reloads by a file write alone (the watch).
    pub watch_reloads: u32,
    /// The steady listener's traffic, datagrams per second.
    pub steady_rate_pps: u64,
    /// Its flows.
    pub steady_flows: u32,
    /// The probe's interval, in milliseconds.
    pub probe_interval_ms: f64,
    /// CPU window length, in seconds.
    pub cpu_window_s: f64,
    /// CPU windows per daemon.
    pub repeats: u32,
    /// Health-check interval, in milliseconds.
    pub health_interval_ms: u64,
    /// `drain_secs` of the big listener (`None`: the daemon's default, 30 s).
    pub drain_secs: Option<u32>,
    /// `dataplane.workers` (`None`: one per core).
    pub workers: Option<u32>,
    /// Cores this process may run on.
    pub cpus: usize,
}

/// Costs measured in this process with the daemon's own libraries, to tell where a reload's
/// time goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InProcess {
    /// Loading the config file (YAML, validation), in milliseconds.
    pub config_load_ms: Spread,
    /// Reading, parsing and checking the N-line downstreams file, in milliseconds.
    pub file_load_ms: Spread,
    /// `BackendSet::new`, consistent hash, N active endpoints, in milliseconds.
    pub maglev_build_ms: Spread,
    /// The same with N more endpoints draining (the set after a full swap with drain on).
    pub maglev_build_with_draining_ms: Option<Spread>,
}

/// One reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadSample {
    /// `sighup` or `watch`.
    pub trigger: &'static str,
    /// From the trigger to the first datagram at the new set, in milliseconds (`None`: it did
    /// not happen within the timeout).
    pub latency_ms: Option<f64>,
}

/// The steady listener's traffic over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SteadyWindow {
    /// Seconds the generator sent for.
    pub secs: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Distinct datagrams received by the sinks.
    pub received: u64,
    /// Sent but never received.
    pub lost: u64,
    /// Received twice.
    pub duplicates: u64,
    /// Dropped by the sinks' sockets (a full receive buffer: the bench's fault, not the
    /// daemon's).
    pub sink_kernel_drops: u64,
    /// The daemon's drops on this listener over the window, by reason.
    pub daemon_dropped: BTreeMap<String, u64>,
    /// One-way latency, generator to sink.
    pub latency: Option<LatencySummary>,
    /// The daemon's CPU over the window, in percent of one core.
    pub daemon_cpu_pct: f64,
}

/// The reload phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadReport {
    /// From spawn to `udp-fanout ready`, with the N-downstream file, in seconds.
    pub startup_s: f64,
    /// Worker threads.
    pub workers: Option<u32>,
    /// RSS after start, in KiB.
    pub rss_start_kib: u64,
    /// RSS after all reloads, in KiB.
    pub rss_end_kib: u64,
    /// Peak RSS (VmHWM), in KiB.
    pub rss_peak_kib: u64,
    /// RSS in KiB after every tenth of the reloads: (reloads done, RSS).
    pub rss_trace: Vec<(u32, u64)>,
    /// Open descriptors after start and after the reloads.
    pub fds: (u64, u64),
    /// Every reload.
    pub samples: Vec<ReloadSample>,
    /// SIGHUP to new set serving, in milliseconds.
    pub sighup_ms: Option<Spread>,
    /// File write to new set serving (the watch, with its 200 ms debounce), in milliseconds.
    pub watch_ms: Option<Spread>,
    /// Reloads that did not take effect within the timeout.
    pub timeouts: u32,
    /// `configuration reloaded` lines logged during the phase.
    pub reloads_logged: u64,
    /// `udp_fanout_config_reloads_total` at the end: (success, error).
    pub reloads_metric: (Option<u64>, Option<u64>),
    /// Length of the reload phase, in seconds.
    pub phase_s: f64,
    /// The daemon's CPU per reload, in milliseconds: its CPU over the phase less what the
    /// steady traffic cost at the baseline's rate, over the reloads logged.
    pub cpu_per_reload_ms: f64,
    /// Probe datagrams to the reloaded listener: sent, received at set A, at set B.
    pub probe: (u64, u64, u64),
    /// The steady listener without reloads.
    pub baseline: SteadyWindow,
    /// The steady listener during the reloads.
    pub during: SteadyWindow,
}

/// One daemon started, left idle (apart from health checks) and measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleReport {
    /// What it was.
    pub label: String,
    /// Downstreams of its listener.
    pub downstreams: u32,
    /// Whether health checks were on.
    pub health: bool,
    /// From spawn to `udp-fanout ready`, in seconds.
    pub startup_s: f64,
    /// CPU over each window, in percent of one core.
    pub cpu_pct: Option<Spread>,
    /// RSS after the windows, in KiB.
    pub rss_kib: u64,
    /// Open descriptors after the windows.
    pub fds: u64,
    /// Health probes answered per second (the echo server's count).
    pub probes_per_s: Option<Spread>,
    /// From ready until every downstream was healthy, in seconds.
    pub all_healthy_s: Option<f64>,
    /// Downstreams healthy when the wait ended.
    pub healthy: Option<u64>,
    /// The daemon's CPU from ready until all were healthy, in seconds (admin API polls
    /// included).
    pub warmup_cpu_s: Option<f64>,
    /// Admin API polls during that wait.
    pub polls: u32,
    /// The daemon's CPU per such poll (measured after the windows), in milliseconds.
    pub poll_cpu_ms: Option<f64>,
    /// `udp_fanout_health_checks_total` at the end, summed: (success, failure).
    pub checks: Option<(u64, u64)>,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlScaleReport {
    /// What was run.
    pub setup: Setup,
    /// In-process costs.
    pub in_process: Option<InProcess>,
    /// The reload phase.
    pub reload: Option<ReloadReport>,
    /// The idle and health-checking daemons.
    pub idle: Vec<IdleReport>,
    /// Anything that limited or disturbed the run.
    pub notes: Vec<String>,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl ControlScaleReport {
    /// The report as markdown: a heading, a table per phase, notes.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let su = &self.setup;
        let n = thousands(u64::from(su.downstreams));
        let _ = writeln!(s, "## udp-fanout control plane at {n} downstreams\n");
        let workers = su
            .workers
            .map_or_else(|| "one per core".to_owned(), |w| w.to_string());
        let _ = writeln!(s, "udp-fanout workers: {workers}; {} CPUs.\n", su.cpus);
        if let Some(p) = &self.in_process {
            in_process_table(&mut s, p, &n);
        }
        if let Some(r) = &self.reload {
            reload_table(&mut s, su, r, &n);
        }
        if !self.idle.is_empty() {
            idle_table(&mut s, su, &self.idle);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "Notes:");
            for note in &self.notes {
                let _ = writeln!(s, "- {note}");
            }
        }
        s
    }
}

fn in_process_table(s: &mut String, p: &InProcess, n: &str) {
    let _ = writeln!(
        s,
        "### In-process costs (the daemon's libraries, in this process)\n"
    );
    let _ = writeln!(s, "| operation | time |\n| --- | --- |");
    let _ = writeln!(
        s,
        "| load the config file (YAML, validation) | {} |",
        p.config_load_ms.show(2, " ms")
    );
    let _ = writeln!(
        s,
        "| read, parse and check the {n}-line downstreams file | {} |",
        p.file_load_ms.show(2, " ms")
    );
    let _ = writeln!(
        s,
        "| `BackendSet::new`, consistent hash (Maglev, 65,537 slots), {n} endpoints | {} |",
        p.maglev_build_ms.show(2, " ms")
    );
    if let Some(d) = &p.maglev_build_with_draining_ms {
        let _ = writeln!(
            s,
            "| the same with {n} more draining (the set after a full swap) | {} |",
            d.show(2, " ms")
        );
    }
    s.push('\n');
}

fn reload_table(s: &mut String, su: &Setup, r: &ReloadReport, n: &str) {
    let _ = writeln!(
        s,
        "### Reloads: the {n}-downstream set swapped whole, {} by SIGHUP, {} by a file write alone\n",
        su.sighup_reloads, su.watch_reloads
    );
    let drain = su
        .drain_secs
        .map_or_else(|| "default (30 s)".to_owned(), |d| format!("{d} s"));
    let _ = writeln!(
        s,
        "Listener `big`: {n} loopback downstreams from a downstreams_file, consistent_hash, \
         drain_secs {drain}, alternating between two variants of {n} addresses; listener \
         `steady`: round_robin to 2 sinks, {} datagrams/s over {} flows, never changed.\n",
        thousands(su.steady_rate_pps),
        su.steady_flows,
    );
    let _ = writeln!(s, "| measure | value |\n| --- | --- |");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row(
        s,
        "reload latency: SIGHUP to the first datagram at the new set",
        show_opt(r.sighup_ms.as_ref(), 1, " ms"),
    );
    if su.watch_reloads > 0 {
        row(
            s,
            "reload latency: file write to the first datagram at the new set (watch, 200 ms debounce)",
            show_opt(r.watch_ms.as_ref(), 1, " ms"),
        );
    }
    row(
        s,
        "reloads that did not take effect in time",
        r.timeouts.to_string(),
    );
    let (ok, err) = r.reloads_metric;
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), thousands);
    row(
        s,
        "reloads applied (log) / `config_reloads_total` success, error",
        format!(
            "{} / {}, {} (a SIGHUP after a write is two reloads: the signal's and the watch's)",
            r.reloads_logged,
            opt(ok),
            opt(err)
        ),
    );
    row(
        s,
        "daemon CPU per reload (less the steady traffic's share)",
        format!("{:.1} ms", r.cpu_per_reload_ms),
    );
    let (sent, a, b) = r.probe;
    row(
        s,
        "probe to `big`, 1 datagram per interval: sent / received",
        format!(
            "{} / {} ({} lost)",
            thousands(sent),
            thousands(a + b),
            thousands(sent.saturating_sub(a + b))
        ),
    );
    for (label, w) in [
        ("`steady`, no reloads", &r.baseline),
        ("**`steady` during the reloads**", &r.during),
    ] {
        row(s, label, steady(w));
    }
    row(s, "start-up to ready", format!("{:.2} s", r.startup_s));
    row(
        s,
        "daemon RSS: after start / after the reloads / peak",
        format!(
            "{} / {} / {}",
            mib(r.rss_start_kib),
            mib(r.rss_end_kib),
            mib(r.rss_peak_kib)
        ),
    );
    let trace: Vec<String> = r
        .rss_trace
        .iter()
        .map(|(n, kib)| format!("{n}: {:.1}", *kib as f64 / 1024.0))
        .collect();
    row(
        s,
        "daemon RSS in MiB after N reloads (N: MiB)",
        trace.join(", "),
    );
    row(
        s,
        "open descriptors: after start / after the reloads",
        format!("{} / {}", r.fds.0, r.fds.1),
    );
    s.push('\n');
}

fn steady(w: &SteadyWindow) -> String {
    let drops: Vec<String> = w
        .daemon_dropped
        .iter()
        .map(|(k, v)| format!("{k} {}", thousands(*v)))
        .collect();
    let drops = if drops.is_empty() {
        "none".to_owned()
    } else {
        drops.join(", ")
    };
    let lat = w.latency.as_ref().map_or_else(
        || "no samples".to_owned(),
        |l| {
            let [p50, p99, p999, max] = percentiles(l);
            format!("p50 {p50}, p99 {p99}, p99.9 {p999}, max {max}")
        },
    );
    format!(
        "{} sent in {:.1} s, **{} lost**, {} duplicates, sink socket drops {}, daemon drops {drops}; \
         latency {lat}; daemon CPU {:.1}%",
        thousands(w.sent),
        w.secs,
        thousands(w.lost),
        w.duplicates,
        w.sink_kernel_drops,
        w.daemon_cpu_pct
    )
}

fn idle_table(s: &mut String, su: &Setup, idle: &[IdleReport]) {
    let _ = writeln!(
        s,
        "### Idle and health-checking daemons (CPU over {} window(s) of {:.1} s each)\n",
        su.repeats, su.cpu_window_s
    );
    let _ = writeln!(
        s,
        "Listener `checked`: consistent_hash, its downstreams in a downstreams_file, every one an \
         address on one wildcard-bound echo server; no traffic but the probes.\n"
    );
    let _ = writeln!(
        s,
        "| daemon | CPU, % of one core | probes answered/s | RSS | descriptors | start-up |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for r in idle {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} s |",
            r.label,
            show_opt(r.cpu_pct.as_ref(), 2, "%"),
            show_opt(r.probes_per_s.as_ref(), 0, ""),
            mib(r.rss_kib),
            r.fds,
            r.startup_s
        );
    }
    s.push('\n');
    for r in idle.iter().filter(|r| r.health) {
        let healthy = r.healthy.map_or_else(|| "?".to_owned(), thousands);
        let (ok, bad) = r.checks.unwrap_or_default();
        let polls = match r.poll_cpu_ms {
            Some(p) => format!(
                ", of which {} admin API poll(s) of the list, {p:.1} ms each",
                r.polls
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{}: {healthy} of {} healthy {}; the daemon's CPU until then {}{polls}. Probe \
             results at the end: {} success, {} failure.\n",
            r.label,
            thousands(u64::from(r.downstreams)),
            r.all_healthy_s.map_or_else(
                || "(not all in time)".to_owned(),
                |t| format!("{t:.2} s after ready")
            ),
            r.warmup_cpu_s
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.2} s")),
            thousands(ok),
            thousands(bad)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_have_a_median_and_a_range() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Spread::of(&v).unwrap().p90, 9.0);
        assert_eq!(Spread::of(&[5.0]).unwrap().show(1, " ms"), "5.0 ms");
        assert_eq!(
            Spread::of(&[1.0, 3.0]).unwrap().show(0, "%"),
            "2% (min 1, max 3; n=2)"
        );
    }
}
