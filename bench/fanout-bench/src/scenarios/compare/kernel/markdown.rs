//! Scenario (f) as markdown: its own method paragraph (it is measured unlike (a)-(e)), one
//! table per traffic shape (with udp-fanout's userspace plane ÷ each third-party proxy where
//! they ran), and its line in the summary list.
//!
//! The block starts with a `### (f)` heading like the other scenarios', so that `--write`
//! with a subset of scenarios can replace it alone ([`super::super::docs`]).

use std::fmt::Write as _;

use super::super::machine::Machine;
use super::super::markdown::{books, split, spread_rate};
use super::super::report::Spread;
use super::super::scenario::ScenarioId;
use super::summary::{KernelCase, KernelMeasured, KernelOutcome, KernelQuick, KernelRow};
use crate::human::thousands;

/// The heading of (f)'s block.
pub(crate) fn heading() -> String {
    let spec = ScenarioId::F.spec();
    format!("### {} {}", spec.id, spec.title)
}

/// The whole block of (f).
pub(crate) fn block(out: &mut String, outcome: &KernelOutcome, machine: &Machine, date: &str) {
    match outcome {
        KernelOutcome::Measured(m) => measured(out, m, machine, date),
        KernelOutcome::Quick(q) => quick(out, q),
        KernelOutcome::NotApplicable { reason } => {
            let _ = writeln!(out, "{}\n\nn/a: {reason}.\n", heading());
        }
        KernelOutcome::Failed { error } => {
            let e = error.lines().next().unwrap_or("");
            let _ = writeln!(out, "{}\n\n**failed**: {e}\n", heading());
        }
    }
}

fn ns(s: &Option<Spread>) -> String {
    match s {
        Some(s) => format!("{} ({}–{})", signed(s.median), signed(s.min), signed(s.max)),
        None => "—".to_owned(),
    }
}

/// A CPU figure, rounded; a small negative value (the idle background subtracted from a
/// noisy sample) stays visible as such.
fn signed(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", thousands((-v).round() as u64))
    } else {
        thousands(v.round() as u64)
    }
}

fn pct(s: &Option<Spread>) -> String {
    match s {
        Some(s) if (s.max - s.min) < 0.5 => format!("{:.0} %", s.median),
        Some(s) => format!("{:.0} % ({:.0}–{:.0})", s.median, s.min, s.max),
        None => "—".to_owned(),
    }
}

fn loss(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.max < 0.005 => "0 %".to_owned(),
        Some(s) => format!("{:.2} % ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "—".to_owned(),
    }
}

