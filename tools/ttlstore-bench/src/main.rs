//! `ttlstore-bench`: ttlstore against fjall, redb, sled (and Redis where installed), side by
//! side in one run. See `BENCHMARKS.md` at the repository root.
//!
//! ```text
//! cargo run --release -p ttlstore-bench -- <workload[,workload…]|all> [options]
//! ```

mod churn;
mod engines;
mod limits;
mod redis;
mod report;
mod util;

use engines::{ENGINES, Engine, Mode};
use report::{Col, Table};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::{R, Rng, Values, dir_bytes, key, timed};

const WORKLOADS: [&str; 10] = [
    "fill",
    "fill-durable",
    "queue",
    "thread",
    "read",
    "reopen",
    "scan",
    "memory",
    "ttl-churn",
    "limits",
];

const USAGE: &str = "usage: ttlstore-bench <workload[,workload...]|all> [options]
workloads: fill fill-durable read reopen scan memory ttl-churn limits
options:
  --rounds N          rounds per workload (default 3; ttl-churn runs once)
  --keys N            keys for fill/read/reopen/memory (default 1000000)
  --duration D        ttl-churn run per variant for ttlstore (default 60s)
  --peer-duration D   ttl-churn run per variant for each peer (default: half of --duration)
  --churn-rate N      ttl-churn offered puts per second (default 100000)
  --ttl D             ttl-churn TTL (default 5s)
  --durable-time D    fill-durable run per engine and thread count (default 1s)
  --engines LIST      comma-separated subset of ttlstore,fjall,redb,sled,redis
  --dir PATH          where temp directories go (default: the system temp dir)";

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct Cfg {
    pub workloads: Vec<String>,
    pub rounds: usize,
    pub keys: u64,
    pub duration: Duration,
    pub peer_duration: Duration,
    pub churn_rate: u64,
    pub ttl: Duration,
    pub durable_time: Duration,
    pub engines: Vec<Engine>,
    pub redis: bool,
    pub base: PathBuf,
}

fn parse_args() -> R<Cfg> {
    let mut args = std::env::args().skip(1);
    let Some(first) = args.next() else {
        return Err(USAGE.into());
    };
    if first == "-h" || first == "--help" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let workloads: Vec<String> = if first == "all" {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        first.split(',').map(str::to_string).collect()
    };
    for w in &workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            return Err(format!("unknown workload {w:?}\n{USAGE}").into());
        }
    }
    let mut cfg = Cfg {
        workloads,
        rounds: 3,
        keys: 1_000_000,
        duration: Duration::from_secs(60),
        peer_duration: Duration::ZERO,
        churn_rate: 100_000,
        ttl: Duration::from_secs(5),
        durable_time: Duration::from_secs(1),
        engines: ENGINES.to_vec(),
        redis: true,
        base: std::env::temp_dir(),
    };
    let mut peer_duration = None;
    while let Some(flag) = args.next() {
        let val = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let dur =
            || util::parse_duration(&val).ok_or_else(|| format!("bad duration {val:?} for {flag}"));
        match flag.as_str() {
            "--rounds" => cfg.rounds = val.parse::<usize>()?.max(1),
            "--keys" => cfg.keys = val.parse::<u64>()?.max(1000),
            "--duration" => cfg.duration = dur()?,
            "--peer-duration" => peer_duration = Some(dur()?),
            "--churn-rate" => cfg.churn_rate = val.parse::<u64>()?.max(1000),
            "--ttl" => cfg.ttl = dur()?.max(Duration::from_millis(100)),
            "--durable-time" => cfg.durable_time = dur()?,
            "--dir" => cfg.base = PathBuf::from(val),
            "--engines" => {
                let names: Vec<&str> = val.split(',').collect();
                cfg.redis = names.contains(&"redis");
                cfg.engines = ENGINES
                    .iter()
                    .copied()
                    .filter(|e| names.contains(&e.name()))
                    .collect();
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
        }
    }
    cfg.peer_duration = peer_duration.unwrap_or(cfg.duration / 2);
    Ok(cfg)
}

