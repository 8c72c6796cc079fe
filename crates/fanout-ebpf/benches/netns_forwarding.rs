//! End to end in network namespaces, in one run: packets per second and CPU per million packets
//! of plain kernel forwarding, the kernel plane (XDP and TC) and the userspace plane, all under
//! the same offered load on the same topology.
//!
//! ```text
//!  client ns              lb ns                               backend ns k (k = 0, 1)
//!  10.77.0.2 --veth-- 10.77.0.1 (listener :5514)
//!                      10.77.(k+1).1 --veth-- 10.77.(k+1).2 (:7000, bench_sink XDP)
//! ```
//!
//! Modes, interleaved round by round so that a noisy moment on this shared VM spreads over all
//! of them instead of falling on one:
//! - `idle`: nothing runs; the machine's background CPU, subtracted from every other mode.
//! - `generator only`: the frames are counted and dropped by XDP on the load balancer's ingress:
//!   what generating them (and receiving them on the veth) costs, included in every mode below.
//! - `plain forwarding`: the load balancer only routes (`ip_forward=1`); the client sends to
//!   the two backends' addresses directly, alternating. No udp-fanout.
//! - `kernel plane xdp` / `kernel plane tc_ebpf`: udp-fanout's [`KernelPlane`], started in this
//!   process from the load balancer's namespace, round robin over the two backends.
//! - `userspace plane`: [`UserspacePlane`], same listener, default settings (one worker per CPU).
//!
//! Why the load comes from the kernel: one userspace `sendmmsg` sender reaches only
//! ~200-270k datagrams/s over veth on this VM, too little to load the kernel plane. The
//! generator is `bench_gen` in `bpf/bench_gen.c`, run with `BPF_PROG_TEST_RUN` in live-frames
//! mode from a thread inside the client namespace (the ingress ifindex is resolved there):
//! each repeat rewrites the headers from a template (the source port varies per packet, 1024
//! flows, UDP checksum kept valid) and returns `XDP_TX`, which the test runner turns into a
//! redirect out of the client's veth, so the frame reaches the load balancer's veth as a
//! native XDP frame, as if a NIC had received it. What that takes, measured here:
//! - The receiving veth must have NAPI, i.e. an XDP program or GRO on; otherwise the frames
//!   vanish without being counted anywhere (`xdp_xmit_errors` stays 0). The load balancer's
//!   veth gets `gro on`, in every mode, and its rx counter is checked against the generator's.
//! - One queue per CPU on every veth: a native XDP transmit picks the receiver's ring by the
//!   sending CPU, and two generator threads sharing one 256-frame ring overflow it.
//! - The generator stays attached (generic XDP on a spare veth that is down): a test run with
//!   repeat > 1 otherwise adds the program to the XDP dispatcher and removes it afterwards,
//!   each time waiting for an RCU grace period (~20 ms per call here, 20 µs when attached).
//!
//! The veth's NAPI runs in the softirq raised by the generator's own test run, on its CPU, so
//! at full speed the generator and the receive path share one CPU: the generator sends as fast
//! as the path behind it absorbs, and "offered" at the maximum is that path's capacity on one
//! CPU (the userspace plane's workers also get the other). A fixed rate is paced in slices of
//! random length around 1 ms, each sending what is due by its end: bursts at a fixed period
//! alias with the scheduler tick (250 Hz here) and vanish from the tick-sampled /proc/stat
//! (measured: 1 tick of softirq for 700 ms of traced softirq). Every run is bounded by time
//! and by repeat count.
//!
//! What counts as delivered: `bench_sink` (XDP on each backend's veth) counts and drops the
//! datagrams whose destination is that backend's address and port, and notes whether their
//! IPv4 and UDP checksums verify; the udp-fanout modes are cross-checked against the plane's
//! own counters (received, forwarded, per downstream, socket drops). The sink is part of what
//! each mode pays: frames the XDP plane redirects arrive at the backend as XDP frames, while
//! forwarded skbs (plain, tc_ebpf, userspace) go through the veth's skb-to-XDP path first.
//!
//! CPU, per million delivered packets (generator only: generated), three ways:
//! - `/proc/stat` softirq / system / user over all CPUs, minus the same round's idle window,
//!   as the issue asks. Tick-sampled (no `CONFIG_IRQ_TIME_ACCOUNTING` here): a tick counts as
//!   softirq when it lands in one, including a softirq run by `local_bh_enable` in the
//!   generator's syscall; the generator's own program runs in that syscall (system). Anything
//!   else running on the machine moves these numbers.
//! - NET_RX + NET_TX softirq time traced at softirq entry and exit (raw tracepoints in
//!   `bench_gen.c`), minus idle: exact, but machine-wide too.
//! - utime + stime of this process (generator thread, udp-fanout's threads, and the softirqs
//!   they ran) plus the ksoftirqd threads, minus idle: the CPU the measured traffic used,
//!   nearly immune to other load (only softirq work crossing between our tasks and others'
//!   is misattributed). "Net of generator" subtracts the generator-only row from it.
//!
//! `cargo bench -p fanout-ebpf --bench netns_forwarding` measures (3 rounds, 3 s windows, at
//! the generator's maximum and at a fixed lower rate) and prints a markdown table; under
//! `cargo test --all-targets` it runs one short round at a low rate (well under 5 s) and
//! checks that every mode delivered and that the counters add up. Without root it prints
//! `SKIP` and succeeds, or fails with `UDP_FANOUT_REQUIRE_PRIVILEGED=1`.
//!
//! Environment (bench mode): `UF_BENCH_SECS` (window, default 3), `UF_BENCH_ROUNDS` (3),
//! `UF_BENCH_RATE` (the fixed rate, pps, default 150000), `UF_BENCH_GEN_THREADS` (generator
//! threads, one per CPU from CPU 0, default 1).
#![allow(
    clippy::unwrap_used,
    reason = "benchmark harness: a failed set-up step is a panic that names its cause"
)]

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{RawTracePoint, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, Pod};
use fanout_core::ListenerSnapshot;
use fanout_ebpf::plane::KernelPlane;
use fanout_udp::UserspacePlane;
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::unistd::Pid;

