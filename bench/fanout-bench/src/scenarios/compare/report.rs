//! What a comparison found: one row per (scenario, peer), with medians and spreads over the
//! repeats, and the run's setting (machine, pinning, versions), as data for the markdown,
//! the chart and `--json`.
//!
//! Medians, because a shared two-core machine produces the odd outlier in either direction;
//! the spread (min–max) is kept next to each median so that a reader sees how much one run
//! can differ from the next before reading anything into a ratio.

use std::time::Duration;

use serde::Serialize;

use super::kernel::KernelOutcome;
use super::machine::Machine;
use super::measure::Point;
use super::peers::{PeerId, PeerStatus};
use super::scenario::{ScenarioId, Spec};
use super::sweep::{Limit, Repeat, SweepSettings};

/// Median and range of a few values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = crate::scenarios::median_of_sorted(&v);
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// A peer's full measurement in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Every repeat.
    pub repeats: Vec<Repeat>,
    /// Highest lossless rate.
    pub max_lossless: Spread,
    /// Some repeat reached the sweep's cap without loss.
    pub capped: bool,
    /// The rate of the latency and CPU runs (the lowest over the repeats).
    pub fixed_rate: u64,
    /// Loss at that rate (median).
    pub fixed_loss: f64,
    /// Latency percentiles at that rate, ns.
    pub p50_ns: Option<Spread>,
    /// 99th percentile.
    pub p99_ns: Option<Spread>,
    /// 99.9th percentile.
    pub p999_ns: Option<Spread>,
    /// CPU seconds of the proxy's processes per million datagrams (requests) offered.
    pub cpu_per_million: Option<Spread>,
    /// Peak resident memory of the proxy's processes, KiB (the largest seen).
    pub peak_rss_kib: Option<u64>,
    /// Distinct datagrams per sink in the last fixed-rate run.
    pub split: Vec<u64>,
    /// Repeats whose next rate up failed by loss, and by the generator not keeping up.
    pub limited_by_loss: usize,
    /// See `limited_by_loss`.
    pub limited_by_generator: usize,
}

impl Measured {
    /// Aggregates the repeats.
    pub fn from_repeats(repeats: Vec<Repeat>) -> Measured {
        let fixed: Vec<&Point> = repeats.iter().map(|r| &r.fixed).collect();
        let pct = |f: fn(&crate::stats::LatencySummary) -> u64| {
            let v: Vec<f64> = fixed
                .iter()
                .filter_map(|p| p.latency.as_ref().map(|l| f(l) as f64))
                .collect();
            Spread::of(&v)
        };
        let cpu: Vec<f64> = fixed
            .iter()
            .filter_map(|p| Some(p.cost.cpu_seconds? / (p.sent.max(1) as f64 / 1e6)))
            .collect();
        let rates: Vec<f64> = repeats.iter().map(|r| r.max_lossless as f64).collect();
        let losses: Vec<f64> = fixed.iter().map(|p| p.loss).collect();
        Measured {
            max_lossless: Spread::of(&rates).unwrap_or(Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            }),
            capped: repeats.iter().any(|r| r.capped),
            fixed_rate: fixed.iter().map(|p| p.rate).min().unwrap_or(0),
            fixed_loss: Spread::of(&losses).map_or(0.0, |s| s.median),
            p50_ns: pct(|l| l.p50_ns),
            p99_ns: pct(|l| l.p99_ns),
            p999_ns: pct(|l| l.p999_ns),
            cpu_per_million: Spread::of(&cpu),
            peak_rss_kib: fixed
                .iter()
                .filter(|p| p.cost.cpu_seconds.is_some())
                .map(|p| p.cost.peak_rss_kib)
                .max(),
            split: fixed.last().map(|p| p.split.clone()).unwrap_or_default(),
            limited_by_loss: count(&repeats, Limit::Loss),
            limited_by_generator: count(&repeats, Limit::Generator),
            repeats,
        }
    }
}

fn count(repeats: &[Repeat], l: Limit) -> usize {
    repeats.iter().filter(|r| r.limited_by == Some(l)).count()
}

