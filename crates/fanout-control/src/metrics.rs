//! Turns the data planes' counter snapshots into Prometheus metrics.
//!
//! The data planes keep their own lock-free counters (per-worker slots in userspace, per-CPU
//! maps in the kernel); this module does not mirror them into a metrics library's counters on
//! the hot path. Instead a `prometheus-client` [`Collector`] asks for a fresh
//! [`ListenerSnapshot`] of every listener at scrape time and encodes it, so the cost of metrics
//! is paid by the scraper, not by the datagrams.
//!
//! Every `reason` value of `udp_fanout_packets_dropped_total` is always exported (zeros
//! included), so alerts and `rate()` work from the first scrape.

use std::borrow::Cow;
use std::sync::Arc;

use fanout_core::{DropReason, ListenerSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Produces the current snapshot of every listener.
pub type SnapshotSource = Arc<dyn Fn() -> Vec<ListenerSnapshot> + Send + Sync>;

/// The exporter: a registry with the udp-fanout collector in it.
pub struct Exporter {
    registry: Registry,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter reading snapshots from `source`.
    pub fn new(source: SnapshotSource) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ListenerCollector { source }));
        Exporter { registry }
    }

    /// The metrics in the text exposition format (OpenMetrics 1.0, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The content type of [`render`](Self::render)'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

struct ListenerCollector {
    source: SnapshotSource,
}

impl std::fmt::Debug for ListenerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCollector").finish_non_exhaustive()
    }
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn listener_label(l: &ListenerSnapshot) -> Labels {
    vec![(Cow::Borrowed("listener"), Cow::Owned(l.name.clone()))]
}

/// Writes one metric family: a descriptor followed by one sample per label set.
fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let fam = m.encode_family(labels)?;
        match kind {
            MetricType::Gauge => {
                ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(fam)?
            }
            _ => ConstCounter::new(*v).encode(fam)?,
        }
    }
    Ok(())
}

