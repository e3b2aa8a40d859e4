//! The TTL cache (issue 7), on a manual clock: single flight, jitter, negative caching, errors,
//! prefix invalidation, refresh-ahead, statistics and persistence across reopen.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use ttlstore::{
    Cache, CacheError, CacheOptions, Clock, Error, Lookup, ManualClock, Namespace, Options, Store,
    SyncPolicy,
};

const T0: u64 = 1_700_000_000_000;
const SEC: Duration = Duration::from_secs(1);
/// Upper bound of every wait for another thread: generous, never reached when things work.
const PATIENCE: Duration = Duration::from_secs(30);

fn opts(clock: &Arc<ManualClock>) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(64 << 10)
        .clock(clock.clone())
}

fn setup() -> (tempfile::TempDir, Arc<ManualClock>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    (dir, clock, store)
}

/// Waits (bounded) until `cond` holds; for conditions another thread makes true.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn hit(l: Lookup) -> Vec<u8> {
    match l {
        Lookup::Hit(v) => v.to_vec(),
        other => panic!("expected a hit, got {other:?}"),
    }
}

#[test]
fn get_insert_invalidate_and_ttl() {
    let (_d, clock, store) = setup();
    let cache = store.cache("c", CacheOptions::new(10 * SEC)).unwrap();
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
    cache.insert(b"k", b"v").unwrap();
    assert_eq!(hit(cache.get(b"k").unwrap()), b"v");
    assert_eq!(cache.expires_at(b"k").unwrap(), Some(T0 + 10_000));
    cache.insert_with_ttl(b"short", b"s", 2 * SEC).unwrap();
    assert_eq!(cache.expires_at(b"short").unwrap(), Some(T0 + 2_000));
    clock.advance(Duration::from_millis(1_999));
    assert_eq!(hit(cache.get(b"short").unwrap()), b"s");
    clock.advance(Duration::from_millis(1));
    assert_eq!(cache.get(b"short").unwrap(), Lookup::Miss);
    assert!(cache.invalidate(b"k").unwrap());
    assert!(!cache.invalidate(b"k").unwrap());
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
    // An empty value is a value, not an absent marker.
    cache.insert(b"empty", b"").unwrap();
    assert_eq!(hit(cache.get(b"empty").unwrap()), b"");
    // Cache entries live in their own namespace, not among the user's keys.
    assert_eq!(store.get(b"empty").unwrap(), None);
    assert_eq!(
        store
            .namespace(Namespace::CACHES)
            .keys_with_prefix(b"", 10)
            .len(),
        1
    );
}

