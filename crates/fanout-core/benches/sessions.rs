//! Cost of the session-table operations on the per-datagram path, at 100,000 sessions.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is a broken benchmark
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fanout_core::session::{PortSlots, SessionTable};

const N: u32 = 100_000;

fn client(i: u32) -> SocketAddr {
    SocketAddr::from((
        [127, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        10_000 + (i % 50_000) as u16,
    ))
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
    // The clock is in milliseconds; at a million datagrams a second it advances once per
    // thousand lookups.
    let mut ticks = 0u64;
    c.bench_function("session/lookup_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7_919) % N;
            ticks += 1;
            black_box(t.lookup(black_box(&client(i)), ticks / 1_000))
        })
    });
    c.bench_function("session/lookup_miss_100k", |b| {
        b.iter(|| {
            i = (i + 7_919) % N;
            black_box(t.find(black_box(&client(N + i))))
        })
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
        let ds: Vec<SocketAddr> = (0..8)
            .map(|d| SocketAddr::from(([10, 0, 0, d], 53)))
            .collect();
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

criterion_group!(benches, bench);
criterion_main!(benches);
