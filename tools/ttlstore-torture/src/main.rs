//! `ttlstore-torture`: the black-box kill loop.
//!
//! The supervisor (`ttlstore-torture run`) starts this same binary as a worker process on a data
//! directory, lets it write for a random moment, kills it with SIGKILL, reopens the store itself
//! and verifies it against the *expected state*, then starts the next worker on the same
//! directory, until a number of kills or a time budget is reached.
//!
//! The worker writes under `SyncPolicy::Always` from several threads: puts with and without TTL,
//! deletes, expire, persist, batches and forced compactions. Every key has a slot in a small
//! memory-mapped file beside the store (`expected.state`) that the worker updates around each
//! operation: before it, the slot's *pending* half gets the version, deleted bit and absolute
//! expiry the operation will leave, and the pending bit is set; after the acknowledgement the
//! *current* half takes them and the bit is cleared. The file is a shared mapping, so a SIGKILL at
//! any instruction leaves it as the kernel's page cache has it: the verifier knows, per key, the
//! one state it must be in, or the two it may be in while an operation was in flight.
//!
//! Verification after each kill: every key holds exactly its current state (value version and
//! absolute expiry) or, when pending, its pending state; no deleted or expired key is back; no key
//! outside the key space exists; a full scan agrees with the point reads. The resolved state is
//! written back to the slots before the next worker starts.
//!
//! Each round runs at its own fixed clock time (`T0 + round * 10 s`), so expiries are exact and
//! short TTLs run out between rounds.
//!
//! ```text
//! ttlstore-torture run [--dir D] [--kills N] [--seconds S] [--threads T] [--keys K] [--seed X]
//! ```
//! Defaults: a temporary directory, 100 kills, 60 s at most, 4 threads, 512 keys.

use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use ttlstore::{ManualClock, Options, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;
const ROUND_MS: u64 = 10_000;
const SLOT_WORDS: usize = 4;
const PENDING: u64 = 1 << 63;
const DELETED: u64 = 1 << 62;
const VERSION_MASK: u64 = (1 << 40) - 1;

fn round_time(round: u64) -> u64 {
    T0 + round * ROUND_MS
}

/// The expected-state file: per key four u64 words, `[cur, cur_expiry, pend, pend_expiry]`, where
/// `cur` and `pend` hold the version (low 40 bits) and the DELETED bit, and `pend` the PENDING bit.
/// An expiry of 0 means none.
struct Expected {
    map: MmapMut,
    keys: usize,
}

impl Expected {
    fn open(path: &Path, keys: usize) -> std::io::Result<Expected> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = (keys * SLOT_WORDS * 8) as u64;
        if f.metadata()?.len() != len {
            f.set_len(len)?;
        }
        // SAFETY: the file is ours (supervisor and worker never run at once), and its length is
        // fixed above; the mapping is accessed through aligned atomics only.
        let map = unsafe { MmapMut::map_mut(&f)? };
        Ok(Expected { map, keys })
    }

    fn word(&self, key: usize, w: usize) -> &AtomicU64 {
        assert!(key < self.keys && w < SLOT_WORDS);
        let off = (key * SLOT_WORDS + w) * 8;
        // SAFETY: in bounds (asserted), 8-byte aligned (the mapping is page-aligned), and every
        // access to these bytes goes through AtomicU64.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    fn current(&self, key: usize) -> (u64, u64) {
        (
            self.word(key, 0).load(Ordering::SeqCst),
            self.word(key, 1).load(Ordering::SeqCst),
        )
    }

    fn pending(&self, key: usize) -> Option<(u64, u64)> {
        let p = self.word(key, 2).load(Ordering::SeqCst);
        (p & PENDING != 0).then(|| (p & !PENDING, self.word(key, 3).load(Ordering::SeqCst)))
    }

    /// Records the state an operation is about to leave.
    fn begin(&self, key: usize, state: u64, expiry: u64) {
        self.word(key, 3).store(expiry, Ordering::SeqCst);
        self.word(key, 2).store(state | PENDING, Ordering::SeqCst);
    }

    /// Records that the operation was acknowledged (or resolved by a verifier).
    fn commit(&self, key: usize, state: u64, expiry: u64) {
        self.word(key, 0).store(state, Ordering::SeqCst);
        self.word(key, 1).store(expiry, Ordering::SeqCst);
        self.word(key, 2).store(0, Ordering::SeqCst);
    }

    fn flush(&self) -> std::io::Result<()> {
        self.map.flush()
    }
}

fn key_name(k: usize) -> Vec<u8> {
    format!("key{k:06}").into_bytes()
}

/// The value of version `v` of key `k`.
fn value_of(k: usize, v: u64) -> Vec<u8> {
    let mut out = format!("k{k}v{v}:").into_bytes();
    out.extend((0..(v * 37 + k as u64) % 160).map(|i| (i as u8).wrapping_add(v as u8)));
    out
}