fn method(out: &mut String, m: &KernelMeasured, machine: &Machine, date: &str) {
    let _ = writeln!(
        out,
        "**Method.** Run on {}, {date}, on a rig of its own (`fanout-netbench`, shared with \
         `cargo bench -p fanout-netbench --bench netns_forwarding`): a client, a load balancer and \
         two backends in network namespaces, joined by veth pairs with one queue per CPU. The \
         load comes from the kernel: `bench/fanout-netbench/bpf/bench_gen.c`'s XDP program, run with \
         `BPF_PROG_TEST_RUN` in live-frames mode ({} thread pinned to CPU 0, batches of 64), \
         transmits real frames out of the client's veth, because one userspace sender reaches \
         only ~250k datagrams/s over veth here, too little to load the kernel plane. Each \
         backend counts and drops what reaches it with an XDP program that also verifies the \
         checksums. Modes: plain kernel forwarding (`ip_forward=1`, no udp-fanout: the client \
         addresses the backends itself), udp-fanout's kernel plane with `mode: xdp` and \
         `mode: tc_ebpf`, and its userspace plane (default settings, one worker per core) for \
         reference, all started in this process; and, for load-balancing, the third-party \
         userspace proxies of the comparison above, started in the load balancer's namespace \
         with the same configs (nginx's stream module in session mode and with \
         `proxy_responses 0`, `worker_processes auto` + `reuseport`; Envoy's `udp_proxy` per \
         session and per packet, `--concurrency 2`) on the same listener address, and, for \
         the mirror, the seed's udp-tee of (c) (one socat on the listener re-sending every \
         datagram to the broadcast address 127.255.255.255 on a second port, here that of the \
         namespace's own `lo`, and one socat per backend, all bound to that port with \
         `reuseaddr`, relaying its copy to the backend; the same arguments as in (c)): in (a) \
         and (c) the userspace generator is the limit, so udp-fanout's ratios to them there \
         are lower bounds, while here the in-kernel generator offers far more than any of them carries, \
         so the proxy is the bottleneck and udp-fanout userspace ÷ peer (the same round's \
         datagrams/s) is a real ratio. Their CPU (utime + stime of their processes, reaped \
         children included, from `/proc/PID/stat`) is added to this process + ksoftirqd. Each \
         mode runs at the generator's maximum for \
         {:.1} s: the receive path runs in the softirq the generator's own sends raise, so the \
         maximum is what the path carries on one CPU, and no fixed-rate sweep is needed (those \
         are for the userspace proxies above). {} rounds, every mode once per round, \
         interleaved; medians over the rounds, min–max in parentheses; % of plain forwarding \
         is computed within each round. CPU per datagram: the network (NET_RX + NET_TX) \
         softirq time traced at softirq entry and exit on all CPUs, and the utime + stime of \
         this process (the generator, the planes' threads, the softirqs they ran) plus the \
         ksoftirqd threads, both minus the same round's idle window; \"net of generator\" also \
         subtracts what generating the datagram's frames costs (the generator-only window, per \
         frame). For the mirror, a datagram counts once when both backends got it (the plain \
         forwarding client sends two frames for it, and pays for both). Target: kernel plane \
         ≥ 95 % of plain forwarding.\n",
        machine.describe(),
        m.generator_threads,
        m.window.as_secs_f64(),
        m.rounds
    );
    let mut base = Vec::new();
    if let Some(p) = &m.generator_pps {
        base.push(format!(
            "the generator alone (frames dropped by XDP at the load balancer's ingress) made {} \
             frames/s for {} CPU-ns per frame",
            spread_rate(p),
            ns(&m.generator_ns)
        ));
    }
    if let Some(i) = &m.idle_softirq_ms_per_s {
        base.push(format!(
            "the idle machine spent {:.1} CPU-ms per second in network softirqs",
            i.median
        ));
    }
    if !base.is_empty() {
        let _ = writeln!(out, "Baselines: {}.\n", base.join("; "));
    }
    if m.retried > 0 || m.disturbed > 0 {
        let _ = writeln!(
            out,
            "Other work used the machine during this run: {} window(s) were measured again \
             after it got quiet, {} still disturbed after the retries (at most {:.2} of a core \
             taken by others in a kept window). Throughput is the figure most affected; the \
             CPU per datagram of this process + ksoftirqd the least.\n",
            m.retried, m.disturbed, m.max_foreign_share
        );
    }
}

