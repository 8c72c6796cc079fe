//! One measurement's numbers, computed from what the generator sent and the sinks saw.
//!
//! Loss is counted by the verifying sink for each copy a datagram should produce: for a
//! balancer, over the sinks together (each datagram should reach exactly one); for a mirror,
//! at every sink separately (each should get every datagram); for request/response, by the
//! generator's count of replies. The sink's view (sequence gaps and the missing tail of each
//! flow) and the generator's (sent minus received) are both kept, so that the quick mode can
//! check that the two sets of books agree.
//!
//! Only the measurement's own stream is counted: a datagram of an earlier measurement that
//! arrives late is neither loss nor gain here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::scenario::{Shape, Spec};
use crate::generator::GenReport;
use crate::sink::SinkReport;
use crate::stats::{FlowStats, Latency, LatencySummary};
use fanout_testkit::prom::Scrape;

/// The highest loss that still counts as lossless: 0.1 %.
pub const LOSSLESS: f64 = 0.001;

/// One copy's account: what should have arrived, what did, and what the sink says is
/// missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CopyCount {
    /// Distinct datagrams of the stream received.
    pub received: u64,
    /// `sent - received`, from the generator's count.
    pub lost: u64,
    /// What the sink's sequence numbers say is missing (gaps and tails), less the
    /// datagrams the generator failed to send.
    pub lost_by_sink: i64,
    /// Datagrams with sequence numbers the generator never sent (must be 0).
    pub beyond_sent: u64,
    /// Datagrams received more than once.
    pub duplicates: u64,
}

/// What should never happen to a datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Anomalies {
    /// Changed, cut short or padded datagrams.
    pub corrupt: u64,
    /// Cut short by the sink's receive slot.
    pub truncated: u64,
    /// Shorter than a header (the generator sends none).
    pub short: u64,
    /// Not bench datagrams at all.
    pub not_ours: u64,
    /// Replies that were corrupt, foreign or on the wrong socket.
    pub reply_invalid: u64,
    /// Replies received twice.
    pub reply_duplicates: u64,
    /// Direct mirror: copies the generator could not send.
    pub copy_send_errors: u64,
}

/// The proxy's processes over the measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcCost {
    /// CPU seconds used (none without processes).
    pub cpu_seconds: Option<f64>,
    /// Summed peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// udp-fanout's own counters (differences over a measurement).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FanoutCounters {
    /// Datagrams read from clients.
    pub received: u64,
    /// Copies sent on.
    pub forwarded: u64,
    /// Copies dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Datagrams the kernel dropped at the listener sockets.
    pub socket_drops: u64,
    /// Replies relayed to clients.
    pub replies: u64,
    /// Reply-path datagrams from downstreams.
    pub replies_received: u64,
}

impl FanoutCounters {
    /// The counters of listener `bench` in a scrape.
    pub(crate) fn parse(s: &Scrape<'_>) -> Self {
        let l = [("listener", "bench")];
        let get = |name: &str| s.get(name, &l).unwrap_or(0);
        FanoutCounters {
            received: get("udp_fanout_packets_received_total"),
            forwarded: get("udp_fanout_packets_forwarded_total"),
            dropped: s.nonzero_by("udp_fanout_packets_dropped_total", &l, "reason"),
            socket_drops: get("udp_fanout_socket_drops_total"),
            replies: get("udp_fanout_replies_total"),
            replies_received: get("udp_fanout_replies_received_total"),
        }
    }

