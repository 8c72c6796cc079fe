//! The rise/fall tracker: one per probed downstream, pure (no I/O, no clock), so the rules
//! the contract states are tested here exhaustively and everything above only feeds it
//! results.
//!
//! Rules (HAProxy's `rise`/`fall`, with Envoy's start-up rule):
//!
//! - A target starts [`Health::Unknown`], which the desired state treats as healthy: a new
//!   downstream takes traffic before its first probe, as the contract says.
//! - From `Unknown`, the **first success** makes it `Healthy` (Envoy: "during startup, only a
//!   single successful health check is required to mark a host healthy"). Waiting for `rise`
//!   successes would change nothing for traffic (unknown already gets flows) and would only
//!   delay the first real answer in metrics and the API.
//! - From `Unknown` or `Healthy`, `fall` **consecutive** failures make it `Unhealthy`. An
//!   unknown target is not condemned on its first failure: UDP loses datagrams, and a new
//!   downstream is in the same position as HAProxy's servers, which start up and need `fall`
//!   failures to go down.
//! - From `Unhealthy`, `rise` consecutive successes make it `Healthy` again.
//! - Nothing goes back to `Unknown`; a result of the other kind resets the run.
//!
//! `rise` and `fall` of 0 are treated as 1 (validation should refuse them; this keeps the
//! tracker total anyway).

use crate::desired::Health;

/// Consecutive-result tracker for one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    /// Length of the current run of successes (0 while failing).
    successes: u32,
    /// Length of the current run of failures (0 while passing).
    failures: u32,
}

impl Tracker {
    /// A tracker for a target never probed: [`Health::Unknown`].
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// What the probes say so far.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result under the thresholds `rise` and `fall`; returns the new
    /// health when this result changed it (a transition to report), else `None`.
    pub fn record(&mut self, success: bool, rise: u32, fall: u32) -> Option<Health> {
        let before = self.health;
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            let healthy = match before {
                Health::Unknown => true,
                Health::Unhealthy => self.successes >= rise.max(1),
                Health::Healthy => false,
            };
            if healthy {
                self.health = Health::Healthy;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if before != Health::Unhealthy && self.failures >= fall.max(1) {
                self.health = Health::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(results: &[bool], rise: u32, fall: u32) -> (Tracker, Vec<(usize, Health)>) {
        let mut t = Tracker::new();
        let mut changes = Vec::new();
        for (i, &ok) in results.iter().enumerate() {
            if let Some(h) = t.record(ok, rise, fall) {
                changes.push((i, h));
            }
        }
        (t, changes)
    }

    #[test]
    fn starts_unknown() {
        assert_eq!(Tracker::new().health(), Health::Unknown);
    }

    #[test]
    fn first_success_makes_an_unknown_target_healthy() {
        let (t, changes) = run(&[true], 3, 3);
        assert_eq!(t.health(), Health::Healthy);
        assert_eq!(changes, vec![(0, Health::Healthy)]);
    }

    #[test]
    fn unknown_needs_fall_failures() {
        let (t, changes) = run(&[false, false], 2, 3);
        assert_eq!(t.health(), Health::Unknown);
        assert!(changes.is_empty());
        let (t, changes) = run(&[false, false, false], 2, 3);
        assert_eq!(t.health(), Health::Unhealthy);
        assert_eq!(changes, vec![(2, Health::Unhealthy)]);
    }

    #[test]
    fn fall_counts_consecutive_failures_only() {
        // Healthy, then F F S F F: never three in a row.
        let (t, _) = run(&[true, false, false, true, false, false], 2, 3);
        assert_eq!(t.health(), Health::Healthy);
        let (t, changes) = run(&[true, false, false, true, false, false, false], 2, 3);
        assert_eq!(t.health(), Health::Unhealthy);
        assert_eq!(changes, vec![(0, Health::Healthy), (6, Health::Unhealthy)]);
    }

    #[test]
    fn rise_counts_consecutive_successes_after_unhealthy() {
        let down = [false, false, false];
        let mut seq = down.to_vec();
        seq.extend([true, false, true]);
        let (t, _) = run(&seq, 2, 3);
        assert_eq!(t.health(), Health::Unhealthy, "S F S is not two in a row");
        seq.push(true);
        let (t, changes) = run(&seq, 2, 3);
        assert_eq!(t.health(), Health::Healthy);
        assert_eq!(
            changes,
            vec![(2, Health::Unhealthy), (seq.len() - 1, Health::Healthy)]
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let (t, _) = run(&[true, false], 0, 0);
        assert_eq!(t.health(), Health::Unhealthy);
        let (t, _) = run(&[true, false, true], 0, 0);
        assert_eq!(t.health(), Health::Healthy);
    }

    /// Length of the run of `value` at the end of `results`.
    fn trailing(results: &[bool], value: bool) -> usize {
        results.iter().rev().take_while(|&&r| r == value).count()
    }

    proptest! {
        #[test]
        fn transitions_follow_the_rules(
            results in proptest::collection::vec(any::<bool>(), 0..200),
            rise in 1u32..6,
            fall in 1u32..6,
        ) {
            let mut t = Tracker::new();
            for (i, &ok) in results.iter().enumerate() {
                let before = t.health();
                let change = t.record(ok, rise, fall);
                let after = t.health();
                let seen = &results[..=i];
                // A change is reported exactly when the health changed.
                prop_assert_eq!(change.is_some(), before != after);
                if before != Health::Unknown {
                    prop_assert_ne!(after, Health::Unknown, "never back to Unknown");
                }
                match (before, after) {
                    (Health::Unknown, Health::Healthy) => prop_assert!(ok),
                    (_, Health::Unhealthy) if before != Health::Unhealthy => {
                        prop_assert_eq!(trailing(seen, false), fall as usize);
                    }
                    (Health::Unhealthy, Health::Healthy) => {
                        prop_assert_eq!(trailing(seen, true), rise as usize);
                    }
                    (b, a) => prop_assert_eq!(b, a),
                }
                // The thresholds always win in the end.
                if trailing(seen, false) >= fall as usize {
                    prop_assert_eq!(after, Health::Unhealthy);
                }
                if trailing(seen, true) >= rise as usize {
                    prop_assert_eq!(after, Health::Healthy);
                }
                if seen.iter().any(|&r| r) {
                    prop_assert_ne!(after, Health::Unknown, "a success ends Unknown");
                }
            }
        }
    }
}
