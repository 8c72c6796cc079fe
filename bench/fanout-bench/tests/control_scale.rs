//! The `control` scenario end to end, in miniature, against the real `udp-fanout` binary: a
//! few hundred downstreams, a handful of reloads, one short CPU window per idle daemon.
//!
//! As in `session_scale.rs`, the binary is looked for next to this crate's target directory
//! (`target/<profile>/udp-fanout`); without it the test says so and passes without running.
//!
//! The downstream sets are 127.101.x.y, 127.102.x.y and 127.103.x.y on ports of wildcard-bound
//! receivers this test binds: destinations only, on ephemeral ports, so nothing clashes with
//! the other tests' addresses.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fanout_bench::scenarios::control_scale::{self, ControlScaleConfig};

#[test]
fn a_few_hundred_downstreams_reload_serve_and_are_health_checked() {
    let Some(bin) = common::udp_fanout() else {
        return;
    };
    let mut cfg = ControlScaleConfig::new(bin);
    cfg.downstreams = 300;
    cfg.reloads = 4;
    cfg.watch_reloads = 1;
    cfg.steady_rate_pps = 2_000;
    cfg.steady_flows = 2;
    cfg.baseline = Duration::from_millis(500);
    cfg.cpu_window = Duration::from_millis(1_500);
    cfg.repeats = 1;
    cfg.samples = 2;
    cfg.drain_secs = Some(0);
    let r = control_scale::run(&cfg, &AtomicBool::new(false)).expect("scenario run");
    let md = r.to_markdown();
    println!("{md}");

    let p = r.in_process.as_ref().expect("in-process timings");
    assert_eq!(p.maglev_build_ms.n, 2, "{md}");
    assert!(p.maglev_build_with_draining_ms.is_none(), "{md}");

    let rl = r.reload.as_ref().expect("reload phase");
    assert_eq!(rl.samples.len(), 5, "{md}");
    assert_eq!(rl.timeouts, 0, "{md}");
    assert_eq!(rl.sighup_ms.expect("sighup latencies").n, 4, "{md}");
    assert_eq!(rl.watch_ms.expect("watch latency").n, 1, "{md}");
    // Each SIGHUP after a write is two reloads (the signal's and the watch's), the watch
    // reload one.
    assert_eq!(rl.reloads_logged, 9, "{md}");
    assert_eq!(rl.reloads_metric, (Some(9), Some(0)), "{md}");
    let (sent, a, b) = rl.probe;
    assert!(sent > 0 && a > 0 && b > 0, "{md}");
    assert!(rl.during.sent > 0 && rl.during.received > 0, "{md}");
    assert!(rl.baseline.sent > 0 && rl.baseline.received > 0, "{md}");
    assert!(rl.rss_start_kib > 0, "{md}");

    assert_eq!(r.idle.len(), 3, "{md}");
    let checked = &r.idle[2];
    assert!(checked.health, "{md}");
    assert_eq!(checked.healthy, Some(300), "{md}");
    assert!(checked.all_healthy_s.is_some(), "{md}");
    let (ok, _) = checked.checks.expect("probe counts");
    assert!(ok >= 300, "{md}");
    assert!(
        checked.probes_per_s.expect("probe rate").median > 0.0,
        "{md}"
    );
    assert!(r.idle.iter().all(|i| i.cpu_pct.is_some()), "{md}");

    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["setup"]["downstreams"], 300);
    assert!(json["reload"]["sighup_ms"]["median"].is_f64());
    assert!(
        md.contains("SIGHUP to the first datagram at the new set"),
        "{md}"
    );
}