fn main() {
    // Hidden mode: measure a fresh process's memory around one open (see `memory`).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__rss") {
        if let Err(e) = rss_child(Path::new(&argv[2])) {
            eprintln!("rss child: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&cfg) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn wants(cfg: &Cfg, w: &str) -> bool {
    cfg.workloads.iter().any(|x| x == w)
}

fn run(cfg: &Cfg) -> R<()> {
    let t0 = Instant::now();
    let redis_bin = redis::installed();
    let redis_on = cfg.redis && redis_bin.is_some();
    let mut table = Table::new(redis_bin.is_some());
    let vals = Values::new();
    let keys = cfg.keys;
    println!("# ttlstore-bench: {}", cfg.workloads.join(", "));
    println!(
        "rounds {}, keys {}, 16-byte keys, 100-byte values, temp dirs under {}; redis-server: {}",
        cfg.rounds,
        keys,
        cfg.base.display(),
        redis_bin
            .as_ref()
            .map_or("not installed".to_string(), |p| p.display().to_string())
    );
    // First, while the disk is quiet (no writeback left over from the engines).
    if wants(cfg, "limits") {
        eprintln!("[{:>5.0}s] limits", t0.elapsed().as_secs_f64());
        for (name, target) in [
            (
                "4 KiB append growing the file + fdatasync",
                limits::Target::Grow,
            ),
            (
                "4 KiB into fallocated (unwritten) space + fdatasync",
                limits::Target::Fallocated,
            ),
            (
                "4 KiB into already-written space + fdatasync",
                limits::Target::Prewritten,
            ),
        ] {
            let f = limits::sync_rate(&cfg.base, target, Duration::from_millis(1500))?;
            table.limit(&format!("{name}: syncs/s"), f.per_sec);
            table.limit(&format!("{name}: p50 µs"), f.p50_us);
            table.limit(&format!("{name}: p99 µs"), f.p99_us);
        }
        let bw = limits::seq_write(&cfg.base, 512 << 20)?;
        table.limit(
            "sequential write 512 MiB (1 MiB writes) + one fdatasync: MB/s",
            bw / 1e6,
        );
        // Sized as the read workload's: the index's hash table holds a 16-byte bucket per key
        // at a load of at most 80%, and a put record is the key and value plus about 15 bytes.
        let table_bytes = keys as usize * 16 * 100 / 80;
        let data_bytes = keys as usize * (util::KEY_LEN + util::VAL_LEN + 15);
        let lat = limits::read_latency(&cfg.base, table_bytes, data_bytes)?;
        let mb = |b: usize| b as f64 / 1e6;
        table.limit(
            &format!(
                "dependent random reads in a {:.0} MB table on huge pages: ns each",
                mb(table_bytes)
            ),
            lat.table_ns,
        );
        table.limit(
            &format!(
                "dependent random reads in {:.0} MB of mapped file: ns each",
                mb(data_bytes)
            ),
            lat.data_ns,
        );
        table.limit(limits::PAIR_NS, lat.pair_ns);
    }
    let dataset = ["fill", "read", "reopen", "scan", "memory"]
        .iter()
        .any(|w| wants(cfg, w));
    if dataset {
        // Warm-up: one small pass per engine, not recorded.
        for &engine in &cfg.engines {
            let mut scratch = Table::new(false);
            dataset_round(engine, cfg, keys / 20, &vals, &mut scratch)?;
        }
        for round in 0..cfg.rounds {
            for &engine in &cfg.engines {
                eprintln!(
                    "[{:>5.0}s] dataset round {} {}",
                    t0.elapsed().as_secs_f64(),
                    round + 1,
                    engine.name()
                );
                dataset_round(engine, cfg, keys, &vals, &mut table)?;
            }
            if redis_on
                && (wants(cfg, "fill") || wants(cfg, "read"))
                && let Some(bin) = &redis_bin
            {
                eprintln!(
                    "[{:>5.0}s] dataset round {} redis",
                    t0.elapsed().as_secs_f64(),
                    round + 1
                );
                redis_dataset(bin, cfg, &vals, &mut table)?;
            }
        }
    }
    if wants(cfg, "fill-durable") {
        for round in 0..cfg.rounds {
            for &engine in &cfg.engines {
                eprintln!(
                    "[{:>5.0}s] durable round {} {}",
                    t0.elapsed().as_secs_f64(),
                    round + 1,
                    engine.name()
                );
                for threads in [1, 8] {
                    let (ops, syncs) = durable(engine, cfg, threads, &vals)?;
                    table.add(
                        "fill-durable",
                        &format!("{threads} writer(s): durable puts/s"),
                        true,
                        Col::Engine(engine),
                        ops,
                    );
                    if let Some(s) = syncs {
                        table.add(
                            "fill-durable",
                            &format!("{threads} writer(s): puts per fdatasync"),
                            true,
                            Col::Engine(engine),
                            s,
                        );
                    }
                }
            }
            if redis_on && let Some(bin) = &redis_bin {
                for threads in [1, 8] {
                    let ops = redis_durable(bin, cfg, threads, &vals)?;
                    table.add(
                        "fill-durable",
                        &format!("{threads} writer(s): durable puts/s"),
                        true,
                        Col::Redis,
                        ops,
                    );
                }
            }
        }
    }
    if wants(cfg, "queue") {
        for round in 0..cfg.rounds {
            for &engine in &cfg.engines {
                eprintln!(
                    "[{:>5.0}s] queue round {} {}",
                    t0.elapsed().as_secs_f64(),
                    round + 1,
                    engine.name()
                );
                for workers in [1, 8] {
                    let cycles = queue_cycles(engine, cfg, workers, &vals)?;
                    table.add(
                        "queue",
                        &format!("{workers} worker(s): durable push+pop+ack cycles/s"),
                        true,
                        Col::Engine(engine),
                        cycles,
                    );
                }
            }
            if redis_on && let Some(bin) = &redis_bin {
                for workers in [1, 8] {
                    let cycles = redis_queue(bin, cfg, workers, &vals)?;
                    table.add(
                        "queue",
                        &format!("{workers} worker(s): durable push+pop+ack cycles/s"),
                        true,
                        Col::Redis,
                        cycles,
                    );
                }
            }
        }
    }
    if wants(cfg, "thread") {
        for round in 0..cfg.rounds {
            for &engine in &cfg.engines {
                eprintln!(
                    "[{:>5.0}s] thread round {} {}",
                    t0.elapsed().as_secs_f64(),
                    round + 1,
                    engine.name()
                );
                let (appends, reads) = thread_rates(engine, cfg, &vals)?;
                let col = Col::Engine(engine);
                table.add(
                    "thread",
                    "appends/s (one message per call, then one sync)",
                    true,
                    col,
                    appends,
                );
                table.add("thread", "random message reads/s", true, col, reads);
            }
        }
    }
    if wants(cfg, "ttl-churn") {
        let ttl_ms = cfg.ttl.as_millis() as u64;
        for variant in churn::VARIANTS {
            for &engine in &cfg.engines {
                let duration = if engine == Engine::Ttlstore {
                    cfg.duration
                } else {
                    cfg.peer_duration
                };
                eprintln!(
                    "[{:>5.0}s] ttl-churn {} {} for {:?}",
                    t0.elapsed().as_secs_f64(),
                    variant.name(),
                    engine.name(),
                    duration
                );
                let p = churn::Params {
                    duration,
                    rate: cfg.churn_rate,
                    ttl_ms,
                    sweep_every: Duration::from_secs(1),
                };
                let Some(o) = churn_with_watchdog(engine, variant, p, &cfg.base)? else {
                    eprintln!(
                        "{} did not finish the {} run within {:?}: its cells stay empty",
                        engine.name(),
                        variant.name(),
                        churn_deadline(duration)
                    );
                    continue;
                };
                let w = format!("ttl-churn {}", variant.name());
                let c = Col::Engine(engine);
                table.add(
                    &w,
                    "space amp: disk/live, median at steady state (lower better)",
                    false,
                    c,
                    o.space_amp,
                );
                table.add(
                    &w,
                    "space amp: max at steady state (lower better)",
                    false,
                    c,
                    o.space_amp_max,
                );
                table.add(
                    &w,
                    "bytes written to storage / user bytes (lower better)",
                    false,
                    c,
                    o.write_amp,
                );
                if let Some(b) = o.background_amp {
                    table.add(&w, "ttlstore: bytes written to storage beyond its log of user writes / user bytes (/proc)", false, c, b);
                }
                if let Some(b) = o.compactor_amp {
                    table.add(
                        &w,
                        "ttlstore: compactor bytes written / user bytes (Stats)",
                        false,
                        c,
                        b,
                    );
                }
                if let Some(b) = o.expire_amp {
                    table.add(
                        &w,
                        "ttlstore: expire-record bytes appended / user bytes (Stats)",
                        false,
                        c,
                        b,
                    );
                }
                table.add(&w, "achieved ops/s", true, c, o.ops_per_sec);
                table.add(
                    &w,
                    "p99 write call µs, first TTL (nothing expired yet)",
                    false,
                    c,
                    o.p99_before_us,
                );
                table.add(
                    &w,
                    "p99 write call µs, steady state",
                    false,
                    c,
                    o.p99_steady_us,
                );
                table.add(
                    &w,
                    "MB on disk at end (apparent)",
                    false,
                    c,
                    o.disk_bytes_end as f64 / 1e6,
                );
                table.add(
                    &w,
                    "live MB at end (16+100 B per live key)",
                    false,
                    c,
                    o.live_bytes_end as f64 / 1e6,
                );
            }
        }
    }
    println!();
    print!("{}", table.render(redis_on));
    print!("{}", report::targets(&table, keys));
    println!("\ntotal time {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// One engine: fill, close, measure the directory, reopen, read, scan (what the chosen
/// workloads need) in a fresh temp dir.
fn dataset_round(engine: Engine, cfg: &Cfg, keys: u64, vals: &Values, table: &mut Table) -> R<()> {
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let path = dir.path();
    let c = Col::Engine(engine);
    let written0 = util::process_write_bytes();
    let kv = engines::open(engine, path, Mode::Buffered)?;
    let (res, t_fill) = timed(|| -> R<()> {
        kv.fill(vals, 0, keys)?;
        kv.sync()
    });
    res?;
    table.add(
        "fill",
        "puts/s (sequential keys, then one sync)",
        true,
        c,
        keys as f64 / t_fill.as_secs_f64(),
    );
    drop(kv);
    let user = keys as f64 * (util::KEY_LEN + util::VAL_LEN) as f64;
    let written = util::process_write_bytes().saturating_sub(written0) as f64;
    table.add(
        "fill",
        "bytes written to storage by close / user bytes (lower better)",
        false,
        c,
        written / user,
    );
    let (apparent, allocated) = dir_bytes(path);
    table.add(
        "fill",
        "MB on disk after close (apparent size; lower better)",
        false,
        c,
        apparent as f64 / 1e6,
    );
    table.add(
        "fill",
        "MB allocated after close (st_blocks; lower better)",
        false,
        c,
        allocated as f64 / 1e6,
    );
    let need_open = ["read", "reopen", "scan"].iter().any(|w| wants(cfg, w));
    if !(need_open || engine == Engine::Ttlstore && wants(cfg, "memory")) {
        return Ok(());
    }
    let per_m = 1e6 / keys as f64;
    let (kv, t_open) = timed(|| engines::open(engine, path, Mode::Buffered));
    let mut kv = kv?;
    if engine == Engine::Ttlstore {
        let hints = hint_files(path)?;
        if hints.is_empty() {
            table.add(
                "reopen",
                "ms per 1M keys (ttlstore: segment scan, no *.hint files)",
                false,
                c,
                t_open.as_secs_f64() * 1e3 * per_m,
            );
        } else {
            table.add(
                "reopen",
                "ms per 1M keys (ttlstore: with *.hint files)",
                false,
                c,
                t_open.as_secs_f64() * 1e3 * per_m,
            );
            drop(kv);
            for h in &hints {
                std::fs::remove_file(h)?;
            }
            let (again, t_scan) = timed(|| engines::open(engine, path, Mode::Buffered));
            kv = again?;
            table.add(
                "reopen",
                "ms per 1M keys (ttlstore: segment scan, hints removed)",
                false,
                c,
                t_scan.as_secs_f64() * 1e3 * per_m,
            );
        }
    } else {
        table.add(
            "reopen",
            "ms per 1M keys (ttlstore: segment scan, no *.hint files)",
            false,
            c,
            t_open.as_secs_f64() * 1e3 * per_m,
        );
    }
    if wants(cfg, "read") {
        let (found, t) = timed(|| -> R<u64> {
            let mut r = kv.reader()?;
            let mut rng = Rng::new(7);
            let mut found = 0;
            for _ in 0..keys {
                found += u64::from(r.get(&key(rng.below(keys)))?);
            }
            Ok(found)
        });
        let found = found?;
        if found != keys {
            return Err(format!("{}: read found {found} of {keys} keys", engine.name()).into());
        }
        table.add(
            "read",
            "random gets/s, 1 thread",
            true,
            c,
            keys as f64 / t.as_secs_f64(),
        );
        let (res, t2) = timed(|| -> R<()> {
            std::thread::scope(|s| -> R<()> {
                let handles: Vec<_> = (0..2u64)
                    .map(|th| {
                        let kv = kv.clone();
                        s.spawn(move || -> R<u64> {
                            let mut r = kv.reader()?;
                            let mut rng = Rng::new(100 + th);
                            let mut found = 0;
                            for _ in 0..keys / 2 {
                                found += u64::from(r.get(&key(rng.below(keys)))?);
                            }
                            Ok(found)
                        })
                    })
                    .collect();
                for h in handles {
                    let f = h.join().map_err(|_| "reader panicked")??;
                    if f != keys / 2 {
                        return Err("2-thread read missed keys".into());
                    }
                }
                Ok(())
            })
        });
        res?;
        table.add(
            "read",
            "random gets/s, 2 threads (total)",
            true,
            c,
            (keys / 2 * 2) as f64 / t2.as_secs_f64(),
        );
    }
    if wants(cfg, "scan") {
        let (prefix, expect) = scan_prefix(keys);
        let (n, t) = timed(|| -> R<usize> { kv.reader()?.scan_prefix(&prefix) });
        let n = n?;
        if n as u64 != expect {
            return Err(
                format!("{}: scan found {n} keys, expected {expect}", engine.name()).into(),
            );
        }
        table.add(
            "scan",
            &format!("keys/s, ordered prefix scan of {}k keys", expect / 1000),
            true,
            c,
            n as f64 / t.as_secs_f64(),
        );
    }
    drop(kv);
    if engine == Engine::Ttlstore && wants(cfg, "memory") {
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(exe)
            .arg("__rss")
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "memory child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let f: Vec<f64> = String::from_utf8(out.stdout)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [rss0, shared0, rss1, shared1, index, live] = f[..] {
            let live = live.max(1.0);
            table.add(
                "memory",
                "RSS growth per key in a fresh process (B)",
                false,
                c,
                (rss1 - rss0) / live,
            );
            table.add(
                "memory",
                "anonymous RSS growth per key (RSS − file-backed) (B)",
                false,
                c,
                ((rss1 - shared1) - (rss0 - shared0)) / live,
            );
            table.add(
                "memory",
                "Stats::index_memory_bytes per key (B)",
                false,
                c,
                index / live,
            );
        } else {
            return Err("memory child printed an unexpected line".into());
        }
    }
    Ok(())
}

/// The prefix of the 100k-key block starting at key 300k (for 1M keys), and how many keys it
/// selects.
fn scan_prefix(keys: u64) -> (Vec<u8>, u64) {
    let mut span = 1u64;
    let mut digits = 0;
    while span * 10 * 10 <= keys {
        span *= 10;
        digits += 1;
    }
    let first = key(3 * span);
    (
        first[..16 - digits].to_vec(),
        span.min(keys.saturating_sub(3 * span)),
    )
}

fn hint_files(dir: &Path) -> R<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "hint") {
            out.push(p);
        }
    }
    Ok(out)
}

