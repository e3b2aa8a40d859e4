//! Reopening from hint files and by scanning gives the same store: the same keys, values,
//! expiries and sequences, the same accounting, after overwrites and deletes spread over many
//! segments, expire records, compaction output (copies of older records with their original
//! sequences, replayed after newer segments) and writes after the compaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{ManualClock, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

fn opts(clock: &Arc<ManualClock>, background: bool) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(16 << 10)
        .clock(clock.clone())
        .background_threads(background)
        .compaction_threshold(0.3)
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// (key → (value, expiry, sequence)) and the aggregate accounting, as the store reports them.
type Snapshot = (
    BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>, u64)>,
    (u64, u64, u64, u64, u64),
);

fn snapshot(store: &Store, keys: u32) -> Snapshot {
    let mut all = BTreeMap::new();
    for i in 0..keys {
        if let Some(item) = store.get_item(&key(i)).unwrap() {
            all.insert(key(i), (item.value.to_vec(), item.expires_at, item.seq));
        }
    }
    let scanned: Vec<Vec<u8>> = store.scan_prefix(b"key").map(|r| r.unwrap().0).collect();
    assert_eq!(scanned, all.keys().cloned().collect::<Vec<_>>());
    let s = store.stats();
    (
        all,
        (
            s.live_keys,
            s.keys_with_ttl,
            s.expired_pending,
            s.live_bytes,
            s.data_bytes,
        ),
    )
}

fn remove_hints(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(p).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn reopen_from_hints_matches_a_scan_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let keys = 900u32;
    // key → (value, expiry)
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)> = BTreeMap::new();
    let store = Store::open_with(dir.path(), opts(&clock, true)).unwrap();
    let rx = store.subscribe_expired();
    for i in 0..keys {
        let v = vec![i as u8; 20 + (i % 50) as usize];
        if i % 4 == 0 {
            // 10 s: expired by the expirer; 50 s: expires while the store is down.
            let ttl = Duration::from_secs([10, 50, 500, 500, 500][(i % 5) as usize]);
            store.put_with_ttl(&key(i), &v, ttl).unwrap();
            model.insert(key(i), (v, Some(T0 + ttl.as_millis() as u64)));
        } else {
            store.put(&key(i), &v).unwrap();
            model.insert(key(i), (v, None));
        }
    }
    // Overwrites and deletes land in later segments than the writes they replace.
    for i in (0..keys).step_by(3) {
        let v = format!("second {i}").into_bytes();
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), (v, None));
    }
    for i in (0..keys).step_by(7) {
        store.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    // The keys with a 10 s TTL still holding it expire: the expirer logs expire records.
    clock.advance(Duration::from_secs(11));
    let due: Vec<Vec<u8>> = model
        .iter()
        .filter(|(_, (_, e))| e.is_some_and(|e| e <= T0 + 11_000))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!due.is_empty());
    for _ in &due {
        rx.recv_timeout(WAIT).expect("an expiry");
    }
    for k in &due {
        model.remove(k);
    }
    // Compaction rewrites sealed segments (copies keep their sequences) and writes hints.
    // (The background compactor may have run already: count what this session wrote.)
    store.compact().unwrap();
    assert!(store.stats().compaction_bytes_written > 0);
    // Writes after the compaction: overwrites, deletes (of keys whose puts are now in the
    // compaction output), new keys and puts again after a delete.
    for i in (0..keys).step_by(5) {
        let v = format!("third {i}").into_bytes();
        store.put(&key(i), &v).unwrap();
        model.insert(key(i), (v, None));
    }
    for i in (1..keys).step_by(11) {
        store.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    for i in keys..keys + 50 {
        store.put(&key(i), b"new").unwrap();
        model.insert(key(i), (b"new".to_vec(), None));
    }
    for i in (0..keys).step_by(7).take(20) {
        store.put(&key(i), b"back").unwrap();
        model.insert(key(i), (b"back".to_vec(), None));
    }
    // What the write path's accounting says, to compare with replay's. A compaction pass that a
    // rotation started may still be running, and its copies are encoded afresh (a compact
    // record's size depends on its segment's base), which can change the accounted bytes: passes
    // are serialised, so this waits for it and leaves nothing in flight.
    store.compact().unwrap();
    let before = store.stats();
    // Keys whose deadline passes while the store is down: still there at open (pending).
    drop(rx);
    store.close().unwrap();
    clock.advance(Duration::from_secs(100));
    let down: Vec<Vec<u8>> = model
        .iter()
        .filter(|(_, (_, e))| e.is_some_and(|e| e <= T0 + 111_000))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!down.is_empty());

    let total = keys + 50;
    let with_hints = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert!(with_hints.recovery_report().segments_from_hints > 2);
    assert_eq!(with_hints.recovery_report().bad_hints, 0);
    let a = snapshot(&with_hints, total);
    assert_eq!(a.1.2, down.len() as u64, "expired while down, pending");
    assert_eq!(
        (a.1.0 + a.1.2, a.1.3),
        (before.live_keys, before.live_bytes),
        "live keys (with those expired while down) and bytes as the running store counted them"
    );
    // The model: expired keys are not served.
    let live: BTreeMap<_, _> = model
        .iter()
        .filter(|(k, _)| !down.contains(k))
        .map(|(k, (v, e))| (k.clone(), (v.clone(), *e)))
        .collect();
    let got: BTreeMap<_, _> =
        a.0.iter()
            .map(|(k, (v, e, _))| (k.clone(), (v.clone(), *e)))
            .collect();
    assert_eq!(got, live);
    with_hints.close().unwrap();

    assert!(remove_hints(dir.path()) > 2);
    let scanned = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert_eq!(scanned.recovery_report().segments_from_hints, 0);
    let b = snapshot(&scanned, total);
    assert_eq!(a, b);
    scanned.close().unwrap();
}

