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

use fanout_core::{DropReason, EndpointSnapshot, ListenerSnapshot};
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

    /// Adds the control plane's families (reloads, health probes, fail open).
    pub fn add_control(&mut self, source: crate::control_metrics::ControlSource) {
        self.registry
            .register_collector(Box::new(crate::control_metrics::ControlCollector {
                source,
            }));
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

/// The samples of one metric family: a label set and a value each.
type Samples = Vec<(Labels, u64)>;

fn listener_label(l: &ListenerSnapshot) -> Labels {
    vec![(Cow::Borrowed("listener"), Cow::Owned(l.name.clone()))]
}

fn endpoint_labels(l: &ListenerSnapshot, e: &EndpointSnapshot) -> Labels {
    let mut labels = listener_label(l);
    labels.push((Cow::Borrowed("endpoint"), Cow::Owned(e.addr.to_string())));
    labels
}

fn reason_labels(l: &ListenerSnapshot, r: DropReason) -> Labels {
    let mut labels = listener_label(l);
    labels.push((Cow::Borrowed("reason"), Cow::Borrowed(r.as_str())));
    labels
}

/// What a family has a sample of, and its value.
#[derive(Clone, Copy)]
enum Per {
    /// One sample per listener, labelled `listener`.
    Listener(fn(&ListenerSnapshot) -> u64),
    /// One per listener and drop reason (every reason, zeros included), labelled `listener`
    /// and `reason`.
    Reason(fn(&ListenerSnapshot) -> &[u64; DropReason::COUNT]),
    /// One per downstream that the function has a value for, labelled `listener` and
    /// `endpoint`.
    Endpoint(fn(&EndpointSnapshot) -> Option<u64>),
}

/// One metric family of the exposition.
struct Family {
    /// The name without the `_total` that counters get.
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    per: Per,
    /// Only the listeners that keep sessions have samples.
    sessions_only: bool,
    /// Left out entirely (no HELP or TYPE either) when it has no sample.
    omit_empty: bool,
}

impl Family {
    const fn counter(name: &'static str, help: &'static str, per: Per) -> Family {
        Family {
            name,
            help,
            kind: MetricType::Counter,
            per,
            sessions_only: false,
            omit_empty: false,
        }
    }

    const fn gauge(name: &'static str, help: &'static str, per: Per) -> Family {
        Family {
            kind: MetricType::Gauge,
            ..Family::counter(name, help, per)
        }
    }

    const fn sessions_only(self) -> Family {
        Family {
            sessions_only: true,
            ..self
        }
    }

    const fn omit_empty(self) -> Family {
        Family {
            omit_empty: true,
            ..self
        }
    }

    fn samples(&self, snaps: &[ListenerSnapshot]) -> Samples {
        let listeners = snaps
            .iter()
            .filter(|l| !self.sessions_only || l.sessions_active.is_some());
        match self.per {
            Per::Listener(value) => listeners.map(|l| (listener_label(l), value(l))).collect(),
            Per::Reason(counts) => listeners
                .flat_map(|l| {
                    DropReason::ALL
                        .iter()
                        .map(move |&r| (reason_labels(l, r), counts(l)[r.index()]))
                })
                .collect(),
            Per::Endpoint(value) => listeners
                .flat_map(|l| {
                    l.downstreams
                        .iter()
                        .filter_map(move |e| value(e).map(|v| (endpoint_labels(l, e), v)))
                })
                .collect(),
        }
    }

    /// Writes the descriptor followed by one sample per label set.
    fn encode(&self, enc: &mut DescriptorEncoder<'_>, samples: &Samples) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in samples {
            let fam = m.encode_family(labels)?;
            match self.kind {
                MetricType::Gauge => {
                    ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(fam)?
                }
                _ => ConstCounter::new(*v).encode(fam)?,
            }
        }
        Ok(())
    }
}

