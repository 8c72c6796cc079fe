//! The `sessions` scenario end to end, in miniature, against the real `udp-fanout` binary.
//!
//! Cargo only tells a crate's own tests where that crate's binaries are, so this test looks
//! for `udp-fanout` where cargo puts it, next to this crate's: the test executable is
//! `target/<profile>/deps/session_scale-HASH`, the binary `target/<profile>/udp-fanout`. It is
//! there when the whole workspace is built or tested; when it is not (`cargo test -p
//! fanout-bench` alone on a fresh checkout), the test says so and passes without running.
//!
//! The clients use 127.0.78.x and 127.0.79.x on ports 22000–24999, away from the other tests'
//! addresses.

use std::net::Ipv4Addr;
mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fanout_bench::scenarios::session_scale::{self, SessionScaleConfig};

/// The miniature: 2,000 sessions, 2 backends, a 1 s throughput phase.
fn mini(bin: PathBuf, first_client: Ipv4Addr) -> SessionScaleConfig {
    let mut cfg = SessionScaleConfig::new(bin);
    cfg.sessions = 2_000;
    cfg.downstreams = 2;
    cfg.fill_rate_pps = 20_000;
    cfg.duration = Duration::from_secs(1);
    cfg.client_ip_base = first_client;
    cfg.client_ports = (22_000, 24_999);
    cfg
}

macro_rules! binary_or_skip {
    () => {
        match common::udp_fanout() {
            Some(bin) => bin,
            None => return,
        }
    };
}

#[test]
fn two_thousand_sessions_are_created_answered_and_reported() {
    let bin = binary_or_skip!();
    let cfg = mini(bin, Ipv4Addr::new(127, 0, 78, 1));
    let r = session_scale::run(&cfg, &AtomicBool::new(false)).expect("scenario run");
    let md = r.to_markdown();
    assert_eq!(r.fill.metrics.sessions_active, 2_000, "{md}");
    assert_eq!(r.fill.clients.sent, 2_000, "{md}");
    assert_eq!(r.fill.clients.replies, 2_000, "{md}");
    assert_eq!(r.fill.metrics.sessions_created, 2_000, "{md}");
    assert_eq!(r.per_session.sessions, 2_000);
    // Upstream sockets are opened per session and backend, at most one per session.
    assert!(r.per_session.upstream_sockets > 0, "{md}");
    assert!(r.per_session.upstream_sockets <= 2_000, "{md}");
    let t = r.throughput.as_ref().expect("throughput phase");
    assert!(t.clients.sent > 0 && t.clients.replies > 0, "{md}");
    assert_eq!(t.metrics.sessions_active, 2_000, "{md}");
    assert!(r.shutdown.status.contains("exit status: 0"), "{md}");
    assert!(md.contains("| sessions active | 2,000 of 2,000 |"), "{md}");
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["fill"]["metrics"]["sessions_active"], 2_000);
    assert!(json["throughput"]["clients"]["rtt"]["p99_ns"].is_u64());
    assert_eq!(json["setup"]["client_groups"], 1);
    println!("{md}");
}

#[test]
fn clients_run_in_groups_keep_their_sessions() {
    let bin = binary_or_skip!();
    let mut cfg = mini(bin, Ipv4Addr::new(127, 0, 79, 1));
    cfg.max_group = Some(700);
    let r = session_scale::run(&cfg, &AtomicBool::new(false)).expect("scenario run");
    let md = r.to_markdown();
    assert_eq!(r.setup.client_groups, 3, "{md}");
    assert_eq!(r.setup.client_ips.len(), 3, "{md}");
    assert_eq!(r.fill.clients.replies, 2_000, "{md}");
    assert_eq!(r.fill.metrics.sessions_active, 2_000, "{md}");
    let t = r.throughput.as_ref().expect("throughput phase");
    // The groups reuse their addresses: the throughput phase creates no sessions.
    assert_eq!(t.metrics.sessions_created, 2_000, "{md}");
    assert_eq!(t.metrics.sessions_active, 2_000, "{md}");
    assert!(t.clients.replies > 0, "{md}");
    assert!(md.contains("in 3 groups of up to 667"), "{md}");
}
