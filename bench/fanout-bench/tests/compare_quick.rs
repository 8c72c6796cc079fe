//! `compare --quick` end to end: every scenario against every peer installed here, briefly,
//! through the library entry the CLI uses. It fails when a run fails or its accounting does
//! not add up, never on a speed, and peers that are missing are skipped with the reason (and
//! the install command) printed. Scenario (f), the kernel plane in network namespaces, runs
//! as root (every mode and traffic shape once, counters checked against each other; nginx
//! and Envoy in the load balancer's namespace for balance and heavy flow, the udp-tee (socat
//! broadcast) for the mirror, when installed) and is n/a otherwise.
//!
//! Like `session_scale.rs`, it needs the `udp-fanout` binary where cargo puts it next to this
//! crate's (`target/<profile>/udp-fanout`), and says so and passes without running when it is
//! not there. The quick mode starts no pair after 45 s, so the test ends within about a
//! minute.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fanout_bench::scenarios::compare::{self, CompareConfig, KernelOutcome, Outcome, kernel};

#[test]
fn quick_compare_runs_every_installed_peer_with_consistent_books() {
    let Some(bin) = common::udp_fanout() else {
        return;
    };
    let cfg = CompareConfig::quick(bin);
    let report = compare::run(&cfg, &AtomicBool::new(false)).expect("quick compare");
    for p in &report.peers {
        if let Some(why) = &p.missing {
            eprintln!("skipped peer {}: {why}", p.peer.id());
        }
    }
    println!("{}", report.to_markdown(None));
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.scenarios.len(), 5);
    let mut ran = 0;
    for sc in &report.scenarios {
        for row in &sc.rows {
            match &row.outcome {
                Outcome::Quick(q) => {
                    ran += 1;
                    assert!(q.point.sent > 0, "{} {}", sc.spec.id, row.peer.id());
                }
                Outcome::Missing { .. } | Outcome::NotApplicable { .. } => {}
                other => panic!("{} {}: {other:?}", sc.spec.id, row.peer.id()),
            }
        }
    }
    // direct and udp-fanout are always there: five scenarios each.
    assert!(ran >= 10, "only {ran} runs");
    check_kernel(report.kernel.as_ref());
    assert!(
        report.elapsed < Duration::from_secs(75),
        "{:?}",
        report.elapsed
    );
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["quick"], true);
}

/// (f): as root, every traffic shape through every mode that can carry it (and the generator
/// alone), each delivered and with counters that add up; without root, n/a.
fn check_kernel(k: Option<&KernelOutcome>) {
    let root = nix::unistd::geteuid().is_root();
    match k {
        Some(KernelOutcome::Quick(q)) => {
            assert!(root, "(f) ran without root?");
            // Generator alone; balance and heavy flow through 4 modes and every installed
            // load-balancing proxy (4 at most: nginx and Envoy, two modes each); mirror through
            // 3 and the udp-tee when socat is installed.
            let tee = usize::from(!q.not_installed.contains(&"udp-tee"));
            let peers = 4 - q.not_installed.iter().filter(|p| **p != "udp-tee").count();
            for p in &q.not_installed {
                eprintln!("(f) not run: {p} (not installed)");
            }
            assert_eq!(q.rows.len(), 12 + 2 * peers + tee, "{:#?}", q.rows);
            // The tee mirrors only: both backends get every datagram; no plane counters.
            let tee_rows: Vec<_> = q.rows.iter().filter(|r| r.mode == "udp-tee").collect();
            assert_eq!(tee_rows.len(), tee, "{:#?}", q.rows);
            for r in tee_rows {
                assert_eq!(r.traffic, "mirror");
                assert!(r.plane.is_none());
                assert_eq!(r.expected, 2 * r.offered);
                assert!(r.per_backend.iter().all(|&n| n > 0), "{r:#?}");
            }
            let peer_rows = q
                .rows
                .iter()
                .filter(|r| r.mode.starts_with("nginx") || r.mode.starts_with("envoy"));
            assert_eq!(peer_rows.clone().count(), 2 * peers);
            // No third-party proxy in a mirror; their rows have no plane counters of their own.
            assert!(
                peer_rows
                    .clone()
                    .all(|r| r.traffic != "mirror" && r.plane.is_none())
            );
            // The books: nothing delivered beyond what was offered.
            assert!(
                q.rows.iter().all(|r| r.delivered <= r.expected),
                "{:#?}",
                q.rows
            );
            for r in &q.rows {
                assert!(
                    r.problems.is_empty(),
                    "(f) {} {}: {:?}",
                    r.traffic,
                    r.mode,
                    r.problems
                );
                assert!(
                    r.offered > 0 && r.delivered > 0,
                    "(f) {} {}",
                    r.traffic,
                    r.mode
                );
            }
            let mirror_tc = q
                .rows
                .iter()
                .find(|r| r.traffic == "mirror" && r.mode == "tc_ebpf")
                .expect("tc_ebpf mirror row");
            assert_eq!(mirror_tc.expected, 2 * mirror_tc.offered);
        }
        Some(KernelOutcome::NotApplicable { reason }) => {
            assert!(!root, "(f) skipped as root: {reason}");
            assert_eq!(reason, kernel::NEEDS_ROOT);
            eprintln!("skipped (f): {reason}");
        }
        other => panic!("(f): {other:?}"),
    }
}
