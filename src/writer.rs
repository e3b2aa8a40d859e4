//! The append path: one writer at a time encodes records straight into the active segment's
//! mapping, applies them to the index in sequence order, rotates segments, and shares fdatasyncs
//! between concurrent writers (group commit).
//!
//! # Group commit
//! A writer appends under the writer lock (a memcpy into the page cache: the record survives a
//! crash of the process from then on), applies it to the index, and releases the lock. Under
//! [`SyncPolicy::Always`] it then waits until the log is durable up to its record's end. The first
//! waiter to find no sync running becomes the leader: it notes how far the log has been appended,
//! fdatasyncs once, and wakes every waiter that the sync covered. Writers keep appending while the
//! leader syncs; the next leader covers them. A rotation's fdatasync of the old segment can run
//! alongside a leader's; a successful sync is published only once every sync that overlapped it
//! has succeeded as well (see `SyncState`), because the kernel reports a writeback error to just
//! one of the syncs sharing a file description.
//!
//! # Rotation
//! When a record does not fit, the active segment's data is fdatasynced; then the new segment is
//! created (space reserved, header written, file fsynced); only then is the old one sealed
//! (truncated to its data, fsynced), and last the directory is fsynced. A full disk therefore fails the write with nothing changed, and a
//! crash at any point leaves segments that recovery reads back whole (see FORMAT.md, "Crash
//! points").

use crate::background::Msg;
use crate::error::{Error, Result};
use crate::format::{self, EncOp, HEADER_LEN, Op};
use crate::options::{Options, SyncPolicy};
use crate::segment::{Segment, SegmentInfo};
use crate::state::{Applied, StateLock};
use crate::storage::Storage;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The store's poison flag: set by a failed sync or a panicking background thread.
#[derive(Debug, Default)]
pub struct Poison {
    set: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    /// Poisons the store (the first reason wins).
    pub fn poison(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.set.store(true, Ordering::SeqCst);
    }

    /// `Err(Poisoned)` if poisoned.
    pub fn check(&self) -> Result<()> {
        if self.set.load(Ordering::Acquire) {
            let reason = self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(Error::Poisoned { reason });
        }
        Ok(())
    }

    /// True if poisoned.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

/// Where a reopened log continues.
#[derive(Debug)]
pub struct LogStart {
    /// The segment to append to.
    pub active: Arc<Segment>,
    /// The offset of the next record in it.
    pub tail: usize,
    /// Bytes of it allocated on disk (its file length).
    pub allocated: u64,
    /// The sequence of the next record.
    pub next_seq: u64,
    /// The id of the next new segment.
    pub next_segment_id: u64,
}

/// The writer's state, behind the writer lock.
#[derive(Debug)]
pub struct WriterState {
    /// The segment being appended to.
    pub active: Arc<Segment>,
    /// Next write offset in it.
    pub tail: usize,
    /// Bytes of the active segment's file allocated so far; the writer extends it in steps.
    pub allocated: u64,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// Bytes appended since open: the log position that syncs are measured in.
    pub appended: u64,
    /// Offset up to which the active segment's pages were handed to the prefaulter.
    prefaulted: usize,
    /// Offset (a page boundary) up to which the active segment's pages were handed to
    /// write-behind.
    written_behind: usize,
    value_offsets: Vec<usize>,
    /// The index asked, at the last write, for fresh memory to be faulted in before the next
    /// ([`crate::index::Index::wants_populate`]).
    populate_index: bool,
}

/// Most fdatasyncs of the log that group commit keeps running at once. One: the disk does
/// overlap flushes of distinct pages (8 threads each syncing its own pages: 31k syncs a second
/// against 10k for one), but consecutive groups share the log's last page, and a second sync
/// waits for the first one's writeback of that page. Measured with 8 durable writers: 2 running
/// syncs gave 23k puts a second at 3.6 puts per sync, 1 gave 41k at 6.6.
const MAX_RUNNING_SYNCS: usize = 1;

/// Which fdatasyncs ran and what they made durable.
///
/// Syncs are numbered in the order they start (their tickets). A sync that succeeded makes its
/// target durable only once every sync that ran at any moment alongside it has succeeded too: all
/// syncs share the file's one open file description, and the kernel reports a writeback error to
/// the first of them that checks, so the one that returns success may have lost pages to an error
/// that another one received. A sync's target is therefore published when every ticket issued
/// before it ended has succeeded; a failure poisons the store and publishes nothing more.
#[derive(Debug, Default)]
struct SyncState {
    /// The log is durable up to here (published).
    synced: u64,
    /// Syncs running now, including ones about to start.
    running: usize,
    /// The highest target of a sync that is running.
    running_target: u64,
    /// The ticket of the next sync to start.
    next_ticket: u64,
    /// Every ticket below this has succeeded.
    done_below: u64,
    /// Tickets at or above `done_below` that have succeeded.
    done_early: Vec<u64>,
    /// Targets of succeeded syncs, each with the ticket count that must be reached by
    /// `done_below` before it is published.
    pending: Vec<(u64, u64)>,
    /// The writers sleeping for a sync: the log position each waits for, and how long it
    /// usually takes to come back with its next write once released ([`Returns`]).
    waiting: Vec<(u64, Duration)>,
    /// How the next group is gathered, from what recent syncs saw.
    groups: GroupStats,
}

/// What recent group-commit syncs saw, for the next leader's gather (see [`Log::gather`]).
#[derive(Debug, Default)]
struct GroupStats {
    /// The commit count ([`Log::commits`]) when the last leader read its sync target.
    commits_at_start: u64,
    /// Writers the last published sync released that usually come back with their next write
    /// within a gather's time (writers that do other work between writes are not waited for).
    released: u64,
    /// Whether the leader of the last sync is such a writer too.
    leader_returns: bool,
    /// Moving average of a leader's fdatasync, in nanoseconds.
    sync_nanos: u64,
}

/// Bounds of a leader's wait for its group: the average fdatasync time, within these.
const GATHER_MIN: Duration = Duration::from_micros(20);
const GATHER_MAX: Duration = Duration::from_micros(500);

impl GroupStats {
    /// Notes a leader's sync of everything up to commit count `commits`.
    fn started(&mut self, commits: u64) {
        self.commits_at_start = commits;
    }

