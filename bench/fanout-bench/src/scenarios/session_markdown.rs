//! The `sessions` report as markdown: a heading, one table per phase, and the notes.
//!
//! Markdown because the report's readers are people comparing runs, often by pasting them
//! into a pull request or an issue, where tables render; the per-session costs, the numbers
//! the scenario exists for, are set in bold.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::session_report::{Phase, SessionScaleReport, Stage};
use crate::human::{percentiles, thousands, thousands_signed};
use crate::stats::LatencySummary;

impl SessionScaleReport {
    /// The report as markdown: a heading and one table per phase.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let su = &self.setup;
        let workers = su.workers.map_or_else(|| "?".to_owned(), |w| w.to_string());
        let _ = writeln!(
            s,
            "## udp-fanout sessions: {} clients, {} downstreams, {workers} workers\n",
            thousands(u64::from(su.sessions)),
            su.downstreams
        );
        let grouping = match su.client_groups {
            1 => "all at once".to_owned(),
            g => format!(
                "in {g} groups of up to {} one after the other (open-file limit)",
                thousands(u64::from(su.largest_group))
            ),
        };
        let _ = writeln!(
            s,
            "Clients {} on ports {}-{}, {grouping}; max_sessions {}; {}-byte requests; \
             RLIMIT_NOFILE {}/{}.\n",
            ip_span(&su.client_ips),
            su.client_ports.0,
            su.client_ports.1,
            thousands(su.max_sessions),
            su.size,
            su.nofile.0,
            su.nofile.1
        );
        self.fill_table(&mut s);
        if let Some(t) = &self.throughput {
            self.throughput_table(&mut s, t);
        }
        let _ = writeln!(
            s,
            "Echo backends: {} requests received, {} replies sent, {} send errors, {} kernel drops.  ",
            thousands(self.sink.received),
            thousands(self.sink.echoed),
            self.sink.echo_errors,
            self.sink.kernel_drops
        );
        let _ = writeln!(
            s,
            "udp-fanout stopped on SIGTERM in {:.2} s: {}.",
            self.shutdown.took.as_secs_f64(),
            self.shutdown.status
        );
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    fn fill_table(&self, s: &mut String) {
        let (m, c) = (&self.fill.metrics, &self.fill.clients);
        let _ = writeln!(
            s,
            "### Fill: one request per client at {} req/s\n",
            thousands(self.setup.fill_rate_pps)
        );
        let mut rows = vec![
            (
                "sessions active",
                format!(
                    "{} of {}",
                    thousands(m.sessions_active),
                    thousands(u64::from(self.setup.sessions))
                ),
            ),
            (
                "sessions created / evicted / expired",
                format!(
                    "{} / {} / {}",
                    thousands(m.sessions_created),
                    m.sessions_evicted,
                    m.sessions_expired
                ),
            ),
            ("requests answered", answered(c)),
            ("fill RTT p50 / p99 / p99.9 / max", rtt(c.rtt.as_ref())),
        ];
        rows.extend(self.cost_rows());
        table(s, &rows);
        let _ = writeln!(
            s,
            "Kernel UDP memory is what is charged against net.ipv4.udp_mem; a UDP socket keeps \
             about one page charged once it has received, so it follows the upstream sockets.\n"
        );
    }

