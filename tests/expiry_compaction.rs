//! Active expiry, notifications, whole-segment drops, rewrite compaction, hint files, and no
//! resurrection, all on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{ExpiredKey, ManualClock, Namespace, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

fn opts(clock: &Arc<ManualClock>, background: bool) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(16 << 10)
        .clock(clock.clone())
        .background_threads(background)
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// Runs compaction passes until one neither rewrites nor drops a segment (at most 20); returns
/// how many segments they rewrote.
fn compact_until_done(store: &Store) -> usize {
    let mut rewritten = 0;
    for _ in 0..20 {
        let r = store.compact().unwrap();
        rewritten += r.segments_rewritten;
        if r.segments_rewritten == 0 && r.segments_dropped == 0 {
            break;
        }
    }
    rewritten
}

#[test]
fn expirer_wakes_on_clock_advance_and_notifies_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock, true)).unwrap();
    let rx = store.subscribe_expired();
    store
        .put_with_ttl(b"a", b"1", Duration::from_secs(5))
        .unwrap();
    store
        .put_with_ttl(b"b", b"2", Duration::from_secs(5))
        .unwrap();
    store
        .put_with_ttl(b"c", b"3", Duration::from_secs(5))
        .unwrap();
    store
        .put_with_ttl(b"d", b"4", Duration::from_secs(50))
        .unwrap();
    // Re-written before its deadline: the new write has no TTL and must survive.
    store.put(b"b", b"2'").unwrap();
    // Deleted: not an expiry.
    store.delete(b"c").unwrap();
    clock.advance(Duration::from_secs(5));
    let got = rx.recv_timeout(WAIT).expect("expiry of a");
    assert_eq!(got.key, b"a");
    assert_eq!(got.namespace, Namespace::DEFAULT);
    assert_eq!(got.expires_at, T0 + 5000);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "only a expired"
    );
    assert_eq!(store.get(b"b").unwrap().unwrap(), b"2'");
    let stats = store.stats();
    assert_eq!(stats.expired_keys, 1);
    assert_eq!(stats.expired_pending, 0);
    assert_eq!(stats.live_keys, 2);
}

#[test]
fn keys_that_expired_while_down_are_reported_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    for i in 0..10 {
        store
            .put_with_ttl(&key(i), b"v", Duration::from_secs(1 + u64::from(i)))
            .unwrap();
    }
    drop(store);
    clock.advance(Duration::from_secs(5));
    let store = Store::open_with(dir.path(), opts(&clock, true)).unwrap();
    let rx = store.subscribe_expired();
    let mut keys: Vec<ExpiredKey> = (0..5)
        .map(|_| rx.recv_timeout(WAIT).expect("reported"))
        .collect();
    keys.sort_by_key(|k| k.expires_at);
    assert_eq!(
        keys.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        (0..5).map(key).collect::<Vec<_>>()
    );
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    drop(rx);
    drop(store);
    // The expire records are durable: a second open reports nothing more.
    let store = Store::open_with(dir.path(), opts(&clock, true)).unwrap();
    let rx = store.subscribe_expired();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(store.stats().live_keys, 5);
}

#[test]
fn expired_segments_are_dropped_whole_and_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    for i in 0..2000 {
        store
            .put_with_ttl(&key(i), &[7; 100], Duration::from_secs(60))
            .unwrap();
    }
    store.put(b"forever", b"x").unwrap();
    let before = store.stats();
    assert!(before.segments > 10);
    clock.advance(Duration::from_secs(61));
    let report = store.compact().unwrap();
    assert_eq!(report.expired_keys, 2000);
    assert!(
        report.segments_dropped >= before.segments - 3,
        "{report:?} of {}",
        before.segments
    );
    let after = store.stats();
    assert!(
        after.disk_bytes < before.disk_bytes / 4,
        "{} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    assert_eq!(after.live_keys, 1);
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert_eq!(store.stats().live_keys, 1);
    assert_eq!(store.get(b"forever").unwrap().unwrap(), b"x");
    // Time going backwards does not bring expired keys back: their records are gone.
    clock.set(T0);
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert_eq!(store.get(&key(3)).unwrap(), None);
}