/// Every family, in the fixed order of the exposition: the client path, the downstreams, the
/// sessions, the reply path, the sockets.
const FAMILIES: &[Family] = &[
    // Datagrams and bytes from clients, and what became of them.
    Family::counter(
        "udp_fanout_packets_received",
        "Datagrams received from clients.",
        Per::Listener(|l| l.received),
    ),
    Family::counter(
        "udp_fanout_packets_forwarded",
        "Datagrams sent to downstreams (a mirrored datagram counts once per copy).",
        Per::Listener(|l| l.forwarded),
    ),
    Family::counter(
        "udp_fanout_packets_dropped",
        "Datagrams (or copies) dropped, by reason.",
        Per::Reason(|l| &l.dropped),
    ),
    Family::counter(
        "udp_fanout_bytes_received",
        "Payload bytes received from clients.",
        Per::Listener(|l| l.bytes_received),
    ),
    Family::counter(
        "udp_fanout_bytes_forwarded",
        "Payload bytes sent to downstreams.",
        Per::Listener(|l| l.bytes_forwarded),
    ),
    // Per-downstream traffic, how many downstreams take flows, and health where it is checked
    // (the health family is left out entirely when no downstream has a health check).
    Family::counter(
        "udp_fanout_downstream_packets",
        "Datagrams sent to each downstream.",
        Per::Endpoint(|e| Some(e.packets)),
    ),
    Family::counter(
        "udp_fanout_downstream_bytes",
        "Payload bytes sent to each downstream.",
        Per::Endpoint(|e| Some(e.bytes)),
    ),
    Family::gauge(
        "udp_fanout_downstream_active",
        "Downstreams currently taking new flows.",
        Per::Listener(|l| l.downstream_active),
    ),
    Family::gauge(
        "udp_fanout_downstream_health",
        "1 if the downstream passes its health check.",
        Per::Endpoint(|e| e.healthy.map(u64::from)),
    )
    .omit_empty(),
    // Session counts of the listeners that keep sessions; nothing at all when none does.
    Family::gauge(
        "udp_fanout_sessions_active",
        "Live client sessions.",
        Per::Listener(|l| l.sessions_active.unwrap_or(0)),
    )
    .sessions_only()
    .omit_empty(),
    Family::counter(
        "udp_fanout_sessions_created",
        "Client sessions created.",
        Per::Listener(|l| l.sessions.created),
    )
    .sessions_only()
    .omit_empty(),
    Family::counter(
        "udp_fanout_sessions_expired",
        "Sessions ended by their idle timeout.",
        Per::Listener(|l| l.sessions.expired),
    )
    .sessions_only()
    .omit_empty(),
    Family::counter(
        "udp_fanout_sessions_evicted",
        "Sessions evicted (least recently used) from a full table.",
        Per::Listener(|l| l.sessions.evicted),
    )
    .sessions_only()
    .omit_empty(),
    Family::counter(
        "udp_fanout_sessions_repinned",
        "Sessions moved to another downstream because theirs left the set.",
        Per::Listener(|l| l.sessions.repinned),
    )
    .sessions_only()
    .omit_empty(),
    // Replies from downstreams back to clients. The reply counts are exported for every
    // listener (zero without sessions), the reply drops only for listeners that keep sessions.
    Family::counter(
        "udp_fanout_replies",
        "Replies relayed from downstreams to clients.",
        Per::Listener(|l| l.replies),
    ),
    Family::counter(
        "udp_fanout_replies_received",
        "Datagrams received from downstreams on the reply path.",
        Per::Listener(|l| l.replies_received),
    ),
    Family::counter(
        "udp_fanout_replies_dropped",
        "Reply-path datagrams dropped, by reason.",
        Per::Reason(|l| &l.replies_dropped),
    )
    .sessions_only(),
    Family::counter(
        "udp_fanout_socket_drops",
        "Datagrams the kernel dropped because a listener socket's receive buffer was full (never seen by udp-fanout).",
        Per::Listener(|l| l.socket_drops),
    ),
];