/// What a state (`word`, `expiry`) looks like through `get_item` at `now`.
fn visible(k: usize, state: u64, expiry: u64, now: u64) -> Option<(Vec<u8>, Option<u64>)> {
    if state & DELETED != 0 || state & VERSION_MASK == 0 || (expiry != 0 && expiry <= now) {
        return None;
    }
    Some((
        value_of(k, state & VERSION_MASK),
        (expiry != 0).then_some(expiry),
    ))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn store_options(now: u64) -> Options {
    Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(64 << 10)
        .clock(Arc::new(ManualClock::new(now)))
}

struct Config {
    dir: PathBuf,
    kills: u64,
    seconds: u64,
    threads: usize,
    keys: usize,
    seed: u64,
    round: u64,
}

fn worker(cfg: &Config) -> Result<(), String> {
    let now = round_time(cfg.round);
    let expected = Arc::new(
        Expected::open(&cfg.dir.join("expected.state"), cfg.keys).map_err(|e| e.to_string())?,
    );
    let store = Store::open_with(cfg.dir.join("data"), store_options(now))
        .map_err(|e| format!("open: {e}"))?;
    println!("READY");
    let handles: Vec<_> = (0..cfg.threads)
        .map(|t| {
            let (store, expected) = (store.clone(), expected.clone());
            let (threads, keys, seed) = (cfg.threads, cfg.keys, cfg.seed);
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                // Keys owned by this thread: k % threads == t, so one operation per key at a time.
                let mine: Vec<usize> = (t..keys).step_by(threads).collect();
                loop {
                    worker_op(&store, &expected, &mine, &mut rng, now)
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "a worker thread panicked".to_string())??;
    }
    Ok(())
}

fn next_version(expected: &Expected, k: usize) -> u64 {
    let (cur, _) = expected.current(k);
    let pend = expected.pending(k).map_or(0, |p| p.0);
    (cur & VERSION_MASK).max(pend & VERSION_MASK) + 1
}

fn worker_op(
    store: &Store,
    expected: &Expected,
    mine: &[usize],
    rng: &mut Rng,
    now: u64,
) -> ttlstore::Result<()> {
    let k = mine[rng.below(mine.len() as u64) as usize];
    let key = key_name(k);
    let (cur, cur_exp) = expected.current(k);
    let live = visible(k, cur, cur_exp, now).is_some();
    let ttl = 1 + rng.below(3 * ROUND_MS);
    match rng.below(20) {
        0..=6 => {
            let v = next_version(expected, k);
            expected.begin(k, v, 0);
            store.put(&key, &value_of(k, v))?;
            expected.commit(k, v, 0);
        }
        7..=12 => {
            let v = next_version(expected, k);
            expected.begin(k, v, now + ttl);
            store.put_with_ttl(&key, &value_of(k, v), Duration::from_millis(ttl))?;
            expected.commit(k, v, now + ttl);
        }
        13 | 14 => {
            let state = (cur & VERSION_MASK) | DELETED;
            expected.begin(k, state, 0);
            let removed = store.delete(&key)?;
            assert_eq!(
                removed, live,
                "delete of key {k} answered {removed}, the expected state says live={live}"
            );
            expected.commit(k, state, 0);
        }
        15 if live => {
            expected.begin(k, cur, now + ttl);
            assert!(
                store.expire(&key, Duration::from_millis(ttl))?,
                "expire of live key {k}"
            );
            expected.commit(k, cur, now + ttl);
        }
        16 if live => {
            expected.begin(k, cur, 0);
            assert_eq!(store.persist(&key)?, cur_exp != 0, "persist of key {k}");
            expected.commit(k, cur, 0);
        }
        17 => {
            let mut b = WriteBatch::new();
            let mut planned = Vec::new();
            for _ in 0..2 + rng.below(4) {
                let k = mine[rng.below(mine.len() as u64) as usize];
                if planned.iter().any(|&(pk, _, _)| pk == k) {
                    continue;
                }
                let v = next_version(expected, k);
                let (state, exp) = if rng.below(4) == 0 {
                    (v | DELETED, 0)
                } else {
                    (v, 0)
                };
                expected.begin(k, state, exp);
                if state & DELETED != 0 {
                    b.delete(&key_name(k));
                } else {
                    b.put(&key_name(k), &value_of(k, v));
                }
                planned.push((k, state, exp));
            }
            store.write_batch(b)?;
            for (k, state, exp) in planned {
                expected.commit(k, state, exp);
            }
        }
        18 if rng.below(8) == 0 => {
            store.compact()?;
        }
        _ => {}
    }
    Ok(())
}

/// Reopens the store after a kill and checks it against the expected state; resolves every
/// pending slot to what the store shows.
fn verify(cfg: &Config, now: u64) -> Result<(u64, u64), String> {
    let expected =
        Expected::open(&cfg.dir.join("expected.state"), cfg.keys).map_err(|e| e.to_string())?;
    let store = Store::open_with(cfg.dir.join("data"), store_options(now))
        .map_err(|e| format!("reopen failed: {e}"))?;
    let (mut live, mut pending) = (0u64, 0u64);
    for k in 0..cfg.keys {
        let got = store
            .get_item(&key_name(k))
            .map_err(|e| format!("get key {k}: {e}"))?
            .map(|i| (i.value.to_vec(), i.expires_at));
        let (cur, cur_exp) = expected.current(k);
        let want = visible(k, cur, cur_exp, now);
        if got == want {
            expected.commit(k, cur, cur_exp);
        } else {
            match expected.pending(k) {
                Some((p, p_exp)) if got == visible(k, p, p_exp, now) => {
                    expected.commit(k, p, p_exp);
                    pending += 1;
                }
                p => {
                    return Err(format!(
                        "key {k}: store has {:?}, expected {:?} (current slot {cur:#x}/{cur_exp}, pending {p:?})",
                        got.map(|(v, e)| (
                            String::from_utf8_lossy(&v[..v.len().min(16)]).into_owned(),
                            e
                        )),
                        want.map(|(v, e)| (
                            String::from_utf8_lossy(&v[..v.len().min(16)]).into_owned(),
                            e
                        )),
                    ));
                }
            }
        }
        live += u64::from(got.is_some());
    }
    let scanned: Vec<Vec<u8>> = store
        .scan_prefix(b"")
        .map(|r| r.map(|(k, _)| k))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let listed: Vec<Vec<u8>> = (0..cfg.keys)
        .map(key_name)
        .filter(|k| store.get(k).ok().flatten().is_some())
        .collect();
    if scanned != listed {
        return Err(format!(
            "a full scan lists {} keys, point reads find {}",
            scanned.len(),
            listed.len()
        ));
    }
    if store.stats().live_keys != live {
        return Err(format!(
            "stats count {} live keys, point reads {live}",
            store.stats().live_keys
        ));
    }
    expected.flush().map_err(|e| e.to_string())?;
    Ok((live, pending))
}

fn supervise(cfg: &mut Config) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = Rng(cfg.seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut pending_total = 0;
    while kills < cfg.kills && started.elapsed() < Duration::from_secs(cfg.seconds) {
        let round = kills;
        let mut child = Command::new(&exe)
            .args(["worker", "--dir"])
            .arg(&cfg.dir)
            .args([
                "--round",
                &round.to_string(),
                "--seed",
                &rng.next().to_string(),
            ])
            .args([
                "--threads",
                &cfg.threads.to_string(),
                "--keys",
                &cfg.keys.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        if rng.below(10) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        } else {
            rx.recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("round {round}: the worker never opened the store"))?;
            std::thread::sleep(Duration::from_millis(1 + rng.below(150)));
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "round {round}: the worker exited by itself: {status}"
            ));
        }
        child.kill().map_err(|e| e.to_string())?;
        child.wait().map_err(|e| e.to_string())?;
        kills += 1;
        let (live, pending) = verify(cfg, round_time(round + 1))
            .map_err(|e| format!("round {round} (seed {}): {e}", cfg.seed))?;
        pending_total += pending;
        if kills % 20 == 0 {
            eprintln!(
                "{kills} kills, {live} live keys, {pending_total} in-flight writes resolved, {:?}",
                started.elapsed()
            );
        }
    }
    println!(
        "ttlstore-torture: {kills} kills in {:.1} s, every acknowledged write verified ({pending_total} in-flight writes landed), seed {}",
        started.elapsed().as_secs_f64(),
        cfg.seed
    );
    if kills == 0 {
        return Err("no kill happened in the time given".into());
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<(String, Config), String> {
    let mode = args.first().cloned().unwrap_or_else(|| "run".into());
    let mut cfg = Config {
        dir: PathBuf::new(),
        kills: 100,
        seconds: 60,
        threads: 4,
        keys: 512,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        round: 0,
    };
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            val.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {val}"))
        };
        match flag.as_str() {
            "--dir" => cfg.dir = PathBuf::from(val),
            "--kills" => cfg.kills = num()?,
            "--seconds" => cfg.seconds = num()?,
            "--threads" => cfg.threads = num()?.clamp(1, 64) as usize,
            "--keys" => cfg.keys = num()?.clamp(1, 1 << 20) as usize,
            "--seed" => cfg.seed = num()?,
            "--round" => cfg.round = num()?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok((mode, cfg))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, mut cfg) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "ttlstore-torture: {e}\nusage: ttlstore-torture run [--dir D] [--kills N] [--seconds S] [--threads T] [--keys K] [--seed X]"
            );
            return ExitCode::from(2);
        }
    };
    let result = match mode.as_str() {
        "worker" => worker(&cfg),
        "run" => {
            let tmp;
            if cfg.dir.as_os_str().is_empty() {
                tmp = std::env::temp_dir().join(format!("ttlstore-torture-{}", std::process::id()));
                cfg.dir = tmp.clone();
                let r = supervise(&mut cfg);
                if r.is_ok() {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                r
            } else {
                supervise(&mut cfg)
            }
        }
        other => Err(format!("unknown mode {other}; use run")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ttlstore-torture: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