#[test]
fn rewrite_keeps_live_data_and_reopens_from_hints() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store =
        Store::open_with(dir.path(), opts(&clock, false).compaction_threshold(0.3)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..3u8 {
        for i in 0..600 {
            if i % 3 != 0 || round == 0 {
                let v = vec![round; 50 + (i as usize % 90)];
                let ttl = (i % 4 == 0).then(|| Duration::from_secs(1000 + u64::from(i)));
                match ttl {
                    Some(t) => store.put_with_ttl(&key(i), &v, t).unwrap(),
                    None => store.put(&key(i), &v).unwrap(),
                }
                model.insert(key(i), (v, ttl.map(|t| T0 + t.as_millis() as u64)));
            }
        }
    }
    for i in (0..600).step_by(7) {
        store.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    let before = store.stats();
    let rewritten = compact_until_done(&store);
    assert!(rewritten > 0);
    let after = store.stats();
    assert!(
        after.disk_bytes < before.disk_bytes,
        "{} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    let check = |store: &Store| {
        let got: Vec<_> = store.scan_prefix(b"key").map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), model.len());
        for (k, v) in &got {
            let (mv, me) = &model[k];
            assert_eq!(&v[..], &mv[..]);
            assert_eq!(store.get_item(k).unwrap().unwrap().expires_at, *me);
        }
    };
    check(&store);
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert!(
        store.recovery_report().segments_from_hints > 0,
        "{:?}",
        store.recovery_report()
    );
    check(&store);
    // A damaged hint falls back to scanning its segment, with the same contents.
    drop(store);
    let hint = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "hint"))
        .unwrap();
    let mut bytes = std::fs::read(&hint).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&hint, bytes).unwrap();
    let store = Store::open_with(dir.path(), opts(&clock, false)).unwrap();
    assert_eq!(store.recovery_report().bad_hints, 1);
    check(&store);
}

/// Runs an expiry pass (it writes the expire records of every due key into the active segment),
/// then writes more than a segment holds, which seals that segment so compaction can reach it.
fn expire_and_seal(store: &Store) {
    store.compact().unwrap();
    store.put(b"tail", &[0; 16 << 10]).unwrap();
}

/// Victims `key(i)` are written first (no TTL) among long-lived filler, so those early segments
/// stay and keep the victims' first records; `hide` then hides each even victim (a delete, or a
/// write with a TTL that passes) among short-lived data, so the later segments die whole and only
/// their tombstones keep the first records hidden. With `seal_tombstones`, an expiry pass and more
/// data first seal the segment the expiry pass wrote its expire records into. Checked after
/// compactions, a reopen, more compactions and another reopen: no even victim comes back.
fn hidden_first_writes_never_come_back(hide: impl Fn(&Store, &[u8]), seal_tombstones: bool) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let o = || opts(&clock, false);
    let store = Store::open_with(dir.path(), o()).unwrap();
    for i in 0..300 {
        store
            .put(format!("filler{i:04}").as_bytes(), &[2; 400])
            .unwrap();
        store.put(&key(i), &[1; 10]).unwrap();
    }
    for i in 0..300 {
        if i % 2 == 0 {
            hide(&store, &key(i));
        }
        store
            .put_with_ttl(
                format!("temp{i:04}").as_bytes(),
                &[3; 200],
                Duration::from_secs(5),
            )
            .unwrap();
    }
    store.put(b"tail", &[0; 16 << 10]).unwrap();
    clock.advance(Duration::from_secs(6));
    if seal_tombstones {
        expire_and_seal(&store);
    }
    let check = |store: &Store| {
        for i in 0..300 {
            let got = store.get(&key(i)).unwrap();
            if i % 2 == 0 {
                assert_eq!(got, None, "key {i}: its first write came back");
            } else {
                assert_eq!(got.unwrap(), vec![1; 10]);
            }
        }
        assert_eq!(store.scan_prefix(b"filler").count(), 300);
    };
    for _ in 0..5 {
        store.compact().unwrap();
    }
    check(&store);
    drop(store);
    let store = Store::open_with(dir.path(), o()).unwrap();
    check(&store);
    // Compact again after the reopen (from hints now) and reopen once more.
    for _ in 0..5 {
        store.compact().unwrap();
    }
    drop(store);
    let store = Store::open_with(dir.path(), o()).unwrap();
    check(&store);
}

