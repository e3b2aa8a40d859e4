//! Fault injection through `FaultStorage` over the real file system: a full disk (ENOSPC) when a
//! write needs a new segment, a failed fsync (EIO), and failing renames, directory syncs, writes
//! and reads. A full disk is an error the caller can recognise (`Error::is_disk_full`), leaves the
//! store readable and writable again once space is back; a failed fsync poisons the store (later
//! writes return `Error::Poisoned`, reads work, a reopen recovers); every other failure is
//! `Error::Io`, never corruption. Runs in well under a second; no environment variables.

use std::path::Path;
use std::sync::Arc;
use ttlstore::storage::{FaultKind, FaultStorage, Faults, OsStorage};
use ttlstore::{Error, ManualClock, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn open(dir: &Path) -> (Store, Arc<Faults>) {
    let (fs, faults) = FaultStorage::new(Arc::new(OsStorage));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(4096)
        .background_threads(false)
        .clock(Arc::new(ManualClock::new(T0)))
        .storage(fs);
    (Store::open_with(dir, opts).unwrap(), faults)
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-").repeat(10).into_bytes()
}

fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Writes keys from `from` until a write fails (at most `limit`); returns the first failing index
/// and its error.
fn write_until_error(store: &Store, from: u32, limit: u32) -> (u32, Error) {
    for i in from..from + limit {
        if let Err(e) = store.put(&key(i), &value(i)) {
            return (i, e);
        }
    }
    panic!("no write failed in {limit} attempts");
}

fn check_present(store: &Store, range: std::ops::Range<u32>) {
    for i in range {
        assert_eq!(store.get(&key(i)).unwrap().unwrap(), value(i), "key {i}");
    }
}

#[test]
fn a_full_disk_fails_the_write_that_needs_a_segment_and_the_store_recovers_when_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    for i in 0..10 {
        store.put(&key(i), &value(i)).unwrap();
    }
    faults.inject(FaultKind::Allocate, ENOSPC, u64::MAX);
    let (failed, err) = write_until_error(&store, 10, 1000);
    assert!(
        err.is_disk_full(),
        "a full disk must be recognisable, got {err:?}"
    );
    assert!(faults.calls(FaultKind::Allocate) >= 1);
    // Nothing changed: the failed write is absent, everything before it readable.
    assert_eq!(store.get(&key(failed)).unwrap(), None);
    check_present(&store, 0..failed);
    assert!(
        !store.stats().poisoned,
        "a full disk is not a reason to poison the store"
    );
    // Still full: the next write that needs a segment fails the same way.
    let again = store.put(&key(failed), &value(failed)).unwrap_err();
    assert!(again.is_disk_full(), "{again:?}");
    // Space is back.
    faults.clear(FaultKind::Allocate);
    for i in failed..failed + 200 {
        store.put(&key(i), &value(i)).unwrap();
    }
    check_present(&store, 0..failed + 200);
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..failed + 200);
    assert_eq!(store.stats().live_keys, u64::from(failed + 200));
}

/// The file grows in 1 MiB steps, a little before the writer needs them. A step that fails
/// early (the disk is full) fails no write that still fits in the space already reserved; the
/// first write that needs the missing space fails as a full disk and changes nothing.
#[test]
fn a_full_disk_fails_only_the_write_that_needs_the_missing_step() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, faults) = FaultStorage::new(Arc::new(OsStorage));
    let opts = Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(8 << 20)
        .background_threads(false)
        .clock(Arc::new(ManualClock::new(T0)))
        .storage(fs);
    let store = Store::open_with(dir.path(), opts).unwrap();
    // About 140 bytes a record: 3,000 records stay well inside the first MiB.
    for i in 0..3000 {
        store.put(&key(i), &value(i)).unwrap();
    }
    faults.inject(FaultKind::Allocate, ENOSPC, u64::MAX);
    let (failed, err) = write_until_error(&store, 3000, 20_000);
    assert!(err.is_disk_full(), "{err:?}");
    let end = ttlstore::format::HEADER_LEN as u64 + store.stats().bytes_appended;
    assert!(
        end > (1 << 20) - 4096 && end <= 1 << 20,
        "writes kept going up to the end of the first MiB, then stopped (data ends at {end})"
    );
    assert!(
        faults.calls(FaultKind::Allocate) >= 2,
        "the early step was tried and failed"
    );
    assert_eq!(store.get(&key(failed)).unwrap(), None);
    check_present(&store, 0..failed);
    assert!(!store.stats().poisoned);
    faults.clear(FaultKind::Allocate);
    for i in failed..failed + 2000 {
        store.put(&key(i), &value(i)).unwrap();
    }
    check_present(&store, 0..failed + 2000);
}

