//! The `udp-fanout` peer: the real daemon, userspace plane, default workers (one per core),
//! started on a generated config with [`Daemon`] as the other scenarios do. Balancing is
//! `round_robin` without sessions (each datagram on its own), mirroring is `mirror`, and the
//! reply path is `round_robin` with `session: {reply: true}` (sticky by default). The metrics
//! endpoint is on, on a loopback port, so each measurement also reads the daemon's own account
//! of what it received, forwarded and dropped.

use std::time::Duration;

use super::super::rig::{Ctx, Proxy, Rig, loopback_sinks};
use super::super::scenario::{Shape, Spec};
use fanout_testkit::daemon::Daemon;

/// Extra `dataplane:` settings for the daemon under test, as a YAML flow mapping (for example
/// `{gso: false}` or `{workers: 1, busy_poll_us: 50}`), to measure what one setting buys with
/// the same harness. Unset: the defaults, which is what the published table uses.
pub const DATAPLANE_ENV: &str = "UDP_FANOUT_BENCH_DATAPLANE";

/// The daemon's config for `spec` with the sinks at `sinks`.
pub(super) fn yaml(spec: &Spec, sinks: &[std::net::SocketAddr]) -> String {
    let dataplane = std::env::var(DATAPLANE_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| format!("dataplane: {v}\n"))
        .unwrap_or_default();
    let downstreams: Vec<String> = sinks.iter().map(|a| format!("'{a}'")).collect();
    let (distribution, session) = match spec.shape {
        Shape::Balance => ("round_robin", ""),
        Shape::Mirror => ("mirror", ""),
        Shape::RequestReply => ("round_robin", "\n    session: {reply: true}"),
    };
    format!(
        "listeners:\n  - name: bench\n    bind: '127.0.0.1:0'\n    distribution: {distribution}\n    \
         downstreams: [{}]{session}\nmetrics: {{bind: '127.0.0.1:0'}}\n{dataplane}",
        downstreams.join(", ")
    )
}

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let daemon = Daemon::start(
        ctx.udp_fanout,
        &yaml(spec, sinks.local_addrs()),
        ctx.startup,
    )?;
    let target = daemon.listener("bench")?;
    let mut rig = Rig::loopback(Proxy::Fanout(Box::new(daemon)), sinks, target, ctx);
    rig.wait_ready(spec, ctx.startup.max(Duration::from_secs(1)))?;
    Ok(rig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::compare::scenario::ScenarioId;

    #[test]
    fn configs_follow_the_scenario() {
        let (_, s) = super::super::test_addrs();
        let a = yaml(&ScenarioId::A.spec(), &s);
        fanout_testkit::assert_contains(
            &a,
            &[
                "distribution: round_robin",
                "downstreams: ['127.0.0.1:1', '127.0.0.1:2']",
            ],
        );
        assert!(!a.contains("session"), "{a}");
        assert!(yaml(&ScenarioId::D.spec(), &s).contains("distribution: mirror"));
        assert!(yaml(&ScenarioId::E.spec(), &s).contains("session: {reply: true}"));
    }
}
