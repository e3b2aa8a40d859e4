//! Read-only inspection of a data directory or of one segment file: list its records, verify every
//! byte of it, summarise its space and expiry, look a key up. The `ttlstore-inspect` tool is a thin
//! shell over this module.
//!
//! Everything here reads files with plain `std::fs` calls and nothing else: it takes no lock,
//! never writes, never opens the store, and so is safe to run while a process has the store open.
//! Files are read whole (not mapped: a writer may truncate the active segment when it seals it,
//! and a mapping of a shrinking file faults). A writer may be appending to the active segment
//! while it is read: zeros or a torn record at the end of the *last* segment are the end of the
//! data, never an error.
//!
//! State is computed the way recovery computes it (see `state.rs`): operations are replayed in
//! sequence order, a later sequence wins, a delete removes its key, and an expire record removes
//! its key only if the key's current write is the one the record names. Time is a parameter
//! (`at_ms`, unix milliseconds), so the same files can be evaluated at any moment.
//!
//! ```
//! # fn main() -> ttlstore::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use ttlstore::inspect::{Inspector, Lookup};
//! use ttlstore::{Namespace, Store};
//! let store = Store::open(dir.path())?;
//! store.put_expiring_at(b"k", b"v", 4_000_000_000_000)?;
//! store.sync()?;
//! // The store stays open: inspection takes no lock.
//! let ins = Inspector::open(dir.path())?;
//! match ins.get(Namespace::DEFAULT, b"k", 3_999_999_999_000)? {
//!     Lookup::Live(found) => assert_eq!(found.value, b"v"),
//!     other => panic!("{other:?}"),
//! }
//! assert!(ins.verify()?.is_clean());
//! # Ok(()) }
//! ```

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, FORMAT_VERSION, HEADER_LEN, KIND_BATCH, KIND_DELETE, KIND_EXPIRE, KIND_PUT, Op,
    RecordError, SEGMENT_KIND_COMPACTED, SEGMENT_KIND_LOG, SegmentHeader,
};
use crate::hint::{self, HintEntry};
use crate::segment::{self, LOCK_FILE};
use crate::store::Namespace;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// How many bytes of a value [`OpRecord::value_preview`] keeps.
pub const VALUE_PREVIEW_LEN: usize = 32;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The kind of one logged operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Sets a key.
    Put,
    /// Removes a key.
    Delete,
    /// Removes a key if its current write is the one named.
    Expire,
}

impl OpKind {
    fn from_byte(b: u8) -> Option<OpKind> {
        match b {
            KIND_PUT => Some(OpKind::Put),
            KIND_DELETE => Some(OpKind::Delete),
            KIND_EXPIRE => Some(OpKind::Expire),
            _ => None,
        }
    }

    /// `"put"`, `"delete"` or `"expire"`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Expire => "expire",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an operation sits inside a batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPos {
    /// Position of the operation in the batch, from 0.
    pub index: u32,
    /// Number of operations in the batch.
    pub count: u32,
}

/// One operation of a record whose checksum and fields check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// The segment id.
    pub segment: u64,
    /// Offset of the record in its segment (for a batch, of the whole batch record).
    pub offset: u64,
    /// Encoded length of the record, prefix included (for a batch, of the whole record).
    pub record_len: u64,
    /// The operation's sequence number.
    pub seq: u64,
    /// What the operation does.
    pub kind: OpKind,
    /// Set when the operation is part of an atomic batch record.
    pub batch: Option<BatchPos>,
    /// The namespace.
    pub namespace: Namespace,
    /// The key.
    pub key: Vec<u8>,
    /// Length of the value (puts; 0 otherwise).
    pub value_len: u64,
    /// The first [`VALUE_PREVIEW_LEN`] bytes of the value.
    pub value_preview: Vec<u8>,
    /// What the value means, for values the store's own layers write and describe (see
    /// [`value_description`]).
    pub value_description: Option<String>,
    /// Absolute expiry of a put, unix ms.
    pub expires_at: Option<u64>,
    /// For an expire: the sequence of the write it expires.
    pub target_seq: Option<u64>,
    /// A problem with a record whose checksum is good: its sequence does not follow the one
    /// before it ([`CorruptionKind::SequenceOutOfOrder`]) or is below its segment's base.
    pub problem: Option<CorruptionKind>,
}

/// A stretch of a segment that does not hold valid records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment id.
    pub segment: u64,
    /// Where the damage starts.
    pub offset: u64,
    /// How many bytes until the next valid record (or the end of the file).
    pub len: u64,
    /// What is wrong at `offset`.
    pub kind: CorruptionKind,
    /// True when this is the unfinished tail of the last segment: what a crash, or a writer
    /// appending right now, leaves. Treated as the end of the data, not as corruption.
    pub torn_tail: bool,
}

/// One item of [`Inspector::records`]: an operation, or a damaged stretch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordEntry {
    /// A valid operation.
    Op(OpRecord),
    /// Bytes that do not form a valid record (checksum failure, truncation, garbage).
    Damaged(Damage),
}

/// One segment file of the inspected path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// The id in its name.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// True for the active segment: the last *log* segment (compaction output takes fresh ids
    /// too, so it need not be the highest id). A writer may be appending to it right now.
    pub last: bool,
}

