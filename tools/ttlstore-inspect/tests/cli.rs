//! Runs the built `ttlstore-inspect` against stores written with the library and checks its
//! output and exit codes.

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::format::{FORMAT_VERSION, HEADER_LEN, SegmentHeader};
use ttlstore::inspect::{Inspector, RecordEntry};
use ttlstore::{Error, ManualClock, Namespace, Options, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;
const SEG: u64 = 4096;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inspect(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_ttlstore-inspect"))
        .args(args)
        .output()
        .unwrap();
    Out {
        code: out.status.code().expect("exited normally"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Store {
    let opts = Options::default()
        .clock(clock.clone())
        .segment_size(SEG)
        .sync(SyncPolicy::Never);
    Store::open_with(dir, opts).unwrap()
}

/// Reopens a store whose last handle was just closed. Other tests of this binary spawn
/// processes concurrently, and a child inherits every open file for the instant between its fork
/// and its exec (close-on-exec only closes them at the exec), the lock file included; `flock`
/// belongs to the open file, so for that instant the lock outlives `close`. Retry on `Locked`
/// only, for a bounded time.
fn reopen_after_close(dir: &Path, clock: &Arc<ManualClock>) -> Store {
    let opts = || {
        Options::default()
            .clock(clock.clone())
            .segment_size(SEG)
            .sync(SyncPolicy::Never)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open_with(dir, opts()) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return other.unwrap(),
        }
    }
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.is_empty()).collect()
}

fn json_lines(s: &str) -> Vec<Json> {
    lines(s)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Length of a single put record: prefix 8, kind 1, seq 8, ns 1, key and value lengths, expiry.
/// The length of a compact put (format version 2) of a short key and value, in a small segment
/// (a 1-byte sequence delta) of a store whose clock is at a whole second (the expiry delta is
/// the TTL).
fn put_len(key: usize, value: usize, ttl_ms: Option<u64>) -> u64 {
    let exp = ttl_ms.map_or(0, ttlstore::format::varint_len);
    (8 + 1 + 1 + 1 + 1 + 1 + exp + key + value) as u64
}

/// A store with a known history, written at T0: returns the directory.
fn sample_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    store.put(b"user:1", b"alice").unwrap();
    store
        .put_with_ttl(b"user:2", b"bob", Duration::from_secs(30))
        .unwrap();
    store
        .put_with_ttl(b"user:3", b"carol", Duration::from_secs(7200))
        .unwrap();
    store.put(b"user:1", b"alice-2").unwrap();
    store.delete(b"user:3").unwrap();
    store.put(b"bin\x00\xff", b"\x01\x02").unwrap();
    store
        .namespace(Namespace::CACHES)
        .put(b"user:1", b"cached")
        .unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"batch:a", b"1");
    batch.delete(b"user:1");
    store.write_batch(batch).unwrap();
    store.close().unwrap();
    dir
}

#[test]
fn dump_lists_every_operation_and_filters() {
    let dir = sample_store();
    let d = p(dir.path());
    let at = T0.to_string();

    let all = inspect(&["dump", d, "--time-at", &at]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let l = lines(&all.stdout);
    assert_eq!(l.len(), 9, "{}", all.stdout);
    assert!(l.iter().all(|x| x.contains("crc=ok")), "{}", all.stdout);
    assert!(l[0].starts_with("segment=1 offset=40 seq=1 kind=put ns=default key=\"user:1\" value_len=5 value=\"alice\" expires=never"), "{}", l[0]);
    assert!(
        l[1].contains("expires=2023-11-14T22:13:50.000Z (in 30s)"),
        "{}",
        l[1]
    );
    assert!(
        l[4].contains("kind=delete") && l[4].contains("key=\"user:3\""),
        "{}",
        l[4]
    );
    assert!(
        l[5].contains("key=\"bin\\x00\\xff\"") && l[5].contains("value=\"\\x01\\x02\""),
        "{}",
        l[5]
    );
    assert!(l[6].contains("ns=caches"), "{}", l[6]);
    assert!(
        l[7].contains("kind=batch[1/2]:put") && l[8].contains("kind=batch[2/2]:delete"),
        "{}",
        all.stdout
    );

    let key = inspect(&["dump", d, "--key", "user:1"]);
    let l = lines(&key.stdout);
    assert_eq!(l.len(), 4, "{}", key.stdout); // two puts, the cache key, the batch delete
    assert!(l.iter().all(|x| x.contains("key=\"user:1\"")));
    let key_ns = inspect(&["dump", d, "--key", "user:1", "--namespace", "default"]);
    assert_eq!(lines(&key_ns.stdout).len(), 3, "{}", key_ns.stdout);
    let caches = inspect(&["dump", d, "--namespace", "caches"]);
    assert_eq!(lines(&caches.stdout).len(), 1);
    assert!(caches.stdout.contains("value=\"cached\""));

    let bin = inspect(&["dump", d, "--key", "bin\\x00\\xff"]);
    assert_eq!(lines(&bin.stdout).len(), 1, "{}", bin.stdout);

    let prefix = inspect(&["dump", d, "--prefix", "user:"]);
    assert_eq!(lines(&prefix.stdout).len(), 7, "{}", prefix.stdout);

    let deletes = inspect(&["dump", d, "--kind", "delete"]);
    let l = lines(&deletes.stdout);
    assert_eq!(l.len(), 2, "{}", deletes.stdout);
    assert!(l.iter().all(|x| x.contains("delete")));
    let batch = inspect(&["dump", d, "--kind", "batch"]);
    assert_eq!(lines(&batch.stdout).len(), 2);

    let from = inspect(&["dump", d, "--from-seq", "6"]);
    let l = lines(&from.stdout);
    assert_eq!(l.len(), 4, "{}", from.stdout);
    assert!(l[0].contains("seq=6 "));

    // Live at T0: user:2 (TTL 30 s), bin, the cache key, batch:a. user:1 was deleted by the
    // batch, user:3 by a delete.
    let live = inspect(&["dump", d, "--live-only", "--time-at", &at]);
    let l = lines(&live.stdout);
    assert_eq!(l.len(), 4, "{}", live.stdout);
    assert!(l[0].contains("key=\"user:2\""));
    // 31 s later user:2 has expired.
    let later = (T0 + 31_000).to_string();
    let live = inspect(&["dump", d, "--live-only", "--time-at", &later]);
    assert_eq!(lines(&live.stdout).len(), 3, "{}", live.stdout);
    assert!(!live.stdout.contains("user:2"));

    let bad = inspect(&["dump", d, "--kind", "nope"]);
    assert_eq!(bad.code, 2);
    let bad = inspect(&["dump", d, "--key", "\\q"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.starts_with("error: invalid argument"),
        "{}",
        bad.stderr
    );
}

#[test]
fn dump_of_one_segment_file_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..200u32 {
        store
            .put_with_ttl(
                format!("k{i:04}").as_bytes(),
                &[b'v'; 60],
                Duration::from_secs(60),
            )
            .unwrap();
    }
    drop(store);
    let segs = Inspector::open(dir.path()).unwrap().segments().len();
    assert!(segs >= 3, "small segments roll over: {segs}");

    let one = inspect(&["dump", p(&seg_path(dir.path(), 2)), "--json"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    let recs = json_lines(&one.stdout);
    assert!(!recs.is_empty());
    assert!(
        recs.iter()
            .all(|r| r["segment"] == 2 && r["crc"] == "ok" && r["kind"] == "put")
    );
    assert_eq!(recs[0]["offset"], HEADER_LEN as u64);

    let all = json_lines(
        &inspect(&[
            "dump",
            p(dir.path()),
            "--json",
            "--time-at",
            &T0.to_string(),
        ])
        .stdout,
    );
    assert_eq!(all.len(), 200);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["key"], format!("k{i:04}"));
        assert_eq!(r["value_len"], 60);
        assert_eq!(r["expires"]["unix_ms"], T0 + 60_000);
        assert_eq!(r["expires"]["remaining_ms"], 60_000);
        assert_eq!(r["expires"]["expired"], false);
    }
}

#[test]
fn time_at_changes_expiry_status() {
    let dir = sample_store();
    let d = p(dir.path());
    let show = |at: &str| inspect(&["dump", d, "--key", "user:2", "--time-at", at]).stdout;
    assert!(show(&T0.to_string()).contains("(in 30s)"));
    assert!(show(&(T0 + 40_000).to_string()).contains("(expired 10s ago)"));
    // RFC 3339 and unix ms name the same instant.
    assert_eq!(
        show("2023-11-14T22:13:40Z"),
        show(&(T0 + 20_000).to_string())
    );
    assert!(show("2023-11-14T23:13:40+01:00").contains("(in 10s)"));

    let bad = inspect(&["dump", d, "--time-at", "yesterday"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .starts_with("error: cannot read \"yesterday\" as a time"),
        "{}",
        bad.stderr
    );
}

#[test]
fn get_shows_value_and_ttl_by_replay() {
    let dir = sample_store();
    let d = p(dir.path());
    let at = T0.to_string();

    let live = inspect(&["get", d, "user:2", "--time-at", &at]);
    assert_eq!(live.code, 0, "{}", live.stderr);
    assert!(
        live.stdout.contains("\"user:2\" in default: live"),
        "{}",
        live.stdout
    );
    assert!(live.stdout.contains("value (3 bytes): \"bob\""));
    assert!(
        live.stdout
            .contains("expires: 2023-11-14T22:13:50.000Z (in 30s)"),
        "{}",
        live.stdout
    );

    let expired = inspect(&["get", d, "user:2", "--time-at", &(T0 + 30_000).to_string()]);
    assert_eq!(expired.code, 1);
    assert!(
        expired.stdout.contains("expired") && expired.stdout.contains("expired 0ms ago"),
        "{}",
        expired.stdout
    );

    let deleted = inspect(&["get", d, "user:1", "--time-at", &at]);
    assert_eq!(deleted.code, 1);
    assert!(
        deleted.stdout.contains("removed by delete seq 9"),
        "{}",
        deleted.stdout
    );

    let cached = inspect(&[
        "get",
        d,
        "user:1",
        "--namespace",
        "caches",
        "--json",
        "--time-at",
        &at,
    ]);
    assert_eq!(cached.code, 0);
    let doc: Json = serde_json::from_str(&cached.stdout).unwrap();
    assert_eq!(doc["state"], "live");
    assert_eq!(doc["value"], "cached");
    assert_eq!(doc["expires"], Json::Null);

    let bin = inspect(&["get", d, "bin\\x00\\xff", "--json"]);
    let doc: Json = serde_json::from_str(&bin.stdout).unwrap();
    assert_eq!(doc["value"], "\\x01\\x02");

    let missing = inspect(&["get", d, "nobody", "--json"]);
    assert_eq!(missing.code, 1);
    let doc: Json = serde_json::from_str(&missing.stdout).unwrap();
    assert_eq!(doc["state"], "missing");

    let bad_ns = inspect(&["get", d, "k", "--namespace", "nope"]);
    assert_eq!(bad_ns.code, 2);
    assert!(
        bad_ns.stderr.contains("unknown namespace"),
        "{}",
        bad_ns.stderr
    );
}

#[test]
fn stats_match_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let value = [b'x'; 50];
    for i in 0..10 {
        store.put(format!("p{i}").as_bytes(), &value).unwrap();
    }
    for i in 0..5 {
        store
            .put_with_ttl(format!("m{i}").as_bytes(), &value, Duration::from_secs(30))
            .unwrap();
        store
            .put_with_ttl(
                format!("h{i}").as_bytes(),
                &value,
                Duration::from_secs(7200),
            )
            .unwrap();
    }
    for i in 0..3 {
        store
            .put_with_ttl(
                format!("d{i}").as_bytes(),
                &value,
                Duration::from_secs(10 * 86_400),
            )
            .unwrap();
    }
    // Filler so that the originals end up in sealed segments.
    for i in 0..60 {
        store
            .put_with_ttl(
                format!("f{i:02}").as_bytes(),
                &value,
                Duration::from_secs(600),
            )
            .unwrap();
    }
    store.put(b"p0", &value).unwrap();
    store.put(b"p1", &value).unwrap();
    assert!(store.delete(b"p2").unwrap());
    store.namespace(Namespace::QUEUES).put(b"q", b"1").unwrap();
    let engine = store.stats();
    // The store stays open: stats read the files without a lock.
    let out = inspect(&[
        "stats",
        p(dir.path()),
        "--json",
        "--time-at",
        &T0.to_string(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s: Json = serde_json::from_str(&out.stdout).unwrap();
    let t = &s["total"];
    let plain = put_len(2, 50, None);
    let minute = put_len(2, 50, Some(30_000));
    let ttl =
        5 * minute + 5 * put_len(2, 50, Some(7_200_000)) + 3 * put_len(2, 50, Some(864_000_000));
    let filler = put_len(3, 50, Some(600_000));
    let queue = put_len(1, 1, None);
    assert_eq!(t["records"]["put"], 10 + 5 + 5 + 3 + 60 + 2 + 1);
    assert_eq!(t["records"]["delete"], 1);
    assert_eq!(t["live_keys"], 9 + 5 + 5 + 3 + 60 + 1);
    assert_eq!(t["live_bytes"], 9 * plain + ttl + 60 * filler + queue);
    assert_eq!(t["dead_bytes"], 3 * plain);
    assert_eq!(t["tombstone_bytes"], 8 + 1 + 8 + 1 + 1 + 2);
    assert_eq!(t["expired_bytes"], 0);
    assert_eq!(t["live_bytes"], engine.live_bytes);
    assert_eq!(t["live_keys"], engine.live_keys);
    let segs = s["segments"].as_array().unwrap();
    assert_eq!(segs.len(), engine.segments);
    assert_eq!(
        t["data_bytes"].as_u64().unwrap() - t["header_bytes"].as_u64().unwrap(),
        engine.data_bytes
    );
    let sum = [
        "header_bytes",
        "live_bytes",
        "expired_bytes",
        "dead_bytes",
        "tombstone_bytes",
    ]
    .iter()
    .map(|k| t[k].as_u64().unwrap())
    .sum::<u64>();
    assert_eq!(t["data_bytes"], sum);
    let h = &t["expiry"];
    assert_eq!(h["within_minute"]["keys"], 5);
    assert_eq!(h["within_hour"]["keys"], 60);
    assert_eq!(h["within_day"]["keys"], 5);
    assert_eq!(h["later"]["keys"], 3);
    assert_eq!(h["never"]["keys"], 9 + 1);
    assert_eq!(h["never"]["bytes"], 9 * plain + queue);
    // p0..p2's first writes are in segment 1, sealed: reclaimable now.
    assert_eq!(segs[0]["dead_bytes"], 3 * plain);
    assert_eq!(t["reclaimable_bytes"], 3 * plain);
    assert_eq!(segs.last().unwrap()["active"], true);
    assert_eq!(segs.last().unwrap()["reclaimable_bytes"], 0);
    let amp = t["space_amplification"].as_f64().unwrap();
    assert!(
        (amp - t["data_bytes"].as_f64().unwrap() / t["live_bytes"].as_f64().unwrap()).abs() < 1e-9
    );
    let ns = s["namespaces"].as_array().unwrap();
    assert_eq!(ns.len(), 2);
    assert_eq!(ns[1]["namespace"], "queues");
    assert_eq!(ns[1]["live_keys"], 1);

    // Two minutes later the 30 s keys have expired, all of them in sealed segment 1.
    let later = inspect(&[
        "stats",
        p(dir.path()),
        "--json",
        "--time-at",
        &(T0 + 120_000).to_string(),
    ]);
    let s2: Json = serde_json::from_str(&later.stdout).unwrap();
    let t2 = &s2["total"];
    assert_eq!(t2["expired_keys"], 5);
    assert_eq!(t2["expired_bytes"], 5 * minute);
    assert_eq!(t2["live_keys"], 9 + 5 + 3 + 60 + 1);
    assert_eq!(t2["reclaimable_bytes"], 3 * plain + 5 * minute);
    assert_eq!(t2["expiry"]["within_minute"]["keys"], 0);

    let text = inspect(&["stats", p(dir.path()), "--time-at", &T0.to_string()]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout
            .contains(&format!("reclaimable now {} B", 3 * plain)),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("within a minute"), "{}", text.stdout);
    drop(store);
}

#[test]
fn verify_clean_store_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..150u32 {
        store.put(format!("key{i}").as_bytes(), &[7; 40]).unwrap();
        if i % 7 == 0 {
            store.delete(format!("key{}", i / 2).as_bytes()).unwrap();
        }
    }
    drop(store);
    let out = inspect(&["verify", p(dir.path())]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.trim_end().ends_with("clean"), "{}", out.stdout);
    let j = inspect(&["verify", p(dir.path()), "--json"]);
    assert_eq!(j.code, 0);
    let doc: Json = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(doc["clean"], true);
    assert_eq!(doc["records"], 150 + 22);
    assert!(doc["segments"].as_u64().unwrap() >= 2);
}

/// Flips a byte inside the third record of segment 1; returns that record's offset.
fn corrupt_segment_1(dir: &Path) -> u64 {
    let ins = Inspector::open(dir).unwrap();
    let offsets: Vec<u64> = ins
        .records()
        .filter_map(|r| match r.unwrap() {
            RecordEntry::Op(op) if op.segment == 1 => Some(op.offset),
            _ => None,
        })
        .collect();
    let at = offsets[2];
    let path = seg_path(dir, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize + 20] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    at
}

#[test]
fn verify_and_dump_report_corruption_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..120u32 {
        store.put(format!("key{i}").as_bytes(), &[1; 50]).unwrap();
    }
    drop(store);
    let at = corrupt_segment_1(dir.path());
    let d = p(dir.path());

    let out = inspect(&["verify", d]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "problem: segment 1 (00000000000000000001.seg) at offset {at}: record checksum mismatch"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 problem(s)"), "{}", out.stdout);
    let j: Json = serde_json::from_str(&inspect(&["verify", d, "--json"]).stdout).unwrap();
    assert_eq!(j["clean"], false);
    assert_eq!(j["problems"][0]["segment"], 1);
    assert_eq!(j["problems"][0]["offset"], at);

    // Dump shows the damage and goes on with the next record.
    let dump = inspect(&["dump", d]);
    assert_eq!(dump.code, 0);
    let bad: Vec<&str> = lines(&dump.stdout)
        .into_iter()
        .filter(|l| l.contains("crc=BAD"))
        .collect();
    assert_eq!(bad.len(), 1, "{}", dump.stdout);
    assert!(
        bad[0].starts_with(&format!("segment=1 offset={at} ")),
        "{}",
        bad[0]
    );
    assert_eq!(
        lines(&dump.stdout).len(),
        120,
        "119 records and the damaged one"
    );

    // Stats and get refuse to compute on damaged data, clearly.
    let stats = inspect(&["stats", d]);
    assert_eq!(stats.code, 2);
    assert!(
        stats
            .stderr
            .starts_with(&format!("error: corruption in segment 1 at byte {at}")),
        "{}",
        stats.stderr
    );
    assert_eq!(lines(&stats.stderr).len(), 1);
    assert!(!stats.stderr.contains("panicked"));
}

#[test]
fn torn_tail_of_the_last_segment_is_the_end_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..10u32 {
        store.put(format!("key{i}").as_bytes(), b"value").unwrap();
    }
    store.close().unwrap();
    // Half a record after the data, as a crash or a writer mid-append leaves it.
    let ins = Inspector::open(dir.path()).unwrap();
    let last = ins.segments().last().unwrap().clone();
    let end = ins
        .records()
        .filter_map(|r| match r.unwrap() {
            RecordEntry::Op(op) => Some(op.offset + op.record_len),
            _ => None,
        })
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last.path).unwrap();
    bytes[end as usize..end as usize + 12]
        .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 40, 0, 0, 0, 1, 2, 3, 4]);
    std::fs::write(&last.path, bytes).unwrap();

    let out = inspect(&["verify", p(dir.path())]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("note: segment {} ", last.id))
            && out.stdout.contains("torn tail"),
        "{}",
        out.stdout
    );
    let dump = inspect(&["dump", p(dir.path())]);
    assert_eq!(dump.code, 0);
    assert!(dump.stdout.contains("crc=torn-tail"), "{}", dump.stdout);
    assert!(!dump.stdout.contains("crc=BAD"));
    let stats = inspect(&["stats", p(dir.path()), "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let s: Json = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(s["total"]["live_keys"], 10);
    assert!(s["total"]["torn_tail_bytes"].as_u64().unwrap() > 0);
    let get = inspect(&["get", p(dir.path()), "key9"]);
    assert_eq!(get.code, 0, "{}", get.stdout);
}

#[test]
fn not_a_store_and_newer_versions_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    for cmd in [&["verify"][..], &["dump"], &["stats"]] {
        let mut args = cmd.to_vec();
        args.push(p(dir.path()));
        let out = inspect(&args);
        assert_eq!(out.code, 2, "{args:?}");
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("holds no ttlstore data"),
            "{}",
            out.stderr
        );
        assert_eq!(lines(&out.stderr).len(), 1, "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let missing = inspect(&["verify", p(&dir.path().join("absent"))]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    let empty = tempfile::tempdir().unwrap();
    let out = inspect(&["stats", p(empty.path())]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("holds no segment files"),
        "{}",
        out.stderr
    );
    let file = inspect(&["dump", p(&dir.path().join("notes.txt"))]);
    assert_eq!(file.code, 2);
    assert!(
        file.stderr.contains("not a segment file name"),
        "{}",
        file.stderr
    );

    // A segment of a newer format version: nothing can read it, verify included.
    let newer = tempfile::tempdir().unwrap();
    let h = SegmentHeader {
        version: FORMAT_VERSION + 1,
        kind: 0,
        prev_log_id: 0,
        segment_id: 1,
        base_seq: 1,
        base_time_s: 0,
    };
    std::fs::write(seg_path(newer.path(), 1), h.encode()).unwrap();
    for cmd in ["verify", "dump", "stats"] {
        let out = inspect(&[cmd, p(newer.path())]);
        assert_eq!(out.code, 2, "{cmd}");
        assert!(
            out.stderr
                .contains(&format!("has format version {}", FORMAT_VERSION + 1)),
            "{}",
            out.stderr
        );
    }
    // The library agrees: the typed error.
    let err = Inspector::open(newer.path())
        .unwrap()
        .stats(T0)
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1));
}

