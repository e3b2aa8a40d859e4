//! Message threads: every rule of issue 6, on a manual clock.

use std::sync::Arc;
use std::time::{Duration, Instant};
use ttlstore::{Error, ManualClock, Options, Store, SyncPolicy, ThreadOptions};

const T0: u64 = 1_700_000_000_000;

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

fn offsets(msgs: &[ttlstore::Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.offset).collect()
}

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
fn append_and_read_by_offset() {
    let (_d, clock, store) = setup();
    let t = store.thread("chat").unwrap();
    assert_eq!(
        (t.first_offset().unwrap(), t.next_offset(), t.len().unwrap()),
        (0, 0, 0)
    );
    assert!(t.is_empty().unwrap());
    assert_eq!(t.append(b"a").unwrap(), 0);
    clock.advance(Duration::from_millis(5));
    assert_eq!(t.append(b"b").unwrap(), 1);
    assert_eq!(
        t.append_batch(&[b"c".as_slice(), b"d", b"e"]).unwrap(),
        2..5
    );
    assert_eq!(t.append_batch::<&[u8]>(&[]).unwrap(), 5..5);
    assert_eq!(
        (t.first_offset().unwrap(), t.next_offset(), t.len().unwrap()),
        (0, 5, 5)
    );
    let all = t.read(0, 100).unwrap();
    assert_eq!(offsets(&all), vec![0, 1, 2, 3, 4]);
    assert_eq!(all[1].payload, b"b");
    assert_eq!(all[0].written_at, T0);
    assert_eq!(all[1].written_at, T0 + 5);
    assert_eq!(all[0].expires_at, None);
    assert_eq!(offsets(&t.read(2, 2).unwrap()), vec![2, 3]);
    assert_eq!(offsets(&t.read(4, 10).unwrap()), vec![4]);
    assert!(t.read(5, 10).unwrap().is_empty());
    assert!(t.read(0, 0).unwrap().is_empty());
    // Offsets above 255 sort right (big-endian keys).
    for i in 5..300u64 {
        assert_eq!(t.append(format!("{i}").as_bytes()).unwrap(), i);
    }
    assert_eq!(offsets(&t.read(254, 3).unwrap()), vec![254, 255, 256]);
    assert_eq!(t.read(299, 1).unwrap()[0].payload, b"299");
    // Another handle of the same thread shares it.
    let t2 = store.thread("chat").unwrap();
    assert_eq!(t2.append(b"x").unwrap(), 300);
    assert_eq!(t.next_offset(), 301);
    // Bad names are typed errors and create nothing.
    for bad in ["", "a\0b"] {
        assert!(matches!(
            store.thread(bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        store.thread(&"n".repeat(201)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        t.append_with_ttl(b"x", Duration::ZERO),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        store.thread_with(
            "z",
            ThreadOptions::default().default_ttl(Some(Duration::ZERO))
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(t.next_offset(), 301);
    assert_eq!(store.threads().unwrap(), vec!["chat".to_string()]);
}

#[test]
fn ttl_policy_and_per_message_ttl() {
    let (dir, clock, store) = setup();
    let t = store
        .thread_with(
            "events",
            ThreadOptions::default().default_ttl(Some(secs(60))),
        )
        .unwrap();
    assert_eq!(t.options().default_ttl, Some(secs(60)));
    t.append(b"policy").unwrap(); // 0: T0+60
    t.append_with_ttl(b"short", secs(10)).unwrap(); // 1: T0+10
    t.append_with_ttl(b"long", secs(600)).unwrap(); // 2: T0+600
    let msgs = t.read(0, 10).unwrap();
    assert_eq!(msgs[0].expires_at, Some(T0 + 60_000));
    assert_eq!(msgs[1].expires_at, Some(T0 + 10_000));
    clock.advance(secs(10));
    // Expired messages vanish from reads at once; the reader sees the gap.
    assert_eq!(offsets(&t.read(0, 10).unwrap()), vec![0, 2]);
    assert_eq!(t.len().unwrap(), 2);
    // The policy survives a restart; so do the deadlines.
    drop(t);
    let store = reopen(&dir, &clock, store);
    let t = store.thread("events").unwrap();
    assert_eq!(t.options().default_ttl, Some(secs(60)));
    assert_eq!(t.append(b"after").unwrap(), 3);
    assert_eq!(t.read(3, 1).unwrap()[0].expires_at, Some(T0 + 70_000));
    clock.advance(secs(50)); // T0+60
    assert_eq!(offsets(&t.read(0, 10).unwrap()), vec![2, 3]);
    assert_eq!(t.first_offset().unwrap(), 2);
    clock.advance(secs(600));
    assert!(t.is_empty().unwrap());
    assert_eq!(t.first_offset().unwrap(), 4);
    // Everything expired: offsets are still not reused, also after a restart.
    drop(t);
    let store = reopen(&dir, &clock, store);
    let t = store
        .thread_with("events", ThreadOptions::default())
        .unwrap();
    assert_eq!(t.options().default_ttl, None);
    assert_eq!(t.next_offset(), 4);
    assert_eq!(t.append(b"kept").unwrap(), 4);
    assert_eq!(t.read(0, 10).unwrap()[0].expires_at, None);
}

#[test]
fn trim_and_delete_never_reuse_offsets() {
    let (dir, clock, store) = setup();
    let t = store.thread("log").unwrap();
    for i in 0..10u8 {
        t.append(&[i]).unwrap();
    }
    assert_eq!(t.trim_before(4).unwrap(), 4);
    assert_eq!(t.trim_before(2).unwrap(), 0, "already below the floor");
    assert_eq!(t.first_offset().unwrap(), 4);
    assert_eq!(t.len().unwrap(), 6);
    // A reader below the first live message gets from the first live one.
    assert_eq!(t.read(0, 2).unwrap()[0].offset, 4);
    assert_eq!(
        t.trim_before(1000).unwrap(),
        6,
        "trims at most to the next offset"
    );
    assert!(t.is_empty().unwrap());
    assert_eq!(t.append(b"n").unwrap(), 10);
    drop(t);
    let store = reopen(&dir, &clock, store);
    let t = store.thread("log").unwrap();
    assert_eq!(offsets(&t.read(0, 100).unwrap()), vec![10]);
    assert_eq!(t.append(b"m").unwrap(), 11);
    let other = store.thread("other").unwrap();
    other.append(b"o").unwrap();
    assert_eq!(
        store.threads().unwrap(),
        vec!["log".to_string(), "other".to_string()]
    );
    t.delete().unwrap();
    assert_eq!(store.threads().unwrap(), vec!["other".to_string()]);
    assert!(t.read(0, 100).unwrap().is_empty());
    drop((t, other));
    let store = reopen(&dir, &clock, store);
    assert_eq!(store.threads().unwrap(), vec!["other".to_string()]);
    assert_eq!(
        store
            .namespace(ttlstore::Namespace::THREADS)
            .keys_with_prefix(b"t/log\0", 100),
        vec![]
    );
    let t = store.thread("log").unwrap();
    assert_eq!(t.append(b"reborn").unwrap(), 12);
    assert_eq!(offsets(&t.read(0, 100).unwrap()), vec![12]);
    assert_eq!(store.threads().unwrap().len(), 2);
    // The other thread was not touched; user keys do not collide with thread keys.
    store.put(b"m/other", b"user").unwrap();
    assert_eq!(
        store.thread("other").unwrap().read(0, 10).unwrap()[0].payload,
        b"o"
    );
    assert_eq!(store.get(b"m/other").unwrap().unwrap(), b"user");
}

#[test]
fn restart_keeps_messages_and_remaining_ttls() {
    let (dir, clock, store) = setup();
    let t = store.thread("chat").unwrap();
    t.append(b"forever").unwrap();
    t.append_with_ttl(b"hour", secs(3600)).unwrap();
    drop(t);
    clock.advance(secs(600));
    let store = reopen(&dir, &clock, store);
    let t = store.thread("chat").unwrap();
    let msgs = t.read(0, 10).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].payload, b"hour");
    assert_eq!(msgs[1].expires_at, Some(T0 + 3_600_000));
    assert_eq!(msgs[1].expires_at.unwrap() - store.now_ms(), 3_000_000);
    assert_eq!(t.next_offset(), 2);
}

#[test]
fn stream_follows_new_messages_skips_gaps_and_ends_on_close() {
    let (_d, clock, store) = setup();
    let t = store.thread("feed").unwrap();
    t.append_with_ttl(b"gone", secs(1)).unwrap();
    t.append(b"kept").unwrap();
    clock.advance(secs(1));
    let mut s = t.stream(0);
    let m = s.next().unwrap().unwrap();
    assert_eq!((m.offset, s.skipped()), (1, 1));
    // Nothing new: the timeout variant returns None after its (real-time) wait.
    assert_eq!(
        s.next_timeout(Some(Duration::from_millis(20))).unwrap(),
        None
    );
    assert_eq!(s.position(), 2);
    // A blocked stream wakes on an append from another thread.
    assert_eq!(t.waiting_streams(), 0);
    let reader = std::thread::spawn(move || {
        let got: Vec<Vec<u8>> = s.by_ref().take(3).map(|m| m.unwrap().payload).collect();
        (got, s)
    });
    eventually("the stream to block", || t.waiting_streams() == 1);
    t.append(b"x").unwrap();
    t.append_batch(&[b"y".as_slice(), b"z"]).unwrap();
    let (got, mut s) = reader.join().unwrap();
    assert_eq!(got, vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
    // Messages trimmed before the stream reads them are skipped and counted.
    t.append_batch(&[b"1".as_slice(), b"2", b"3"]).unwrap();
    t.trim_before(7).unwrap();
    assert_eq!(s.next().unwrap().unwrap().payload, b"3");
    assert_eq!(s.skipped(), 3);
    // A stream with an idle timeout ends by itself.
    let idle: Vec<_> = t
        .stream_with_timeout(0, Duration::from_millis(20))
        .map(|m| m.unwrap().offset)
        .collect();
    assert_eq!(idle, vec![7]);
    // A blocked stream ends cleanly when the store closes.
    let waiting = std::thread::spawn(move || s.next().is_none());
    eventually("the stream to block", || t.waiting_streams() == 1);
    store.clone().close().unwrap();
    assert!(waiting.join().unwrap());
    assert!(t.stream(0).next().is_none());
    assert!(matches!(t.append(b"late"), Err(Error::Closed)));
}

/// `len` counts a page of keys at a time (4096): a thread of several pages, some trimmed and
/// some expired, counts every live message once.
#[test]
fn len_counts_a_thread_longer_than_a_page() {
    let (_dir, clock, store) = setup();
    let t = store.thread("long").unwrap();
    let payloads: Vec<Vec<u8>> = (0..10_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    t.append_batch(&payloads[..6_000]).unwrap();
    for p in &payloads[6_000..7_000] {
        t.append_with_ttl(p, secs(5)).unwrap();
    }
    t.append_batch(&payloads[7_000..]).unwrap();
    assert_eq!(t.len().unwrap(), 10_000);
    assert_eq!(t.trim_before(100).unwrap(), 100);
    assert_eq!(t.len().unwrap(), 9_900);
    clock.advance(secs(5));
    assert_eq!(t.len().unwrap(), 8_900);
    // A neighbour whose name extends this one's is not counted.
    store
        .thread("long2")
        .unwrap()
        .append_batch(&payloads[..5])
        .unwrap();
    assert_eq!(t.len().unwrap(), 8_900);
}
