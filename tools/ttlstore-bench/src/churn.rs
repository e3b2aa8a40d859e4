//! The TTL churn workload of issue 3: 100-byte values written continuously at a fixed offered
//! rate with a short TTL; space amplification (bytes on disk / live bytes) at steady state and
//! write amplification (bytes the process wrote to storage / bytes users wrote).

use crate::engines::{self, ChurnOp, Engine, Kv, Mode};
use crate::util::{
    KEY_LEN, R, Rng, VAL_LEN, Values, dir_bytes, key, now_ms, process_write_bytes, quantile,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The three shapes of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Every key gets the same TTL.
    OneTtl,
    /// TTLs spread uniformly over [1 s, 2 × TTL − 1 s].
    Spread,
    /// One TTL; 80% new keys, 10% overwrites and 10% deletes of recent keys.
    Mixed,
}

pub const VARIANTS: [Variant; 3] = [Variant::OneTtl, Variant::Spread, Variant::Mixed];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::OneTtl => "one TTL",
            Variant::Spread => "spread TTLs",
            Variant::Mixed => "20% overwrite+delete",
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub duration: Duration,
    /// Offered puts per second.
    pub rate: u64,
    pub ttl_ms: u64,
    /// How often peers sweep expired keys and sync.
    pub sweep_every: Duration,
}

/// What one run measured (steady state = the second half of the run).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Median of disk bytes (apparent) / live bytes over the steady-state samples.
    pub space_amp: f64,
    /// Highest disk bytes / live bytes seen at steady state.
    pub space_amp_max: f64,
    /// Bytes written to storage by the process / user bytes, at steady state.
    pub write_amp: f64,
    /// For ttlstore: (bytes written to storage − its log appends of the user writes) / user
    /// bytes: what expiry records, compaction and hint files cost.
    pub background_amp: Option<f64>,
    /// For ttlstore, from its own counters: compaction bytes written / user bytes.
    pub compactor_amp: Option<f64>,
    /// For ttlstore: (log bytes appended − the harness's user records) / user bytes, i.e. what
    /// expire records cost.
    pub expire_amp: Option<f64>,
    /// Operations per second achieved.
    pub ops_per_sec: f64,
    /// p99 latency of one write call, µs, before anything could expire (first TTL of the run)
    /// and at steady state.
    pub p99_before_us: f64,
    pub p99_steady_us: f64,
    /// Live bytes (16 + 100 per live key) at the end, and disk bytes at the end.
    pub live_bytes_end: u64,
    pub disk_bytes_end: u64,
}

const GROUP: usize = 64;
const ENTRY: u64 = (KEY_LEN + VAL_LEN) as u64;

struct Sample {
    at: Duration,
    disk: u64,
    live: u64,
    written: u64,
    user: u64,
    logged: u64,
    /// ttlstore's own counters: `Stats::compaction_bytes_written` and `Stats::bytes_appended`.
    compacted: u64,
    appended: u64,
}

/// Runs one variant against one engine in a fresh directory under `base`.
pub fn run(engine: Engine, variant: Variant, p: Params, base: &Path, vals: &Values) -> R<Outcome> {
    let dir = tempfile::tempdir_in(base)?;
    let kv = engines::open(engine, dir.path(), Mode::Buffered)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = (engine != Engine::Ttlstore).then(|| {
        let kv = kv.clone();
        let stop = stop.clone();
        let every = p.sweep_every;
        std::thread::spawn(move || -> R<()> {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                kv.sweep(now_ms())?;
                // Like ttlstore's default SyncPolicy::Interval(1 s): writes reach the disk
                // within about a second in every engine.
                kv.sync()?;
            }
            Ok(())
        })
    });
    let result = drive(&*kv, engine, variant, p, dir.path(), vals);
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = sweeper {
        h.join().map_err(|_| "sweeper panicked")??;
    }
    drop(kv);
    result
}

