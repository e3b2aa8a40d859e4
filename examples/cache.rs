//! Caches a slow function in a ttlstore cache and prints the hit rate.
//!
//! `cargo run --example cache` (add `--release` for realistic timings). The slow function counts
//! the primes below a number by trial division; 2,000 lookups draw from 100 inputs, so most are
//! hits. The store is then reopened to show that the cache is still warm after a restart.

use std::time::{Duration, Instant};
use ttlstore::{CacheOptions, Options, Store, SyncPolicy};

/// The slow function: the number of primes below `n`, by trial division.
fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

/// A small deterministic pseudo-random sequence (xorshift), skewed towards low inputs.
fn inputs(count: usize) -> impl Iterator<Item = u64> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..count).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let r = (x % 100) * (x % 100) / 100; // skew: small ranks come up more often
        20_000 + r * 1_000
    })
}

fn main() -> ttlstore::Result<()> {
    let dir = std::env::temp_dir().join(format!("ttlstore-cache-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = CacheOptions::new(Duration::from_secs(600))
        .jitter(0.1)
        .refresh_ahead(Duration::from_secs(60));

    let store = Store::open_with(&dir, Options::default().sync(SyncPolicy::Never))?;
    let cache = store.cache("primes", options.clone())?;

    let started = Instant::now();
    for n in inputs(2_000) {
        let v = cache.get_or_insert_with(&n.to_be_bytes(), move || {
            Some(primes_below(n).to_be_bytes().to_vec())
        })?;
        debug_assert!(v.is_some());
    }
    let elapsed = started.elapsed();
    let s = cache.stats();
    println!("2000 lookups over 100 inputs in {elapsed:.2?}");
    println!(
        "hits {}  misses {}  loads {}  hit rate {:.1}%  mean load {:.2?}",
        s.hits,
        s.misses,
        s.loads,
        100.0 * s.hit_rate(),
        s.mean_load_time()
    );
    let uncached = s.mean_load_time() * 2_000;
    println!("the same lookups without the cache would take about {uncached:.2?}");

    // Restart: the entries and their expiry times are on disk; the statistics start over.
    drop(cache);
    drop(store);
    let store = Store::open(&dir)?;
    let cache = store.cache("primes", options)?;
    let started = Instant::now();
    for n in inputs(2_000) {
        cache.get_or_insert_with(&n.to_be_bytes(), move || {
            Some(primes_below(n).to_be_bytes().to_vec())
        })?;
    }
    let s = cache.stats();
    println!(
        "after reopening: 2000 lookups in {:.2?}, hit rate {:.1}%, loads {}",
        started.elapsed(),
        100.0 * s.hit_rate(),
        s.loads
    );
    drop(cache);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
