//! Crash test: a child process writes under `SyncPolicy::Always` from several threads and reports
//! every operation it starts and every one it gets acknowledged; the parent kills it with SIGKILL
//! at a random moment, reopens the same directory and checks that every acknowledged write is
//! there with its exact absolute expiry, that nothing deleted or expired came back, that nothing
//! never written appears, and that a key holds either its last acknowledged state or the state of
//! the one operation that was in flight on it (a batch: all of its keys one way or all the other).
//!
//! The directory is reused across kills, so each round also recovers what the previous kills left.
//! One writer thread also forces a compaction every 50 operations, so kills land inside those too.
//! Each round runs at its own fixed clock time `T0 + round * 10 s`, so absolute expiries are
//! deterministic and TTLs shorter than a round expire between rounds.
//!
//! Environment:
//! - `TTLSTORE_CRASH_KILLS=N`: number of kills (default 40).
//! - `TTLSTORE_CRASH_SEED=S`: the seed of the parent's random choices (printed on failure).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use ttlstore::{ManualClock, Options, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;
const ROUND_MS: u64 = 10_000;
const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 24;
const SEGMENT_SIZE: u64 = 32 << 10;
/// Operations per thread after which a child stops writing and waits to be killed.
const MAX_OPS_PER_THREAD: u64 = 4000;

const CHILD_DIR: &str = "TTLSTORE_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "TTLSTORE_CRASH_CHILD_ROUND";
const CHILD_SEED: &str = "TTLSTORE_CRASH_CHILD_SEED";

fn round_time(round: u64) -> u64 {
    T0 + round * ROUND_MS
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
        self.next() % n
    }
}

fn key_name(thread: usize, idx: usize) -> String {
    format!("t{thread}k{idx:02}")
}

/// The bytes of the value named by `token` (`r<round>t<thread>n<op>x<len>`): the token itself and
/// a pattern that depends on it, so a value mixed from two writes never matches either.
fn value_bytes(token: &str) -> Vec<u8> {
    let pad: usize = token
        .rsplit('x')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("value token");
    let mut v = token.as_bytes().to_vec();
    let seed = token
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    v.extend((0..pad).map(|i| seed.wrapping_add(i as u8)));
    v
}

/// One operation as the child reports it: `put K V -`, `put K V <abs>`, `putat K V <abs>`,
/// `del K`, `expire K <abs>`, `persist K`, and `batch` of `put`/`putat`/`del` items.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Put {
        key: String,
        value: String,
        expires: Option<u64>,
    },
    /// `put_expiring_at`: a time not after now deletes.
    PutAt {
        key: String,
        value: String,
        at: u64,
    },
    Del {
        key: String,
    },
    Expire {
        key: String,
        at: u64,
    },
    Persist {
        key: String,
    },
    Batch(Vec<Op>),
}

impl Op {
    fn encode(&self) -> String {
        match self {
            Op::Put {
                key,
                value,
                expires,
            } => {
                format!(
                    "put {key} {value} {}",
                    expires.map_or("-".to_string(), |e| e.to_string())
                )
            }
            Op::PutAt { key, value, at } => format!("putat {key} {value} {at}"),
            Op::Del { key } => format!("del {key}"),
            Op::Expire { key, at } => format!("expire {key} {at}"),
            Op::Persist { key } => format!("persist {key}"),
            Op::Batch(ops) => format!(
                "batch {}",
                ops.iter().map(Op::encode).collect::<Vec<_>>().join(" ; ")
            ),
        }
    }

    fn decode(s: &str) -> Op {
        if let Some(rest) = s.strip_prefix("batch ") {
            return Op::Batch(rest.split(" ; ").map(Op::decode).collect());
        }
        let w: Vec<&str> = s.split(' ').collect();
        match w[0] {
            "put" => Op::Put {
                key: w[1].into(),
                value: w[2].into(),
                expires: (w[3] != "-").then(|| w[3].parse().unwrap()),
            },
            "putat" => Op::PutAt {
                key: w[1].into(),
                value: w[2].into(),
                at: w[3].parse().unwrap(),
            },
            "del" => Op::Del { key: w[1].into() },
            "expire" => Op::Expire {
                key: w[1].into(),
                at: w[2].parse().unwrap(),
            },
            "persist" => Op::Persist { key: w[1].into() },
            other => panic!("unknown op {other:?} in {s:?}"),
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            Op::Put { key, .. }
            | Op::PutAt { key, .. }
            | Op::Del { key }
            | Op::Expire { key, .. }
            | Op::Persist { key } => {
                vec![key.clone()]
            }
            Op::Batch(ops) => ops.iter().flat_map(Op::keys).collect(),
        }
    }
}

