//! Point-read latency on one thread while another thread fills the store: how long a reader can
//! be held up by a writer (the index's growth, fresh memory faulted in, compaction of its arena).
//! Prints a markdown table, one row per round. Not a test: figures, no thresholds.
//!
//! ```text
//! cargo run --release -p ttlstore-bench --bin reader_stalls -- [--keys N] [--rounds R] [--dir DIR]
//! ```
//! `--keys` is the fill's size (default 2,000,000 keys of 16 bytes with 100-byte values);
//! `--rounds` how many fills, each into a fresh store (default 3); `--dir` where the stores go
//! (default: the system's temporary directory). The reader gets random keys among those written
//! so far and times each get; the writer puts keys one at a time with the default options.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use ttlstore::Store;

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;

struct Args {
    keys: u64,
    rounds: usize,
    dir: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        keys: 2_000_000,
        rounds: 3,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let val = it.next().ok_or(format!("{arg} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{arg} {val}: {e}");
        match arg.as_str() {
            "--keys" => a.keys = val.parse::<u64>().map_err(bad)?.max(10_000),
            "--rounds" => a.rounds = val.parse::<usize>().map_err(bad)?.max(1),
            "--dir" => a.dir = PathBuf::from(val),
            _ => {
                return Err(format!(
                    "unknown option {arg}; see the file's documentation"
                ));
            }
        }
    }
    Ok(a)
}

fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    k[0] = b'k';
    let digits = i.to_string();
    k[KEY_LEN - digits.len()..].copy_from_slice(digits.as_bytes());
    k
}

/// One round's figures.
struct Round {
    puts_per_s: f64,
    /// Every get's latency in nanoseconds, sorted.
    lat: Vec<u64>,
}

impl Round {
    fn quantile_us(&self, q: f64) -> f64 {
        let i = ((self.lat.len() - 1) as f64 * q).round() as usize;
        self.lat[i] as f64 / 1e3
    }
    fn over_ms(&self, ms: u64) -> usize {
        self.lat.len() - self.lat.partition_point(|&l| l <= ms * 1_000_000)
    }
}

fn round(a: &Args) -> Result<Round, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(&a.dir)?;
    let store = Store::open(dir.path())?;
    let value = [7u8; VALUE_LEN];
    let first = 1000;
    for i in 0..first {
        store.put(&key(i), &value)?;
    }
    let written = Arc::new(AtomicU64::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, written, stop) = (store.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || -> Result<Vec<u64>, ttlstore::Error> {
            let mut lat = Vec::with_capacity(1 << 24);
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % written.load(Ordering::Acquire));
                let t = Instant::now();
                let found = store.get(&k)?.is_some();
                lat.push(t.elapsed().as_nanos() as u64);
                assert!(found, "a written key was not found");
            }
            Ok(lat)
        })
    };
    let t = Instant::now();
    for i in first..a.keys {
        store.put(&key(i), &value)?;
        written.store(i + 1, Ordering::Release);
    }
    let puts_per_s = (a.keys - first) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = reader.join().map_err(|_| "the reader panicked")??;
    lat.sort_unstable();
    Ok(Round { puts_per_s, lat })
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "Gets on one thread while another fills {} keys (one put at a time, default options)\n",
        a.keys
    );
    println!(
        "| round | fill puts/s | gets | p99.9 µs | p99.99 µs | longest ms | over 1 ms | over 3 ms | over 10 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in 1..=a.rounds {
        let r = match round(&a) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("round {n}: {e}");
                std::process::exit(1);
            }
        };
        println!(
            "| {n} | {:.2}M | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.puts_per_s / 1e6,
            r.lat.len(),
            r.quantile_us(0.999),
            r.quantile_us(0.9999),
            r.quantile_us(1.0) / 1e3,
            r.over_ms(1),
            r.over_ms(3),
            r.over_ms(10),
        );
    }
}
