//! The bodies of the fuzz targets in `fuzz/`, as plain functions of `&[u8]`, so that the same code
//! runs under `cargo fuzz` (nightly or `--sanitizer none` on stable) and as an ordinary test over
//! the committed seed corpus (`tests/fuzz_corpus.rs`). Not part of the API.
//!
//! Every function panics exactly when it finds a bug: a panic inside ttlstore, an error of the
//! wrong kind, or a difference from what must hold. The `expect`s and `assert`s here are those
//! checks (this is a test harness compiled into the crate so that `fuzz/` can reach it), not error
//! handling.
//!
//! - [`decode_segment`]: arbitrary bytes as a segment file, through the public [`crate::format`]
//!   functions; every record that decodes re-encodes to the same bytes.
//! - [`open_directory`]: a directory of fuzzed segment and hint files, opened in each recovery
//!   mode on a [`SimStorage`]; the open succeeds or fails with a corruption-class error, and
//!   everything an opened store serves reads back without error.
//! - [`operation_sequence`]: bytes as a program of writes, TTLs, clock advances, compactions,
//!   injected I/O errors (through [`FaultStorage`]), reopens and simulated power losses, checked
//!   against an in-memory model.

use crate::format::{self, EncOp, HEADER_LEN, RecordError, SegmentHeader};
use crate::storage::{CrashMode, FaultKind, FaultStorage, SimStorage, Storage};
use crate::{Error, ManualClock, Options, RecoveryMode, Store, SyncPolicy, WriteBatch};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A cursor over fuzz input; reads past the end give zeros.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = start + n;
        &self.data[start..end]
    }
}

/// Decodes `data` as a segment file (its id taken from the header when it decodes, else 1) and
/// checks every record that reads: it lies inside the data, its operations decode, and encoding
/// them again gives the same bytes.
pub fn decode_segment(data: &[u8]) {
    let id = if data.len() >= HEADER_LEN {
        match SegmentHeader::decode(&data[..HEADER_LEN]) {
            Ok(h) => {
                assert_eq!(
                    SegmentHeader::decode(&h.encode()).ok(),
                    Some(h),
                    "a header re-encodes"
                );
                h.segment_id
            }
            Err(_) => 1,
        }
    } else {
        1
    };
    let mut off = HEADER_LEN.min(data.len());
    let mut ops = Vec::new();
    let mut offsets = Vec::new();
    while off < data.len() {
        let rec = match format::read_record(data, off, id) {
            Ok(r) => r,
            Err(RecordError::End) | Err(RecordError::Corrupt(_)) => break,
        };
        assert!(
            rec.len >= format::RECORD_PREFIX && off + rec.len <= data.len(),
            "record bounds"
        );
        assert_eq!(rec.bytes, &data[off..off + rec.len]);
        ops.clear();
        if rec.ops(&mut ops).is_err() {
            break;
        }
        assert!(!ops.is_empty(), "a record that decodes has operations");
        let enc: Vec<EncOp<'_>> = ops
            .iter()
            .map(|o| match o.kind {
                format::KIND_PUT => EncOp::Put {
                    ns: o.ns,
                    key: o.key,
                    value: o.value,
                    expires_at: o.expires_at,
                },
                format::KIND_DELETE => EncOp::Delete {
                    ns: o.ns,
                    key: o.key,
                },
                _ => EncOp::Expire {
                    ns: o.ns,
                    key: o.key,
                    target_seq: o.target_seq,
                },
            })
            .collect();
        // Re-encoded after the same header bytes, so that compact records get the same base.
        let base = data
            .get(..HEADER_LEN)
            .and_then(|h| SegmentHeader::decode(h).ok())
            .map_or(format::RecordBase::V1, |h| h.record_base());
        let len = format::record_len_at(&base, rec.seq, &enc);
        // Records that decode but are not in canonical form (a batch of one, a varint with
        // redundant bytes, a version 1 kind where a compact one would do) need not re-encode
        // identically; those of canonical length must.
        if len == rec.len {
            let head = HEADER_LEN.min(data.len());
            let mut out = data[..head].to_vec();
            out.resize(head + len, 0);
            offsets.clear();
            format::encode_record_at(
                &mut out[head..],
                &base,
                &format::CrcSeed::new(id),
                rec.seq,
                &enc,
                &mut offsets,
            );
            let again = format::read_record(&out, head, id).expect("an encoded record reads back");
            let mut ops2 = Vec::new();
            again.ops(&mut ops2).expect("an encoded record decodes");
            assert_eq!(ops2.len(), ops.len());
            for (a, b) in ops.iter().zip(&ops2) {
                assert_eq!(
                    (
                        a.kind,
                        a.seq,
                        a.ns,
                        a.key,
                        a.value,
                        a.expires_at,
                        a.target_seq
                    ),
                    (
                        b.kind,
                        b.seq,
                        b.ns,
                        b.key,
                        b.value,
                        b.expires_at,
                        b.target_seq
                    )
                );
            }
        }
        off += rec.len;
    }
}

