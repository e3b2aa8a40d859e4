//! Segment files: naming, creating, mapping, and the per-segment space accounting.

use crate::error::{Error, Result};
use crate::format::{self, CrcSeed, HEADER_LEN, RecordBase, SegmentHeader};
use crate::storage::{self, Mapping, OpenMode, Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much the active segment's file grows at a time (never more than the segment size).
pub const RESERVE_STEP: u64 = 1 << 20;

/// The allocation step for segments of `segment_size` bytes.
pub fn reserve_step(segment_size: u64) -> u64 {
    segment_size.min(RESERVE_STEP)
}

/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// The file name of segment `id`: 20 zero-padded decimal digits and `.seg`.
pub fn file_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

/// The id in a segment file name, if `name` is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where a new log segment starts, for [`Segment::create`].
#[derive(Debug, Clone, Copy)]
pub struct SegmentStart {
    /// The sequence of its first record.
    pub base_seq: u64,
    /// The log segment it follows, 0 for none.
    pub prev_log_id: u64,
    /// The store's clock at its creation (unix ms).
    pub now_ms: u64,
}

/// An open segment: its file and a mapping of it.
#[derive(Debug)]
pub struct Segment {
    /// The segment id.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<dyn StorageFile>,
    /// A mapping of the file (writable for the active segment).
    map: Arc<dyn Mapping>,
    /// The mapping's address and length, read once: a read of the segment's bytes then costs
    /// a bounds check, not two calls through the mapping's vtable.
    view: View,
    /// What its records are encoded relative to (from its header).
    pub base: RecordBase,
    /// Its records' checksum state before their own bytes.
    pub crc: CrcSeed,
    /// The TTLs written into it while it is the active segment, for early rotation.
    pub ttls: TtlTracker,
}

/// Early rotation (TTL-aware): a segment is the unit of whole-segment drops, and it can only be
/// dropped once its newest record expired, so a segment that takes long to fill compared with
/// the TTLs written into it holds expired data for a long time. The writer therefore seals the
/// active segment early once it holds at least [`early_rotation_min_bytes`] and its age reaches
/// 1/[`EARLY_ROTATION_DIVISOR`] of the mean TTL of the puts written into it (a tenth if their
/// TTLs are spread wide). A store without
/// TTLs never rotates early. Kept in memory only; a reopened active segment starts afresh.
#[derive(Debug)]
pub struct TtlTracker {
    /// When the segment became active (unix ms, the store's clock).
    since_ms: AtomicU64,
    /// Sum of the TTLs (ms) of the puts with an expiry written into it.
    ttl_sum: AtomicU64,
    /// Number of those puts.
    ttl_count: AtomicU64,
    /// The shortest and longest of those TTLs (ms).
    ttl_min: AtomicU64,
    ttl_max: AtomicU64,
}

/// The active segment rotates early once its age reaches the mean TTL written into it divided
/// by this, when its TTLs lie close together (within a quarter of their mean of each other): it
/// then spans at most a twentieth of a TTL and dies whole soon after its first key, which bounds
/// the expired data it keeps on disk to about a fortieth of the live data.
pub const EARLY_ROTATION_DIVISOR: u64 = 20;
/// The divisor when its TTLs are spread wider: such a segment dies key by key and is rewritten
/// by the compactor (grouped by expiry) long before its last key expires, so a shorter segment
/// would gain little and only multiply compaction work.
pub const EARLY_ROTATION_DIVISOR_SPREAD: u64 = 10;

/// The least data an active segment holds for a clean close to seal it and write its hint
/// (1/16 of the segment size, 4 MiB for the default): a smaller one is cheaper to scan at the
/// next open than to seal, and sealing it would leave many small segments behind a store that
/// is opened and closed often.
pub fn close_seal_min_bytes(segment_size: u64) -> u64 {
    segment_size / 16
}

/// The least data an active segment holds before it may rotate early: 1/64 of the segment
/// size (1 MiB for the default 64 MiB), so that rotation, a few fsyncs, stays rare.
pub fn early_rotation_min_bytes(segment_size: u64) -> u64 {
    segment_size / 64
}

impl TtlTracker {
    /// A copy of what the tracker has seen so far.
    pub fn snapshot(&self) -> Self {
        let copy = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        TtlTracker {
            since_ms: copy(&self.since_ms),
            ttl_sum: copy(&self.ttl_sum),
            ttl_count: copy(&self.ttl_count),
            ttl_min: copy(&self.ttl_min),
            ttl_max: copy(&self.ttl_max),
        }
    }

    /// A tracker for a segment that became active at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TtlTracker {
            since_ms: AtomicU64::new(now_ms),
            ttl_sum: AtomicU64::new(0),
            ttl_count: AtomicU64::new(0),
            ttl_min: AtomicU64::new(u64::MAX),
            ttl_max: AtomicU64::new(0),
        }
    }

    /// Notes the expiries of `ops`, written at `now_ms`. Called by the writer, under its lock
    /// (the atomics only make the shared `Segment` mutable; there is one writer).
    pub fn note(&self, now_ms: u64, ops: &[format::EncOp<'_>]) {
        // A segment opened again at startup starts its age at its first put with a TTL.
        let _ = self
            .since_ms
            .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        for op in ops {
            if let format::EncOp::Put {
                expires_at: Some(e),
                ..
            } = *op
            {
                let ttl = e.saturating_sub(now_ms);
                self.ttl_sum.fetch_add(ttl, Ordering::Relaxed);
                self.ttl_count.fetch_add(1, Ordering::Relaxed);
                self.ttl_min.fetch_min(ttl, Ordering::Relaxed);
                self.ttl_max.fetch_max(ttl, Ordering::Relaxed);
            }
        }
    }

    /// True once a put with an expiry was noted.
    pub fn has_ttls(&self) -> bool {
        self.ttl_count.load(Ordering::Relaxed) > 0
    }

    /// The mean TTL (ms) of the puts with an expiry written into the segment while it was active
    /// in this process, if there were any.
    pub fn mean_ttl(&self) -> Option<u64> {
        let count = self.ttl_count.load(Ordering::Relaxed);
        (count > 0).then(|| self.ttl_sum.load(Ordering::Relaxed) / count)
    }

    /// True if the active segment, holding `data_bytes` of records, should be sealed now,
    /// before more is appended (see [`TtlTracker`]).
    pub fn rotation_due(&self, now_ms: u64, data_bytes: u64, segment_size: u64) -> bool {
        let count = self.ttl_count.load(Ordering::Relaxed);
        if count == 0 || data_bytes < early_rotation_min_bytes(segment_size) {
            return false;
        }
        let mean = self.ttl_sum.load(Ordering::Relaxed) / count;
        let spread = self
            .ttl_max
            .load(Ordering::Relaxed)
            .saturating_sub(self.ttl_min.load(Ordering::Relaxed));
        let divisor = if spread <= mean / 4 {
            EARLY_ROTATION_DIVISOR
        } else {
            EARLY_ROTATION_DIVISOR_SPREAD
        };
        let age = now_ms.saturating_sub(self.since_ms.load(Ordering::Relaxed));
        age >= mean / divisor
    }
}