/// A read-only view of a data directory, or of one segment file.
#[derive(Debug, Clone)]
pub struct Inspector {
    path: PathBuf,
    segments: Vec<SegmentFile>,
    /// Names of the directory's other entries (empty when a single file is inspected).
    others: Vec<String>,
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> Error {
    Error::io(op, path, e)
}

impl Inspector {
    /// Opens `path`, a data directory or a single `NNNNNNNNNNNNNNNNNNNN.seg` file. Lists the
    /// files; reads nothing else yet.
    ///
    /// Errors: [`Error::InvalidArgument`] when `path` does not exist or is an empty directory,
    /// [`Error::NotAStore`] when it holds no segment or names a file that is not one,
    /// [`Error::Io`] when it cannot be listed.
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector> {
        let path = path.as_ref().to_path_buf();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::InvalidArgument {
                    what: format!("{} does not exist", path.display()),
                });
            }
            Err(e) => return Err(io_err("stat", &path, e)),
        };
        if meta.is_dir() {
            let names = list_dir(&path)?;
            let mut segments: Vec<SegmentFile> = names
                .iter()
                .filter_map(|n| {
                    segment::parse_file_name(n).map(|id| SegmentFile {
                        id,
                        path: path.join(n),
                        last: false,
                    })
                })
                .collect();
            if segments.is_empty() {
                return match names.iter().find(|n| n.as_str() != LOCK_FILE) {
                    Some(found) => Err(Error::NotAStore {
                        path,
                        found: found.clone(),
                    }),
                    None => Err(Error::InvalidArgument {
                        what: format!(
                            "{} holds no segment files: it is not a ttlstore data directory",
                            path.display()
                        ),
                    }),
                };
            }
            segments.sort_by_key(|s| s.id);
            if let Some(l) = segments.iter_mut().rev().find(|s| is_log_segment(&s.path)) {
                l.last = true;
            }
            let others = names
                .into_iter()
                .filter(|n| segment::parse_file_name(n).is_none())
                .collect();
            return Ok(Inspector {
                path,
                segments,
                others,
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(id) = segment::parse_file_name(&name) else {
            return Err(Error::NotAStore {
                path: path.clone(),
                found: format!("{name} (not a segment file name)"),
            });
        };
        // The file is the active segment if it is a log segment and its directory holds no log
        // segment with a higher id (or cannot be listed): then a torn tail in it is the end of
        // the data.
        let dir = path.parent().unwrap_or(Path::new("."));
        let last = is_log_segment(&path)
            && match list_dir(dir) {
                Ok(names) => !names
                    .iter()
                    .filter_map(|n| segment::parse_file_name(n).filter(|&other| other > id))
                    .any(|other| is_log_segment(&dir.join(segment::file_name(other)))),
                Err(_) => true,
            };
        Ok(Inspector {
            path: path.clone(),
            segments: vec![SegmentFile { id, path, last }],
            others: Vec::new(),
        })
    }

    /// The directory holding the segments.
    fn segments_dir(&self) -> &Path {
        match self.segments.first().and_then(|s| s.path.parent()) {
            Some(d) => d,
            None => &self.path,
        }
    }

    /// The path given to [`Inspector::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment files, by id.
    pub fn segments(&self) -> &[SegmentFile] {
        &self.segments
    }

    /// Every operation and damaged stretch, segment by segment in id order and in file order
    /// within a segment. A segment whose header is bad yields an error and the walk goes on with
    /// the next one. A damaged record is reported and the walk resumes at the next valid record.
    pub fn records(&self) -> Records<'_> {
        Records {
            ins: self,
            next_segment: 0,
            pending: VecDeque::new(),
            last_seq: 0,
        }
    }

    /// Checks every file: names, headers, every record's checksum and fields, sequence order,
    /// bytes after the end of the data. Returns every problem found; an `Err` only when the
    /// checks could not run: an I/O failure, or [`Error::UnsupportedVersion`] for a segment
    /// written by a newer ttlstore.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        for name in &self.others {
            let problem = |what: String| Finding {
                file: name.clone(),
                segment: None,
                offset: None,
                message: what,
            };
            if name == LOCK_FILE {
                continue;
            } else if name.ends_with(".tmp") {
                rep.notes.push(problem(
                    "leftover temporary file; the next open of the store removes it".into(),
                ));
            } else if let Some(id) = hint::parse_file_name(name) {
                if !self.segments.iter().any(|s| s.id == id) {
                    rep.notes.push(problem(
                        "hint file of a segment that no longer exists; the next open removes it"
                            .into(),
                    ));
                }
            } else {
                rep.problems
                    .push(problem("unknown file in the data directory".into()));
            }
        }
        let mut last_seq = 0u64;
        let hints: HashSet<u64> = self
            .others
            .iter()
            .filter_map(|n| hint::parse_file_name(n))
            .collect();
        for seg in &self.segments {
            let name = file_name_of(seg);
            let finding = |offset: Option<u64>, message: String| Finding {
                file: name.clone(),
                segment: Some(seg.id),
                offset,
                message,
            };
            let Some(data) = read_segment(seg)? else {
                rep.notes.push(finding(
                    None,
                    "segment vanished while being read (compaction retired it)".into(),
                ));
                continue;
            };
            rep.segments += 1;
            rep.bytes += data.len() as u64;
            let header = match check_header(&data, seg) {
                Ok(HeaderCheck::Good(h)) => h,
                Ok(HeaderCheck::Unborn) => {
                    rep.notes.push(finding(
                        Some(0),
                        "header incomplete and no data: a segment whose creation was interrupted; \
                         the next open removes it"
                            .into(),
                    ));
                    continue;
                }
                // A newer format cannot be checked by this build: verify could not run.
                Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
                Err(e) => {
                    let offset = match &e {
                        Error::Corruption { offset, .. } => Some(*offset),
                        _ => Some(0),
                    };
                    rep.problems.push(finding(offset, problem_text(&e)));
                    continue;
                }
            };
            let mut end = HEADER_LEN;
            let log = header.kind == SEGMENT_KIND_LOG;
            let mut expected_hint: Vec<HintEntry<'_>> = Vec::new();
            let mut damaged = false;
            scan_segment(&data, seg.id, seg.last, |ev| {
                match ev {
                Scan::Record { offset, len, seq, last_op_seq, ops, .. } => {
                    rep.records += 1;
                    expected_hint.extend(ops.iter().map(|op| HintEntry::of(op, offset)));
                    // Compaction output holds copies of older records: exempt from the order.
                    if log && seq <= last_seq {
                        let kind = CorruptionKind::SequenceOutOfOrder { previous: last_seq, found: seq };
                        rep.problems.push(finding(Some(offset as u64), kind.to_string()));
                    } else if seq < header.base_seq {
                        rep.problems.push(finding(
                            Some(offset as u64),
                            format!("sequence {seq} is below the segment's base sequence {}", header.base_seq),
                        ));
                    }
                    if log {
                        last_seq = last_seq.max(last_op_seq);
                    }
                    end = offset + len;
                }
                Scan::Damaged(d) if d.torn_tail => rep.notes.push(finding(
                    Some(d.offset),
                    format!(
                        "torn tail of the last segment ({} bytes: {}): treated as the end of the data \
                         (a crash or a writer appending right now leaves this)",
                        d.len, d.kind
                    ),
                )),
                Scan::Damaged(d) => {
                    damaged = true;
                    rep.problems.push(finding(Some(d.offset), format!("{} ({} bytes skipped)", d.kind, d.len)));
                }
            }
            });
            if hints.contains(&seg.id) {
                let file = hint::file_name(seg.id);
                let hint_finding = |offset: Option<u64>, message: String| Finding {
                    file: file.clone(),
                    segment: Some(seg.id),
                    offset,
                    message,
                };
                let path = self.segments_dir().join(&file);
                match std::fs::read(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("read", &path, e)),
                    Ok(_) if seg.last => rep.notes.push(hint_finding(
                        None,
                        "hint file of the active segment; open ignores it".into(),
                    )),
                    // The segment's own problems are listed already; its hint cannot match.
                    Ok(_) if damaged => {}
                    Ok(bytes) => {
                        if let Some(why) = check_hint(&bytes, seg.id, &data, &expected_hint) {
                            rep.problems
                                .push(hint_finding(None, CorruptionKind::BadHint(why).to_string()));
                        }
                    }
                }
            }
            if !seg.last && data.len() > end && data[end..].iter().all(|&b| b == 0) {
                rep.notes.push(finding(
                    Some(end as u64),
                    format!(
                        "{} bytes of zeros after the data of a sealed segment (its sealing was \
                         interrupted; the next open truncates it)",
                        data.len() - end
                    ),
                ));
            }
        }
        Ok(rep)
    }

    /// The sequences of the puts that are live at `at_ms` (current for their key and not
    /// expired). For filtering [`Inspector::records`].
    pub fn live_set(&self, at_ms: u64) -> Result<LiveSet> {
        let replay = self.replay()?;
        let seqs = replay
            .ops
            .iter()
            .zip(&replay.class)
            .filter(|(op, _)| op.kind == OpKind::Put)
            .filter(|(op, class)| **class == Class::Current && !expired(op.expires_at, at_ms))
            .map(|(op, _)| op.seq)
            .collect();
        Ok(LiveSet { seqs })
    }

    /// Space and expiry figures at `at_ms`, per segment and in total.
    ///
    /// Fails with [`Error::Corruption`] on damage other than a torn tail of the last segment (the
    /// figures would be wrong; run [`Inspector::verify`] for the full list), and with
    /// [`Error::UnsupportedVersion`] for a segment of a newer format.
    pub fn stats(&self, at_ms: u64) -> Result<StatsReport> {
        let replay = self.replay()?;
        let mut segments: Vec<SegmentStats> = replay
            .segments
            .iter()
            .map(|s| SegmentStats {
                id: s.id,
                last: s.last,
                space: SpaceStats {
                    file_bytes: s.file_bytes,
                    data_bytes: s.data_end,
                    header_bytes: if s.data_end > 0 { HEADER_LEN as u64 } else { 0 },
                    torn_tail_bytes: s.torn_tail_bytes,
                    records: s.records,
                    ..SpaceStats::default()
                },
            })
            .collect();
        let index_of: HashMap<u64, usize> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let mut namespaces: HashMap<u8, NamespaceStats> = HashMap::new();
        let mut groups: std::collections::BTreeMap<(u8, String), u64> = Default::default();
        // Batch overhead: per record, the best class among its operations.
        let mut overhead_class: HashMap<(u64, u64), Class> = HashMap::new();
        for (op, &class) in replay.ops.iter().zip(&replay.class) {
            let Some(&si) = index_of.get(&op.segment) else {
                continue;
            };
            let sp = &mut segments[si].space;
            let class = match class {
                Class::Current if expired(op.expires_at, at_ms) => Class::Expired,
                c => c,
            };
            match class {
                Class::Current => {
                    sp.live_bytes += op.cost;
                    sp.live_keys += 1;
                    sp.expiry.add(op.expires_at, at_ms, op.cost);
                    let ns = namespaces.entry(op.ns).or_insert_with(|| NamespaceStats {
                        namespace: Namespace(op.ns),
                        live_keys: 0,
                        live_bytes: 0,
                        groups: Vec::new(),
                    });
                    ns.live_keys += 1;
                    ns.live_bytes += op.cost;
                    if let Some((group, counts)) = group_of(Namespace(op.ns), &op.key) {
                        let g = groups.entry((op.ns, group)).or_insert(0);
                        *g += u64::from(counts);
                    }
                }
                Class::Expired => {
                    sp.expired_bytes += op.cost;
                    sp.expired_keys += 1;
                }
                Class::Dead => sp.dead_bytes += op.cost,
                Class::Tombstone => sp.tombstone_bytes += op.cost,
            }
            if op.overhead > 0 || op.batch.is_some() {
                let e = overhead_class
                    .entry((op.segment, op.offset))
                    .or_insert(class);
                *e = (*e).min(class);
            }
        }
        for (op, _) in replay.ops.iter().zip(&replay.class) {
            if op.overhead == 0 {
                continue;
            }
            let (Some(&si), Some(&class)) = (
                index_of.get(&op.segment),
                overhead_class.get(&(op.segment, op.offset)),
            ) else {
                continue;
            };
            let sp = &mut segments[si].space;
            match class {
                Class::Current => sp.live_bytes += op.overhead,
                Class::Expired => sp.expired_bytes += op.overhead,
                Class::Dead => sp.dead_bytes += op.overhead,
                Class::Tombstone => sp.tombstone_bytes += op.overhead,
            }
        }
        let mut total = SpaceStats::default();
        for s in &mut segments {
            if !s.last {
                s.space.reclaimable_bytes = s.space.dead_bytes + s.space.expired_bytes;
            }
            total.absorb(&s.space);
        }
        for ((ns, name), len) in groups {
            if let Some(n) = namespaces.get_mut(&ns) {
                n.groups.push(GroupStats { name, len });
            }
        }
        let mut namespaces: Vec<NamespaceStats> = namespaces.into_values().collect();
        namespaces.sort_by_key(|n| n.namespace);
        Ok(StatsReport {
            at_ms,
            segments,
            total,
            namespaces,
        })
    }

    /// What a read of `key` in `ns` would return at `at_ms`, found by replaying the log.
    ///
    /// Fails like [`Inspector::stats`] on damage.
    pub fn get(&self, ns: Namespace, key: &[u8], at_ms: u64) -> Result<Lookup> {
        struct Hit {
            seq: u64,
            kind: OpKind,
            segment: u64,
            offset: u64,
            value: Vec<u8>,
            expires_at: Option<u64>,
            target_seq: u64,
        }
        let mut hits: Vec<Hit> = Vec::new();
        self.walk_strict(|seg, rec_off, op, _, _| {
            if op.ns == ns.0 && op.key == key {
                hits.push(Hit {
                    seq: op.seq,
                    kind: OpKind::from_byte(op.kind).unwrap_or(OpKind::Put),
                    segment: seg.id,
                    offset: rec_off as u64,
                    value: op.value.to_vec(),
                    expires_at: op.expires_at,
                    target_seq: op.target_seq,
                });
            }
        })?;
        hits.sort_by_key(|h| h.seq);
        let mut state = Lookup::Missing;
        for h in hits {
            match h.kind {
                OpKind::Put => {
                    state = Lookup::Live(Found {
                        seq: h.seq,
                        segment: h.segment,
                        offset: h.offset,
                        value: h.value,
                        expires_at: h.expires_at,
                    });
                }
                OpKind::Delete | OpKind::Expire => {
                    let current = match &state {
                        Lookup::Live(f) => Some(f.seq),
                        _ => None,
                    };
                    let applies = match h.kind {
                        OpKind::Delete => current.is_some(),
                        _ => current == Some(h.target_seq),
                    };
                    if applies {
                        state = Lookup::Removed {
                            seq: h.seq,
                            kind: h.kind,
                            segment: h.segment,
                            offset: h.offset,
                        };
                    }
                }
            }
        }
        Ok(match state {
            Lookup::Live(f) if expired(f.expires_at, at_ms) => Lookup::Expired(f),
            other => other,
        })
    }

    /// Walks every valid operation, failing on damage that is not a torn tail.
    fn walk_strict(
        &self,
        mut f: impl FnMut(&SegmentFile, usize, &Op<'_>, Option<BatchPos>, (u64, u64)),
    ) -> Result<Vec<ScannedSegment>> {
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in &self.segments {
            let Some(data) = read_segment(seg)? else {
                continue;
            };
            let mut info = ScannedSegment {
                id: seg.id,
                last: seg.last,
                file_bytes: data.len() as u64,
                data_end: 0,
                torn_tail_bytes: 0,
                records: RecordCounts::default(),
            };
            match check_header(&data, seg)? {
                HeaderCheck::Good(_) => {}
                HeaderCheck::Unborn => {
                    out.push(info);
                    continue;
                }
            }
            info.data_end = HEADER_LEN as u64;
            let mut failure: Option<Error> = None;
            scan_segment(&data, seg.id, seg.last, |ev| match ev {
                Scan::Record {
                    offset,
                    len,
                    kind,
                    ops,
                    shares,
                    shared,
                    ..
                } => {
                    info.records.add(kind);
                    info.data_end = (offset + len) as u64;
                    let count = ops.len() as u32;
                    for (i, op) in ops.iter().enumerate() {
                        let batch = (kind == KIND_BATCH).then_some(BatchPos {
                            index: i as u32,
                            count,
                        });
                        let overhead = if i == 0 { shared } else { 0 };
                        f(seg, offset, op, batch, (shares[i], overhead));
                    }
                }
                Scan::Damaged(d) if d.torn_tail => info.torn_tail_bytes = d.len,
                Scan::Damaged(d) => {
                    if failure.is_none() {
                        failure = Some(Error::corrupt(d.segment, d.offset, d.kind));
                    }
                }
            });
            if let Some(e) = failure {
                return Err(e);
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Replays every operation in sequence order and classifies each.
    fn replay(&self) -> Result<Replay> {
        let mut ops: Vec<OwnedOp> = Vec::new();
        // A batch's prefix, kind, sequence and count (`overhead`) are carried by its first entry
        // and shared out by class in `stats`.
        let segments = self.walk_strict(|seg, rec_off, op, batch, (cost, overhead)| {
            ops.push(OwnedOp {
                seq: op.seq,
                segment: seg.id,
                offset: rec_off as u64,
                kind: OpKind::from_byte(op.kind).unwrap_or(OpKind::Put),
                ns: op.ns,
                key: op.key.to_vec(),
                cost,
                overhead,
                batch,
                expires_at: op.expires_at,
                target_seq: op.target_seq,
            });
        })?;
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| ops[i].seq);
        let mut class = vec![Class::Dead; ops.len()];
        let mut current: HashMap<(u8, &[u8]), usize> = HashMap::new();
        for &i in &order {
            let op = &ops[i];
            let k = (op.ns, op.key.as_slice());
            match op.kind {
                OpKind::Put => {
                    if let Some(old) = current.insert(k, i) {
                        class[old] = Class::Dead;
                    }
                    class[i] = Class::Current;
                }
                OpKind::Delete => {
                    class[i] = Class::Tombstone;
                    if let Some(old) = current.remove(&k) {
                        class[old] = Class::Dead;
                    }
                }
                OpKind::Expire => {
                    class[i] = Class::Tombstone;
                    if current
                        .get(&k)
                        .is_some_and(|&c| ops[c].seq == op.target_seq)
                        && let Some(old) = current.remove(&k)
                    {
                        class[old] = Class::Expired;
                    }
                }
            }
        }
        Ok(Replay {
            ops,
            class,
            segments,
        })
    }
}

/// The thread or queue a live key belongs to, and whether it counts towards its length (a
/// message of a thread; the state record of a queue's task: one per task). Read from the
/// descriptions of [`key_description`]: `thread "chat": message at offset 3`,
/// `queue "jobs": task "t1" state`.
fn group_of(ns: Namespace, key: &[u8]) -> Option<(String, bool)> {
    let d = key_description(ns, key)?;
    let (owner, role) = d.split_once(": ")?;
    let counts = match ns {
        Namespace::THREADS => role.starts_with("message"),
        _ => role.starts_with("task") && role.ends_with(" state"),
    };
    Some((owner.to_string(), counts))
}

fn expired(expires_at: Option<u64>, at_ms: u64) -> bool {
    expires_at.is_some_and(|e| e <= at_ms)
}

/// Classification of an operation after replay. Ordered from "most alive".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Current,
    Expired,
    Dead,
    Tombstone,
}

struct OwnedOp {
    seq: u64,
    segment: u64,
    offset: u64,
    kind: OpKind,
    ns: u8,
    key: Vec<u8>,
    cost: u64,
    overhead: u64,
    batch: Option<BatchPos>,
    expires_at: Option<u64>,
    target_seq: u64,
}

struct Replay {
    ops: Vec<OwnedOp>,
    class: Vec<Class>,
    segments: Vec<ScannedSegment>,
}

struct ScannedSegment {
    id: u64,
    last: bool,
    file_bytes: u64,
    data_end: u64,
    torn_tail_bytes: u64,
    records: RecordCounts,
}

/// Sequences of live puts, from [`Inspector::live_set`].
#[derive(Debug, Clone, Default)]
pub struct LiveSet {
    seqs: HashSet<u64>,
}

impl LiveSet {
    /// True if the operation with sequence `seq` is a put that is live.
    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.contains(&seq)
    }

    /// Number of live puts.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// True when nothing is live.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// Iterator returned by [`Inspector::records`].
#[derive(Debug)]
pub struct Records<'a> {
    ins: &'a Inspector,
    next_segment: usize,
    pending: VecDeque<Result<RecordEntry>>,
    last_seq: u64,
}

