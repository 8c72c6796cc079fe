//! Shared set-up of the BPF_PROG_TEST_RUN tests and benchmarks.
//!
//! - [`privileged`]: the one place that decides "skip or fail" without root.
//! - [`Harness`]: a freshly loaded object (its own maps), the calling thread pinned to one CPU
//!   (the round-robin cursor is per CPU) and moved into a private network namespace (so clones,
//!   routes and sysctls of a test touch nothing else).
//!   [`Harness::no_fib`] / [`for_each_prog`] give the test-mode set-up most tests start from.
//! - [`Prog`] / [`Verdict`]: the two programs and their return codes.
//! - [`veth_uf0`]: the forwarding namespace with a veth the route tests and benchmarks use.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod packet;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint};
use fanout_kernel::bindings::uf_nexthop;
use fanout_kernel::maps::{KernelMaps, ListenerCounters};
use fanout_kernel::programs::{self, Loaded, TC_PROGRAM, XDP_PROGRAM};

/// Whether this process may run the BPF tests (root); skips with a printed reason, or panics
/// when `UDP_FANOUT_REQUIRE_PRIVILEGED=1` (CI that must not skip).
pub use fanout_testkit::netns::privileged;

/// XDP return codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// TC return codes.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Drop reason indices (uf_structs.h).
pub const DROP_NO_DOWNSTREAM: usize = 0;
pub const DROP_SEND_ERROR: usize = 1;
pub const DROP_MALFORMED: usize = 4;

/// Global flags (uf_structs.h).
#[allow(unused_imports)]
pub use fanout_kernel::bindings::{UF_G_KEEP_TTL, UF_G_NO_FIB, UF_G_NO_NEXTHOP_CACHE};

/// Which program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    Xdp,
    Tc,
}

/// Both programs, XDP first.
pub const PROGS: [Prog; 2] = [Prog::Xdp, Prog::Tc];

/// A program-independent verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Left to the kernel (XDP_PASS / TC_ACT_OK).
    Pass,
    /// Dropped (XDP_DROP / TC_ACT_SHOT).
    Drop,
    /// Sent back out in test mode UF_G_NO_FIB (XDP_TX / TC_ACT_OK).
    Tx,
}

impl Prog {
    /// The return code of `v` for this program.
    pub fn code(self, v: Verdict) -> u32 {
        match (self, v) {
            (Prog::Xdp, Verdict::Pass) => XDP_PASS,
            (Prog::Xdp, Verdict::Drop) => XDP_DROP,
            (Prog::Xdp, Verdict::Tx) => XDP_TX,
            (Prog::Tc, Verdict::Pass | Verdict::Tx) => TC_ACT_OK,
            (Prog::Tc, Verdict::Drop) => TC_ACT_SHOT,
        }
    }

    /// The largest frame BPF_PROG_TEST_RUN takes into the linear buffer the program sees:
    /// one page minus headroom and skb_shared_info (XDP: 4096 - 256 - 320; TC:
    /// 4096 - NET_SKB_PAD 64 - 320). Larger XDP frames go to fragments the program (not
    /// loaded with xdp.frags) does not see; larger TC frames are refused (EINVAL).
    pub fn max_frame(self) -> usize {
        match self {
            Prog::Xdp => 3520,
            Prog::Tc => 3712,
        }
    }
}

/// One test run's result.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: u32,
    pub out: Vec<u8>,
    /// `skb->mark` after the run (TC with a context).
    pub mark: u32,
    pub duration_ns: u64,
}

/// Size of `struct __sk_buff` and the offset of `mark` in it.
const SKB_CTX_LEN: usize = 192;
const SKB_MARK_OFF: usize = 8;

/// A loaded object on a pinned CPU in a private network namespace.
pub struct Harness {
    pub loaded: Loaded,
}

impl Harness {
    /// Loads the object. Call [`privileged`] first.
    pub fn new() -> Self {
        pin_to_current_cpu();
        private_netns();
        let loaded = programs::load().unwrap_or_else(|e| panic!("load: {e}"));
        Harness { loaded }
    }

    /// Loads the object and sets its globals. Call [`privileged`] first.
    pub fn with_globals(flags: u32, nexthop_ttl: Duration, bypass_mark: u32) -> Self {
        let mut h = Harness::new();
        h.globals(flags, nexthop_ttl, bypass_mark);
        h
    }

    /// Loaded in test mode (UF_G_NO_FIB: rewrite, then XDP_TX / TC_ACT_OK, no route lookup,
    /// so the next-hop lifetime does not matter). Call [`privileged`] first.
    pub fn no_fib() -> Self {
        Harness::with_globals(UF_G_NO_FIB, Duration::from_secs(5), 0)
    }

    pub fn globals(&mut self, flags: u32, nexthop_ttl: Duration, bypass_mark: u32) {
        self.loaded
            .maps
            .set_globals(flags, nexthop_ttl, bypass_mark)
            .unwrap();
    }

    pub fn maps(&mut self) -> &mut KernelMaps {
        &mut self.loaded.maps
    }

    pub fn counters(&self, listener: u32) -> ListenerCounters {
        self.loaded.maps.listener_counters(listener).unwrap()
    }

    /// (fwd_packets, passed, send_error drops) of a listener: what became of its datagrams on
    /// the route path.
    pub fn outcomes(&self, listener: u32) -> (u64, u64, u64) {
        let c = self.counters(listener);
        (c.fwd_packets, c.passed, c.drops[DROP_SEND_ERROR])
    }

    /// Runs a program once on `frame` (repeat = 1: the kernel reuses its buffer across repeats).
    pub fn run(&self, prog: Prog, frame: &[u8]) -> Run {
        self.run_with(prog, frame, None, 1)
    }

