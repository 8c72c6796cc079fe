//! Figures from samples: CPU per datagram with the background and the generator taken out,
//! % of plain forwarding round by round, and the `netns_forwarding` bench's markdown table
//! and per-window details.
//!
//! Ratios to plain forwarding are taken within a round (the modes of a round run one after
//! the other, interleaved, so a noisy moment on a shared machine falls on all of them rather
//! than on one), then summarised as median (min–max) over the rounds.

use std::fmt::Write as _;

use crate::cpu::PerMillion;
use crate::measure::{Sample, check};
use crate::modes::Mode;

/// The sample of `mode` in `round` (the first, when there are several).
pub fn find(samples: &[Sample], mode: Mode, round: u64) -> Option<&Sample> {
    samples.iter().find(|s| s.mode == mode && s.round == round)
}

/// CPU per million datagrams delivered (generator only: frames generated) of `s`, the
/// background of `idle` removed.
pub fn per_million(s: &Sample, idle: &Sample) -> PerMillion {
    let idle_rates = idle.cpu.rates(idle.window);
    let count = if s.mode == Mode::GenOnly {
        s.offered
    } else {
        s.datagrams_delivered()
    };
    s.cpu
        .rates(s.window)
        .per_million(&idle_rates, s.window, count)
}

/// This process + ksoftirqd per million datagrams, net of generating their frames:
/// `gen_own` is the generator-only figure per million frames, charged for every frame `s`
/// generated.
pub fn own_net_of_generator(s: &Sample, idle: &Sample, gen_own: f64) -> f64 {
    let pm = per_million(s, idle);
    let frames_per_datagram = s.offered as f64 / s.datagrams_delivered().max(1) as f64;
    pm.own - gen_own * frames_per_datagram
}

/// [`per_million`] of each of `of`, against the idle window of its round in `samples`; a
/// sample whose round has none is left out.
pub fn per_million_each(samples: &[Sample], of: &[&Sample]) -> Vec<PerMillion> {
    of.iter()
        .filter_map(|s| Some(per_million(s, find(samples, Mode::Idle, s.round)?)))
        .collect()
}

/// The generator-only windows' own CPU per million frames, one per round that has an idle
/// window: what [`own_net_of_generator`] takes out.
pub fn generator_own_each(samples: &[Sample]) -> Vec<f64> {
    let generator: Vec<&Sample> = samples.iter().filter(|s| s.mode == Mode::GenOnly).collect();
    per_million_each(samples, &generator)
        .iter()
        .map(|p| p.own)
        .collect()
}

/// [`own_net_of_generator`] of each of `of`, against the idle window of its round in
/// `samples`; nothing without the generator's figure `gen_own`.
pub fn own_net_each(samples: &[Sample], of: &[&Sample], gen_own: Option<f64>) -> Vec<f64> {
    let Some(g) = gen_own else {
        return Vec::new();
    };
    of.iter()
        .filter_map(|s| {
            Some(own_net_of_generator(
                s,
                find(samples, Mode::Idle, s.round)?,
                g,
            ))
        })
        .collect()
}

/// Median, min and max (`None` for no values).
pub fn median_min_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn fmt_range(v: &[f64], digits: usize) -> String {
    match median_min_max(v) {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "–".to_owned(),
    }
}

fn kpps(v: &[f64]) -> String {
    let k: Vec<f64> = v.iter().map(|x| x / 1000.0).collect();
    fmt_range(&k, 1) + "k"
}

/// % of plain forwarding's datagrams per second, one value per round that has both.
pub fn pct_of_plain(samples: &[Sample], of: &[&Sample]) -> Vec<f64> {
    of.iter()
        .filter_map(|s| {
            let plain = find(samples, Mode::Plain, s.round)?;
            let base = plain.datagrams_pps();
            (base > 0.0).then(|| 100.0 * s.datagrams_pps() / base)
        })
        .collect()
}