#[test]
fn caches_with_overlapping_names_do_not_collide() {
    let (_d, _clock, store) = setup();
    let a = store.cache("a", CacheOptions::new(10 * SEC)).unwrap();
    let ab = store.cache("ab", CacheOptions::new(10 * SEC)).unwrap();
    a.insert(b"bx", b"from a").unwrap();
    ab.insert(b"x", b"from ab").unwrap();
    assert_eq!(hit(a.get(b"bx").unwrap()), b"from a");
    assert_eq!(hit(ab.get(b"x").unwrap()), b"from ab");
    assert_eq!(a.get(b"x").unwrap(), Lookup::Miss);
    assert_eq!(ab.get(b"bx").unwrap(), Lookup::Miss);
    assert_eq!(a.invalidate_prefix(b"").unwrap(), 1);
    assert_eq!(hit(ab.get(b"x").unwrap()), b"from ab");
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let (_d, _clock, store) = setup();
    let invalid = |r: ttlstore::Result<Cache>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(store.cache("", CacheOptions::new(SEC))));
    assert!(invalid(
        store.cache(&"n".repeat(256), CacheOptions::new(SEC))
    ));
    assert!(invalid(store.cache("c", CacheOptions::new(Duration::ZERO))));
    assert!(invalid(
        store.cache("c", CacheOptions::new(Duration::from_micros(999)))
    ));
    assert!(invalid(
        store.cache("c", CacheOptions::new(SEC).jitter(-0.1))
    ));
    assert!(invalid(
        store.cache("c", CacheOptions::new(SEC).jitter(1.5))
    ));
    assert!(invalid(
        store.cache("c", CacheOptions::new(SEC).jitter(f64::NAN))
    ));
    assert!(invalid(store.cache(
        "c",
        CacheOptions::new(SEC).negative_ttl(Duration::ZERO)
    )));
    assert!(invalid(
        store.cache("c", CacheOptions::new(SEC).refresh_ahead(SEC))
    ));
    assert!(invalid(store.cache(
        "c",
        CacheOptions::new(SEC).refresh_ahead(Duration::ZERO)
    )));
    assert!(
        store
            .cache(&"n".repeat(255), CacheOptions::new(SEC).jitter(1.0))
            .is_ok()
    );

    let cache = store.cache("c", CacheOptions::new(SEC)).unwrap();
    assert!(matches!(
        cache.insert(b"", b"v"),
        Err(Error::InvalidKey { len: 0 })
    ));
    assert!(matches!(cache.get(b""), Err(Error::InvalidKey { len: 0 })));
    let long = vec![b'k'; ttlstore::MAX_KEY_LEN];
    assert!(matches!(
        cache.insert(&long, b"v"),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        cache.invalidate_prefix(&long),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        cache.insert_with_ttl(b"k", b"v", Duration::ZERO),
        Err(Error::InvalidArgument { .. })
    ));
    let r = cache.get_or_insert_with(b"", || panic!("the loader must not run for a bad key"));
    assert!(matches!(r, Err(Error::InvalidKey { len: 0 })));
    // The longest key the cache accepts works.
    let max = vec![b'k'; ttlstore::MAX_KEY_LEN - 2];
    cache.insert(&max, b"v").unwrap();
    assert_eq!(hit(cache.get(&max).unwrap()), b"v");
    assert_eq!(
        store
            .namespace(Namespace::CACHES)
            .keys_with_prefix(b"", 10)
            .len(),
        1
    );
    assert_eq!(cache.stats().loads, 0);
}

#[test]
fn get_or_insert_with_loads_once_then_hits_until_expiry() {
    let (_d, clock, store) = setup();
    let cache = store.cache("c", CacheOptions::new(10 * SEC)).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let load = |runs: &Arc<AtomicUsize>, v: &'static [u8]| {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            Some(v.to_vec())
        }
    };
    assert_eq!(
        cache
            .get_or_insert_with(b"k", load(&runs, b"v1"))
            .unwrap()
            .unwrap(),
        b"v1"
    );
    assert_eq!(
        cache
            .get_or_insert_with(b"k", load(&runs, b"v2"))
            .unwrap()
            .unwrap(),
        b"v1"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(cache.expires_at(b"k").unwrap(), Some(T0 + 10_000));
    clock.advance(10 * SEC);
    assert_eq!(
        cache
            .get_or_insert_with(b"k", load(&runs, b"v3"))
            .unwrap()
            .unwrap(),
        b"v3"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let s = cache.stats();
    assert_eq!(
        (s.hits, s.misses, s.negative_hits, s.loads, s.load_errors),
        (1, 2, 0, 2, 0)
    );
    assert!(s.load_time > Duration::ZERO);
}

/// Many threads miss the same keys at once: the loader runs once per key, every thread gets
/// the loaded value, and the loader is still running when the last thread has missed (so the
/// others really waited for it rather than finding a cached value).
#[test]
fn single_flight_with_many_threads() {
    const THREADS: usize = 16;
    const KEYS: usize = 4;
    let (_d, clock, store) = setup();
    let cache = store.cache("c", CacheOptions::new(60 * SEC)).unwrap();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    for round in 0..2u8 {
        cache.reset_stats();
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (cache, runs, barrier) = (cache.clone(), runs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let k = t % KEYS;
                    let key = format!("key{k}");
                    barrier.wait();
                    let c2 = cache.clone();
                    let got = cache
                        .get_or_insert_with(key.as_bytes(), move || {
                            runs[k].fetch_add(1, Ordering::SeqCst);
                            // Hold the load until every thread has looked the key up and missed.
                            wait_until("all threads to miss", || {
                                c2.stats().misses == THREADS as u64
                            });
                            Some(format!("value{k}-{round}").into_bytes())
                        })
                        .unwrap()
                        .unwrap();
                    assert_eq!(got, format!("value{k}-{round}").into_bytes());
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = cache.stats();
        assert_eq!(s.misses, THREADS as u64);
        assert_eq!(s.loads, KEYS as u64, "one load per key per miss");
        assert_eq!(s.hits, 0);
        for r in runs.iter() {
            assert_eq!(r.load(Ordering::SeqCst), usize::from(round) + 1);
        }
        assert_eq!(cache.loads_in_flight(), 0);
        // The next round misses again only once the entries expire.
        clock.advance(60 * SEC);
    }
}

#[test]
fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    const THREADS: usize = 8;
    let (_d, _clock, store) = setup();
    let cache = store
        .cache("c", CacheOptions::new(60 * SEC).negative_ttl(60 * SEC))
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let errors: Vec<Arc<String>> = (0..THREADS)
        .map(|_| {
            let (cache, runs, barrier) = (cache.clone(), runs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let c2 = cache.clone();
                let r = cache.try_get_or_insert_with(b"k", move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    wait_until("all threads to miss", || {
                        c2.stats().misses == THREADS as u64
                    });
                    Err::<Option<Vec<u8>>, String>("backend down".to_string())
                });
                match r {
                    Err(CacheError::Loader(e)) => e,
                    other => panic!("expected the loader's error, got {other:?}"),
                }
            })
        })
        // Spawn them all before joining any: they meet at the barrier.
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Every waiter got the very same error.
    assert!(
        errors
            .iter()
            .all(|e| Arc::ptr_eq(e, &errors[0]) && **e == "backend down")
    );
    let s = cache.stats();
    assert_eq!((s.loads, s.load_errors, s.misses), (1, 1, THREADS as u64));
    // Nothing was cached, not even a negative entry: the next lookup loads again.
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
    let v = cache
        .try_get_or_insert_with(b"k", || Ok::<_, String>(Some(b"ok".to_vec())))
        .unwrap();
    assert_eq!(v.unwrap(), b"ok");
    assert_eq!(cache.stats().loads, 2);
}