    /// The longest a leader waits for its group: about one fdatasync.
    fn limit(&self) -> Duration {
        Duration::from_nanos(self.sync_nanos).clamp(GATHER_MIN, GATHER_MAX)
    }

    /// Notes how long a leader's fdatasync took.
    fn synced_in(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos = if self.sync_nanos == 0 {
            ns
        } else {
            (self.sync_nanos * 7 + ns) / 8
        };
    }

    /// The gather for the next leader: commits to wait for since the last sync's start (one
    /// from each writer the last sync released that comes back quickly, its leader included),
    /// and for at most how long.
    fn gather(&self, waiting: usize) -> Gather {
        Gather {
            waiting,
            since: self.commits_at_start,
            want: (self.released + u64::from(self.leader_returns)).max(1),
            limit: self.limit(),
        }
    }
}

/// How long the calling thread takes to come back with its next durable write after a sync
/// released it, for the log it last wrote to: a moving average kept per thread, so that a
/// leader waits only for released writers that write in a loop, not for ones that do other
/// work in between (see [`Log::gather`]).
#[derive(Debug, Clone, Copy)]
struct Returns {
    /// The log (its address: only compared, never dereferenced).
    log: usize,
    /// When the last sync released this thread, if it has not written since.
    released: Option<Instant>,
    /// Moving average of the time from release to the next write.
    back: Duration,
}

thread_local! {
    static RETURNS: std::cell::Cell<Option<Returns>> = const { std::cell::Cell::new(None) };
}

impl Returns {
    /// Notes that this thread arrives at `log` with a write to wait for; returns its usual
    /// time to come back (zero when it has no history: waited for until known).
    fn arrive(log: &Log) -> Duration {
        let id = log as *const Log as usize;
        RETURNS.with(|r| {
            let mut cur = match r.get() {
                Some(cur) if cur.log == id => cur,
                _ => Returns {
                    log: id,
                    released: None,
                    back: Duration::ZERO,
                },
            };
            if let Some(at) = cur.released.take() {
                cur.back = (cur.back * 3 + at.elapsed()) / 4;
            }
            r.set(Some(cur));
            cur.back
        })
    }

    /// Notes that a sync of `log` just released this thread.
    fn released(log: &Log) {
        let id = log as *const Log as usize;
        RETURNS.with(|r| {
            if let Some(mut cur) = r.get().filter(|cur| cur.log == id) {
                cur.released = Some(Instant::now());
                r.set(Some(cur));
            }
        });
    }
}

/// A leader's gather (see [`Log::gather`]).
#[derive(Debug, Clone, Copy)]
struct Gather {
    /// Writers waiting for a sync when the leader took over.
    waiting: usize,
    since: u64,
    want: u64,
    limit: Duration,
}

impl SyncState {
    /// Registers a sync of the log up to `target` that is about to start; returns its ticket.
    fn start(&mut self, target: u64) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.running_target = self.running_target.max(target);
        ticket
    }

    /// Records that the sync with `ticket` succeeded, and publishes every target whose
    /// overlapping syncs have all succeeded. The caller wakes the waiters.
    fn succeeded(&mut self, ticket: u64, target: u64) {
        self.done_early.push(ticket);
        while let Some(i) = self.done_early.iter().position(|&t| t == self.done_below) {
            self.done_early.swap_remove(i);
            self.done_below += 1;
        }
        self.pending.push((self.next_ticket, target));
        let done_below = self.done_below;
        let mut synced = self.synced;
        self.pending.retain(|&(need, target)| {
            if need <= done_below {
                synced = synced.max(target);
                false
            } else {
                true
            }
        });
        if synced > self.synced {
            let limit = self.groups.limit();
            let mut returning = 0;
            self.waiting.retain(|&(pos, back)| {
                if pos > synced {
                    return true;
                }
                returning += u64::from(back <= limit);
                false
            });
            self.groups.released = returning;
        }
        self.synced = synced;
    }
}