/// The generator and sink object (build.rs compiles every `bpf/*.c`).
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench_gen.o"));

// Layout shared with bpf/bench_gen.c.
const HDR_LEN: usize = 42;
const PAYLOAD_LEN: usize = 64;
/// UDP header + payload; bench_gen.c's BENCH_UDP_LEN.
const UDP_LEN: usize = 8 + PAYLOAD_LEN;
const SINK_SLOTS: u32 = 8;
const SINK_OTHER: u32 = SINK_SLOTS - 1;
/// Sink slots: backend k counts in slot k, the load balancer's ingress (generator only) in 2.
const SLOT_LB: u32 = 2;

const CLIENT_IP: [u8; 4] = [10, 77, 0, 2];
const VIP: [u8; 4] = [10, 77, 0, 1];
const PORT: u16 = 5514;
const BACKEND_PORT: u16 = 7000;
const SPORT_BASE: u16 = 20000;
/// Distinct source ports (a power of two: the program masks).
const FLOWS: u32 = 1024;
const MAC_CLIENT: [u8; 6] = [0x02, 0x75, 0x66, 0, 0, 0x01];
const MAC_LB: [u8; 6] = [0x02, 0x75, 0x66, 0, 0, 0x02];

fn backend_ip(k: usize) -> [u8; 4] {
    [10, 77, k as u8 + 1, 2]
}
fn lb_backend_ip(k: usize) -> [u8; 4] {
    [10, 77, k as u8 + 1, 1]
}
fn mac_lb_backend(k: usize) -> [u8; 6] {
    [0x02, 0x75, 0x66, 0, k as u8 + 1, 0x01]
}
fn mac_backend(k: usize) -> [u8; 6] {
    [0x02, 0x75, 0x66, 0, k as u8 + 1, 0x02]
}
fn dotted(ip: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}
fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Frames per live-frames batch (the kernel's maximum is 256; 64 is its NAPI-like default).
const BATCH: u32 = 64;
/// Repeats per test-run call at full speed: tens of ms of frames, so stopping is prompt.
const CHUNK: u32 = 32_768;
/// Mean pacing slice for a fixed rate.
const SLICE: Duration = Duration::from_millis(1);
/// Upper bound on frames per second and thread, whatever the clock says (a runaway guard).
const MAX_PPS_PER_THREAD: u64 = 5_000_000;
/// Time after the generator stops for queues (socket buffers, workers) to drain.
const DRAIN: Duration = Duration::from_millis(150);
/// Test mode: the rate and window (low enough that nothing may be lost), drain.
const TEST_RATE: u64 = 20_000;
const TEST_WINDOW: Duration = Duration::from_millis(200);
const TEST_DRAIN: Duration = Duration::from_millis(80);

// ---------------------------------------------------------------------------------------------
// Privileges, commands, namespaces
// ---------------------------------------------------------------------------------------------

/// Whether this process may run the bench; prints `SKIP: ...` or panics when CI requires it.
fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("UDP_FANOUT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!(
            "netns_forwarding: needs root (namespaces, BPF) and UDP_FANOUT_REQUIRE_PRIVILEGED=1"
        );
    }
    eprintln!("SKIP: netns_forwarding: network namespaces and BPF need root");
    false
}

/// Runs a command; panics with its output on failure.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (which also deletes the veths in it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations, MLD) on the links being measured.
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` with the calling thread inside this namespace, then moves it back.
    fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let here = File::open("/proc/thread-self/ns/net").unwrap();
        join_netns(&self.name);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        setns(here.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the namespace `name` for good (generator threads).
fn join_netns(name: &str) {
    let there = File::open(format!("/var/run/netns/{name}")).unwrap();
    setns(there.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
}

/// Client, load balancer and two backends (see the module docs).
struct Topology {
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
    client_if: String,
    /// Down, carries no traffic: the generator's XDP attachment point.
    spare_if: String,
    lb_if: String,
    lb_backend_ifs: Vec<String>,
    backend_ifs: Vec<String>,
}

impl Topology {
    fn new() -> Topology {
        // Unique per process: namespaces and interface names (at most 15 bytes).
        let tag = format!("{:x}", std::process::id() & 0xf_ffff);
        let client = Netns::new(format!("ufnf-{tag}-c"));
        let lb = Netns::new(format!("ufnf-{tag}-l"));
        let (client_if, lb_if) = (format!("nfc{tag}"), format!("nfl{tag}"));
        veth(&client, &client_if, MAC_CLIENT, &lb, &lb_if, MAC_LB);
        client.ip(&[
            "addr",
            "add",
            &format!("{}/24", dotted(CLIENT_IP)),
            "dev",
            &client_if,
        ]);
        lb.ip(&["addr", "add", &format!("{}/24", dotted(VIP)), "dev", &lb_if]);
        client.ip(&["link", "set", &client_if, "up"]);
        lb.ip(&["link", "set", &lb_if, "up"]);
        // A spare veth pair, left down, to hold the generator in the XDP dispatcher (see
        // Bench::load).
        let spare_if = format!("nfs{tag}");
        client.ip(&[
            "link",
            "add",
            &spare_if,
            "type",
            "veth",
            "peer",
            "name",
            &format!("nft{tag}"),
        ]);
        lb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Native XDP frames (the generator's) into a veth are dropped unless the receiving
        // veth has an XDP program or GRO on (its NAPI is off otherwise).
        lb.exec(&["ethtool", "-K", &lb_if, "gro", "on"]);
        let mut backends = Vec::new();
        let (mut lb_backend_ifs, mut backend_ifs) = (Vec::new(), Vec::new());
        for k in 0..2 {
            let b = Netns::new(format!("ufnf-{tag}-b{k}"));
            let (lif, bif) = (format!("nfx{tag}{k}"), format!("nfb{tag}{k}"));
            veth(&lb, &lif, mac_lb_backend(k), &b, &bif, mac_backend(k));
            let lip = format!("{}/24", dotted(lb_backend_ip(k)));
            lb.ip(&["addr", "add", &lip, "dev", &lif]);
            b.ip(&[
                "addr",
                "add",
                &format!("{}/24", dotted(backend_ip(k))),
                "dev",
                &bif,
            ]);
            lb.ip(&["link", "set", &lif, "up"]);
            b.ip(&["link", "set", &bif, "up"]);
            // Permanent neighbours: no ARP during a run, bpf_fib_lookup finds them at once.
            lb.ip(&[
                "neigh",
                "replace",
                &dotted(backend_ip(k)),
                "lladdr",
                &mac_str(mac_backend(k)),
                "dev",
                &lif,
                "nud",
                "permanent",
            ]);
            backends.push(b);
            lb_backend_ifs.push(lif);
            backend_ifs.push(bif);
        }
        Topology {
            client,
            lb,
            backends,
            client_if,
            spare_if,
            lb_if,
            lb_backend_ifs,
            backend_ifs,
        }
    }
}

/// A veth pair with fixed MAC addresses, one end in each namespace, one queue per CPU: a
/// native XDP transmit into a veth picks the receive ring of the sending CPU, so with one
/// ring, senders on two CPUs would overflow it while its NAPI runs on one of them.
fn veth(a: &Netns, a_if: &str, a_mac: [u8; 6], b: &Netns, b_if: &str, b_mac: [u8; 6]) {
    let queues = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let q = queues.as_str();
    sh(&[
        "ip",
        "link",
        "add",
        a_if,
        "address",
        &mac_str(a_mac),
        "netns",
        &a.name,
        "numtxqueues",
        q,
        "numrxqueues",
        q,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "address",
        &mac_str(b_mac),
        "netns",
        &b.name,
        "numtxqueues",
        q,
        "numrxqueues",
        q,
    ]);
}

// ---------------------------------------------------------------------------------------------
// The generator and sink object
// ---------------------------------------------------------------------------------------------

/// `struct bench_gen_cfg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GenCfg {
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

/// `struct bench_sink_key`: destination address and port in network order.
#[repr(C)]
#[derive(Clone, Copy)]
struct SinkKey {
    daddr: u32,
    dport: u16,
    pad: u16,
}
// SAFETY: repr(C), integer fields only, no padding (4 + 2 + 2 bytes).
unsafe impl Pod for SinkKey {}

/// `struct bench_softirq`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SoftirqTime {
    start: u64,
    ns: [u64; 2],
}
// SAFETY: repr(C), u64 fields only, no padding.
unsafe impl Pod for SoftirqTime {}