impl Iterator for Records<'_> {
    type Item = Result<RecordEntry>;

    fn next(&mut self) -> Option<Result<RecordEntry>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let seg = self.ins.segments.get(self.next_segment)?;
            self.next_segment += 1;
            let data = match read_segment(seg) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            };
            let header = match check_header(&data, seg) {
                Ok(HeaderCheck::Good(h)) => h,
                Ok(HeaderCheck::Unborn) => continue,
                Err(e) => return Some(Err(e)),
            };
            let pending = &mut self.pending;
            let last_seq = &mut self.last_seq;
            scan_segment(&data, seg.id, seg.last, |ev| match ev {
                Scan::Record {
                    offset,
                    len,
                    kind,
                    seq,
                    last_op_seq,
                    ops,
                    ..
                } => {
                    let log = header.kind == SEGMENT_KIND_LOG;
                    let problem = if log && seq <= *last_seq {
                        Some(CorruptionKind::SequenceOutOfOrder {
                            previous: *last_seq,
                            found: seq,
                        })
                    } else if seq < header.base_seq {
                        Some(CorruptionKind::Malformed(
                            "sequence below the segment's base sequence",
                        ))
                    } else {
                        None
                    };
                    if log {
                        *last_seq = (*last_seq).max(last_op_seq);
                    }
                    let count = ops.len() as u32;
                    for (i, op) in ops.iter().enumerate() {
                        pending.push_back(Ok(RecordEntry::Op(OpRecord {
                            segment: seg.id,
                            offset: offset as u64,
                            record_len: len as u64,
                            seq: op.seq,
                            kind: OpKind::from_byte(op.kind).unwrap_or(OpKind::Put),
                            batch: (kind == KIND_BATCH).then_some(BatchPos {
                                index: i as u32,
                                count,
                            }),
                            namespace: Namespace(op.ns),
                            key: op.key.to_vec(),
                            value_len: op.value.len() as u64,
                            value_preview: op.value[..op.value.len().min(VALUE_PREVIEW_LEN)]
                                .to_vec(),
                            value_description: (op.kind == KIND_PUT)
                                .then(|| value_description(Namespace(op.ns), op.key, op.value))
                                .flatten(),
                            expires_at: op.expires_at,
                            target_seq: (op.kind == KIND_EXPIRE).then_some(op.target_seq),
                            problem: problem.clone(),
                        })));
                    }
                }
                Scan::Damaged(d) => pending.push_back(Ok(RecordEntry::Damaged(d))),
            });
        }
    }
}

