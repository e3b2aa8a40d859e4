//! The store's API, one behaviour at a time, on a manual clock.

use std::sync::Arc;
use std::time::Duration;
use ttlstore::{Error, ManualClock, Options, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;

fn opts(clock: &Arc<ManualClock>) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(64 << 10)
        .clock(clock.clone())
}

#[test]
fn put_get_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    store.put(b"a", b"1").unwrap();
    store
        .put_with_ttl(b"b", b"2", Duration::from_secs(10))
        .unwrap();
    assert_eq!(store.get(b"a").unwrap().unwrap(), b"1");
    assert_eq!(store.ttl(b"b").unwrap(), Some(Duration::from_secs(10)));
    assert!(store.delete(b"a").unwrap());
    assert!(!store.delete(b"a").unwrap());
    assert_eq!(store.get(b"a").unwrap(), None);
    drop(store);
    clock.advance(Duration::from_secs(4));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap().unwrap(), b"2");
    assert_eq!(store.ttl(b"b").unwrap(), Some(Duration::from_secs(6)));
    clock.advance(Duration::from_secs(6));
    assert_eq!(store.get(b"b").unwrap(), None);
    assert!(!store.contains_key(b"b").unwrap());
}

#[test]
fn many_keys_rotate_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    for i in 0..5000u32 {
        store
            .put(format!("k{i:06}").as_bytes(), &[i as u8; 100])
            .unwrap();
    }
    assert!(store.stats().segments > 5);
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    assert_eq!(store.stats().live_keys, 5000);
    for i in (0..5000u32).step_by(7) {
        assert_eq!(
            store.get(format!("k{i:06}").as_bytes()).unwrap().unwrap(),
            vec![i as u8; 100]
        );
    }
    let keys: Vec<_> = store.scan_prefix(b"k0001").map(|r| r.unwrap().0).collect();
    assert_eq!(keys.len(), 100);
    assert_eq!(keys[0], b"k000100");
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn batch_expire_persist() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"x", b"1")
        .put_with_ttl(b"y", b"2", Duration::from_secs(5))
        .delete(b"z");
    store.write_batch(b).unwrap();
    assert!(store.expire(b"x", Duration::from_secs(3)).unwrap());
    assert!(store.persist(b"y").unwrap());
    assert!(!store.persist(b"y").unwrap());
    clock.advance(Duration::from_secs(3));
    assert_eq!(store.get(b"x").unwrap(), None);
    assert_eq!(store.get(b"y").unwrap().unwrap(), b"2");
    assert_eq!(store.ttl(b"y").unwrap(), None);
    assert!(store.expire(b"y", Duration::ZERO).unwrap());
    assert!(!store.contains_key(b"y").unwrap());
}

/// Segment ids stop at 2^32 - 3 (the index marks replay tombstones with the two ids above): a
/// directory holding a higher one is refused, whatever the file holds, and left as it was.
#[test]
fn a_segment_id_past_the_limit_is_refused() {
    for (id, refused) in [
        (u64::from(u32::MAX) - 2, false),
        (u64::from(u32::MAX) - 1, true),
        (u64::from(u32::MAX), true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let name = dir.path().join(format!("{id:020}.seg"));
        std::fs::write(&name, b"not a segment").unwrap();
        let got = Store::open(dir.path());
        // Within the limit, the id passes and the file is judged on its contents.
        let invalid_argument = matches!(got, Err(Error::InvalidArgument { .. }));
        assert_eq!(invalid_argument, refused, "{id}: {got:?}");
        if refused {
            assert_eq!(std::fs::read(&name).unwrap(), b"not a segment", "{id}");
        }
    }
}

#[test]
fn second_open_is_locked_and_bad_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    assert!(matches!(
        store.put(b"", b"v"),
        Err(Error::InvalidKey { len: 0 })
    ));
    assert!(matches!(
        store.put(&vec![1; ttlstore::MAX_KEY_LEN + 1], b"v"),
        Err(Error::InvalidKey { .. })
    ));
    let before = store.stats();
    assert_eq!(before.data_bytes, 0);
    drop(store);
    Store::open(dir.path()).unwrap();
}

