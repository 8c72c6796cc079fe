//! The benchmark's own BPF object, `bpf/bench_gen.c` (compiled by `build.rs` like every
//! `bpf/*.c`): loaded once per rig, its programs put in place and its maps taken out.
//!
//! - `bench_gen` (XDP): the generator, attached in generic mode to the spare veth (see
//!   [`crate::generator`] for why it is attached at all);
//! - `bench_sink` (XDP): the counting sink, attached natively to both backends' veths for the
//!   whole run, and to the load balancer's ingress for the generator-only baseline;
//! - `bench_si_entry` / `bench_si_exit` (raw tracepoints): network softirq time per CPU.
//!
//! Everything is detached when the object is dropped (aya owns the links).

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{RawTracePoint, Xdp, XdpMode};
use aya::{Ebpf, Pod};

use crate::generator::GenCfg;
use crate::sink::{self, SinkKey, SinkStats};
use crate::topology::{BACKEND_PORT, BACKENDS, PORT, Topology, VIP, backend_ip};

/// The generator and sink object.
pub const BENCH_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench_gen.o"));

/// The generator program's name in the object.
pub(crate) const GEN_PROGRAM: &str = "bench_gen";
/// The sink program's name in the object.
pub(crate) const SINK_PROGRAM: &str = "bench_sink";

/// `struct bench_softirq`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct SoftirqTime {
    start: u64,
    /// Nanoseconds in NET_TX, NET_RX.
    pub(crate) ns: [u64; 2],
}
// SAFETY: repr(C), u64 fields only, no padding.
unsafe impl Pod for SoftirqTime {}

/// The loaded programs and their maps.
pub struct BenchObject {
    pub(crate) ebpf: Ebpf,
    pub(crate) cfg: Array<MapData, GenCfg>,
    pub(crate) seq: PerCpuArray<MapData, u64>,
    pub(crate) stats: PerCpuArray<MapData, SinkStats>,
    pub(crate) softirq: PerCpuArray<MapData, SoftirqTime>,
    /// The frame handed to every test run (its header is rewritten by the program anyway).
    pub(crate) frame: Vec<u8>,
    /// The client veth's ifindex, in the client namespace.
    pub(crate) client_ifindex: u32,
}

impl std::fmt::Debug for BenchObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchObject")
            .field("client_ifindex", &self.client_ifindex)
            .finish_non_exhaustive()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map>,
    <T as TryFrom<aya::maps::Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("{name}: no such map in bench_gen.o"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// The XDP program `name` of the object.
pub(crate) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("{name}: no such program in bench_gen.o"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

impl BenchObject {
    /// Loads the object, attaches the generator (to the spare veth), the sinks (to the
    /// backends) and the softirq tracepoints, and fills the sinks' table of expected
    /// destinations.
    pub fn load(t: &Topology) -> anyhow::Result<BenchObject> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading bench_gen.o")?;
        for name in [GEN_PROGRAM, SINK_PROGRAM] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        let cfg = take(&mut ebpf, "bench_gen_cfg")?;
        let seq = take(&mut ebpf, "bench_gen_seq")?;
        let stats = take(&mut ebpf, "bench_sink_stats")?;
        let softirq = take(&mut ebpf, "bench_softirq")?;
        for (name, tp) in [
            ("bench_si_entry", "softirq_entry"),
            ("bench_si_exit", "softirq_exit"),
        ] {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name}: no such program in bench_gen.o"))?
                .try_into()
                .with_context(|| format!("{name} is not a raw tracepoint"))?;
            p.load().with_context(|| format!("loading {name}"))?;
            p.attach(tp)
                .with_context(|| format!("attaching {name} to {tp}"))?;
        }
        let mut expect: HashMap<MapData, SinkKey, u32> = take(&mut ebpf, "bench_sink_expect")?;
        for k in 0..BACKENDS {
            expect
                .insert(sink::key(backend_ip(k), BACKEND_PORT), k as u32, 0)
                .context("filling bench_sink_expect")?;
        }
        expect
            .insert(sink::key(VIP, PORT), sink::SLOT_LB, 0)
            .context("filling bench_sink_expect")?;
        // A test run with repeat > 1 adds its program to the kernel's XDP dispatcher and
        // removes it at the end, and each change waits for an RCU grace period: ~20 ms per
        // call here, longer than a pacing slice. Attached somewhere (generic mode, to a veth
        // that is down and carries nothing), the program stays in the dispatcher and a test
        // run only takes a reference: ~20 µs per call.
        let generator = xdp(&mut ebpf, GEN_PROGRAM)?;
        t.client
            .enter(|| generator.attach(&t.spare_if, XdpMode::Skb))?
            .with_context(|| format!("attaching the generator to {}", t.spare_if))?;
        // The sinks stay on the backends for the whole run.
        let sink_prog = xdp(&mut ebpf, SINK_PROGRAM)?;
        for (b, bif) in t.backends.iter().zip(&t.backend_ifs) {
            b.enter(|| sink_prog.attach(bif, XdpMode::Driver))?
                .with_context(|| format!("attaching the sink to {bif}"))?;
        }
        let client_ifindex = t
            .client
            .enter(|| nix::net::if_::if_nametoindex(t.client_if.as_str()))?
            .with_context(|| format!("ifindex of {}", t.client_if))?;
        Ok(BenchObject {
            ebpf,
            cfg,
            seq,
            stats,
            softirq,
            frame: crate::generator::initial_frame(),
            client_ifindex,
        })
    }

    /// Nanoseconds all CPUs spent in NET_TX and NET_RX softirqs so far.
    pub fn softirq_ns(&self) -> anyhow::Result<u64> {
        Ok(self
            .softirq
            .get(&0, 0)
            .context("reading bench_softirq")?
            .iter()
            .map(|t| t.ns[0] + t.ns[1])
            .sum())
    }
}
