//! Cost of the session operations on the per-datagram path, at 100,000 sessions: the table
//! and port-slot pieces, and the whole decision the userspace worker asks the session machine
//! for (a known client's datagram, a downstream's reply).
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is a broken benchmark
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint};
use fanout_core::session::{MachineConfig, PortSlots, Reply, SessionMachine, SessionTable};

const N: u32 = 100_000;

fn client(i: u32) -> SocketAddr {
    SocketAddr::from((
        [127, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        10_000 + (i % 50_000) as u16,
    ))
}

/// Downstream `d` of the 8 the benchmarks spread sessions over.
fn downstream(d: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, d], 53))
}

/// Moves `i` on to the next of the `N` clients and returns it. The step is prime, so a round
/// visits every client, and the order is scattered, not the order they were inserted in.
fn next_client(i: &mut u32) -> u32 {
    *i = (*i + 7_919) % N;
    *i
}

/// The benchmarks' clock, in milliseconds: at a million datagrams a second it advances once per
/// thousand of them.
#[derive(Default)]
struct Clock {
    datagrams: u64,
}

impl Clock {
    /// One more datagram; returns the time it arrived at.
    fn tick(&mut self) -> u64 {
        self.datagrams += 1;
        self.now()
    }

    fn now(&self) -> u64 {
        self.datagrams / 1_000
    }
}

fn full_table() -> SessionTable<[u64; 4]> {
    let mut t = SessionTable::new(N as usize, 60_000);
    for i in 0..N {
        t.insert(client(i), [u64::from(i); 4], 0);
    }
    t
}

fn bench(c: &mut Criterion) {
    let mut t = full_table();
    let mut i = 0u32;
    let mut now = 0u64;
    let mut clock = Clock::default();
    c.bench_function("session/lookup_hit_100k", |b| {
        b.iter(|| black_box(t.lookup(black_box(&client(next_client(&mut i))), clock.tick())))
    });
    c.bench_function("session/lookup_miss_100k", |b| {
        b.iter(|| black_box(t.find(black_box(&client(N + next_client(&mut i))))))
    });
    c.bench_function("session/insert_evict_100k", |b| {
        let mut next = N;
        b.iter(|| {
            next += 1;
            now += 1;
            black_box(t.insert(client(next), [0; 4], now))
        })
    });
    c.bench_function("session/expire_1k_of_100k", |b| {
        b.iter_batched(
            full_table,
            |mut t| black_box(t.expire(120_000, 1_000, |_, _, _| {})),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("ports/acquire_release_8_downstreams", |b| {
        let mut p = PortSlots::new(1 << 20);
        let ds: Vec<SocketAddr> = (0..8).map(downstream).collect();
        let held: Vec<_> = (0..N)
            .map(|i| {
                (
                    ds[(i % 8) as usize],
                    p.acquire(ds[(i % 8) as usize]).unwrap().socket,
                )
            })
            .collect();
        let mut j = 0usize;
        b.iter(|| {
            j = (j + 1) % held.len();
            let (d, s) = held[j];
            p.release(d, s);
            black_box(p.acquire(d))
        })
    });
}

/// A machine with `N` sessions over 8 downstreams (reply path on, sticky), and its set.
fn full_machine() -> (SessionMachine, BackendSet) {
    let eps = (0..8).map(|d| Endpoint::new(downstream(d))).collect();
    let set = BackendSet::new(Distribution::RoundRobin, eps, DEFAULT_TABLE_SIZE);
    let mut m = SessionMachine::new(MachineConfig {
        distribution: Distribution::RoundRobin,
        sticky: true,
        reply: true,
        max_sessions: N as usize,
        idle_ms: 60_000,
        max_upstream_ports: 1 << 20,
        cursor: 0,
    });
    for i in 0..N {
        black_box(m.on_datagram(client(i), None, &set, 1, 0));
    }
    (m, set)
}

fn bench_machine(c: &mut Criterion) {
    let (mut m, set) = full_machine();
    let mut i = 0u32;
    let mut clock = Clock::default();
    c.bench_function("machine/datagram_known_client_100k", |b| {
        b.iter(|| {
            let from = black_box(client(next_client(&mut i)));
            black_box(m.on_datagram(from, None, &set, 1, clock.tick()))
        })
    });
    // Replies come back on the port the session sends from, from its downstream.
    let routes: Vec<(u32, SocketAddr)> = (0..N)
        .step_by(97)
        .filter_map(|i| {
            let s = m.session(&client(i))?;
            Some((s.port?, s.downstream?))
        })
        .collect();
    let mut j = 0usize;
    c.bench_function("machine/reply_100k", |b| {
        b.iter(|| {
            j = (j + 1) % routes.len();
            let (port, from) = routes[j];
            let r = m.on_reply(port, from, &set, clock.now());
            debug_assert!(matches!(r, Reply::Relay { .. }));
            black_box(r)
        })
    });
}

criterion_group!(benches, bench, bench_machine);
criterion_main!(benches);