    /// What the sessions cost: the readings before and after the fill, and per session.
    fn cost_rows(&self) -> Vec<(&'static str, String)> {
        let (b, a, p) = (&self.baseline, &self.fill.daemon, &self.per_session);
        vec![
            (
                "daemon RSS",
                format!(
                    "{} → {} (**{:.0} B per session**)",
                    kib(b.rss_kib),
                    kib(a.rss_kib),
                    p.rss_bytes
                ),
            ),
            (
                "kernel UDP memory (sockstat)",
                format!(
                    "{} → {} pages (**{:.1} B per session**)",
                    b.udp_mem_pages, a.udp_mem_pages, p.kernel_udp_mem_bytes
                ),
            ),
            (
                "kernel slab, machine-wide",
                format!(
                    "{} → {} ({:.0} B per session, indicative)",
                    kib(b.slab_kib),
                    kib(a.slab_kib),
                    p.slab_bytes
                ),
            ),
            (
                "daemon open fds",
                format!(
                    "{} → {} (**{:.4} per session**)",
                    thousands(b.fds),
                    thousands(a.fds),
                    p.fds
                ),
            ),
            (
                "upstream sockets opened",
                format!(
                    "{} (UDP sockets in namespace {:+})",
                    thousands_signed(p.upstream_sockets),
                    p.udp_sockets_added
                ),
            ),
            ("page size", format!("{} B", self.setup.page_size)),
        ]
    }

    fn throughput_table(&self, s: &mut String, t: &Stage) {
        let c = &t.clients;
        let (m0, m) = (&self.fill.metrics, &t.metrics);
        let how = match self.setup.throughput_rate_pps {
            0 => "as fast as possible".to_owned(),
            r => format!("{} req/s", thousands(r)),
        };
        let _ = writeln!(
            s,
            "### Throughput: all clients for {:.1} s, {how}\n",
            c.elapsed.as_secs_f64()
        );
        let rows = [
            (
                "requests sent",
                format!(
                    "{} (**{} req/s**), {} send errors",
                    thousands(c.sent),
                    thousands(c.requests_per_s as u64),
                    c.send_errors
                ),
            ),
            (
                "replies received",
                format!(
                    "{} (**{} replies/s**)",
                    thousands(c.replies),
                    thousands(c.replies_per_s as u64)
                ),
            ),
            ("loss", format!("{:.3} %", c.loss_percent)),
            ("RTT p50 / p99 / p99.9 / max", rtt(c.rtt.as_ref())),
            (
                "udp-fanout replies relayed",
                format!("+{}", thousands(m.replies.saturating_sub(m0.replies))),
            ),
            ("sessions active after", thousands(m.sessions_active)),
            (
                "sessions created during",
                format!(
                    "+{}",
                    m.sessions_created.saturating_sub(m0.sessions_created)
                ),
            ),
            (
                "listener socket drops",
                format!(
                    "+{}",
                    thousands(m.socket_drops.saturating_sub(m0.socket_drops))
                ),
            ),
            (
                "udp-fanout drops (total)",
                format!("{:?} / replies {:?}", m.dropped, m.replies_dropped),
            ),
            ("daemon RSS after", kib(t.daemon.rss_kib)),
        ];
        table(s, &rows);
        if self.setup.throughput_rate_pps == 0 {
            let _ = writeln!(
                s,
                "Flat out, the RTT includes the queue that builds up before the slowest stage \
                 (on a small machine, often udp-fanout's listener socket buffer); \
                 `--throughput-rate` measures latency at a given load.\n"
            );
        }
    }
}

/// A two-column markdown table and the blank line after it.
fn table(s: &mut String, rows: &[(&str, String)]) {
    let _ = writeln!(s, "| measure | value |\n| --- | --- |");
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s);
}

fn answered(c: &Phase) -> String {
    format!(
        "{} of {} ({:.3} % lost) at {} req/s, {} send errors, {} duplicate and {} invalid \
         replies",
        thousands(c.replies),
        thousands(c.sent),
        c.loss_percent,
        thousands(c.requests_per_s as u64),
        c.send_errors,
        c.reply_duplicates,
        c.reply_invalid
    )
}

fn rtt(l: Option<&LatencySummary>) -> String {
    match l {
        Some(l) => percentiles(l).join(" / "),
        None => "no replies".to_owned(),
    }
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn ip_span(ips: &[IpAddr]) -> String {
    match ips {
        [] => "none".to_owned(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first}-{last} ({} addresses)", ips.len()),
    }
}
