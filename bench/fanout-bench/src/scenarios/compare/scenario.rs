//! The comparison's scenarios: five traffic shapes run through every peer, and the rates each
//! is measured at; and (f), the kernel plane in network namespaces, which has a rig of its own
//! ([`super::kernel`]) and is only named here.
//!
//! Kept as data so that every peer runs exactly the same traffic: the peers only decide how
//! they are wired, never what is sent. The rates are chosen for the small machines the project
//! runs on (two cores shared by the generator, the proxy and the sinks): the fixed rate for
//! latency and CPU is one that every serious peer should carry without loss, and the sweep
//! starts low enough that its first step passes for all but the slowest peers.

use std::fmt;

use serde::Serialize;

/// Parses a comma-separated list of `what`s (blank entries ignored), as `--scenarios` and
/// `--peers` take them: `one` gives the items an entry stands for, or the error for an unknown
/// one. The result is sorted, without repeats, and never empty.
pub(super) fn parse_list<T: Ord>(
    s: &str,
    what: &str,
    one: impl Fn(&str) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        out.extend(one(item)?);
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!("no {what} given"));
    }
    Ok(out)
}

/// One of the comparison's scenarios, `a` to `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ScenarioId {
    /// Load-balance 64-byte datagrams from 64 flows to 2 downstreams.
    A,
    /// One heavy flow to 2 downstreams.
    B,
    /// Mirror 64-byte datagrams to 2 sinks.
    C,
    /// Mirror 64,000-byte datagrams to 2 sinks.
    D,
    /// Request/response through the reply path: 256 clients, 2 echo backends.
    E,
    /// The kernel plane in network namespaces, against plain kernel forwarding (its own rig,
    /// not the peers).
    F,
}

impl ScenarioId {
    /// All scenarios, in order.
    pub const ALL: [ScenarioId; 6] = [Self::A, Self::B, Self::C, Self::D, Self::E, Self::F];

    /// The scenarios run through every peer.
    pub const PEERS: [ScenarioId; 5] = [Self::A, Self::B, Self::C, Self::D, Self::E];

    /// Whether this is (f), which runs on the kernel rig instead of the peers.
    pub fn is_kernel(self) -> bool {
        self == Self::F
    }

    /// The letter used on the command line and in the report.
    pub fn letter(self) -> char {
        match self {
            Self::A => 'a',
            Self::B => 'b',
            Self::C => 'c',
            Self::D => 'd',
            Self::E => 'e',
            Self::F => 'f',
        }
    }

    /// Parses `a,b,c` (case-insensitive).
    pub fn parse_list(s: &str) -> Result<Vec<ScenarioId>, String> {
        parse_list(s, "scenario", |item| {
            Self::ALL
                .into_iter()
                .find(|id| item.eq_ignore_ascii_case(&id.letter().to_string()))
                .map(|id| vec![id])
                .ok_or_else(|| format!("unknown scenario `{item}` (a, b, c, d, e, f)"))
        })
    }

    /// The scenario's traffic and rates.
    pub fn spec(self) -> Spec {
        let base = Spec {
            id: self,
            title: "",
            shape: Shape::Balance,
            size: 64,
            flows: 64,
            fixed_rate: 20_000,
            quick_rate: 4_000,
            sweep_start: 25_000,
            sweep_cap: 3_200_000,
        };
        match self {
            Self::A => Spec {
                title: "load-balance 64-byte datagrams, 64 flows, 2 downstreams",
                ..base
            },
            Self::B => Spec {
                title: "one heavy flow of 64-byte datagrams, 2 downstreams",
                flows: 1,
                ..base
            },
            Self::C => Spec {
                title: "mirror 64-byte datagrams to 2 sinks",
                shape: Shape::Mirror,
                ..base
            },
            Self::D => Spec {
                title: "mirror 64,000-byte datagrams to 2 sinks",
                shape: Shape::Mirror,
                size: 64_000,
                flows: 8,
                fixed_rate: 2_000,
                quick_rate: 100,
                sweep_start: 1_000,
                sweep_cap: 128_000,
                ..base
            },
            Self::E => Spec {
                title: "request/response through the reply path, 256 clients, 2 echo backends",
                shape: Shape::RequestReply,
                flows: 256,
                quick_rate: 1_000,
                sweep_start: 5_000,
                sweep_cap: 1_600_000,
                ..base
            },
            // Measured by its own rig (super::kernel): only the title and size are used.
            Self::F => Spec {
                title: "kernel plane in network namespaces, against plain kernel forwarding",
                flows: fanout_netbench::modes::FLOWS,
                ..base
            },
        }
    }
}

