//! The sink's bookkeeping: what each received datagram says about the traffic, and the
//! reports built from it.
//!
//! Everything is counted twice over: per receiving port (what one backend of a proxy saw) and,
//! for flows, across all ports of the sink (what the backends saw together). A load-balancing
//! test wants the first to see where datagrams went and the second to check that nothing was
//! delivered twice; a mirroring test expects every datagram on every port, which shows up as
//! duplicates in the combined view and as complete flows per port.
//!
//! Memory stays bounded whatever arrives: flows beyond [`MAX_FLOWS`] (or the sink's own
//! `max_flows`) per table are counted but not tracked, sequence windows are bounded (see `stats::SeqWindow`), and
//! recorded payloads stop at the configured limit, counting what was not kept.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::payload::{self, Header, PayloadError};
use crate::stats::{
    DEFAULT_WINDOW_BITS, FlowStats, FlowTracker, Latency, LatencySummary, Mark, ser_opt_secs,
    ser_secs,
};

/// Most (stream, flow) pairs one table tracks by default; datagrams of further flows are only
/// counted.
pub const MAX_FLOWS: usize = 1 << 16;

/// Per-(stream, flow) trackers with a cap on their number.
#[derive(Debug)]
struct FlowTable {
    map: HashMap<(u32, u32), FlowTracker>,
    cap: usize,
    untracked: u64,
}

impl FlowTable {
    fn new(cap: usize) -> Self {
        FlowTable {
            map: HashMap::new(),
            cap,
            untracked: 0,
        }
    }

    fn record(&mut self, h: &Header, size: usize, latency_ns: u64) -> Option<Mark> {
        let full = self.map.len() >= self.cap;
        let t = match self.map.get_mut(&(h.stream, h.flow)) {
            Some(t) => t,
            None if full => {
                self.untracked += 1;
                return None;
            }
            None => self
                .map
                .entry((h.stream, h.flow))
                .or_insert_with(|| FlowTracker::new(DEFAULT_WINDOW_BITS)),
        };
        Some(t.record(h.seq, size, latency_ns))
    }

    fn stats(&self) -> Vec<FlowStats> {
        let mut v: Vec<FlowStats> = self.map.iter().map(|(&(s, f), t)| t.stats(s, f)).collect();
        v.sort_by_key(|f| (f.stream, f.flow));
        v
    }
}

/// What one receiving socket saw.
#[derive(Debug)]
struct PortState {
    local_addr: SocketAddr,
    datagrams: u64,
    bytes: u64,
    valid: u64,
    short: u64,
    corrupt: u64,
    not_ours: u64,
    truncated: u64,
    echoed: u64,
    echo_errors: u64,
    recv_errors: u64,
    first_rx: Option<Duration>,
    last_rx: Option<Duration>,
    sources: HashMap<SocketAddr, u64>,
    flows: FlowTable,
    latency: Latency,
    records: Vec<Vec<u8>>,
    records_dropped: u64,
}

impl PortState {
    fn new(local_addr: SocketAddr, max_flows: usize) -> Self {
        PortState {
            local_addr,
            datagrams: 0,
            bytes: 0,
            valid: 0,
            short: 0,
            corrupt: 0,
            not_ours: 0,
            truncated: 0,
            echoed: 0,
            echo_errors: 0,
            recv_errors: 0,
            first_rx: None,
            last_rx: None,
            sources: HashMap::new(),
            flows: FlowTable::new(max_flows),
            latency: Latency::new(3),
            records: Vec::new(),
            records_dropped: 0,
        }
    }
}

/// The sink's live state, behind the mutex shared by the serving thread and the handle.
#[derive(Debug)]
pub(crate) struct SinkState {
    ports: Vec<PortState>,
    flows: FlowTable,
    record: bool,
    record_budget: usize,
    /// The settings, kept for [`SinkState::reset`].
    record_limit: usize,
    max_flows: usize,
    error: Option<String>,
}

/// One received datagram, as handed to [`SinkState::account`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival<'a> {
    pub(crate) src: SocketAddr,
    pub(crate) data: &'a [u8],
    pub(crate) truncated: bool,
}

impl SinkState {
    /// State for ports `addrs`; payloads recorded up to `record_limit` bytes if `record`; at
    /// most `max_flows` flows tracked per table.
    pub(crate) fn new(
        addrs: &[SocketAddr],
        record: bool,
        record_limit: usize,
        max_flows: usize,
    ) -> Self {
        let ports = addrs
            .iter()
            .map(|&local_addr| PortState::new(local_addr, max_flows))
            .collect();
        SinkState {
            ports,
            flows: FlowTable::new(max_flows),
            record,
            record_budget: record_limit,
            record_limit,
            max_flows,
            error: None,
        }
    }