/// The address and length of a segment's mapping.
#[derive(Debug)]
struct View {
    ptr: *const u8,
    len: usize,
}

impl View {
    fn of(map: &dyn Mapping) -> View {
        View {
            ptr: map.as_ptr(),
            len: map.len(),
        }
    }
}

// SAFETY: `View` is the address of a mapping its `Segment` owns (through `map`), which lives as
// long as the segment does and is `Send + Sync` itself; the view only reads through it, under the
// contract of `storage::mapped`.
unsafe impl Send for View {}
// SAFETY: as for `Send`.
unsafe impl Sync for View {}

impl Segment {
    fn new(
        id: u64,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        map: Arc<dyn Mapping>,
        base: RecordBase,
        ttls: TtlTracker,
    ) -> Segment {
        Segment {
            id,
            path,
            file,
            view: View::of(&*map),
            map,
            base,
            crc: CrcSeed::new(id),
            ttls,
        }
    }

    /// The same segment seen through another mapping of its file (the writer swaps the active
    /// segment's writable mapping for a read-only one when it seals it).
    pub fn with_map(&self, map: Arc<dyn Mapping>) -> Segment {
        Segment {
            id: self.id,
            path: self.path.clone(),
            file: self.file.clone(),
            view: View::of(&*map),
            map,
            base: self.base,
            crc: self.crc.clone(),
            ttls: self.ttls.snapshot(),
        }
    }

