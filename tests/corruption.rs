//! Corruption sweep: a small store of a few 4 KiB segments is damaged one way at a time —
//! truncated at an offset, or one bit flipped there — and reopened. Open must either recover
//! exactly what the undamaged records say, or fail with `Error::Corruption` naming the damaged
//! segment and offset; it must never panic, never return another kind of error, and never serve a
//! value that was not written.
//!
//! The last segment (the one a crash tears) is swept at every offset, both ways. A sealed segment
//! is swept at every offset too: there, any damage is `Corruption` in the default mode,
//! `RecoveryMode::Salvage` keeps what checks out, and `RecoveryMode::AbsoluteConsistency` also
//! refuses a torn tail of the last segment. Hint files written by compaction are damaged at every
//! offset too: the store must still open to exactly its content (or refuse with `Corruption`).
//!
//! Environment: `TTLSTORE_CORRUPTION_STRIDE=N` sweeps every N-th offset of the last segment's
//! zero-filled reserve after its data (default 16; its data and header are always swept at every
//! offset) and every N/4-th offset of the sealed segments other than the second (which is always
//! swept whole). `TTLSTORE_CORRUPTION_STRIDE=1` sweeps every byte of every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::format::{self, HEADER_LEN, RecordError};
use ttlstore::{Error, ManualClock, Options, RecoveryMode, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;
const SEGMENT_SIZE: u64 = 4096;
const KEYS: usize = 40;

type State = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;
type Written = BTreeMap<Vec<u8>, BTreeSet<(Vec<u8>, Option<u64>)>>;

/// A store built by a known history, its files, and the state after every record.
struct Fixture {
    /// `states[k]`: the store's state after the first `k` records.
    states: Vec<State>,
    /// Every (value, expiry) ever written per key.
    written: Written,
    /// Segment files in id order: (id, name, bytes).
    files: Vec<(u64, String, Vec<u8>)>,
    /// Per segment: the (start, end) of each record.
    records: Vec<Vec<(usize, usize)>>,
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}

fn opts(clock: &Arc<ManualClock>, mode: RecoveryMode) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(SEGMENT_SIZE)
        .recovery_mode(mode)
        // No expirer or compactor: the files stay exactly as the history wrote them.
        .background_threads(false)
        .clock(clock.clone())
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

fn build(dir: &Path) -> Fixture {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir, opts(&clock, RecoveryMode::default())).unwrap();
    let mut rng = Rng(42);
    let mut state = State::new();
    let mut states = vec![state.clone()];
    let mut written = Written::new();
    let mut n = 0u64;
    // Every step below writes exactly one record.
    while states.len() < 240 {
        n += 1;
        let k = key(rng.below(KEYS as u64) as usize);
        let v: Vec<u8> = format!("v{n}-")
            .bytes()
            .chain((0..rng.below(90)).map(|i| (i as u8) ^ (n as u8)))
            .collect();
        match rng.below(10) {
            0..=3 => {
                store.put(&k, &v).unwrap();
                state.insert(k.clone(), (v.clone(), None));
                written.entry(k).or_default().insert((v, None));
            }
            4..=6 => {
                let ttl = 1000 * (1 + rng.below(1000));
                store
                    .put_with_ttl(&k, &v, Duration::from_millis(ttl))
                    .unwrap();
                state.insert(k.clone(), (v.clone(), Some(T0 + ttl)));
                written.entry(k).or_default().insert((v, Some(T0 + ttl)));
            }
            7 => {
                if !state.contains_key(&k) {
                    continue;
                }
                assert!(store.delete(&k).unwrap());
                state.remove(&k);
            }
            _ => {
                let mut b = WriteBatch::new();
                for j in 0..1 + rng.below(4) {
                    let k = key(rng.below(KEYS as u64) as usize);
                    if rng.below(4) == 0 {
                        b.delete(&k);
                        state.remove(&k);
                    } else {
                        let v = format!("b{n}.{j}").into_bytes();
                        b.put(&k, &v);
                        state.insert(k.clone(), (v.clone(), None));
                        written.entry(k).or_default().insert((v, None));
                    }
                }
                store.write_batch(b).unwrap();
            }
        }
        states.push(state.clone());
    }
    store.close().unwrap();

    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|d| d.parse::<u64>().ok())
        {
            files.push((id, name.clone(), std::fs::read(dir.join(&name)).unwrap()));
        }
    }
    files.sort();
    let records: Vec<Vec<(usize, usize)>> = files
        .iter()
        .map(|(id, _, data)| {
            let mut out = Vec::new();
            let mut off = HEADER_LEN;
            loop {
                match format::read_record(data, off, *id) {
                    Ok(r) => {
                        out.push((off, off + r.len));
                        off += r.len;
                    }
                    Err(RecordError::End) => break,
                    Err(e) => panic!("the undamaged segment {id} does not read at {off}: {e:?}"),
                }
            }
            out
        })
        .collect();
    let total: usize = records.iter().map(Vec::len).sum();
    assert_eq!(total + 1, states.len(), "one record per write");
    assert!(
        files.len() >= 4,
        "the fixture should span several segments, it has {}",
        files.len()
    );
    Fixture {
        states,
        written,
        files,
        records,
    }
}