    /// Forgets everything counted and recorded, as if just created on the same ports (an
    /// error already reported stays).
    pub(crate) fn reset(&mut self) {
        for p in &mut self.ports {
            *p = PortState::new(p.local_addr, self.max_flows);
        }
        self.flows = FlowTable::new(self.max_flows);
        self.record_budget = self.record_limit;
    }

    /// Accounts one datagram received on `port` at `at` since the sink started, `now_ns` on
    /// the payload clock.
    pub(crate) fn account(&mut self, port: usize, a: Arrival<'_>, at: Duration, now_ns: u64) {
        let Some(p) = self.ports.get_mut(port) else {
            return;
        };
        let len = a.data.len();
        p.datagrams += 1;
        p.bytes += len as u64;
        *p.sources.entry(a.src).or_default() += 1;
        p.first_rx.get_or_insert(at);
        p.last_rx = Some(at);
        if self.record {
            // The Vec header counts too, or a flood of empty datagrams would be free.
            let cost = len + std::mem::size_of::<Vec<u8>>();
            if cost <= self.record_budget {
                self.record_budget -= cost;
                p.records.push(a.data.to_vec());
            } else {
                p.records_dropped += 1;
            }
        }
        if a.truncated {
            p.truncated += 1;
            p.corrupt += 1;
            return;
        }
        let h = match payload::decode(a.data) {
            Ok(h) => h,
            Err(PayloadError::Short) => {
                p.short += 1;
                return;
            }
            Err(PayloadError::NotOurs) => {
                p.not_ours += 1;
                return;
            }
            Err(PayloadError::Corrupt(_)) => {
                p.corrupt += 1;
                return;
            }
        };
        p.valid += 1;
        let latency = now_ns.saturating_sub(h.ts_ns);
        // An untracked flow's datagram (`None`) cannot be checked for duplication; its
        // latency counts all the same, or a sink told to track no flows would have none.
        if matches!(
            p.flows.record(&h, len, latency),
            Some(Mark::New | Mark::TooOld) | None
        ) {
            p.latency.record(latency);
        }
        self.flows.record(&h, len, latency);
    }

    pub(crate) fn add_echoes(&mut self, port: usize, echoed: u64, errors: u64) {
        if let Some(p) = self.ports.get_mut(port) {
            p.echoed += echoed;
            p.echo_errors += errors;
        }
    }

    pub(crate) fn add_recv_error(&mut self, port: usize) {
        if let Some(p) = self.ports.get_mut(port) {
            p.recv_errors += 1;
        }
    }

    pub(crate) fn set_error(&mut self, e: String) {
        self.error = Some(e);
    }

    /// A report of everything so far; `kernel_drops` per port, in port order.
    pub(crate) fn report(&self, elapsed: Duration, kernel_drops: &[Option<u64>]) -> SinkReport {
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortReport {
                local_addr: p.local_addr,
                datagrams: p.datagrams,
                bytes: p.bytes,
                valid: p.valid,
                short: p.short,
                corrupt: p.corrupt,
                not_ours: p.not_ours,
                truncated: p.truncated,
                echoed: p.echoed,
                echo_errors: p.echo_errors,
                recv_errors: p.recv_errors,
                kernel_drops: kernel_drops.get(i).copied().flatten(),
                first_rx: p.first_rx,
                last_rx: p.last_rx,
                sources: p.sources.iter().map(|(&k, &v)| (k, v)).collect(),
                flows: p.flows.stats(),
                untracked: p.flows.untracked,
                latency: p.latency.summary(),
                latency_histogram: p.latency.clone(),
                records: p.records.clone(),
                records_dropped: p.records_dropped,
            })
            .collect();
        SinkReport {
            elapsed,
            ports,
            flows: self.flows.stats(),
            untracked: self.flows.untracked,
            error: self.error.clone(),
        }
    }
}

