//! Crash and error at every step of the hint and compaction protocols (cargo feature
//! `failpoints`): reopen must give the same contents.
//!
//! Each step is tried twice: once returning an I/O error in-process (the store must keep serving
//! the same contents and reopen with them), once aborting a child process at that instruction.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::failpoints::{self, Action};
use ttlstore::{ManualClock, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
/// Failpoints are process-wide: the two tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const POINTS: &[&str] = &[
    "hint.before_sync",
    "hint.before_rename",
    "compaction.before_output_sync",
    "compaction.before_publish",
    "compaction.after_publish",
    "compaction.before_unlink",
    "compaction.after_unlink",
];

fn opts(clock: &Arc<ManualClock>) -> Options {
    Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(8 << 10)
        .compaction_threshold(0.2)
        .background_threads(false)
        .clock(clock.clone())
}

/// The deterministic workload; returns the contents it leaves (key → (value, expiry)).
fn workload(store: &Store, clock: &ManualClock) -> BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)> {
    let mut model = BTreeMap::new();
    for i in 0..200u32 {
        let k = format!("k{i:04}").into_bytes();
        let v = vec![(i % 251) as u8; 60 + (i as usize % 50)];
        if i % 5 == 0 {
            store.put_with_ttl(&k, &v, Duration::from_secs(30)).unwrap();
        } else {
            store.put(&k, &v).unwrap();
            model.insert(k, (v, None));
        }
    }
    for i in (0..200u32).filter(|i| i % 3 == 0) {
        let k = format!("k{i:04}").into_bytes();
        let v = vec![9u8; 40];
        store
            .put_with_ttl(&k, &v, Duration::from_secs(3600))
            .unwrap();
        model.insert(k, (v, Some(T0 + 3_600_000)));
    }
    for i in (0..200u32).filter(|i| i % 7 == 0) {
        let k = format!("k{i:04}").into_bytes();
        store.delete(&k).unwrap();
        model.remove(&k);
    }
    clock.advance(Duration::from_secs(31));
    // Keys with the short TTL that were not overwritten are gone now.
    model
}

fn check(store: &Store, model: &BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>, what: &str) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan_prefix(b"k")
        .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want, "{what}");
    for (k, (_, e)) in model {
        assert_eq!(
            store.get_item(k).unwrap().unwrap().expires_at,
            *e,
            "{what}: expiry of {k:?}"
        );
    }
}

#[test]
fn an_error_at_any_step_changes_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        let model = workload(&store, &clock);
        failpoints::arm(point, Action::Error, 0);
        // Retry a few passes: a point is reached only when its step has work.
        let mut failed = false;
        for _ in 0..4 {
            if store.compact().is_err() {
                failed = true;
                break;
            }
        }
        failpoints::clear();
        assert!(failed, "{point} was never reached");
        check(&store, &model, point);
        drop(store);
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        check(&store, &model, point);
        store.compact().unwrap();
        check(&store, &model, point);
    }
}

fn child(dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir, opts(&clock)).unwrap();
    workload(&store, &clock);
    failpoints::arm_from_env();
    for _ in 0..4 {
        let _ = store.compact();
    }
    // The failpoint aborts the process; getting here means it was never reached.
    std::process::exit(3);
}

#[test]
fn a_crash_at_any_step_reopens_with_the_same_contents() {
    if let Ok(dir) = std::env::var("TTLSTORE_COMPACTION_CHILD") {
        child(Path::new(&dir));
        return;
    }
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_crash_at_any_step_reopens_with_the_same_contents",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TTLSTORE_COMPACTION_CHILD", dir.path())
            .env("TTLSTORE_FAILPOINT", format!("{point}=abort"))
            .status()
            .unwrap();
        assert!(
            !status.success() && status.code() != Some(3),
            "{point}: child not stopped there ({status:?})"
        );
        let clock = Arc::new(ManualClock::new(T0));
        let expected = {
            let scratch = tempfile::tempdir().unwrap();
            let s = Store::open_with(scratch.path(), opts(&clock)).unwrap();
            workload(&s, &clock)
        };
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        check(&store, &expected, point);
        store.compact().unwrap();
        check(&store, &expected, point);
        drop(store);
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        check(&store, &expected, point);
    }
}

/// A rewrite whose inputs hold both a tombstone and the older record it hides must not drop the
/// tombstone: a stop between two unlinks would leave the older record without it.
#[test]
fn a_stop_between_unlinks_of_one_rewrite_resurrects_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for skip in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let o = || {
            Options::default()
                .sync(SyncPolicy::Never)
                .segment_size(4096)
                .clock(clock.clone())
                .background_threads(false)
        };
        let store = Store::open_with(dir.path(), o()).unwrap();
        store.put(b"k", &[7; 1000]).unwrap();
        store.put(b"x", &[1; 100]).unwrap();
        for i in 0..40u8 {
            store.put(b"f", &[i; 100]).unwrap();
        }
        store.compact().unwrap();
        // The delete lands in a log segment whose id is lower than the compacted output that
        // holds the older put.
        store.delete(b"k").unwrap();
        for i in 0..40u8 {
            store.put(b"g", &[i; 100]).unwrap();
        }
        failpoints::arm("compaction.before_unlink", Action::Error, skip);
        let _ = store.compact();
        failpoints::clear();
        assert_eq!(store.get(b"k").unwrap(), None);
        drop(store);
        let store = Store::open_with(dir.path(), o()).unwrap();
        assert_eq!(
            store.get(b"k").unwrap(),
            None,
            "k came back (stop at unlink {skip})"
        );
        assert_eq!(store.get(b"x").unwrap().unwrap(), vec![1; 100]);
        for _ in 0..4 {
            store.compact().unwrap();
        }
        drop(store);
        let store = Store::open_with(dir.path(), o()).unwrap();
        assert_eq!(store.get(b"k").unwrap(), None);
    }
}