impl Fixture {
    /// Puts the undamaged files back, removing anything else an open left.
    fn restore(&self, dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "LOCK" {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (_, name, data) in &self.files {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }

    fn records_before(&self, seg_index: usize) -> usize {
        self.records[..seg_index].iter().map(Vec::len).sum()
    }

    /// Records of segment `seg_index` that end at or before `off`.
    fn whole_before(&self, seg_index: usize, off: usize) -> usize {
        self.records[seg_index]
            .iter()
            .filter(|&&(_, end)| end <= off)
            .count()
    }

    /// The start of the record of segment `seg_index` that holds byte `off`, if any.
    fn record_at(&self, seg_index: usize, off: usize) -> Option<usize> {
        self.records[seg_index]
            .iter()
            .find(|&&(s, e)| s <= off && off < e)
            .map(|&(s, _)| s)
    }

    /// Every served key holds a value written for it.
    fn check_only_written(&self, store: &Store, ctx: &str) {
        for i in 0..KEYS {
            let k = key(i);
            if let Some(item) = store
                .get_item(&k)
                .unwrap_or_else(|e| panic!("{ctx}: get failed: {e}"))
            {
                let got = (item.value.to_vec(), item.expires_at);
                assert!(
                    self.written.get(&k).is_some_and(|w| w.contains(&got)),
                    "{ctx}: key {} holds {got:?}, which was never written",
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }

    /// The store holds exactly `want`.
    fn check_state(&self, store: &Store, want: &State, ctx: &str) {
        self.check_only_written(store, ctx);
        for i in 0..KEYS {
            let k = key(i);
            let got = store
                .get_item(&k)
                .unwrap()
                .map(|it| (it.value.to_vec(), it.expires_at));
            assert_eq!(
                got.as_ref(),
                want.get(&k),
                "{ctx}: key {}",
                String::from_utf8_lossy(&k)
            );
        }
        assert_eq!(
            store.stats().live_keys,
            want.len() as u64,
            "{ctx}: live keys"
        );
        let scanned: Vec<Vec<u8>> = store.scan_prefix(b"key").map(|r| r.unwrap().0).collect();
        assert_eq!(
            scanned,
            want.keys().cloned().collect::<Vec<_>>(),
            "{ctx}: scan"
        );
    }
}

fn open(dir: &Path, mode: RecoveryMode) -> ttlstore::Result<Store> {
    let clock = Arc::new(ManualClock::new(T0));
    Store::open_with(dir, opts(&clock, mode))
}

fn damage(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let p = dir.join(name);
    let mut data = std::fs::read(&p).unwrap();
    f(&mut data);
    std::fs::write(&p, data).unwrap();
}

fn expect_corruption(r: ttlstore::Result<Store>, segment: u64, offset: Option<u64>, ctx: &str) {
    match r {
        Err(Error::Corruption {
            segment: s,
            offset: o,
            ..
        }) => {
            assert_eq!(
                s, segment,
                "{ctx}: corruption reported in the wrong segment"
            );
            if let Some(off) = offset {
                assert_eq!(o, off, "{ctx}: corruption reported at the wrong offset");
            }
        }
        Err(e) => panic!("{ctx}: expected Error::Corruption, got another error: {e:?}"),
        Ok(_) => panic!("{ctx}: expected Error::Corruption, the store opened"),
    }
}

fn stride() -> usize {
    std::env::var("TTLSTORE_CORRUPTION_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
        .max(1)
}

/// The offsets of a last segment to sweep: every one up to a little past the data, then every
/// `stride()`-th through the zero reserve, and the last byte.
fn last_segment_offsets(fx: &Fixture) -> Vec<usize> {
    let li = fx.files.len() - 1;
    let len = fx.files[li].2.len();
    let data_end = fx.records[li].last().map_or(HEADER_LEN, |r| r.1);
    let dense = (data_end + 64).min(len);
    let mut v: Vec<usize> = (0..dense).collect();
    v.extend((dense..len).step_by(stride()));
    v.push(len - 1);
    v.dedup();
    v
}

#[test]
fn last_segment_truncated_at_every_offset_recovers_the_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let li = fx.files.len() - 1;
    let (id, name, _) = fx.files[li].clone();
    let before = fx.records_before(li);
    for off in last_segment_offsets(&fx) {
        let ctx = format!("segment {id} truncated at {off}");
        fx.restore(dir.path());
        damage(dir.path(), &name, |d| d.truncate(off));
        let store = open(dir.path(), RecoveryMode::default())
            .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        fx.check_state(&store, &fx.states[before + fx.whole_before(li, off)], &ctx);
        if off % 97 == 0 {
            // The repaired store takes writes and keeps them.
            store.put(b"key-after", b"x").unwrap();
            drop(store);
            let store = open(dir.path(), RecoveryMode::default()).unwrap();
            assert_eq!(
                store.get(b"key-after").unwrap().unwrap(),
                b"x",
                "{ctx}: write after repair"
            );
        }
    }
}

#[test]
fn last_segment_bit_flipped_at_every_offset_recovers_or_reports_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let li = fx.files.len() - 1;
    let (id, name, _) = fx.files[li].clone();
    let before = fx.records_before(li);
    let all = fx.states.len() - 1;
    let (mut recovered, mut refused) = (0, 0);
    for off in last_segment_offsets(&fx) {
        let ctx = format!("segment {id}, bit {} flipped at {off}", off % 8);
        fx.restore(dir.path());
        damage(dir.path(), &name, |d| d[off] ^= 1 << (off % 8));
        match open(dir.path(), RecoveryMode::default()) {
            Ok(store) => {
                recovered += 1;
                // Cut back to the damaged record; damage in the zero reserve loses nothing.
                let want = match fx.record_at(li, off) {
                    Some(start) => before + fx.whole_before(li, start),
                    None if off >= HEADER_LEN => all,
                    None => panic!("{ctx}: a damaged header was accepted"),
                };
                fx.check_state(&store, &fx.states[want], &ctx);
            }
            Err(e) => {
                refused += 1;
                // Only the header makes the whole last segment unreadable.
                assert!(
                    off < HEADER_LEN,
                    "{ctx}: a torn tail must be repaired, got {e}"
                );
                expect_corruption(Err(e), id, Some(0), &ctx);
            }
        }
    }
    assert!(
        recovered > 0 && refused > 0,
        "{recovered} recovered, {refused} refused"
    );
}

#[test]
fn sealed_segment_damage_is_corruption_at_the_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    for si in 0..fx.files.len() - 1 {
        let (id, name, data) = fx.files[si].clone();
        assert_eq!(
            data.len(),
            fx.records[si].last().unwrap().1,
            "a sealed segment ends at its data"
        );
        // One sealed segment at every offset; the others at every `stride() / 4`-th.
        let step = if si == 1 { 1 } else { (stride() / 4).max(1) };
        for off in (0..data.len()).step_by(step) {
            let want_off = fx.record_at(si, off).unwrap_or(0) as u64;
            let ctx = format!("sealed segment {id}, bit flipped at {off}");
            fx.restore(dir.path());
            damage(dir.path(), &name, |d| d[off] ^= 1 << (off % 8));
            expect_corruption(
                open(dir.path(), RecoveryMode::default()),
                id,
                Some(want_off),
                &ctx,
            );
            // Cutting inside a record is corruption too (cuts at record boundaries: see below).
            if fx.records[si].iter().all(|&(s, _)| s != off) && off >= HEADER_LEN {
                let ctx = format!("sealed segment {id} truncated at {off}");
                fx.restore(dir.path());
                damage(dir.path(), &name, |d| d.truncate(off));
                expect_corruption(
                    open(dir.path(), RecoveryMode::default()),
                    id,
                    Some(want_off),
                    &ctx,
                );
            }
        }
    }
}

/// A sealed segment cut exactly between two records reads back as a shorter, valid segment; only
/// the sequence numbers tell that records are missing (the next segment's header names the
/// sequence its first record continues from).
#[test]
fn sealed_segment_truncated_at_a_record_boundary_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let si = 1;
    let (id, name, _) = fx.files[si].clone();
    for &(start, _) in &fx.records[si] {
        let ctx = format!("sealed segment {id} truncated at the record boundary {start}");
        fx.restore(dir.path());
        damage(dir.path(), &name, |d| d.truncate(start));
        match open(dir.path(), RecoveryMode::default()) {
            Err(Error::Corruption { segment, .. }) => assert_eq!(segment, id, "{ctx}"),
            Err(e) => panic!("{ctx}: expected Corruption, got {e:?}"),
            Ok(store) => {
                // If it opens, nothing acknowledged may be missing.
                fx.check_state(
                    &store,
                    fx.states.last().unwrap(),
                    &format!("{ctx}: opened, so"),
                );
            }
        }
    }
}

#[test]
fn salvage_keeps_every_record_that_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let final_state = fx.states.last().unwrap();
    for si in 0..fx.files.len() - 1 {
        let (id, name, data) = fx.files[si].clone();
        for (ri, &(start, end)) in fx.records[si].iter().enumerate() {
            let off = start + (end - start) / 2;
            let ctx = format!("salvage: segment {id} record {ri} damaged at {off}");
            fx.restore(dir.path());
            damage(dir.path(), &name, |d| d[off] ^= 0x10);
            let store =
                open(dir.path(), RecoveryMode::Salvage).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(
                store.recovery_report().skipped_bytes > 0,
                "{ctx}: nothing skipped"
            );
            // Keys the damaged record wrote may show an older value or none; every other key
            // must be exactly as written.
            let mut ops = Vec::new();
            format::read_record(&data, start, id)
                .unwrap()
                .ops(&mut ops)
                .unwrap();
            let touched: BTreeSet<Vec<u8>> = ops.iter().map(|o| o.key.to_vec()).collect();
            fx.check_only_written(&store, &ctx);
            for i in 0..KEYS {
                let k = key(i);
                if touched.contains(&k) {
                    continue;
                }
                let got = store
                    .get_item(&k)
                    .unwrap()
                    .map(|it| (it.value.to_vec(), it.expires_at));
                assert_eq!(
                    got.as_ref(),
                    final_state.get(&k),
                    "{ctx}: untouched key {}",
                    String::from_utf8_lossy(&k)
                );
            }
        }
    }
}

#[test]
fn absolute_consistency_refuses_a_torn_tail_and_accepts_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    fx.restore(dir.path());
    let store = open(dir.path(), RecoveryMode::AbsoluteConsistency).unwrap();
    fx.check_state(
        &store,
        fx.states.last().unwrap(),
        "clean store, AbsoluteConsistency",
    );
    drop(store);
    let li = fx.files.len() - 1;
    let (id, name, _) = fx.files[li].clone();
    for &(start, end) in &fx.records[li] {
        for off in [start + 1, start + format::RECORD_PREFIX, end - 1] {
            let ctx = format!("AbsoluteConsistency, last segment {id} cut at {off}");
            fx.restore(dir.path());
            damage(dir.path(), &name, |d| d.truncate(off));
            expect_corruption(
                open(dir.path(), RecoveryMode::AbsoluteConsistency),
                id,
                Some(start as u64),
                &ctx,
            );
            // The refused open changed nothing: the default mode still recovers the prefix.
            let store = open(dir.path(), RecoveryMode::default()).unwrap();
            let want = fx.records_before(li) + fx.whole_before(li, off);
            fx.check_state(&store, &fx.states[want], &ctx);
        }
    }
}