/// What one receiving socket of the sink saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortReport {
    /// The socket's address.
    pub local_addr: SocketAddr,
    /// Every datagram received, valid or not.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Datagrams with a valid header and payload.
    pub valid: u64,
    /// Datagrams shorter than a header, with correct length-derived filler.
    pub short: u64,
    /// Datagrams that were ours but changed: bad length, checksum or filler, or truncated.
    pub corrupt: u64,
    /// Datagrams without the bench's magic.
    pub not_ours: u64,
    /// Datagrams cut short by the receive buffer slot (also counted as corrupt).
    pub truncated: u64,
    /// Datagrams sent back (with echo on).
    pub echoed: u64,
    /// Echoes that could not be sent.
    pub echo_errors: u64,
    /// Failed receive calls.
    pub recv_errors: u64,
    /// Datagrams the kernel dropped on this socket for lack of buffer space, when known.
    pub kernel_drops: Option<u64>,
    /// When the first datagram arrived, since the sink started (seconds in JSON).
    #[serde(serialize_with = "ser_opt_secs")]
    pub first_rx: Option<Duration>,
    /// When the last datagram arrived, since the sink started.
    #[serde(serialize_with = "ser_opt_secs")]
    pub last_rx: Option<Duration>,
    /// Datagrams per source address.
    pub sources: BTreeMap<SocketAddr, u64>,
    /// Per (stream, flow) statistics of the valid datagrams, sorted.
    pub flows: Vec<FlowStats>,
    /// Valid datagrams of flows beyond the sink's `max_flows`, not tracked per flow.
    pub untracked: u64,
    /// One-way latency of the distinct valid datagrams (and of all valid datagrams of
    /// untracked flows, whose duplicates cannot be told).
    pub latency: Option<LatencySummary>,
    /// The same as a histogram, for merging the ports' latencies (not serialized).
    #[serde(skip)]
    pub latency_histogram: Latency,
    /// With recording on: every received payload, in arrival order, until the memory limit.
    #[serde(skip)]
    pub records: Vec<Vec<u8>>,
    /// Payloads not recorded because the limit was reached.
    pub records_dropped: u64,
}

/// What the sink saw, per port and in total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkReport {
    /// Since the sink started (seconds in JSON).
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
    /// Per receiving socket, in the order they were bound.
    pub ports: Vec<PortReport>,
    /// Per (stream, flow) across all ports: a datagram that reached two ports is a duplicate
    /// here.
    pub flows: Vec<FlowStats>,
    /// Valid datagrams of flows beyond the sink's `max_flows` across all ports.
    pub untracked: u64,
    /// Why the serving thread stopped early, if it did.
    pub error: Option<String>,
}