#[test]
fn deleted_keys_never_come_back_after_compaction_and_reopen() {
    hidden_first_writes_never_come_back(
        |store, k| {
            store.delete(k).unwrap();
        },
        false,
    );
}

#[test]
fn an_expired_write_never_uncovers_an_older_one_after_compaction_and_reopen() {
    hidden_first_writes_never_come_back(
        |store, k| {
            store
                .put_with_ttl(k, &[9; 10], Duration::from_secs(5))
                .unwrap();
        },
        true,
    );
}

#[test]
fn expire_records_of_keys_written_once_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let o = || opts(&clock, false);
    let store = Store::open_with(dir.path(), o()).unwrap();
    // Each key written once with a TTL, beside long-lived keys in the same segments, so that
    // the segments holding the expired writes stay: an expire record needs to hide nothing but
    // the write it expired, whose own record says it has expired.
    for i in 0..300 {
        store
            .put(format!("filler{i:04}").as_bytes(), &[2; 100])
            .unwrap();
        store
            .put_with_ttl(&key(i), &[1; 100], Duration::from_secs(5))
            .unwrap();
    }
    store.put(b"tail", &[0; 16 << 10]).unwrap();
    clock.advance(Duration::from_secs(6));
    expire_and_seal(&store);
    let (mut kept, mut dropped) = (0, 0);
    for _ in 0..5 {
        let r = store.compact().unwrap();
        kept += r.tombstones_kept;
        dropped += r.tombstones_dropped;
    }
    assert_eq!(kept, 0);
    assert!(dropped > 0, "no expire record was dropped");
    let check = |store: &Store| {
        for i in 0..300 {
            assert_eq!(store.get(&key(i)).unwrap(), None, "key {i} came back");
        }
        assert_eq!(store.scan_prefix(b"filler").count(), 300);
    };
    check(&store);
    drop(store);
    let store = Store::open_with(dir.path(), o()).unwrap();
    check(&store);
}

/// A rewrite moves its keys to the new segments a chunk at a time, each chunk under its own
/// write lock: readers and writers run in between. Every key must stay readable, with its value,
/// throughout, and the writes that run alongside must all be there at the end.
#[test]
fn keys_stay_readable_while_a_rewrite_moves_them_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(
        dir.path(),
        opts(&clock, false)
            .segment_size(256 << 10)
            .compaction_threshold(0.3),
    )
    .unwrap();
    const KEYS: u32 = 30_000;
    let value = |i: u32, round: u8| format!("value-{i}-{round}").into_bytes();
    for round in 0..3u8 {
        for i in 0..KEYS {
            if round == 0 || !i.is_multiple_of(3) {
                store.put(&key(i), &value(i, round)).unwrap();
            }
        }
    }
    let expected = move |i: u32| value(i, if i.is_multiple_of(3) { 0 } else { 2 });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut passes = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || passes == 0 {
                    for i in (r..KEYS).step_by(2) {
                        let got = store.get(&key(i)).unwrap_or_else(|e| panic!("{i}: {e}"));
                        assert_eq!(got.as_deref(), Some(&expected(i)[..]), "key {i}");
                    }
                    passes += 1;
                }
                passes
            })
        })
        .collect();
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.put(format!("other{n:07}").as_bytes(), b"x").unwrap();
                n += 1;
            }
            n
        })
    };
    let rewritten = compact_until_done(&store);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let others = writer.join().unwrap();
    assert!(rewritten >= 4, "only {rewritten} segments rewritten");
    for i in 0..KEYS {
        assert_eq!(
            store.get(&key(i)).unwrap().as_deref(),
            Some(&expected(i)[..])
        );
    }
    for n in 0..others {
        assert!(
            store
                .contains_key(format!("other{n:07}").as_bytes())
                .unwrap()
        );
    }
}