/// How long a churn run of `duration` may take, closing included, before it counts as hung.
fn churn_deadline(duration: Duration) -> Duration {
    duration * 4 + Duration::from_secs(120)
}

/// Runs one churn run on its own thread; `None` if it did not finish by [`churn_deadline`] (a
/// peer that deadlocks, as sled 0.34 once did here with every thread parked, then loses only its
/// own cells: the thread and its temp dir are left behind until the process exits).
fn churn_with_watchdog(
    engine: Engine,
    variant: churn::Variant,
    p: churn::Params,
    base: &Path,
) -> R<Option<churn::Outcome>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let base = base.to_path_buf();
    std::thread::Builder::new()
        .name(format!("churn-{}", engine.name()))
        .spawn(move || {
            let vals = Values::new();
            let _ = tx.send(churn::run(engine, variant, p, &base, &vals));
        })?;
    match rx.recv_timeout(churn_deadline(p.duration)) {
        Ok(outcome) => outcome.map(Some),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("{}: the churn run panicked", engine.name()).into())
        }
    }
}

fn rss_child(dir: &Path) -> R<()> {
    let (rss0, shared0) = util::statm()?;
    let store = ttlstore::Store::open(dir)?;
    let (rss1, shared1) = util::statm()?;
    let s = store.stats();
    println!(
        "{rss0} {shared0} {rss1} {shared1} {} {}",
        s.index_memory_bytes, s.live_keys
    );
    Ok(())
}

