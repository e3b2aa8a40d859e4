//! The TTL cache against moka on the same keys: cached `get`, and `get_or_insert_with` from 8
//! threads with a 90% hit rate.
//!
//! `cargo bench --bench cache` (add `-- --warm-up-time 1 --measurement-time 3` for a quick run).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{CacheOptions, Options, Store, SyncPolicy};

const KEYS: u64 = 100_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"cachekey");
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// A fixed pseudo-random order of key indices (xorshift).
fn order(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % KEYS
        })
        .collect()
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path(), Options::default().sync(SyncPolicy::Never))
        .expect("open store");
    (dir, store)
}

fn cached_get(c: &mut Criterion) {
    let (_dir, store) = open();
    let cache = store
        .cache("bench", CacheOptions::new(Duration::from_secs(3600)))
        .expect("cache");
    let moka: moka::sync::Cache<[u8; 16], Arc<[u8]>> = moka::sync::Cache::builder()
        .time_to_live(Duration::from_secs(3600))
        .build();
    for i in 0..KEYS {
        cache.insert(&key(i), &VALUE).expect("insert");
        moka.insert(key(i), Arc::from(&VALUE[..]));
    }
    let keys = order(1 << 16, 0x9E37_79B9_7F4A_7C15);
    let mut group = c.benchmark_group("cached get, 100k keys, 100-byte values");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("ttlstore Cache::get", |b| {
        b.iter(|| {
            for &i in &keys {
                let hit = cache.get(&key(i)).expect("get");
                assert!(hit.is_cached());
            }
        })
    });
    group.bench_function("moka get", |b| {
        b.iter(|| {
            for &i in &keys {
                assert!(moka.get(&key(i)).is_some());
            }
        })
    });
    group.finish();
}

fn get_or_insert_8_threads(c: &mut Criterion) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 4096;
    let mut group = c.benchmark_group("get_or_insert_with, 8 threads, 90% hits");
    group.throughput(Throughput::Elements((THREADS * PER_THREAD) as u64));
    group.sample_size(20);
    let (_dir, store) = open();
    let cache = store
        .cache("bench8", CacheOptions::new(Duration::from_secs(3600)))
        .expect("cache");
    // 90% of the keys are warm; every lookup of the other 10% misses once and loads.
    let warm = KEYS * 9 / 10;
    for i in 0..warm {
        cache.insert(&key(i), &VALUE).expect("insert");
    }
    let moka: moka::sync::Cache<[u8; 16], Arc<[u8]>> = moka::sync::Cache::builder()
        .time_to_live(Duration::from_secs(3600))
        .build();
    for i in 0..warm {
        moka.insert(key(i), Arc::from(&VALUE[..]));
    }
    let orders: Vec<Vec<u64>> = (0..THREADS)
        .map(|t| order(PER_THREAD, 0x1234 + t as u64))
        .collect();
    // Before each iteration (untimed) the cold tenth is made cold again, so the hit rate stays
    // near 90%.
    group.bench_function(BenchmarkId::new("ttlstore", "get_or_insert_with"), |b| {
        let cool = || {
            for i in warm..KEYS {
                cache.invalidate(&key(i)).expect("invalidate");
            }
        };
        b.iter_batched(
            cool,
            |()| {
                std::thread::scope(|s| {
                    for ord in &orders {
                        let cache = cache.clone();
                        s.spawn(move || {
                            for &i in ord {
                                let v = cache
                                    .get_or_insert_with(&key(i), || Some(VALUE.to_vec()))
                                    .expect("load");
                                assert!(v.is_some());
                            }
                        });
                    }
                });
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function(BenchmarkId::new("moka", "get_with"), |b| {
        let cool = || {
            for i in warm..KEYS {
                moka.invalidate(&key(i));
            }
        };
        b.iter_batched(
            cool,
            |()| {
                std::thread::scope(|s| {
                    for ord in &orders {
                        let moka = moka.clone();
                        s.spawn(move || {
                            for &i in ord {
                                let v = moka.get_with(key(i), || Arc::from(&VALUE[..]));
                                assert_eq!(v.len(), 100);
                            }
                        });
                    }
                });
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, cached_get, get_or_insert_8_threads);
criterion_main!(benches);