    /// The mapping of the file (writable for the active segment).
    pub fn map(&self) -> &Arc<dyn Mapping> {
        &self.map
    }

    /// The mapped length.
    pub fn mapped_len(&self) -> usize {
        self.view.len
    }

    /// Bytes `start..start+len` of the segment.
    ///
    /// # Panics
    /// If the range is outside the mapping (see [`storage::mapped`]).
    #[inline]
    pub fn bytes(&self, start: usize, len: usize) -> &[u8] {
        // SAFETY: the view is `self.map`'s address and length, and `self.map` keeps the mapping
        // alive at that address as long as the borrow of `self`.
        unsafe { storage::mapped_at(self.view.ptr, self.view.len, start, len) }
    }

    /// Creates segment `id` of `size` bytes (space reserved), header written and the file synced
    /// with its metadata. The directory is not synced: the caller does that. `start.now_ms` (the
    /// store's clock) becomes the header's base time, in whole seconds, and starts the segment's
    /// [`TtlTracker`]. Recovery checks that the log segment it follows, if present, ends at
    /// sequence `base_seq - 1`.
    ///
    /// The mapping covers `size` bytes, but only `reserve` of them are allocated now: the writer
    /// extends the file in steps ([`reserve_step`]) as it fills, so a store never holds much more
    /// disk than data. Bytes past the file's end are never touched.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        id: u64,
        start: SegmentStart,
        size: u64,
        reserve: u64,
    ) -> Result<Segment> {
        let SegmentStart {
            base_seq,
            prev_log_id,
            now_ms,
        } = start;
        let path = dir.join(file_name(id));
        let file = storage
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", &path, e))?;
        let header = SegmentHeader {
            version: format::FORMAT_VERSION,
            kind: format::SEGMENT_KIND_LOG,
            // Segment ids stay below 2^32 - 1 (the writer refuses more).
            prev_log_id: u32::try_from(prev_log_id).unwrap_or(0),
            segment_id: id,
            base_seq,
            base_time_s: base_time_s(now_ms),
        };
        let result = (|| {
            file.allocate(reserve.min(size).max(HEADER_LEN as u64))
                .map_err(|e| Error::io("fallocate", &path, e))?;
            file.write_all_at(&header.encode(), 0)
                .map_err(|e| Error::io("write", &path, e))?;
            crate::failpoint!("segment.create.before_sync");
            file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
            let map = file
                .map(size as usize, true)
                .map_err(|e| Error::io("mmap", &path, e))?;
            Ok(map)
        })();
        match result {
            Ok(map) => Ok(Segment::new(
                id,
                path,
                file,
                map,
                header.record_base(),
                TtlTracker::new(now_ms),
            )),
            Err(e) => {
                // Leave nothing half-made behind; a failure to remove is reported by the next open.
                let _ = storage.remove_file(&path);
                Err(e)
            }
        }
    }

    /// Opens an existing segment, mapping `len` bytes (its current length when `None`).
    pub fn open(storage: &dyn Storage, dir: &Path, id: u64, writable: bool) -> Result<Segment> {
        let path = dir.join(file_name(id));
        let mode = if writable {
            OpenMode::ReadWrite
        } else {
            OpenMode::Read
        };
        let file = storage
            .open(&path, mode)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let len = usize::try_from(len)
            .map_err(|_| Error::corrupt(id, 0, crate::CorruptionKind::Truncated))?;
        let map = file
            .map(len, writable)
            .map_err(|e| Error::io("mmap", &path, e))?;
        // A header that does not decode leaves the version 1 base: its records are not read
        // (recovery and inspection check the header first), or, for a compact record, fail to
        // decode against the header bytes themselves.
        let base = if len >= HEADER_LEN {
            SegmentHeader::decode(storage::mapped(&*map, 0, HEADER_LEN))
                .map_or(RecordBase::V1, |h| h.record_base())
        } else {
            RecordBase::V1
        };
        Ok(Segment::new(id, path, file, map, base, TtlTracker::new(0)))
    }

    /// Maps the file again at its current length (after it was extended).
    /// Maps the file again, writable, over `len` bytes (which may run past its current end: the
    /// writer extends the file before it writes there).
    pub fn remap_writable(&mut self, len: usize) -> Result<()> {
        self.map = self
            .file
            .map(len, true)
            .map_err(|e| Error::io("mmap", &self.path, e))?;
        self.view = View::of(&*self.map);
        Ok(())
    }

    /// The header bytes, if the file is long enough.
    pub fn header(&self) -> std::result::Result<SegmentHeader, crate::CorruptionKind> {
        if self.view.len < HEADER_LEN {
            return Err(crate::CorruptionKind::Truncated);
        }
        SegmentHeader::decode(self.bytes(0, HEADER_LEN))
    }
}

