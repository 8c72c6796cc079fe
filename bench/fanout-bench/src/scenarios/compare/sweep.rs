//! The fixed-rate sweep that finds a peer's maximum lossless rate, and the fixed-rate run that
//! measures its latency and CPU cost.
//!
//! A proxy's "throughput" measured flat out says little: the generator then offers whatever
//! it can, and a proxy that drops half of it at full speed can look faster than one that
//! forwards everything a little slower. So each step offers a fixed rate for a short, bounded
//! time and asks the verifying sinks what was lost: rates double from a starting point until
//! one loses 0.1 % or more (or the generator cannot offer it), then the interval between the
//! last good and the first bad rate is bisected a few times. The answer is the highest rate
//! that passed. A repeat starts from half the previous repeat's answer, which spends its steps
//! near the edge instead of climbing from the bottom again.
//!
//! The machine may be shared (other people's builds and tests, other VMs on the host): a
//! measurement during which processes other than the bench and the peer, or the hypervisor
//! (steal time), took more than a tenth of a core is repeated,
//! up to three times, each after waiting (up to a minute) for the machine to get quiet again,
//! and marked if it stays disturbed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::measure::{DISTURBED, LOSSLESS, Point};
use super::procs;
use super::rig::{Ctx, Rig};
use super::scenario::Spec;

/// How long each measurement runs and how finely the edge is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SweepSettings {
    /// Length of one sweep step (seconds in JSON).
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub step: Duration,
    /// Bisection steps after the doubling.
    pub bisect_steps: u32,
    /// Length of the latency and CPU run (seconds in JSON).
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub fixed: Duration,
}

/// One step of a sweep, briefly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Offered rate.
    pub rate: u64,
    /// Whether it passed.
    pub lossless: bool,
    /// The worst copy's loss.
    pub loss: f64,
    /// What the generator achieved.
    pub achieved_pps: f64,
    /// Datagrams dropped at the sinks' sockets.
    pub sink_kernel_drops: u64,
    /// Host UDP receive-buffer drops (loopback peers).
    pub rcvbuf_errors: Option<u64>,
    /// udp-fanout: datagrams dropped at its listener sockets, and dropped copies.
    pub fanout_drops: Option<(u64, u64)>,
    /// Foreign CPU use during the step (see [`Point::foreign_cpu`]).
    pub foreign_cpu: Option<f64>,
    /// Still disturbed by other work after the retries.
    pub disturbed: bool,
    /// Times the step was repeated because other work disturbed it.
    pub retries: u32,
}

impl From<&Point> for Step {
    fn from(p: &Point) -> Self {
        Step {
            rate: p.rate,
            lossless: p.lossless(),
            loss: p.loss,
            achieved_pps: p.achieved_pps,
            sink_kernel_drops: p.sink_kernel_drops,
            rcvbuf_errors: p.rcvbuf_errors,
            fanout_drops: p
                .fanout
                .as_ref()
                .map(|f| (f.socket_drops, f.dropped_total())),
            foreign_cpu: p.foreign_cpu,
            disturbed: p.disturbed(),
            retries: 0,
        }
    }
}

/// Why the first rate above the maximum failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Limit {
    /// 0.1 % or more was lost.
    Loss,
    /// Nothing (or little) was lost, but the generator could not offer the rate: on a
    /// shared machine, the peer's CPU use starves the generator.
    Generator,
}

/// One repeat: the sweep and the fixed-rate run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repeat {
    /// The highest rate without loss (0: none passed).
    pub max_lossless: u64,
    /// The sweep reached its highest rate without loss: the real maximum is higher.
    pub capped: bool,
    /// Why the next rate up failed.
    pub limited_by: Option<Limit>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The latency and CPU run.
    pub fixed: Point,
    /// Times the fixed-rate run was repeated because other work disturbed it.
    pub fixed_retries: u32,
}

/// How often a measurement disturbed by other work on the machine is repeated.
const RETRIES: u32 = 3;

/// Longest wait for the machine to get quiet before repeating a disturbed measurement.
const QUIET_WAIT: Duration = Duration::from_secs(60);