/// A peer's one measurement in the quick mode, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuickRun {
    /// The measurement.
    pub point: Point,
    /// Inconsistencies that fail the run.
    pub problems: Vec<String>,
    /// Known anomalies of this peer, reported only.
    pub warnings: Vec<String>,
}

/// What happened to one peer in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Swept and measured.
    Measured(Box<Measured>),
    /// Checked briefly (`--quick`).
    Quick(Box<QuickRun>),
    /// The peer cannot do what the scenario asks.
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The peer is not installed or cannot run here.
    Missing {
        /// Why, and how to install it.
        reason: String,
    },
    /// Starting or measuring it failed.
    Failed {
        /// The error.
        error: String,
    },
}

/// One table row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The peer.
    pub peer: PeerId,
    /// Its name in tables.
    pub label: &'static str,
    /// Its version.
    pub version: Option<String>,
    /// How it runs this scenario, when that needs saying.
    pub note: Option<&'static str>,
    /// What happened.
    pub outcome: Outcome,
}

impl Row {
    /// The measurement, if the peer was measured.
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Measured(m) => Some(m),
            _ => None,
        }
    }
}

/// One scenario's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// The scenario.
    pub spec: Spec,
    /// One row per peer asked for.
    pub rows: Vec<Row>,
}

impl ScenarioResult {
    /// The median maximum lossless rate of `peer`.
    pub fn max_of(&self, peer: PeerId) -> Option<f64> {
        let m = self.rows.iter().find(|r| r.peer == peer)?.measured()?;
        Some(m.max_lossless.median)
    }

    /// Whether every repeat of `peer` stopped because the generator could offer no more
    /// (without loss): its maximum is then the generator's, and the peer could do more.
    pub fn generator_bound(&self, peer: PeerId) -> bool {
        self.rows
            .iter()
            .find(|r| r.peer == peer)
            .and_then(Row::measured)
            .is_some_and(|m| !m.repeats.is_empty() && m.limited_by_generator == m.repeats.len())
    }

    /// `peer`'s median maximum over `base`'s.
    pub fn ratio(&self, peer: PeerId, base: PeerId) -> Option<f64> {
        let b = self.max_of(base)?;
        (b > 0.0).then(|| self.max_of(peer).unwrap_or(0.0) / b)
    }
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareReport {
    /// `--quick`: one brief run each, checked for consistency, no speeds.
    pub quick: bool,
    /// Where it ran.
    pub machine: Machine,
    /// What was pinned where.
    pub pinning: String,
    /// Repeats per peer and scenario.
    pub repeats: u32,
    /// Step and run lengths.
    pub settings: SweepSettings,
    /// Every peer asked for, installed or not.
    pub peers: Vec<PeerStatus>,
    /// The peer scenarios (a)-(e) asked for, in order.
    pub scenarios: Vec<ScenarioResult>,
    /// Scenario (f), the kernel plane in network namespaces, if it was asked for.
    pub kernel: Option<KernelOutcome>,
    /// Runs that failed (the exit status is non-zero when there are any).
    pub failures: Vec<String>,
    /// Things a reader should know.
    pub warnings: Vec<String>,
    /// How long it took (seconds in JSON).
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub elapsed: Duration,
    /// When it ran (UTC, from the system clock).
    pub date: String,
}

impl CompareReport {
    /// The scenarios this run covered, in order.
    pub fn scenario_ids(&self) -> Vec<ScenarioId> {
        let mut v: Vec<ScenarioId> = self.scenarios.iter().map(|s| s.spec.id).collect();
        if self.kernel.is_some() {
            v.push(ScenarioId::F);
        }
        v
    }

    /// Whether every peer scenario, (a) to (e), was run: then the method, the peer list and
    /// the chart describe this run.
    pub fn covers_all_peer_scenarios(&self) -> bool {
        let ids = self.scenario_ids();
        ScenarioId::PEERS.iter().all(|s| ids.contains(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_have_medians_and_ranges() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }
}