    /// Runs the TC program with `skb->mark` set.
    pub fn run_tc_mark(&self, frame: &[u8], mark: u32) -> Run {
        self.run_with(Prog::Tc, frame, Some(mark), 1)
    }

    /// Runs once, returning the syscall's error instead of panicking.
    pub fn try_run(&self, prog: Prog, frame: &[u8]) -> Result<Run, ProgramError> {
        self.try_run_with(prog, frame, None, 1)
    }

    /// Runs with `repeat` (benchmarks); `mark` only for TC.
    pub fn run_with(&self, prog: Prog, frame: &[u8], mark: Option<u32>, repeat: u32) -> Run {
        self.try_run_with(prog, frame, mark, repeat)
            .unwrap_or_else(|e| panic!("test_run ({} bytes): {e:?}", frame.len()))
    }

    fn try_run_with(
        &self,
        prog: Prog,
        frame: &[u8],
        mark: Option<u32>,
        repeat: u32,
    ) -> Result<Run, ProgramError> {
        let mut out = vec![0u8; frame.len() + 512];
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let with_ctx = prog == Prog::Tc && mark.is_some();
        if let Some(m) = mark {
            ctx_in[SKB_MARK_OFF..SKB_MARK_OFF + 4].copy_from_slice(&m.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: with_ctx.then_some(&ctx_in[..]),
            ctx_out: with_ctx.then_some(&mut ctx_out[..]),
            repeat,
            ..Default::default()
        };
        let name = match prog {
            Prog::Xdp => XDP_PROGRAM,
            Prog::Tc => TC_PROGRAM,
        };
        let program = self.loaded.ebpf.program(name).unwrap();
        let r: TestRunResult = match prog {
            Prog::Xdp => <&Xdp>::try_from(program).unwrap().test_run(opts),
            Prog::Tc => <&SchedClassifier>::try_from(program)
                .unwrap()
                .test_run(opts),
        }?;
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[SKB_MARK_OFF..SKB_MARK_OFF + 4].try_into().unwrap());
        Ok(Run {
            code: r.return_value,
            out,
            mark,
            duration_ns: r.duration.as_nanos() as u64,
        })
    }

    /// Writes a downstream set for listener `id` on `bind` and registers it. Counter slots are
    /// `stats_base + i`.
    pub fn listener(
        &mut self,
        id: u32,
        bind: SocketAddr,
        dist: Distribution,
        endpoints: Vec<Endpoint>,
        stats_base: u32,
    ) -> BackendSet {
        let set = BackendSet::new(dist, endpoints, DEFAULT_TABLE_SIZE);
        let ids: Vec<u32> = (0..set.endpoints().len() as u32)
            .map(|i| stats_base + i)
            .collect();
        self.loaded.maps.write_set(id, &set, &ids).unwrap();
        self.loaded.maps.add_listener(id, bind, dist).unwrap();
        set
    }

    /// A round-robin listener `id` on `bind` with the one downstream `backend`.
    pub fn single(
        &mut self,
        id: u32,
        bind: SocketAddr,
        backend: &str,
        stats_base: u32,
    ) -> BackendSet {
        let eps = endpoints(&[(backend, 1)]);
        self.listener(id, bind, Distribution::RoundRobin, eps, stats_base)
    }
}

/// Runs `f` for each program with a fresh [`Harness::no_fib`] (its own maps, counters and
/// round-robin cursors); does nothing (or panics, see [`privileged`]) without root.
pub fn for_each_prog(test: &str, mut f: impl FnMut(Prog, &mut Harness)) {
    if !privileged(test) {
        return;
    }
    for prog in PROGS {
        f(prog, &mut Harness::no_fib());
    }
}

/// A next-hop cache entry that never expires.
pub fn nexthop(ifindex: u32, smac: [u8; 6], dmac: [u8; 6]) -> uf_nexthop {
    uf_nexthop {
        ifindex,
        smac,
        dmac,
        expires_ns: u64::MAX,
    }
}

/// Endpoints with the given (address, weight).
pub fn endpoints(list: &[(&str, u32)]) -> Vec<Endpoint> {
    list.iter()
        .map(|(a, w)| Endpoint::new(a.parse().unwrap()).with_weight(*w))
        .collect()
}

/// Parses a socket address literal.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Pins the calling thread to the CPU it is on: per-CPU state (round-robin cursors, counters)
/// then stays in one place across test runs.
pub fn pin_to_current_cpu() {
    let cpu = nix::sched::sched_getcpu().unwrap_or(0);
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// Moves the calling thread into a new network namespace (test threads each get their own;
/// processes it starts inherit it) with `lo` up.
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh("ip link set lo up");
}

/// Forwarding on and a veth pair uf0 / uf1, both up, uf0 with `mac` (when given, else the
/// kernel's random one) and the address `cidr`; returns uf0's ifindex. A neighbour or route on
/// uf0 then makes bpf_fib_lookup answer SUCCESS or NO_NEIGH.
pub fn veth_uf0(mac: Option<&str>, cidr: &str) -> u32 {
    let mac = mac.map_or(String::new(), |m| format!("&& ip link set uf0 address {m}"));
    sh(&format!(
        "echo 1 > /proc/sys/net/ipv4/ip_forward \
         && ip link add name uf0 type veth peer name uf1 {mac} \
         && ip link set uf0 up && ip link set uf1 up && ip addr add {cidr} dev uf0"
    ));
    nix::net::if_::if_nametoindex("uf0").unwrap()
}

/// Runs a shell command in the thread's network namespace; panics on failure.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