/// Works beside the writer on another thread, on pages of the active segment:
/// - ahead of it, faults in a window of pages, so that an append is a copy into memory that is
///   already mapped (page faults on fresh segment pages were about a seventh of an unsynced
///   fill's time on the writer's thread);
/// - behind it (when writes are not synced one by one), starts writing back the pages it has
///   finished, after dropping their page-table entries, so that the fdatasync when the segment
///   is sealed has little left to write: it had a whole segment, 40–50 ms for 64 MiB, during
///   which the writer stood still.
///
/// Purely hints: a page the writer reaches first is faulted in by the write itself, pages not
/// written back early are written back by the sync, and no job changes a byte. The thread stops
/// when the channel closes (the `Log` drops) and is joined then; when background threads are
/// off, prefaults run inline on the writer and nothing is written back early.
#[derive(Debug)]
struct Prefaulter {
    tx: Option<std::sync::mpsc::Sender<PageJob>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// A job of the [`Prefaulter`] thread: a range of a segment's pages.
enum PageJob {
    /// Fault the pages in ([`crate::storage::Mapping::prefault`]).
    Prefault(Arc<Segment>, usize, usize),
    /// The writer is done with the pages: drop their entries in its mapping and start their
    /// writeback ([`crate::storage::Mapping::written`],
    /// [`crate::storage::StorageFile::start_writeback`]).
    WriteBehind(Arc<Segment>, usize, usize),
}

impl PageJob {
    fn run(self) {
        match self {
            PageJob::Prefault(seg, start, len) => seg.map().prefault(start, len),
            PageJob::WriteBehind(seg, start, len) => {
                seg.map().written(start, len);
                seg.file.start_writeback(start as u64, len as u64);
            }
        }
    }
}

impl Prefaulter {
    fn new(background: bool) -> Prefaulter {
        if !background {
            return Prefaulter {
                tx: None,
                handle: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<PageJob>();
        let spawned = std::thread::Builder::new()
            .name("ttlstore-prefault".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job.run();
                }
            });
        match spawned {
            Ok(handle) => Prefaulter {
                tx: Some(tx),
                handle: Some(handle),
            },
            // No thread (resource limits): prefault inline, which is only slower.
            Err(_) => Prefaulter {
                tx: None,
                handle: None,
            },
        }
    }

    fn prefault(&self, seg: &Arc<Segment>, start: usize, len: usize) {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(PageJob::Prefault(seg.clone(), start, len)).is_ok());
        if !sent {
            seg.map().prefault(start, len);
        }
    }

    /// True if it has a thread (write-behind runs only there).
    fn runs_behind(&self) -> bool {
        self.tx.is_some()
    }

    fn write_behind(&self, seg: &Arc<Segment>, start: usize, len: usize) {
        if let Some(tx) = &self.tx {
            // A closed channel means the store is closing: the sync at close writes it back.
            let _ = tx.send(PageJob::WriteBehind(seg.clone(), start, len));
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            // The thread only makes madvise calls; a panic there has nothing to poison.
            let _ = h.join();
        }
    }
}

/// The fewest bytes of the active segment handed to the prefaulter at a time (see
/// [`Prefaulter`]).
const PREFAULT_WINDOW: usize = 64 << 10;

/// How far ahead of the writer the prefaulted pages reach. A window's page faults can take a
/// few milliseconds when they wait for the journal (after the file grew), so the writer must
/// not be right behind them.
const PREFAULT_LEAD: usize = 256 << 10;

/// Bytes of finished pages handed to write-behind at a time (see [`Prefaulter`]).
const WRITE_BEHIND_STEP: usize = 1 << 20;

/// The page size that write-behind ranges are rounded to (a larger real page size only makes
/// the kernel round them further).
const PAGE: usize = 4096;

/// Keys of a record whose index lines are prefetched before it is encoded.
const PREFETCH_OPS: usize = 16;

/// The append path of one store.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn crate::clock::Clock>,
    segment_size: u64,
    policy: SyncPolicy,
    writer: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    /// The published durable position ([`SyncState::synced`]), readable without the lock.
    published: AtomicU64,
    /// Bumped once a sync's result is known (published, or the store poisoned); writers waiting
    /// for a sync sleep on it with [`atomic_wait`], without holding a lock.
    sync_events: AtomicU32,
    /// Commits appended since open (one per [`Log::commit`]): group commit sizes its groups
    /// in them.
    commits: AtomicU64,
    /// Poison flag, shared with the store.
    pub poison: Arc<Poison>,
    /// Number of fdatasyncs the append path has issued (for statistics and tests).
    pub syncs: AtomicU64,
    /// The id the next new segment (rotation or compaction output) gets.
    next_segment_id: AtomicU64,
    /// Told when a segment is sealed (the compactor writes its hint and looks for work).
    pub on_seal: OnceLock<Sender<Msg>>,
    /// Writers that asked for the writer lock and have not released it: a sync leader lets
    /// them finish their append first, so one fdatasync covers them all.
    appending: AtomicUsize,
    prefaulter: Prefaulter,
}

