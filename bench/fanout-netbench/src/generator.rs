//! The load: `bench_gen` in `bpf/bench_gen.c`, an in-kernel packet generator run with
//! `BPF_PROG_TEST_RUN` in live-frames mode from threads inside the client namespace.
//!
//! Why the load comes from the kernel: one userspace `sendmmsg` sender reaches only
//! ~200-270k datagrams/s over veth on the reference VM, too little to load the kernel plane.
//! Each repeat of a test run rewrites the headers from a template (the source port varies per
//! packet over the configured number of flows, the UDP checksum kept valid) and returns
//! `XDP_TX`, which the test runner turns into a redirect out of the client's veth, so the
//! frame reaches the load balancer's veth as a native XDP frame, as if a NIC had received it.
//! What that takes, measured:
//! - The receiving veth must have NAPI, i.e. an XDP program or GRO on; otherwise the frames
//!   vanish without being counted anywhere (`xdp_xmit_errors` stays 0). The load balancer's
//!   veth gets `gro on` ([`crate::topology`]), and its rx counter is checked against the
//!   generator's count.
//! - One queue per CPU on every veth: a native XDP transmit picks the receiver's ring by the
//!   sending CPU, and two generator threads sharing one 256-frame ring overflow it.
//! - The generator stays attached (generic XDP on a spare veth that is down): a test run with
//!   repeat > 1 otherwise adds the program to the XDP dispatcher and removes it afterwards,
//!   each time waiting for an RCU grace period (~20 ms per call here, 20 µs when attached).
//!
//! The veth's NAPI runs in the softirq raised by the generator's own test run, on its CPU, so
//! at full speed the generator and the receive path share one CPU: the generator sends as fast
//! as the path behind it absorbs, and "offered" at the maximum is that path's capacity on one
//! CPU. A fixed rate is paced in slices of random length around 1 ms, each sending what is due
//! by its end: bursts at a fixed period alias with the scheduler tick (250 Hz here) and vanish
//! from the tick-sampled /proc/stat. Every run is bounded by time and by repeat count.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use aya::Pod;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use crate::object::{BenchObject, GEN_PROGRAM};
use crate::topology::{CLIENT_IP, MAC_CLIENT, MAC_LB, PORT, VIP};
use fanout_testkit::netns::join as join_netns;

/// Ethernet + IPv4 + UDP header: what a template holds (bench_gen.c's BENCH_HDR_LEN).
const HDR_LEN: usize = 42;
/// UDP payload bytes of every generated datagram.
pub const PAYLOAD_LEN: usize = 64;
/// UDP header + payload; bench_gen.c's BENCH_UDP_LEN.
const UDP_LEN: usize = 8 + PAYLOAD_LEN;
/// The source port the templates are built with; flows count up from it.
const SPORT_BASE: u16 = 20000;
/// Frames per live-frames batch (the kernel's maximum is 256; 64 is its NAPI-like default).
pub const BATCH: u32 = 64;
/// Repeats per test-run call at full speed: tens of ms of frames, so stopping is prompt.
const CHUNK: u32 = 32_768;
/// Mean pacing slice for a fixed rate.
pub const SLICE: Duration = Duration::from_millis(1);
/// Upper bound on frames per second and thread, whatever the clock says (a runaway guard).
const MAX_PPS_PER_THREAD: u64 = 5_000_000;

/// `struct bench_gen_cfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GenCfg {
    hdr: [[u8; HDR_LEN]; 2],
    sport_base: u16,
    pad: u16,
    template_mask: u32,
    flow_mask: u32,
    template_shift: u32,
}
const _: () = assert!(std::mem::size_of::<GenCfg>() == 100);
// SAFETY: repr(C) with integer fields only and no padding (size asserted above), so every bit
// pattern is a valid value, as aya's Pod requires.
unsafe impl Pod for GenCfg {}

/// One's-complement sum of big-endian 16-bit words.
fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for c in bytes.chunks(2) {
        let hi = c.first().copied().unwrap_or(0);
        let lo = c.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The payload every generated datagram carries.
fn payload() -> [u8; PAYLOAD_LEN] {
    const TEXT: &[u8] = b"udp-fanout netns forwarding bench ";
    let mut p = [0u8; PAYLOAD_LEN];
    for (b, t) in p.iter_mut().zip(TEXT.iter().cycle()) {
        *b = *t;
    }
    p
}

/// Ethernet + IPv4 + UDP header from the client to `dst`, checksums valid for `payload`.
fn template(dst: [u8; 4], dport: u16, payload: &[u8]) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0..6].copy_from_slice(&MAC_LB);
    h[6..12].copy_from_slice(&MAC_CLIENT);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + UDP_LEN) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&CLIENT_IP);
    ip[16..20].copy_from_slice(&dst);
    let c = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut h[34..42];
    udp[0..2].copy_from_slice(&SPORT_BASE.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&CLIENT_IP);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
    let sum = csum_add(csum_add(csum_add(0, &pseudo), udp), payload);
    let c = match csum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    h
}

/// The frame handed to every test run: a datagram to the VIP.
pub(crate) fn initial_frame() -> Vec<u8> {
    let payload = payload();
    let mut frame = template(VIP, PORT, &payload).to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// Where the generator sends, and from how many source ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aim {
    /// One or two destinations, alternating frame by frame.
    pub dsts: Vec<([u8; 4], u16)>,
    /// Distinct source ports (flows): a power of two, at most 32,768.
    pub flows: u32,
}

