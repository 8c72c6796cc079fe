//! End to end in network namespaces, in one run: packets per second and CPU per million packets
//! of plain kernel forwarding, the kernel plane (XDP and TC) and the userspace plane, all under
//! the same offered load on the same topology: 64-byte datagrams from 1024 flows,
//! round-robin over two backends.
//!
//! The rig (namespaces, the in-kernel generator and counting sinks of `bpf/bench_gen.c`, CPU
//! accounting, modes, checks) is `fanout_netbench`, shared with `fanout-bench compare`'s
//! scenario (f); its module docs explain the topology and how each number is obtained. This
//! file only chooses what to run and prints it. Modes are interleaved round by round so that a
//! noisy moment on a shared VM spreads over all of them instead of falling on one.
//!
//! `cargo bench -p fanout-netbench --bench netns_forwarding` measures (3 rounds, 3 s windows, at
//! the generator's maximum and at a fixed lower rate) and prints a markdown table; under
//! `cargo test --all-targets` it runs one short window per mode at a low rate (well under 5 s)
//! and checks that every mode delivered and that the counters add up. Without root it prints
//! `SKIP` and succeeds, or fails with `UDP_FANOUT_REQUIRE_PRIVILEGED=1`.
//!
//! Environment (bench mode): `UF_BENCH_SECS` (window, default 3), `UF_BENCH_ROUNDS` (3),
//! `UF_BENCH_RATE` (the fixed rate, pps, default 150000), `UF_BENCH_GEN_THREADS` (generator
//! threads, one per CPU from CPU 0, default 1).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failed set-up step is a panic that names its cause"
)]

use std::time::{Duration, Instant};

use fanout_netbench::generator::{BATCH, PAYLOAD_LEN, SLICE};
use fanout_netbench::measure::{CHECK_DRAIN, CHECK_RATE, CHECK_WINDOW, DRAIN};
use fanout_netbench::modes::FLOWS;
use fanout_netbench::{self as netbench, Mode, Rig, RigOptions, Traffic, report};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !fanout_testkit::netns::privileged("netns_forwarding") {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let started = Instant::now();
    let mut rig = Rig::new(RigOptions {
        threads: env_num("UF_BENCH_GEN_THREADS", 1).max(1) as usize,
        drain: if bench { DRAIN } else { CHECK_DRAIN },
        external: None,
    })
    .unwrap_or_else(|e| panic!("setting up: {e:#}"));

    if !bench {
        check_mode(&mut rig, started);
        return;
    }

    let dur = Duration::from_secs(env_num("UF_BENCH_SECS", 3));
    let rounds = env_num("UF_BENCH_ROUNDS", 3).max(1);
    let rate = env_num("UF_BENCH_RATE", 150_000);
    let loads: [(String, Option<u64>); 2] = [
        ("generator maximum".into(), None),
        (format!("fixed rate {}k pps", rate / 1000), Some(rate)),
    ];
    let mut results: Vec<(String, Vec<netbench::Sample>)> = Vec::new();
    for (name, load) in &loads {
        let mut samples = Vec::new();
        for r in 0..rounds {
            for mode in Mode::IN_PROCESS {
                let mut s = rig
                    .measure(mode, Traffic::Balance, *load, dur)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", mode.name()));
                s.round = r;
                eprintln!(
                    "[{name}, round {}/{rounds}] {:<40} offered {:>8.0} pps delivered {:>8.0} pps",
                    r + 1,
                    mode.name(),
                    s.offered_pps(),
                    s.delivered_pps()
                );
                samples.push(s);
            }
        }
        results.push((name.clone(), samples));
    }
    println!(
        "\n## netns forwarding: client ns -> lb ns -> 2 backend ns (veth, IPv4, {PAYLOAD_LEN}-byte UDP payload, {FLOWS} flows)\n"
    );
    println!(
        "{rounds} round(s) of {}s windows per load, modes interleaved within a round; medians \
         (min–max) over rounds. Generator: bench_gen, live-frames XDP_TX out of the client veth, \
         {} thread(s) pinned from CPU 0, batch {BATCH}; a fixed rate is paced in jittered slices of {} ms on average.\n\n\
         CPU columns are CPU-ms per million delivered packets (generator only: per million \
         generated). softirq / system / user / total: /proc/stat over all {} CPUs minus the same \
         round's idle window (tick-sampled; noisy when other work shares the machine). \
         \"NET softirq, traced\": NET_RX + NET_TX softirq time measured at softirq entry and \
         exit (raw tracepoints), all CPUs, minus the same round's idle window. \
         \"this process + ksoftirqd\": utime + stime of this process (generator thread, \
         udp-fanout's threads, the softirqs they ran) and of ksoftirqd/N: robust to \
         background load, misses only softirq work that ran on another task's interrupt. \
         \"net of generator\": minus the generator-only row's median.",
        dur.as_secs(),
        rig.threads(),
        SLICE.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    for (name, samples) in &results {
        print!("{}", report::table(name, samples));
    }
    println!("\n### Details\n");
    for (name, samples) in &results {
        println!("{name}:\n{}", report::details(samples));
    }
    println!(
        "(total {:.0}s, load average {})",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// Test mode: one short window per mode at a low rate (no idle window: nothing is
/// subtracted); every mode must deliver everything and its counters add up.
fn check_mode(rig: &mut Rig, started: Instant) {
    let mut failures = Vec::new();
    for mode in Mode::IN_PROCESS.into_iter().filter(|&m| m != Mode::Idle) {
        let s = rig
            .measure(mode, Traffic::Balance, Some(CHECK_RATE), CHECK_WINDOW)
            .unwrap_or_else(|e| panic!("{}: {e:#}", mode.name()));
        let bad = netbench::check_lossless(&s, CHECK_RATE);
        println!(
            "{:<40} offered {:>6} delivered {:>6} {}",
            mode.name(),
            s.offered,
            s.delivered,
            if bad.is_empty() { "ok" } else { "FAILED" }
        );
        failures.extend(bad.into_iter().map(|b| format!("{}: {b}", mode.name())));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "netns_forwarding: all modes delivered, counters add up ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
}