/// The expirer's write of expire records fails on a full disk: the keys stay due (never served,
/// still counted as pending), and once space is back they are expired like any others.
#[test]
fn keys_whose_expire_records_failed_on_a_full_disk_are_expired_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, faults) = FaultStorage::new(Arc::new(OsStorage));
    let clock = Arc::new(ManualClock::new(T0));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(4096)
        .background_threads(false)
        .clock(clock.clone())
        .storage(fs);
    let store = Store::open_with(dir.path(), opts).unwrap();
    let n = 40;
    for i in 0..n {
        store
            .put_with_ttl(&key(i), &value(i), std::time::Duration::from_secs(1))
            .unwrap();
    }
    // Fill the active segment, so that the expire records need a new one.
    faults.inject(FaultKind::Allocate, ENOSPC, u64::MAX);
    let (filled, _) = write_until_error(&store, n, 1000);
    clock.advance(std::time::Duration::from_secs(2));
    let err = store.compact().unwrap_err();
    assert!(err.is_disk_full(), "{err:?}");
    for i in 0..n {
        assert_eq!(
            store.get(&key(i)).unwrap(),
            None,
            "key {i} is past its expiry"
        );
    }
    let stats = store.stats();
    assert_eq!(stats.expired_pending, u64::from(n));
    assert_eq!(stats.live_keys, u64::from(filled - n));
    faults.clear(FaultKind::Allocate);
    assert_eq!(store.compact().unwrap().expired_keys, u64::from(n));
    let stats = store.stats();
    assert_eq!(stats.expired_pending, 0);
    assert_eq!(stats.live_keys, u64::from(filled - n));
    check_present(&store, n..filled);
}

#[test]
fn a_full_disk_when_creating_the_segment_file_is_also_a_recoverable_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    faults.inject(FaultKind::Create, ENOSPC, u64::MAX);
    let (failed, err) = write_until_error(&store, 0, 1000);
    assert!(err.is_disk_full(), "{err:?}");
    check_present(&store, 0..failed);
    faults.clear_all();
    store.put(&key(failed), &value(failed)).unwrap();
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..failed + 1);
}

#[test]
fn a_failed_fsync_poisons_the_store_reads_still_work_and_a_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    for i in 0..20 {
        store.put(&key(i), &value(i)).unwrap();
    }
    faults.inject(FaultKind::Sync, EIO, 1);
    let err = store.put(&key(20), &value(20)).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && errno(&err) == Some(EIO),
        "the failed fsync itself: {err:?}"
    );
    assert!(store.stats().poisoned);
    // The fault is gone, but the store no longer promises durability: every write is refused.
    for e in [
        store.put(&key(21), &value(21)).unwrap_err(),
        store.delete(&key(0)).unwrap_err(),
        store.sync().unwrap_err(),
    ] {
        assert!(
            matches!(e, Error::Poisoned { .. }),
            "expected Poisoned, got {e:?}"
        );
    }
    check_present(&store, 0..20);
    assert_eq!(store.get(&key(21)).unwrap(), None);
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..20);
    assert!(!store.stats().poisoned);
    store.put(&key(21), &value(21)).unwrap();
}

#[test]
fn a_failed_directory_sync_at_rotation_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    faults.inject(FaultKind::SyncDir, EIO, u64::MAX);
    let (failed, err) = write_until_error(&store, 0, 1000);
    assert!(
        matches!(err, Error::Io { .. }) && errno(&err) == Some(EIO),
        "{err:?}"
    );
    check_present(&store, 0..failed);
    faults.clear_all();
    // Whether or not the store refuses further writes (a failed directory sync poisons it),
    // nothing acknowledged is lost across a reopen.
    let mut acked = failed;
    while acked < failed + 50 && store.put(&key(acked), &value(acked)).is_ok() {
        acked += 1;
    }
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..failed);
    check_present(&store, failed + 1..acked);
}

