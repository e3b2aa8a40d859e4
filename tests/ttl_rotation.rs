//! Format version 2 in a running store: TTL-aware rotation (on a manual clock), compact records
//! surviving reopen and compaction, and a store of version 1 segments read and extended.

use std::sync::Arc;
use std::time::Duration;
use ttlstore::format::{self, EncOp, HEADER_LEN, SegmentHeader};
use ttlstore::{ManualClock, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
const SEGMENT: u64 = 64 << 10;

fn opts(clock: &Arc<ManualClock>) -> Options {
    Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(SEGMENT)
        .clock(clock.clone())
        .background_threads(false)
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn segments(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Every record of a segment file, as (kind byte, ops count).
fn kinds(data: &[u8]) -> Vec<u8> {
    let id = SegmentHeader::decode(&data[..HEADER_LEN])
        .unwrap()
        .segment_id;
    let mut off = HEADER_LEN;
    let mut out = Vec::new();
    while off < data.len() {
        match format::read_record(data, off, id) {
            Ok(rec) => {
                out.push(rec.bytes[format::RECORD_PREFIX]);
                off += rec.len;
            }
            Err(format::RecordError::End) => break,
            Err(e) => panic!("bad record at {off}: {e:?}"),
        }
    }
    out
}

#[test]
fn the_active_segment_rotates_early_when_its_ttls_are_short() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let value = [5u8; 100];
    // 10 s TTLs, all alike: the segment may span a twentieth of that, 500 ms. 20 puts (about
    // 2.5 KiB) every 100 ms for 3 s: a rotation every 500 ms (each segment is over the 1 KiB
    // minimum by then), at 0.5 s, 1 s, … 2.5 s, long before the 64 KiB segment fills.
    let mut i = 0;
    for _ in 0..30 {
        for _ in 0..20 {
            store
                .put_with_ttl(&key(i), &value, Duration::from_secs(10))
                .unwrap();
            i += 1;
        }
        clock.advance(Duration::from_millis(100));
    }
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 6, "segments for 3 s of 10 s TTLs");
    for data in &segs {
        let h = SegmentHeader::decode(&data[..HEADER_LEN]).unwrap();
        assert_eq!(h.version, format::FORMAT_VERSION);
        // The header's base time is the creation time, in seconds.
        assert!((T0 / 1000..=T0 / 1000 + 3).contains(&u64::from(h.base_time_s)));
        assert!(
            kinds(data)
                .iter()
                .all(|&k| k == format::KIND_PUT_COMPACT | format::FLAG_EXPIRES)
        );
    }
    // Once everything expired the expirer's batches are compact too, and the old segments go
    // whole; every key reads as gone before and after a reopen.
    clock.advance(Duration::from_secs(11));
    let report = store.compact().unwrap();
    assert_eq!(report.expired_keys, 600);
    assert_eq!(report.segments_rewritten, 0);
    assert!(report.segments_dropped >= 2, "{report:?}");
    let last = segments(dir.path()).pop().unwrap();
    assert!(kinds(&last).contains(&format::KIND_EXPIRE_BATCH));
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    for j in 0..600 {
        assert_eq!(store.get(&key(j)).unwrap(), None);
    }
}

#[test]
fn without_ttls_or_with_long_ones_nothing_rotates_early() {
    // 10 h TTLs: the segment may span 30 minutes; 5 minutes pass.
    for ttl in [None, Some(Duration::from_secs(36_000))] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
        for i in 0..300 {
            match ttl {
                Some(t) => store.put_with_ttl(&key(i), &[1; 100], t).unwrap(),
                None => store.put(&key(i), &[1; 100]).unwrap(),
            }
            clock.advance(Duration::from_secs(1));
        }
        // 300 × 133 bytes: less than one 64 KiB segment, in one segment.
        assert_eq!(segments(dir.path()).len(), 1, "ttl {ttl:?}");
    }
}

#[test]
fn a_small_segment_does_not_rotate_early() {
    // Below 1/64 of the segment size (1 KiB) the segment stays, however old.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    for i in 0..6 {
        store
            .put_with_ttl(&key(i), &[1; 100], Duration::from_secs(1))
            .unwrap();
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(segments(dir.path()).len(), 1);
}

/// Writes a version 1 segment as the first release wrote it: puts with and without expiry, a
/// batch, a delete and an expire.
fn write_v1_segment(dir: &std::path::Path) {
    let header = SegmentHeader {
        version: 1,
        kind: format::SEGMENT_KIND_LOG,
        prev_log_id: 0,
        segment_id: 1,
        base_seq: 1,
        base_time_s: 0,
    };
    let records: Vec<Vec<EncOp<'_>>> = vec![
        vec![EncOp::Put {
            ns: 0,
            key: b"persistent",
            value: b"v1",
            expires_at: None,
        }],
        vec![EncOp::Put {
            ns: 0,
            key: b"expiring",
            value: b"v2",
            expires_at: Some(T0 + 60_000),
        }],
        vec![
            EncOp::Put {
                ns: 0,
                key: b"a",
                value: b"1",
                expires_at: None,
            },
            EncOp::Put {
                ns: 0,
                key: b"b",
                value: b"2",
                expires_at: Some(T0 - 1),
            },
        ],
        vec![EncOp::Delete { ns: 0, key: b"a" }],
        vec![EncOp::Expire {
            ns: 0,
            key: b"b",
            target_seq: 4,
        }],
    ];
    let mut data = header.encode().to_vec();
    let mut seq = 1;
    for ops in &records {
        let at = data.len();
        data.resize(at + format::record_len(ops), 0);
        format::encode_record(&mut data[at..], 1, seq, ops, &mut Vec::new());
        seq += ops.len() as u64;
    }
    std::fs::write(dir.join("00000000000000000001.seg"), data).unwrap();
}