/// `struct bench_sink_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct SinkStats {
    packets: u64,
    csum_ok: u64,
}
// SAFETY: repr(C), two u64 fields, no padding.
unsafe impl Pod for SinkStats {}

fn sink_key(ip: [u8; 4], port: u16) -> SinkKey {
    SinkKey {
        daddr: u32::from_ne_bytes(ip),
        dport: port.to_be(),
        pad: 0,
    }
}

/// One's-complement sum of big-endian 16-bit words.
fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
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
    let mut p = [0u8; PAYLOAD_LEN];
    for (i, b) in p.iter_mut().enumerate() {
        *b = b"udp-fanout netns forwarding bench "[i % 34];
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

/// The loaded generator and sink programs and their maps.
struct Bench {
    ebpf: Ebpf,
    cfg: Array<MapData, GenCfg>,
    seq: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, SinkStats>,
    softirq: PerCpuArray<MapData, SoftirqTime>,
    /// The frame handed to every test run (its header is rewritten by the program anyway).
    frame: Vec<u8>,
    /// The client veth's ifindex, in the client namespace.
    client_ifindex: u32,
}

impl Bench {
    fn load(t: &Topology) -> Bench {
        let mut ebpf = Ebpf::load(OBJECT).unwrap();
        for name in ["bench_gen", "bench_sink"] {
            let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        let cfg = Array::try_from(ebpf.take_map("bench_gen_cfg").unwrap()).unwrap();
        let seq = PerCpuArray::try_from(ebpf.take_map("bench_gen_seq").unwrap()).unwrap();
        let stats = PerCpuArray::try_from(ebpf.take_map("bench_sink_stats").unwrap()).unwrap();
        let softirq = PerCpuArray::try_from(ebpf.take_map("bench_softirq").unwrap()).unwrap();
        for (name, tp) in [
            ("bench_si_entry", "softirq_entry"),
            ("bench_si_exit", "softirq_exit"),
        ] {
            let p: &mut RawTracePoint = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
            p.attach(tp)
                .unwrap_or_else(|e| panic!("attaching {name} to {tp}: {e}"));
        }
        let mut expect: HashMap<MapData, SinkKey, u32> =
            HashMap::try_from(ebpf.take_map("bench_sink_expect").unwrap()).unwrap();
        for k in 0..2 {
            expect
                .insert(sink_key(backend_ip(k), BACKEND_PORT), k as u32, 0)
                .unwrap();
        }
        expect.insert(sink_key(VIP, PORT), SLOT_LB, 0).unwrap();
        // A test run with repeat > 1 adds its program to the kernel's XDP dispatcher and
        // removes it at the end, and each change waits for an RCU grace period: ~20 ms per
        // call here, longer than a pacing slice. Attached somewhere (generic mode, to a veth
        // that is down and carries nothing), the program stays in the dispatcher and a test
        // run only takes a reference: ~20 µs per call.
        let generator: &mut Xdp = ebpf.program_mut("bench_gen").unwrap().try_into().unwrap();
        t.client
            .enter(|| generator.attach(&t.spare_if, XdpMode::Skb))
            .unwrap_or_else(|e| panic!("attaching the generator to {}: {e}", t.spare_if));
        // The sinks stay on the backends for the whole run.
        let sink: &mut Xdp = ebpf.program_mut("bench_sink").unwrap().try_into().unwrap();
        for (b, bif) in t.backends.iter().zip(&t.backend_ifs) {
            b.enter(|| sink.attach(bif, XdpMode::Driver))
                .unwrap_or_else(|e| panic!("attaching the sink to {bif}: {e}"));
        }
        let payload = payload();
        let mut frame = template(VIP, PORT, &payload).to_vec();
        frame.extend_from_slice(&payload);
        let client_ifindex = t
            .client
            .enter(|| nix::net::if_::if_nametoindex(t.client_if.as_str()))
            .unwrap();
        Bench {
            ebpf,
            cfg,
            seq,
            stats,
            softirq,
            frame,
            client_ifindex,
        }
    }

    /// Points the generator at `dsts` (alternating).
    fn aim(&mut self, dsts: &[([u8; 4], u16)]) {
        let p = payload();
        let t0 = template(dsts[0].0, dsts[0].1, &p);
        let t1 = dsts.get(1).map_or(t0, |d| template(d.0, d.1, &p));
        let two = dsts.len() > 1;
        let cfg = GenCfg {
            hdr: [t0, t1],
            sport_base: SPORT_BASE,
            pad: 0,
            template_mask: u32::from(two),
            flow_mask: FLOWS - 1,
            template_shift: u32::from(two),
        };
        self.cfg.set(0, cfg, 0).unwrap();
    }

    /// Nanoseconds all CPUs spent in NET_TX and NET_RX softirqs so far.
    fn softirq_ns(&self) -> u64 {
        self.softirq
            .get(&0, 0)
            .unwrap()
            .iter()
            .map(|t| t.ns[0] + t.ns[1])
            .sum()
    }

    fn generated(&self) -> u64 {
        self.seq.get(&0, 0).unwrap().iter().sum()
    }

    fn sink(&self) -> [SinkStats; SINK_SLOTS as usize] {
        let mut out = [SinkStats::default(); SINK_SLOTS as usize];
        for (slot, o) in out.iter_mut().enumerate() {
            for v in self.stats.get(&(slot as u32), 0).unwrap().iter() {
                o.packets += v.packets;
                o.csum_ok += v.csum_ok;
            }
        }
        out
    }

    /// Sends at `rate` pps (None: as fast as the generator goes) for `dur`, with `threads`
    /// generator threads on CPUs 0, 1, ...; returns (frames asked for, time the generator ran).
    fn generate(
        &self,
        client_ns: &str,
        rate: Option<u64>,
        dur: Duration,
        threads: usize,
    ) -> (u64, Duration) {
        let prog: &Xdp = self.ebpf.program("bench_gen").unwrap().try_into().unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = MAX_PPS_PER_THREAD * dur.as_millis().max(1) as u64 / 1000;
        let start = Instant::now();
        let sent: Vec<(u64, Duration)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    s.spawn(move || {
                        join_netns(client_ns);
                        let mut set = CpuSet::new();
                        set.set(i % cpus).unwrap();
                        sched_setaffinity(Pid::from_raw(0), &set).unwrap();
                        let mut sent = 0u64;
                        match rate {
                            None => {
                                while start.elapsed() < dur && sent < cap {
                                    let n = CHUNK.min((cap - sent) as u32);
                                    self.run(prog, n);
                                    sent += u64::from(n);
                                }
                            }
                            Some(r) => {
                                // Slices of random length (0.5-1.5 x SLICE): bursts at a fixed
                                // period would alias with the scheduler tick, which /proc/stat
                                // samples. Each slice sends what is due by its end.
                                let rate = r as f64 / threads as f64;
                                let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (i as u64 + 1);
                                let mut next = start;
                                while next.duration_since(start) < dur && sent < cap {
                                    rng ^= rng << 13;
                                    rng ^= rng >> 7;
                                    rng ^= rng << 17;
                                    let jitter = 0.5 + (rng >> 11) as f64 / (1u64 << 53) as f64;
                                    next += SLICE.mul_f64(jitter);
                                    let until = next.duration_since(start).min(dur);
                                    let due = (rate * until.as_secs_f64()) as u64;
                                    let n = due.saturating_sub(sent).min(cap - sent) as u32;
                                    if n > 0 {
                                        self.run(prog, n);
                                        sent += u64::from(n);
                                    }
                                    let now = Instant::now();
                                    if next > now {
                                        std::thread::sleep(next - now);
                                    }
                                }
                            }
                        }
                        (sent, start.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = sent.iter().map(|s| s.0).sum();
        let active = sent.iter().map(|s| s.1).max().unwrap_or_default();
        (total, active)
    }

    /// One live-frames test run of `repeat` frames (the caller is in the client namespace).
    fn run(&self, prog: &Xdp, repeat: u32) {
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
        .unwrap_or_else(|e| panic!("live-frames test run: {e:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Modes and measurements
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    GenOnly,
    Plain,
    Xdp,
    Tc,
    Userspace,
}

const MODES: [Mode; 6] = [
    Mode::Idle,
    Mode::GenOnly,
    Mode::Plain,
    Mode::Xdp,
    Mode::Tc,
    Mode::Userspace,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle (background)",
            Mode::GenOnly => "generator only (dropped at lb ingress)",
            Mode::Plain => "plain kernel forwarding",
            Mode::Xdp => "kernel plane, xdp",
            Mode::Tc => "kernel plane, tc_ebpf",
            Mode::Userspace => "userspace plane",
        }
    }
}

/// What runs in the load balancer during a mode.
enum Running {
    Nothing,
    /// The sink on the load balancer's ingress (generator only).
    Sink(aya::programs::xdp::XdpLinkId),
    Kernel(KernelPlane),
    User(UserspacePlane),
}

impl Running {
    fn snapshot(&self) -> Option<ListenerSnapshot> {
        match self {
            Running::Kernel(k) => k.snapshot().into_iter().next(),
            Running::User(u) => u.snapshot().into_iter().next(),
            _ => None,
        }
    }
}

fn config(mode: &str, lb_if: &str) -> fanout_config::Config {
    let downstreams: Vec<String> = (0..2)
        .map(|k| format!("\"{}:{BACKEND_PORT}\"", dotted(backend_ip(k))))
        .collect();
    let yaml = format!(
        "listeners:\n  - name: bench\n    bind: \"{}:{PORT}\"\n    mode: {mode}\n    \
         interface: {lb_if}\n    distribution: round_robin\n    downstreams: [{}]\n",
        dotted(VIP),
        downstreams.join(", ")
    );
    let yaml = if mode == "userspace" {
        yaml.replace(&format!("    interface: {lb_if}\n"), "")
    } else {
        yaml
    };
    fanout_config::from_yaml(&yaml).unwrap_or_else(|e| panic!("config: {e:?}\n{yaml}"))
}

/// CPU time from the `cpu` line of /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: u64,
    system: u64,
    softirq: u64,
    irq: u64,
    steal: u64,
    /// This process (every thread it ever had: generator, planes) plus the ksoftirqd
    /// threads: the CPU the measured traffic used, whoever else shares the machine.
    own: u64,
    /// NET_TX + NET_RX softirq time, traced (ns; not ticks).
    net_softirq_ns: u64,
}

/// utime + stime of a /proc/<pid>/stat (a process: all its threads, exited ones included).
fn task_ticks(stat: &str) -> u64 {
    let s = std::fs::read_to_string(stat).unwrap_or_default();
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0;
    };
    // After "pid (comm)": state is field 3, utime field 14, stime field 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(14) + n(15)
}

/// The ksoftirqd threads' /proc paths (softirq work deferred from wherever it was raised).
fn ksoftirqd() -> &'static [String] {
    static PATHS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
            })
            .map(|p| p.join("stat").to_string_lossy().into_owned())
            .collect()
    })
}