/// The markdown table for one load (samples of all rounds, one traffic).
pub fn table(title: &str, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| mode | offered pps | delivered pps | loss % | % of plain forwarding | softirq | system | user | total | NET softirq, traced | this process + ksoftirqd | same, net of generator |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let of = |m: Mode| -> Vec<&Sample> { samples.iter().filter(|s| s.mode == m).collect() };
    let gen_own = median_min_max(&generator_own_each(samples)).map(|m| m.0);
    for mode in Mode::ALL {
        let v = of(mode);
        if v.is_empty() {
            continue;
        }
        if mode == Mode::Idle {
            let col = |f: fn(&crate::cpu::Rates) -> f64| {
                let r: Vec<f64> = v.iter().map(|s| f(&s.cpu.rates(s.window))).collect();
                fmt_range(&r, 0)
            };
            let _ = writeln!(
                out,
                "| {} (CPU-ms per second) | – | – | – | – | {} | {} | {} | – | {} | {} | – |",
                mode.name(),
                col(|r| r.softirq),
                col(|r| r.system),
                col(|r| r.user),
                col(|r| r.net_softirq),
                col(|r| r.own)
            );
            continue;
        }
        let pm = per_million_each(samples, &v);
        let col = |f: fn(&PerMillion) -> f64| {
            let x: Vec<f64> = pm.iter().map(f).collect();
            fmt_range(&x, 0)
        };
        let (pct_plain, net) = if mode == Mode::GenOnly {
            ("–".to_string(), "–".to_string())
        } else {
            let net = own_net_each(samples, &v, gen_own);
            (fmt_range(&pct_of_plain(samples, &v), 1), fmt_range(&net, 0))
        };
        let offered: Vec<f64> = v.iter().map(|s| s.offered_pps()).collect();
        let delivered: Vec<f64> = v.iter().map(|s| s.delivered_pps()).collect();
        let loss: Vec<f64> = v.iter().map(|s| s.loss_pct()).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            kpps(&offered),
            kpps(&delivered),
            fmt_range(&loss, 2),
            pct_plain,
            col(|p| p.softirq),
            col(|p| p.system),
            col(|p| p.user),
            col(PerMillion::total),
            col(|p| p.net_softirq),
            col(|p| p.own),
            net,
        );
    }
    out
}

/// One line per sample: the counters behind the table, and what does not add up.
pub fn details(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        out.push_str(&detail(s));
        out.push('\n');
    }
    out
}

/// One sample's line of [`details`].
pub fn detail(s: &Sample) -> String {
    let mut line = format!(
        "- round {} {:<40} offered {:>9} delivered {:>9} (b0 {}, b1 {}, csum ok {}) gen {:.2}s window {:.2}s; ticks softirq/system/user/irq/steal {}/{}/{}/{}/{}, process+ksoftirqd {}; NET softirq traced {:.0} ms",
        s.round + 1,
        s.mode.name(),
        s.offered,
        s.delivered,
        s.per_backend[0],
        s.per_backend.get(1).copied().unwrap_or(0),
        s.csum_ok,
        s.gen_time.as_secs_f64(),
        s.window.as_secs_f64(),
        s.cpu.softirq,
        s.cpu.system,
        s.cpu.user,
        s.cpu.irq,
        s.cpu.steal,
        s.cpu.own,
        s.cpu.net_softirq_ns as f64 / 1e6
    );
    if let Some(p) = &s.plane {
        let drops: Vec<String> = fanout_core::DropReason::ALL
            .iter()
            .filter(|r| p.dropped[r.index()] > 0)
            .map(|r| format!("{}={}", r.as_str(), p.dropped[r.index()]))
            .collect();
        let _ = write!(
            line,
            "; plane received {} forwarded {} drops [{}] socket_drops {}",
            p.received,
            p.forwarded,
            drops.join(" "),
            p.socket_drops
        );
    }
    if s.cpu.proxy > 0 {
        let _ = write!(
            line,
            "; proxy processes {} ticks (in process+ksoftirqd)",
            s.cpu.proxy
        );
    }
    if s.lb.rcvbuf_errors > 0 {
        let _ = write!(line, "; lb UDP RcvbufErrors {}", s.lb.rcvbuf_errors);
    }
    if s.lb.tx_drops + s.lb.sndbuf_errors > 0 {
        let _ = write!(
            line,
            "; lb egress veth drops {} (UDP SndbufErrors {})",
            s.lb.tx_drops, s.lb.sndbuf_errors
        );
    }
    if !s.attach.is_empty() {
        let _ = write!(line, "; {}", s.attach);
    }
    if s.other > 0 {
        let _ = write!(line, "; other frames at sinks {}", s.other);
    }
    let bad = check(s);
    if !bad.is_empty() {
        let _ = write!(line, "; CHECK: {}", bad.join("; "));
    }
    line
}