#[test]
fn a_version_1_store_opens_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_segment(dir.path());
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let check = |store: &Store| {
        assert_eq!(store.get(b"persistent").unwrap().unwrap(), b"v1".as_slice());
        assert_eq!(store.get(b"expiring").unwrap().unwrap(), b"v2".as_slice());
        assert_eq!(store.get(b"a").unwrap(), None);
        assert_eq!(store.get(b"b").unwrap(), None);
    };
    check(&store);
    // Appends to the reopened version 1 segment stay in the version 1 form.
    store.put(b"later", b"v3").unwrap();
    drop(store);
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 1);
    assert_eq!(
        kinds(&segs[0]),
        vec![
            format::KIND_PUT,
            format::KIND_PUT | format::FLAG_EXPIRES,
            format::KIND_BATCH,
            format::KIND_DELETE,
            format::KIND_EXPIRE,
            format::KIND_PUT
        ]
    );
    // Filling it makes a version 2 segment after it; everything reads back after a reopen, and
    // a compaction that rewrites the version 1 segment writes version 2 output.
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    for i in 0..600 {
        store.put(&key(i), &[2; 100]).unwrap();
    }
    for i in 0..600 {
        store.delete(&key(i)).unwrap();
    }
    drop(store);
    let segs = segments(dir.path());
    assert!(segs.len() >= 2);
    let versions: Vec<u16> = segs
        .iter()
        .map(|d| SegmentHeader::decode(&d[..HEADER_LEN]).unwrap().version)
        .collect();
    assert_eq!(versions[0], 1);
    assert!(versions[1..].iter().all(|&v| v == 2), "{versions:?}");
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    check(&store);
    assert_eq!(store.get(b"later").unwrap().unwrap(), b"v3".as_slice());
    let report = store.compact().unwrap();
    assert!(report.segments_rewritten >= 1, "{report:?}");
    drop(store);
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    check(&store);
    assert_eq!(store.get(b"later").unwrap().unwrap(), b"v3".as_slice());
    for i in 0..600 {
        assert_eq!(store.get(&key(i)).unwrap(), None);
    }
    for d in segments(dir.path()) {
        assert_eq!(
            SegmentHeader::decode(&d[..HEADER_LEN]).unwrap().version,
            2,
            "the version 1 segment was rewritten"
        );
    }
}

/// The worked example of FORMAT.md sections 3 and 4, byte for byte.
#[test]
fn format_md_worked_example_is_what_the_store_writes() {
    let dir = tempfile::tempdir().unwrap();
    // 2025-12-31T23:59:00Z.
    let clock = Arc::new(ManualClock::new(1_767_225_540_000));
    let o = Options::default()
        .sync(SyncPolicy::Never)
        .clock(clock.clone())
        .background_threads(false);
    let store = Store::open_with(dir.path(), o).unwrap();
    store
        .put_expiring_at(b"user:1", b"alice", 1_767_225_600_000)
        .unwrap();
    let mut batch = ttlstore::WriteBatch::new();
    batch.put(b"a", b"1");
    batch.delete(b"b");
    store.write_batch(batch).unwrap();
    clock.advance(Duration::from_secs(60));
    store.compact().unwrap();
    drop(store);
    let data = std::fs::read(dir.path().join("00000000000000000001.seg")).unwrap();
    let expected = "54544c5354534547020000000000000001000000000000000100000000000000\
                    c4b85569ead67c8d3c448e8d130000008500000605e0d403757365723a31616c\
                    6963656f31d0561400000004020000000000000002010001016131020001621191\
                    eb420c000000060301000605757365723a31";
    let n = expected.len() / 2;
    let got: String = data[..n].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, expected);
    assert!(data[n..].iter().all(|&b| b == 0), "zeros after the data");
}

#[test]
fn spread_ttls_rotate_at_a_tenth_of_their_mean() {
    // TTLs of 2 s and 18 s (mean 10 s, far apart): a tenth of the mean, 1 s.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open_with(dir.path(), opts(&clock)).unwrap();
    let mut i = 0;
    for _ in 0..30 {
        for j in 0..20 {
            let ttl = if j % 2 == 0 { 2 } else { 18 };
            store
                .put_with_ttl(&key(i), &[3; 100], Duration::from_secs(ttl))
                .unwrap();
            i += 1;
        }
        clock.advance(Duration::from_millis(100));
    }
    assert_eq!(segments(dir.path()).len(), 3);
}