/// Durable puts/s with `threads` writers for `cfg.durable_time`; for ttlstore also puts per
/// fdatasync (group commit).
fn durable(engine: Engine, cfg: &Cfg, threads: u64, vals: &Values) -> R<(f64, Option<f64>)> {
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let kv = engines::open(engine, dir.path(), Mode::Durable)?;
    // Warm-up: a few durable puts outside the timing.
    for i in 0..50 {
        kv.put(&key(u64::MAX / 2 + i), vals.get(i))?;
    }
    let syncs0 = ttl_syncs(&kv);
    let total = run_writers(threads, cfg.durable_time, |th, i| {
        kv.put(&key(th * 1_000_000_000 + i), vals.get(i))
    })?;
    let secs = total.1.as_secs_f64();
    let syncs = ttl_syncs(&kv).map(|s1| total.0 as f64 / (s1 - syncs0.unwrap_or(0)).max(1) as f64);
    Ok((total.0 as f64 / secs, syncs))
}

/// Durable push + pop + ack cycles per second with `workers` threads, each cycle three durable
/// writes. ttlstore uses its queue (leases with tokens, attempts, crash-safe); the peers the usual
/// emulation with one key per task: push puts `q`+id, pop moves the first `q` key to `l`+id in one
/// atomic write (claims serialised by a mutex, as the engines have no compare-and-swap across
/// keys here), ack deletes it.
fn queue_cycles(engine: Engine, cfg: &Cfg, workers: u64, vals: &Values) -> R<f64> {
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let kv = engines::open(engine, dir.path(), Mode::Durable)?;
    let claim = std::sync::Mutex::new(());
    let native = kv.native_queue();
    let (done, took) = run_writers(workers, cfg.durable_time, |th, i| {
        let v = vals.get(i);
        if let Some(q) = &native {
            q.push(v)?;
            if let Some(task) = q.pop(Duration::ZERO)? {
                q.ack(&task)?;
            }
            return Ok(());
        }
        let id = format!("{th:03}{i:013}").into_bytes();
        kv.put(&engines::queued_key(&id), v)?;
        let task = {
            let _one_claim_at_a_time = claim.lock().map_err(|_| "claim lock poisoned")?;
            kv.queue_claim()?
        };
        if let Some(task) = task {
            kv.queue_ack(&task)?;
        }
        Ok(())
    })?;
    Ok(done as f64 / took.as_secs_f64())
}