impl Cpu {
    fn read() -> Cpu {
        let own =
            task_ticks("/proc/self/stat") + ksoftirqd().iter().map(|p| task_ticks(p)).sum::<u64>();
        let s = std::fs::read_to_string("/proc/stat").unwrap();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        Cpu {
            user: v[0] + v[1],
            system: v[2],
            irq: v[5],
            softirq: v[6],
            steal: v.get(7).copied().unwrap_or(0),
            own,
            net_softirq_ns: 0,
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            system: self.system - before.system,
            softirq: self.softirq - before.softirq,
            irq: self.irq - before.irq,
            steal: self.steal - before.steal,
            own: self.own - before.own,
            net_softirq_ns: self.net_softirq_ns - before.net_softirq_ns,
        }
    }
}

/// Milliseconds per tick.
fn tick_ms() -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    1000.0 / hz as f64
}

/// Counters read before and after a window.
#[derive(Debug, Clone, Default)]
struct Counters {
    generated: u64,
    sink: [SinkStats; SINK_SLOTS as usize],
    plane: Option<ListenerSnapshot>,
    /// Frames the client veth could not hand to its peer (`xdp_xmit_errors`: its ring full).
    xmit_errors: u64,
    /// Frames the load balancer's veth received (rx_packets).
    lb_rx: u64,
    /// Packets the load balancer's backend-facing veths dropped on transmit (tx_drop).
    lb_tx_drops: u64,
    /// The load balancer's UDP RcvbufErrors and SndbufErrors (its namespace's /proc/net/snmp).
    rcvbuf_errors: u64,
    sndbuf_errors: u64,
}