enum HeaderCheck {
    Good(SegmentHeader),
    /// The last segment, with a short or bad header and nothing but zeros after it: its creation
    /// was interrupted. Recovery removes it; it holds no record.
    Unborn,
}

fn check_header(data: &[u8], seg: &SegmentFile) -> Result<HeaderCheck> {
    let header = if data.len() < HEADER_LEN {
        Err(CorruptionKind::Truncated)
    } else {
        SegmentHeader::decode(&data[..HEADER_LEN])
    };
    match header {
        Ok(h) if h.version > FORMAT_VERSION => Err(Error::UnsupportedVersion {
            path: seg.path.clone(),
            found: h.version,
            supported: FORMAT_VERSION,
        }),
        Ok(h) if h.kind != SEGMENT_KIND_LOG && h.kind != SEGMENT_KIND_COMPACTED => {
            Err(Error::corrupt(
                seg.id,
                10,
                CorruptionKind::Malformed("unknown segment kind"),
            ))
        }
        Ok(h) if h.segment_id != seg.id => Err(Error::corrupt(
            seg.id,
            0,
            CorruptionKind::WrongSegmentId {
                found: h.segment_id,
            },
        )),
        Ok(h) => Ok(HeaderCheck::Good(h)),
        Err(_)
            if seg.last
                && data.iter().skip(HEADER_LEN).all(|&b| b == 0)
                && !is_whole_header(data) =>
        {
            Ok(HeaderCheck::Unborn)
        }
        Err(kind) => Err(Error::corrupt(seg.id, 0, kind)),
    }
}