fn measured(out: &mut String, m: &KernelMeasured, machine: &Machine, date: &str) {
    let _ = writeln!(out, "{}\n", heading());
    method(out, m, machine, date);
    for c in &m.cases {
        case_table(out, c);
    }
    let notes: Vec<String> = m
        .cases
        .iter()
        .flat_map(|c| {
            c.rows.iter().flat_map(move |r| {
                r.inconsistencies
                    .iter()
                    .map(move |i| format!("{}, {}: {i}", c.traffic, r.mode))
            })
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "Counters that did not add up:\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
}

fn case_table(out: &mut String, c: &KernelCase) {
    let mirror = c.traffic == "mirror";
    let unit = if mirror {
        "datagrams/s delivered to both backends"
    } else {
        "datagrams/s delivered"
    };
    // The userspace plane ÷ peer column, where third-party proxies ran or are listed.
    let peers = c.rows.iter().any(|r| r.version.is_some());
    let (ratio_head, ratio_rule) = if peers {
        (" udp-fanout userspace ÷ this |", " --- |")
    } else {
        ("", "")
    };
    let _ = writeln!(
        out,
        "**{}**\n\n\
         | mode | {unit} | % of plain forwarding |{ratio_head} loss | network softirq, CPU-ns \
         per datagram | this process + ksoftirqd (+ proxy), CPU-ns per datagram | same, net of \
         generator | split over backends | notes |\n\
         | --- | --- | --- |{ratio_rule} --- | --- | --- | --- | --- | --- |",
        capitalised(&c.title)
    );
    for r in &c.rows {
        let _ = writeln!(out, "{}", row(r, mirror, peers));
    }
    out.push('\n');
}

fn ratio(s: &Option<Spread>) -> String {
    match s {
        Some(s) if (s.max - s.min) < 0.005 => format!("{:.2}×", s.median),
        Some(s) => format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "—".to_owned(),
    }
}

fn row(r: &KernelRow, mirror: bool, peers: bool) -> String {
    let empty = if peers {
        " | | | | | | | |"
    } else {
        " | | | | | | |"
    };
    let label = match &r.version {
        Some(v) => format!("{} ({v})", r.label),
        None => r.label.to_owned(),
    };
    if let Some(why) = r.not_applicable {
        return format!("| {label} | n/a: {why}{empty}");
    }
    let Some(d) = &r.datagrams_per_s else {
        return format!("| {label} | not measured{empty}");
    };
    let ratio_col = if peers {
        format!(" {} |", ratio(&r.userspace_ratio))
    } else {
        String::new()
    };
    let split = if mirror {
        "(each: all)".to_owned()
    } else {
        split(&r.split)
    };
    let mut notes: Vec<String> = r.note.map(str::to_owned).into_iter().collect();
    if !r.attach.is_empty() {
        notes.push(r.attach.clone());
    }
    if let Some(p) = &r.proxy_cpu_ns {
        notes.push(format!(
            "of the CPU, the proxy's processes: {} ns",
            ns(&Some(*p))
        ));
    }
    if r.other_frames > 0 {
        notes.push(format!(
            "{} other frames at the backends (not the datagrams sent: e.g. fragments)",
            thousands(r.other_frames)
        ));
    }
    if !r.inconsistencies.is_empty() {
        notes.push(format!(
            "{} counter inconsistencies (below)",
            r.inconsistencies.len()
        ));
    }
    format!(
        "| {label} | {} | {} |{ratio_col} {} | {} | {} | {} | {split} | {} |",
        spread_rate(d),
        pct(&r.pct_of_plain),
        loss(&r.loss_pct),
        ns(&r.softirq_ns),
        ns(&r.cpu_ns),
        ns(&r.cpu_ns_net),
        notes.join("; ")
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn quick(out: &mut String, q: &KernelQuick) {
    let _ = writeln!(
        out,
        "{} (quick: {}/s for {:.1} s per mode)\n\n\
         | traffic | mode | frames offered | copies expected | delivered | per backend | plane \
         received / forwarded | books |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |",
        heading(),
        thousands(q.rate),
        q.window.as_secs_f64()
    );
    let missing = if q.not_installed.is_empty() {
        String::new()
    } else {
        format!(" Not run (not installed): {}.", q.not_installed.join(", "))
    };
    for r in &q.rows {
        let books = books(&r.problems, &r.warnings);
        let per = r
            .per_backend
            .iter()
            .map(|&n| thousands(n))
            .collect::<Vec<_>>()
            .join(" / ");
        let plane = r.plane.map_or_else(
            || "—".to_owned(),
            |(rx, fwd)| format!("{} / {}", thousands(rx), thousands(fwd)),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {per} | {plane} | {books} |",
            r.traffic,
            r.label,
            thousands(r.offered),
            thousands(r.expected),
            thousands(r.delivered)
        );
    }
    if !missing.is_empty() {
        let _ = writeln!(out, "\n{}", missing.trim_start());
    }
    out.push('\n');
}

/// (f)'s line in the summary list: each plane's % of plain forwarding per traffic shape.
pub(crate) fn summary_line(outcome: &KernelOutcome) -> Option<String> {
    let KernelOutcome::Measured(m) = outcome else {
        return None;
    };
    fn short(mode: &str) -> &str {
        match mode {
            "xdp" => "kernel plane xdp",
            "tc_ebpf" => "kernel plane tc_ebpf",
            "userspace" => "userspace plane",
            other => other,
        }
    }
    // udp-fanout userspace ÷ each third-party proxy that ran.
    let ratios = |c: &KernelCase| -> Vec<String> {
        c.rows
            .iter()
            .filter_map(|r| {
                let x = r.userspace_ratio?;
                // "udp-tee (socat broadcast)" → "udp-tee": the line is in parentheses.
                let name = r.label.split(" (").next().unwrap_or(r.label);
                Some(format!("÷ {name} {:.2}×", x.median))
            })
            .collect()
    };
    let parts: Vec<String> = m
        .cases
        .iter()
        .filter_map(|c| {
            let items: Vec<String> = c
                .rows
                .iter()
                .filter(|r| r.mode != "plain" && r.version.is_none())
                .filter_map(|r| {
                    let p = r.pct_of_plain?;
                    Some(format!("{} {:.0} %", short(r.mode), p.median))
                })
                .enumerate()
                .map(|(i, s)| {
                    if i == 0 {
                        format!("{s} of plain forwarding")
                    } else {
                        s
                    }
                })
                .collect();
            let what = match c.traffic {
                "balance" => "load-balance, many flows",
                "mirror" => "mirror to 2 backends",
                _ => "one heavy flow",
            };
            let peers = ratios(c);
            let peers = if peers.is_empty() {
                String::new()
            } else {
                format!(" (udp-fanout userspace {})", peers.join(", "))
            };
            (!items.is_empty()).then(|| format!("{what}: {}{peers}", items.join(", ")))
        })
        .collect();
    if parts.is_empty() {
        return None;
    }
    let spec = ScenarioId::F.spec();
    Some(format!(
        "- {} {} (same run; target: kernel plane ≥ 95 %): {}",
        spec.id,
        spec.title,
        parts.join("; ")
    ))
}