impl Collector for ListenerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps = (self.source)();
        for f in FAMILIES {
            let samples = f.samples(&snaps);
            if !(f.omit_empty && samples.is_empty()) {
                f.encode(&mut enc, &samples)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                sessions: None,
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

    /// Two listeners: one with sessions and health-checked downstreams (IPv4 and IPv6), one
    /// with neither.
    fn two_listeners() -> Vec<ListenerSnapshot> {
        let mut dns = ListenerSnapshot {
            name: "dns".into(),
            received: 7,
            bytes_received: 700,
            forwarded: 14,
            bytes_forwarded: 1400,
            downstreams: vec![
                EndpointSnapshot {
                    addr: "10.0.0.1:53".parse().unwrap(),
                    packets: 8,
                    bytes: 800,
                    healthy: Some(true),
                    sessions: None,
                },
                EndpointSnapshot {
                    addr: "[2001:db8::2]:53".parse().unwrap(),
                    packets: 6,
                    bytes: 600,
                    healthy: Some(false),
                    sessions: None,
                },
            ],
            downstream_active: 2,
            sessions_active: Some(3),
            replies: 5,
            replies_received: 6,
            socket_drops: 2,
            ..Default::default()
        };
        dns.sessions.created = 4;
        dns.sessions.expired = 1;
        dns.sessions.evicted = 2;
        dns.sessions.repinned = 3;
        dns.dropped[DropReason::SendError.index()] = 2;
        dns.replies_dropped[DropReason::UnknownSource.index()] = 1;
        vec![dns, snap()]
    }

    /// The whole exposition, byte for byte: family order, label order, which families are
    /// left out, HELP texts. Dashboards and the end-to-end tests depend on all of it.
    #[test]
    fn renders_exactly_the_contract() {
        let e = Exporter::new(Arc::new(two_listeners));
        assert_eq!(e.render(), FULL);
    }

    #[test]
    fn renders_only_descriptors_without_listeners() {
        let e = Exporter::new(Arc::new(Vec::new));
        assert_eq!(e.render(), EMPTY);
    }

    const FULL: &str = r##"# HELP udp_fanout_packets_received Datagrams received from clients.
# TYPE udp_fanout_packets_received counter
udp_fanout_packets_received_total{listener="dns"} 7
udp_fanout_packets_received_total{listener="syslog"} 10
# HELP udp_fanout_packets_forwarded Datagrams sent to downstreams (a mirrored datagram counts once per copy).
# TYPE udp_fanout_packets_forwarded counter
udp_fanout_packets_forwarded_total{listener="dns"} 14
udp_fanout_packets_forwarded_total{listener="syslog"} 9
# HELP udp_fanout_packets_dropped Datagrams (or copies) dropped, by reason.
# TYPE udp_fanout_packets_dropped counter
udp_fanout_packets_dropped_total{listener="dns",reason="no_downstream"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="send_error"} 2
udp_fanout_packets_dropped_total{listener="dns",reason="buffer_full"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="truncated"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="malformed"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="unknown_source"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="no_session"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="too_large"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="shadow_reply"} 0
udp_fanout_packets_dropped_total{listener="dns",reason="no_upstream_port"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="no_downstream"} 1
udp_fanout_packets_dropped_total{listener="syslog",reason="send_error"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="buffer_full"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="truncated"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="malformed"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="unknown_source"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="no_session"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="too_large"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="shadow_reply"} 0
udp_fanout_packets_dropped_total{listener="syslog",reason="no_upstream_port"} 0
# HELP udp_fanout_bytes_received Payload bytes received from clients.
# TYPE udp_fanout_bytes_received counter
udp_fanout_bytes_received_total{listener="dns"} 700
udp_fanout_bytes_received_total{listener="syslog"} 1000
# HELP udp_fanout_bytes_forwarded Payload bytes sent to downstreams.
# TYPE udp_fanout_bytes_forwarded counter
udp_fanout_bytes_forwarded_total{listener="dns"} 1400
udp_fanout_bytes_forwarded_total{listener="syslog"} 900
# HELP udp_fanout_downstream_packets Datagrams sent to each downstream.
# TYPE udp_fanout_downstream_packets counter
udp_fanout_downstream_packets_total{listener="dns",endpoint="10.0.0.1:53"} 8
udp_fanout_downstream_packets_total{listener="dns",endpoint="[2001:db8::2]:53"} 6
udp_fanout_downstream_packets_total{listener="syslog",endpoint="127.0.0.1:6001"} 9
# HELP udp_fanout_downstream_bytes Payload bytes sent to each downstream.
# TYPE udp_fanout_downstream_bytes counter
udp_fanout_downstream_bytes_total{listener="dns",endpoint="10.0.0.1:53"} 800
udp_fanout_downstream_bytes_total{listener="dns",endpoint="[2001:db8::2]:53"} 600
udp_fanout_downstream_bytes_total{listener="syslog",endpoint="127.0.0.1:6001"} 900
# HELP udp_fanout_downstream_active Downstreams currently taking new flows.
# TYPE udp_fanout_downstream_active gauge
udp_fanout_downstream_active{listener="dns"} 2
udp_fanout_downstream_active{listener="syslog"} 1
# HELP udp_fanout_downstream_health 1 if the downstream passes its health check.
# TYPE udp_fanout_downstream_health gauge
udp_fanout_downstream_health{listener="dns",endpoint="10.0.0.1:53"} 1
udp_fanout_downstream_health{listener="dns",endpoint="[2001:db8::2]:53"} 0
# HELP udp_fanout_sessions_active Live client sessions.
# TYPE udp_fanout_sessions_active gauge
udp_fanout_sessions_active{listener="dns"} 3
# HELP udp_fanout_sessions_created Client sessions created.
# TYPE udp_fanout_sessions_created counter
udp_fanout_sessions_created_total{listener="dns"} 4
# HELP udp_fanout_sessions_expired Sessions ended by their idle timeout.
# TYPE udp_fanout_sessions_expired counter
udp_fanout_sessions_expired_total{listener="dns"} 1
# HELP udp_fanout_sessions_evicted Sessions evicted (least recently used) from a full table.
# TYPE udp_fanout_sessions_evicted counter
udp_fanout_sessions_evicted_total{listener="dns"} 2
# HELP udp_fanout_sessions_repinned Sessions moved to another downstream because theirs left the set.
# TYPE udp_fanout_sessions_repinned counter
udp_fanout_sessions_repinned_total{listener="dns"} 3
# HELP udp_fanout_replies Replies relayed from downstreams to clients.
# TYPE udp_fanout_replies counter
udp_fanout_replies_total{listener="dns"} 5
udp_fanout_replies_total{listener="syslog"} 0
# HELP udp_fanout_replies_received Datagrams received from downstreams on the reply path.
# TYPE udp_fanout_replies_received counter
udp_fanout_replies_received_total{listener="dns"} 6
udp_fanout_replies_received_total{listener="syslog"} 0
# HELP udp_fanout_replies_dropped Reply-path datagrams dropped, by reason.
# TYPE udp_fanout_replies_dropped counter
udp_fanout_replies_dropped_total{listener="dns",reason="no_downstream"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="send_error"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="buffer_full"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="truncated"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="malformed"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="unknown_source"} 1
udp_fanout_replies_dropped_total{listener="dns",reason="no_session"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="too_large"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="shadow_reply"} 0
udp_fanout_replies_dropped_total{listener="dns",reason="no_upstream_port"} 0
# HELP udp_fanout_socket_drops Datagrams the kernel dropped because a listener socket's receive buffer was full (never seen by udp-fanout).
# TYPE udp_fanout_socket_drops counter
udp_fanout_socket_drops_total{listener="dns"} 2
udp_fanout_socket_drops_total{listener="syslog"} 0
# EOF
"##;

    const EMPTY: &str = r##"# HELP udp_fanout_packets_received Datagrams received from clients.
# TYPE udp_fanout_packets_received counter
# HELP udp_fanout_packets_forwarded Datagrams sent to downstreams (a mirrored datagram counts once per copy).
# TYPE udp_fanout_packets_forwarded counter
# HELP udp_fanout_packets_dropped Datagrams (or copies) dropped, by reason.
# TYPE udp_fanout_packets_dropped counter
# HELP udp_fanout_bytes_received Payload bytes received from clients.
# TYPE udp_fanout_bytes_received counter
# HELP udp_fanout_bytes_forwarded Payload bytes sent to downstreams.
# TYPE udp_fanout_bytes_forwarded counter
# HELP udp_fanout_downstream_packets Datagrams sent to each downstream.
# TYPE udp_fanout_downstream_packets counter
# HELP udp_fanout_downstream_bytes Payload bytes sent to each downstream.
# TYPE udp_fanout_downstream_bytes counter
# HELP udp_fanout_downstream_active Downstreams currently taking new flows.
# TYPE udp_fanout_downstream_active gauge
# HELP udp_fanout_replies Replies relayed from downstreams to clients.
# TYPE udp_fanout_replies counter
# HELP udp_fanout_replies_received Datagrams received from downstreams on the reply path.
# TYPE udp_fanout_replies_received counter
# HELP udp_fanout_replies_dropped Reply-path datagrams dropped, by reason.
# TYPE udp_fanout_replies_dropped counter
# HELP udp_fanout_socket_drops Datagrams the kernel dropped because a listener socket's receive buffer was full (never seen by udp-fanout).
# TYPE udp_fanout_socket_drops counter
# EOF
"##;
}