/// Decodes `data` as a hint file: the first 8 bytes (u64 LE) are the length of the segment it
/// claims to describe, the rest is the hint file. Decoding must not panic; what decodes must
/// encode back to exactly the same bytes, and the streaming and collecting decoders must agree.
pub fn decode_hint(data: &[u8]) {
    let (len_bytes, bytes) = data.split_at(data.len().min(8));
    let mut l = [0u8; 8];
    l[..len_bytes.len()].copy_from_slice(len_bytes);
    let segment_len = u64::from_le_bytes(l);
    let id = bytes.get(16..24).map_or(0, |b| {
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        u64::from_le_bytes(x)
    });
    let collected = crate::hint::decode(bytes, id, segment_len);
    let streamed: Option<Vec<_>> = crate::hint::entries(bytes, id, segment_len)
        .ok()
        .and_then(|it| it.collect::<Result<Vec<_>, _>>().ok());
    assert_eq!(
        collected.as_ref().ok(),
        streamed.as_ref(),
        "the two decoders disagree"
    );
    if let Ok(entries) = collected {
        let again = crate::hint::encode(id, segment_len, &entries).expect("re-encode");
        // Reserved header bytes are not checked on read; compare everything else.
        assert_eq!(again.len(), bytes.len(), "re-encoded length");
        assert_eq!(&again[40..], &bytes[40..], "re-encoded entries");
        assert_eq!(&again[..12], &bytes[..12], "re-encoded magic and version");
        assert_eq!(&again[16..32], &bytes[16..32], "re-encoded id and length");
    }
}