/// The header base time (unix seconds) of a segment created at `now_ms`.
pub fn base_time_s(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

/// What the store knows about one segment, kept in memory and rebuilt at open.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// The open segment.
    pub seg: Arc<Segment>,
    /// Bytes of records in it (header excluded); the end of its data is `HEADER_LEN + data`.
    pub data_bytes: u64,
    /// Bytes of records that still hold a live key's current value (approximate for batches:
    /// each batch entry counts its own fields plus a record's fixed overhead).
    pub live_bytes: u64,
    /// Number of live keys whose value is in this segment.
    pub live_keys: u64,
    /// Bytes of delete and expire records.
    pub tombstone_bytes: u64,
    /// The latest expiry of any put in it (unix ms), 0 if none has one.
    pub max_expiry: u64,
    /// True if it holds a put without expiry.
    pub has_persistent: bool,
    /// False for the active segment.
    pub sealed: bool,
    /// [`format::SEGMENT_KIND_LOG`] or [`format::SEGMENT_KIND_COMPACTED`].
    pub kind: u16,
    /// Smallest sequence of any op in it (`u64::MAX` when empty).
    pub min_seq: u64,
    /// Largest sequence of any op in it (0 when empty).
    pub max_seq: u64,
    /// True once a valid hint file exists for it.
    pub has_hint: bool,
    /// Every key it holds a record for, as (key hash, smallest sequence of a record of a key
    /// with that hash here), sorted; built when compaction first needs it.
    pub key_filter: Option<Arc<KeyFilter>>,
}

impl SegmentInfo {
    /// A fresh entry for a segment with no records yet.
    pub fn new(seg: Arc<Segment>) -> Self {
        SegmentInfo {
            seg,
            data_bytes: 0,
            live_bytes: 0,
            live_keys: 0,
            tombstone_bytes: 0,
            max_expiry: 0,
            has_persistent: false,
            sealed: false,
            kind: format::SEGMENT_KIND_LOG,
            min_seq: u64::MAX,
            max_seq: 0,
            has_hint: false,
            key_filter: None,
        }
    }

