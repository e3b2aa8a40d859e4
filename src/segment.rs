//! Segment files: naming, creating, mapping, and the per-segment space accounting.

use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN, SegmentHeader};
use crate::storage::{self, Mapping, OpenMode, Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How much the active segment's file grows at a time (never more than the segment size).
pub const RESERVE_STEP: u64 = 4 << 20;

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
    pub map: Arc<dyn Mapping>,
}

impl Segment {
    /// Bytes `start..start+len` of the segment.
    pub fn bytes(&self, start: usize, len: usize) -> &[u8] {
        storage::mapped(&*self.map, start, len)
    }

    /// Creates segment `id` of `size` bytes (space reserved), header written and the file synced
    /// with its metadata. The directory is not synced: the caller does that.
    ///
    /// The mapping covers `size` bytes, but only `reserve` of them are allocated now: the writer
    /// extends the file in steps ([`reserve_step`]) as it fills, so a store never holds much more
    /// disk than data. Bytes past the file's end are never touched.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        id: u64,
        base_seq: u64,
        size: u64,
        reserve: u64,
    ) -> Result<Segment> {
        let path = dir.join(file_name(id));
        let file = storage
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create", &path, e))?;
        let result = (|| {
            file.allocate(reserve.min(size).max(HEADER_LEN as u64))
                .map_err(|e| Error::io("fallocate", &path, e))?;
            let header = SegmentHeader {
                version: format::FORMAT_VERSION,
                kind: format::SEGMENT_KIND_LOG,
                segment_id: id,
                base_seq,
            };
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
            Ok(map) => Ok(Segment {
                id,
                path,
                file,
                map,
            }),
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
        Ok(Segment {
            id,
            path,
            file,
            map,
        })
    }

    /// Maps the file again at its current length (after it was extended).
    /// Maps the file again, writable, over `len` bytes (which may run past its current end: the
    /// writer extends the file before it writes there).
    pub fn remap_writable(&mut self, len: usize) -> Result<()> {
        self.map = self
            .file
            .map(len, true)
            .map_err(|e| Error::io("mmap", &self.path, e))?;
        Ok(())
    }

    /// The header bytes, if the file is long enough.
    pub fn header(&self) -> std::result::Result<SegmentHeader, crate::CorruptionKind> {
        if self.map.len() < HEADER_LEN {
            return Err(crate::CorruptionKind::Truncated);
        }
        SegmentHeader::decode(self.bytes(0, HEADER_LEN))
    }
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
    /// Hashes of every key it holds a record for, built when compaction first needs them.
    pub key_filter: Option<Arc<Vec<u32>>>,
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

/// The hash of a key used in [`SegmentInfo::key_filter`] (FNV-1a, truncated).
pub fn key_hash(ns: u8, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&ns).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// The bytes a put of this shape is accounted as in [`SegmentInfo::live_bytes`].
pub fn put_cost(key_len: usize, val_len: usize, has_expiry: bool) -> u64 {
    (format::RECORD_PREFIX
        + 1
        + 8
        + 1
        + format::varint_len(key_len as u64)
        + format::varint_len(val_len as u64)
        + if has_expiry { 8 } else { 0 }
        + key_len
        + val_len) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
    }
}