/// Runs one measurement, and again (after waiting up to [`QUIET_WAIT`] for the machine to
/// get quiet, at most [`RETRIES`] times) while other work on the machine disturbed it;
/// returns the last one and the number of repeats.
pub(crate) fn measure(
    rig: &mut Rig,
    spec: &Spec,
    rate: u64,
    d: Duration,
    ctx: &Ctx<'_>,
    stop: &AtomicBool,
) -> anyhow::Result<(Point, u32)> {
    let mut retries = 0;
    loop {
        let p = rig.run_point(spec, rate, d, ctx, stop)?;
        if !p.disturbed() || retries >= RETRIES || stop.load(Ordering::Relaxed) {
            return Ok((p, retries));
        }
        retries += 1;
        procs::wait_quiet(&rig.proxy_pids(), DISTURBED, QUIET_WAIT);
    }
}

/// Runs one sweep from `start`, then the fixed-rate run at the scenario's rate (or, for a
/// peer that cannot carry that, at half its maximum).
pub(crate) fn repeat(
    rig: &mut Rig,
    spec: &Spec,
    ctx: &Ctx<'_>,
    start: u64,
    s: &SweepSettings,
    stop: &AtomicBool,
) -> anyhow::Result<Repeat> {
    let mut steps = Vec::new();
    let mut test = |rate: u64| -> anyhow::Result<bool> {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let (p, retries) = measure(rig, spec, rate, s.step, ctx, stop)?;
        steps.push(Step {
            retries,
            ..Step::from(&p)
        });
        Ok(p.lossless())
    };
    let (max_lossless, capped) = search(&mut test, start, spec.sweep_cap, s.bisect_steps)?;
    let fixed_rate = if max_lossless >= spec.fixed_rate || max_lossless == 0 {
        spec.fixed_rate
    } else {
        (max_lossless / 2).max(1)
    };
    let (fixed, fixed_retries) = measure(rig, spec, fixed_rate, s.fixed, ctx, stop)?;
    let limited_by = steps
        .iter()
        .filter(|p| !p.lossless && p.rate > max_lossless)
        .min_by_key(|p| p.rate)
        .map(|p| {
            if p.loss >= LOSSLESS {
                Limit::Loss
            } else {
                Limit::Generator
            }
        });
    Ok(Repeat {
        max_lossless,
        capped,
        limited_by,
        steps,
        fixed,
        fixed_retries,
    })
}

/// The search itself, over any pass/fail `test`: (highest passing rate, capped).
fn search(
    test: &mut impl FnMut(u64) -> anyhow::Result<bool>,
    start: u64,
    cap: u64,
    bisect_steps: u32,
) -> anyhow::Result<(u64, bool)> {
    let mut r = start.clamp(1, cap);
    let (mut lo, mut hi) = (0u64, None);
    if test(r)? {
        lo = r;
        while r < cap {
            r = r.saturating_mul(2).min(cap);
            if test(r)? {
                lo = r;
            } else {
                hi = Some(r);
                break;
            }
        }
    } else {
        hi = Some(r);
        let floor = (start / 16).max(1);
        while r > floor {
            r = (r / 2).max(floor);
            if test(r)? {
                lo = r;
                break;
            }
            hi = Some(r);
        }
        if lo == 0 {
            return Ok((0, false));
        }
    }
    let Some(mut h) = hi else {
        return Ok((lo, true));
    };
    for _ in 0..bisect_steps {
        let mid = lo + (h - lo) / 2;
        if mid <= lo {
            break;
        }
        if test(mid)? {
            lo = mid;
        } else {
            h = mid;
        }
    }
    Ok((lo, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limit: u64, start: u64, cap: u64) -> ((u64, bool), Vec<u64>) {
        let mut tried = Vec::new();
        let mut t = |r: u64| {
            tried.push(r);
            Ok(r <= limit)
        };
        let out = search(&mut t, start, cap, 3).unwrap();
        (out, tried)
    }

    #[test]
    fn doubles_then_bisects() {
        let (out, tried) = run(300, 100, 10_000);
        assert_eq!(tried, vec![100, 200, 400, 300, 350, 325]);
        assert_eq!(out, (300, false));
    }

    #[test]
    fn halves_when_the_start_fails_and_stops_at_the_cap() {
        let (out, tried) = run(30, 100, 10_000);
        assert_eq!(tried, vec![100, 50, 25, 37, 31, 28]);
        assert_eq!(out, (28, false));
        assert_eq!(run(u64::MAX, 100, 1_000).0, (1_000, true));
        assert_eq!(run(0, 100, 1_000).0, (0, false));
    }
}
