//! The `sessions` scenario's report: the raw readings, the per-session costs derived from
//! them, and notes on anything that limited the run; serialized as JSON for scripts (the
//! markdown for people is in `session_markdown`).
//!
//! Raw readings are kept next to the derived numbers so that a surprising figure can be
//! checked (a per-session cost is a difference of two readings divided by a count, and any of
//! the three can be the odd one out).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::time::Duration;

use serde::Serialize;

use super::session_clients::ClientPlan;
use super::session_scale::SessionScaleConfig;
use crate::generator::GenReport;
use crate::human::percent;
use crate::sink::SinkReport;
use crate::stats::{Latency, LatencySummary, ser_secs};
use fanout_testkit::procfs::{self, ProcSample};
use fanout_testkit::prom::Scrape;

/// One generator run, as the clients saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// Requests sent.
    pub sent: u64,
    /// Requests the kernel refused.
    pub send_errors: u64,
    /// Distinct valid replies received.
    pub replies: u64,
    /// Replies received twice.
    pub reply_duplicates: u64,
    /// Corrupt or misdirected replies.
    pub reply_invalid: u64,
    /// Sending time (seconds in JSON).
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Replies per second, over the sending time or until the last reply if that was later.
    pub replies_per_s: f64,
    /// Requests without a reply, in percent of those sent.
    pub loss_percent: f64,
    /// Round-trip time of the replies.
    pub rtt: Option<LatencySummary>,
    /// Client ports skipped because something else held them.
    pub busy_ports_skipped: u64,
}

impl Phase {
    /// The runs of the client groups taken together: counts added, rates over the summed
    /// times, round-trip percentiles over all replies.
    pub fn merge(runs: &[GenReport]) -> Self {
        let sum = |f: fn(&GenReport) -> u64| runs.iter().map(f).sum::<u64>();
        let elapsed: Duration = runs.iter().map(|r| r.elapsed).sum();
        // Replies can still arrive after the last send: each run's replies came within the
        // longer of its sending time and the time to its last reply.
        let reply_window: Duration = runs
            .iter()
            .map(|r| r.last_reply.map_or(r.elapsed, |l| l.max(r.elapsed)))
            .sum();
        let mut rtt = Latency::new(3);
        for h in runs.iter().filter_map(|r| r.reply_histogram.as_ref()) {
            rtt.merge(h);
        }
        let per = |v: u64, d: Duration| {
            let secs = d.as_secs_f64();
            if secs > 0.0 { v as f64 / secs } else { 0.0 }
        };
        let sent = sum(|r| r.sent);
        let replies = sum(|r| r.replies_received + r.reply_short);
        Phase {
            sent,
            send_errors: sum(|r| r.send_errors),
            replies,
            reply_duplicates: sum(|r| r.reply_duplicates),
            reply_invalid: sum(|r| r.reply_invalid),
            elapsed,
            requests_per_s: per(sent, elapsed),
            replies_per_s: per(replies, reply_window),
            loss_percent: percent(sent.saturating_sub(replies), sent),
            rtt: rtt.summary(),
            busy_ports_skipped: sum(|r| r.busy_ports_skipped),
        }
    }
}

/// udp-fanout's own counters for the listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionMetrics {
    /// `udp_fanout_sessions_active`.
    pub sessions_active: u64,
    /// `udp_fanout_sessions_created_total`.
    pub sessions_created: u64,
    /// `udp_fanout_sessions_evicted_total` (table full).
    pub sessions_evicted: u64,
    /// `udp_fanout_sessions_expired_total` (idle).
    pub sessions_expired: u64,
    /// `udp_fanout_packets_received_total`.
    pub packets_received: u64,
    /// `udp_fanout_packets_forwarded_total`.
    pub packets_forwarded: u64,
    /// `udp_fanout_replies_received_total`: datagrams from the backends.
    pub replies_received: u64,
    /// `udp_fanout_replies_total`: replies relayed to clients.
    pub replies: u64,
    /// `udp_fanout_packets_dropped_total` by reason (non-zero only).
    pub dropped: BTreeMap<String, u64>,
    /// `udp_fanout_replies_dropped_total` by reason (non-zero only).
    pub replies_dropped: BTreeMap<String, u64>,
    /// `udp_fanout_socket_drops_total`: the listener socket's receive buffer overflowed.
    pub socket_drops: u64,
}

impl SessionMetrics {
    /// Picks listener `listener`'s counters out of a scrape (absent ones read as 0).
    pub fn parse(text: &str, listener: &str) -> Self {
        let s = Scrape::parse(text);
        let l = [("listener", listener)];
        let get = |name: &str| s.get(name, &l).unwrap_or(0);
        SessionMetrics {
            sessions_active: get("udp_fanout_sessions_active"),
            sessions_created: get("udp_fanout_sessions_created_total"),
            sessions_evicted: get("udp_fanout_sessions_evicted_total"),
            sessions_expired: get("udp_fanout_sessions_expired_total"),
            packets_received: get("udp_fanout_packets_received_total"),
            packets_forwarded: get("udp_fanout_packets_forwarded_total"),
            replies_received: get("udp_fanout_replies_received_total"),
            replies: get("udp_fanout_replies_total"),
            dropped: s.nonzero_by("udp_fanout_packets_dropped_total", &l, "reason"),
            replies_dropped: s.nonzero_by("udp_fanout_replies_dropped_total", &l, "reason"),
            socket_drops: get("udp_fanout_socket_drops_total"),
        }
    }
}

