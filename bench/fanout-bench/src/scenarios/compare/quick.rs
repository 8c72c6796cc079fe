//! The quick mode's checks: did a brief run through a peer complete, and do the books balance?
//!
//! The quick mode exists to keep the harness itself honest in CI, where timing is anything
//! but stable, so it never judges a speed (loss at a modest rate is reported, not failed).
//! What it does fail on is accounting that does not add up: a copy whose "sent = received +
//! lost" differs between the generator's and the sink's books, a sequence number that was
//! never sent, a corrupt, duplicated or foreign datagram from a peer that keeps datagram
//! boundaries, or udp-fanout's own counters disagreeing with what was sent and received.
//! Anomalies of peers known to convert datagrams through a fixed buffer (socat) are reported
//! as warnings instead.

use super::measure::{FanoutCounters, Point};
use super::peers::PeerId;
use super::scenario::{Shape, Spec};

/// Problems (failures) and warnings about one quick run.
pub(crate) fn check(spec: &Spec, peer: PeerId, p: &Point) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut anomalies = Vec::new();
    if p.sent == 0 {
        problems.push("the generator sent nothing".to_owned());
    }
    copy_checks(p, &mut problems, &mut anomalies);
    let a = &p.anomalies;
    for (n, what) in [
        (a.corrupt, "corrupt"),
        (a.short, "short"),
        (a.not_ours, "foreign"),
        (a.reply_invalid, "invalid replies"),
        (a.reply_duplicates, "duplicate replies"),
    ] {
        if n > 0 {
            anomalies.push(format!("{n} {what}"));
        }
    }
    if spec.shape == Shape::Balance {
        let at_sinks: u64 = p.split.iter().sum();
        let received = p.copies.first().map_or(0, |c| c.received);
        if at_sinks != received {
            anomalies.push(format!(
                "{at_sinks} datagrams at the sinks but {received} distinct: some reached both"
            ));
        }
    }
    if let Some(r) = p.replies {
        if r == 0 && p.sent > 0 {
            problems.push("no replies came back".to_owned());
        }
        if r > p.sent {
            problems.push(format!("{r} replies to {} requests", p.sent));
        }
    }
    if let Some(f) = &p.fanout {
        problems.extend(fanout_books(spec, p, f));
    }
    match peer.known_boundary_caveat() {
        Some(why) if !anomalies.is_empty() => {
            let warnings = anomalies
                .into_iter()
                .map(|x| format!("{x} (known for this peer: {why})"))
                .collect();
            (problems, warnings)
        }
        _ => {
            problems.extend(anomalies);
            (problems, Vec::new())
        }
    }
}

/// The per-copy books: something arrived, both counts of the loss agree, nothing arrived
/// that was never sent; duplicates are anomalies.
fn copy_checks(p: &Point, problems: &mut Vec<String>, anomalies: &mut Vec<String>) {
    for (i, c) in p.copies.iter().enumerate() {
        let which = if p.copies.len() > 1 {
            format!("sink {}", i + 1)
        } else {
            "the sinks".to_owned()
        };
        if c.received == 0 && p.sent > 0 {
            problems.push(format!("{which} received nothing of {} sent", p.sent));
        }
        if c.lost_by_sink != c.lost as i64 {
            problems.push(format!(
                "{which}: sent {} = received {} + lost {} by the generator's count, but the \
                 sink's sequence numbers say {} lost",
                p.sent, c.received, c.lost, c.lost_by_sink
            ));
        }
        if c.beyond_sent > 0 {
            problems.push(format!(
                "{which}: {} datagrams with sequence numbers never sent",
                c.beyond_sent
            ));
        }
        if c.duplicates > 0 {
            anomalies.push(format!("{which}: {} duplicates", c.duplicates));
        }
    }
}

/// udp-fanout's counters against the traffic: every datagram sent was received or dropped
/// by the kernel at the listener; every received one was forwarded or dropped, once per copy;
/// every forwarded copy reached a sink or was dropped at the sink's socket.
fn fanout_books(spec: &Spec, p: &Point, f: &FanoutCounters) -> Vec<String> {
    let mut out = Vec::new();
    if f.received + f.socket_drops != p.sent {
        out.push(format!(
            "udp-fanout: received {} + socket drops {} != {} sent",
            f.received, f.socket_drops, p.sent
        ));
    }
    let copies = spec.copies() as u64;
    if copies * f.received != f.forwarded + f.dropped_total() {
        out.push(format!(
            "udp-fanout: {copies} x received {} != forwarded {} + dropped {:?}",
            f.received, f.forwarded, f.dropped
        ));
    }
    let at_sinks: u64 = p.copies.iter().map(|c| c.received).sum();
    if at_sinks > f.forwarded || at_sinks + p.sink_kernel_drops < f.forwarded {
        out.push(format!(
            "udp-fanout forwarded {} but the sinks received {at_sinks} (and dropped {})",
            f.forwarded, p.sink_kernel_drops
        ));
    }
    if let Some(r) = p.replies
        && r > f.replies
    {
        out.push(format!(
            "{r} replies arrived but udp-fanout relayed {}",
            f.replies
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::compare::measure::CopyCount;
    use crate::scenarios::compare::scenario::ScenarioId;

    fn point(received: u64, sent: u64) -> Point {
        Point {
            rate: 1000,
            achieved_pps: 1000.0,
            sent,
            copies: vec![CopyCount {
                received,
                lost: sent - received,
                lost_by_sink: (sent - received) as i64,
                ..CopyCount::default()
            }],
            split: vec![received / 2, received - received / 2],
            ..Point::default()
        }
    }

    #[test]
    fn consistent_books_pass_and_inconsistent_ones_fail() {
        let spec = ScenarioId::A.spec();
        let ok = point(100, 100);
        assert_eq!(check(&spec, PeerId::NginxSession, &ok), (vec![], vec![]));
        let mut bad = point(90, 100);
        bad.copies[0].lost_by_sink = 3;
        let (p, _) = check(&spec, PeerId::NginxSession, &bad);
        assert!(p[0].contains("sink's sequence numbers say 3"), "{p:?}");
        let mut corrupt = point(100, 100);
        corrupt.anomalies.corrupt = 2;
        assert_eq!(check(&spec, PeerId::EnvoySession, &corrupt).0.len(), 1);
        let (p, w) = check(&spec, PeerId::Socat, &corrupt);
        assert!(
            p.is_empty() && w[0].contains("known for this peer"),
            "{w:?}"
        );
    }

    #[test]
    fn udp_fanout_counters_must_match_the_traffic() {
        let spec = ScenarioId::A.spec();
        let mut p = point(100, 100);
        p.fanout = Some(FanoutCounters {
            received: 100,
            forwarded: 100,
            ..FanoutCounters::default()
        });
        assert!(check(&spec, PeerId::UdpFanout, &p).0.is_empty());
        p.fanout = Some(FanoutCounters {
            received: 99,
            forwarded: 100,
            ..FanoutCounters::default()
        });
        assert_eq!(check(&spec, PeerId::UdpFanout, &p).0.len(), 2);
    }
}
