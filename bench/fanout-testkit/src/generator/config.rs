//! The generator's settings: what to send, where, how fast, and from which addresses; and the
//! checks that make an impossible run fail before it opens a socket.
//!
//! Kept apart from the sending loop because it is the part callers touch: every test and
//! benchmark builds a [`GenConfig`], few read how it is carried out.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::slice;
use std::time::Duration;

use fanout_userspace::sys::MAX_DATAGRAM;

use super::MAX_BATCH;
use crate::payload::{self, MAX_V4_PAYLOAD};

/// What to send, where, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenConfig {
    /// Where every datagram goes.
    pub target: SocketAddr,
    /// Datagrams per second over all flows; 0 = as fast as possible.
    pub rate_pps: u64,
    /// Distinct source sockets (source ports); at least 1.
    pub flows: u32,
    /// Datagram sizes, cycled per datagram; each 0..=65,507 (65,527 over IPv6).
    pub sizes: Vec<usize>,
    /// Total datagrams to send.
    pub count: Option<u64>,
    /// Longest run time. At least one of `count` and `duration` must be set.
    pub duration: Option<Duration>,
    /// Datagrams per `sendmmsg`, 1..=[`MAX_BATCH`].
    pub batch: usize,
    /// Address the flow sockets bind to (with port 0) when `bind_ips` is empty.
    pub bind_ip: IpAddr,
    /// Addresses the flow sockets bind to, flow `i` on `bind_ips[i % len]`; empty: all on
    /// `bind_ip`. More addresses give more distinct clients than one IP has ports.
    pub bind_ips: Vec<IpAddr>,
    /// Explicit source ports (inclusive range), taken in order on each IP and skipping busy
    /// ones, so that runs with the same settings reuse the same client addresses; `None`:
    /// ephemeral ports.
    pub bind_ports: Option<(u16, u16)>,
    /// Identifies this run in every datagram.
    pub stream_id: u32,
    /// Receive echoed datagrams on the flow sockets and measure their latency.
    pub expect_replies: bool,
    /// How long to wait for outstanding replies after the last send.
    pub reply_grace: Duration,
    /// SO_SNDBUF and SO_RCVBUF of each flow socket, in bytes (0 = kernel default).
    pub socket_buffer: usize,
    /// More destinations besides `target`. Without `copy_to_all_targets`, flow `i` sends to
    /// element `i % n` of `[target, extra_targets…]` (the flows are split over them, as a
    /// balancer would); with it, every datagram goes to each of them. This lets a benchmark
    /// send straight to a proxy's backends, the ceiling the proxy is compared with.
    pub extra_targets: Vec<SocketAddr>,
    /// Send every datagram to every target (a mirror without a proxy). `sent` and the
    /// per-flow counts are those of the copies to `target`; failed further copies are
    /// counted in `GenReport::copy_send_errors`. Not combinable with `expect_replies`.
    pub copy_to_all_targets: bool,
}

impl GenConfig {
    /// Defaults: unlimited rate, 1 flow, 64-byte datagrams, batches of 32, no count or
    /// duration (set one), a random stream id, no replies (500 ms grace when enabled), 4 MiB
    /// socket buffers. The flow sockets bind to loopback when the target is on loopback and to
    /// the unspecified address otherwise, so that the kernel picks a source that can reach it;
    /// on ephemeral ports.
    pub fn new(target: SocketAddr) -> Self {
        let bind_ip = match (target.ip(), target.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        GenConfig {
            target,
            rate_pps: 0,
            flows: 1,
            sizes: vec![64],
            count: None,
            duration: None,
            batch: 32,
            bind_ip,
            bind_ips: Vec::new(),
            bind_ports: None,
            stream_id: random_stream_id(),
            expect_replies: false,
            reply_grace: Duration::from_millis(500),
            socket_buffer: 4 << 20,
            extra_targets: Vec::new(),
            copy_to_all_targets: false,
        }
    }

    /// Every destination: `target` first, then `extra_targets`.
    pub fn all_targets(&self) -> Vec<SocketAddr> {
        std::iter::once(self.target)
            .chain(self.extra_targets.iter().copied())
            .collect()
    }

    /// Checks that the run is bounded and every datagram can be sent.
    pub fn validate(&self) -> io::Result<()> {
        let max = if self.target.is_ipv4() {
            MAX_V4_PAYLOAD
        } else {
            MAX_DATAGRAM
        };
        let problem = if self.flows == 0 {
            Some("flows must be at least 1".to_owned())
        } else if self.sizes.is_empty() {
            Some("at least one datagram size is needed".to_owned())
        } else if let Some(s) = self.sizes.iter().find(|&&s| s > max) {
            Some(format!("size {s} exceeds the largest UDP payload ({max})"))
        } else if self.count.is_none() && self.duration.is_none() {
            Some("a count or a duration is needed: runs are bounded".to_owned())
        } else if self.batch == 0 || self.batch > MAX_BATCH {
            Some(format!("batch must be 1..={MAX_BATCH}"))
        } else if let Some(ip) = self
            .source_ips()
            .iter()
            .find(|ip| ip.is_ipv4() != self.target.is_ipv4())
        {
            Some(format!(
                "source address {ip} and target {} are of different address families",
                self.target
            ))
        } else if let Some(t) = self
            .extra_targets
            .iter()
            .find(|t| t.is_ipv4() != self.target.is_ipv4())
        {
            Some(format!(
                "extra target {t} and target {} are of different address families",
                self.target
            ))
        } else if self.copy_to_all_targets && self.expect_replies {
            Some("replies cannot be matched when every datagram goes to every target".to_owned())
        } else {
            self.port_range_problem()
        };
        match problem {
            Some(p) => Err(io::Error::new(io::ErrorKind::InvalidInput, p)),
            None => Ok(()),
        }
    }
}

impl GenConfig {
    /// The addresses the flow sockets bind to, flow `i` on element `i % len`.
    pub fn source_ips(&self) -> &[IpAddr] {
        if self.bind_ips.is_empty() {
            slice::from_ref(&self.bind_ip)
        } else {
            &self.bind_ips
        }
    }