#[test]
fn a_failed_write_of_a_new_segment_header_is_an_io_error_and_leaves_the_store_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    faults.inject(FaultKind::Write, EIO, u64::MAX);
    let (failed, err) = write_until_error(&store, 0, 1000);
    assert!(
        matches!(err, Error::Io { .. }) && errno(&err) == Some(EIO),
        "{err:?}"
    );
    check_present(&store, 0..failed);
    faults.clear_all();
    store.put(&key(failed), &value(failed)).unwrap();
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..failed + 1);
}

#[test]
fn a_failed_rename_in_compaction_is_an_io_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open(dir.path());
    // Several sealed segments, mostly dead, so compaction has hints to write and segments to
    // rewrite (both publish by rename).
    for round in 0..3 {
        for i in 0..60 {
            store.put(&key(i), &value(i + round)).unwrap();
        }
    }
    for i in 0..60 {
        store.put(&key(i), &value(i)).unwrap();
    }
    faults.inject(FaultKind::Rename, EIO, u64::MAX);
    let err = store.compact().unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && errno(&err) == Some(EIO),
        "{err:?}"
    );
    assert!(faults.calls(FaultKind::Rename) >= 1);
    check_present(&store, 0..60);
    faults.clear_all();
    store.compact().unwrap();
    check_present(&store, 0..60);
    drop(store);
    let (store, _) = open(dir.path());
    check_present(&store, 0..60);
    assert_eq!(store.stats().live_keys, 60);
}

#[test]
fn a_read_error_at_open_is_an_io_error_never_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for i in 0..100 {
        store.put(&key(i), &value(i)).unwrap();
    }
    drop(store);
    let (fs, faults) = FaultStorage::new(Arc::new(OsStorage));
    faults.inject(FaultKind::Read, EIO, u64::MAX);
    let opts = Options::default()
        .segment_size(4096)
        .background_threads(false)
        .storage(fs);
    match Store::open_with(dir.path(), opts) {
        Err(e @ Error::Io { .. }) => assert_eq!(errno(&e), Some(EIO)),
        Err(e) => panic!("a read error must be reported as Error::Io, got {e:?}"),
        Ok(_) => panic!("the open read nothing and still succeeded"),
    }
    let (store, _) = open(dir.path());
    check_present(&store, 0..100);
}

/// Group commit with a failed fsync: writers waiting for the failed sync, or for the next one,
/// all return an error (the sync's own `Io`, or `Poisoned`) instead of waiting forever, and
/// every write acknowledged before is there after a reopen.
#[test]
fn a_failed_fsync_under_group_commit_releases_every_waiting_writer_with_an_error() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (fs, faults) = FaultStorage::new(Arc::new(OsStorage));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .background_threads(false)
        .clock(Arc::new(ManualClock::new(T0)))
        .storage(fs);
    let store = Store::open_with(dir.path(), opts).unwrap();
    const THREADS: u32 = 8;
    let acked: Arc<Vec<AtomicU32>> = Arc::new((0..THREADS).map(|_| AtomicU32::new(0)).collect());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (store, acked, tx) = (store.clone(), acked.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            for i in 0.. {
                match store.put(&key(t * 100_000 + i), &value(t * 100_000 + i)) {
                    Ok(()) => acked[t as usize].store(i + 1, Ordering::SeqCst),
                    Err(e) => {
                        let _ = tx.send(e);
                        return;
                    }
                }
            }
        }));
    }
    // Let the writers form groups, then fail one fsync.
    while acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u32>() < 400 {
        std::thread::yield_now();
    }
    faults.inject(FaultKind::Sync, EIO, 1);
    let mut io_errors = 0;
    for _ in 0..THREADS {
        // A writer left waiting for a sync that will never come would hang here.
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("every writer returns once the fsync failed");
        match e {
            Error::Io { .. } if errno(&e) == Some(EIO) => io_errors += 1,
            Error::Poisoned { .. } => {}
            other => panic!("a writer failed with {other:?}"),
        }
    }
    assert_eq!(
        io_errors, 1,
        "only the leader of the failed sync sees its EIO"
    );
    assert!(store.stats().poisoned);
    // Every writer has returned; its handle on the store goes with its thread.
    for h in handles {
        h.join().unwrap();
    }
    drop(store);
    let (store, _) = open(dir.path());
    for t in 0..THREADS {
        check_present(
            &store,
            t * 100_000..t * 100_000 + acked[t as usize].load(Ordering::SeqCst),
        );
    }
}