impl Collector for ListenerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps = (self.source)();
        let per = |f: fn(&ListenerSnapshot) -> u64| -> Vec<(Labels, u64)> {
            snaps.iter().map(|l| (listener_label(l), f(l))).collect()
        };
        let c = MetricType::Counter;
        let g = MetricType::Gauge;
        family(
            &mut enc,
            "udp_fanout_packets_received",
            "Datagrams received from clients.",
            c,
            &per(|l| l.received),
        )?;
        family(
            &mut enc,
            "udp_fanout_packets_forwarded",
            "Datagrams sent to downstreams (a mirrored datagram counts once per copy).",
            c,
            &per(|l| l.forwarded),
        )?;
        let dropped: Vec<(Labels, u64)> = snaps
            .iter()
            .flat_map(|l| {
                DropReason::ALL.iter().map(move |r| {
                    let mut labels = listener_label(l);
                    labels.push((Cow::Borrowed("reason"), Cow::Borrowed(r.as_str())));
                    (labels, l.dropped[r.index()])
                })
            })
            .collect();
        family(
            &mut enc,
            "udp_fanout_packets_dropped",
            "Datagrams (or copies) dropped, by reason.",
            c,
            &dropped,
        )?;
        family(
            &mut enc,
            "udp_fanout_bytes_received",
            "Payload bytes received from clients.",
            c,
            &per(|l| l.bytes_received),
        )?;
        family(
            &mut enc,
            "udp_fanout_bytes_forwarded",
            "Payload bytes sent to downstreams.",
            c,
            &per(|l| l.bytes_forwarded),
        )?;
        let endpoint = |l: &ListenerSnapshot, e: &fanout_core::EndpointSnapshot| {
            let mut labels = listener_label(l);
            labels.push((Cow::Borrowed("endpoint"), Cow::Owned(e.addr.to_string())));
            labels
        };
        let ep_packets: Vec<(Labels, u64)> = snaps
            .iter()
            .flat_map(|l| {
                l.downstreams
                    .iter()
                    .map(move |e| (endpoint(l, e), e.packets))
            })
            .collect();
        family(
            &mut enc,
            "udp_fanout_downstream_packets",
            "Datagrams sent to each downstream.",
            c,
            &ep_packets,
        )?;
        let ep_bytes: Vec<(Labels, u64)> = snaps
            .iter()
            .flat_map(|l| l.downstreams.iter().map(move |e| (endpoint(l, e), e.bytes)))
            .collect();
        family(
            &mut enc,
            "udp_fanout_downstream_bytes",
            "Payload bytes sent to each downstream.",
            c,
            &ep_bytes,
        )?;
        family(
            &mut enc,
            "udp_fanout_downstream_active",
            "Downstreams currently taking new flows.",
            g,
            &per(|l| l.downstream_active),
        )?;
        let health: Vec<(Labels, u64)> = snaps
            .iter()
            .flat_map(|l| {
                l.downstreams
                    .iter()
                    .filter_map(move |e| e.healthy.map(|h| (endpoint(l, e), u64::from(h))))
            })
            .collect();
        if !health.is_empty() {
            family(
                &mut enc,
                "udp_fanout_downstream_health",
                "1 if the downstream passes its health check.",
                g,
                &health,
            )?;
        }
        let with_sessions: Vec<&ListenerSnapshot> = snaps
            .iter()
            .filter(|l| l.sessions_active.is_some())
            .collect();
        if !with_sessions.is_empty() {
            let per_s = |f: fn(&ListenerSnapshot) -> u64| -> Vec<(Labels, u64)> {
                with_sessions
                    .iter()
                    .map(|l| (listener_label(l), f(l)))
                    .collect()
            };
            family(
                &mut enc,
                "udp_fanout_sessions_active",
                "Live client sessions.",
                g,
                &per_s(|l| l.sessions_active.unwrap_or(0)),
            )?;
            family(
                &mut enc,
                "udp_fanout_sessions_created",
                "Client sessions created.",
                c,
                &per_s(|l| l.sessions.created),
            )?;
            family(
                &mut enc,
                "udp_fanout_sessions_expired",
                "Sessions ended by their idle timeout.",
                c,
                &per_s(|l| l.sessions.expired),
            )?;
            family(
                &mut enc,
                "udp_fanout_sessions_evicted",
                "Sessions evicted (least recently used) from a full table.",
                c,
                &per_s(|l| l.sessions.evicted),
            )?;
            family(
                &mut enc,
                "udp_fanout_sessions_repinned",
                "Sessions moved to another downstream because theirs left the set.",
                c,
                &per_s(|l| l.sessions.repinned),
            )?;
        }
        family(
            &mut enc,
            "udp_fanout_replies",
            "Replies relayed from downstreams to clients.",
            c,
            &per(|l| l.replies),
        )?;
        family(
            &mut enc,
            "udp_fanout_replies_received",
            "Datagrams received from downstreams on the reply path.",
            c,
            &per(|l| l.replies_received),
        )?;
        let reply_dropped: Vec<(Labels, u64)> = snaps
            .iter()
            .filter(|l| l.sessions_active.is_some())
            .flat_map(|l| {
                DropReason::ALL.iter().map(move |r| {
                    let mut labels = listener_label(l);
                    labels.push((Cow::Borrowed("reason"), Cow::Borrowed(r.as_str())));
                    (labels, l.replies_dropped[r.index()])
                })
            })
            .collect();
        family(
            &mut enc,
            "udp_fanout_replies_dropped",
            "Reply-path datagrams dropped, by reason.",
            c,
            &reply_dropped,
        )?;
        family(
            &mut enc,
            "udp_fanout_socket_drops",
            "Datagrams the kernel dropped because a listener socket's receive buffer was full (never seen by udp-fanout).",
            c,
            &per(|l| l.socket_drops),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_core::EndpointSnapshot;

    fn snap() -> ListenerSnapshot {
        let mut s = ListenerSnapshot {
            name: "syslog".into(),
            received: 10,
            bytes_received: 1000,
            forwarded: 9,
            bytes_forwarded: 900,
            downstreams: vec![EndpointSnapshot {
                addr: "127.0.0.1:6001".parse().unwrap(),
                packets: 9,
                bytes: 900,
                healthy: None,
            }],
            downstream_active: 1,
            ..Default::default()
        };
        s.dropped[DropReason::NoDownstream.index()] = 1;
        s
    }

    #[test]
    fn renders_the_contract_names() {
        let e = Exporter::new(Arc::new(|| vec![snap()]));
        let text = e.render();
        for line in [
            r#"udp_fanout_packets_received_total{listener="syslog"} 10"#,
            r#"udp_fanout_packets_forwarded_total{listener="syslog"} 9"#,
            r#"udp_fanout_packets_dropped_total{listener="syslog",reason="no_downstream"} 1"#,
            r#"udp_fanout_packets_dropped_total{listener="syslog",reason="send_error"} 0"#,
            r#"udp_fanout_bytes_received_total{listener="syslog"} 1000"#,
            r#"udp_fanout_bytes_forwarded_total{listener="syslog"} 900"#,
            r#"udp_fanout_downstream_packets_total{listener="syslog",endpoint="127.0.0.1:6001"} 9"#,
            r#"udp_fanout_downstream_active{listener="syslog"} 1"#,
            r#"udp_fanout_replies_total{listener="syslog"} 0"#,
            "# TYPE udp_fanout_packets_received counter",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("udp_fanout_sessions_active"),
            "no sessions, no series"
        );
        assert!(
            !text.contains("udp_fanout_downstream_health"),
            "no health checks, no series"
        );
    }
}
