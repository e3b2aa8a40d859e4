//! Task queues: every rule of issue 6, on a manual clock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ttlstore::{
    Error, ManualClock, Options, PushOptions, QueueOptions, QueueStats, Store, SyncPolicy, TaskId,
    TaskState,
};

const T0: u64 = 1_700_000_000_000;
const LONG: Duration = Duration::from_secs(60);

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

fn reopen(dir: &tempfile::TempDir, clock: &Arc<ManualClock>, store: Store) -> Store {
    store.close().unwrap();
    Store::open_with(dir.path(), opts(clock)).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn is_rejected(e: &Error) -> bool {
    matches!(e, Error::Rejected { .. })
}

/// Waits (bounded) for a condition another thread makes true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn push_pop_ack_in_priority_then_age_order() {
    let (_d, clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    let a = q.push(b"a").unwrap();
    clock.advance(Duration::from_millis(1));
    let b = q.push_with(b"b", PushOptions::new().priority(5)).unwrap();
    let c = q.push(b"c").unwrap();
    let d = q.push_with(b"d", PushOptions::new().priority(5)).unwrap();
    let e = q.push_with(b"e", PushOptions::new().priority(-1)).unwrap();
    assert!(a < c, "generated ids sort by creation: {a} {c}");
    assert_eq!(a.as_str().len(), 32);
    assert_eq!(q.len().unwrap(), 5);
    let mut got = Vec::new();
    while let Some(t) = q.pop(Duration::ZERO).unwrap() {
        assert_eq!(t.attempts, 1);
        got.push((t.id.clone(), t.payload.clone()));
        q.ack(&t).unwrap();
    }
    let ids: Vec<TaskId> = got.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(ids, vec![b, d, a, c, e]);
    assert_eq!(got[0].1, b"b");
    assert!(q.is_empty().unwrap());
    assert_eq!(q.stats().unwrap(), QueueStats::default());
}

#[test]
fn custom_ids_must_be_unique_while_queued() {
    let (_d, _clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    let id = q
        .push_with(b"first", PushOptions::new().id("order-7"))
        .unwrap();
    assert_eq!(id.as_str(), "order-7");
    let err = q
        .push_with(b"second", PushOptions::new().id("order-7"))
        .unwrap_err();
    assert!(is_rejected(&err), "{err}");
    assert!(err.to_string().contains("already queued"), "{err}");
    assert_eq!(q.len().unwrap(), 1);
    // Leased or dead, it is still queued.
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(t.payload, b"first");
    assert!(is_rejected(
        &q.push_with(b"x", PushOptions::new().id("order-7"))
            .unwrap_err()
    ));
    q.ack(&t).unwrap();
    // Acknowledged: the id is free again.
    q.push_with(b"third", PushOptions::new().id("order-7"))
        .unwrap();
    assert_eq!(q.pop(Duration::ZERO).unwrap().unwrap().payload, b"third");
    // Bad ids and options are typed errors.
    for bad in ["", "a\0b"] {
        assert!(matches!(
            q.push_with(b"x", PushOptions::new().id(bad)),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        q.push_with(b"x", PushOptions::new().id("y".repeat(201))),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        q.push_with(b"x", PushOptions::new().ttl(Duration::ZERO)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        q.push_with(b"x", PushOptions::new().max_attempts(0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(q.stats().unwrap().in_flight, 1);
    assert_eq!(q.list().unwrap().len(), 1);
    assert!(matches!(
        store.queue(""),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        store.queue_with("q", QueueOptions::default().max_attempts(0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        store.queue_with(
            "q",
            QueueOptions::default().visibility_timeout(Duration::ZERO)
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(store.queues().unwrap(), vec!["jobs".to_string()]);
}

#[test]
fn delayed_tasks_are_invisible_until_due() {
    let (_d, clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    let late = q
        .push_with(b"late", PushOptions::new().delay(secs(10)).priority(9))
        .unwrap();
    let now = q.push(b"now").unwrap();
    assert_eq!((q.len().unwrap(), q.delayed().unwrap()), (1, 1));
    assert_eq!(
        q.task(&late).unwrap().unwrap().state,
        TaskState::Delayed { until: T0 + 10_000 }
    );
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(t.id, now);
    assert!(q.pop(Duration::ZERO).unwrap().is_none());
    clock.advance(secs(9));
    assert!(q.pop(Duration::ZERO).unwrap().is_none());
    clock.advance(secs(1));
    assert_eq!(q.delayed().unwrap(), 0);
    assert_eq!(q.pop(Duration::ZERO).unwrap().unwrap().id, late);
}

#[test]
fn ttl_drops_tasks_unprocessed() {
    let (_d, clock, store) = setup();
    let q = store
        .queue_with("jobs", QueueOptions::default().default_ttl(Some(secs(100))))
        .unwrap();
    let short = q
        .push_with(b"short", PushOptions::new().ttl(secs(5)))
        .unwrap();
    let default = q.push(b"default").unwrap();
    assert_eq!(
        q.task(&short).unwrap().unwrap().expires_at,
        Some(T0 + 5_000)
    );
    assert_eq!(
        q.task(&default).unwrap().unwrap().expires_at,
        Some(T0 + 100_000)
    );
    clock.advance(secs(5));
    assert_eq!(q.task(&short).unwrap(), None);
    assert_eq!(q.len().unwrap(), 1);
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(t.id, default);
    assert_eq!(t.expires_at, Some(T0 + 100_000));
    // A task whose TTL runs out while leased is dropped too; its ack is refused.
    clock.advance(secs(95));
    let err = q.ack(&t).unwrap_err();
    assert!(is_rejected(&err), "{err}");
    assert!(q.is_empty().unwrap());
    // The id of an expired task may be pushed again.
    q.push_with(b"again", PushOptions::new().id(short.as_str()))
        .unwrap();
    assert_eq!(q.len().unwrap(), 1);
}

#[test]
fn lease_expiry_returns_the_task_and_stale_tokens_change_nothing() {
    let (_d, clock, store) = setup();
    let q = store
        .queue_with("jobs", QueueOptions::default().visibility_timeout(secs(30)))
        .unwrap();
    let id = q.push(b"work").unwrap();
    let first = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(first.lease_deadline, T0 + 30_000);
    assert_eq!((q.len().unwrap(), q.in_flight().unwrap()), (0, 1));
    assert!(q.pop(Duration::ZERO).unwrap().is_none());
    clock.advance(secs(30));
    // Lapsed, not yet taken: the token is already refused.
    assert!(is_rejected(&q.ack(&first).unwrap_err()));
    assert_eq!(q.len().unwrap(), 1);
    let second = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(second.id, id);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.token(), first.token());
    // Every use of the stale lease fails and changes nothing.
    let mut stale = first.clone();
    for err in [
        q.ack(&first).unwrap_err(),
        q.nack(&first, Duration::ZERO).unwrap_err(),
        q.extend_lease(&mut stale, secs(100)).unwrap_err(),
    ] {
        assert!(is_rejected(&err), "{err}");
        assert!(err.to_string().contains("stale"), "{err}");
    }
    assert_eq!(stale.lease_deadline, first.lease_deadline);
    assert_eq!(
        q.task(&id).unwrap().unwrap().state,
        TaskState::Leased { until: T0 + 60_000 }
    );
    assert_eq!(q.in_flight().unwrap(), 1);
    q.ack(&second).unwrap();
    assert_eq!(q.task(&id).unwrap(), None);
    // Acked: the old lease is refused with a clear reason.
    let err = q.ack(&second).unwrap_err();
    assert!(err.to_string().contains("no longer in the queue"), "{err}");
}

#[test]
fn extend_lease_is_a_heartbeat() {
    let (_d, clock, store) = setup();
    let q = store
        .queue_with("jobs", QueueOptions::default().visibility_timeout(secs(10)))
        .unwrap();
    q.push(b"w").unwrap();
    let mut t = q.pop(Duration::ZERO).unwrap().unwrap();
    clock.advance(secs(8));
    assert_eq!(q.extend_lease(&mut t, secs(10)).unwrap(), T0 + 18_000);
    assert_eq!(t.lease_deadline, T0 + 18_000);
    assert!(matches!(
        q.extend_lease(&mut t, Duration::ZERO),
        Err(Error::InvalidArgument { .. })
    ));
    clock.advance(secs(9));
    assert!(
        q.pop(Duration::ZERO).unwrap().is_none(),
        "the extended lease still holds"
    );
    q.ack(&t).unwrap();
    assert!(q.is_empty().unwrap());
}

#[test]
fn nack_gives_the_task_back_now_or_later() {
    let (_d, clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    let id = q.push(b"w").unwrap();
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    q.nack(&t, Duration::ZERO).unwrap();
    assert_eq!(q.len().unwrap(), 1);
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(t.attempts, 2);
    q.nack(&t, secs(7)).unwrap();
    assert_eq!(
        q.task(&id).unwrap().unwrap().state,
        TaskState::Delayed { until: T0 + 7_000 }
    );
    assert!(
        is_rejected(&q.ack(&t).unwrap_err()),
        "a nacked lease is over"
    );
    assert!(q.pop(Duration::ZERO).unwrap().is_none());
    clock.advance(secs(7));
    assert_eq!(q.pop(Duration::ZERO).unwrap().unwrap().attempts, 3);
}

#[test]
fn out_of_attempts_goes_to_the_dead_letters() {
    let (_d, clock, store) = setup();
    let q = store
        .queue_with(
            "jobs",
            QueueOptions::default()
                .max_attempts(2)
                .visibility_timeout(secs(5)),
        )
        .unwrap();
    let by_nack = q.push(b"nacked").unwrap();
    let by_lease = q.push(b"lapsed").unwrap();
    let one_shot = q
        .push_with(b"once", PushOptions::new().max_attempts(1))
        .unwrap();
    for _ in 0..2 {
        let t = q.pop(Duration::ZERO).unwrap().unwrap();
        assert_eq!(t.id, by_nack);
        q.nack(&t, Duration::ZERO).unwrap();
    }
    assert_eq!(q.task(&by_nack).unwrap().unwrap().state, TaskState::Dead);
    for _ in 0..2 {
        let t = q.pop(Duration::ZERO).unwrap().unwrap();
        assert_eq!(t.id, by_lease);
        clock.advance(secs(5));
    }
    assert_eq!(q.task(&by_lease).unwrap().unwrap().state, TaskState::Dead);
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(t.id, one_shot);
    clock.advance(secs(5));
    assert!(q.pop(Duration::ZERO).unwrap().is_none());
    assert_eq!(
        q.stats().unwrap(),
        QueueStats {
            ready: 0,
            in_flight: 0,
            delayed: 0,
            dead: 3
        }
    );
    assert!(q.is_empty().unwrap());
    let dead = q.dead_letters().unwrap();
    let ids: Vec<_> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        ids,
        vec![by_nack.clone(), by_lease.clone(), one_shot.clone()]
    );
    assert_eq!(dead[1].payload, b"lapsed");
    assert_eq!(dead[1].attempts, 2);

    q.requeue_dead(&by_lease).unwrap();
    assert!(
        is_rejected(&q.requeue_dead(&by_lease).unwrap_err()),
        "no longer dead"
    );
    assert!(is_rejected(
        &q.requeue_dead(&TaskId::new("nope").unwrap()).unwrap_err()
    ));
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!((t.id.clone(), t.attempts), (by_lease, 1));
    q.ack(&t).unwrap();
    assert_eq!(q.purge_dead().unwrap(), 2);
    assert!(q.dead_letters().unwrap().is_empty());
    assert_eq!(q.task(&by_nack).unwrap(), None);
    assert!(q.list().unwrap().is_empty());
}

#[test]
fn restart_keeps_states_deadlines_and_leases() {
    let (dir, clock, store) = setup();
    let q = store
        .queue_with(
            "jobs",
            QueueOptions::default()
                .visibility_timeout(secs(30))
                .max_attempts(3),
        )
        .unwrap();
    let leased = q
        .push_with(b"leased", PushOptions::new().priority(3))
        .unwrap();
    let leased2 = q
        .push_with(b"leased2", PushOptions::new().priority(2))
        .unwrap();
    let acked = q
        .push_with(b"acked", PushOptions::new().priority(1))
        .unwrap();
    let ready = q.push(b"ready").unwrap();
    let delayed = q
        .push_with(b"delayed", PushOptions::new().delay(secs(20)))
        .unwrap();
    let ttl = q
        .push_with(b"ttl", PushOptions::new().ttl(secs(40)).priority(-5))
        .unwrap();
    let t_leased = q.pop(Duration::ZERO).unwrap().unwrap();
    let t_leased2 = q.pop(Duration::ZERO).unwrap().unwrap();
    let t_acked = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(
        (
            t_leased.id.clone(),
            t_leased2.id.clone(),
            t_acked.id.clone()
        ),
        (leased.clone(), leased2, acked.clone())
    );
    q.ack(&t_acked).unwrap();
    drop(q);
    clock.advance(secs(10));
    let store = reopen(&dir, &clock, store);
    let q = store.queue("jobs").unwrap();
    assert_eq!(q.options().visibility_timeout, secs(30), "options are kept");
    assert_eq!(q.task(&acked).unwrap(), None, "acked never comes back");
    assert_eq!(
        q.task(&leased).unwrap().unwrap().state,
        TaskState::Leased { until: T0 + 30_000 }
    );
    assert_eq!(
        q.task(&delayed).unwrap().unwrap().state,
        TaskState::Delayed { until: T0 + 20_000 }
    );
    assert_eq!(q.task(&ttl).unwrap().unwrap().expires_at, Some(T0 + 40_000));
    assert_eq!(
        q.stats().unwrap(),
        QueueStats {
            ready: 2,
            in_flight: 2,
            delayed: 1,
            dead: 0
        }
    );
    // The lease from before the restart is still current.
    q.extend_lease(&mut t_leased2.clone(), secs(25)).unwrap();
    q.ack(&t_leased2).unwrap();
    assert_eq!(q.pop(Duration::ZERO).unwrap().unwrap().id, ready);
    clock.advance(secs(10)); // T0+20s: the delay ended
    drop(q);
    let store = reopen(&dir, &clock, store);
    let q = store.queue("jobs").unwrap();
    assert_eq!(q.pop(Duration::ZERO).unwrap().unwrap().id, delayed);
    clock.advance(secs(10)); // T0+30s: the lease lapsed
    drop(q);
    let store = reopen(&dir, &clock, store);
    let q = store.queue("jobs").unwrap();
    let again = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!((again.id.clone(), again.attempts), (leased.clone(), 2));
    assert!(is_rejected(&q.ack(&t_leased).unwrap_err()));
    q.ack(&again).unwrap();
    assert_eq!(q.task(&ttl).unwrap().unwrap().state, TaskState::Ready);
    clock.advance(secs(10)); // T0+40s: the TTL ran out
    drop(q);
    let store = reopen(&dir, &clock, store);
    let q = store.queue("jobs").unwrap();
    assert_eq!(q.task(&ttl).unwrap(), None);
    // `ready`'s lease (taken at T0+10s) lapsed; `delayed`'s (taken at T0+20s) holds.
    assert_eq!(
        q.stats().unwrap(),
        QueueStats {
            ready: 1,
            in_flight: 1,
            delayed: 0,
            dead: 0
        }
    );
    assert_eq!(q.task(&ready).unwrap().unwrap().state, TaskState::Ready);
    assert_eq!(
        q.task(&delayed).unwrap().unwrap().state,
        TaskState::Leased { until: T0 + 50_000 }
    );
    // Ids and tokens keep increasing across restarts.
    let newer = q.push(b"new").unwrap();
    assert!(newer > ttl);
}

#[test]
fn handles_share_one_queue_and_namespaces_do_not_collide() {
    let (_d, _clock, store) = setup();
    let q1 = store.queue("jobs").unwrap();
    let q2 = store.clone().queue("jobs").unwrap();
    let other = store.queue("other").unwrap();
    store.put(b"s/jobs\0x", b"user").unwrap();
    store.put(b"c/jobs", b"user").unwrap();
    q1.push_with(b"p", PushOptions::new().id("x")).unwrap();
    assert!(is_rejected(
        &q2.push_with(b"p", PushOptions::new().id("x")).unwrap_err()
    ));
    other.push_with(b"p", PushOptions::new().id("x")).unwrap();
    let t = q2.pop(Duration::ZERO).unwrap().unwrap();
    q1.ack(&t).unwrap();
    assert!(q2.is_empty().unwrap());
    assert_eq!(other.len().unwrap(), 1);
    assert_eq!(store.get(b"s/jobs\0x").unwrap().unwrap(), b"user");
    assert_eq!(store.get(b"c/jobs").unwrap().unwrap(), b"user");
}

#[test]
fn blocking_pop_wakes_on_push_on_clock_and_on_close() {
    let (_d, clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    // Times out (real time) when nothing comes.
    assert!(q.pop(Duration::from_millis(20)).unwrap().is_none());
    assert_eq!(q.waiting_pops(), 0);
    // Woken by a push.
    let qc = q.clone();
    let h = std::thread::spawn(move || qc.pop(LONG).unwrap().unwrap());
    eventually("a waiting pop", || q.waiting_pops() == 1);
    q.push(b"hello").unwrap();
    let t = h.join().unwrap();
    assert_eq!(t.payload, b"hello");
    q.ack(&t).unwrap();
    // Woken when the manual clock ends a delay.
    q.push_with(b"later", PushOptions::new().delay(secs(3600)))
        .unwrap();
    let qc = q.clone();
    let h = std::thread::spawn(move || qc.pop(LONG).unwrap().map(|t| t.payload));
    eventually("a waiting pop", || q.waiting_pops() == 1);
    clock.advance(secs(3600));
    assert_eq!(h.join().unwrap().unwrap(), b"later");
    // Ended by close.
    let qc = q.clone();
    let h = std::thread::spawn(move || qc.pop(LONG));
    eventually("a waiting pop", || q.waiting_pops() == 1);
    store.clone().close().unwrap();
    assert!(matches!(h.join().unwrap(), Err(Error::Closed)));
    assert!(matches!(q.push(b"x"), Err(Error::Closed)));
}

#[test]
fn waiting_pops_are_served_in_arrival_order() {
    let (_d, _clock, store) = setup();
    let q = store.queue("jobs").unwrap();
    let mut handles = Vec::new();
    for i in 0..4 {
        let qc = q.clone();
        handles.push(std::thread::spawn(move || {
            qc.pop(LONG).unwrap().unwrap().payload
        }));
        eventually("the next waiter", || q.waiting_pops() == i + 1);
    }
    for p in [b"0", b"1", b"2", b"3"] {
        q.push(p).unwrap();
    }
    let got: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        got,
        vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
}

#[test]
fn concurrent_workers_get_each_task_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    let q = store.queue("jobs").unwrap();
    const N: usize = 400;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let q = q.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                q.push(format!("{i}").as_bytes()).unwrap();
            }
        })
    };
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let q = q.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                while let Some(t) = q.pop(Duration::from_millis(500)).unwrap() {
                    seen.lock().unwrap().push(t.payload.clone());
                    q.ack(&t).unwrap();
                }
            })
        })
        .collect();
    producer.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<&Vec<u8>> = seen.iter().collect();
    assert_eq!(seen.len(), N, "every task delivered once");
    assert_eq!(unique.len(), N);
    assert!(q.is_empty().unwrap());
}

#[test]
fn clear_removes_every_task_and_voids_its_leases() {
    let (dir, clock, store) = setup();
    let q = store
        .queue_with("jobs", QueueOptions::default().max_attempts(1))
        .unwrap();
    q.push(b"ready").unwrap();
    q.push_with(b"delayed", PushOptions::new().delay(secs(9)))
        .unwrap();
    let third = q.push(b"third").unwrap();
    let t = q.pop(Duration::ZERO).unwrap().unwrap();
    q.nack(&t, Duration::ZERO).unwrap();
    assert_eq!(q.task(&t.id).unwrap().unwrap().state, TaskState::Dead);
    let leased = q.pop(Duration::ZERO).unwrap().unwrap();
    assert_eq!(
        q.stats().unwrap(),
        QueueStats {
            ready: 0,
            in_flight: 1,
            delayed: 1,
            dead: 1
        }
    );
    assert_eq!(leased.id, third);
    assert_eq!(q.clear().unwrap(), 3);
    assert!(is_rejected(&q.ack(&leased).unwrap_err()));
    assert_eq!(q.stats().unwrap(), QueueStats::default());
    drop(q);
    let store = reopen(&dir, &clock, store);
    let q = store.queue("jobs").unwrap();
    assert!(q.list().unwrap().is_empty());
    assert_eq!(q.clear().unwrap(), 0);
}

#[test]
fn racing_lease_expiry_never_lets_two_workers_complete_one_task() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (_d, clock, store) = setup();
    let q = store
        .queue_with(
            "jobs",
            QueueOptions::default()
                .visibility_timeout(Duration::from_millis(10))
                .max_attempts(u32::MAX),
        )
        .unwrap();
    const N: usize = 300;
    for i in 0..N {
        q.push(format!("{i}").as_bytes()).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let advancer = {
        let (clock, done) = (clock.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                clock.advance(Duration::from_millis(3));
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (q, done, acked, refused) =
                (q.clone(), done.clone(), acked.clone(), refused.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let Some(t) = q.pop(Duration::from_millis(50)).unwrap() else {
                        continue;
                    };
                    match q.ack(&t) {
                        Ok(()) => {
                            let mut a = acked.lock().unwrap();
                            a.push(t.id.clone());
                            if a.len() == N {
                                done.store(true, Ordering::SeqCst);
                            }
                        }
                        Err(Error::Rejected { .. }) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    eventually("every task acknowledged", || done.load(Ordering::SeqCst));
    for w in workers {
        w.join().unwrap();
    }
    advancer.join().unwrap();
    let acked = acked.lock().unwrap();
    let unique: HashSet<&TaskId> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "a task was completed twice");
    assert_eq!(acked.len(), N);
    assert_eq!(q.stats().unwrap(), QueueStats::default());
    eprintln!("{} acks refused as stale", refused.load(Ordering::SeqCst));
}