fn ttl_syncs(kv: &Arc<dyn engines::Kv>) -> Option<u64> {
    kv.ttl_stats().map(|s| s.syncs)
}

/// Runs `threads` writers calling `put(thread, i)` until `time` has passed; returns the puts
/// done and the time taken.
fn run_writers(
    threads: u64,
    time: Duration,
    put: impl Fn(u64, u64) -> R<()> + Sync,
) -> R<(u64, Duration)> {
    let start = Instant::now();
    let deadline = start + time;
    let done = std::thread::scope(|s| -> R<u64> {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let put = &put;
                s.spawn(move || -> R<u64> {
                    let mut i = 0;
                    while Instant::now() < deadline {
                        put(th, i)?;
                        i += 1;
                    }
                    Ok(i)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| "writer panicked")??;
        }
        Ok(total)
    })?;
    Ok((done, start.elapsed()))
}

fn redis_dataset(bin: &Path, cfg: &Cfg, vals: &Values, table: &mut Table) -> R<()> {
    let server = redis::Server::start(bin, &cfg.base, "everysec")?;
    let mut c = server.connect()?;
    let keys = cfg.keys;
    let (res, t) = timed(|| redis::fill(&mut c, vals, 0, keys));
    res?;
    if wants(cfg, "fill") {
        table.add(
            "fill",
            "puts/s (sequential keys, then one sync)",
            true,
            Col::Redis,
            keys as f64 / t.as_secs_f64(),
        );
        let (apparent, allocated) = dir_bytes(server.dir.path());
        table.add(
            "fill",
            "MB on disk after close (apparent size; lower better)",
            false,
            Col::Redis,
            apparent as f64 / 1e6,
        );
        table.add(
            "fill",
            "MB allocated after close (st_blocks; lower better)",
            false,
            Col::Redis,
            allocated as f64 / 1e6,
        );
    }
    if wants(cfg, "read") {
        let (found, t) = timed(|| redis::read(&mut c, keys, keys, 7));
        if found? != keys {
            return Err("redis read missed keys".into());
        }
        table.add(
            "read",
            "random gets/s, 1 thread",
            true,
            Col::Redis,
            keys as f64 / t.as_secs_f64(),
        );
        let (res, t2) = timed(|| {
            std::thread::scope(|s| -> R<()> {
                let hs: Vec<_> = (0..2u64)
                    .map(|th| {
                        let server = &server;
                        s.spawn(move || -> R<u64> {
                            redis::read(&mut server.connect()?, keys, keys / 2, 100 + th)
                        })
                    })
                    .collect();
                for h in hs {
                    h.join().map_err(|_| "redis reader panicked")??;
                }
                Ok(())
            })
        });
        res?;
        table.add(
            "read",
            "random gets/s, 2 threads (total)",
            true,
            Col::Redis,
            (keys / 2 * 2) as f64 / t2.as_secs_f64(),
        );
    }
    Ok(())
}