    /// `self - earlier`.
    pub(crate) fn minus(&self, earlier: &FanoutCounters) -> FanoutCounters {
        let mut dropped = self.dropped.clone();
        for (k, v) in &earlier.dropped {
            if let Some(d) = dropped.get_mut(k) {
                *d = d.saturating_sub(*v);
            }
        }
        dropped.retain(|_, v| *v > 0);
        FanoutCounters {
            received: self.received.saturating_sub(earlier.received),
            forwarded: self.forwarded.saturating_sub(earlier.forwarded),
            dropped,
            socket_drops: self.socket_drops.saturating_sub(earlier.socket_drops),
            replies: self.replies.saturating_sub(earlier.replies),
            replies_received: self
                .replies_received
                .saturating_sub(earlier.replies_received),
        }
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// One measurement at one offered rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Point {
    /// Offered datagrams (requests) per second.
    pub rate: u64,
    /// What the generator achieved.
    pub achieved_pps: f64,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams the generator could not send.
    pub send_errors: u64,
    /// One account per copy (per sink for a mirror, the sinks together otherwise).
    pub copies: Vec<CopyCount>,
    /// Request/response: distinct replies.
    pub replies: Option<u64>,
    /// The worst copy's loss (or the missing replies), as a fraction of `sent`.
    pub loss: f64,
    /// Distinct datagrams per sink.
    pub split: Vec<u64>,
    /// What should never happen.
    pub anomalies: Anomalies,
    /// One-way latency (round trip for request/response).
    pub latency: Option<LatencySummary>,
    /// The proxy's processes.
    pub cost: ProcCost,
    /// Datagrams the kernel dropped at the sinks' sockets.
    pub sink_kernel_drops: u64,
    /// Host-wide UDP receive-buffer drops (`/proc/net/snmp`), loopback peers only.
    pub rcvbuf_errors: Option<u64>,
    /// udp-fanout's counters.
    pub fanout: Option<FanoutCounters>,
    /// CPU seconds spent during the measurement by processes that are neither the bench
    /// nor the peer, and stolen by the hypervisor: other work on the machine or the host.
    pub foreign_cpu: Option<f64>,
    /// Wall time of the measurement, drain included.
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub elapsed: Duration,
}

/// Foreign CPU use above this share of one core makes a measurement disturbed.
pub const DISTURBED: f64 = 0.10;

impl Point {
    /// Whether other work on the machine took more than [`DISTURBED`] of a core while this
    /// ran.
    pub fn disturbed(&self) -> bool {
        let secs = self.elapsed.as_secs_f64();
        self.foreign_cpu
            .is_some_and(|f| secs > 0.0 && f / secs > DISTURBED)
    }

    /// Below [`LOSSLESS`] and at (nearly) the offered rate: the generator not keeping up is a
    /// failure too, since the rate was then not really offered.
    pub fn lossless(&self) -> bool {
        self.loss < LOSSLESS && self.achieved_pps >= self.rate as f64 * 0.97 && self.sent > 0
    }
}

/// Builds a point from the two reports.
pub(crate) fn point(
    spec: &Spec,
    rate: u64,
    g: &GenReport,
    r: &SinkReport,
    cost: ProcCost,
    elapsed: Duration,
) -> Point {
    let stream = g.stream_id;
    let ours = |flows: &[FlowStats]| -> Vec<FlowStats> {
        flows
            .iter()
            .filter(|f| f.stream == stream)
            .cloned()
            .collect()
    };
    let copies: Vec<CopyCount> = match spec.shape {
        Shape::Mirror => r
            .ports
            .iter()
            .map(|p| copy_count(g, &ours(&p.flows)))
            .collect(),
        Shape::Balance | Shape::RequestReply => vec![copy_count(g, &ours(&r.flows))],
    };
    let split = r
        .ports
        .iter()
        .map(|p| ours(&p.flows).iter().map(|f| f.unique).sum())
        .collect();
    let replies = (spec.shape == Shape::RequestReply).then_some(g.replies_received);
    let loss_of = |lost: u64| {
        if g.sent == 0 {
            1.0
        } else {
            lost as f64 / g.sent as f64
        }
    };
    let loss = match replies {
        Some(n) => loss_of(g.sent.saturating_sub(n)),
        None => copies.iter().map(|c| loss_of(c.lost)).fold(0.0, f64::max),
    };
    let latency = match spec.shape {
        Shape::RequestReply => g.reply_latency,
        Shape::Balance | Shape::Mirror => {
            let mut all = Latency::new(3);
            r.ports.iter().for_each(|p| all.merge(&p.latency_histogram));
            all.summary()
        }
    };
    let sum = |f: fn(&crate::sink::PortReport) -> u64| r.ports.iter().map(f).sum::<u64>();
    Point {
        rate,
        achieved_pps: g.rate_pps,
        sent: g.sent,
        send_errors: g.send_errors,
        copies,
        replies,
        loss,
        split,
        anomalies: Anomalies {
            corrupt: sum(|p| p.corrupt),
            truncated: sum(|p| p.truncated),
            short: sum(|p| p.short),
            not_ours: sum(|p| p.not_ours),
            reply_invalid: g.reply_invalid,
            reply_duplicates: g.reply_duplicates,
            copy_send_errors: g.copy_send_errors,
        },
        latency,
        cost,
        sink_kernel_drops: 0,
        rcvbuf_errors: None,
        fanout: None,
        foreign_cpu: None,
        elapsed,
    }
}

/// One copy's account over the flows of the stream (as the sink saw them, for one port or
/// all together).
fn copy_count(g: &GenReport, flows: &[FlowStats]) -> CopyCount {
    let mut c = CopyCount::default();
    let mut by_sink: i64 = 0;
    for f in &g.per_flow {
        // Every sequence number the flow used, sent or failed.
        let used = f.sent + f.send_errors;
        let seen = flows.iter().find(|s| s.flow == f.flow);
        let (unique, dups, top) = seen.map_or((0, 0, 0), |s| {
            (s.unique, s.duplicates, s.highest_seq.map_or(0, |h| h + 1))
        });
        c.received += unique;
        c.duplicates += dups;
        c.beyond_sent += top.saturating_sub(used);
        let gaps = top.saturating_sub(unique);
        let tail = used.saturating_sub(top);
        by_sink += (gaps + tail) as i64 - f.send_errors as i64;
    }
    c.lost = g.sent.saturating_sub(c.received);
    c.lost_by_sink = by_sink;
    c
}

/// The host's `Udp: RcvbufErrors` (receive-buffer drops on every UDP socket of the bench's
/// namespace).
pub(crate) fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|w| w == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(flow: u32, unique: u64, highest: Option<u64>) -> FlowStats {
        FlowStats {
            stream: 7,
            flow,
            unique,
            duplicates: 0,
            reordered: 0,
            lost: 0,
            late: 0,
            highest_seq: highest,
            bytes: 0,
            min_size: 0,
            max_size: 0,
            latency: None,
        }
    }

