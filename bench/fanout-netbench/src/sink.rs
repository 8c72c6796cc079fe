//! What counts as delivered: `bench_sink` (XDP in `bpf/bench_gen.c`) on each backend's veth
//! counts and drops the datagrams whose destination is that backend's address and port, and
//! notes whether their IPv4 and UDP checksums verify; anything else is counted as "other" and
//! passed on.
//!
//! The sink is part of what each mode pays: frames the XDP plane redirects arrive at the
//! backend as XDP frames, while forwarded skbs (plain forwarding, tc_ebpf, userspace) go
//! through the veth's skb-to-XDP path first. For the generator-only baseline the same program
//! sits on the load balancer's ingress and counts the datagrams to the VIP in its own slot.

use anyhow::Context as _;
use aya::Pod;
use aya::programs::XdpMode;
use aya::programs::xdp::XdpLinkId;

use crate::object::{BenchObject, SINK_PROGRAM, xdp};
use crate::topology::Topology;

/// Sink slots (bench_gen.c's BENCH_SINK_SLOTS): backend k counts in slot k.
pub const SINK_SLOTS: usize = 8;
/// The slot of frames nobody expected.
pub const SLOT_OTHER: usize = SINK_SLOTS - 1;
/// The slot of the load balancer's ingress (generator only).
pub const SLOT_LB: u32 = 2;

/// `struct bench_sink_key`: destination address and port in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct SinkKey {
    daddr: u32,
    dport: u16,
    pad: u16,
}
// SAFETY: repr(C), integer fields only, no padding (4 + 2 + 2 bytes).
unsafe impl Pod for SinkKey {}

/// `struct bench_sink_stats`: one slot's counts.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SinkStats {
    /// Datagrams for this slot's destination.
    pub packets: u64,
    /// Of those, with a valid IPv4 header checksum and a complete, valid UDP checksum.
    pub csum_ok: u64,
}
// SAFETY: repr(C), two u64 fields, no padding.
unsafe impl Pod for SinkStats {}

impl SinkStats {
    /// The counts since `before`.
    pub fn since(self, before: SinkStats) -> SinkStats {
        SinkStats {
            packets: self.packets.saturating_sub(before.packets),
            csum_ok: self.csum_ok.saturating_sub(before.csum_ok),
        }
    }
}

/// The sink's key for destination `ip:port`.
pub(crate) fn key(ip: [u8; 4], port: u16) -> SinkKey {
    SinkKey {
        daddr: u32::from_ne_bytes(ip),
        dport: port.to_be(),
        pad: 0,
    }
}

impl BenchObject {
    /// Every slot's counts so far (summed over CPUs).
    pub fn sink(&self) -> anyhow::Result<[SinkStats; SINK_SLOTS]> {
        let mut out = [SinkStats::default(); SINK_SLOTS];
        for (slot, o) in out.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(slot as u32), 0)
                .context("reading bench_sink_stats")?;
            for v in per_cpu.iter() {
                o.packets += v.packets;
                o.csum_ok += v.csum_ok;
            }
        }
        Ok(out)
    }

    /// Attaches the sink to the load balancer's ingress (the generator-only baseline).
    pub fn attach_lb_sink(&mut self, t: &Topology) -> anyhow::Result<XdpLinkId> {
        let sink = xdp(&mut self.ebpf, SINK_PROGRAM)?;
        t.lb.enter(|| sink.attach(&t.lb_if, XdpMode::Driver))?
            .with_context(|| format!("attaching the sink to {}", t.lb_if))
    }

    /// Detaches it again.
    pub fn detach_lb_sink(&mut self, id: XdpLinkId) -> anyhow::Result<()> {
        xdp(&mut self.ebpf, SINK_PROGRAM)?
            .detach(id)
            .context("detaching the sink from the load balancer")
    }
}