/// True if `data` starts with the magic and is long enough to hold a header: such a header that
/// fails its checksum was damaged after it was written, not cut by a crash during creation.
fn is_whole_header(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN
        && data[..8] == format::SEGMENT_MAGIC
        && data[8..HEADER_LEN].iter().any(|&b| b != 0)
}

enum Scan<'a, 'o> {
    Record {
        offset: usize,
        len: usize,
        kind: u8,
        seq: u64,
        last_op_seq: u64,
        ops: &'o [Op<'a>],
        /// Each op's share of the record's bytes, and the bytes they share (format::Record::op_shares).
        shares: &'o [u64],
        shared: u64,
    },
    Damaged(Damage),
}

/// Walks the records of one segment after its header, reporting each valid record and each
/// damaged stretch (resuming at the next valid record). Stops at zeros or at the end.
fn scan_segment<'a>(data: &'a [u8], id: u64, last: bool, mut f: impl FnMut(Scan<'a, '_>)) {
    let mut off = HEADER_LEN;
    let mut ops: Vec<Op<'a>> = Vec::new();
    let mut shares = Vec::new();
    let seed = format::CrcSeed::new(id);
    while off < data.len() {
        let kind = match format::read_record_in(data, off, &seed, None, true) {
            Ok(rec) => match rec.ops(&mut ops) {
                Ok(()) => {
                    let shared = rec.op_shares(&ops, &mut shares);
                    f(Scan::Record {
                        offset: off,
                        len: rec.len,
                        kind: rec.kind,
                        seq: rec.seq,
                        last_op_seq: rec.last_seq(&ops),
                        ops: &ops,
                        shares: &shares,
                        shared,
                    });
                    off += rec.len;
                    continue;
                }
                Err(kind) => kind,
            },
            Err(RecordError::End) => {
                if data[off..].iter().all(|&b| b == 0) {
                    return;
                }
                CorruptionKind::Malformed("bytes after the end-of-data zeros")
            }
            Err(RecordError::Corrupt(kind)) => kind,
        };
        let next = resync(data, off + 1, id);
        let end = next.unwrap_or(data.len());
        f(Scan::Damaged(Damage {
            segment: id,
            offset: off as u64,
            len: (end - off) as u64,
            kind,
            torn_tail: next.is_none() && last,
        }));
        off = end;
    }
}