impl BenchObject {
    /// Points the generator at `aim`.
    pub fn aim(&mut self, aim: &Aim) -> anyhow::Result<()> {
        let p = payload();
        let first = aim
            .dsts
            .first()
            .ok_or_else(|| anyhow!("the generator needs a destination"))?;
        anyhow::ensure!(
            aim.flows.is_power_of_two() && aim.flows <= 32_768,
            "flows must be a power of two up to 32,768, not {}",
            aim.flows
        );
        let t0 = template(first.0, first.1, &p);
        let t1 = aim.dsts.get(1).map_or(t0, |d| template(d.0, d.1, &p));
        let two = aim.dsts.len() > 1;
        let cfg = GenCfg {
            hdr: [t0, t1],
            sport_base: SPORT_BASE,
            pad: 0,
            template_mask: u32::from(two),
            flow_mask: aim.flows - 1,
            template_shift: u32::from(two),
        };
        self.cfg.set(0, cfg, 0).context("writing bench_gen_cfg")
    }

    /// Frames generated so far (all CPUs).
    pub fn generated(&self) -> anyhow::Result<u64> {
        Ok(self
            .seq
            .get(&0, 0)
            .context("reading bench_gen_seq")?
            .iter()
            .sum())
    }

    /// Sends at `rate` pps (None: as fast as the generator goes) for `dur`, with `threads`
    /// generator threads on CPUs 0, 1, ... inside the namespace `client_ns`; returns (frames
    /// asked for, time the generator ran).
    pub fn generate(
        &self,
        client_ns: &str,
        rate: Option<u64>,
        dur: Duration,
        threads: usize,
    ) -> anyhow::Result<(u64, Duration)> {
        let prog: &Xdp = self
            .ebpf
            .program(GEN_PROGRAM)
            .ok_or_else(|| anyhow!("no generator program"))?
            .try_into()
            .context("the generator is not an XDP program")?;
        let threads = threads.max(1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = MAX_PPS_PER_THREAD * dur.as_millis().max(1) as u64 / 1000;
        let start = Instant::now();
        let sent: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    s.spawn(move || -> anyhow::Result<(u64, Duration)> {
                        join_netns(client_ns)?;
                        let mut set = CpuSet::new();
                        set.set(i % cpus).context("CPU set")?;
                        sched_setaffinity(Pid::from_raw(0), &set)
                            .context("pinning a generator thread")?;
                        let pace = Pace {
                            start,
                            dur,
                            cap,
                            seed: i as u64 + 1,
                        };
                        let sent = match rate {
                            None => pace.flat_out(|n| self.run(prog, n))?,
                            Some(r) => {
                                pace.paced(r as f64 / threads as f64, |n| self.run(prog, n))?
                            }
                        };
                        Ok((sent, start.elapsed()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a generator thread panicked")))
                })
                .collect()
        });
        let mut total = 0;
        let mut active = Duration::ZERO;
        for r in sent {
            let (n, t) = r?;
            total += n;
            active = active.max(t);
        }
        Ok((total, active))
    }

    /// One live-frames test run of `repeat` frames (the caller is in the client namespace).
    fn run(&self, prog: &Xdp, repeat: u32) -> anyhow::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(self.frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.client_ifindex.to_ne_bytes());
        prog.test_run(TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .map_err(|e| anyhow!("live-frames test run: {e:?}"))?;
        Ok(())
    }
}

/// One generator thread's schedule.
struct Pace {
    start: Instant,
    dur: Duration,
    /// Frames at most.
    cap: u64,
    seed: u64,
}

impl Pace {
    /// As fast as `send` goes, in chunks; returns the frames sent.
    fn flat_out(&self, send: impl Fn(u32) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        while self.start.elapsed() < self.dur && sent < self.cap {
            let n = CHUNK.min((self.cap - sent) as u32);
            send(n)?;
            sent += u64::from(n);
        }
        Ok(sent)
    }

    /// At `rate` frames per second, in slices of random length (0.5-1.5 × [`SLICE`]): bursts at
    /// a fixed period would alias with the scheduler tick, which /proc/stat samples. Each slice
    /// sends what is due by its end.
    fn paced(&self, rate: f64, send: impl Fn(u32) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ self.seed;
        let mut next = self.start;
        let mut sent = 0u64;
        while next.duration_since(self.start) < self.dur && sent < self.cap {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let jitter = 0.5 + (rng >> 11) as f64 / (1u64 << 53) as f64;
            next += SLICE.mul_f64(jitter);
            let until = next.duration_since(self.start).min(self.dur);
            let due = (rate * until.as_secs_f64()) as u64;
            let n = due.saturating_sub(sent).min(self.cap - sent) as u32;
            if n > 0 {
                send(n)?;
                sent += u64::from(n);
            }
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_carry_valid_checksums() {
        let p = payload();
        let h = template([10, 77, 1, 2], 7000, &p);
        // The IPv4 header sums to 0xffff with its checksum in place.
        assert_eq!(csum_fold(csum_add(0, &h[14..34])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&CLIENT_IP);
        pseudo[4..8].copy_from_slice(&[10, 77, 1, 2]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
        let sum = csum_add(csum_add(csum_add(0, &pseudo), &h[34..42]), &p);
        assert_eq!(csum_fold(sum), 0);
        assert_eq!(initial_frame().len(), HDR_LEN + PAYLOAD_LEN);
    }
}