fn seg_and_hint_files(dir: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    (
        names.iter().filter(|n| n.ends_with(".seg")).count(),
        names.iter().filter(|n| n.ends_with(".hint")).count(),
    )
}

#[test]
fn a_clean_close_seals_the_active_segment_so_open_reads_hints_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let o = || opts(&clock, false).segment_size(64 << 10);
    let value = |i: u32| vec![(i % 251) as u8; 60 + (i % 40) as usize];
    let n = 3000u32;
    {
        let store = Store::open_with(dir.path(), o()).unwrap();
        for i in 0..n {
            store.put(&key(i), &value(i)).unwrap();
        }
    }
    // Every segment, the one active at close included, has its hint.
    let (segs, hints) = seg_and_hint_files(dir.path());
    assert!(segs >= 3);
    assert_eq!(hints, segs, "a hint for every segment after a clean close");
    let store = Store::open_with(dir.path(), o()).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.segments_from_hints, segs, "nothing scanned");
    assert_eq!(report.bad_hints, 0);
    for i in 0..n {
        assert_eq!(store.get(&key(i)).unwrap().unwrap(), value(i));
    }
    // Writes go to a new active segment after the sealed one, and survive a reopen without a
    // clean close's seal (the next open scans that active segment).
    for i in 0..100 {
        store.put(&key(i), b"again").unwrap();
    }
    drop(store);
    let store = Store::open_with(dir.path(), o().seal_on_close(false)).unwrap();
    for i in 0..n {
        let want = if i < 100 { b"again".to_vec() } else { value(i) };
        assert_eq!(store.get(&key(i)).unwrap().unwrap(), want);
    }
}

#[test]
fn a_close_that_stopped_before_the_hint_leaves_a_segment_that_open_scans_and_extends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let o = || opts(&clock, false).segment_size(64 << 10);
    {
        let store = Store::open_with(dir.path(), o()).unwrap();
        for i in 0..2000u32 {
            store.put(&key(i), b"first").unwrap();
        }
    }
    // The crash window between sealing (truncate + fsync) and the hint's rename: the last log
    // segment is sealed but has no hint. It is the active segment again.
    let mut hints: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    hints.sort();
    std::fs::remove_file(hints.last().unwrap()).unwrap();
    let (segs_before, _) = seg_and_hint_files(dir.path());
    let store = Store::open_with(dir.path(), o().seal_on_close(false)).unwrap();
    assert_eq!(store.recovery_report().segments_from_hints, segs_before - 1);
    store.put(&key(0), b"second").unwrap();
    drop(store);
    let (segs_after, _) = seg_and_hint_files(dir.path());
    assert_eq!(
        segs_after, segs_before,
        "appended to the unhinted segment, no new one"
    );
    let store = Store::open_with(dir.path(), o()).unwrap();
    assert_eq!(store.get(&key(0)).unwrap().unwrap(), b"second");
    assert_eq!(store.get(&key(1999)).unwrap().unwrap(), b"first");
}

/// A value that tells its key and version apart from every other.
fn fill_value(i: u32, version: u32) -> Vec<u8> {
    format!("value-{i}-{version}-").repeat(6).into_bytes()
}

/// Segments large enough that the writer hands finished pages to write-behind (a step is 1 MiB)
/// many times, under both unsynced policies: values in those pages read back while their
/// segment is still active, after it was sealed, and after a reopen, and overwrites in later
/// segments win.
#[test]
fn pages_written_behind_read_back_during_the_fill_and_after_reopen() {
    for policy in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let o = || {
            opts(&clock, true)
                .sync(policy)
                .segment_size(4 << 20)
                .compaction_threshold(0.9)
        };
        const KEYS: u32 = 60_000;
        {
            let store = Store::open_with(dir.path(), o()).unwrap();
            for version in 0..2u32 {
                for i in 0..KEYS {
                    store.put(&key(i), &fill_value(i, version)).unwrap();
                    // Now and then, read back keys written a while ago (their pages are behind
                    // the writer by then) and the one just written.
                    if i % 997 == 0 {
                        for back in [0, 1 << 10, 5 << 10, 20 << 10] {
                            let Some(j) = i.checked_sub(back) else {
                                continue;
                            };
                            assert_eq!(
                                store.get(&key(j)).unwrap().unwrap(),
                                fill_value(j, version),
                                "{policy:?}: key {j} during version {version}"
                            );
                        }
                    }
                }
            }
            assert!(
                store.stats().bytes_appended > 3 * (4 << 20),
                "the fill spans several segments"
            );
            for i in 0..KEYS {
                assert_eq!(store.get(&key(i)).unwrap().unwrap(), fill_value(i, 1));
            }
        }
        let store = Store::open_with(dir.path(), o()).unwrap();
        assert_eq!(store.stats().live_keys, u64::from(KEYS));
        for i in 0..KEYS {
            assert_eq!(
                store.get(&key(i)).unwrap().unwrap(),
                fill_value(i, 1),
                "{policy:?}: key {i} after reopen"
            );
        }
    }
}