#[test]
fn foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(Error::NotAStore { .. })
    ));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn close_rejects_writes_from_every_handle_and_wakes_listeners() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let other = store.clone();
    let woke = Arc::new(AtomicBool::new(false));
    let w = woke.clone();
    let waker: Arc<ttlstore::Waker> = Arc::new(move || w.store(true, Ordering::SeqCst));
    store.on_close(Arc::downgrade(&waker));
    other.put(b"k", b"v").unwrap();
    store.close().unwrap();
    assert!(woke.load(Ordering::SeqCst));
    assert!(matches!(other.put(b"k", b"w"), Err(Error::Closed)));
    assert_eq!(other.get(b"k").unwrap().unwrap(), b"v");
}

#[test]
fn extensions_are_shared_per_type_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store
        .extension("q1", || Ok(std::sync::Mutex::new(1u32)))
        .unwrap();
    let b = store
        .clone()
        .extension("q1", || Ok(std::sync::Mutex::new(2u32)))
        .unwrap();
    let c = store
        .extension("q2", || Ok(std::sync::Mutex::new(3u32)))
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(*c.lock().unwrap(), 3);
    assert!(store.extension::<u8>("q1", || Err(Error::Closed)).is_err());
}

#[test]
fn another_process_is_locked_out_until_close() {
    if let Ok(dir) = std::env::var("TTLSTORE_LOCK_CHILD") {
        // Exit 10 when refused with Locked, 0 when opened.
        match Store::open(&dir) {
            Err(Error::Locked { .. }) => std::process::exit(10),
            Ok(_) => std::process::exit(0),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let run_child = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "another_process_is_locked_out_until_close",
                "--test-threads=1",
            ])
            .env("TTLSTORE_LOCK_CHILD", dir.path())
            .output()
            .unwrap()
            .status
            .code()
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_child(), Some(10));
    store.close().unwrap();
    assert_eq!(run_child(), Some(0));
    // And a close followed at once by a reopen in this process works.
    for _ in 0..20 {
        let s = Store::open(dir.path()).unwrap();
        s.close().unwrap();
    }
}

/// Keys (without values) come a page at a time: each page starts after the last key of the one
/// before, in order, without expired keys, keys of another prefix or of another namespace.
#[test]
fn keys_with_prefix_pages_after_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let key = |i: u32| format!("p/{i:02}").into_bytes();
    for i in 0..20 {
        if i % 4 == 1 {
            store
                .put_with_ttl(&key(i), b"v", Duration::from_secs(5))
                .unwrap();
        } else if i % 4 == 2 {
            store
                .put_with_ttl(&key(i), b"v", Duration::from_secs(60))
                .unwrap();
        } else {
            store.put(&key(i), b"v").unwrap();
        }
    }
    store.put(b"p", b"not under p/").unwrap();
    store.put(b"q/00", b"v").unwrap();
    store
        .namespace(ttlstore::Namespace::custom(16).unwrap())
        .put(b"p/05x", b"v")
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let want: Vec<(Vec<u8>, Option<u64>)> = (0..20)
        .filter(|i| i % 4 != 1)
        .map(|i| (key(i), (i % 4 == 2).then_some(1_700_000_000_000 + 60_000)))
        .collect();
    let mut got = store.keys_with_prefix(b"p/", 4);
    assert_eq!(got.len(), 4);
    loop {
        let last = got.last().unwrap().0.clone();
        let page = store.keys_with_prefix_after(b"p/", &last, 4);
        assert!(page.len() <= 4);
        if page.is_empty() {
            break;
        }
        got.extend(page);
    }
    assert_eq!(got, want);
    // `after` need not be a key, and may lie outside the prefix.
    assert_eq!(
        store.keys_with_prefix_after(b"p/", b"p/10x", 2),
        want[8..10]
    );
    assert_eq!(store.keys_with_prefix_after(b"p/", b"a", 1), want[..1]);
    assert!(store.keys_with_prefix_after(b"p/", b"p/9", 5).is_empty());
    // The namespace's own keys only.
    let ns = store.namespace(ttlstore::Namespace::custom(16).unwrap());
    assert_eq!(
        ns.keys_with_prefix_after(b"p/", b"p/05", 5),
        vec![(b"p/05x".to_vec(), None)]
    );
}