/// Messages per thread run.
const THREAD_MESSAGES: u64 = 200_000;

/// Appends to one message thread and random reads of single messages. ttlstore uses its
/// `Thread` (offsets assigned and made never-reused by the store); the peers the usual emulation:
/// the caller counts offsets and puts `t` + offset (big-endian) per message. Default buffering,
/// one sync at the end, as in `fill`.
fn thread_rates(engine: Engine, cfg: &Cfg, vals: &Values) -> R<(f64, f64)> {
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let kv = engines::open(engine, dir.path(), Mode::Buffered)?;
    let thread = kv.native_thread();
    let msg_key = |off: u64| [b"t".as_slice(), &off.to_be_bytes()].concat();
    let (res, t) = timed(|| -> R<()> {
        for i in 0..THREAD_MESSAGES {
            match &thread {
                Some(th) => {
                    th.append(vals.get(i))?;
                }
                None => kv.put(&msg_key(i), vals.get(i))?,
            }
        }
        kv.sync()
    });
    res?;
    let appends = THREAD_MESSAGES as f64 / t.as_secs_f64();
    let mut rng = Rng::new(0x7EAD);
    let mut reader = kv.reader()?;
    let (found, t) = timed(|| -> R<u64> {
        let mut found = 0;
        for _ in 0..THREAD_MESSAGES {
            let off = rng.below(THREAD_MESSAGES);
            let hit = match &thread {
                Some(th) => th.read(off, 1)?.first().is_some_and(|m| m.offset == off),
                None => reader.get(&msg_key(off))?,
            };
            found += u64::from(hit);
        }
        Ok(found)
    });
    if found? != THREAD_MESSAGES {
        return Err("a thread message was not found".into());
    }
    Ok((appends, THREAD_MESSAGES as f64 / t.as_secs_f64()))
}