    /// Notes that an op with sequence `seq` lives here.
    pub fn saw_seq(&mut self, seq: u64) {
        self.min_seq = self.min_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
    }

    /// Fraction of its record bytes that no longer hold a live value (tombstones count as dead).
    pub fn dead_ratio(&self) -> f64 {
        if self.data_bytes == 0 {
            return 0.0;
        }
        1.0 - (self.live_bytes.min(self.data_bytes) as f64 / self.data_bytes as f64)
    }

    /// Offset one past the last record.
    pub fn end(&self) -> usize {
        HEADER_LEN + self.data_bytes as usize
    }
}

/// The keys a segment holds records for, with the oldest sequence of each, for the tombstone
/// checks of compaction: one sorted `u64` per distinct key hash, the hash in the high 32 bits and
/// in the low 32 the smallest sequence of a record of a key with that hash here, as an offset from
/// the smallest sequence of the records given, capped at `u32::MAX`. The cap and hash collisions
/// (keys sharing a hash share the smaller sequence) only ever make a sequence look older, which
/// errs on the side of keeping a tombstone. 8 bytes per distinct key, and up to 1 more for a
/// directory by the hashes' high bits, which leads a lookup to its few candidates at once: a
/// binary search over all of them missed the cache at most of its 16 steps, for each segment
/// a tombstone is checked against: 86% of the samples in compaction's rewrite pass under a
/// short-TTL churn.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    base: u64,
    pairs: Vec<u64>,
    /// `dir[b]`: the first pair whose hash, shifted right by `shift`, is at least `b`; one more
    /// entry than there are buckets, for the end of the last.
    dir: Vec<u32>,
    shift: u32,
}

impl KeyFilter {
    /// The filter of records given as (key hash, sequence) pairs, in any order.
    pub fn new(records: &[(u32, u64)]) -> KeyFilter {
        let base = records.iter().map(|r| r.1).min().unwrap_or(0);
        let mut pairs: Vec<u64> = records
            .iter()
            .map(|&(h, seq)| (u64::from(h) << 32) | (seq - base).min(u64::from(u32::MAX)))
            .collect();
        // Sorted by hash, then offset: the first pair of each hash has its smallest sequence.
        pairs.sort_unstable();
        pairs.dedup_by_key(|p| *p >> 32);
        pairs.shrink_to_fit();
        // Between 4 and 8 pairs a bucket on average (the hashes are uniform).
        let bits = (pairs.len() / 4).max(1).ilog2();
        let shift = 32 - bits;
        let buckets = 1usize << bits;
        let mut dir = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            while i < pairs.len() && ((pairs[i] >> 32) >> shift) < b as u64 {
                i += 1;
            }
            dir.push(i as u32);
        }
        dir.push(pairs.len() as u32);
        KeyFilter {
            base,
            pairs,
            dir,
            shift,
        }
    }

    /// True if the segment may hold a record of a key with hash `hash` and a sequence below
    /// `seq`.
    pub fn may_hold_older(&self, hash: u32, seq: u64) -> bool {
        let b = (u64::from(hash) >> self.shift) as usize;
        let (Some(&start), Some(&end)) = (self.dir.get(b), self.dir.get(b + 1)) else {
            return false;
        };
        self.pairs[start as usize..end as usize]
            .iter()
            .find(|&&p| (p >> 32) as u32 >= hash)
            .is_some_and(|&p| {
                (p >> 32) as u32 == hash && self.base + (p & u64::from(u32::MAX)) < seq
            })
    }
}

/// The hash of a key used in [`SegmentInfo::key_filter`] (FNV-1a, truncated).
pub fn key_hash(ns: u8, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&ns).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

// A version 1 put record (prefix, kind, sequence, namespace, two lengths, expiry, key, value)
// of the largest key and value stays below 4 GiB: `put_cost` fits a `u32`.
const _: () = assert!(crate::MAX_KEY_LEN + crate::MAX_VALUE_LEN + 64 < u32::MAX as usize);

