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
use crate::format::{KIND_DELETE, KIND_EXPIRE, KIND_PUT, Op};
use crate::hint;
use crate::index::{EXPIRE_TOMBSTONE, Entry, STAGED_EXPIRES, Staged, TOMBSTONE};
use crate::options::{Options, RecoveryMode};
use crate::segment::{self, LOCK_FILE, Segment, SegmentInfo};
use crate::state::{State, tombstone_cost};
use crate::storage::{Mapping, OpenMode, Storage};
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
    // The index keeps segment ids in 32 bits, the two highest marking tombstones during replay.
    if ids
        .last()
        .is_some_and(|&id| id >= u64::from(EXPIRE_TOMBSTONE))
    {
        return Err(Error::InvalidArgument {
            what: "segment id beyond 2^32-3".into(),
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

    // Map the sealed segments' hint files first: their sizes bound the index's arena, which is
    // then reserved once instead of grown and copied.
    let mut hints = Vec::with_capacity(segs.len());
    let (mut records, mut words) = (0usize, 0usize);
    for (id, seg) in &segs {
        // The last log segment has a hint only if a clean close sealed it (section 11).
        let map = hint::map(storage, dir, *id)?;
        let sizes = map
            .as_deref()
            .and_then(|m| hint::sizes(crate::storage::mapped(m, 0, m.len())));
        match sizes {
            Some((n, key_bytes)) => {
                records += n;
                words += crate::index::arena_words_bound(n, key_bytes);
            }
            // A scan: a guess, for values of some tens of bytes (the arena grows if it is
            // short; an overshoot costs address space only).
            None => {
                records += seg.mapped_len() / 128;
                words += seg.mapped_len() / 24;
            }
        }
        hints.push(map);
    }

    let mut state = State::default();
    let staged = state.index.begin_staged(records, words);
    let mut r = Replay {
        dir,
        opts,
        state,
        staged,
        last_log_seq: 0,
        last_log: None,
        max_seq: 0,
        seq_floor: 1,
        report,
    };
    let mut active_end: Option<(u64, usize)> = None;
    for ((id, seg), map) in segs.into_iter().zip(hints) {
        if let Some(end) = r.segment(id, seg, Some(id) == last_log, map)? {
            active_end = Some((id, end));
        }
    }
    let staged = std::mem::take(&mut r.staged);
    finish_staged(&mut r.state, staged);
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
    /// Every replayed op, staged in the index (see [`finish_staged`]).
    staged: Staged,
    last_log_seq: u64,
    /// The last log segment replayed so far, and its length.
    last_log: Option<(u64, u64)>,
    max_seq: u64,
    seq_floor: u64,
    report: RecoveryReport,
}

impl Replay<'_> {
    /// Replays one segment. Returns its data end if it is the active (last log) segment and usable.
    fn segment(
        &mut self,
        id: u64,
        seg: Segment,
        is_active: bool,
        hint_map: Option<Arc<dyn Mapping>>,
    ) -> Result<Option<usize>> {
        let storage = &*self.opts.storage;
        let header = match seg.header() {
            Ok(h) => h,
            Err(kind) => {
                // A crash while the last segment was being created leaves a short or zero header
                // and nothing after it: no record in it was ever acknowledged.
                let len = seg.mapped_len();
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
            self.last_log = Some((id, seg.mapped_len() as u64));
        }
        self.seq_floor = self.seq_floor.max(header.base_seq);
        self.report.segments += 1;
        let seg = Arc::new(seg);
        let sid = id as u32;
        let mut info = SegmentInfo::new(seg.clone());
        info.kind = header.kind;
        self.state.segments.insert(sid, info);

        let data = seg.bytes(0, seg.mapped_len());
        // A valid hint of the last log segment means a clean close sealed it: it is replayed
        // like any sealed segment and open starts a new active segment after it. Without one
        // (or with a bad one) it is the active segment and scanned, its tail repaired.
        if self.replay_hint(id, data, hint_map)? {
            return Ok(None);
        }
        let mut acc = SegAcc::default();
        let mut off = HEADER_LEN;
        let mut ops = Vec::new();
        let mut damaged_at: Option<usize> = None;
        loop {
            let err = match format::read_record_in(data, off, &seg.crc, Some(&seg.base), true) {
                Ok(rec) => match rec.ops(&mut ops) {
                    Ok(()) if compacted || rec.seq > self.last_log_seq => {
                        for op in &ops {
                            self.stage_op(&mut acc, sid, off as u32, op);
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
            acc.add_to(info);
        }
        if let Some(at) = damaged_at {
            self.report.truncated_at = Some((id, at as u64));
        }
        if is_active {
            return Ok(Some(end));
        }
        if end < seg.mapped_len() {
            // A crash between creating the next segment and sealing this one, or a salvaged
            // damaged tail: seal it now.
            seal_file(storage, &seg, end)?;
        }
        Ok(None)
    }

    /// Replays a sealed segment from its hint file (mapped as `map`). False if there is no
    /// usable hint.
    fn replay_hint(&mut self, id: u64, data: &[u8], map: Option<Arc<dyn Mapping>>) -> Result<bool> {
        let Some(map) = map else {
            return Ok(false);
        };
        let bytes = crate::storage::mapped(&*map, 0, map.len());
        let sid = id as u32;
        let compacted = self
            .state
            .segments
            .get(&sid)
            .is_some_and(|i| i.kind == SEGMENT_KIND_COMPACTED);
        // One pass checks and stages every entry; a bad hint takes back what it staged, so it
        // changes nothing and the segment is scanned instead.
        let mark = self.state.index.stage_mark(&self.staged);
        let mut acc = SegAcc::default();
        let mut records = 0;
        let mut max_seq = self.max_seq;
        let valid = (|| {
            let mut last = self.last_log_seq;
            let mut prev_rec = None;
            for e in hint::entries(bytes, id, data.len() as u64)? {
                let e = e?;
                let op = e.to_op(data).ok_or("entry outside its segment")?;
                if !compacted && op.seq <= last {
                    return Err("sequences out of order");
                }
                last = last.max(op.seq);
                self.stage_op(&mut acc, sid, e.rec_off, &op);
                if prev_rec != Some(e.rec_off) {
                    records += 1;
                    prev_rec = Some(e.rec_off);
                }
                max_seq = max_seq.max(op.seq);
            }
            Ok::<u64, hint::HintError>(last)
        })();
        let Ok(last) = valid else {
            self.state.index.stage_rollback(&mut self.staged, mark);
            self.report.bad_hints += 1;
            return Ok(false);
        };
        self.report.records += records;
        self.max_seq = max_seq;
        if !compacted {
            self.last_log_seq = last;
        }
        if let Some(info) = self.state.segments.get_mut(&sid) {
            info.data_bytes = (data.len() - HEADER_LEN) as u64;
            info.sealed = true;
            info.has_hint = true;
            acc.add_to(info);
        }
        self.report.segments_from_hints += 1;
        Ok(true)
    }

    /// Stages one replayed op, found in the record at `rec_off` of segment `sid`, and adds to
    /// `acc` what it does to its segment's accounting whatever the replay order.
    fn stage_op(&mut self, acc: &mut SegAcc, sid: u32, rec_off: u32, op: &Op<'_>) {
        acc.min_seq = acc.min_seq.min(op.seq);
        acc.max_seq = acc.max_seq.max(op.seq);
        let (entry, flags) = match op.kind {
            KIND_PUT => (
                crate::state::put_entry(op, sid, rec_off),
                if op.expires_at.is_some() {
                    STAGED_EXPIRES
                } else {
                    0
                },
            ),
            KIND_DELETE | KIND_EXPIRE => {
                acc.tombstone_bytes += tombstone_cost(op);
                (staged_tombstone(op), 0)
            }
            // Decoding refuses other kinds; `State::apply` ignores them too.
            _ => return,
        };
        self.state
            .index
            .stage(&mut self.staged, op.ns, op.key, entry, flags);
    }

    /// The next offset from `from` where a valid record with a fresh sequence starts.
    fn resync(&self, data: &[u8], from: usize, id: u64, compacted: bool) -> Option<usize> {
        let mut ops = Vec::new();
        let seed = format::CrcSeed::new(id);
        (from..data.len().saturating_sub(format::RECORD_PREFIX)).find(|&o| {
            matches!(format::read_record_in(data, o, &seed, None, true), Ok(rec) if (compacted || rec.seq > self.last_log_seq) && rec.ops(&mut ops).is_ok())
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
    if report.truncated_at.is_some() || seg.mapped_len() > end {
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

/// What a segment's replayed ops do to its accounting regardless of replay order: the sequence
/// range and the tombstone bytes (the rest depends on which op each key ends with; see
/// [`finish_staged`]).
struct SegAcc {
    min_seq: u64,
    max_seq: u64,
    tombstone_bytes: u64,
}

impl Default for SegAcc {
    fn default() -> Self {
        SegAcc {
            min_seq: u64::MAX,
            max_seq: 0,
            tombstone_bytes: 0,
        }
    }
}

impl SegAcc {
    fn add_to(&self, info: &mut SegmentInfo) {
        if self.min_seq <= self.max_seq {
            info.saw_seq(self.min_seq);
            info.saw_seq(self.max_seq);
        }
        info.tombstone_bytes += self.tombstone_bytes;
    }
}

/// A delete or expire as a staged record: a tombstone entry that also keeps the op's kind (an
/// expire's `seg` is [`EXPIRE_TOMBSTONE`]) and an expire's target sequence (in `rec_off`, low
/// half, and `cost`, high half), which [`resolve_key`] needs.
fn staged_tombstone(op: &Op<'_>) -> Entry {
    Entry {
        seq: op.seq,
        expires_at: 0,
        seg: if op.kind == KIND_EXPIRE {
            EXPIRE_TOMBSTONE
        } else {
            TOMBSTONE
        },
        rec_off: op.target_seq as u32,
        cost: (op.target_seq >> 32) as u32,
    }
}

/// Replays one key's staged ops, in replay order, exactly as [`State::apply`] does in replay
/// mode: marks in `changed` the ops that changed the key and returns the one it ends with.
fn resolve_key(ops: &[Entry], changed: &mut [bool]) -> usize {
    let mut cur: Option<usize> = None;
    for (i, e) in ops.iter().enumerate() {
        let c = cur.map(|c| &ops[c]);
        let applies = if !e.is_tombstone() {
            // A put changes the key unless it holds a newer (or the same) write.
            c.is_none_or(|c| c.seq < e.seq)
        } else if c.is_some_and(|c| c.seq >= e.seq) {
            false
        } else {
            match c {
                // No current value or a tombstone: the removal is remembered as a tombstone.
                None => true,
                Some(c) if c.is_tombstone() => true,
                // An expire removes the write it names, or an older one; a newer one survives.
                Some(c) => {
                    let target = u64::from(e.rec_off) | (u64::from(e.cost) << 32);
                    !(e.seg == EXPIRE_TOMBSTONE && c.seq > target)
                }
            }
        };
        changed[i] = applies;
        if applies {
            cur = Some(i);
        }
    }
    // The first op always changes the key.
    cur.unwrap_or(0)
}

/// Per-segment accounting that depends on the op each key ends with.
#[derive(Default)]
struct LiveAcc {
    live_bytes: u64,
    live_keys: u64,
    max_expiry: u64,
    has_persistent: bool,
}

/// Ends replay: builds the index from the staged ops, adds to each segment's accounting what
/// [`State::apply`] would have (each put that changed its key adds its cost and key, a later op
/// that replaced it takes them back; max expiry and persistence count every put that changed its
/// key), then drops tombstones and builds the ordered index and the expiry heap. Keys already
/// expired stay (reads never serve them): the expirer logs their expiry and reports them, so that
/// a key whose deadline passed while the process was down is still notified.
fn finish_staged(state: &mut State, staged: Staged) {
    state.index.build_staged(staged, resolve_key);
    // Records arrive in staging order, so a segment's records are contiguous.
    let mut accs: Vec<(u32, LiveAcc)> = Vec::new();
    let mut last = 0;
    state.index.finish_staged(
        |e, expires, changed, current| {
            if e.is_tombstone() || !changed {
                return;
            }
            if accs.get(last).is_none_or(|a| a.0 != e.seg) {
                last = match accs.iter().position(|a| a.0 == e.seg) {
                    Some(p) => p,
                    None => {
                        accs.push((e.seg, LiveAcc::default()));
                        accs.len() - 1
                    }
                };
            }
            let a = &mut accs[last].1;
            if expires {
                a.max_expiry = a.max_expiry.max(e.expires_at);
            } else {
                a.has_persistent = true;
            }
            // A put replaced later added its cost and `State::apply` took the same back.
            if current {
                a.live_bytes += u64::from(e.cost);
                a.live_keys += 1;
            }
        },
        |_, _, e| !e.is_tombstone(),
    );
    for (sid, a) in accs {
        if let Some(info) = state.segments.get_mut(&sid) {
            info.live_bytes += a.live_bytes;
            info.live_keys += a.live_keys;
            info.max_expiry = info.max_expiry.max(a.max_expiry);
            info.has_persistent |= a.has_persistent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// One generated op: (kind 0..3, namespace, key, seq, expiry, target seq, value length).
    type GenOp = (u8, u8, u16, u64, Option<u64>, u64, u8);

    fn op_of<'a>(g: &GenOp, key: &'a [u8], value: &'a [u8]) -> Op<'a> {
        let kind = [KIND_PUT, KIND_DELETE, KIND_EXPIRE][usize::from(g.0 % 3)];
        Op {
            kind,
            seq: g.3,
            ns: g.1,
            key,
            value: if kind == KIND_PUT { value } else { &[] },
            value_offset: 5,
            expires_at: if kind == KIND_PUT { g.4 } else { None },
            target_seq: if kind == KIND_EXPIRE { g.5 } else { 0 },
        }
    }

    fn key_of(g: &GenOp) -> Vec<u8> {
        // Varied lengths, so records differ in size.
        format!("k{}{}", g.2, "x".repeat(usize::from(g.2 % 5))).into_bytes()
    }

    type Accounting = (u64, u64, u64, u64, bool, u64, u64);

    fn accounting(state: &State) -> BTreeMap<u32, Accounting> {
        state
            .segments
            .iter()
            .map(|(&id, i)| {
                (
                    id,
                    (
                        i.live_bytes,
                        i.live_keys,
                        i.tombstone_bytes,
                        i.max_expiry,
                        i.has_persistent,
                        i.min_seq,
                        i.max_seq,
                    ),
                )
            })
            .collect()
    }

    /// Every (namespace, key) → entry, and the keys a scan lists, in its order.
    type Contents = (BTreeMap<(u8, Vec<u8>), Entry>, Vec<(u8, Vec<u8>)>);

    fn contents(state: &mut State) -> Contents {
        let mut all = BTreeMap::new();
        state.index.for_each(|ns, k, e| {
            all.insert((ns, k.to_vec()), *e);
        });
        // Every key is found through the table, and scans list them in order.
        for ((ns, k), e) in &all {
            assert_eq!(state.index.get(*ns, k), Some(*e));
        }
        let mut scanned = Vec::new();
        for ns in 0..3 {
            state.index.scan(ns, b"", None, |k, _| {
                scanned.push((ns, k.to_vec()));
                true
            });
        }
        (all, scanned)
    }

    /// Replays `segs` (a segment's ops, in replay order) both through `State::apply` in replay
    /// mode (the reference) and staged, and checks they end with the same index and accounting.
    fn staged_matches_apply(segs: &[Vec<GenOp>]) {
        let storage = SimStorage::new(1);
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let mut reference = State::default();
        let opts = Options::default();
        let mut staged_state = State::default();
        let staged = staged_state.index.begin_staged(4, 64);
        let mut r = Replay {
            dir,
            opts: &opts,
            state: staged_state,
            staged,
            last_log_seq: 0,
            last_log: None,
            max_seq: 0,
            seq_floor: 1,
            report: RecoveryReport::default(),
        };
        reference.index.begin_bulk(0);
        let value = [9u8; 40];
        for (i, ops) in segs.iter().enumerate() {
            let id = i as u64 + 1;
            let start = crate::segment::SegmentStart {
                base_seq: 1,
                prev_log_id: 0,
                now_ms: 0,
            };
            let seg = Arc::new(Segment::create(&*storage, dir, id, start, 4096, 4096).unwrap());
            reference
                .segments
                .insert(id as u32, SegmentInfo::new(seg.clone()));
            r.state.segments.insert(id as u32, SegmentInfo::new(seg));
            let mut acc = SegAcc::default();
            // Until the mark is rolled back, stage a decoy segment's worth first (a bad hint).
            let mark = r.state.index.stage_mark(&r.staged);
            for (n, g) in ops.iter().enumerate() {
                let key = key_of(g);
                let op = op_of(g, &key, &value[..usize::from(g.6)]);
                r.stage_op(&mut SegAcc::default(), id as u32, 64 + n as u32 * 7, &op);
            }
            r.state.index.stage_rollback(&mut r.staged, mark);
            for (n, g) in ops.iter().enumerate() {
                let key = key_of(g);
                let op = op_of(g, &key, &value[..usize::from(g.6)]);
                let rec_off = 64 + n as u32 * 7;
                reference.apply(id as u32, rec_off, &op, true, None);
                r.stage_op(&mut acc, id as u32, rec_off, &op);
            }
            acc.add_to(r.state.segments.get_mut(&(id as u32)).unwrap());
        }
        reference.finish_replay();
        let staged = std::mem::take(&mut r.staged);
        finish_staged(&mut r.state, staged);
        let mut got = r.state;
        assert_eq!(contents(&mut got), contents(&mut reference));
        assert_eq!(accounting(&got), accounting(&reference));
        let next = reference.index.next_expiry();
        assert_eq!(got.index.next_expiry(), next);
        // Still usable as an index afterwards.
        let key = b"after".to_vec();
        let e = Entry {
            seq: 1000,
            expires_at: 3,
            seg: 1,
            rec_off: 0,
            cost: 0,
        };
        assert_eq!(got.index.upsert(0, &key, e), None);
        assert_eq!(got.index.get(0, &key), Some(e));
        assert_eq!(got.index.next_expiry(), Some(next.map_or(3, |n| n.min(3))));
    }

    fn gen_op(keys: u16, seqs: u64) -> impl Strategy<Value = GenOp> {
        (
            0u8..3,
            0u8..2,
            0..keys,
            1..seqs,
            prop::option::of(0u64..6),
            0..seqs,
            0u8..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Few keys and sequences: duplicates within and across segments, equal sequences (the
        /// copies compaction writes), tombstones before their puts, expires naming older, newer
        /// or the same write, expiries of zero.
        #[test]
        fn staged_replay_matches_apply_on_few_keys(
            segs in prop::collection::vec(prop::collection::vec(gen_op(6, 30), 0..40), 1..5),
        ) {
            staged_matches_apply(&segs);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// Enough ops for the radix sort and the table's wrap-around.
        #[test]
        fn staged_replay_matches_apply_on_many_keys(
            segs in prop::collection::vec(prop::collection::vec(gen_op(4000, 20_000), 0..3000), 1..4),
        ) {
            staged_matches_apply(&segs);
        }
    }

    #[test]
    fn staged_replay_resolves_a_key_across_segments() {
        // A put, its copy in compaction output replayed later, then an older delete, a newer
        // expire naming an older write, and a put after a tombstone.
        let put = |seq, k: u16| (0u8, 0u8, k, seq, Some(50), 0, 3);
        let del = |seq, k: u16| (1u8, 0u8, k, seq, None, 0, 0);
        let exp = |seq, k: u16, target| (2u8, 0u8, k, seq, None, target, 0);
        staged_matches_apply(&[
            vec![put(5, 1), put(6, 2), del(7, 3), put(8, 4)],
            vec![put(9, 1), exp(10, 2, 4), put(11, 3)],
            vec![put(5, 1), put(6, 2), put(2, 3), del(1, 4), exp(12, 4, 8)],
        ]);
    }
}