/// The next offset from `from` where a record that checks out starts.
fn resync(data: &[u8], from: usize, id: u64) -> Option<usize> {
    let mut ops = Vec::new();
    let seed = format::CrcSeed::new(id);
    (from..data.len().saturating_sub(format::RECORD_PREFIX)).find(|&o| {
        matches!(format::read_record_in(data, o, &seed, None, true), Ok(rec) if rec.ops(&mut ops).is_ok())
    })
}

/// True if the file at `path` is a log segment, or has a header too short or damaged to tell
/// (recovery takes such a file as the active segment, whose creation a crash interrupted). False
/// for compaction output and for a file that vanished.
fn is_log_segment(path: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(HEADER_LEN);
    if file.take(HEADER_LEN as u64).read_to_end(&mut head).is_err() {
        return true;
    }
    SegmentHeader::decode(&head).map_or(true, |h| h.kind == SEGMENT_KIND_LOG)
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Reads a whole segment file; `None` if it vanished since it was listed (compaction retired it).
fn read_segment(seg: &SegmentFile) -> Result<Option<Vec<u8>>> {
    match std::fs::read(&seg.path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &seg.path, e)),
    }
}

fn file_name_of(seg: &SegmentFile) -> String {
    seg.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| segment::file_name(seg.id))
}

/// Why a hint file does not describe its segment, if it does not: it must decode (checksum,
/// segment id and length) and list exactly the segment's operations, in order.
fn check_hint(
    bytes: &[u8],
    id: u64,
    data: &[u8],
    expected: &[HintEntry<'_>],
) -> Option<&'static str> {
    let entries = match hint::decode(bytes, id, data.len() as u64) {
        Ok(e) => e,
        Err(why) => return Some(why),
    };
    if entries.len() != expected.len() {
        return Some("it lists a different number of operations than the segment holds");
    }
    if entries.iter().zip(expected).any(|(a, b)| a != b) {
        return Some("an entry differs from the segment's record");
    }
    None
}

/// A problem's text without the advice that [`Error`]'s message appends.
fn problem_text(e: &Error) -> String {
    match e {
        Error::Corruption { kind, .. } => kind.to_string(),
        other => other.to_string(),
    }
}