/// One measured window.
#[derive(Debug, Clone)]
struct Sample {
    mode: Mode,
    round: u64,
    /// Frames generated (the program's own count).
    offered: u64,
    /// Frames the generator threads asked for.
    asked: u64,
    /// Datagrams counted at the expected destination (generator only: at the lb's ingress).
    delivered: u64,
    per_backend: [u64; 2],
    csum_ok: u64,
    other: u64,
    gen_time: Duration,
    window: Duration,
    cpu: Cpu,
    plane: Option<ListenerSnapshot>,
    attach: String,
    xmit_errors: u64,
    lb_rx: u64,
    lb_tx_drops: u64,
    rcvbuf_errors: u64,
    sndbuf_errors: u64,
}

impl Sample {
    fn offered_pps(&self) -> f64 {
        self.offered as f64 / self.gen_time.as_secs_f64()
    }
    fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.gen_time.as_secs_f64()
    }
    fn loss_pct(&self) -> f64 {
        if self.offered == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.delivered as f64 / self.offered as f64)
    }
}

/// A plane's counters over a window (`after - before`).
fn plane_delta(after: &ListenerSnapshot, before: &ListenerSnapshot) -> ListenerSnapshot {
    let mut d = after.clone();
    d.received -= before.received;
    d.forwarded -= before.forwarded;
    d.socket_drops -= before.socket_drops;
    for (a, b) in d.dropped.iter_mut().zip(before.dropped) {
        *a -= b;
    }
    for (a, b) in d.downstreams.iter_mut().zip(&before.downstreams) {
        a.packets -= b.packets;
    }
    d
}

struct Harness {
    topo: Topology,
    bench: Bench,
    threads: usize,
    drain: Duration,
}

