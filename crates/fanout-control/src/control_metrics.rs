//! The control plane's own metrics: reloads, health probes, fail-open listeners and
//! Kubernetes discovery.
//!
//! Kept apart from the data planes' families ([`crate::metrics`]) because their source is the
//! control plane's state, not the planes' counters; like those, they are read at scrape time
//! from a [`ControlSource`], so nothing is mirrored into a metrics library ahead of time.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::reload::ReloadCounts;

/// Probes of one downstream so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCount {
    /// The listener.
    pub listener: String,
    /// The downstream.
    pub addr: SocketAddr,
    /// Probes that passed.
    pub success: u64,
    /// Probes that failed.
    pub failure: u64,
}

/// What the control plane reports at a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Reloads so far.
    pub reloads: ReloadCounts,
    /// Each listener and whether it fails open (no healthy downstream).
    pub panic: Vec<(String, bool)>,
    /// Health probes per downstream (only downstreams that are checked).
    pub probes: Vec<ProbeCount>,
    /// Each listener with `kubernetes:` and whether its watch has listed since its last
    /// error (`udp_fanout_discovery_up`).
    pub discovery: Vec<(String, bool)>,
}

/// Produces the current [`ControlStats`].
pub type ControlSource = Arc<dyn Fn() -> ControlStats + Send + Sync>;

/// The collector of the control plane's families.
pub(crate) struct ControlCollector {
    pub(crate) source: ControlSource,
}

impl std::fmt::Debug for ControlCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCollector").finish_non_exhaustive()
    }
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn label(k: &'static str, v: String) -> (Cow<'static, str>, Cow<'static, str>) {
    (Cow::Borrowed(k), Cow::Owned(v))
}

fn family<V: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ControlCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = (self.source)();
        family(
            &mut enc,
            "udp_fanout_config_reloads",
            "Configuration reloads, by result (an error changed nothing).",
            MetricType::Counter,
            [
                (
                    vec![label("result", "success".into())],
                    ConstCounter::new(s.reloads.success),
                ),
                (
                    vec![label("result", "error".into())],
                    ConstCounter::new(s.reloads.error),
                ),
            ],
        )?;
        // A single sample without labels: encoded on the descriptor itself, so the line
        // reads `name 1`, not `name{} 1`.
        ConstGauge::new(i64::from(s.reloads.last_ok)).encode(enc.encode_descriptor(
            "udp_fanout_config_last_reload_success",
            "1 if the last reload was applied (or none was tried), 0 if it was refused.",
            None,
            MetricType::Gauge,
        )?)?;
        family(
            &mut enc,
            "udp_fanout_listener_panic",
            "1 while no downstream of the listener is healthy and all active ones are served (fail open).",
            MetricType::Gauge,
            s.panic.iter().map(|(l, p)| {
                (
                    vec![label("listener", l.clone())],
                    ConstGauge::new(i64::from(*p)),
                )
            }),
        )?;
        if !s.discovery.is_empty() {
            family(
                &mut enc,
                "udp_fanout_discovery_up",
                "1 while the listener's Kubernetes watch is connected and has listed since its last error; 0 while the last known endpoints are kept.",
                MetricType::Gauge,
                s.discovery.iter().map(|(l, up)| {
                    (
                        vec![label("listener", l.clone())],
                        ConstGauge::new(i64::from(*up)),
                    )
                }),
            )?;
        }
        if s.probes.is_empty() {
            return Ok(());
        }
        family(
            &mut enc,
            "udp_fanout_health_checks",
            "Health probes of each downstream, by result.",
            MetricType::Counter,
            s.probes.iter().flat_map(|p| {
                [("success", p.success), ("failure", p.failure)].map(|(r, v)| {
                    (
                        vec![
                            label("listener", p.listener.clone()),
                            label("endpoint", p.addr.to_string()),
                            label("result", r.into()),
                        ],
                        ConstCounter::new(v),
                    )
                })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Exporter;

    #[test]
    fn renders_the_contract_names() {
        let stats = ControlStats {
            reloads: ReloadCounts {
                success: 2,
                error: 1,
                last_ok: false,
            },
            panic: vec![("a".into(), true), ("b".into(), false)],
            probes: vec![ProbeCount {
                listener: "a".into(),
                addr: "127.0.0.1:7001".parse().unwrap(),
                success: 5,
                failure: 3,
            }],
            discovery: vec![("k".into(), false), ("k2".into(), true)],
        };
        let mut e = Exporter::new(Arc::new(Vec::new));
        e.add_control(Arc::new(move || stats.clone()));
        let text = e.render();
        for line in [
            "udp_fanout_config_reloads_total{result=\"success\"} 2",
            "udp_fanout_config_reloads_total{result=\"error\"} 1",
            "udp_fanout_config_last_reload_success 0",
            "udp_fanout_listener_panic{listener=\"a\"} 1",
            "udp_fanout_listener_panic{listener=\"b\"} 0",
            "udp_fanout_discovery_up{listener=\"k\"} 0",
            "udp_fanout_discovery_up{listener=\"k2\"} 1",
            "udp_fanout_health_checks_total{listener=\"a\",endpoint=\"127.0.0.1:7001\",result=\"success\"} 5",
            "udp_fanout_health_checks_total{listener=\"a\",endpoint=\"127.0.0.1:7001\",result=\"failure\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