    /// What is wrong with `bind_ports`, if anything: an empty range, port 0, or fewer ports
    /// than the busiest IP has flows.
    fn port_range_problem(&self) -> Option<String> {
        let (lo, hi) = self.bind_ports?;
        if lo == 0 || lo > hi {
            return Some(format!(
                "bind_ports {lo}-{hi} is not a range of ports 1..=65535"
            ));
        }
        let ports = u64::from(hi - lo) + 1;
        let ips = self.source_ips().len() as u64;
        let per_ip = u64::from(self.flows).div_ceil(ips);
        (per_ip > ports).then(|| {
            format!(
                "{} flows over {ips} source IPs need {per_ip} ports per IP, but bind_ports                  {lo}-{hi} has {ports}",
                self.flows
            )
        })
    }
}

/// A stream id that differs between runs, so a sink can tell runs apart (and a late datagram
/// of a previous run is not mistaken for one of this run). `RandomState` is std's source of
/// per-process random keys, which avoids a dependency on a random number crate.
pub fn random_stream_id() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(payload::now_ns());
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// One datagram to the discard port on loopback: the run the generator's unit tests vary.
#[cfg(test)]
pub(super) fn test_config() -> GenConfig {
    let mut c = GenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
    c.count = Some(1);
    c
}

#[cfg(test)]
mod tests {
    use super::test_config as cfg;
    use super::*;

    #[test]
    fn defaults_follow_the_target_family() {
        assert_eq!(cfg().bind_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let c = GenConfig::new("[::1]:9".parse().unwrap());
        assert_eq!(c.bind_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let c = GenConfig::new("192.0.2.1:9".parse().unwrap());
        assert_eq!(c.bind_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn validation_rejects_unbounded_and_impossible_runs() {
        assert!(cfg().validate().is_ok());
        let bad = [
            GenConfig {
                count: None,
                ..cfg()
            },
            GenConfig { flows: 0, ..cfg() },
            GenConfig {
                sizes: vec![],
                ..cfg()
            },
            GenConfig {
                sizes: vec![65_508],
                ..cfg()
            },
            GenConfig { batch: 0, ..cfg() },
            GenConfig {
                batch: MAX_BATCH + 1,
                ..cfg()
            },
            GenConfig {
                bind_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ..cfg()
            },
            GenConfig {
                bind_ips: vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                ..cfg()
            },
            GenConfig {
                bind_ports: Some((0, 10)),
                ..cfg()
            },
            GenConfig {
                extra_targets: vec!["[::1]:9".parse().unwrap()],
                ..cfg()
            },
            GenConfig {
                extra_targets: vec!["127.0.0.1:10".parse().unwrap()],
                copy_to_all_targets: true,
                expect_replies: true,
                ..cfg()
            },
            GenConfig {
                bind_ports: Some((20, 10)),
                ..cfg()
            },
            // 7 flows over 2 IPs: 4 on the first, which has only 3 ports.
            GenConfig {
                flows: 7,
                bind_ips: vec![[127, 0, 0, 1].into(), [127, 0, 0, 2].into()],
                bind_ports: Some((10_000, 10_002)),
                ..cfg()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{c:?}");
        }
    }

    #[test]
    fn port_ranges_that_just_fit_are_accepted() {
        let c = GenConfig {
            flows: 6,
            bind_ips: vec![[127, 0, 0, 1].into(), [127, 0, 0, 2].into()],
            bind_ports: Some((10_000, 10_002)),
            ..cfg()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.source_ips().len(), 2);
        assert_eq!(cfg().source_ips(), &[cfg().bind_ip]);
    }

    #[test]
    fn stream_ids_differ() {
        assert_ne!(random_stream_id(), random_stream_id());
    }
}