impl fmt::Display for ScenarioId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({})", self.letter())
    }
}

/// What the proxy is asked to do with each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// Send it to one of the two downstreams.
    Balance,
    /// Send a copy to each of the two downstreams.
    Mirror,
    /// Send it to one downstream and relay that downstream's answer back to the client.
    RequestReply,
}

/// The traffic of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Which scenario.
    pub id: ScenarioId,
    /// One line for people.
    pub title: &'static str,
    /// What the proxy does with a datagram.
    pub shape: Shape,
    /// Datagram size in bytes.
    pub size: usize,
    /// Client flows (source sockets).
    pub flows: u32,
    /// Datagrams (requests) per second of the latency and CPU measurement.
    pub fixed_rate: u64,
    /// The one rate of `--quick`.
    pub quick_rate: u64,
    /// First rate of the sweep.
    pub sweep_start: u64,
    /// Highest rate the sweep tries.
    pub sweep_cap: u64,
}

/// Downstreams (sinks) behind the proxy in every scenario.
pub const DOWNSTREAMS: usize = 2;

impl Spec {
    /// Copies of each datagram the sinks should see: 2 for a mirror, 1 otherwise.
    pub fn copies(&self) -> usize {
        match self.shape {
            Shape::Mirror => DOWNSTREAMS,
            Shape::Balance | Shape::RequestReply => 1,
        }
    }

    /// What one datagram per second is called in this scenario's tables.
    pub fn unit(&self) -> &'static str {
        match self.shape {
            Shape::RequestReply => "replies/s",
            Shape::Balance | Shape::Mirror => "datagrams/s",
        }
    }

    /// Payload Gbit/s per sink at `rate` datagrams per second (each sink of a mirror gets
    /// every datagram; a balancer's sinks share them).
    pub fn gbit_per_sink(&self, rate: f64) -> f64 {
        let per_sink = match self.shape {
            Shape::Mirror => rate,
            Shape::Balance | Shape::RequestReply => rate / DOWNSTREAMS as f64,
        };
        per_sink * self.size as f64 * 8.0 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_sorted_and_deduplicated() {
        assert_eq!(
            ScenarioId::parse_list("e,A, c,a").unwrap(),
            vec![ScenarioId::A, ScenarioId::C, ScenarioId::E]
        );
        assert!(ScenarioId::parse_list("g").is_err());
        assert_eq!(ScenarioId::parse_list("f").unwrap(), vec![ScenarioId::F]);
        assert!(ScenarioId::F.is_kernel() && !ScenarioId::PEERS.contains(&ScenarioId::F));
        assert!(ScenarioId::parse_list("").is_err());
    }

    #[test]
    fn specs_match_the_scenarios() {
        let d = ScenarioId::D.spec();
        assert_eq!((d.size, d.copies()), (64_000, 2));
        assert!((d.gbit_per_sink(2_000.0) - 1.024).abs() < 1e-9);
        assert_eq!(ScenarioId::B.spec().flows, 1);
        assert_eq!(ScenarioId::E.spec().unit(), "replies/s");
        assert_eq!(ScenarioId::A.spec().copies(), 1);
    }
}