/// One finding of [`Inspector::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file's name within the directory.
    pub file: String,
    /// The segment id, for segment files.
    pub segment: Option<u64>,
    /// The byte offset in the file, where it applies.
    pub offset: Option<u64>,
    /// What was found.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.segment, self.offset) {
            (Some(s), Some(o)) => write!(
                f,
                "segment {s} ({}) at offset {o}: {}",
                self.file, self.message
            ),
            (Some(s), None) => write!(f, "segment {s} ({}): {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// What [`Inspector::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: u64,
    /// Records that checked out.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything wrong: the store would refuse to open, or would lose data.
    pub problems: Vec<Finding>,
    /// Things worth knowing that are not damage (a torn tail of the active segment, leftover
    /// temporary files, files not checked).
    pub notes: Vec<Finding>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Records counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Single put records.
    pub put: u64,
    /// Single delete records.
    pub delete: u64,
    /// Single expire records.
    pub expire: u64,
    /// Batch records.
    pub batch: u64,
}

impl RecordCounts {
    fn add(&mut self, kind: u8) {
        match kind {
            KIND_PUT => self.put += 1,
            KIND_DELETE => self.delete += 1,
            KIND_EXPIRE => self.expire += 1,
            _ => self.batch += 1,
        }
    }

    /// All records.
    pub fn total(&self) -> u64 {
        self.put + self.delete + self.expire + self.batch
    }
}

/// Live keys and their bytes in one bucket of [`ExpiryHistogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Keys.
    pub keys: u64,
    /// Bytes of their records.
    pub bytes: u64,
}

/// When live keys expire, counted from the evaluation time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryHistogram {
    /// Expiring within a minute.
    pub within_minute: Bucket,
    /// Expiring after a minute, within an hour.
    pub within_hour: Bucket,
    /// Expiring after an hour, within a day.
    pub within_day: Bucket,
    /// Expiring after a day.
    pub later: Bucket,
    /// Without a TTL.
    pub never: Bucket,
}

impl ExpiryHistogram {
    fn add(&mut self, expires_at: Option<u64>, at_ms: u64, bytes: u64) {
        let b = match expires_at {
            None => &mut self.never,
            Some(e) => match e.saturating_sub(at_ms) {
                r if r <= MINUTE_MS => &mut self.within_minute,
                r if r <= HOUR_MS => &mut self.within_hour,
                r if r <= DAY_MS => &mut self.within_day,
                _ => &mut self.later,
            },
        };
        b.keys += 1;
        b.bytes += bytes;
    }

    fn absorb(&mut self, o: &ExpiryHistogram) {
        for (a, b) in [
            (&mut self.within_minute, &o.within_minute),
            (&mut self.within_hour, &o.within_hour),
            (&mut self.within_day, &o.within_day),
            (&mut self.later, &o.later),
            (&mut self.never, &o.never),
        ] {
            a.keys += b.keys;
            a.bytes += b.bytes;
        }
    }
}

/// Space figures of a segment, or of all of them.
///
/// `data_bytes = header_bytes + live_bytes + expired_bytes + dead_bytes + tombstone_bytes`. A
/// batch record's shared bytes (prefix, sequence, count) count with its most alive operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Size of the file(s) (the active segment is preallocated beyond its data).
    pub file_bytes: u64,
    /// Bytes up to the end of the data: header and valid records.
    pub data_bytes: u64,
    /// Segment header bytes.
    pub header_bytes: u64,
    /// Bytes of a torn tail after the data of the last segment.
    pub torn_tail_bytes: u64,
    /// Records by kind.
    pub records: RecordCounts,
    /// Bytes of the current, unexpired values.
    pub live_bytes: u64,
    /// Keys live.
    pub live_keys: u64,
    /// Bytes of values that expired (by time, or removed by an expire record).
    pub expired_bytes: u64,
    /// Values expired.
    pub expired_keys: u64,
    /// Bytes of values overwritten or deleted.
    pub dead_bytes: u64,
    /// Bytes of delete and expire records.
    pub tombstone_bytes: u64,
    /// Dead and expired bytes in sealed segments: what a compaction could free now. (The active
    /// segment is not compacted; tombstones are not counted, as one may still be needed.)
    pub reclaimable_bytes: u64,
    /// When the live keys expire.
    pub expiry: ExpiryHistogram,
}

impl SpaceStats {
    /// `data_bytes / live_bytes`; `None` when nothing is live.
    pub fn space_amplification(&self) -> Option<f64> {
        (self.live_bytes > 0).then(|| self.data_bytes as f64 / self.live_bytes as f64)
    }

    fn absorb(&mut self, o: &SpaceStats) {
        self.file_bytes += o.file_bytes;
        self.data_bytes += o.data_bytes;
        self.header_bytes += o.header_bytes;
        self.torn_tail_bytes += o.torn_tail_bytes;
        self.records.put += o.records.put;
        self.records.delete += o.records.delete;
        self.records.expire += o.records.expire;
        self.records.batch += o.records.batch;
        self.live_bytes += o.live_bytes;
        self.live_keys += o.live_keys;
        self.expired_bytes += o.expired_bytes;
        self.expired_keys += o.expired_keys;
        self.dead_bytes += o.dead_bytes;
        self.tombstone_bytes += o.tombstone_bytes;
        self.reclaimable_bytes += o.reclaimable_bytes;
        self.expiry.absorb(&o.expiry);
    }
}

/// Space figures of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStats {
    /// The segment id.
    pub id: u64,
    /// True for the last (active) segment.
    pub last: bool,
    /// Its figures.
    pub space: SpaceStats,
}

/// Live keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: Namespace,
    /// Live keys in it.
    pub live_keys: u64,
    /// Bytes of their records.
    pub live_bytes: u64,
    /// For the threads and queues namespaces: each thread with its live messages, each queue
    /// with its live tasks, by name.
    pub groups: Vec<GroupStats>,
}

/// A thread or a queue, from [`NamespaceStats::groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    /// `thread "name"` or `queue "name"`.
    pub name: String,
    /// Live messages (threads) or tasks (queues).
    pub len: u64,
}