/// The state after a phase: what the clients saw, the daemon's readings and its counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// The clients' view.
    pub clients: Phase,
    /// The daemon's process and the kernel's UDP state.
    pub daemon: ProcSample,
    /// The daemon's metrics.
    pub metrics: SessionMetrics,
}

/// What one session costs: differences between the baseline and the state after the fill,
/// divided by the live sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerSession {
    /// The sessions divided by.
    pub sessions: u64,
    /// Resident memory of the daemon, in bytes.
    pub rss_bytes: f64,
    /// Kernel memory held by UDP socket queues (sockstat), in bytes.
    pub kernel_udp_mem_bytes: f64,
    /// Kernel slab memory, machine-wide and so only indicative, in bytes.
    pub slab_bytes: f64,
    /// File descriptors of the daemon.
    pub fds: f64,
    /// Descriptors the daemon opened during the fill: its upstream sockets.
    pub upstream_sockets: i64,
    /// UDP sockets added in the namespace (the same sockets, counted by the kernel).
    pub udp_sockets_added: i64,
}

impl PerSession {
    fn new(before: &ProcSample, after: &ProcSample, sessions: u64, page: u64) -> Self {
        let d = |a: u64, b: u64| a as i64 - b as i64;
        let per = |v: i64| {
            if sessions > 0 {
                v as f64 / sessions as f64
            } else {
                0.0
            }
        };
        PerSession {
            sessions,
            rss_bytes: per(d(after.rss_kib, before.rss_kib) * 1024),
            kernel_udp_mem_bytes: per(d(after.udp_mem_pages, before.udp_mem_pages) * page as i64),
            slab_bytes: per(d(after.slab_kib, before.slab_kib) * 1024),
            fds: per(d(after.fds, before.fds)),
            upstream_sockets: d(after.fds, before.fds),
            udp_sockets_added: d(after.udp_sockets, before.udp_sockets),
        }
    }
}

/// The echo backends' view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkSummary {
    /// Requests the backends received.
    pub received: u64,
    /// Replies they sent.
    pub echoed: u64,
    /// Replies they failed to send.
    pub echo_errors: u64,
    /// Requests the kernel dropped at the backends' sockets (full buffers).
    pub kernel_drops: u64,
}

impl From<&SinkReport> for SinkSummary {
    fn from(r: &SinkReport) -> Self {
        SinkSummary {
            received: r.total_datagrams(),
            echoed: r.total_echoed(),
            echo_errors: r.ports.iter().map(|p| p.echo_errors).sum(),
            kernel_drops: r.ports.iter().filter_map(|p| p.kernel_drops).sum(),
        }
    }
}

/// The settings a report was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportSetup {
    /// Client sessions asked for (N).
    pub sessions: u32,
    /// Echo backends (D).
    pub downstreams: usize,
    /// udp-fanout's worker threads.
    pub workers: Option<u32>,
    /// `max_sessions` in the daemon's config.
    pub max_sessions: u64,
    /// Fill rate, requests/s.
    pub fill_rate_pps: u64,
    /// Throughput phase length (seconds in JSON).
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Throughput phase rate, requests/s (0 = as fast as possible).
    pub throughput_rate_pps: u64,
    /// Request size, bytes.
    pub size: usize,
    /// The client addresses.
    pub client_ips: Vec<IpAddr>,
    /// Groups the clients ran in, one after the other (1: all at once).
    pub client_groups: usize,
    /// Clients in the largest group.
    pub largest_group: u32,
    /// The client ports on each.
    pub client_ports: (u16, u16),
    /// RLIMIT_NOFILE (soft, hard) of the bench, inherited by the daemon.
    pub nofile: (u64, u64),
    /// Bytes per page (sockstat counts pages).
    pub page_size: u64,
}

/// How the daemon ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shutdown {
    /// Its exit status, as text.
    pub status: String,
    /// From SIGTERM to exit (seconds in JSON).
    #[serde(serialize_with = "ser_secs")]
    pub took: Duration,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionScaleReport {
    /// The settings.
    pub setup: ReportSetup,
    /// The daemon before any client.
    pub baseline: ProcSample,
    /// After every client sent one request.
    pub fill: Stage,
    /// After the throughput phase (absent if interrupted).
    pub throughput: Option<Stage>,
    /// The cost of one session, from `baseline` and `fill`.
    pub per_session: PerSession,
    /// The backends' view over the whole run.
    pub sink: SinkSummary,
    /// The daemon's exit.
    pub shutdown: Shutdown,
    /// Anything that limited or qualified the run.
    pub notes: Vec<String>,
}