#[test]
fn keys_expired_at_open_are_not_served_after_a_tail_repair() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let li = fx.files.len() - 1;
    let (_, name, _) = fx.files[li].clone();
    let off = fx.records[li][fx.records[li].len() / 2].0 + 3;
    fx.restore(dir.path());
    damage(dir.path(), &name, |d| d.truncate(off));
    let later = T0 + 500_000;
    let clock = Arc::new(ManualClock::new(later));
    let store = Store::open_with(dir.path(), opts(&clock, RecoveryMode::default())).unwrap();
    let mut want = fx.states[fx.records_before(li) + fx.whole_before(li, off)].clone();
    want.retain(|_, (_, e)| e.is_none_or(|e| e > later));
    assert!(want.len() < fx.states.last().unwrap().len());
    fx.check_state(&store, &want, "reopened 500 s later");
}

/// Hint files are derived data: damage to one (a bit flip or a cut at any offset) must leave the
/// store opening to exactly its content (replaying the segment instead) or, at worst, refusing
/// with `Corruption`; never serving a wrong value.
#[test]
fn hint_file_damage_at_every_offset_never_serves_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    fx.restore(dir.path());
    {
        let store = open(dir.path(), RecoveryMode::default()).unwrap();
        let report = store.compact().unwrap();
        assert!(
            report.hints_written > 0,
            "compaction wrote no hint file: {report:?}"
        );
    }
    let want = fx.states.last().unwrap().clone();
    let snapshot: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "LOCK")
        .map(|n| (n.clone(), std::fs::read(dir.path().join(&n)).unwrap()))
        .collect();
    let restore = || {
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "LOCK" {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (n, d) in &snapshot {
            std::fs::write(dir.path().join(n), d).unwrap();
        }
    };
    let hints: Vec<&(String, Vec<u8>)> = snapshot
        .iter()
        .filter(|(n, _)| n.ends_with(".hint"))
        .collect();
    assert!(!hints.is_empty());
    restore();
    {
        let store = open(dir.path(), RecoveryMode::default()).unwrap();
        assert!(
            store.recovery_report().segments_from_hints > 0,
            "the undamaged hints are used"
        );
        fx.check_state(&store, &want, "undamaged hints");
    }
    let (mut ok, mut refused) = (0, 0);
    for (name, data) in hints {
        for off in 0..data.len() {
            for cut in [false, true] {
                let ctx = format!(
                    "hint {name} {} at {off}",
                    if cut { "cut" } else { "bit-flipped" }
                );
                restore();
                damage(dir.path(), name, |d| {
                    if cut {
                        d.truncate(off)
                    } else {
                        d[off] ^= 1 << (off % 8)
                    }
                });
                match open(dir.path(), RecoveryMode::default()) {
                    Ok(store) => {
                        ok += 1;
                        fx.check_state(&store, &want, &ctx);
                    }
                    Err(Error::Corruption { .. }) => refused += 1,
                    Err(e) => panic!("{ctx}: {e:?}"),
                }
            }
        }
    }
    eprintln!("hint damage: {ok} opened with the right content, {refused} refused as corruption");
}