/// The writer lock, held while deciding and appending one logical write.
pub struct WriterGuard<'a> {
    guard: MutexGuard<'a, WriterState>,
    appending: &'a AtomicUsize,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = WriterState;
    fn deref(&self) -> &WriterState {
        &self.guard
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut WriterState {
        &mut self.guard
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.appending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Log {
    /// A log appending to `active` from `tail`, with `next_seq` next.
    pub fn new(dir: PathBuf, opts: &Options, start: LogStart, poison: Arc<Poison>) -> Log {
        let LogStart {
            active,
            tail,
            allocated,
            next_seq,
            next_segment_id,
        } = start;
        Log {
            dir,
            storage: opts.storage.clone(),
            clock: opts.clock.clone(),
            segment_size: opts.segment_size,
            policy: opts.sync,
            writer: Mutex::new(WriterState {
                active,
                tail,
                allocated,
                next_seq,
                appended: 0,
                prefaulted: tail,
                written_behind: tail / PAGE * PAGE,
                populate_index: false,
                value_offsets: Vec::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            published: AtomicU64::new(0),
            sync_events: AtomicU32::new(0),
            commits: AtomicU64::new(0),
            poison,
            syncs: AtomicU64::new(0),
            next_segment_id: AtomicU64::new(next_segment_id),
            on_seal: OnceLock::new(),
            appending: AtomicUsize::new(0),
            prefaulter: Prefaulter::new(opts.background),
        }
    }

    /// Takes a fresh segment id.
    pub fn alloc_segment_id(&self) -> Result<u64> {
        let id = self.next_segment_id.fetch_add(1, Ordering::SeqCst);
        // The index keeps ids in 32 bits and marks tombstones with the two highest.
        if id >= u64::from(crate::index::EXPIRE_TOMBSTONE) {
            return Err(Error::InvalidArgument {
                what: "segment ids exhausted (4 billion segments)".into(),
            });
        }
        Ok(id)
    }

    /// Takes the writer lock; fails if the store is poisoned.
    pub fn lock(&self) -> Result<WriterGuard<'_>> {
        self.poison.check()?;
        self.appending.fetch_add(1, Ordering::SeqCst);
        let w = WriterGuard {
            guard: self.writer.lock().unwrap_or_else(|e| e.into_inner()),
            appending: &self.appending,
        };
        self.poison.check()?;
        Ok(w)
    }

    /// The sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// Appends `ops` as one record and applies them to `state`. Returns the log position after
    /// the record (for [`Log::wait_durable`]) and what each op did.
    pub fn commit(
        &self,
        w: &mut WriterGuard<'_>,
        state: &StateLock,
        ops: &[EncOp<'_>],
        mut applied: Option<&mut Vec<Applied>>,
    ) -> Result<u64> {
        if let Some(a) = applied.as_deref_mut() {
            a.clear();
        }
        // The time is read only when something needs it (a TTL to note, a segment that may
        // rotate early, a rotation): a clock read is a few percent of an unsynced put.
        let has_ttl = ops.iter().any(|op| {
            matches!(
                op,
                EncOp::Put {
                    expires_at: Some(_),
                    ..
                }
            )
        });
        let now = (has_ttl || w.active.ttls.has_ttls()).then(|| self.clock.now_ms());
        let mut len = format::record_len_at(&w.active.base, w.next_seq, ops);
        let early = (w.tail - HEADER_LEN) as u64;
        if w.tail + len > w.active.mapped_len()
            || now.is_some_and(|now| w.active.ttls.rotation_due(now, early, self.segment_size))
        {
            let now = now.unwrap_or_else(|| self.clock.now_ms());
            self.rotate(w, state, len, now)?;
            len = format::record_len_at(&w.active.base, w.next_seq, ops);
        }
        if let Some(now) = now.filter(|_| has_ttl) {
            w.active.ttls.note(now, ops);
        }
        let need = (w.tail + len) as u64;
        // Grow the file a step ahead of the data, early enough that the prefaulted frontier
        // below never waits at the allocated end. A full disk fails here, before a byte is
        // written, and leaves the store as it was; a failed early step, while this record still
        // fits, is left for the write that needs the space to report.
        let map_len = w.active.mapped_len() as u64;
        if need + PREFAULT_LEAD as u64 > w.allocated && w.allocated < map_len {
            let grown = (w.allocated + crate::segment::reserve_step(self.segment_size))
                .max(need)
                .min(map_len);
            match w.active.file.allocate(grown) {
                Ok(()) => w.allocated = grown,
                Err(e) if need > w.allocated => {
                    return Err(Error::io("fallocate", &w.active.path, e));
                }
                Err(_) => {}
            }
        }
        // Keep pages faulted in up to `PREFAULT_LEAD` ahead of the writer, a window at a time.
        // Only that far: prefaulted pages are dirty zeros, and those a rotation leaves unwritten
        // are written back by its fdatasync.
        let ahead = (w.tail + len + PREFAULT_LEAD).min(w.allocated as usize);
        if ahead > w.prefaulted {
            let end = (w.prefaulted + PREFAULT_WINDOW)
                .max(ahead)
                .min(w.allocated as usize);
            self.prefaulter
                .prefault(&w.active, w.prefaulted, end - w.prefaulted);
            w.prefaulted = end;
        }
        let seq = w.next_seq;
        let seg_id = w.active.id;
        let rec_off = w.tail;
        let mut offsets = std::mem::take(&mut w.value_offsets);
        offsets.clear();
        // Fresh memory this write's index changes would fault in is faulted in first, under the
        // shared lock: readers go on while the kernel finds the pages.
        if w.populate_index {
            state.read().index.populate_ahead();
        }
        // The state lock is taken before the record is encoded so that the index's first cache
        // miss for each key (prefetched here) overlaps the copy and the checksum.
        let mut st = state.write();
        let mut tags = [None; PREFETCH_OPS];
        for (tag, op) in tags.iter_mut().zip(ops) {
            let (ns, key) = op_key(op);
            let t = st.index.key_tag(ns, key);
            st.index.prefetch(t);
            *tag = Some(t);
        }
        {
            // SAFETY of the aliasing: bytes rec_off..rec_off+len lie past every byte a reader was
            // given (readers see only records the index points at, all before `tail`).
            let out = mapped_mut(&w.active, rec_off, len);
            format::encode_record_at(out, &w.active.base, &w.active.crc, seq, ops, &mut offsets);
        }
        crate::failpoint!("append.after_write");
        w.tail += len;
        w.next_seq += ops.len() as u64;
        w.appended += len as u64;
        self.commits.fetch_add(1, Ordering::Release);
        let seg = seg_id as u32;
        {
            if let Some(info) = st.segments.get_mut(&seg) {
                info.data_bytes = (w.tail - HEADER_LEN) as u64;
            }
            for (i, op) in ops.iter().enumerate() {
                let dop = as_op(op, seq + i as u64, offsets[i]);
                let tag = tags.get(i).copied().flatten();
                let result = st.apply(seg, rec_off as u32, &dop, false, tag);
                if let Some(a) = applied.as_deref_mut() {
                    a.push(result);
                }
            }
        }
        w.populate_index = st.index.wants_populate();
        drop(st);
        w.value_offsets = offsets;
        // Pages wholly before the tail are final: hand them to write-behind a step at a time.
        // Not when every write is synced anyway: those syncs leave nothing for the seal's sync.
        let done = w.tail / PAGE * PAGE;
        if done >= w.written_behind + WRITE_BEHIND_STEP
            && self.policy != SyncPolicy::Always
            && self.prefaulter.runs_behind()
        {
            self.prefaulter
                .write_behind(&w.active, w.written_behind, done - w.written_behind);
            w.written_behind = done;
        }
        Ok(w.appended)
    }

    /// Creates the next segment, seals the active one, and switches to the new one.
    fn rotate(
        &self,
        w: &mut WriterGuard<'_>,
        state: &StateLock,
        need: usize,
        now: u64,
    ) -> Result<()> {
        // Room for the record in the new segment's compact form, which can exceed `need` by a
        // few varint bytes.
        let need = need + 32;
        let new_id = self.alloc_segment_id()?;
        let size = self.segment_size.max((HEADER_LEN + need) as u64);
        // Readers and the writer's own handle move to a read-only mapping of the old segment and
        // the writable one is dropped (unmapped once no reader holds a value from it) before the
        // fdatasync: writeback then finds no writable page-table entry to clean, instead of
        // write-protecting every dirty page one at a time, each with a TLB shootdown of every
        // core running the process (about a tenth of an unsynced fill's time).
        let writable_len = w.active.mapped_len();
        self.swap_mapping(w, state, w.tail, false)?;
        // The old segment's data reaches the disk before the new segment exists, so a power
        // loss can never leave a torn record in a segment that is no longer the last one.
        crate::failpoint!("rotate.before_sync_old");
        let ticket = self
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(w.appended);
        if let Err(e) = w.active.file.sync_data() {
            self.poison.poison(format!("fdatasync failed: {e}"));
            self.announce();
            return Err(Error::io("fdatasync", &w.active.path, e));
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // Everything in the old segment is durable now (published once the syncs that ran
        // alongside this one have succeeded too).
        {
            let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            self.sync_succeeded(&mut s, ticket, w.appended);
        }
        self.announce();
        let reserve =
            crate::segment::reserve_step(self.segment_size).max((HEADER_LEN + need) as u64);
        let start = crate::segment::SegmentStart {
            base_seq: w.next_seq,
            prev_log_id: w.active.id,
            now_ms: now,
        };
        let new = match Segment::create(&*self.storage, &self.dir, new_id, start, size, reserve) {
            Ok(new) => new,
            Err(e) => {
                // Nothing changed on disk (a full disk, say): the old segment stays active, so it
                // gets its writable mapping back; if even that fails, stop writing.
                if let Err(remap) = self.swap_mapping(w, state, writable_len, true) {
                    self.poison
                        .poison(format!("remapping the active segment failed: {remap}"));
                }
                return Err(e);
            }
        };
        crate::failpoint!("rotate.after_create");
        let new = Arc::new(new);
        // From here on a failure leaves the old segment unsealed: poison rather than guess.
        let sealed = self
            .seal(w)
            .inspect_err(|e| self.poison.poison(format!("sealing a segment failed: {e}")));
        if let Err(e) = sealed {
            let _ = self.storage.remove_file(&new.path);
            return Err(e);
        }
        crate::failpoint!("rotate.before_dir_sync");
        if let Err(e) = self.storage.sync_dir(&self.dir) {
            self.poison
                .poison(format!("fsync of the directory failed: {e}"));
            return Err(Error::io("fsync", &self.dir, e));
        }
        {
            let mut st = state.write();
            if let Some(info) = st.segments.get_mut(&(w.active.id as u32)) {
                info.sealed = true;
            }
            st.segments
                .insert(new_id as u32, SegmentInfo::new(new.clone()));
        }
        w.allocated = reserve.min(size);
        w.active = new;
        w.tail = HEADER_LEN;
        w.prefaulted = HEADER_LEN;
        w.written_behind = 0;
        if let Some(tx) = self.on_seal.get() {
            let _ = tx.send(Msg::Wake);
        }
        Ok(())
    }

    /// Maps the active segment again (`len` bytes, read-only or writable) and points the writer
    /// and the readers (through the segment table) at the new mapping. The previous mapping is
    /// unmapped when the last value read from it is dropped.
    fn swap_mapping(
        &self,
        w: &mut WriterGuard<'_>,
        state: &StateLock,
        len: usize,
        writable: bool,
    ) -> Result<()> {
        let old = &w.active;
        let map = old
            .file
            .map(len, writable)
            .map_err(|e| Error::io("mmap", &old.path, e))?;
        let seg = Arc::new(old.with_map(map));
        {
            let mut st = state.write();
            if let Some(info) = st.segments.get_mut(&(seg.id as u32)) {
                info.seg = seg.clone();
            }
        }
        w.active = seg;
        Ok(())
    }

    /// At a clean close: seals the active segment if it holds at least `min_bytes` of data
    /// (`fdatasync`, then truncate to its data and `fsync`, as a rotation does, but without a
    /// successor), so that its hint can be written and the next open reads the hint instead of
    /// scanning the segment. Returns whether it sealed. Nothing may be appended afterwards: the
    /// caller has stopped every writer.
    pub fn seal_at_close(&self, state: &StateLock, min_bytes: u64) -> Result<bool> {
        let mut w = self.lock()?;
        if ((w.tail - HEADER_LEN) as u64) < min_bytes.max(1) {
            return Ok(false);
        }
        let tail = w.tail;
        self.swap_mapping(&mut w, state, tail, false)?;
        let result = w
            .active
            .file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &w.active.path, e))
            .and_then(|()| self.seal(&w));
        if let Err(e) = result {
            self.poison.poison(format!("sealing at close failed: {e}"));
            return Err(e);
        }
        let mut st = state.write();
        if let Some(info) = st.segments.get_mut(&(w.active.id as u32)) {
            info.sealed = true;
        }
        Ok(true)
    }

    fn seal(&self, w: &WriterGuard<'_>) -> Result<()> {
        let old = &w.active;
        crate::failpoint!("rotate.before_seal");
        old.file
            .set_len(w.tail as u64)
            .map_err(|e| Error::io("truncate", &old.path, e))?;
        old.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &old.path, e))?;
        crate::failpoint!("rotate.after_seal");
        Ok(())
    }

    /// Under [`SyncPolicy::Always`], waits until the log is durable up to `pos`; otherwise returns
    /// at once.
    pub fn wait_durable(&self, pos: u64) -> Result<()> {
        if self.policy == SyncPolicy::Always {
            self.sync_to(pos)
        } else {
            Ok(())
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync_all(&self) -> Result<()> {
        let pos = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .appended;
        self.sync_to(pos)
    }

    /// True if something appended is not yet known durable.
    pub fn dirty(&self) -> bool {
        let pos = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .appended;
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).synced < pos
    }

    fn sync_to(&self, pos: u64) -> Result<()> {
        let back = Returns::arrive(self);
        if self.published.load(Ordering::Acquire) >= pos {
            return Ok(());
        }
        let mut g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.synced >= pos {
                return Ok(());
            }
            self.poison.check()?;
            // Wait if a running sync will cover `pos`, or if as many syncs run as may. The wait
            // holds no lock: every waiter a sync releases returns at once, in parallel, rather
            // than one after the other through the lock (a condition variable's wake-up).
            if g.running_target >= pos || g.running >= MAX_RUNNING_SYNCS {
                // Read under the lock: a result announced after it changes the value, so the
                // wait below returns at once instead of missing it.
                let seen = self.sync_events.load(Ordering::Acquire);
                g.waiting.push((pos, back));
                drop(g);
                atomic_wait::wait(&self.sync_events, seen);
                // Covered: the sync that published it also took this writer's entry out.
                if self.published.load(Ordering::Acquire) >= pos {
                    Returns::released(self);
                    return Ok(());
                }
                g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = g.waiting.iter().position(|&(p, _)| p == pos) {
                    g.waiting.swap_remove(i);
                }
                continue;
            }
            g.running += 1;
            let gather = g.groups.gather(g.waiting.len());
            drop(g);
            self.gather(gather);
            let (seg, target, commits) = {
                let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                (
                    w.active.clone(),
                    w.appended,
                    self.commits.load(Ordering::Acquire),
                )
            };
            let ticket = {
                let mut g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
                g.groups.started(commits);
                g.start(target)
            };
            let began = Instant::now();
            let result = self.sync_segment(&seg);
            let took = began.elapsed();
            g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            g.running -= 1;
            match result {
                Ok(()) => {
                    g.groups.synced_in(took);
                    self.sync_succeeded(&mut g, ticket, target);
                    g.groups.leader_returns = back <= g.groups.limit();
                }
                Err(e) => {
                    self.poison.poison(format!("fdatasync failed: {e}"));
                    drop(g);
                    self.announce();
                    return Err(e);
                }
            }
            drop(g);
            self.announce();
            if target >= pos {
                Returns::released(self);
                return Ok(());
            }
            g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A sync leader lets the writers on their way append first, so that one fdatasync covers
    /// them all: it yields until a commit from each writer the last sync released (and its
    /// own) arrived since that sync started, then while any writer still holds or waits for the
    /// writer lock (a few yields more at most). Bounded by about one fdatasync's time, so a
    /// group that does not fill costs at most twice a sync; a lone writer (groups of one, no
    /// one else appending) does not wait at all, nor does a sync of a store whose writes do not
    /// wait for syncs.
    fn gather(&self, gather: Gather) {
        let Gather {
            waiting,
            since,
            want,
            limit,
        } = gather;
        // Only writes under `Always` wait for syncs; other syncs (the interval flush, an
        // explicit `sync`) have no group to gather.
        let lone = self.policy != SyncPolicy::Always
            || want <= 1 && waiting == 0 && self.appending.load(Ordering::SeqCst) == 0;
        if lone {
            return;
        }
        let began = Instant::now();
        let mut extra = 0;
        while began.elapsed() < limit {
            let arrived = self.commits.load(Ordering::Acquire).saturating_sub(since);
            if arrived >= want {
                if self.appending.load(Ordering::SeqCst) == 0 || extra >= 4 {
                    return;
                }
                extra += 1;
            }
            std::thread::yield_now();
        }
    }

    /// Records that the sync with `ticket` (up to `target`) succeeded, and publishes what is
    /// now durable where waiters read it without the lock. The caller then announces it.
    fn sync_succeeded(&self, g: &mut SyncState, ticket: u64, target: u64) {
        g.succeeded(ticket, target);
        self.published.store(g.synced, Ordering::Release);
    }

    /// Wakes every writer waiting for a sync's result (after it was published, or after the
    /// store was poisoned).
    fn announce(&self) {
        self.sync_events.fetch_add(1, Ordering::Release);
        atomic_wait::wake_all(&self.sync_events);
    }

    fn sync_segment(&self, seg: &Segment) -> Result<()> {
        crate::failpoint!("sync.before");
        seg.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &seg.path, e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        crate::failpoint!("sync.after");
        Ok(())
    }

    /// Bytes appended since open.
    pub fn appended(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .appended
    }

    /// The active segment and the writer's position (for statistics and inspection).
    pub fn position(&self) -> (u64, usize, u64) {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        (w.active.id, w.tail, w.next_seq)
    }
}

// The mapping hands out bytes through a raw pointer: a `&mut` from a shared `Segment` is the
// point, made sound by the single-writer rule stated below.
#[allow(clippy::mut_from_ref)]
fn mapped_mut(seg: &Segment, start: usize, len: usize) -> &mut [u8] {
    let end = start.checked_add(len).filter(|&e| e <= seg.mapped_len());
    assert!(end.is_some(), "write past the active segment's mapping");
    // SAFETY: inside the mapping (checked), writable (the active segment is mapped writable), and
    // only the writer, holding the writer lock, touches these bytes until the index points at
    // them (see the storage module's contract).
    unsafe { std::slice::from_raw_parts_mut(seg.map().as_ptr().add(start), len) }
}

/// The decoded form of an op being written, for [`State::apply`].
/// The (namespace, key) an op writes.
fn op_key<'a>(op: &EncOp<'a>) -> (u8, &'a [u8]) {
    match *op {
        EncOp::Put { ns, key, .. } | EncOp::Delete { ns, key } | EncOp::Expire { ns, key, .. } => {
            (ns, key)
        }
    }
}

fn as_op<'a>(op: &EncOp<'a>, seq: u64, value_offset: usize) -> Op<'a> {
    match *op {
        EncOp::Put {
            ns,
            key,
            value,
            expires_at,
        } => Op::put(seq, ns, key, value, value_offset, expires_at),
        EncOp::Delete { ns, key } => Op {
            kind: format::KIND_DELETE,
            seq,
            ns,
            key,
            value: &[],
            value_offset: 0,
            expires_at: None,
            target_seq: 0,
        },
        EncOp::Expire {
            ns,
            key,
            target_seq,
        } => Op {
            kind: format::KIND_EXPIRE,
            seq,
            ns,
            key,
            value: &[],
            value_offset: 0,
            expires_at: None,
            target_seq,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{GATHER_MAX, GATHER_MIN, GroupStats, SyncState};
    use std::time::Duration;

    #[test]
    fn a_leader_waits_for_the_writers_the_last_sync_released_that_come_back_quickly() {
        let mut s = SyncState::default();
        // Nothing seen yet: a group of one, the shortest wait.
        let first = s.groups.gather(0);
        assert_eq!((first.since, first.want, first.limit), (0, 1, GATHER_MIN));
        s.groups.synced_in(Duration::from_micros(100));
        // Four writers sleep for positions 10, 20, 30 and 20; the one at 20 that usually
        // takes a millisecond to write again is not waited for.
        let quick = Duration::from_micros(30);
        s.waiting.extend([
            (10, quick),
            (30, quick),
            (20, Duration::from_millis(1)),
            (20, quick),
        ]);
        s.groups.started(7);
        let t = s.start(20);
        s.succeeded(t, 20);
        assert_eq!(s.waiting, vec![(30, quick)]);
        s.groups.leader_returns = true;
        let next = s.groups.gather(0);
        assert_eq!((next.since, next.want), (7, 3));
        assert_eq!(next.limit, Duration::from_micros(100));
        // A sync that publishes nothing new leaves the figure as it was.
        s.groups.started(9);
        let t = s.start(15);
        s.succeeded(t, 15);
        assert_eq!(s.waiting, vec![(30, quick)]);
        assert_eq!(s.groups.gather(0).want, 3);
        s.groups.leader_returns = false;
        let t = s.start(40);
        s.succeeded(t, 40);
        assert!(s.waiting.is_empty());
        assert_eq!(s.groups.gather(0).want, 1);
    }

    #[test]
    fn a_leader_waits_about_one_sync_within_bounds() {
        let mut g = GroupStats::default();
        g.synced_in(Duration::from_micros(120));
        assert_eq!(g.gather(0).limit, Duration::from_micros(120));
        // A moving average: one slow sync moves it an eighth of the way.
        g.synced_in(Duration::from_micros(920));
        assert_eq!(g.gather(0).limit, Duration::from_micros(220));
        for _ in 0..64 {
            g.synced_in(Duration::from_millis(30));
        }
        assert_eq!(g.gather(0).limit, GATHER_MAX);
        let mut fast = GroupStats::default();
        fast.synced_in(Duration::from_micros(3));
        assert_eq!(fast.gather(0).limit, GATHER_MIN);
    }

    #[test]
    fn a_sync_is_published_at_once_when_nothing_overlapped_it() {
        let mut s = SyncState::default();
        let t = s.start(10);
        s.succeeded(t, 10);
        assert_eq!(s.synced, 10);
        let t = s.start(25);
        s.succeeded(t, 25);
        assert_eq!(s.synced, 25);
    }

    #[test]
    fn a_sync_waits_for_every_sync_that_overlapped_it() {
        let mut s = SyncState::default();
        let first = s.start(10);
        let second = s.start(20);
        // The second ends first: the first may yet fail (and may have taken the error report
        // for pages the second covered), so nothing is published.
        s.succeeded(second, 20);
        assert_eq!(s.synced, 0);
        // A third starts while the first still runs.
        let third = s.start(30);
        s.succeeded(first, 10);
        // The first and second are published; the third overlapped the first but the first
        // ended before the third did, so the second's target is all that is known durable.
        assert_eq!(s.synced, 20);
        s.succeeded(third, 30);
        assert_eq!(s.synced, 30);
    }

    #[test]
    fn nothing_is_published_after_a_sync_that_never_succeeded() {
        let mut s = SyncState::default();
        let failed = s.start(10);
        let other = s.start(20);
        s.succeeded(other, 20);
        let _ = failed; // it failed: the store is poisoned and the ticket never completes
        let later = s.start(30);
        s.succeeded(later, 30);
        assert_eq!(s.synced, 0);
    }
}
