//! The comparison's chart: one panel per scenario, a horizontal bar per peer for its median
//! maximum lossless rate with a line for the range over the repeats, as SVG.
//!
//! One panel per scenario because their units differ (datagrams/s, Gbit/s per sink,
//! replies/s) and a shared axis would flatten the small numbers; horizontal bars because the
//! peers' names are long. udp-fanout is drawn in blue, the direct ceiling in grey and every
//! other peer in orange, so the eye finds the two reference bars first.

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::peers::PeerId;
use super::report::{CompareReport, ScenarioResult, Spread};
use super::scenario::ScenarioId;

const FANOUT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const DIRECT: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);
const OTHER: RGBColor = RGBColor(0xff, 0x8c, 0x1a);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Writes the chart to `path` (creating its directory).
pub fn write_svg(report: &CompareReport, path: &Path) -> anyhow::Result<()> {
    let panels: Vec<&ScenarioResult> = report
        .scenarios
        .iter()
        .filter(|s| s.rows.iter().any(|r| r.measured().is_some()))
        .collect();
    if panels.is_empty() {
        bail!("nothing was measured, so there is nothing to plot");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rows = panels.len().div_ceil(2).max(1);
    let root = SVGBackend::new(path, (1300, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, 2));
    for (area, sc) in areas.iter().zip(&panels) {
        panel(area, sc)?;
    }
    if let Some(area) = areas.get(panels.len()) {
        legend(area, report)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The axis unit of a scenario and the factor from datagrams/s to it.
fn unit(sc: &ScenarioResult) -> (String, f64) {
    if sc.spec.id == ScenarioId::D {
        ("Gbit/s per sink".to_owned(), sc.spec.gbit_per_sink(1.0))
    } else {
        (format!("thousand {}", sc.spec.unit()), 1e-3)
    }
}

fn panel(area: &Area<'_>, sc: &ScenarioResult) -> anyhow::Result<()> {
    // Top to bottom in table order: the first row gets the highest segment.
    let bars: Vec<(&str, PeerId, Spread)> = sc
        .rows
        .iter()
        .rev()
        .filter_map(|r| Some((r.label, r.peer, r.measured()?.max_lossless)))
        .collect();
    let (unit, k) = unit(sc);
    let n = bars.len();
    let top = bars.iter().map(|b| b.2.max * k).fold(0.0, f64::max);
    let xmax = if top > 0.0 { top * 1.25 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} {}", sc.spec.id, sc.spec.title),
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..xmax, (0..n.saturating_sub(1)).into_segmented())?;
    let names: Vec<&str> = bars.iter().map(|b| b.0).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_labels(8)
        .x_label_formatter(&|v| format_value(*v))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).map(|s| (*s).to_owned()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(unit)
        .label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, peer, s))| {
        let color = match peer {
            PeerId::UdpFanout | PeerId::UdpFanoutKernel => FANOUT,
            PeerId::Direct => DIRECT,
            _ => OTHER,
        };
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (s.median * k, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        r.set_margin(5, 5, 0, 0);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, _, s))| {
        PathElement::new(
            vec![
                (s.min * k, SegmentValue::CenterOf(i)),
                (s.max * k, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, _, s))| {
        Text::new(
            format_value(s.median * k),
            (s.max * k + xmax * 0.01, SegmentValue::CenterOf(i)),
            ("sans-serif", 11),
        )
    }))?;
    Ok(())
}

fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn legend(area: &Area<'_>, report: &CompareReport) -> anyhow::Result<()> {
    let lines = [
        "Bars: median maximum lossless rate (loss < 0.1 %)".to_owned(),
        format!(
            "over {} repeat{}; black lines: min–max.",
            report.repeats,
            if report.repeats == 1 { "" } else { "s" }
        ),
        "Blue: udp-fanout. Grey: direct, no proxy (the ceiling).".to_owned(),
        "Orange: the other peers.".to_owned(),
        String::new(),
        format!("{}, {}", report.machine.describe(), report.date),
        "udp-fanout-bench compare".to_owned(),
    ];
    for (i, l) in lines.iter().enumerate() {
        let y = 40 + 24 * i as i32;
        area.draw(&Text::new(l.clone(), (30, y), ("sans-serif", 15)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::compare::machine::Machine;
    use crate::scenarios::compare::report::{Measured, Outcome, Row};
    use crate::scenarios::compare::sweep::SweepSettings;
    use std::time::Duration;

    fn measured(median: f64) -> Outcome {
        Outcome::Measured(Box::new(Measured {
            repeats: Vec::new(),
            max_lossless: Spread {
                median,
                min: median * 0.9,
                max: median * 1.1,
            },
            capped: false,
            fixed_rate: 20_000,
            fixed_loss: 0.0,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            cpu_per_million: None,
            peak_rss_kib: None,
            split: Vec::new(),
            limited_by_loss: 0,
            limited_by_generator: 0,
        }))
    }

    pub(crate) fn report() -> CompareReport {
        let row = |peer: PeerId, outcome| Row {
            peer,
            label: peer.label(),
            version: None,
            note: None,
            outcome,
        };
        let scenarios = [ScenarioId::A, ScenarioId::D, ScenarioId::E]
            .into_iter()
            .map(|id| ScenarioResult {
                spec: id.spec(),
                rows: vec![
                    row(PeerId::Direct, measured(300_000.0)),
                    row(PeerId::UdpFanout, measured(200_000.0)),
                    row(PeerId::NginxSession, measured(120_000.0)),
                    row(
                        PeerId::UdpTee,
                        Outcome::NotApplicable { reason: "x".into() },
                    ),
                ],
            })
            .collect();
        CompareReport {
            quick: false,
            machine: Machine {
                cpu: "a CPU".into(),
                cores: 2,
                kernel: "6.1".into(),
                memory_gib: 4.0,
                load_1m: 0.0,
                busy: 0.0,
            },
            pinning: "nothing pinned".into(),
            repeats: 3,
            settings: SweepSettings {
                step: Duration::from_secs(1),
                bisect_steps: 3,
                fixed: Duration::from_secs(2),
            },
            peers: Vec::new(),
            scenarios,
            kernel: None,
            failures: Vec::new(),
            warnings: Vec::new(),
            elapsed: Duration::ZERO,
            date: "2026-01-01".into(),
        }
    }

    #[test]
    fn the_chart_has_a_panel_per_scenario_and_a_bar_per_measured_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench").join("compare.svg");
        write_svg(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "(a) load-balance",
            "(d) mirror",
            "Gbit/s per sink",
            "nginx, session mode",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(!svg.contains("udp-tee"), "n/a peers get no bar");
        if let Ok(keep) = std::env::var("FANOUT_BENCH_KEEP_SVG") {
            std::fs::copy(&path, keep).unwrap();
        }
    }

    #[test]
    fn values_get_sensible_precision() {
        assert_eq!(format_value(1234.6), "1235");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(1.234), "1.23");
    }
}