/// Redis's reliable-queue pattern under `appendfsync always`: LPUSH, RPOPLPUSH to a processing
/// list, LREM from it (the ack); one connection per worker.
fn redis_queue(bin: &Path, cfg: &Cfg, workers: u64, vals: &Values) -> R<f64> {
    let server = redis::Server::start(bin, &cfg.base, "always")?;
    let conns: Vec<std::sync::Mutex<redis::Conn>> = (0..workers)
        .map(|_| server.connect().map(std::sync::Mutex::new))
        .collect::<R<_>>()?;
    let (n, t) = run_writers(workers, cfg.durable_time, |th, i| {
        let mut c = conns[th as usize].lock().map_err(|_| "poisoned")?;
        let mut task = format!("{th:03}{i:013}").into_bytes();
        task.extend_from_slice(vals.get(i));
        c.call(&[b"LPUSH", b"jobs", &task])?;
        c.queue(&[b"RPOPLPUSH", b"jobs", b"processing"]);
        c.flush()?;
        if let Some(popped) = c.reply_bytes()? {
            c.call(&[b"LREM", b"processing", b"1", &popped])?;
        }
        Ok(())
    })?;
    Ok(n as f64 / t.as_secs_f64())
}

fn redis_durable(bin: &Path, cfg: &Cfg, threads: u64, vals: &Values) -> R<f64> {
    let server = redis::Server::start(bin, &cfg.base, "always")?;
    let conns: Vec<std::sync::Mutex<redis::Conn>> = (0..threads)
        .map(|_| server.connect().map(std::sync::Mutex::new))
        .collect::<R<_>>()?;
    let (n, t) = run_writers(threads, cfg.durable_time, |th, i| {
        let mut c = conns[th as usize].lock().map_err(|_| "poisoned")?;
        match c.call(&[b"SET", &key(th * 1_000_000_000 + i), vals.get(i)])? {
            redis::Reply::Ok => Ok(()),
            other => Err(format!("SET replied {other:?}").into()),
        }
    })?;
    Ok(n as f64 / t.as_secs_f64())
}