/// A key's state in the model: value token and absolute expiry. Expired entries stay until
/// overwritten; [`visible`] hides them.
type KeyState = Option<(String, Option<u64>)>;

fn visible(s: &KeyState, now: u64) -> KeyState {
    s.clone().filter(|(_, e)| e.is_none_or(|e| e > now))
}

/// Applies `op` at time `now` to `model`; returns the boolean result the API reports (for del,
/// expire, persist), `None` for the others.
fn apply(model: &mut BTreeMap<String, KeyState>, op: &Op, now: u64) -> Option<bool> {
    let live = |m: &BTreeMap<String, KeyState>, k: &str| visible(m.get(k).unwrap_or(&None), now);
    match op {
        Op::Put {
            key,
            value,
            expires,
        } => {
            model.insert(key.clone(), Some((value.clone(), *expires)));
            None
        }
        Op::PutAt { key, value, at } => {
            let s = if *at <= now {
                None
            } else {
                Some((value.clone(), Some(*at)))
            };
            model.insert(key.clone(), s);
            None
        }
        Op::Del { key } => {
            let was = live(model, key).is_some();
            model.insert(key.clone(), None);
            Some(was)
        }
        Op::Expire { key, at } => match live(model, key) {
            None => Some(false),
            Some((v, _)) => {
                let s = if *at <= now {
                    None
                } else {
                    Some((v, Some(*at)))
                };
                model.insert(key.clone(), s);
                Some(true)
            }
        },
        Op::Persist { key } => match live(model, key) {
            Some((v, Some(_))) => {
                model.insert(key.clone(), Some((v, None)));
                Some(true)
            }
            _ => Some(false),
        },
        Op::Batch(ops) => {
            for o in ops {
                apply(model, o, now);
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // One write per line: a pipe write of at most PIPE_BUF bytes is atomic, so a kill never
    // leaves half a line followed by another line.
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    out.write_all(&buf).unwrap();
    out.flush().unwrap();
}

fn child_op(rng: &mut Rng, round: u64, thread: usize, n: u64) -> Op {
    let now = round_time(round);
    let value = |rng: &mut Rng| format!("r{round}t{thread}n{n}x{}", rng.below(300));
    let one = |rng: &mut Rng, in_batch: bool| {
        let key = key_name(thread, rng.below(KEYS_PER_THREAD as u64) as usize);
        let ttl = 1 + rng.below(3 * ROUND_MS);
        let kinds = if in_batch { 4 } else { 8 };
        match rng.below(kinds) {
            0 => Op::Put {
                key,
                value: value(rng),
                expires: None,
            },
            1 => Op::Put {
                key,
                value: value(rng),
                expires: Some(now + ttl),
            },
            2 => Op::Del { key },
            3 => Op::PutAt {
                key,
                value: value(rng),
                at: now - ROUND_MS + rng.below(3 * ROUND_MS),
            },
            4 => Op::Expire { key, at: now + ttl },
            5 => Op::Persist { key },
            _ => Op::Put {
                key,
                value: value(rng),
                expires: Some(now + ttl),
            },
        }
    };
    if rng.below(6) == 0 {
        let len = 2 + rng.below(5);
        Op::Batch((0..len).map(|_| one(rng, true)).collect())
    } else {
        one(rng, false)
    }
}

fn run_op(store: &Store, op: &Op, now: u64) -> Option<bool> {
    match op {
        Op::Put {
            key,
            value,
            expires: None,
        } => store
            .put(key.as_bytes(), &value_bytes(value))
            .map(|()| None),
        Op::Put {
            key,
            value,
            expires: Some(e),
        } => store
            .put_with_ttl(
                key.as_bytes(),
                &value_bytes(value),
                Duration::from_millis(e - now),
            )
            .map(|()| None),
        Op::PutAt { key, value, at } => store
            .put_expiring_at(key.as_bytes(), &value_bytes(value), *at)
            .map(|()| None),
        Op::Del { key } => store.delete(key.as_bytes()).map(Some),
        Op::Expire { key, at } => store
            .expire(key.as_bytes(), Duration::from_millis(at - now))
            .map(Some),
        Op::Persist { key } => store.persist(key.as_bytes()).map(Some),
        Op::Batch(ops) => {
            let mut b = WriteBatch::new();
            for o in ops {
                match o {
                    Op::Put {
                        key,
                        value,
                        expires: None,
                    } => b.put(key.as_bytes(), &value_bytes(value)),
                    Op::Put {
                        key,
                        value,
                        expires: Some(e),
                    } => b.put_with_ttl(
                        key.as_bytes(),
                        &value_bytes(value),
                        Duration::from_millis(e - now),
                    ),
                    Op::PutAt { key, value, at } => b.put_with(
                        key.as_bytes(),
                        &value_bytes(value),
                        ttlstore::Expiry::At(*at),
                    ),
                    Op::Del { key } => b.delete(key.as_bytes()),
                    other => unreachable!("{other:?} in a batch"),
                };
            }
            store.write_batch(b).map(|()| None)
        }
    }
    .unwrap_or_else(|e| {
        emit(&format!("@E {e}"));
        panic!("child write failed: {e}")
    })
}

/// The child role: does nothing unless started by [`crash_kill_loop`].
#[test]
#[ignore = "the child process of crash_kill_loop; runs only when that test starts it"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let now = round_time(round);
    let clock = Arc::new(ManualClock::new(now));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(SEGMENT_SIZE)
        .clock(clock);
    let store = Store::open_with(&dir, opts).unwrap_or_else(|e| {
        emit(&format!("@E open: {e}"));
        panic!("child open failed: {e}")
    });
    // libtest has printed "test crash_child ... " without a newline: end that line first.
    emit("\n@READY");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                for n in 0..MAX_OPS_PER_THREAD {
                    let op = child_op(&mut rng, round, t, n);
                    emit(&format!("@I {t} {}", op.encode()));
                    let r = run_op(&store, &op, now);
                    emit(&format!(
                        "@A {t} {}",
                        r.map_or("-".to_string(), |b| b.to_string())
                    ));
                    if t == 0 && n % 50 == 49 {
                        // Forced compaction (hints, rewrites, drops) while the others write; a
                        // kill may land in the middle of it.
                        if let Err(e) = store.compact() {
                            emit(&format!("@E compact: {e}"));
                            panic!("compaction failed: {e}");
                        }
                    }
                }
            })
        })
        .collect();
    // The layers beside the key-value writers: a thread append, a queue push, a pop and its ack,
    // each reported once acknowledged (the ack's intent first, so the parent knows it was in
    // flight).
    let layers = {
        let store = store.clone();
        std::thread::spawn(move || {
            let thread = store.thread("log").unwrap();
            let queue = store.queue("jobs").unwrap();
            for n in 0..MAX_OPS_PER_THREAD {
                let payload = format!("r{round}n{n}");
                let off = thread.append(payload.as_bytes()).unwrap();
                emit(&format!("@T {off} {payload}"));
                let id = queue.push(payload.as_bytes()).unwrap();
                emit(&format!("@QP {id}"));
                if let Some(task) = queue.pop(Duration::ZERO).unwrap() {
                    emit(&format!("@QI {}", task.id));
                    queue.ack(&task).unwrap();
                    emit(&format!("@QA {}", task.id));
                }
            }
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    layers.join().unwrap();
    emit("@DONE");
    // Wait to be killed: the parent decides when this process ends (bounded, in case it died).
    std::thread::sleep(Duration::from_secs(120));
}

// ---------------------------------------------------------------------------------------------
// The parent.

struct RoundOutcome {
    acked: u64,
    in_flight: u64,
}

/// Replays the child's report onto `model`; returns the operation in flight per thread.
fn replay_report(
    lines: &[String],
    model: &mut BTreeMap<String, KeyState>,
    now: u64,
    out: &mut RoundOutcome,
) -> Vec<Option<Op>> {
    let mut pending: Vec<Option<Op>> = vec![None; THREADS];
    for line in lines {
        if let Some(err) = line.strip_prefix("@E ") {
            panic!("the child reported an error: {err}");
        }
        if let Some(rest) = line.strip_prefix("@I ") {
            let (t, op) = rest.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert!(
                pending[t].is_none(),
                "thread {t} started an op before the last was acknowledged"
            );
            pending[t] = Some(Op::decode(op));
        } else if let Some(rest) = line.strip_prefix("@A ") {
            let (t, result) = rest.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            let op = pending[t].take().expect("an ack without an op");
            let expected = apply(model, &op, now);
            let got = (result != "-").then(|| result == "true");
            assert_eq!(
                got, expected,
                "the API's answer to {op:?} disagrees with the model"
            );
            out.acked += 1;
        }
    }
    out.in_flight = pending.iter().filter(|p| p.is_some()).count() as u64;
    pending
}

/// What the child acknowledged of the thread and the queue, over all rounds.
#[derive(Default)]
struct Layers {
    /// Thread offset → payload, for every acknowledged append.
    appended: BTreeMap<u64, String>,
    /// Tasks whose push was acknowledged.
    pushed: std::collections::BTreeSet<String>,
    /// Tasks whose ack was acknowledged (or found done after an ack in flight).
    acked: std::collections::BTreeSet<String>,
    /// Acks in flight at the kill: either outcome is right.
    acking: std::collections::BTreeSet<String>,
}

impl Layers {
    fn absorb(&mut self, lines: &[String]) {
        self.acking.clear();
        for line in lines {
            if let Some(rest) = line.strip_prefix("@T ") {
                let (off, payload) = rest.split_once(' ').unwrap();
                let prev = self
                    .appended
                    .insert(off.parse().unwrap(), payload.to_string());
                assert!(prev.is_none(), "thread offset {off} handed out twice");
            } else if let Some(id) = line.strip_prefix("@QP ") {
                self.pushed.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("@QI ") {
                self.acking.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("@QA ") {
                self.acking.remove(id);
                self.acked.insert(id.to_string());
            }
        }
    }

    fn verify(&mut self, store: &Store, ctx: &str) {
        let thread = store.thread("log").unwrap();
        let all = thread.read(0, usize::MAX).unwrap();
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.offset, i as u64, "{ctx}: gap in the thread's offsets");
        }
        assert_eq!(all.len() as u64, thread.next_offset(), "{ctx}: next_offset");
        for (off, payload) in &self.appended {
            let m = all
                .get(*off as usize)
                .unwrap_or_else(|| panic!("{ctx}: acked message {off} lost"));
            assert_eq!(m.payload, payload.as_bytes(), "{ctx}: message {off}");
        }
        // Messages that reached the disk without their ack hold their offsets from now on.
        for m in all {
            self.appended
                .entry(m.offset)
                .or_insert_with(|| String::from_utf8(m.payload).unwrap());
        }
        let queue = store.queue("jobs").unwrap();
        let exists = |id: &str| {
            queue
                .task(&ttlstore::TaskId::new(id).unwrap())
                .unwrap()
                .is_some()
        };
        for id in std::mem::take(&mut self.acking) {
            if !exists(&id) {
                self.acked.insert(id);
            }
        }
        for id in &self.acked {
            assert!(!exists(id), "{ctx}: acked task {id} came back");
        }
        for id in self.pushed.difference(&self.acked) {
            assert!(exists(id), "{ctx}: pushed, unacked task {id} is missing");
        }
    }
}

fn observed(store: &Store, key: &str) -> Option<(Vec<u8>, Option<u64>)> {
    store
        .get_item(key.as_bytes())
        .unwrap()
        .map(|i| (i.value.to_vec(), i.expires_at))
}

fn as_bytes(s: &KeyState) -> Option<(Vec<u8>, Option<u64>)> {
    s.as_ref().map(|(v, e)| (value_bytes(v), *e))
}

/// Checks the reopened store against the model and the in-flight ops, then resolves each in-flight
/// op in the model to what the store shows.
fn verify(
    store: &Store,
    model: &mut BTreeMap<String, KeyState>,
    pending: &[Option<Op>],
    write_time: u64,
    now: u64,
    ctx: &str,
) {
    let mut keys_in_flight = std::collections::BTreeSet::new();
    for op in pending.iter().flatten() {
        let mut after = model.clone();
        apply(&mut after, op, write_time);
        let keys = op.keys();
        let old_ok = keys
            .iter()
            .all(|k| observed(store, k) == as_bytes(&visible(model.get(k).unwrap_or(&None), now)));
        let new_ok = keys
            .iter()
            .all(|k| observed(store, k) == as_bytes(&visible(after.get(k).unwrap_or(&None), now)));
        assert!(
            old_ok || new_ok,
            "{ctx}: in-flight {op:?} left its keys in neither the old nor the new state: {:?}",
            keys.iter()
                .map(|k| (
                    k,
                    observed(store, k).map(|(v, e)| (String::from_utf8_lossy(&v).into_owned(), e))
                ))
                .collect::<Vec<_>>()
        );
        if !old_ok {
            *model = after;
        }
        keys_in_flight.extend(keys);
    }
    for t in 0..THREADS {
        for i in 0..KEYS_PER_THREAD {
            let k = key_name(t, i);
            let want = as_bytes(&visible(model.get(&k).unwrap_or(&None), now));
            let got = observed(store, &k);
            assert!(
                got == want,
                "{ctx}: key {k} holds {:?}, expected {:?} (model {:?}, in flight: {})",
                got.as_ref()
                    .map(|(v, e)| (String::from_utf8_lossy(v).into_owned(), e)),
                model.get(&k),
                model.get(&k),
                keys_in_flight.contains(&k)
            );
        }
    }
    // Nothing outside the model, and scans agree with point reads.
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan_prefix(b"")
        .map(|r| r.unwrap())
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = model
        .iter()
        .filter_map(|(k, s)| visible(s, now).map(|(v, _)| (k.as_bytes().to_vec(), value_bytes(&v))))
        .collect();
    assert!(
        scanned == expected,
        "{ctx}: a full scan disagrees with the model ({} vs {} keys)",
        scanned.len(),
        expected.len()
    );
    // The thread's and the queue's keys live in their own namespaces beside the model's.
    let layer_keys: usize = [ttlstore::Namespace::THREADS, ttlstore::Namespace::QUEUES]
        .into_iter()
        .map(|ns| store.namespace(ns).keys_with_prefix(b"", usize::MAX).len())
        .sum();
    assert_eq!(
        store.stats().live_keys,
        (expected.len() + layer_keys) as u64,
        "{ctx}: live key count"
    );
}

fn spawn_child(dir: &Path, round: u64, seed: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_ROUND, round.to_string())
        .env(CHILD_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn crash_kill_loop() {
    let kills: u64 = std::env::var("TTLSTORE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("TTLSTORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<String, KeyState> = BTreeMap::new();
    let mut layers = Layers::default();
    let (mut total_acked, mut total_in_flight, mut mid_open) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for round in 0..kills {
        let ctx = format!("seed {seed} (TTLSTORE_CRASH_SEED), round {round}");
        let mut child = spawn_child(dir.path(), round, rng.next());
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if r.read_until(b'\n', &mut buf).unwrap() == 0 {
                    break;
                }
                if buf.last() != Some(&b'\n') {
                    break; // A torn last line: the child died writing it.
                }
                let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                if line == "@READY" {
                    let _ = ready_tx.send(());
                }
                if line.starts_with('@') {
                    lines.push(line);
                }
            }
            lines
        });
        if rng.below(8) == 0 {
            // Kill early, possibly during open and recovery.
            mid_open += 1;
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        } else {
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{ctx}: the child never opened the store"));
            std::thread::sleep(Duration::from_millis(1 + rng.below(120)));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{ctx}: the child exited by itself ({status}) before the kill");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut outcome = RoundOutcome {
            acked: 0,
            in_flight: 0,
        };
        let write_time = round_time(round);
        let pending = replay_report(&lines, &mut model, write_time, &mut outcome);
        layers.absorb(&lines);
        total_acked += outcome.acked;
        total_in_flight += outcome.in_flight;

        // Verify at the next round's time: keys whose TTL ran out in between must be gone.
        let now = round_time(round + 1);
        let clock = Arc::new(ManualClock::new(now));
        let opts = Options::default()
            .sync(SyncPolicy::Always)
            .segment_size(SEGMENT_SIZE)
            .clock(clock);
        let store = Store::open_with(dir.path(), opts)
            .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
        verify(&store, &mut model, &pending, write_time, now, &ctx);
        layers.verify(&store, &ctx);
        drop(store);
    }
    eprintln!(
        "crash_kill: {kills} kills ({mid_open} early) in {:?}, {total_acked} acknowledged ops, {total_in_flight} in flight at a kill, seed {seed}",
        started.elapsed()
    );
    assert!(
        total_acked > kills,
        "too few acknowledged operations ({total_acked}) to test anything"
    );
    assert!(
        !layers.appended.is_empty() && !layers.acked.is_empty(),
        "the thread and queue saw no acknowledged work"
    );
}