/// What [`Inspector::stats`] computed.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsReport {
    /// The time the figures were evaluated at, unix ms.
    pub at_ms: u64,
    /// Per segment, by id.
    pub segments: Vec<SegmentStats>,
    /// All segments together.
    pub total: SpaceStats,
    /// Live keys per namespace that has any.
    pub namespaces: Vec<NamespaceStats>,
}

/// A key's current write, found by [`Inspector::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Sequence of the write.
    pub seq: u64,
    /// Segment holding it.
    pub segment: u64,
    /// Offset of its record.
    pub offset: u64,
    /// The value.
    pub value: Vec<u8>,
    /// Absolute expiry, unix ms.
    pub expires_at: Option<u64>,
}

/// The state of a key, from [`Inspector::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The key has a value that has not expired.
    Live(Found),
    /// The key's current value has expired by time (no expire record written for it yet).
    Expired(Found),
    /// The key was removed by a delete or expire record.
    Removed {
        /// Sequence of the removing record.
        seq: u64,
        /// Delete or expire.
        kind: OpKind,
        /// Segment holding it.
        segment: u64,
        /// Offset of the record.
        offset: u64,
    },
    /// No record of the key exists.
    Missing,
}

/// The namespace named `s`: `default`, `threads`, `queues`, `caches`, or a number `0..=255`.
pub fn parse_namespace(s: &str) -> Result<Namespace> {
    match s {
        "default" => Ok(Namespace::DEFAULT),
        "threads" => Ok(Namespace::THREADS),
        "queues" => Ok(Namespace::QUEUES),
        "caches" => Ok(Namespace::CACHES),
        _ => s.parse::<u8>().map(Namespace).map_err(|_| Error::InvalidArgument {
            what: format!("unknown namespace {s:?}: use default, threads, queues, caches or a number 0..=255"),
        }),
    }
}

/// The namespace's name (see [`Namespace::name`]), with its number for the custom and reserved
/// ones.
pub fn namespace_label(ns: Namespace) -> String {
    match ns.0 {
        0..=3 => ns.name().to_string(),
        n => format!("{}:{n}", ns.name()),
    }
}

/// What a key of the threads or queues namespace is (`thread "chat": message at offset 3`,
/// `queue "jobs": task "t1" state`), as those modules describe their own keys; `None` for other
/// namespaces and for keys they do not recognise.
pub fn key_description(ns: Namespace, key: &[u8]) -> Option<String> {
    match ns {
        Namespace::THREADS => crate::thread::describe_key(key),
        Namespace::QUEUES => crate::queue::describe_key(key),
        _ => None,
    }
}

/// What the value of a key in the queues namespace means (`leased until 1700000060000 (token
/// 3), priority 0, attempt 1/5` for a task's state), as that module describes its own values;
/// `None` for other namespaces and for values it does not recognise. Raw bytes otherwise: a
/// task's state is 54 bytes of big-endian fields.
pub fn value_description(ns: Namespace, key: &[u8], value: &[u8]) -> Option<String> {
    match ns {
        Namespace::QUEUES if key.starts_with(b"s/") => crate::queue::describe_state(value),
        _ => None,
    }
}

/// A key in readable form: for threads and queues what it is (see [`key_description`]),
/// otherwise its escaped bytes (see [`escape_bytes`]).
pub fn describe_key(ns: Namespace, key: &[u8]) -> String {
    key_description(ns, key).unwrap_or_else(|| escape_bytes(key))
}

/// `bytes` as printable text: valid UTF-8 stays as it is except control characters, `\` and `"`;
/// everything else is escaped as `\xNN` (`\\` and `\"` for the two specials). Undone by
/// [`unescape_bytes`].
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let push_hex = |out: &mut String, b: u8| out.push_str(&format!("\\x{b:02x}"));
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for &b in c.encode_utf8(&mut buf).as_bytes() {
                            push_hex(&mut out, b);
                        }
                    }
                    c => out.push(c),
                }
            }
        }
        Err(_) => {
            for &b in bytes {
                match b {
                    b'\\' => out.push_str("\\\\"),
                    b'"' => out.push_str("\\\""),
                    0x20..=0x7e => out.push(b as char),
                    _ => push_hex(&mut out, b),
                }
            }
        }
    }
    out
}

/// The bytes that [`escape_bytes`] printed as `s`: `\xNN`, `\\` and `\"` are decoded, anything
/// else is taken as UTF-8.
pub fn unescape_bytes(s: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::InvalidArgument {
        what: format!("cannot read {s:?} as an escaped key: {why}"),
    };
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') | Some(b'"') => {
                out.push(b[i + 1]);
                i += 2;
            }
            Some(b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .ok_or_else(|| bad("\\x needs two hex digits"))?;
                let v = u8::from_str_radix(hex, 16).map_err(|_| bad("\\x needs two hex digits"))?;
                out.push(v);
                i += 4;
            }
            _ => return Err(bad("a backslash must start \\\\, \\\" or \\xNN")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_roundtrips() {
        for k in [
            &b"plain"[..],
            b"a\\b\"c",
            b"\x00\x01bin\xff",
            "café\n".as_bytes(),
            b"",
        ] {
            let e = escape_bytes(k);
            assert!(e.chars().all(|c| !c.is_control()), "{e:?}");
            assert_eq!(unescape_bytes(&e).unwrap(), k, "{e}");
        }
        assert_eq!(escape_bytes(b"k\x00"), "k\\x00");
        assert_eq!(escape_bytes("café".as_bytes()), "café");
        assert!(unescape_bytes("\\q").is_err());
        assert!(unescape_bytes("\\x4").is_err());
    }

    #[test]
    fn namespaces_parse() {
        assert_eq!(parse_namespace("queues").unwrap(), Namespace::QUEUES);
        assert_eq!(parse_namespace("17").unwrap().id(), 17);
        assert!(parse_namespace("nope").is_err());
        assert_eq!(namespace_label(Namespace(20)), "custom:20");
    }
}
