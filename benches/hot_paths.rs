//! Micro-benchmarks of the hot paths, to catch regressions: record encode/decode, index lookup
//! through `Store::get`, and group commit under `SyncPolicy::Always`.
//!
//! `cargo bench --bench hot_paths`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use ttlstore::format::{EncOp, encode_record, read_record, record_len};
use ttlstore::{Options, Store, SyncPolicy};

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"k000000000000000";
    let mut n = i;
    let mut at = 15;
    while n > 0 && at > 0 {
        k[at] = b'0' + (n % 10) as u8;
        n /= 10;
        at -= 1;
    }
    k
}

fn value(i: u64) -> [u8; 100] {
    let mut v = [0u8; 100];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31).wrapping_add(j as u64 * 7) >> 3) as u8;
    }
    v
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn record(c: &mut Criterion) {
    let k = key(42);
    let v = value(42);
    let ops = [EncOp::Put {
        ns: 0,
        key: &k,
        value: &v,
        expires_at: Some(1_800_000_000_000),
    }];
    let len = record_len(&ops);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(len as u64));
    let mut buf = vec![0u8; len];
    let mut offsets = Vec::with_capacity(1);
    g.bench_function("encode put 16+100 B", |b| {
        b.iter(|| {
            offsets.clear();
            let ops = [EncOp::Put {
                ns: 0,
                key: black_box(&k),
                value: black_box(&v),
                expires_at: Some(1_800_000_000_000),
            }];
            encode_record(&mut buf, 7, black_box(1234), &ops, &mut offsets);
            black_box(&buf);
        })
    });
    let mut out = Vec::with_capacity(1);
    g.bench_function("decode put 16+100 B (checksum + fields)", |b| {
        b.iter(|| {
            let rec = read_record(black_box(&buf), 0, 7).expect("valid record");
            rec.ops(&mut out).expect("valid ops");
            black_box(out[0].value.len());
        })
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    const KEYS: u64 = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open");
    for i in 0..KEYS {
        store.put(&key(i), &value(i)).expect("put");
    }
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    g.bench_function("Store::get hit, 100k keys", |b| {
        b.iter(|| {
            let v = store.get(&key(rng.below(KEYS))).expect("get");
            black_box(v.map(|v| v.len()));
        })
    });
    g.bench_function("Store::get miss, 100k keys", |b| {
        b.iter(|| {
            let v = store.get(&key(KEYS + rng.below(KEYS))).expect("get");
            black_box(v.is_none());
        })
    });
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Store::open_with(dir.path(), Options::default().sync(SyncPolicy::Always)).expect("open");
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    let next = std::sync::atomic::AtomicU64::new(0);
    for threads in [1u64, 4] {
        g.bench_with_input(
            BenchmarkId::new("durable put", format!("{threads} threads")),
            &threads,
            |b, &threads| {
                // Time per put: `iters` puts shared by `threads` writers.
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(|| {
                                for _ in 0..per {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    store.put(&key(i), &value(i)).expect("durable put");
                                }
                            });
                        }
                    });
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * threads) as f64)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, record, lookup, group_commit);
criterion_main!(benches);