/// The bytes a put is accounted as in [`SegmentInfo::live_bytes`], from where its record starts
/// (`rec_off`) and where its value starts and how long it is: for a put that is a record of its
/// own (the common case, compact or version 1) its exact record length, from the record's start
/// to the end of its value, which is the record's last field. For an entry of a batch, whose
/// value can lie far from the batch's start, the length of a version 1 record of the same put
/// (approximate: the batch's own fields are not shared out). At most a version 1 record's
/// length, which the key and value limits keep below 4 GiB: it fits the index entry's `u32`.
pub fn put_cost(
    key_len: usize,
    rec_off: u32,
    val_off: u32,
    val_len: usize,
    has_expiry: bool,
) -> u32 {
    let alone = (format::RECORD_PREFIX
        + 1
        + 8
        + 1
        + format::varint_len(key_len as u64)
        + format::varint_len(val_len as u64)
        + if has_expiry { 8 } else { 0 }
        + key_len
        + val_len) as u64;
    let span = u64::from(val_off.saturating_sub(rec_off)) + val_len as u64;
    // A record of its own is never longer than its version 1 form; a batch entry's span is.
    span.min(alone) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_filter_keeps_each_hash_with_its_oldest_sequence() {
        let f = KeyFilter::new(&[(7, 120), (3, 100), (7, 105), (9, 300)]);
        assert!(f.may_hold_older(7, 106));
        assert!(!f.may_hold_older(7, 105));
        assert!(f.may_hold_older(3, 101));
        assert!(!f.may_hold_older(3, 100));
        assert!(!f.may_hold_older(4, u64::MAX));
        assert!(!KeyFilter::new(&[]).may_hold_older(0, u64::MAX));
    }

    proptest::proptest! {
        /// The directory finds exactly what a search of all the pairs would: every hash with its
        /// oldest sequence, none other, hashes crowded in a few buckets or spread over all.
        #[test]
        fn key_filter_answers_like_a_map_of_oldest_sequences(
            records in proptest::collection::vec((proptest::prelude::any::<u32>(), 1u64..1000), 0..3000),
            crowd in 0u32..3,
            probes in proptest::collection::vec((proptest::prelude::any::<u32>(), 0u64..1100), 200),
        ) {
            // crowd 1: hashes share their high bits; crowd 2: few distinct hashes, at both ends.
            let fix = |h: u32| match crowd {
                1 => h & 0x00FF_FFFF,
                2 => if h.is_multiple_of(2) { h % 7 } else { u32::MAX - h % 5 },
                _ => h,
            };
            let records: Vec<(u32, u64)> = records.into_iter().map(|(h, q)| (fix(h), q)).collect();
            let f = KeyFilter::new(&records);
            let mut oldest = std::collections::HashMap::new();
            for &(h, q) in &records {
                let o = oldest.entry(h).or_insert(q);
                *o = (*o).min(q);
            }
            let known = records.iter().map(|r| r.0);
            for (h, q) in probes.into_iter().map(|(h, q)| (fix(h), q)).chain(known.map(|h| (h, 500))) {
                proptest::prop_assert_eq!(
                    f.may_hold_older(h, q),
                    oldest.get(&h).is_some_and(|&o| o < q),
                    "hash {:#x} below {}", h, q
                );
            }
        }
    }

    #[test]
    fn key_filter_caps_far_sequences_toward_older() {
        // An offset past u32::MAX is stored capped: the sequence looks older than it is, which
        // only ever keeps a tombstone, never drops one.
        let far = 10 + (1u64 << 33);
        let f = KeyFilter::new(&[(1, 10), (2, far)]);
        assert!(f.may_hold_older(2, far + 1));
        assert!(f.may_hold_older(2, far));
        assert!(!f.may_hold_older(1, 10));
    }

    #[test]
    fn names_roundtrip() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
    }
}
