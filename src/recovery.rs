//! Opening a directory: lock it, replay its segments, rebuild the index, repair a torn tail, and
//! hand the writer its active segment.
//!
//! The rules (FORMAT.md, "Recovery") in short: segments are replayed in id order; a sealed
//! segment with a valid hint file is replayed from the hint, without reading its data. Among log
//! segments sequence numbers must strictly increase; compaction output holds copies of older
//! records and is exempt (replay keeps, per key, the op with the highest sequence, and tombstones
//! stay in the index until replay ends, so order between segments does not matter). Zeros where a
//! record would start end a segment's data. Damage in the last log segment is a torn tail: cut back
//! to the last valid record and synced, unless the caller asked for
//! [`RecoveryMode::AbsoluteConsistency`]. Damage elsewhere is [`Error::Corruption`] unless the
//! caller asked for [`RecoveryMode::Salvage`]. An I/O error is always returned as such.

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, FORMAT_VERSION, HEADER_LEN, RecordError, SEGMENT_KIND_COMPACTED, SEGMENT_KIND_LOG,
};
use crate::hint;
use crate::options::{Options, RecoveryMode};
use crate::segment::{self, LOCK_FILE, Segment, SegmentInfo};
use crate::state::State;
use crate::storage::{OpenMode, Storage};
use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`crate::Store::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: usize,
    /// Of those, replayed from their hint file.
    pub segments_from_hints: usize,
    /// Hint files found unusable (the segment was scanned instead).
    pub bad_hints: usize,
    /// Records (or hint entries) replayed.
    pub records: u64,
    /// Where a torn or damaged tail was cut: (segment id, offset).
    pub truncated_at: Option<(u64, u64)>,
    /// Bytes of damaged records skipped in [`RecoveryMode::Salvage`].
    pub skipped_bytes: u64,
    /// Leftover files removed (temporary files, orphan hints, a segment whose creation a crash
    /// interrupted).
    pub removed_files: Vec<String>,
    /// How long the open took.
    pub duration: Duration,
}

/// Everything `open` hands to the store.
pub struct Recovered {
    pub state: State,
    pub active: Arc<Segment>,
    pub tail: usize,
    pub allocated: u64,
    pub next_seq: u64,
    pub next_segment_id: u64,
    pub lock: Box<dyn Any + Send + Sync>,
    pub report: RecoveryReport,
}

/// Opens the directory `dir` with `opts`.
pub fn recover(dir: &Path, opts: &Options) -> Result<Recovered> {
    let started = Instant::now();
    let storage = &*opts.storage;
    let existed = storage.list_dir(dir).is_ok();
    storage
        .create_dir_all(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    if !existed {
        // Make the new directory's own entry durable, or a power loss could take the store away.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage
                .sync_dir(parent)
                .map_err(|e| Error::io("fsync", parent, e))?;
        }
    }
    let names = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?;
    check_ours(dir, &names)?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = storage
        .try_lock(&lock_path)
        .map_err(|e| Error::io("lock", &lock_path, e))?
        .ok_or_else(|| Error::Locked {
            path: dir.to_path_buf(),
        })?;
    // List again: the lock now keeps everyone else out.
    let names = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?;
    let mut report = RecoveryReport::default();
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_file_name(n))
        .collect();
    ids.sort_unstable();
    for name in &names {
        let orphan_hint =
            hint::parse_file_name(name).is_some_and(|id| ids.binary_search(&id).is_err());
        if name.ends_with(".tmp") || orphan_hint {
            let p = dir.join(name);
            storage
                .remove_file(&p)
                .map_err(|e| Error::io("remove", &p, e))?;
            report.removed_files.push(name.clone());
        }
    }
    if ids.last().is_some_and(|&id| id >= u64::from(u32::MAX)) {
        return Err(Error::InvalidArgument {
            what: "segment id beyond 2^32-1".into(),
        });
    }

    // Open every segment and read its header first: the active segment is the last *log*
    // segment, which need not be the last id (compaction output takes fresh ids too).
    let mut segs = Vec::with_capacity(ids.len());
    for &id in &ids {
        segs.push((id, Segment::open(storage, dir, id, false)?));
    }
    let last_log = segs
        .iter()
        .rev()
        .find(|(_, s)| s.header().map_or(true, |h| h.kind == SEGMENT_KIND_LOG))
        .map(|(id, _)| *id);

    let mut r = Replay {
        dir,
        opts,
        state: State::default(),
        last_log_seq: 0,
        last_log: None,
        max_seq: 0,
        seq_floor: 1,
        report,
    };
    let total: u64 = segs.iter().map(|(_, s)| s.map.len() as u64).sum();
    r.state
        .index
        .begin_bulk((total / 160).min(1 << 26) as usize);
    let mut active_end: Option<(u64, usize)> = None;
    for (id, seg) in segs {
        if let Some(end) = r.segment(id, seg, Some(id) == last_log)? {
            active_end = Some((id, end));
        }
    }
    r.state.finish_replay();
    let next_seq = (r.last_log_seq.max(r.max_seq) + 1).max(r.seq_floor);
    let mut next_segment_id = ids.last().map_or(1, |&l| l + 1);

    let (active, tail, allocated) = match active_end {
        Some((id, end)) => {
            let (seg, allocated) = open_active(dir, opts, id, end, &r.report)?;
            (seg, end, allocated)
        }
        None => {
            let id = next_segment_id;
            next_segment_id += 1;
            let seg = Segment::create(
                storage,
                dir,
                id,
                segment::SegmentStart {
                    base_seq: next_seq,
                    prev_log_id: r.last_log.map_or(0, |(id, _)| id),
                    now_ms: opts.clock.now_ms(),
                },
                opts.segment_size,
                segment::reserve_step(opts.segment_size),
            )?;
            storage
                .sync_dir(dir)
                .map_err(|e| Error::io("fsync", dir, e))?;
            let allocated = seg
                .file
                .len()
                .map_err(|e| Error::io("stat", &seg.path, e))?;
            (Arc::new(seg), HEADER_LEN, allocated)
        }
    };
    let info = r
        .state
        .segments
        .entry(active.id as u32)
        .or_insert_with(|| SegmentInfo::new(active.clone()));
    info.seg = active.clone();
    info.sealed = false;
    r.report.duration = started.elapsed();
    Ok(Recovered {
        state: r.state,
        active,
        tail,
        allocated,
        next_seq,
        next_segment_id,
        lock,
        report: r.report,
    })
}

/// Refuses a non-empty directory that holds no ttlstore segment.
fn check_ours(dir: &Path, names: &[String]) -> Result<()> {
    if names.iter().any(|n| segment::parse_file_name(n).is_some()) {
        return Ok(());
    }
    match names
        .iter()
        .find(|n| n.as_str() != LOCK_FILE && !n.ends_with(".tmp"))
    {
        Some(found) => Err(Error::NotAStore {
            path: dir.to_path_buf(),
            found: found.clone(),
        }),
        None => Ok(()),
    }
}

struct Replay<'a> {
    dir: &'a Path,
    opts: &'a Options,
    state: State,
    last_log_seq: u64,
    /// The last log segment replayed so far, and its length.
    last_log: Option<(u64, u64)>,
    max_seq: u64,
    seq_floor: u64,
    report: RecoveryReport,
}

impl Replay<'_> {
    /// Replays one segment. Returns its data end if it is the active (last log) segment and usable.
    fn segment(&mut self, id: u64, seg: Segment, is_active: bool) -> Result<Option<usize>> {
        let storage = &*self.opts.storage;
        let header = match seg.header() {
            Ok(h) => h,
            Err(kind) => {
                // A crash while the last segment was being created leaves a short or zero header
                // and nothing after it: no record in it was ever acknowledged.
                let len = seg.map.len();
                let empty = len <= HEADER_LEN
                    || seg
                        .bytes(HEADER_LEN, len - HEADER_LEN)
                        .iter()
                        .all(|&b| b == 0);
                if is_active && empty && self.opts.recovery != RecoveryMode::AbsoluteConsistency {
                    drop(seg);
                    let p = self.dir.join(segment::file_name(id));
                    storage
                        .remove_file(&p)
                        .map_err(|e| Error::io("remove", &p, e))?;
                    storage
                        .sync_dir(self.dir)
                        .map_err(|e| Error::io("fsync", self.dir, e))?;
                    self.report.removed_files.push(segment::file_name(id));
                    return Ok(None);
                }
                return Err(Error::corrupt(id, 0, kind));
            }
        };
        if header.version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: seg.path.clone(),
                found: header.version,
                supported: FORMAT_VERSION,
            });
        }
        if header.segment_id != id {
            return Err(Error::corrupt(
                id,
                0,
                CorruptionKind::WrongSegmentId {
                    found: header.segment_id,
                },
            ));
        }
        if header.kind != SEGMENT_KIND_LOG && header.kind != SEGMENT_KIND_COMPACTED {
            return Err(Error::corrupt(
                id,
                10,
                CorruptionKind::Malformed("unknown segment kind"),
            ));
        }
        let compacted = header.kind == SEGMENT_KIND_COMPACTED;
        // Format version 2: a log segment names the log segment it follows, which ended at
        // `base_seq - 1` when this one was created and was never written again. If that one is
        // here and ends earlier, records are missing from its end (a cut at a record boundary
        // reads as a valid, shorter segment otherwise).
        if !compacted {
            if let Some((prev, prev_len)) = self.last_log
                && header.prev_log_id != 0
                && u64::from(header.prev_log_id) == prev
                && self.last_log_seq.saturating_add(1) != header.base_seq
                && self.opts.recovery != RecoveryMode::Salvage
            {
                return Err(Error::corrupt(
                    prev,
                    prev_len,
                    CorruptionKind::Malformed(
                        "log segment ends before the sequence its successor starts at",
                    ),
                ));
            }
            self.last_log = Some((id, seg.map.len() as u64));
        }
        self.seq_floor = self.seq_floor.max(header.base_seq);
        self.report.segments += 1;
        let seg = Arc::new(seg);
        let sid = id as u32;
        let mut info = SegmentInfo::new(seg.clone());
        info.kind = header.kind;
        self.state.segments.insert(sid, info);

        let data = seg.bytes(0, seg.map.len());
        if !is_active && self.replay_hint(id, data)? {
            return Ok(None);
        }
        let mut off = HEADER_LEN;
        let mut ops = Vec::new();
        let mut damaged_at: Option<usize> = None;
        loop {
            let err = match format::read_record(data, off, id) {
                Ok(rec) => match rec.ops(&mut ops) {
                    Ok(()) if compacted || rec.seq > self.last_log_seq => {
                        for op in &ops {
                            self.state.apply(sid, off as u32, op, true);
                        }
                        let last = rec.last_seq(&ops);
                        if !compacted {
                            self.last_log_seq = last;
                        }
                        self.max_seq = self.max_seq.max(last);
                        self.report.records += 1;
                        off += rec.len;
                        continue;
                    }
                    Ok(()) => CorruptionKind::SequenceOutOfOrder {
                        previous: self.last_log_seq,
                        found: rec.seq,
                    },
                    Err(kind) => kind,
                },
                Err(RecordError::End) => {
                    // The active segment's tail is cut and re-extended with zeros at open, so
                    // only sealed segments need their zero tail checked.
                    if is_active || data[off..].iter().all(|&b| b == 0) {
                        break;
                    }
                    CorruptionKind::Malformed("bytes after the end-of-data zeros")
                }
                Err(RecordError::Corrupt(kind)) => kind,
            };
            // Damage at `off`.
            match self.opts.recovery {
                RecoveryMode::AbsoluteConsistency => {
                    return Err(Error::corrupt(id, off as u64, err));
                }
                RecoveryMode::TolerateTailCorruption if !is_active => {
                    return Err(Error::corrupt(id, off as u64, err));
                }
                RecoveryMode::TolerateTailCorruption => {
                    damaged_at = Some(off);
                    break;
                }
                RecoveryMode::Salvage => match self.resync(data, off + 1, id, compacted) {
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
            info.sealed = !is_active;
        }
        if let Some(at) = damaged_at {
            self.report.truncated_at = Some((id, at as u64));
        }
        if is_active {
            return Ok(Some(end));
        }
        if end < seg.map.len() {
            // A crash between creating the next segment and sealing this one, or a salvaged
            // damaged tail: seal it now.
            seal_file(storage, &seg, end)?;
        }
        Ok(None)
    }

    /// Replays a sealed segment from its hint file. False if there is no usable hint.
    fn replay_hint(&mut self, id: u64, data: &[u8]) -> Result<bool> {
        let Some(map) = hint::map(&*self.opts.storage, self.dir, id)? else {
            return Ok(false);
        };
        let bytes = crate::storage::mapped(&*map, 0, map.len());
        let sid = id as u32;
        let compacted = self
            .state
            .segments
            .get(&sid)
            .is_some_and(|i| i.kind == SEGMENT_KIND_COMPACTED);
        // Pass 1 checks every entry, pass 2 applies them: a bad hint changes nothing and the
        // segment is scanned instead. Entries are decoded in place, twice, rather than collected.
        let valid = (|| {
            let mut last = self.last_log_seq;
            for e in hint::entries(bytes, id, data.len() as u64)? {
                let e = e?;
                let op = e.to_op(data).ok_or("entry outside its segment")?;
                if !compacted && op.seq <= last {
                    return Err("sequences out of order");
                }
                last = last.max(op.seq);
            }
            Ok::<u64, hint::HintError>(last)
        })();
        let Ok(last) = valid else {
            self.report.bad_hints += 1;
            return Ok(false);
        };
        let mut prev_rec = None;
        for e in hint::entries(bytes, id, data.len() as u64)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(op) = e.to_op(data) else { continue };
            self.state.apply(sid, e.rec_off, &op, true);
            if prev_rec != Some(e.rec_off) {
                self.report.records += 1;
                prev_rec = Some(e.rec_off);
            }
            self.max_seq = self.max_seq.max(op.seq);
        }
        if !compacted {
            self.last_log_seq = last;
        }
        if let Some(info) = self.state.segments.get_mut(&sid) {
            info.data_bytes = (data.len() - HEADER_LEN) as u64;
            info.sealed = true;
            info.has_hint = true;
        }
        self.report.segments_from_hints += 1;
        Ok(true)
    }

    /// The next offset from `from` where a valid record with a fresh sequence starts.
    fn resync(&self, data: &[u8], from: usize, id: u64, compacted: bool) -> Option<usize> {
        let mut ops = Vec::new();
        (from..data.len().saturating_sub(format::RECORD_PREFIX)).find(|&o| {
            matches!(format::read_record(data, o, id), Ok(rec) if (compacted || rec.seq > self.last_log_seq) && rec.ops(&mut ops).is_ok())
        })
    }
}

fn seal_file(storage: &dyn Storage, seg: &Segment, end: usize) -> Result<()> {
    // Reopen writable to cut it: the replay handle is read-only. Only bytes before `end` are ever
    // read through the replay mapping afterwards.
    let file = storage
        .open(&seg.path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open", &seg.path, e))?;
    file.set_len(end as u64)
        .map_err(|e| Error::io("truncate", &seg.path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync", &seg.path, e))
}

/// Reopens the last log segment for appending: everything after its data is cut (so the space
/// the writer extends into reads as zeros), one allocation step is reserved past the data, the
/// repair is synced, and the segment is mapped over its full size.
fn open_active(
    dir: &Path,
    opts: &Options,
    id: u64,
    end: usize,
    report: &RecoveryReport,
) -> Result<(Arc<Segment>, u64)> {
    let storage = &*opts.storage;
    let mut seg = Segment::open(storage, dir, id, true)?;
    let path = seg.path.clone();
    if report.truncated_at.is_some() || seg.map.len() > end {
        crate::failpoint!("recovery.before_tail_repair");
        seg.file
            .set_len(end as u64)
            .map_err(|e| Error::io("truncate", &path, e))?;
    }
    let size = opts.segment_size.max(end as u64);
    let reserve = (end as u64 + segment::reserve_step(opts.segment_size)).min(size);
    seg.file
        .allocate(reserve)
        .map_err(|e| Error::io("fallocate", &path, e))?;
    seg.file
        .sync_all()
        .map_err(|e| Error::io("fsync", &path, e))?;
    seg.remap_writable(size as usize)?;
    Ok((Arc::new(seg), reserve))
}