#[test]
fn a_panicking_loader_releases_its_waiters() {
    let (_d, _clock, store) = setup();
    let cache = store.cache("c", CacheOptions::new(60 * SEC)).unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let leader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_insert_with(b"k", move || {
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                panic!("loader blew up");
            })
        })
    };
    entered_rx.recv_timeout(PATIENCE).unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let r = cache
                        .try_get_or_insert_with(b"k", || Ok::<_, String>(Some(b"never".to_vec())));
                    matches!(r, Err(CacheError::LoaderPanicked))
                } else {
                    let r = cache.get_or_insert_with(b"k", || Some(b"never".to_vec()));
                    matches!(r, Err(Error::Rejected { .. }))
                }
            })
        })
        .collect();
    wait_until("the waiters to miss", || cache.stats().misses == 5);
    go_tx.send(()).unwrap();
    assert!(
        leader.join().is_err(),
        "the leader's panic propagates to its caller"
    );
    for w in waiters {
        assert!(w.join().unwrap(), "a waiter got the wrong result");
    }
    let s = cache.stats();
    assert_eq!((s.loads, s.load_errors), (1, 1));
    assert_eq!(cache.loads_in_flight(), 0);
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
    assert_eq!(
        cache
            .get_or_insert_with(b"k", || Some(b"fine".to_vec()))
            .unwrap()
            .unwrap(),
        b"fine"
    );
}

