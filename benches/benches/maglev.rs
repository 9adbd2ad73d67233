//! Criterion benchmarks of service load balancing:
//! - `maglev/build`: a table for 1000 backends at M = 65521 (the case), with 100
//!   backends at the default M = 16381 alongside;
//! - `maglev/lookup`: the backend for a flow hash, from the table (`Maglev::lookup`) and through
//!   a service (`Service::select`, which maps the slot to the backend), over a spread of hashes;
//!   an empty closure over the same hashes is the baseline of the same run.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vireo_lb::{Backend, Maglev, Service, ServiceSpec};

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65536, i / 256 % 256, i % 256))
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev/build");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (n, m) in [(100usize, 16381u32), (1000, 65521)] {
        let nm = names(n);
        let list: Vec<(&str, u32)> = nm.iter().map(|s| (s.as_str(), 1)).collect();
        g.bench_function(format!("{n}_backends_m{m}"), |b| {
            b.iter(|| Maglev::build(black_box(&list), m, 0).expect("valid input"))
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let backends: Vec<Backend> = (0..100u8)
        .map(|i| Backend {
            ip: Ipv4Addr::new(10, 244, 1, i),
            port: 8080,
            local: i % 2 == 0,
            terminating: false,
            weight: 1,
        })
        .collect();
    let spec = ServiceSpec {
        name: "default/echo".into(),
        port_name: String::new(),
        port: 80,
        proto: 6,
        frontends: Vec::new(),
        backends,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        external_local: false,
    };
    let svc = Service::new(spec, 16381, 0).expect("valid input");
    let hashes: Vec<u64> = (0..1024u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let mut g = c.benchmark_group("maglev/lookup");
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("baseline_sum", |b| {
        b.iter(|| hashes.iter().fold(0u64, |a, h| a ^ black_box(*h)))
    });
    g.bench_function("table", |b| {
        b.iter(|| {
            hashes
                .iter()
                .filter_map(|h| svc.maglev.lookup(black_box(*h)))
                .sum::<usize>()
        })
    });
    g.bench_function("service_select", |b| {
        b.iter(|| {
            hashes
                .iter()
                .filter_map(|h| svc.select(black_box(*h), false))
                .map(|b| u32::from(b.port))
                .sum::<u32>()
        })
    });
    g.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