/// The pieces [`SessionScaleReport::build`] assembles.
#[derive(Debug)]
pub(crate) struct Readings {
    pub(crate) workers: Option<u32>,
    pub(crate) plan: ClientPlan,
    pub(crate) nofile: (u64, u64),
    pub(crate) baseline: ProcSample,
    pub(crate) fill: Stage,
    pub(crate) throughput: Option<Stage>,
    pub(crate) shutdown: (ExitStatus, Duration),
    pub(crate) sink: SinkSummary,
    pub(crate) notes: Vec<String>,
}

impl SessionScaleReport {
    pub(crate) fn build(cfg: &SessionScaleConfig, r: Readings) -> Self {
        let page_size = procfs::page_size();
        let per_session = PerSession::new(
            &r.baseline,
            &r.fill.daemon,
            r.fill.metrics.sessions_active,
            page_size,
        );
        let mut report = SessionScaleReport {
            setup: ReportSetup {
                sessions: cfg.sessions,
                downstreams: cfg.downstreams,
                workers: r.workers,
                max_sessions: cfg.max_sessions(),
                fill_rate_pps: cfg.fill_rate_pps,
                duration: cfg.duration,
                throughput_rate_pps: cfg.throughput_rate_pps,
                size: cfg.size,
                client_groups: r.plan.groups.len(),
                largest_group: r.plan.largest_group(),
                client_ips: r.plan.ips,
                client_ports: cfg.client_ports,
                nofile: r.nofile,
                page_size,
            },
            baseline: r.baseline,
            fill: r.fill,
            throughput: r.throughput,
            per_session,
            sink: r.sink,
            shutdown: Shutdown {
                status: r.shutdown.0.to_string(),
                took: r.shutdown.1,
            },
            notes: r.notes,
        };
        report.add_findings();
        report
    }

    /// Notes on what the numbers say went wrong, so that nobody has to spot it in a table.
    fn add_findings(&mut self) {
        let n = u64::from(self.setup.sessions);
        let active = self.fill.metrics.sessions_active;
        let mut found = vec![
            (active < n)
                .then(|| format!("only {active} of {n} sessions are active after the fill")),
        ];
        for (stage, s) in [
            ("fill", Some(&self.fill)),
            ("throughput", self.throughput.as_ref()),
        ] {
            let Some(s) = s else { continue };
            let (dropped, evicted) = (&s.metrics.dropped, s.metrics.sessions_evicted);
            let busy = s.clients.busy_ports_skipped;
            found.extend([
                (!dropped.is_empty())
                    .then(|| format!("udp-fanout dropped requests after the {stage}: {dropped:?}")),
                (evicted > 0).then(|| {
                    format!("{evicted} sessions were evicted (table full) by the end of the {stage}")
                }),
                (busy > 0).then(|| {
                    format!(
                        "{busy} client ports were busy and skipped in the {stage}: those clients got other addresses"
                    )
                }),
            ]);
        }
        let drops = self.sink.kernel_drops;
        found.push((drops > 0).then(|| {
            format!("the echo backends' sockets dropped {drops} requests (receive buffers full)")
        }));
        self.notes.extend(found.into_iter().flatten());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_for_the_listener() {
        let text = "udp_fanout_sessions_active{listener=\"bench\"} 2000\n\
            udp_fanout_sessions_created_total{listener=\"bench\"} 2000\n\
            udp_fanout_replies_total{listener=\"bench\"} 4100\n\
            udp_fanout_packets_dropped_total{listener=\"bench\",reason=\"no_upstream_port\"} 5\n\
            udp_fanout_packets_dropped_total{listener=\"bench\",reason=\"send_error\"} 0\n\
            udp_fanout_sessions_active{listener=\"x\"} 7\n";
        let m = SessionMetrics::parse(text, "bench");
        assert_eq!(m.sessions_active, 2_000);
        assert_eq!(m.sessions_created, 2_000);
        assert_eq!(m.replies, 4_100);
        assert_eq!(m.sessions_evicted, 0);
        assert_eq!(m.dropped.len(), 1);
        assert_eq!(m.dropped["no_upstream_port"], 5);
    }

    #[test]
    fn per_session_costs_are_differences_over_sessions() {
        let before = ProcSample {
            rss_kib: 10_000,
            fds: 20,
            udp_sockets: 12,
            udp_mem_pages: 100,
            slab_kib: 50_000,
        };
        let after = ProcSample {
            rss_kib: 10_000 + 1_000,
            fds: 20 + 250,
            udp_sockets: 12 + 250,
            udp_mem_pages: 100,
            slab_kib: 50_000 + 500,
        };
        let p = PerSession::new(&before, &after, 2_000, 4096);
        assert_eq!(p.rss_bytes, 512.0);
        assert_eq!(p.fds, 0.125);
        assert_eq!(p.upstream_sockets, 250);
        assert_eq!(p.udp_sockets_added, 250);
        assert_eq!(p.kernel_udp_mem_bytes, 0.0);
        assert_eq!(p.slab_bytes, 256.0);
        assert_eq!(PerSession::new(&before, &after, 0, 4096).rss_bytes, 0.0);
    }
}
