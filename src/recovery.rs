//! Opening a directory: lock it, replay its segments in order, rebuild the index, repair a torn
//! tail, and hand the writer its active segment.
//!
//! The rules (FORMAT.md, "Recovery") in short: segments are replayed in id order and records in
//! file order; sequence numbers must strictly increase. Zeros where a record would start end a
//! segment's data. Damage in the last segment is a torn tail: cut back to the last valid record and
//! synced, unless the caller asked for [`RecoveryMode::AbsoluteConsistency`]. Damage elsewhere is
//! [`Error::Corruption`] unless the caller asked for [`RecoveryMode::Salvage`]. An I/O error is
//! always returned as such, never taken for damage.

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{self, RecordError, FORMAT_VERSION, HEADER_LEN};
use crate::options::{Options, RecoveryMode};
use crate::segment::{self, Segment, SegmentInfo, LOCK_FILE};
use crate::state::State;
use std::any::Any;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`crate::Store::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Where a torn or damaged tail was cut: (segment id, offset).
    pub truncated_at: Option<(u64, u64)>,
    /// Bytes of damaged records skipped in [`RecoveryMode::Salvage`].
    pub skipped_bytes: u64,
    /// Leftover files removed (temporary files, a segment whose creation a crash interrupted).
    pub removed_files: Vec<String>,
    /// How long the open took.
    pub duration: Duration,
}

/// Everything `open` hands to the store.
pub struct Recovered {
    pub state: State,
    pub active: Arc<Segment>,
    pub tail: usize,
    pub next_seq: u64,
    pub lock: Box<dyn Any + Send + Sync>,
    pub report: RecoveryReport,
}

/// Opens the directory `dir` with `opts`.
pub fn recover(dir: &Path, opts: &Options) -> Result<Recovered> {
    let started = Instant::now();
    let storage = &*opts.storage;
    storage.create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let names = storage.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    check_ours(dir, &names)?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = storage
        .try_lock(&lock_path)
        .map_err(|e| Error::io("lock", &lock_path, e))?
        .ok_or_else(|| Error::Locked { path: dir.to_path_buf() })?;
    // List again: the lock now keeps everyone else out.
    let names = storage.list_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut report = RecoveryReport::default();
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        let p = dir.join(name);
        storage.remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        report.removed_files.push(name.clone());
    }
    let mut ids: Vec<u64> = names.iter().filter_map(|n| segment::parse_file_name(n)).collect();
    ids.sort_unstable();
    if ids.last().is_some_and(|&id| id >= u64::from(u32::MAX)) {
        return Err(Error::InvalidArgument { what: "segment id beyond 2^32-1".into() });
    }

    let mut r = Replay { dir, opts, state: State::default(), last_seq: 0, seq_floor: 1, report };
    let total: u64 = ids.len() as u64 * opts.segment_size;
    r.state.index.begin_bulk((total / 256).min(1 << 24) as usize);
    let mut last_kept: Option<(u64, usize)> = None;
    for (i, &id) in ids.iter().enumerate() {
        let is_last = i + 1 == ids.len();
        if let Some(end) = r.segment(id, is_last)? {
            last_kept = Some((id, end));
        }
    }
    let now = opts.clock.now_ms();
    r.state.finish_replay(now);
    let next_seq = (r.last_seq + 1).max(r.seq_floor);

    let (active, tail) = match last_kept {
        Some((id, end)) => (open_active(dir, opts, id, end, &mut r.report)?, end),
        None => {
            let id = ids.last().map_or(1, |&l| l + 1);
            let seg = Segment::create(storage, dir, id, next_seq, opts.segment_size)?;
            storage.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))?;
            (Arc::new(seg), HEADER_LEN)
        }
    };
    r.state.segments.entry(active.id as u32).or_insert_with(|| SegmentInfo::new(active.clone()));
    if let Some(info) = r.state.segments.get_mut(&(active.id as u32)) {
        info.seg = active.clone();
        info.sealed = false;
    }
    r.report.duration = started.elapsed();
    Ok(Recovered { state: r.state, active, tail, next_seq, lock, report: r.report })
}

/// Refuses a non-empty directory that holds no ttlstore segment.
fn check_ours(dir: &Path, names: &[String]) -> Result<()> {
    if names.iter().any(|n| segment::parse_file_name(n).is_some()) {
        return Ok(());
    }
    match names.iter().find(|n| n.as_str() != LOCK_FILE && !n.ends_with(".tmp")) {
        Some(found) => Err(Error::NotAStore { path: dir.to_path_buf(), found: found.clone() }),
        None => Ok(()),
    }
}

struct Replay<'a> {
    dir: &'a Path,
    opts: &'a Options,
    state: State,
    last_seq: u64,
    seq_floor: u64,
    report: RecoveryReport,
}

impl Replay<'_> {
    /// Replays one segment. Returns its data end if it is the last one and usable.
    fn segment(&mut self, id: u64, is_last: bool) -> Result<Option<usize>> {
        let storage = &*self.opts.storage;
        let seg = Segment::open(storage, self.dir, id, false)?;
        let header = match seg.header() {
            Ok(h) => h,
            Err(kind) => {
                // A crash while the last segment was being created leaves a short or zero header
                // and nothing after it: no record in it was ever acknowledged.
                let len = seg.map.len();
                let empty = len <= HEADER_LEN || seg.bytes(HEADER_LEN, len - HEADER_LEN).iter().all(|&b| b == 0);
                if is_last && empty && self.opts.recovery != RecoveryMode::AbsoluteConsistency {
                    drop(seg);
                    let p = self.dir.join(segment::file_name(id));
                    storage.remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
                    storage.sync_dir(self.dir).map_err(|e| Error::io("fsync", self.dir, e))?;
                    self.report.removed_files.push(segment::file_name(id));
                    return Ok(None);
                }
                return Err(Error::corrupt(id, 0, kind));
            }
        };
        if header.version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { path: seg.path.clone(), found: header.version, supported: FORMAT_VERSION });
        }
        if header.segment_id != id {
            return Err(Error::corrupt(id, 0, CorruptionKind::WrongSegmentId { found: header.segment_id }));
        }
        self.seq_floor = self.seq_floor.max(header.base_seq);
        self.report.segments += 1;
        let seg = Arc::new(seg);
        let sid = id as u32;
        self.state.segments.insert(sid, SegmentInfo::new(seg.clone()));

        let data = seg.bytes(0, seg.map.len());
        let mut off = HEADER_LEN;
        let mut ops = Vec::new();
        let mut damaged_at: Option<usize> = None;
        loop {
            let err = match format::read_record(data, off, id) {
                Ok(rec) => match rec.ops(&mut ops) {
                    Ok(()) if rec.seq > self.last_seq => {
                        for op in &ops {
                            self.state.apply(sid, off as u32, op, true);
                        }
                        self.last_seq = rec.last_seq(&ops);
                        self.report.records += 1;
                        off += rec.len;
                        continue;
                    }
                    Ok(()) => CorruptionKind::SequenceOutOfOrder { previous: self.last_seq, found: rec.seq },
                    Err(kind) => kind,
                },
                Err(RecordError::End) => {
                    if data[off..].iter().all(|&b| b == 0) {
                        break;
                    }
                    CorruptionKind::Malformed("bytes after the end-of-data zeros")
                }
                Err(RecordError::Corrupt(kind)) => kind,
            };
            // Damage at `off`.
            match self.opts.recovery {
                RecoveryMode::AbsoluteConsistency => return Err(Error::corrupt(id, off as u64, err)),
                RecoveryMode::TolerateTailCorruption if !is_last => {
                    return Err(Error::corrupt(id, off as u64, err));
                }
                RecoveryMode::TolerateTailCorruption => {
                    damaged_at = Some(off);
                    break;
                }
                RecoveryMode::Salvage => match self.resync(data, off + 1, id) {
                    Some(next) => {
                        self.report.skipped_bytes += (next - off) as u64;
                        off = next;
                    }
                    None => {
                        self.report.skipped_bytes += (data.len() - off) as u64;
                        damaged_at = Some(off);
                        break;
                    }
                },
            }
        }
        let end = off;
        if let Some(info) = self.state.segments.get_mut(&sid) {
            info.data_bytes = (end - HEADER_LEN) as u64;
            info.sealed = !is_last;
        }
        if let Some(at) = damaged_at {
            self.report.truncated_at = Some((id, at as u64));
        }
        if is_last {
            return Ok(Some(end));
        }
        if (end as u64) < seg.map.len() as u64 {
            // A crash between creating the next segment and sealing this one: seal it now.
            seal_file(storage, &seg, end)?;
        }
        Ok(None)
    }

    /// The next offset from `from` where a valid record with a fresh sequence starts.
    fn resync(&self, data: &[u8], from: usize, id: u64) -> Option<usize> {
        let mut ops = Vec::new();
        (from..data.len().saturating_sub(format::RECORD_PREFIX)).find(|&o| {
            matches!(format::read_record(data, o, id), Ok(rec) if rec.seq > self.last_seq && rec.ops(&mut ops).is_ok())
        })
    }
}

fn seal_file(storage: &dyn crate::storage::Storage, seg: &Segment, end: usize) -> Result<()> {
    // Reopen writable to cut it: the replay handle is read-only. Only bytes before `end` are ever
    // read through the replay mapping afterwards.
    let file = storage.open(&seg.path, crate::storage::OpenMode::ReadWrite).map_err(|e| Error::io("open", &seg.path, e))?;
    file.set_len(end as u64).map_err(|e| Error::io("truncate", &seg.path, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", &seg.path, e))
}

/// Reopens the last segment for appending: everything after its data is zeroed (cut and
/// re-extended), space is reserved up to the segment size, and the repair is synced.
fn open_active(dir: &Path, opts: &Options, id: u64, end: usize, report: &mut RecoveryReport) -> Result<Arc<Segment>> {
    let storage = &*opts.storage;
    let mut seg = Segment::open(storage, dir, id, true)?;
    let path: PathBuf = seg.path.clone();
    let len = seg.map.len();
    if report.truncated_at.is_some() || len > end {
        crate::failpoint!("recovery.before_tail_repair");
        seg.file.set_len(end as u64).map_err(|e| Error::io("truncate", &path, e))?;
    }
    seg.file.allocate(opts.segment_size.max(end as u64)).map_err(|e| Error::io("fallocate", &path, e))?;
    seg.file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
    seg.remap(true)?;
    Ok(Arc::new(seg))
}