impl Harness {
    fn counters(&self, running: &Running) -> Counters {
        let ethtool = self
            .topo
            .client
            .exec(&["ethtool", "-S", &self.topo.client_if]);
        let xmit_errors = ethtool
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .filter(|(k, _)| k.ends_with("xdp_xmit_errors"))
            .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0))
            .sum();
        let (rcvbuf_errors, sndbuf_errors, lb_rx, lb_tx_drops) = self.topo.lb.enter(|| {
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
            let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
            let names: Vec<&str> = udp[0].split_whitespace().collect();
            let values: Vec<&str> = udp[1].split_whitespace().collect();
            let udp_stat = |stat: &str| -> u64 {
                names
                    .iter()
                    .position(|n| *n == stat)
                    .map_or(0, |i| values[i].parse().unwrap())
            };
            let rcvbuf = udp_stat("RcvbufErrors");
            // A send the egress veth refused returns ENOBUFS, which UDP counts here and hides
            // from the sender (no IP_RECVERR).
            let sndbuf = udp_stat("SndbufErrors");
            // "name: rx_bytes rx_packets rx_errs rx_drop (4 more) tx_bytes tx_packets tx_errs
            // tx_drop ...". rx_packets of the client-facing veth: frames its NAPI took in,
            // whatever an XDP program there did with them. tx_drop of the backend-facing
            // ones: skbs their peer's full ring refused.
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            let field = |ifname: &str, i: usize| -> u64 {
                dev.lines()
                    .filter_map(|l| l.trim().split_once(':'))
                    .find(|(name, _)| *name == ifname)
                    .and_then(|(_, v)| v.split_whitespace().nth(i)?.parse().ok())
                    .unwrap()
            };
            let tx_drops = self.topo.lb_backend_ifs.iter().map(|i| field(i, 11)).sum();
            (rcvbuf, sndbuf, field(&self.topo.lb_if, 1), tx_drops)
        });
        Counters {
            generated: self.bench.generated(),
            sink: self.bench.sink(),
            plane: running.snapshot(),
            xmit_errors,
            rcvbuf_errors,
            sndbuf_errors,
            lb_rx,
            lb_tx_drops,
        }
    }

    fn start(&mut self, mode: Mode) -> Running {
        let t = &self.topo;
        match mode {
            Mode::Idle | Mode::Plain => Running::Nothing,
            Mode::GenOnly => {
                let sink: &mut Xdp = self
                    .bench
                    .ebpf
                    .program_mut("bench_sink")
                    .unwrap()
                    .try_into()
                    .unwrap();
                let id =
                    t.lb.enter(|| sink.attach(&t.lb_if, XdpMode::Driver))
                        .unwrap();
                Running::Sink(id)
            }
            Mode::Xdp | Mode::Tc => {
                let m = if mode == Mode::Xdp { "xdp" } else { "tc_ebpf" };
                let cfg = config(m, &t.lb_if);
                let plane = t.lb.enter(|| KernelPlane::start(&cfg));
                Running::Kernel(
                    plane
                        .unwrap_or_else(|e| panic!("kernel plane ({m}): {e}"))
                        .unwrap(),
                )
            }
            Mode::Userspace => {
                let cfg = config("userspace", &t.lb_if);
                let plane = t.lb.enter(|| UserspacePlane::start(&cfg));
                Running::User(plane.unwrap_or_else(|e| panic!("userspace plane: {e}")))
            }
        }
    }

    fn stop(&mut self, running: Running) {
        match running {
            Running::Sink(id) => {
                let sink: &mut Xdp = self
                    .bench
                    .ebpf
                    .program_mut("bench_sink")
                    .unwrap()
                    .try_into()
                    .unwrap();
                sink.detach(id).unwrap();
            }
            Running::User(u) => u.stop(),
            Running::Kernel(k) => drop(k),
            Running::Nothing => {}
        }
    }

    fn measure(&mut self, mode: Mode, rate: Option<u64>, dur: Duration) -> Sample {
        let running = self.start(mode);
        let attach = match &running {
            Running::Kernel(k) => k
                .attachments()
                .iter()
                .map(|a| a.how)
                .collect::<Vec<_>>()
                .join(", "),
            Running::Sink(_) => "xdp sink on lb ingress".into(),
            _ => String::new(),
        };
        match mode {
            Mode::Plain => self
                .bench
                .aim(&[(backend_ip(0), BACKEND_PORT), (backend_ip(1), BACKEND_PORT)]),
            _ => self.bench.aim(&[(VIP, PORT)]),
        }
        let client_ns = self.topo.client.name.clone();
        if mode != Mode::Idle {
            // Warm-up: first-packet work (next-hop cache, page pools, socket wake-ups) stays
            // out of the window.
            self.bench
                .generate(&client_ns, Some(100_000), Duration::from_millis(20), 1);
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = self.counters(&running);
        let cpu0 = Cpu {
            net_softirq_ns: self.bench.softirq_ns(),
            ..Cpu::read()
        };
        let t0 = Instant::now();
        let (asked, gen_time) = if mode == Mode::Idle {
            std::thread::sleep(dur);
            (0, dur)
        } else {
            self.bench.generate(&client_ns, rate, dur, self.threads)
        };
        std::thread::sleep(self.drain);
        let cpu = Cpu {
            net_softirq_ns: self.bench.softirq_ns(),
            ..Cpu::read()
        }
        .since(cpu0);
        let window = t0.elapsed();
        let after = self.counters(&running);
        self.stop(running);

        let offered = after.generated - before.generated;
        let slot = |i: usize| SinkStats {
            packets: after.sink[i].packets - before.sink[i].packets,
            csum_ok: after.sink[i].csum_ok - before.sink[i].csum_ok,
        };
        let (b0, b1, lb) = (slot(0), slot(1), slot(SLOT_LB as usize));
        let (delivered, csum_ok) = if mode == Mode::GenOnly {
            (lb.packets, lb.csum_ok)
        } else {
            (b0.packets + b1.packets, b0.csum_ok + b1.csum_ok)
        };
        Sample {
            mode,
            round: 0,
            offered,
            asked,
            delivered,
            per_backend: [b0.packets, b1.packets],
            csum_ok,
            other: slot(SINK_OTHER as usize).packets,
            gen_time,
            window,
            cpu,
            plane: match (&after.plane, &before.plane) {
                (Some(a), Some(b)) => Some(plane_delta(a, b)),
                _ => None,
            },
            attach,
            xmit_errors: after.xmit_errors - before.xmit_errors,
            lb_rx: after.lb_rx - before.lb_rx,
            lb_tx_drops: after.lb_tx_drops - before.lb_tx_drops,
            rcvbuf_errors: after.rcvbuf_errors - before.rcvbuf_errors,
            sndbuf_errors: after.sndbuf_errors - before.sndbuf_errors,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and report
// ---------------------------------------------------------------------------------------------

/// Whether the counters of a sample add up; the list of what does not.
fn check(s: &Sample) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    if s.mode == Mode::Idle {
        return bad;
    }
    want(
        s.offered == s.asked,
        format!("generated {} != asked {}", s.offered, s.asked),
    );
    want(s.delivered > 0, "nothing delivered".into());
    // A veth without NAPI (no XDP program, GRO off) refuses native XDP frames before counting
    // them anywhere, so the lb's rx counter is the proof they arrived.
    want(
        s.lb_rx >= s.offered && s.xmit_errors == 0,
        format!(
            "{} of {} frames did not reach the lb's veth ({} xdp_xmit_errors)",
            s.offered.saturating_sub(s.lb_rx),
            s.offered,
            s.xmit_errors
        ),
    );
    want(
        s.delivered <= s.offered,
        format!("delivered {} > offered {}", s.delivered, s.offered),
    );
    if s.mode != Mode::GenOnly {
        want(
            s.per_backend.iter().all(|&n| n > 0),
            format!("a backend got nothing: {:?}", s.per_backend),
        );
    }
    // Everything the kernel paths deliver carries complete, valid checksums; the userspace
    // plane's sends leave the UDP checksum to (absent) offload, so it is not checked there.
    if s.mode != Mode::Userspace {
        want(
            s.csum_ok == s.delivered,
            format!(
                "{} of {} with bad checksums",
                s.delivered - s.csum_ok,
                s.delivered
            ),
        );
    }
    if let Some(p) = &s.plane {
        let dropped: u64 = p.dropped.iter().sum();
        // The kernel plane sees every frame; the userspace plane every datagram its socket
        // buffers had room for, and it reports the rest (SO_RXQ_OVFL) as socket drops.
        let (seen, what) = if s.mode == Mode::Userspace {
            (p.received + p.socket_drops, "received + socket drops")
        } else {
            (p.received, "received")
        };
        want(
            seen == s.offered,
            format!("plane {what} {seen} != offered {}", s.offered),
        );
        want(
            p.forwarded + dropped == p.received,
            format!(
                "plane: forwarded {} + dropped {dropped} != received {}",
                p.forwarded, p.received
            ),
        );
        // Sent datagrams the egress veth refused (its peer's ring full) are lost after the
        // plane counted them; nothing else may be.
        want(
            p.forwarded == s.delivered + s.lb_tx_drops,
            format!(
                "plane forwarded {} != backends {} + lb egress drops {}",
                p.forwarded, s.delivered, s.lb_tx_drops
            ),
        );
        if s.lb_tx_drops == 0 {
            let per: Vec<u64> = p.downstreams.iter().map(|d| d.packets).collect();
            want(
                per == s.per_backend,
                format!(
                    "plane per downstream {per:?} != backends {:?}",
                    s.per_backend
                ),
            );
        }
    }
    bad
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn fmt_range(v: Vec<f64>, digits: usize) -> String {
    let (m, lo, hi) = median_min_max(v);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn kpps(v: Vec<f64>) -> String {
    fmt_range(v.into_iter().map(|x| x / 1000.0).collect(), 1) + "k"
}

/// CPU milliseconds per million packets.
struct PerMillion {
    /// Machine-wide (/proc/stat), the same round's idle background removed.
    softirq: f64,
    system: f64,
    user: f64,
    /// NET_TX + NET_RX softirq time, traced, the same round's idle removed.
    net_softirq: f64,
    /// This process + ksoftirqd, the same round's idle (ksoftirqd's background) removed.
    own: f64,
}

impl PerMillion {
    fn total(&self) -> f64 {
        self.softirq + self.system + self.user
    }
}

/// CPU-ms per second of wall time of a window: softirq, system, user, own, traced NET softirq.
fn rates(s: &Sample) -> [f64; 5] {
    let w = s.window.as_secs_f64();
    let k = tick_ms() / w;
    let c = s.cpu;
    [
        c.softirq as f64 * k,
        c.system as f64 * k,
        c.user as f64 * k,
        c.own as f64 * k,
        c.net_softirq_ns as f64 / 1e6 / w,
    ]
}

fn per_million(s: &Sample, idle: &Sample) -> PerMillion {
    let w = s.window.as_secs_f64();
    let m = s.delivered.max(1) as f64 / 1e6;
    let (r, bg) = (rates(s), rates(idle));
    let net = |i: usize| (r[i] - bg[i]) * w / m;
    PerMillion {
        softirq: net(0),
        system: net(1),
        user: net(2),
        net_softirq: net(4),
        own: net(3),
    }
}

/// The markdown table for one load (samples of all rounds).
fn table(title: &str, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| mode | offered pps | delivered pps | loss % | % of plain forwarding | softirq | system | user | total | NET softirq, traced | this process + ksoftirqd | same, net of generator |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let of = |m: Mode| -> Vec<&Sample> { samples.iter().filter(|s| s.mode == m).collect() };
    let idle_of = |r: u64| {
        samples
            .iter()
            .find(|s| s.mode == Mode::Idle && s.round == r)
            .unwrap()
    };
    let plain_of = |r: u64| {
        samples
            .iter()
            .find(|s| s.mode == Mode::Plain && s.round == r)
            .unwrap()
    };
    let gen_own: Vec<f64> = of(Mode::GenOnly)
        .iter()
        .map(|s| per_million(s, idle_of(s.round)).own)
        .collect();
    let gen_own = median_min_max(gen_own).0;
    for mode in MODES {
        let v = of(mode);
        if mode == Mode::Idle {
            let col = |i: usize| fmt_range(v.iter().map(|s| rates(s)[i]).collect(), 0);
            let _ = writeln!(
                out,
                "| {} (CPU-ms per second) | – | – | – | – | {} | {} | {} | – | {} | {} | – |",
                mode.name(),
                col(0),
                col(1),
                col(2),
                col(4),
                col(3)
            );
            continue;
        }
        let pm: Vec<PerMillion> = v.iter().map(|s| per_million(s, idle_of(s.round))).collect();
        let col = |f: fn(&PerMillion) -> f64| fmt_range(pm.iter().map(f).collect(), 0);
        let (pct_plain, net) = if mode == Mode::GenOnly {
            ("–".to_string(), "–".to_string())
        } else {
            (
                fmt_range(
                    v.iter()
                        .map(|s| 100.0 * s.delivered_pps() / plain_of(s.round).delivered_pps())
                        .collect(),
                    1,
                ),
                fmt_range(pm.iter().map(|p| p.own - gen_own).collect(), 0),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            kpps(v.iter().map(|s| s.offered_pps()).collect()),
            kpps(v.iter().map(|s| s.delivered_pps()).collect()),
            fmt_range(v.iter().map(|s| s.loss_pct()).collect(), 2),
            pct_plain,
            col(|p| p.softirq),
            col(|p| p.system),
            col(|p| p.user),
            col(PerMillion::total),
            col(|p| p.net_softirq),
            col(|p| p.own),
            net,
        );
    }
    out
}

/// Per-sample details: counters behind the table.
fn details(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let mut line = format!(
            "- round {} {:<40} offered {:>9} delivered {:>9} (b0 {}, b1 {}, csum ok {}) gen {:.2}s window {:.2}s; ticks softirq/system/user/irq/steal {}/{}/{}/{}/{}, process+ksoftirqd {}; NET softirq traced {:.0} ms",
            s.round + 1,
            s.mode.name(),
            s.offered,
            s.delivered,
            s.per_backend[0],
            s.per_backend[1],
            s.csum_ok,
            s.gen_time.as_secs_f64(),
            s.window.as_secs_f64(),
            s.cpu.softirq,
            s.cpu.system,
            s.cpu.user,
            s.cpu.irq,
            s.cpu.steal,
            s.cpu.own,
            s.cpu.net_softirq_ns as f64 / 1e6
        );
        if let Some(p) = &s.plane {
            let drops: Vec<String> = fanout_core::DropReason::ALL
                .iter()
                .filter(|r| p.dropped[r.index()] > 0)
                .map(|r| format!("{}={}", r.as_str(), p.dropped[r.index()]))
                .collect();
            let _ = write!(
                line,
                "; plane received {} forwarded {} drops [{}] socket_drops {}",
                p.received,
                p.forwarded,
                drops.join(" "),
                p.socket_drops
            );
        }
        if s.rcvbuf_errors > 0 {
            let _ = write!(line, "; lb UDP RcvbufErrors {}", s.rcvbuf_errors);
        }
        if s.lb_tx_drops + s.sndbuf_errors > 0 {
            let _ = write!(
                line,
                "; lb egress veth drops {} (UDP SndbufErrors {})",
                s.lb_tx_drops, s.sndbuf_errors
            );
        }
        if !s.attach.is_empty() {
            let _ = write!(line, "; {}", s.attach);
        }
        if s.other > 0 {
            let _ = write!(line, "; other frames at sinks {}", s.other);
        }
        let bad = check(s);
        if !bad.is_empty() {
            let _ = write!(line, "; CHECK: {}", bad.join("; "));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !privileged() {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let started = Instant::now();
    let topo = Topology::new();
    let b = Bench::load(&topo);
    let mut h = Harness {
        topo,
        bench: b,
        threads: env_num("UF_BENCH_GEN_THREADS", 1).max(1) as usize,
        drain: if bench { DRAIN } else { TEST_DRAIN },
    };

    if !bench {
        // Test mode: one short window per mode at a low rate (no idle window: nothing is
        // subtracted); every mode must deliver everything and its counters add up.
        let mut failures = Vec::new();
        for mode in MODES.into_iter().filter(|&m| m != Mode::Idle) {
            let s = h.measure(mode, Some(TEST_RATE), TEST_WINDOW);
            let mut bad = check(&s);
            // Kernel paths lose nothing at this rate; the userspace plane may only lose what
            // its socket buffers overflowed, which check() balances against its counters.
            if mode != Mode::Userspace && s.delivered != s.offered {
                bad.push(format!(
                    "lost {} of {} at {TEST_RATE} pps",
                    s.offered - s.delivered,
                    s.offered
                ));
            }
            println!(
                "{:<40} offered {:>6} delivered {:>6} {}",
                mode.name(),
                s.offered,
                s.delivered,
                if bad.is_empty() { "ok" } else { "FAILED" }
            );
            failures.extend(bad.into_iter().map(|b| format!("{}: {b}", mode.name())));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        println!(
            "netns_forwarding: all modes delivered, counters add up ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        return;
    }

    let dur = Duration::from_secs(env_num("UF_BENCH_SECS", 3));
    let rounds = env_num("UF_BENCH_ROUNDS", 3).max(1);
    let rate = env_num("UF_BENCH_RATE", 150_000);
    let loads: [(String, Option<u64>); 2] = [
        ("generator maximum".into(), None),
        (format!("fixed rate {}k pps", rate / 1000), Some(rate)),
    ];
    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    for (name, load) in &loads {
        let mut samples = Vec::new();
        for r in 0..rounds {
            for mode in MODES {
                let mut s = h.measure(mode, *load, dur);
                s.round = r;
                eprintln!(
                    "[{name}, round {}/{rounds}] {:<40} offered {:>8.0} pps delivered {:>8.0} pps",
                    r + 1,
                    mode.name(),
                    s.offered_pps(),
                    s.delivered_pps()
                );
                samples.push(s);
            }
        }
        results.push((name.clone(), samples));
    }
    println!(
        "\n## netns forwarding: client ns -> lb ns -> 2 backend ns (veth, IPv4, {PAYLOAD_LEN}-byte UDP payload, {FLOWS} flows)\n"
    );
    println!(
        "{rounds} round(s) of {}s windows per load, modes interleaved within a round; medians \
         (min–max) over rounds. Generator: bench_gen, live-frames XDP_TX out of the client veth, \
         {} thread(s) pinned from CPU 0, batch {BATCH}; a fixed rate is paced in jittered slices of {} ms on average.\n\n\
         CPU columns are CPU-ms per million delivered packets (generator only: per million \
         generated). softirq / system / user / total: /proc/stat over all {} CPUs minus the same \
         round's idle window (tick-sampled; noisy when other work shares the machine). \
         \"NET softirq, traced\": NET_RX + NET_TX softirq time measured at softirq entry and \
         exit (raw tracepoints), all CPUs, minus the same round's idle window. \
         \"this process + ksoftirqd\": utime + stime of this process (generator thread, \
         udp-fanout's threads, the softirqs they ran) and of ksoftirqd/N: robust to \
         background load, misses only softirq work that ran on another task's interrupt. \
         \"net of generator\": minus the generator-only row's median.",
        dur.as_secs(),
        h.threads,
        SLICE.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    for (name, samples) in &results {
        print!("{}", table(name, samples));
    }
    println!("\n### Details\n");
    for (name, samples) in &results {
        println!("{name}:\n{}", details(samples));
    }
    println!(
        "(total {:.0}s, load average {})",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