/// Encodes files for [`open_directory`]: `(is_hint, id, bytes)` each.
pub fn encode_directory(mode: u8, files: &[(bool, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![mode];
    for (hint, id, bytes) in files {
        out.push(u8::from(*hint));
        out.push(*id);
        let len = bytes.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&bytes[..len]);
    }
    out
}

fn is_corruption_class(e: &Error) -> bool {
    matches!(
        e,
        Error::Corruption { .. } | Error::UnsupportedVersion { .. } | Error::InvalidArgument { .. }
    )
}

/// Opens a directory made of the files `data` describes (see [`encode_directory`]: a recovery
/// mode byte, then per file a kind byte, a one-byte id, a two-byte length and the bytes) on a
/// [`SimStorage`]. The open must succeed or fail with `Corruption` / `UnsupportedVersion` /
/// `InvalidArgument`; an opened store must serve every key it lists without error, agree between
/// scans and point reads, and reopen to the same content.
pub fn open_directory(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let mode = match input.u8() % 3 {
        0 => RecoveryMode::TolerateTailCorruption,
        1 => RecoveryMode::AbsoluteConsistency,
        _ => RecoveryMode::Salvage,
    };
    let fs = SimStorage::with_file_capacity(0, 1 << 20);
    let dir = Path::new("/fuzz/db");
    if fs.create_dir_all(dir).is_err() {
        return;
    }
    let mut files = 0;
    let mut any_segment = false;
    while !input.done() && files < 16 {
        let hint = input.u8() & 1 == 1;
        let id = u64::from(input.u8() % 8 + 1);
        let len = usize::from(input.u16());
        let bytes = input.bytes(len).to_vec();
        any_segment |= !hint;
        let name = if hint {
            format!("{id:020}.hint")
        } else {
            format!("{id:020}.seg")
        };
        fs.write_file(&dir.join(name), &bytes);
        files += 1;
    }
    let opts = || {
        Options::default()
            .sync(SyncPolicy::Never)
            .segment_size(4096)
            .recovery_mode(mode)
            .background_threads(false)
            .clock(Arc::new(ManualClock::new(1_700_000_000_000)))
            .storage(fs.clone())
    };
    let store = match Store::open_with(dir, opts()) {
        Ok(s) => s,
        Err(e) if is_corruption_class(&e) => return,
        // Hint files without any segment are no store.
        Err(Error::NotAStore { .. }) if !any_segment => return,
        Err(e) => {
            panic!("opening fuzzed files failed with an error that is not about the data: {e:?}")
        }
    };
    let content = dump(&store);
    let _ = store.stats();
    drop(store);
    // What was repaired reopens, to the same content.
    let store = Store::open_with(dir, opts()).expect("a directory that opened once reopens");
    assert_eq!(
        dump(&store),
        content,
        "a reopen changed what the store serves"
    );
}

/// Every key of the default namespace with its value and expiry, via a scan and point reads.
fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>, Option<u64>)> {
    let mut out = Vec::new();
    for r in store.scan_prefix(b"") {
        let (k, v) = r.expect("a store that opened serves what it lists");
        let item = store
            .get_item(&k)
            .expect("a listed key reads")
            .expect("a listed key is there");
        assert_eq!(&*item.value, &*v, "scan and get disagree");
        out.push((k, v.to_vec(), item.expires_at));
    }
    out
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// Runs `data` as a program against a store on a [`FaultStorage`] over a [`SimStorage`], and
/// checks every answer against a model. Opcodes (one byte, then arguments): put, put with TTL,
/// delete, expire, persist, batch, clock advance, compact, inject a one-shot fault (write, sync,
/// allocate, create or rename), reopen, simulated power loss after a sync. A failed operation may
/// have happened or not; the program then reopens and takes what the store shows for the keys that
/// operation touched, if it is one of the two.
pub fn operation_sequence(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let sim = SimStorage::with_file_capacity(u64::from(input.u8()), 1 << 20);
    let (fs, faults) = FaultStorage::new(sim.clone());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let dir = Path::new("/fuzz/ops");
    let opts = || {
        Options::default()
            .sync(SyncPolicy::Never)
            .segment_size(4096)
            .background_threads(false)
            .clock(clock.clone())
            .storage(fs.clone())
    };
    let mut store = Store::open_with(dir, opts()).expect("an empty store opens");
    let mut model = Model::new();
    let key = |b: u8| format!("k{}", b % 16).into_bytes();
    let mut steps = 0;
    while !input.done() && steps < 400 {
        steps += 1;
        let now = crate::Clock::now_ms(&*clock);
        let live =
            |m: &Model, k: &[u8]| m.get(k).filter(|(_, e)| e.is_none_or(|e| e > now)).cloned();
        let op = input.u8() % 12;
        let k = key(input.u8());
        let mut after = model.clone();
        let result: crate::Result<()> = match op {
            0 | 1 => {
                let len = usize::from(input.u8());
                let v = vec![input.u8(); len];
                after.insert(k.clone(), (v.clone(), None));
                store.put(&k, &v)
            }
            2 => {
                let v = vec![input.u8(); 3];
                let ttl = u64::from(input.u16()) + 1;
                after.insert(k.clone(), (v.clone(), Some(now + ttl)));
                store.put_with_ttl(&k, &v, Duration::from_millis(ttl))
            }
            3 => {
                let was = live(&model, &k).is_some();
                after.remove(&k);
                store
                    .delete(&k)
                    .map(|r| assert_eq!(r, was, "delete's answer"))
            }
            4 => {
                let ttl = u64::from(input.u16()) + 1;
                let cur = live(&model, &k);
                if let Some((v, _)) = &cur {
                    after.insert(k.clone(), (v.clone(), Some(now + ttl)));
                }
                store
                    .expire(&k, Duration::from_millis(ttl))
                    .map(|r| assert_eq!(r, cur.is_some(), "expire's answer"))
            }
            5 => {
                let cur = live(&model, &k);
                let had = cur.as_ref().is_some_and(|(_, e)| e.is_some());
                if let Some((v, _)) = cur.filter(|_| had) {
                    after.insert(k.clone(), (v, None));
                }
                store
                    .persist(&k)
                    .map(|r| assert_eq!(r, had, "persist's answer"))
            }
            6 => {
                let mut b = WriteBatch::new();
                for _ in 0..input.u8() % 4 + 1 {
                    let k = key(input.u8());
                    if input.u8().is_multiple_of(3) {
                        b.delete(&k);
                        after.remove(&k);
                    } else {
                        b.put(&k, b"batch");
                        after.insert(k, (b"batch".to_vec(), None));
                    }
                }
                store.write_batch(b)
            }
            7 => {
                clock.advance(Duration::from_millis(u64::from(input.u16())));
                Ok(())
            }
            8 => store.compact().map(|_| ()),
            9 => {
                let kind = [
                    FaultKind::Write,
                    FaultKind::Sync,
                    FaultKind::Allocate,
                    FaultKind::Create,
                    FaultKind::Rename,
                ][usize::from(input.u8() % 5)];
                faults.inject(kind, [5, 28][usize::from(input.u8() % 2)], 1);
                Ok(())
            }
            10 => {
                drop(store);
                faults.clear_all();
                store = reopen(dir, opts());
                Ok(())
            }
            _ => {
                // A power loss right after a sync loses nothing.
                match store.sync() {
                    Ok(()) => {
                        sim.crash(CrashMode::KeepNone);
                        drop(store);
                        sim.restart();
                        faults.clear_all();
                        store = reopen(dir, opts());
                    }
                    Err(e) => assert!(
                        matches!(e, Error::Io { .. } | Error::Poisoned { .. }),
                        "{e:?}"
                    ),
                }
                Ok(())
            }
        };
        let now = crate::Clock::now_ms(&*clock);
        match result {
            Ok(()) => model = after,
            Err(e) => {
                assert!(
                    matches!(e, Error::Io { .. } | Error::Poisoned { .. }),
                    "an injected I/O fault surfaced as {e:?}"
                );
                // Either outcome is allowed for what failed; settle it from a reopened store.
                drop(store);
                faults.clear_all();
                store = reopen(dir, opts());
                let keys: std::collections::BTreeSet<Vec<u8>> =
                    model.keys().chain(after.keys()).cloned().collect();
                let seen = observe(&store, &keys);
                if seen == visible(&after, now) {
                    model = after;
                } else {
                    assert_eq!(
                        seen,
                        visible(&model, now),
                        "after a failed operation ({e}) the store is neither before nor after it"
                    );
                }
            }
        }
        // Every key agrees with the model.
        let keys: std::collections::BTreeSet<Vec<u8>> = (0..16u8).map(key).collect();
        assert_eq!(
            observe(&store, &keys),
            visible(&model, now),
            "store and model differ after op {op}"
        );
    }
}

fn reopen(dir: &Path, opts: Options) -> Store {
    Store::open_with(dir, opts).unwrap_or_else(|e| panic!("reopening after a fault failed: {e:?}"))
}

fn visible(m: &Model, now: u64) -> Model {
    m.iter()
        .filter(|(_, (_, e))| e.is_none_or(|e| e > now))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn observe(store: &Store, keys: &std::collections::BTreeSet<Vec<u8>>) -> Model {
    keys.iter()
        .filter_map(|k| {
            store
                .get_item(k)
                .expect("reads work, also on a poisoned store")
                .map(|i| (k.clone(), (i.value.to_vec(), i.expires_at)))
        })
        .collect()
}