#[test]
fn verify_lists_unknown_files_bad_headers_and_wrong_ids() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..120u32 {
        store.put(format!("key{i}").as_bytes(), &[1; 50]).unwrap();
    }
    drop(store);
    std::fs::write(dir.path().join("stray.bin"), b"?").unwrap();
    std::fs::write(dir.path().join("00000000000000000001.seg.tmp"), b"").unwrap();
    // Segment 2's header claims to be segment 9 (its bases kept: its compact records are decoded
    // against them).
    let mut bytes = std::fs::read(seg_path(dir.path(), 2)).unwrap();
    let h = SegmentHeader {
        segment_id: 9,
        ..SegmentHeader::decode(&bytes[..HEADER_LEN]).unwrap()
    };
    bytes[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(seg_path(dir.path(), 2), bytes).unwrap();
    // Segment 1's magic is gone.
    let mut bytes = std::fs::read(seg_path(dir.path(), 1)).unwrap();
    bytes[0] = b'X';
    std::fs::write(seg_path(dir.path(), 1), bytes).unwrap();

    let out = inspect(&["verify", p(dir.path())]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("problem: stray.bin: unknown file"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("problem: segment 1 (00000000000000000001.seg) at offset 0: the file does not start with ttlstore's magic"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "problem: segment 2 (00000000000000000002.seg) at offset 0: the header names segment 9"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("note: 00000000000000000001.seg.tmp: leftover temporary file"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 problem(s)"), "{}", out.stdout);
    let dump = inspect(&["dump", p(dir.path())]);
    assert_eq!(dump.code, 2);
    assert!(
        dump.stderr
            .starts_with("error: corruption in segment 1 at byte 0"),
        "{}",
        dump.stderr
    );
}

#[test]
fn runs_while_another_handle_has_the_store_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for i in 0..100u32 {
        store
            .put_with_ttl(
                format!("key{i}").as_bytes(),
                &[3; 40],
                Duration::from_secs(100 + u64::from(i)),
            )
            .unwrap();
    }
    let d = p(dir.path());
    // The directory is locked by `store`: a second open is refused...
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    // ...but inspection takes no lock and sees every acknowledged write (mapped, not yet synced).
    let v = inspect(&["verify", d]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    let dump = inspect(&["dump", d, "--json"]);
    assert_eq!(dump.code, 0);
    assert_eq!(json_lines(&dump.stdout).len(), 100);
    let g = inspect(&["get", d, "key42", "--time-at", &T0.to_string()]);
    assert_eq!(g.code, 0, "{}", g.stdout);
    assert!(g.stdout.contains("(in 2m22s)"), "{}", g.stdout);
    let s: Json = serde_json::from_str(
        &inspect(&["stats", d, "--json", "--time-at", &T0.to_string()]).stdout,
    )
    .unwrap();
    assert_eq!(s["total"]["live_keys"], 100);

    // The store is untouched and still usable; the lock is still its own.
    store.put(b"after", b"inspection").unwrap();
    assert_eq!(store.get(b"key42").unwrap().unwrap(), &[3u8; 40][..]);
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    let g = inspect(&["get", d, "after"]);
    assert_eq!(g.code, 0);
    assert!(g.stdout.contains("\"inspection\""));
    store.close().unwrap();
    let reopened = reopen_after_close(dir.path(), &clock);
    assert_eq!(reopened.recovery_report().records, 101);
    assert_eq!(reopened.get(b"after").unwrap().unwrap(), b"inspection");
}

#[test]
fn threads_and_queues_show_names_offsets_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    let chat = store.thread("chat").unwrap();
    for m in ["hi", "there", "again"] {
        chat.append(m.as_bytes()).unwrap();
    }
    let jobs = store.queue("jobs").unwrap();
    jobs.push(b"task one").unwrap();
    jobs.push(b"task two").unwrap();
    let leased = jobs.pop(Duration::ZERO).unwrap().expect("a ready task");
    drop((chat, jobs, leased));
    store.close().unwrap();
    let d = p(dir.path());

    let dump = inspect(&["dump", d, "--namespace", "threads"]);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    assert!(
        dump.stdout
            .contains("key=[thread \"chat\": message at offset 0]"),
        "{}",
        dump.stdout
    );
    assert!(
        dump.stdout
            .contains("key=[thread \"chat\": message at offset 2]"),
        "{}",
        dump.stdout
    );
    let dump = inspect(&["dump", d, "--namespace", "queues", "--json"]);
    let recs = json_lines(&dump.stdout);
    assert!(
        recs.iter().any(|r| r["key_description"]
            .as_str()
            .is_some_and(|k| k.starts_with("queue \"jobs\": task"))),
        "{}",
        dump.stdout
    );
    // A task's state reads as what it means, beside its bytes: both pushed ready, one then
    // leased. Payloads and other keys have no meaning given.
    let meanings: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["value_description"].as_str())
        .collect();
    assert_eq!(
        meanings
            .iter()
            .filter(|m| **m == "ready, priority 0, attempt 0/5")
            .count(),
        2,
        "{}",
        dump.stdout
    );
    assert!(
        meanings
            .iter()
            .any(|m| m.starts_with("leased until ") && m.ends_with(", priority 0, attempt 1/5")),
        "{}",
        dump.stdout
    );
    assert!(recs.iter().all(|r| {
        let is_state = r["key_description"]
            .as_str()
            .is_some_and(|k| k.ends_with(" state"));
        r["value_description"].is_string() == is_state
    }));
    let text = inspect(&["dump", d, "--namespace", "queues"]);
    assert!(
        text.stdout
            .contains("meaning=[ready, priority 0, attempt 0/5]"),
        "{}",
        text.stdout
    );
    // `get` of the leased task's state key.
    let state_key = recs
        .iter()
        .rev()
        .find(|r| {
            r["value_description"]
                .as_str()
                .is_some_and(|m| m.starts_with("leased"))
        })
        .and_then(|r| r["key"].as_str())
        .unwrap()
        .to_string();
    let got = inspect(&["get", d, &state_key, "--namespace", "queues"]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(
        got.stdout.contains("meaning: leased until "),
        "{}",
        got.stdout
    );

    let stats = inspect(&["stats", d, "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let s: Json = serde_json::from_str(&stats.stdout).unwrap();
    let ns = s["namespaces"].as_array().unwrap();
    let group = |ns_name: &str| {
        ns.iter().find(|n| n["namespace"] == ns_name).unwrap()["groups"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert_eq!(
        group("threads"),
        vec![serde_json::json!({"name": "thread \"chat\"", "len": 3})]
    );
    assert_eq!(
        group("queues"),
        vec![serde_json::json!({"name": "queue \"jobs\"", "len": 2})]
    );
    let text = inspect(&["stats", d]);
    assert!(
        text.stdout.contains("thread \"chat\": 3 messages"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("queue \"jobs\": 2 tasks"),
        "{}",
        text.stdout
    );
}

#[test]
fn verify_checks_hint_files_and_compacted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock);
    for round in 0..3u32 {
        for i in 0..40u32 {
            store
                .put(
                    format!("key{i}").as_bytes(),
                    format!("value {round}").as_bytes(),
                )
                .unwrap();
        }
    }
    for i in 0..20u32 {
        store
            .put_with_ttl(
                format!("short{i}").as_bytes(),
                &[5; 30],
                Duration::from_secs(5),
            )
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    store.compact().unwrap();
    store.compact().unwrap();
    let live_before = store.stats().live_keys;
    store.close().unwrap();
    let hints: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    assert!(!hints.is_empty(), "compaction writes hint files");
    let d = p(dir.path());
    let at = (T0 + 10_000).to_string();
    let ok = inspect(&["verify", d]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    let s: Json =
        serde_json::from_str(&inspect(&["stats", d, "--json", "--time-at", &at]).stdout).unwrap();
    assert_eq!(s["total"]["live_keys"], live_before);
    assert_eq!(inspect(&["get", d, "key7", "--time-at", &at]).code, 0);
    assert!(inspect(&["get", d, "key7"]).stdout.contains("\"value 2\""));

    // Damage one hint: verify names it (open would fall back to scanning the segment).
    let mut bytes = std::fs::read(&hints[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&hints[0], bytes).unwrap();
    let bad = inspect(&["verify", d]);
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    let name = hints[0].file_name().unwrap().to_str().unwrap();
    assert!(
        bad.stdout.contains(&format!(
            "({name}): hint file disagrees with its segment: checksum mismatch"
        )),
        "{}",
        bad.stdout
    );
}