    fn gen_report(per_flow: &[(u64, u64)]) -> GenReport {
        let r = crate::generator::GenConfig::new("127.0.0.1:9".parse().unwrap());
        let mut g = crate::generator::run(
            &crate::generator::GenConfig {
                count: Some(0),
                ..r
            },
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        g.stream_id = 7;
        g.per_flow = per_flow
            .iter()
            .enumerate()
            .map(|(i, &(sent, errors))| crate::generator::FlowReport {
                flow: i as u32,
                local_addr: "127.0.0.1:1".parse().unwrap(),
                sent,
                send_errors: errors,
                bytes_sent: 0,
                replies: 0,
            })
            .collect();
        g.sent = per_flow.iter().map(|f| f.0).sum();
        g
    }

    #[test]
    fn both_books_agree_on_loss_with_gaps_tails_and_send_errors() {
        // Flow 0: 10 sent, 8 arrived (a gap and a lost tail). Flow 1: 10 sent + 2 failed
        // sends (gaps the sink sees), all 10 arrived. Flow 2: nothing arrived.
        let g = gen_report(&[(10, 0), (10, 2), (5, 0)]);
        let flows = [flow(0, 8, Some(8)), flow(1, 10, Some(11))];
        let c = copy_count(&g, &flows);
        assert_eq!((c.received, c.lost, c.beyond_sent), (18, 7, 0));
        assert_eq!(c.lost_by_sink, 7);
        let c = copy_count(&g, &[flow(0, 11, Some(10))]);
        assert_eq!(c.beyond_sent, 1);
    }

    #[test]
    fn counters_subtract_and_rcvbuf_errors_are_readable() {
        let a = FanoutCounters {
            received: 10,
            dropped: [("buffer_full".to_owned(), 2)].into(),
            ..FanoutCounters::default()
        };
        let b = FanoutCounters {
            received: 25,
            dropped: [("buffer_full".to_owned(), 5), ("send_error".to_owned(), 1)].into(),
            ..FanoutCounters::default()
        };
        let d = b.minus(&a);
        assert_eq!((d.received, d.dropped_total()), (15, 4));
        assert!(udp_rcvbuf_errors().is_some());
    }
}