#[test]
fn negative_entries_expire_after_their_own_ttl() {
    let (_d, clock, store) = setup();
    let cache = store
        .cache("c", CacheOptions::new(60 * SEC).negative_ttl(5 * SEC))
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let absent = |runs: &Arc<AtomicUsize>| {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            None
        }
    };
    assert_eq!(
        cache.get_or_insert_with(b"nope", absent(&runs)).unwrap(),
        None
    );
    assert_eq!(cache.expires_at(b"nope").unwrap(), Some(T0 + 5_000));
    assert_eq!(cache.get(b"nope").unwrap(), Lookup::Absent);
    clock.advance(Duration::from_millis(4_999));
    assert_eq!(
        cache.get_or_insert_with(b"nope", absent(&runs)).unwrap(),
        None
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "remembered within the negative TTL"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(cache.get(b"nope").unwrap(), Lookup::Miss);
    assert_eq!(
        cache.get_or_insert_with(b"nope", absent(&runs)).unwrap(),
        None
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let s = cache.stats();
    assert_eq!((s.negative_hits, s.misses, s.hits, s.loads), (2, 3, 0, 2));
    assert!((s.hit_rate() - 0.4).abs() < 1e-9);

    // Without a negative TTL an absent answer is not remembered.
    let plain = store.cache("plain", CacheOptions::new(60 * SEC)).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        assert_eq!(
            plain.get_or_insert_with(b"nope", absent(&runs)).unwrap(),
            None
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(plain.get(b"nope").unwrap(), Lookup::Miss);
}

#[test]
fn jitter_spreads_expiries_within_bounds() {
    let (_d, _clock, store) = setup();
    let ttl_ms = 100_000u64;
    let cache = store
        .cache(
            "j",
            CacheOptions::new(Duration::from_millis(ttl_ms)).jitter(0.2),
        )
        .unwrap();
    let mut expiries = Vec::new();
    for i in 0..2_000u32 {
        let key = format!("k{i}");
        if i % 2 == 0 {
            cache.insert(key.as_bytes(), b"v").unwrap();
        } else {
            cache
                .get_or_insert_with(key.as_bytes(), || Some(b"v".to_vec()))
                .unwrap();
        }
        expiries.push(cache.expires_at(key.as_bytes()).unwrap().unwrap());
    }
    let lo = T0 + ttl_ms - ttl_ms / 5;
    let hi = T0 + ttl_ms;
    assert!(
        expiries.iter().all(|&e| (lo..=hi).contains(&e)),
        "an expiry is outside [ttl*(1-jitter), ttl]"
    );
    let min = *expiries.iter().min().unwrap();
    let max = *expiries.iter().max().unwrap();
    // Spread over (nearly) the whole window, not clustered.
    assert!(min < lo + 1_000 && max > hi - 1_000, "min {min} max {max}");
    let distinct: HashSet<_> = expiries.iter().collect();
    assert!(
        distinct.len() > 1_500,
        "only {} distinct expiries",
        distinct.len()
    );
    let below_mid = expiries.iter().filter(|&&e| e < lo + (hi - lo) / 2).count();
    assert!(
        (800..=1_200).contains(&below_mid),
        "{below_mid} of 2000 below the middle"
    );

    // Explicit TTLs are exact.
    cache
        .insert_with_ttl(b"exact", b"v", Duration::from_millis(ttl_ms))
        .unwrap();
    assert_eq!(cache.expires_at(b"exact").unwrap(), Some(T0 + ttl_ms));

    // A seed makes the jitter reproducible (on a manual clock).
    let seq = |name: &str| {
        let c = store
            .cache(
                name,
                CacheOptions::new(Duration::from_millis(ttl_ms))
                    .jitter(0.5)
                    .jitter_seed(7),
            )
            .unwrap();
        (0..50)
            .map(|i: u32| {
                c.insert(&i.to_be_bytes(), b"v").unwrap();
                c.expires_at(&i.to_be_bytes()).unwrap().unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(seq("s1"), seq("s2"));
}

#[test]
fn negative_entries_are_jittered_too() {
    let (_d, _clock, store) = setup();
    let cache = store
        .cache(
            "n",
            CacheOptions::new(60 * SEC)
                .negative_ttl(10 * SEC)
                .jitter(0.5),
        )
        .unwrap();
    let mut expiries = HashSet::new();
    for i in 0..200u32 {
        cache.get_or_insert_with(&i.to_be_bytes(), || None).unwrap();
        let e = cache.expires_at(&i.to_be_bytes()).unwrap().unwrap();
        assert!((T0 + 5_000..=T0 + 10_000).contains(&e));
        expiries.insert(e);
    }
    assert!(expiries.len() > 100);
}

#[test]
fn invalidate_prefix_removes_exactly_the_prefix() {
    let (_d, _clock, store) = setup();
    let cache = store
        .cache("c", CacheOptions::new(60 * SEC).negative_ttl(60 * SEC))
        .unwrap();
    let other = store.cache("d", CacheOptions::new(60 * SEC)).unwrap();
    for k in [
        "user:1", "user:10", "user:2", "user;", "user", "users:1", "usr:1", "a", "z",
    ] {
        cache.insert(k.as_bytes(), b"v").unwrap();
        other.insert(k.as_bytes(), b"v").unwrap();
    }
    cache.get_or_insert_with(b"user:404", || None).unwrap();
    assert_eq!(cache.get(b"user:404").unwrap(), Lookup::Absent);
    // Many keys under the prefix: more than one chunk of the scan.
    for i in 0..3_000u32 {
        cache
            .insert(format!("user:bulk{i:05}").as_bytes(), b"v")
            .unwrap();
    }
    store
        .put(b"user:1", b"a user key, not a cache entry")
        .unwrap();
    assert_eq!(cache.invalidate_prefix(b"user:").unwrap(), 3_004);
    for k in [
        "user:1",
        "user:10",
        "user:2",
        "user:404",
        "user:bulk00000",
        "user:bulk02999",
    ] {
        assert_eq!(cache.get(k.as_bytes()).unwrap(), Lookup::Miss, "{k}");
    }
    for k in ["user;", "user", "users:1", "usr:1", "a", "z"] {
        assert_eq!(hit(cache.get(k.as_bytes()).unwrap()), b"v", "{k}");
    }
    for k in [
        "user:1", "user:10", "user:2", "user;", "user", "users:1", "usr:1", "a", "z",
    ] {
        assert_eq!(
            hit(other.get(k.as_bytes()).unwrap()),
            b"v",
            "{k} in the other cache"
        );
    }
    assert_eq!(
        store.get(b"user:1").unwrap().unwrap(),
        b"a user key, not a cache entry"
    );
    assert_eq!(cache.invalidate_prefix(b"user:").unwrap(), 0);
    assert_eq!(cache.invalidate_prefix(b"").unwrap(), 6);
    assert_eq!(other.invalidate_prefix(b"").unwrap(), 9);
    assert!(
        store
            .namespace(Namespace::CACHES)
            .keys_with_prefix(b"", 10)
            .is_empty()
    );
}

/// A write to a key while its load runs makes the load stale: the caller still gets the loaded
/// value, but it is not written over the invalidation or the newer insert.
#[test]
fn invalidation_during_a_load_is_not_undone_by_it() {
    let (_d, _clock, store) = setup();
    let cache = store.cache("c", CacheOptions::new(60 * SEC)).unwrap();
    for (key, action) in [(&b"inv"[..], 0), (&b"pre"[..], 1), (&b"ins"[..], 2)] {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let loader = {
            let cache = cache.clone();
            let key = key.to_vec();
            std::thread::spawn(move || {
                cache.get_or_insert_with(&key, move || {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Some(b"stale".to_vec())
                })
            })
        };
        entered_rx.recv_timeout(PATIENCE).unwrap();
        match action {
            0 => assert!(!cache.invalidate(key).unwrap()),
            1 => assert_eq!(cache.invalidate_prefix(&key[..2]).unwrap(), 0),
            _ => cache.insert(key, b"fresh").unwrap(),
        }
        go_tx.send(()).unwrap();
        assert_eq!(loader.join().unwrap().unwrap().unwrap(), b"stale");
        if action == 2 {
            assert_eq!(hit(cache.get(key).unwrap()), b"fresh");
        } else {
            assert_eq!(cache.get(key).unwrap(), Lookup::Miss);
        }
    }
}

#[test]
fn refresh_ahead_serves_the_old_value_while_reloading() {
    let (_d, clock, store) = setup();
    let cache = store
        .cache("r", CacheOptions::new(10 * SEC).refresh_ahead(2 * SEC))
        .unwrap();
    assert_eq!(
        cache
            .get_or_insert_with(b"k", || Some(b"v1".to_vec()))
            .unwrap()
            .unwrap(),
        b"v1"
    );
    // Outside the window: a plain hit, no reload.
    clock.advance(Duration::from_millis(7_999));
    let not_run = Arc::new(AtomicUsize::new(0));
    let nr = not_run.clone();
    let never = move || {
        nr.fetch_add(1, Ordering::SeqCst);
        Some(b"never".to_vec())
    };
    assert_eq!(
        cache
            .get_or_insert_with(b"k", never.clone())
            .unwrap()
            .unwrap(),
        b"v1"
    );
    assert_eq!(cache.loads_in_flight(), 0);
    // Inside the window: the old value now, one reload in the background.
    clock.advance(Duration::from_millis(1));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel();
    let go_rx = Mutex::new(go_rx);
    let got = cache
        .get_or_insert_with(b"k", move || {
            entered_tx.send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
            Some(b"v2".to_vec())
        })
        .unwrap()
        .unwrap();
    assert_eq!(got, b"v1");
    entered_rx.recv_timeout(PATIENCE).unwrap();
    assert_eq!(cache.loads_in_flight(), 1);
    // While it runs, more hits serve the old value and start no second reload.
    for _ in 0..5 {
        assert_eq!(
            cache
                .get_or_insert_with(b"k", never.clone())
                .unwrap()
                .unwrap(),
            b"v1"
        );
    }
    assert_eq!(hit(cache.get(b"k").unwrap()), b"v1");
    assert!(
        !cache.wait_for_loads(Duration::from_millis(1)),
        "the reload is held by the test"
    );
    let reload_at = clock.now_ms();
    go_tx.send(()).unwrap();
    assert!(cache.wait_for_loads(PATIENCE));
    assert_eq!(hit(cache.get(b"k").unwrap()), b"v2");
    // Written with a fresh TTL.
    assert_eq!(cache.expires_at(b"k").unwrap(), Some(reload_at + 10_000));
    assert_eq!(not_run.load(Ordering::SeqCst), 0);
    let s = cache.stats();
    assert_eq!((s.loads, s.misses, s.load_errors), (2, 1, 0));

    // A failing reload keeps the old value and counts an error.
    clock.advance(Duration::from_millis(8_500));
    let v = cache
        .try_get_or_insert_with(b"k", || Err::<Option<Vec<u8>>, _>("down"))
        .unwrap()
        .unwrap();
    assert_eq!(v, b"v2");
    assert!(cache.wait_for_loads(PATIENCE));
    assert_eq!(hit(cache.get(b"k").unwrap()), b"v2");
    assert_eq!(cache.stats().load_errors, 1);

    // A panicking reload does not wedge the key.
    let v = cache
        .get_or_insert_with(b"k", || panic!("reload panicked (expected by the test)"))
        .unwrap()
        .unwrap();
    assert_eq!(v, b"v2");
    assert!(cache.wait_for_loads(PATIENCE));
    assert_eq!(cache.stats().load_errors, 2);
    // A reload answering "absent" (no negative TTL) removes the entry.
    cache.get_or_insert_with(b"k", || None).unwrap();
    assert!(cache.wait_for_loads(PATIENCE));
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
}

/// When the entry expires while its reload runs, a miss waits for that reload instead of
/// starting another.
#[test]
fn a_miss_during_a_refresh_waits_for_it() {
    let (_d, clock, store) = setup();
    let cache = store
        .cache("r", CacheOptions::new(10 * SEC).refresh_ahead(2 * SEC))
        .unwrap();
    cache.insert(b"k", b"v1").unwrap();
    clock.advance(9 * SEC);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let old = cache
        .get_or_insert_with(b"k", move || {
            go_rx.lock().unwrap().recv().unwrap();
            Some(b"v2".to_vec())
        })
        .unwrap()
        .unwrap();
    assert_eq!(old, b"v1");
    clock.advance(SEC);
    assert_eq!(cache.get(b"k").unwrap(), Lookup::Miss);
    let waiter = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.get_or_insert_with(b"k", || Some(b"second load".to_vec())))
    };
    wait_until("the waiter to miss", || cache.stats().misses == 2);
    go_tx.send(()).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap().unwrap(), b"v2");
    assert!(cache.wait_for_loads(PATIENCE));
    assert_eq!(cache.stats().loads, 1);
}

#[test]
fn entries_survive_reopen_with_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let options = CacheOptions::new(100 * SEC)
        .jitter(0.3)
        .negative_ttl(20 * SEC);
    let mut expiries = Vec::new();
    {
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        let cache = store.cache("persist", options.clone()).unwrap();
        for i in 0..100u32 {
            cache
                .get_or_insert_with(format!("k{i}").as_bytes(), move || {
                    Some(format!("v{i}").into_bytes())
                })
                .unwrap();
            expiries.push(
                cache
                    .expires_at(format!("k{i}").as_bytes())
                    .unwrap()
                    .unwrap(),
            );
        }
        cache.get_or_insert_with(b"missing", || None).unwrap();
        cache.insert_with_ttl(b"short", b"s", 5 * SEC).unwrap();
        assert!(cache.stats().loads > 0);
    }
    clock.advance(3 * SEC);
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let cache = store.cache("persist", options).unwrap();
    assert_eq!(
        cache.stats(),
        ttlstore::CacheStats::default(),
        "statistics start over"
    );
    for i in 0..100u32 {
        let key = format!("k{i}");
        assert_eq!(
            hit(cache.get(key.as_bytes()).unwrap()),
            format!("v{i}").into_bytes()
        );
        assert_eq!(
            cache.expires_at(key.as_bytes()).unwrap(),
            Some(expiries[i as usize])
        );
        // Served from disk: the loader does not run.
        cache
            .get_or_insert_with(key.as_bytes(), || panic!("must not load"))
            .unwrap();
    }
    assert_eq!(cache.get(b"missing").unwrap(), Lookup::Absent);
    assert!(cache.expires_at(b"missing").unwrap().unwrap() <= T0 + 20_000);
    assert_eq!(cache.expires_at(b"short").unwrap(), Some(T0 + 5_000));
    clock.advance(2 * SEC);
    assert_eq!(cache.get(b"short").unwrap(), Lookup::Miss);
    clock.set(*expiries.iter().max().unwrap());
    for i in 0..100u32 {
        assert_eq!(cache.get(format!("k{i}").as_bytes()).unwrap(), Lookup::Miss);
    }
    assert_eq!(cache.get(b"missing").unwrap(), Lookup::Miss);
}

#[test]
fn stats_count_and_reset() {
    let (_d, _clock, store) = setup();
    let cache = store
        .cache("s", CacheOptions::new(60 * SEC).negative_ttl(60 * SEC))
        .unwrap();
    assert_eq!(cache.stats().hit_rate(), 0.0);
    cache
        .get_or_insert_with(b"a", || Some(b"1".to_vec()))
        .unwrap();
    cache.get_or_insert_with(b"b", || None).unwrap();
    for _ in 0..3 {
        cache.get_or_insert_with(b"a", || unreachable!()).unwrap();
    }
    cache.get(b"b").unwrap();
    let _ = cache.try_get_or_insert_with(b"c", || Err::<Option<Vec<u8>>, _>(()));
    // A second handle of the same cache shares the counters.
    let again = store.cache("s", CacheOptions::new(SEC)).unwrap();
    let s = again.stats();
    assert_eq!(
        (s.hits, s.negative_hits, s.misses, s.loads, s.load_errors),
        (3, 1, 3, 3, 1)
    );
    assert_eq!(s.lookups(), 7);
    assert!((s.hit_rate() - 4.0 / 7.0).abs() < 1e-9);
    assert!(s.mean_load_time() <= s.load_time);
    again.reset_stats();
    assert_eq!(cache.stats(), ttlstore::CacheStats::default());
    assert_eq!(hit(cache.get(b"a").unwrap()), b"1");
    assert_eq!(cache.stats().hits, 1);
    // Another store has its own counters.
    let (_d2, _c2, store2) = setup();
    assert_eq!(
        store2.cache("s", CacheOptions::new(SEC)).unwrap().stats(),
        ttlstore::CacheStats::default()
    );
}

#[test]
fn cache_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Cache>();
    check::<ttlstore::CachedValue>();
}
