//! Benchmark of the layers above the store: durable queue cycles (push + pop + ack, each under
//! `SyncPolicy::Always`) with 1 and 8 worker threads, and message-thread appends and reads.
//! Prints a markdown table. Not a test: figures, no thresholds.
//!
//! ```text
//! cargo run --release -p ttlstore-bench --bin layers -- [--secs N] [--dir DIR]
//! ```
//! `--secs` is the run time of each measurement (default 3); `--dir` where the temporary stores
//! go (default: the current directory, so the figures are for that file system's fdatasync).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use ttlstore::{Options, Store, SyncPolicy};

const PAYLOAD: usize = 100;

struct Args {
    secs: f64,
    dir: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        secs: 3.0,
        dir: PathBuf::from("."),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--secs" => {
                a.secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--secs takes a positive number")?
            }
            "--dir" => a.dir = PathBuf::from(it.next().ok_or("--dir takes a directory")?),
            "-h" | "--help" => return Err("usage: layers [--secs N] [--dir DIR]".into()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: layers [--secs N] [--dir DIR]"
                ));
            }
        }
    }
    Ok(a)
}

fn open(dir: &tempfile::TempDir, sync: SyncPolicy) -> Store {
    Store::open_with(dir.path(), Options::default().sync(sync)).expect("open the bench store")
}

/// Durable push + pop + ack cycles per second with `workers` threads on one queue.
fn queue_cycles(a: &Args, workers: usize) -> (f64, u64) {
    let dir = tempfile::Builder::new()
        .prefix("layers-bench")
        .tempdir_in(&a.dir)
        .expect("temp dir");
    let store = open(&dir, SyncPolicy::Always);
    let q = store.queue("bench").expect("queue");
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (q, stop, cycles) = (q.clone(), stop.clone(), cycles.clone());
            std::thread::spawn(move || {
                let payload = vec![7u8; PAYLOAD];
                while !stop.load(Ordering::Relaxed) {
                    q.push(&payload).expect("push");
                    if let Some(t) = q.pop(Duration::from_secs(5)).expect("pop") {
                        q.ack(&t).expect("ack");
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(a.secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = cycles.load(Ordering::Relaxed);
    let syncs = store.stats().syncs;
    (n as f64 / secs, syncs)
}

/// Appends per second to one thread, one message per call.
fn thread_appends(a: &Args, sync: SyncPolicy) -> (f64, tempfile::TempDir, u64) {
    let dir = tempfile::Builder::new()
        .prefix("layers-bench")
        .tempdir_in(&a.dir)
        .expect("temp dir");
    let store = open(&dir, sync);
    let t = store.thread("bench").expect("thread");
    let payload = vec![7u8; PAYLOAD];
    let start = Instant::now();
    let limit = Duration::from_secs_f64(a.secs);
    let mut n = 0u64;
    while start.elapsed() < limit {
        for _ in 0..64 {
            t.append(&payload).expect("append");
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(t);
    store.close().expect("close");
    (rate, dir, n)
}

/// Reads per second: single messages at random offsets, and messages in pages of 100.
fn thread_reads(a: &Args, dir: &tempfile::TempDir, len: u64) -> (f64, f64) {
    let store = open(dir, SyncPolicy::Never);
    let t = store.thread("bench").expect("thread");
    let limit = Duration::from_secs_f64(a.secs);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let start = Instant::now();
    let mut singles = 0u64;
    while start.elapsed() < limit {
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = t.read(x % len, 1).expect("read");
            assert_eq!(m.len(), 1, "every offset below len holds a message");
            singles += 1;
        }
    }
    let single_rate = singles as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut msgs = 0u64;
    let mut off = 0;
    while start.elapsed() < limit {
        let page = t.read(off, 100).expect("read");
        msgs += page.len() as u64;
        off = page.last().map_or(0, |m| m.offset + 1);
    }
    (single_rate, msgs as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for workers in [1, 8] {
        let (rate, syncs) = queue_cycles(&a, workers);
        rows.push((
            format!("queue push+pop+ack, {workers} worker(s), SyncPolicy::Always"),
            format!("{rate:.0} cycles/s"),
            format!("{syncs} fdatasyncs in all; 3 durable writes per cycle"),
        ));
    }
    let (append_always, _dir_a, _) = thread_appends(&a, SyncPolicy::Always);
    rows.push((
        "thread append, SyncPolicy::Always".into(),
        format!("{append_always:.0} appends/s"),
        "one message per call".into(),
    ));
    let (append_never, dir, len) = thread_appends(&a, SyncPolicy::Never);
    rows.push((
        "thread append, SyncPolicy::Never".into(),
        format!("{append_never:.0} appends/s"),
        "one message per call".into(),
    ));
    let (single, paged) = thread_reads(&a, &dir, len);
    rows.push((
        "thread read(offset, 1), random offsets".into(),
        format!("{single:.0} reads/s"),
        format!("{len} messages in the thread"),
    ));
    rows.push((
        "thread read(offset, 100), sequential".into(),
        format!("{paged:.0} messages/s"),
        format!("{len} messages in the thread"),
    ));
    println!("| workload | rate | notes |");
    println!("|---|---:|---|");
    for (w, r, n) in rows {
        println!("| {w} | {r} | {n} |");
    }
    println!(
        "\n{PAYLOAD}-byte payloads, {:.1} s per row, stores under {}",
        a.secs,
        a.dir.display()
    );
}
