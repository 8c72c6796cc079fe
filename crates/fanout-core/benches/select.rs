//! Cost of one selection decision and of rebuilding the tables.
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use fanout_core::FlowKey;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint};

fn endpoints(n: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000))))
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys: Vec<FlowKey> = (0..1024u16)
        .map(|p| FlowKey::new(SocketAddr::from(([192, 0, 2, (p % 200) as u8], 1024 + p))))
        .collect();
    for dist in [Distribution::RoundRobin, Distribution::ConsistentHash] {
        let set = BackendSet::new(dist, endpoints(16), DEFAULT_TABLE_SIZE);
        c.bench_function(&format!("pick/{}/16", dist.as_str()), |b| {
            let mut cur = 0usize;
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(set.pick(black_box(&keys[i]), &mut cur))
            })
        });
    }
    // A reload or a health change rebuilds the whole set: 100 downstreams, and the 1,000 and
    // 10,000 of a large listener (10,000 at 65,537 slots is about 6.5 slots each).
    let mut build = c.benchmark_group("build/maglev");
    build.sample_size(20);
    for n in [100u16, 1_000, 10_000] {
        let e = endpoints(n);
        build.bench_function(n.to_string(), |b| {
            b.iter(|| {
                black_box(BackendSet::new(
                    Distribution::ConsistentHash,
                    e.clone(),
                    DEFAULT_TABLE_SIZE,
                ))
            })
        });
    }
    build.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