/// Damage under a running store: one bit flipped at a time in its segments while it is open
/// (reads go through shared mappings, so they see it), then every key read and the whole store
/// scanned. With reads verified (the default) a read returns the value last written or
/// `Error::Corruption`, never another value; with `verify_reads(false)` it may return damaged
/// bytes but still never panics nor reads outside the record. Each flip is undone before the
/// next.
#[test]
fn damage_under_a_running_store_is_reported_by_verified_reads_and_never_panics() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let fx = build(dir.path());
    let want = fx.states.last().unwrap().clone();
    for verify in [true, false] {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open_with(
            dir.path(),
            opts(&clock, RecoveryMode::default()).verify_reads(verify),
        )
        .unwrap();
        let check =
            |ctx: &str, got: ttlstore::Result<Option<(Vec<u8>, Vec<u8>)>>, k: &[u8]| match got {
                Ok(Some((rk, v))) if verify => {
                    assert_eq!(rk, k, "{ctx}");
                    assert_eq!(want.get(k).map(|w| &w.0), Some(&v), "{ctx}: a wrong value");
                }
                Ok(None) if verify => assert!(!want.contains_key(k), "{ctx}: a key lost"),
                Ok(_) | Err(Error::Corruption { .. }) => {}
                Err(e) => panic!("{ctx}: expected Error::Corruption, got {e:?}"),
            };
        for (fi, (_, name, bytes)) in fx.files.iter().enumerate() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(name))
                .unwrap();
            let end = fx.records[fi].last().map_or(HEADER_LEN, |r| r.1);
            let step = if fi == 1 { 1 } else { stride() };
            for off in (HEADER_LEN..end).step_by(step) {
                let ctx = format!("verify {verify}, {name} bit flipped at {off}");
                let flipped = [bytes[off] ^ (1 << (off % 8))];
                file.write_at(&flipped, off as u64).unwrap();
                for i in 0..KEYS {
                    let k = key(i);
                    let got = store.get(&k).map(|v| v.map(|v| (k.clone(), v.to_vec())));
                    check(&ctx, got, &k);
                }
                for item in store.scan_prefix(b"") {
                    match item {
                        Ok((k, v)) => check(&ctx, Ok(Some((k.clone(), v.to_vec()))), &k),
                        Err(e) => check(&ctx, Err(e), b""),
                    }
                }
                file.write_at(&bytes[off..off + 1], off as u64).unwrap();
            }
        }
        // Every flip undone: the store reads exactly its state again.
        for (k, (v, _)) in &want {
            assert_eq!(store.get(k).unwrap().as_deref(), Some(&v[..]));
        }
    }
}