/// `SinkReport`'s totals: each sums one counter over the ports (`ports.field`) or over the
/// flows across all ports (`flows.field`). One macro, so that every total is the same sum.
macro_rules! totals {
    ($($(#[$doc:meta])* $name:ident = $list:ident . $field:ident;)*) => {
        impl SinkReport {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> u64 {
                    self.$list.iter().map(|x| x.$field).sum()
                }
            )*
        }
    };
}

totals! {
    /// Every datagram received on any port.
    total_datagrams = ports.datagrams;
    /// Payload bytes received on any port.
    total_bytes = ports.bytes;
    /// Valid datagrams on any port.
    total_valid = ports.valid;
    /// Short datagrams on any port.
    total_short = ports.short;
    /// Corrupt datagrams on any port.
    total_corrupt = ports.corrupt;
    /// Foreign datagrams on any port.
    total_not_ours = ports.not_ours;
    /// Echoes sent from any port.
    total_echoed = ports.echoed;
    /// Distinct datagrams across all ports (each counted once however many ports it reached).
    total_unique = flows.unique;
    /// Datagrams received again, on the same or another port.
    total_duplicates = flows.duplicates;
    /// Distinct datagrams that arrived after a higher sequence number of their flow (across
    /// all ports).
    total_reordered = flows.reordered;
    /// Gaps below each flow's highest sequence number (across all ports).
    total_lost = flows.lost;
}

impl SinkReport {
    /// The report of the port bound to `addr`.
    pub fn port(&self, addr: SocketAddr) -> Option<&PortReport> {
        self.ports.iter().find(|p| p.local_addr == addr)
    }

    /// One flow's statistics across all ports.
    pub fn flow(&self, stream: u32, flow: u32) -> Option<&FlowStats> {
        self.flows
            .iter()
            .find(|f| f.stream == stream && f.flow == flow)
    }

    /// From the first datagram on any port to the last one.
    pub fn active(&self) -> Duration {
        let first = self.ports.iter().filter_map(|p| p.first_rx).min();
        let last = self.ports.iter().filter_map(|p| p.last_rx).max();
        match (first, last) {
            (Some(f), Some(l)) => l.saturating_sub(f),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(data: &[u8]) -> Arrival<'_> {
        Arrival {
            src: "127.0.0.1:5000".parse().unwrap(),
            data,
            truncated: false,
        }
    }

    #[test]
    fn classifies_and_counts_every_kind_of_datagram() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let mut s = SinkState::new(&addrs, false, 0, MAX_FLOWS);
        let now = payload::now_ns();
        let good = payload::expected(100, 9, 0, 0, now);
        let mut bad = good.clone();
        bad[50] ^= 1;
        let t = Duration::from_millis(1);
        s.account(0, arrival(&good), t, now);
        s.account(0, arrival(&good), t, now);
        s.account(0, arrival(&bad), t, now);
        s.account(0, arrival(&payload::expected(5, 0, 0, 0, 0)), t, now);
        s.account(0, arrival(&[0u8; 64]), t, now);
        s.account(
            0,
            Arrival {
                truncated: true,
                ..arrival(&good)
            },
            t,
            now,
        );
        let r = s.report(Duration::from_secs(1), &[]);
        let p = &r.ports[0];
        assert_eq!(
            (
                p.datagrams,
                p.valid,
                p.corrupt,
                p.short,
                p.not_ours,
                p.truncated
            ),
            (6, 2, 2, 1, 1, 1)
        );
        assert_eq!(r.total_unique(), 1);
        assert_eq!(r.total_duplicates(), 1);
        assert_eq!(p.sources.values().sum::<u64>(), 6);
        assert_eq!(p.latency.unwrap().count, 1);
    }

    #[test]
    fn recording_stops_at_the_limit_and_counts_the_rest() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let per = 100 + std::mem::size_of::<Vec<u8>>();
        let mut s = SinkState::new(&addrs, true, per * 3, MAX_FLOWS);
        let d = payload::expected(100, 1, 0, 0, 0);
        for _ in 0..5 {
            s.account(0, arrival(&d), Duration::ZERO, 0);
        }
        let r = s.report(Duration::ZERO, &[]);
        assert_eq!(r.ports[0].records.len(), 3);
        assert_eq!(r.ports[0].records_dropped, 2);
    }

    #[test]
    fn flows_beyond_the_cap_are_counted_not_tracked() {
        let mut t = FlowTable::new(MAX_FLOWS);
        for flow in 0..MAX_FLOWS as u32 + 3 {
            let h = Header {
                stream: 1,
                flow,
                seq: 0,
                ts_ns: 0,
                len: 40,
            };
            t.record(&h, 40, 0);
        }
        assert_eq!(t.map.len(), MAX_FLOWS);
        assert_eq!(t.untracked, 3);
    }

    #[test]
    fn a_sink_tracking_no_flows_still_counts_and_times_everything() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let mut s = SinkState::new(&addrs, false, 0, 0);
        let src: SocketAddr = "127.0.0.1:2".parse().unwrap();
        for flow in 0..10 {
            let mut buf = vec![0u8; 64];
            payload::encode(&mut buf, 9, flow, 0, payload::now_ns());
            let a = Arrival {
                src,
                data: &buf,
                truncated: false,
            };
            s.account(0, a, Duration::ZERO, payload::now_ns());
        }
        let r = s.report(Duration::from_secs(1), &[None]);
        assert_eq!(r.ports[0].valid, 10);
        assert!(r.flows.is_empty() && r.ports[0].flows.is_empty());
        assert_eq!((r.untracked, r.ports[0].untracked), (10, 10));
        assert_eq!(r.ports[0].latency.map(|l| l.count), Some(10));
    }

    #[test]
    fn reset_forgets_everything_but_the_ports() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let per = 100 + std::mem::size_of::<Vec<u8>>();
        let mut s = SinkState::new(&addrs, true, per, MAX_FLOWS);
        let d = payload::expected(100, 1, 0, 0, 0);
        s.account(0, arrival(&d), Duration::ZERO, 0);
        s.account(0, arrival(&d), Duration::ZERO, 0);
        s.reset();
        let r = s.report(Duration::ZERO, &[]);
        assert_eq!(r.ports[0].local_addr, addrs[0]);
        assert_eq!((r.ports[0].datagrams, r.total_unique()), (0, 0));
        assert!(r.ports[0].latency_histogram.summary().is_none());
        s.account(0, arrival(&d), Duration::ZERO, 0);
        let r = s.report(Duration::ZERO, &[]);
        assert_eq!((r.ports[0].records.len(), r.total_unique()), (1, 1));
    }

    #[test]
    fn report_serializes_to_json() {
        let addrs: Vec<SocketAddr> = vec!["[::1]:1".parse().unwrap()];
        let mut s = SinkState::new(&addrs, false, 0, MAX_FLOWS);
        let d = payload::expected(64, 1, 2, 3, 4);
        s.account(0, arrival(&d), Duration::from_millis(5), 10);
        let v = serde_json::to_value(s.report(Duration::from_secs(2), &[Some(0)])).unwrap();
        assert_eq!(v["elapsed"], 2.0);
        assert_eq!(v["ports"][0]["sources"]["127.0.0.1:5000"], 1);
        assert_eq!(v["ports"][0]["first_rx"], 0.005);
        assert_eq!(v["flows"][0]["flow"], 2);
    }
}