fn drive(
    kv: &dyn Kv,
    engine: Engine,
    variant: Variant,
    p: Params,
    dir: &Path,
    vals: &Values,
) -> R<Outcome> {
    let mut rng = Rng::new(0xc4u64 + variant as u64);
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let window = (p.rate * p.ttl_ms / 1000).max(1);
    let mut next_id = 0u64;
    let (mut user, mut logged) = (0u64, 0u64);
    let mut samples = Vec::new();
    let mut lat_before = Vec::new();
    let mut lat_steady = Vec::new();
    let written0 = process_write_bytes();
    let start = Instant::now();
    let mut next_sample = Duration::from_secs(1);
    let mut groups = 0u64;
    let mut ops = Vec::with_capacity(GROUP);
    while start.elapsed() < p.duration {
        // Pace: group g is due at g * GROUP / rate seconds.
        let due = Duration::from_secs_f64(groups as f64 * GROUP as f64 / p.rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        groups += 1;
        ops.clear();
        for _ in 0..GROUP {
            let recent = |rng: &mut Rng, next_id: u64| next_id - 1 - rng.below(next_id.min(window));
            let op = match variant {
                Variant::OneTtl => ChurnOp::Put {
                    id: next_id,
                    ttl_ms: p.ttl_ms,
                },
                Variant::Spread => {
                    let lo = 1000.min(p.ttl_ms);
                    let hi = (2 * p.ttl_ms).saturating_sub(1000).max(lo + 1);
                    ChurnOp::Put {
                        id: next_id,
                        ttl_ms: lo + rng.below(hi - lo),
                    }
                }
                Variant::Mixed => {
                    let r = rng.below(10);
                    if r < 8 || next_id == 0 {
                        ChurnOp::Put {
                            id: next_id,
                            ttl_ms: p.ttl_ms,
                        }
                    } else if r == 8 {
                        ChurnOp::Put {
                            id: recent(&mut rng, next_id),
                            ttl_ms: p.ttl_ms,
                        }
                    } else {
                        ChurnOp::Delete {
                            id: recent(&mut rng, next_id),
                        }
                    }
                }
            };
            if let ChurnOp::Put { id, .. } = op
                && id == next_id
            {
                next_id += 1;
            }
            ops.push(op);
        }
        let now = now_ms();
        let steady = start.elapsed() >= p.duration / 2;
        let before = !steady && start.elapsed() < Duration::from_millis(p.ttl_ms);
        // One call per op, except redb: one transaction per group (see engines.rs).
        let per_call: usize = if engine == Engine::Redb { GROUP } else { 1 };
        for chunk in ops.chunks(per_call) {
            let t = Instant::now();
            logged += kv.churn(vals, chunk, now)?;
            let us = t.elapsed().as_secs_f64() * 1e6;
            if before {
                lat_before.push(us);
            } else if steady {
                lat_steady.push(us);
            }
        }
        for op in &ops {
            match *op {
                ChurnOp::Put { id, ttl_ms } => {
                    live.insert(id, now + ttl_ms);
                    heap.push(Reverse((now + ttl_ms, id)));
                    user += ENTRY;
                }
                ChurnOp::Delete { id } => {
                    live.remove(&id);
                    user += KEY_LEN as u64;
                }
            }
        }
        if start.elapsed() >= next_sample {
            next_sample += Duration::from_secs(1);
            let now = now_ms();
            while let Some(Reverse((exp, id))) = heap.peek().copied() {
                if exp > now {
                    break;
                }
                heap.pop();
                if live.get(&id) == Some(&exp) {
                    live.remove(&id);
                }
            }
            let st = kv.ttl_stats();
            samples.push(Sample {
                compacted: st.as_ref().map_or(0, |s| s.compaction_bytes_written),
                appended: st.as_ref().map_or(0, |s| s.bytes_appended),
                at: start.elapsed(),
                disk: dir_bytes(dir).0,
                live: live.len() as u64 * ENTRY,
                written: process_write_bytes() - written0,
                user,
                logged,
            });
        }
    }
    let elapsed = start.elapsed();
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= p.duration / 2).collect();
    let (Some(first), Some(last)) = (steady.first(), steady.last()) else {
        return Err(
            "ttl-churn: run too short for a steady-state sample (use --duration ≥ 4s)".into(),
        );
    };
    let mut amps: Vec<f64> = steady
        .iter()
        .filter(|s| s.live > 0)
        .map(|s| s.disk as f64 / s.live as f64)
        .collect();
    let space_amp = quantile(&mut amps, 0.5);
    let space_amp_max = amps.iter().copied().fold(f64::NAN, f64::max);
    let d_user = (last.user - first.user).max(1) as f64;
    let d_written = (last.written - first.written) as f64;
    let write_amp = d_written / d_user;
    let background_amp = (engine == Engine::Ttlstore)
        .then(|| (d_written - (last.logged - first.logged) as f64).max(0.0) / d_user);
    let is_ttl = engine == Engine::Ttlstore;
    let compactor_amp = is_ttl.then(|| (last.compacted - first.compacted) as f64 / d_user);
    let expire_amp = is_ttl.then(|| {
        (last.appended - first.appended).saturating_sub(last.logged - first.logged) as f64 / d_user
    });
    Ok(Outcome {
        compactor_amp,
        expire_amp,
        space_amp,
        space_amp_max,
        write_amp,
        background_amp,
        ops_per_sec: (groups * GROUP as u64) as f64 / elapsed.as_secs_f64(),
        p99_before_us: quantile(&mut lat_before, 0.99),
        p99_steady_us: quantile(&mut lat_steady, 0.99),
        live_bytes_end: last.live,
        disk_bytes_end: last.disk,
    })
}

/// Encoded length of a ttlstore put of a churn key with an expiry, as a compact put (format
/// version 2) in the typical position: a 3-byte sequence delta and a 2-byte expiry delta from the
/// segment's base. Puts near the start of a segment are a byte shorter, so the expire-record cost
/// derived from it is slightly underestimated.
pub fn ttl_put_len() -> u64 {
    let k = key(0);
    let v = [0u8; VAL_LEN];
    let base = ttlstore::format::RecordBase {
        version: ttlstore::format::FORMAT_VERSION,
        base_seq: 0,
        base_ms: 0,
    };
    ttlstore::format::record_len_at(
        &base,
        1 << 16,
        &[ttlstore::format::EncOp::Put {
            ns: 0,
            key: &k,
            value: &v,
            expires_at: Some(5000),
        }],
    ) as u64
}

/// Encoded length of a ttlstore delete of a churn key.
pub fn ttl_delete_len() -> u64 {
    let k = key(0);
    ttlstore::format::record_len(&[ttlstore::format::EncOp::Delete { ns: 0, key: &k }]) as u64
}
