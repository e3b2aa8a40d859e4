//! Compaction: dead and expired records leave the disk without anyone calling a GC.
//!
//! One pass ([`run`]) does, in order:
//! 1. **Hints**: writes the hint file of every sealed segment that has none.
//! 2. **Whole-segment drops**: a sealed segment holding no live key is unlinked without being
//!    read, unless it holds a tombstone that is still needed (below); then only its hint (or, with
//!    none, its records) is read to check the tombstones.
//! 3. **Rewrites**: sealed segments whose dead ratio reaches the threshold, unless every put in
//!    them expires within the expiry horizon (a quarter of the mean TTL, for a log segment whose
//!    TTLs the writer saw; then they are left to be dropped whole), and short-TTL segments whose
//!    rewrite pays for itself ([`rewrite_pays`]), are rewritten: their
//!    live records (and needed tombstones) are copied into new segments of kind "compacted",
//!    grouped by expiry time so that each new segment later expires whole and is dropped without
//!    another rewrite. Each output is written under a temporary name, fsynced with its hint, renamed,
//!    and the directory fsynced; then index entries that still point at the copied records are
//!    repointed (a short write lock per chunk of keys, the outputs in the segment table first),
//!    and the inputs are unlinked.
//!
//! **Tombstones.** A delete of key `k` with sequence `s` hides the records of `k` below `s`; an
//! expire record hides those below the write it expired (that write's own record says it has
//! expired; see [`hides_below`]). A tombstone hiding below `h` may be dropped only if no other
//! segment that could hold a record it hides remains: no segment other than the tombstone's own
//! has both a smallest sequence below `h` and, in its key filter, `k`'s hash with a sequence below
//! `h`. Other inputs of the same rewrite with a larger id count as remaining: inputs are unlinked
//! one by one in id order, and a stop between two unlinks must not leave a hidden record without
//! its tombstone. Such a tombstone is copied
//! forward and dropped by a later pass, once the older record's segment is gone. Crash
//! safety: every step leaves a directory that opens with the same contents (FORMAT.md,
//! "Compaction").

use crate::error::{Error, Result};
use crate::format::{self, EncOp, HEADER_LEN, Op, SEGMENT_KIND_COMPACTED};
use crate::hint::{self, HintEntry};
use crate::segment::{self, KeyFilter, Segment, SegmentInfo, key_hash, put_cost};
use crate::state::State;
use crate::storage::OpenMode;
use crate::store::Inner;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a compaction pass did, from [`crate::Store::compact`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Keys the expiry pass before compaction expired.
    pub expired_keys: u64,
    /// Hint files written for sealed segments.
    pub hints_written: usize,
    /// Sealed segments unlinked whole.
    pub segments_dropped: usize,
    /// Sealed segments rewritten.
    pub segments_rewritten: usize,
    /// New segments written by rewrites.
    pub segments_written: usize,
    /// Bytes of segment files removed.
    pub bytes_reclaimed: u64,
    /// Bytes of segment and hint files written.
    pub bytes_written: u64,
    /// Tombstones dropped because no older record of their key remained.
    pub tombstones_dropped: u64,
    /// Tombstones copied forward because an older record of their key may remain.
    pub tombstones_kept: u64,
}

/// The hint bytes of a segment, if `use_hint` and it has a file.
fn hint_bytes(inner: &Inner, seg: &Segment, use_hint: bool) -> Result<Option<Vec<u8>>> {
    if !use_hint {
        return Ok(None);
    }
    hint::read(&*inner.opts.storage, &inner.dir, seg.id)
}

/// Every op of a sealed segment with its record offset, from the hint bytes when they are given
/// and valid, else by reading (and checking) the records.
fn segment_ops<'a>(
    seg: &'a Segment,
    end: usize,
    hint: Option<&'a [u8]>,
) -> Result<Vec<(usize, Op<'a>)>> {
    let data = seg.bytes(0, end);
    if let Some(Ok(entries)) = hint.map(|b| hint::decode(b, seg.id, end as u64)) {
        let ops: Option<Vec<_>> = entries
            .iter()
            .map(|e| e.to_op(data).map(|op| (e.rec_off as usize, op)))
            .collect();
        if let Some(ops) = ops {
            return Ok(ops);
        }
    }
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    let mut ops = Vec::new();
    while off < end {
        let rec = format::read_record_in(data, off, &seg.crc, Some(&seg.base), true);
        let rec = rec.map_err(|e| match e {
            format::RecordError::Corrupt(kind) => Error::corrupt(seg.id, off as u64, kind),
            format::RecordError::End => {
                Error::corrupt(seg.id, off as u64, crate::CorruptionKind::Truncated)
            }
        })?;
        rec.ops(&mut ops)
            .map_err(|kind| Error::corrupt(seg.id, off as u64, kind))?;
        out.extend(ops.iter().map(|op| (off, *op)));
        off += rec.len;
    }
    Ok(out)
}

/// Most records a compaction pass handles under one hold of the state lock. Writers and
/// readers wait for the lock's holder, so a pass takes it for a chunk at a time. Held for a
/// whole segment, the liveness check took 5-41 ms for the 50k-73k records of a short-TTL
/// churn's segments, and a full 64 MiB segment holds about ten times as many.
const LOCK_CHUNK: usize = 2048;

/// Longest a compaction pass holds the state lock for one chunk. A tombstone's check reads the
/// key filter of every segment, so its cost grows with their number: under a short-TTL churn,
/// 2048 checks held the lock 3-10 ms.
const LOCK_HOLD: Duration = Duration::from_micros(500);

/// Runs `each` over `items`, a chunk per hold of the lock `lock` takes: at most [`LOCK_CHUNK`]
/// items, and no more than about [`LOCK_HOLD`]. Stops at the first item for which `each`
/// returns true, and returns whether it did.
fn in_holds<T, G>(
    items: &[T],
    lock: impl Fn() -> G,
    mut each: impl FnMut(&mut G, &T) -> bool,
) -> bool {
    let mut rest = items;
    while !rest.is_empty() {
        let mut guard = lock();
        let held = Instant::now();
        let mut done = 0;
        for item in rest {
            if each(&mut guard, item) {
                return true;
            }
            done += 1;
            if done == LOCK_CHUNK || (done % 64 == 0 && held.elapsed() >= LOCK_HOLD) {
                break;
            }
        }
        rest = &rest[done..];
    }
    false
}

fn sealed_snapshot(inner: &Inner) -> Vec<(u32, SegmentInfo)> {
    let st = inner.state.read();
    st.segments
        .iter()
        .filter(|(_, i)| i.sealed)
        .map(|(id, i)| (*id, i.clone()))
        .collect()
}

/// One compaction pass. Serialised with other passes.
pub fn run(inner: &Inner) -> Result<CompactionReport> {
    let _pass = inner
        .compaction_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    inner.poison.check()?;
    let mut report = CompactionReport::default();
    write_hints(inner, &mut report)?;
    build_filters(inner)?;
    drop_dead(inner, &mut report)?;
    rewrite(inner, &mut report)?;
    inner
        .compaction_bytes
        .fetch_add(report.bytes_written, Ordering::Relaxed);
    Ok(report)
}

/// True if every put of the segment expires within the expiry horizon: it is left to die whole.
/// Rewriting it, or writing its hint, would write data about to be dropped anyway (the write
/// amplification TTL workloads must not pay).
fn expires_soon(inner: &Inner, info: &SegmentInfo) -> bool {
    let horizon = crate::clock::duration_ms(inner.opts.expiry_horizon);
    !info.has_persistent && info.max_expiry <= inner.opts.clock.now_ms().saturating_add(horizon)
}

/// The part of the mean TTL within which a rewrite candidate is left to expire whole instead.
pub const TTL_HORIZON_DIVISOR: u64 = 4;
/// Compaction outputs of puts with short TTLs span at most the inputs' mean TTL divided by this
/// in expiry (once they hold [`min_output_bytes`]), so that each expires whole soon after its
/// first key.
pub const OUTPUT_SPAN_DIVISOR: u64 = 8;

/// The least an output holds before an expiry span cuts it: 1/64 of the segment size (1 MiB by
/// default), so that outputs, each a few fsyncs and a file the tombstone checks look through,
/// stay few.
pub fn min_output_bytes(segment_size: u64) -> usize {
    (segment_size / 64) as usize
}

/// True if a rewrite candidate is better left to be dropped whole: it expires soon, within the
/// expiry horizon, or for a segment whose TTLs the writer saw (a log segment written in this
/// process), within a quarter of their mean. Rewriting a segment of 5 s TTLs that still holds
/// half its keys 4 s before its last expiry halves the disk it takes; waiting 10 minutes (the
/// default horizon) would never rewrite it.
fn leave_to_expire(inner: &Inner, info: &SegmentInfo) -> bool {
    let horizon = crate::clock::duration_ms(inner.opts.expiry_horizon);
    let horizon = match info.seg.ttls.mean_ttl() {
        Some(mean) => horizon.min(mean / TTL_HORIZON_DIVISOR),
        None => horizon,
    };
    !info.has_persistent && info.max_expiry <= inner.opts.clock.now_ms().saturating_add(horizon)
}

/// How much rewriting a segment of short TTLs must free, see [`rewrite_pays`]: the dead bytes
/// times the time they would otherwise stay on disk must reach the live bytes (what the rewrite
/// writes) times this fraction of the mean TTL.
pub const REWRITE_PAYBACK: f64 = 0.4;

/// For a segment whose TTLs the writer saw (a log segment written in this process): true if
/// rewriting it now frees enough disk for long enough to be worth copying its live records, in
/// the measure of [`REWRITE_PAYBACK`]: `dead × (max_expiry − now) ≥ live × mean TTL × 0.4`.
/// With TTLs spread over a range (a segment's keys die one by one over seconds) this rewrites a
/// segment once about a quarter of it is dead, long before half; with one TTL for all keys a
/// segment dies whole within the twentieth of a TTL it spans, and the rule never fires (no write
/// amplification).
fn rewrite_pays(inner: &Inner, info: &SegmentInfo) -> bool {
    let Some(mean) = info.seg.ttls.mean_ttl() else {
        return false;
    };
    if info.has_persistent || info.data_bytes == 0 {
        return false;
    }
    let now = inner.opts.clock.now_ms();
    let remaining = info.max_expiry.saturating_sub(now) as f64;
    let live = info.live_bytes.min(info.data_bytes) as f64;
    let dead = info.data_bytes as f64 - live;
    dead * remaining >= live * mean as f64 * REWRITE_PAYBACK
}

/// At a clean close (the workers stopped): writes the hint of every sealed segment that lacks
/// one, the segment sealed by the close included.
pub(crate) fn hints_at_close(inner: &Inner) -> Result<()> {
    write_hints(inner, &mut CompactionReport::default())
}

fn write_hints(inner: &Inner, report: &mut CompactionReport) -> Result<()> {
    for (id, info) in sealed_snapshot(inner)
        .into_iter()
        .filter(|(_, i)| !i.has_hint && !expires_soon(inner, i))
    {
        let seg = info.seg.clone();
        let end = info.end();
        let entries: Vec<HintEntry<'_>> = segment_ops(&seg, end, None)?
            .iter()
            .map(|(off, op)| HintEntry::of(op, *off))
            .collect();
        let bytes = hint::encode(seg.id, end as u64, &entries)?;
        drop(entries);
        hint::write(&*inner.opts.storage, &inner.dir, seg.id, &bytes)?;
        report.hints_written += 1;
        report.bytes_written += bytes.len() as u64;
        let mut st = inner.state.write();
        if let Some(i) = st.segments.get_mut(&id) {
            i.has_hint = true;
        }
    }
    Ok(())
}

/// Builds the key filter of every sealed segment without one, if any tombstone will be checked:
/// a store that never deleted nor expired a key needs none (and keeps no memory for them).
fn build_filters(inner: &Inner) -> Result<()> {
    let sealed = sealed_snapshot(inner);
    if !sealed.iter().any(|(_, i)| i.tombstone_bytes > 0) {
        return Ok(());
    }
    for (id, info) in sealed.into_iter().filter(|(_, i)| i.key_filter.is_none()) {
        let hb = hint_bytes(inner, &info.seg, info.has_hint)?;
        let records: Vec<(u32, u64)> = segment_ops(&info.seg, info.end(), hb.as_deref())?
            .iter()
            .map(|(_, op)| (key_hash(op.ns, op.key), op.seq))
            .collect();
        let filter = KeyFilter::new(&records);
        let mut st = inner.state.write();
        if let Some(i) = st.segments.get_mut(&id) {
            i.key_filter = Some(Arc::new(filter));
        }
    }
    Ok(())
}

/// The sequence below which records of a tombstone's key must stay hidden by it: a delete hides
/// every older record; an expire hides the records older than the write it expired. That write
/// needs no tombstone to stay hidden: its own record carries the expiry that has passed, and
/// replay never serves a key past its expiry. (The expirer writes an expire record only for the
/// key's current write, so its key has no records between that write and the tombstone.)
fn hides_below(op: &Op<'_>) -> u64 {
    if op.kind == format::KIND_EXPIRE {
        op.target_seq
    } else {
        op.seq
    }
}

/// True if a tombstone for (`ns`, `key`) that hides the records of its key below sequence
/// `below` ([`hides_below`]), held by segment `own`, must be kept when `own` goes away.
fn tombstone_needed(st: &State, own: u32, ns: u8, key: &[u8], below: u64) -> bool {
    tombstone_needed_besides(st, own, |_| false, ns, key, below)
}

/// As [`tombstone_needed`], not counting the segments for which `gone` is true: inputs of the
/// same rewrite that are unlinked before `own` is.
fn tombstone_needed_besides(
    st: &State,
    own: u32,
    gone: impl Fn(u32) -> bool,
    ns: u8,
    key: &[u8],
    below: u64,
) -> bool {
    let h = key_hash(ns, key);
    st.segments.iter().any(|(id, info)| {
        *id != own
            && !gone(*id)
            && info.min_seq < below
            && info
                .key_filter
                .as_ref()
                .is_none_or(|f| f.may_hold_older(h, below))
    })
}

fn unlink(inner: &Inner, seg: &Segment) -> Result<()> {
    // What made the segment's records dead (newer writes, deletes, expire records) must be on
    // disk before the records go: under `Interval` or `Never` it may not be yet, and a power loss
    // would then lose the old records and the new ones both. Free when nothing is pending.
    inner.log.sync_all()?;
    let storage = &*inner.opts.storage;
    crate::failpoint!("compaction.before_unlink");
    storage
        .remove_file(&seg.path)
        .map_err(|e| Error::io("remove", &seg.path, e))?;
    let hint_path = inner.dir.join(hint::file_name(seg.id));
    match storage.remove_file(&hint_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", &hint_path, e)),
    }
    crate::failpoint!("compaction.after_unlink");
    storage
        .sync_dir(&inner.dir)
        .map_err(|e| Error::io("fsync", &inner.dir, e))
}

fn drop_dead(inner: &Inner, report: &mut CompactionReport) -> Result<()> {
    for (id, info) in sealed_snapshot(inner)
        .into_iter()
        .filter(|(_, i)| i.live_keys == 0)
    {
        if info.tombstone_bytes > 0 {
            let hb = hint_bytes(inner, &info.seg, info.has_hint)?;
            let tombstones: Vec<(u8, Vec<u8>, u64)> =
                segment_ops(&info.seg, info.end(), hb.as_deref())?
                    .iter()
                    .filter(|(_, op)| op.kind != format::KIND_PUT)
                    .map(|(_, op)| (op.ns, op.key.to_vec(), hides_below(op)))
                    .collect();
            // A read lock per chunk. A tombstone found not needed stays so: only segments with
            // newer records than it can appear meanwhile (writes, and no other compaction).
            let needed = in_holds(
                &tombstones,
                || inner.state.read_after_writers(),
                |st, (ns, k, s)| tombstone_needed(st, id, *ns, k, *s),
            );
            if needed {
                continue;
            }
            report.tombstones_dropped += tombstones.len() as u64;
        }
        {
            let mut st = inner.state.write();
            match st.segments.get(&id) {
                Some(i) if i.sealed && i.live_keys == 0 => {
                    st.segments.remove(&id);
                }
                _ => continue,
            }
        }
        unlink(inner, &info.seg)?;
        report.segments_dropped += 1;
        report.bytes_reclaimed += info.end() as u64;
    }
    Ok(())
}

/// A written compaction output: the segment, its accounting (no live keys yet) and each
/// record's (offset, value offset).
type Output = (Arc<Segment>, SegmentInfo, Vec<(usize, usize)>);

struct Copy<'a> {
    ns: u8,
    key: &'a [u8],
    value: &'a [u8],
    expires_at: Option<u64>,
    seq: u64,
    tombstone: Option<(u8, u64)>,
}

fn rewrite(inner: &Inner, report: &mut CompactionReport) -> Result<()> {
    let threshold = inner.opts.compaction_threshold;
    let segment_size = inner.opts.segment_size as usize;
    let mut candidates: Vec<(u32, SegmentInfo)> = sealed_snapshot(inner)
        .into_iter()
        .filter(|(_, i)| {
            i.data_bytes > 0
                && ((i.dead_ratio() >= threshold && !leave_to_expire(inner, i))
                    || rewrite_pays(inner, i))
        })
        .collect();
    candidates.sort_by_key(|(id, _)| *id);
    // One group per pass, bounded so the pass stays short: up to 4 segments' worth of live data.
    let mut group = Vec::new();
    let mut live = 0u64;
    for (id, info) in candidates {
        if !group.is_empty() && live + info.live_bytes > 4 * segment_size as u64 {
            break;
        }
        live += info.live_bytes;
        group.push((id, info));
    }
    if group.is_empty() {
        return Ok(());
    }
    // In id order, as `group` is, for a binary search: it is asked about every segment a
    // tombstone is checked against, and a `HashSet`'s hashing took a tenth of the compactor's
    // time under a short-TTL churn.
    let removing: Vec<u32> = group.iter().map(|(id, _)| *id).collect();
    debug_assert!(removing.is_sorted());

    // Collect what survives. Records borrow from the inputs' mappings, kept alive by `group`.
    let hints: Vec<Option<Vec<u8>>> = group
        .iter()
        .map(|(_, info)| hint_bytes(inner, &info.seg, info.has_hint))
        .collect::<Result<_>>()?;
    let mut copies: Vec<Copy<'_>> = Vec::new();
    for ((id, info), hb) in group.iter().zip(&hints) {
        let ops = segment_ops(&info.seg, info.end(), hb.as_deref())?;
        // A read lock per chunk, not per segment: writers wait for whoever holds it.
        in_holds(
            &ops,
            || inner.state.read_after_writers(),
            |st, &(_, op)| {
                if op.kind == format::KIND_PUT {
                    let live = st
                        .index
                        .get(op.ns, op.key)
                        .is_some_and(|e| e.seq == op.seq && e.seg == *id);
                    if live {
                        copies.push(Copy {
                            ns: op.ns,
                            key: op.key,
                            value: op.value,
                            expires_at: op.expires_at,
                            seq: op.seq,
                            tombstone: None,
                        });
                    }
                } else if tombstone_needed_besides(
                    st,
                    *id,
                    // Inputs are unlinked in id order (`group` is sorted): those before this one
                    // are gone when it goes, so only the later ones and the rest of the store can
                    // still hold an older record of the key.
                    |other| other < *id && removing.binary_search(&other).is_ok(),
                    op.ns,
                    op.key,
                    hides_below(&op),
                ) {
                    report.tombstones_kept += 1;
                    copies.push(Copy {
                        ns: op.ns,
                        key: op.key,
                        value: &[],
                        expires_at: None,
                        seq: op.seq,
                        tombstone: Some((op.kind, op.target_seq)),
                    });
                } else {
                    report.tombstones_dropped += 1;
                }
                false
            },
        );
    }
    // Group by expiry: outputs then expire whole. Records without expiry (and tombstones) last.
    copies.sort_by_key(|c| (c.expires_at.unwrap_or(u64::MAX), c.seq));
    // With short TTLs seen by the writer, an output also ends where its expiry span passes a
    // eighth of their mean: it is then dropped soon after its first key expires.
    let (ttl_sum, ttl_n) = group
        .iter()
        .filter_map(|(_, i)| i.seg.ttls.mean_ttl())
        .fold((0u64, 0u64), |(s, n), m| (s.saturating_add(m), n + 1));
    let max_span = (ttl_n > 0).then(|| (ttl_sum / ttl_n / OUTPUT_SPAN_DIVISOR).max(1));
    let min_output = min_output_bytes(segment_size as u64);

    // Every output's records are relative to one base: the smallest sequence and the earliest
    // expiry (in whole seconds) of all the copies, so that each record's length is known before
    // the copies are split into outputs.
    let base = format::RecordBase {
        version: format::FORMAT_VERSION,
        base_seq: copies.iter().map(|c| c.seq).min().unwrap_or(0),
        base_ms: u64::from(segment::base_time_s(
            copies
                .iter()
                .filter_map(|c| c.expires_at)
                .min()
                .unwrap_or_else(|| inner.opts.clock.now_ms()),
        )) * 1000,
    };
    let mut outputs: Vec<(usize, Output)> = Vec::new();
    let mut start = 0;
    while start < copies.len() {
        let mut size = HEADER_LEN;
        let mut end = start;
        while end < copies.len() {
            let len = format::record_len_at(&base, copies[end].seq, &[enc(&copies[end])]);
            if end > start && size + len > segment_size {
                break;
            }
            // Kept tombstones (sorted after every put with an expiry) go to outputs of their
            // own: one in an output of short-lived puts would give it a hint and could keep it
            // on disk after its puts expired, until the tombstone is no longer needed.
            if end > start && copies[end].tombstone.is_some() != copies[start].tombstone.is_some() {
                break;
            }
            if let (Some(span), Some(first), Some(e)) =
                (max_span, copies[start].expires_at, copies[end].expires_at)
                && size >= min_output
                && e - first > span
            {
                break;
            }
            size += len;
            end += 1;
        }
        // An output that expires soon (puts only, all with an expiry within the expiry
        // horizon) gets no hint, like a sealed log segment that expires soon (`write_hints`): it
        // is dropped whole before long, and a hint (about a third of its size) would only add to
        // the disk it takes and to what compaction writes. Open scans it if it is still there.
        let horizon = crate::clock::duration_ms(inner.opts.expiry_horizon);
        let with_hint = copies[start..end]
            .iter()
            .any(|c| c.tombstone.is_some() || c.expires_at.is_none())
            || copies[start..end]
                .iter()
                .filter_map(|c| c.expires_at)
                .max()
                .is_none_or(|last| last > inner.opts.clock.now_ms().saturating_add(horizon));
        outputs.push((
            start,
            write_output(inner, &base, &copies[start..end], size, with_hint, report)?,
        ));
        start = end;
    }

    // Publish. The outputs join the segment table first, so that a reader who follows a
    // repointed key finds its segment; then the keys that still point at the copied records
    // move over, a chunk per write lock, so that no writer or reader waits for a whole rewrite
    // (one write lock over all of them took 9-17 ms for a short-TTL churn's segments, more for
    // full ones); the inputs leave the table last. In between, a key is served from its input
    // or its output: both hold its record.
    let mut moves: Vec<(usize, u32, usize, usize)> = Vec::new();
    {
        let mut st = inner.state.write();
        for (first, (seg, info, positions)) in outputs.drain(..) {
            let sid = seg.id as u32;
            st.segments.insert(sid, info);
            moves.extend(
                positions
                    .into_iter()
                    .enumerate()
                    .map(|(i, (rec_off, val_off))| (first + i, sid, rec_off, val_off))
                    .filter(|&(c, ..)| copies[c].tombstone.is_none()),
            );
        }
    }
    in_holds(
        &moves,
        || inner.state.write_after_writers(),
        |guard, &(c, sid, rec_off, val_off)| {
            let st = &mut **guard;
            let c = &copies[c];
            let cost = put_cost(
                c.key.len(),
                rec_off as u32,
                val_off as u32,
                c.value.len(),
                c.expires_at.is_some(),
            );
            if st
                .index
                .repoint(c.ns, c.key, c.seq, sid, rec_off as u32, cost)
                && let Some(info) = st.segments.get_mut(&sid)
            {
                info.live_bytes += u64::from(cost);
                info.live_keys += 1;
            }
            false
        },
    );
    {
        let mut st = inner.state.write();
        for id in &removing {
            st.segments.remove(id);
        }
    }
    for (_, info) in &group {
        unlink(inner, &info.seg)?;
        report.segments_rewritten += 1;
        report.bytes_reclaimed += info.end() as u64;
    }
    Ok(())
}

fn enc<'a>(c: &Copy<'a>) -> EncOp<'a> {
    match c.tombstone {
        Some((format::KIND_EXPIRE, target_seq)) => EncOp::Expire {
            ns: c.ns,
            key: c.key,
            target_seq,
        },
        Some(_) => EncOp::Delete {
            ns: c.ns,
            key: c.key,
        },
        None => EncOp::Put {
            ns: c.ns,
            key: c.key,
            value: c.value,
            expires_at: c.expires_at,
        },
    }
}

/// Writes one compaction output: temporary file, fsync, hint, rename, directory fsync. Returns the
/// open segment, its accounting (no live keys yet) and each record's (offset, value offset).
fn write_output(
    inner: &Inner,
    base: &format::RecordBase,
    copies: &[Copy<'_>],
    size: usize,
    with_hint: bool,
    report: &mut CompactionReport,
) -> Result<Output> {
    let storage = &*inner.opts.storage;
    let id = inner.log.alloc_segment_id()?;
    let mut buf = vec![0u8; size];
    let header = format::SegmentHeader {
        version: base.version,
        kind: SEGMENT_KIND_COMPACTED,
        prev_log_id: 0,
        segment_id: id,
        base_seq: base.base_seq,
        base_time_s: segment::base_time_s(base.base_ms),
    };
    debug_assert_eq!(header.record_base(), *base);
    buf[..HEADER_LEN].copy_from_slice(&header.encode());
    let mut positions = Vec::with_capacity(copies.len());
    let mut offs = Vec::with_capacity(1);
    let mut at = HEADER_LEN;
    let mut keys = Vec::with_capacity(copies.len());
    let mut seqs = (u64::MAX, 0u64);
    let mut max_expiry = 0;
    let mut has_persistent = false;
    let mut tombstone_bytes = 0;
    let seed = format::CrcSeed::new(id);
    for c in copies {
        let op = [enc(c)];
        let len = format::record_len_at(base, c.seq, &op);
        offs.clear();
        format::encode_record_at(&mut buf[at..at + len], base, &seed, c.seq, &op, &mut offs);
        positions.push((at, at + offs[0]));
        keys.push((key_hash(c.ns, c.key), c.seq));
        seqs = (seqs.0.min(c.seq), seqs.1.max(c.seq));
        match (c.tombstone, c.expires_at) {
            (Some(_), _) => tombstone_bytes += len as u64,
            (None, Some(e)) => max_expiry = max_expiry.max(e),
            (None, None) => has_persistent = true,
        }
        at += len;
    }
    // Hint entries borrow from `buf`: build them in a second pass, reading back (and so
    // checking) every record just encoded.
    let mut entries = Vec::with_capacity(copies.len());
    let mut ops = Vec::with_capacity(1);
    for &(off, _) in &positions {
        let rec = format::read_record(&buf, off, id)
            .map_err(|_| Error::corrupt(id, off as u64, crate::CorruptionKind::BadChecksum))?;
        rec.ops(&mut ops)
            .map_err(|k| Error::corrupt(id, off as u64, k))?;
        entries.push(HintEntry::of(&ops[0], off));
    }
    let hint_bytes = if with_hint {
        Some(hint::encode(id, size as u64, &entries)?)
    } else {
        None
    };
    drop(entries);

    let final_path = inner.dir.join(segment::file_name(id));
    let tmp = inner.dir.join(format!("{}.tmp", segment::file_name(id)));
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", &tmp, e))?;
    let written = (|| {
        file.allocate(size as u64)
            .map_err(|e| Error::io("fallocate", &tmp, e))?;
        file.write_all_at(&buf, 0)
            .map_err(|e| Error::io("write", &tmp, e))?;
        crate::failpoint!("compaction.before_output_sync");
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        if let Some(h) = &hint_bytes {
            hint::write(storage, &inner.dir, id, h)?;
        }
        crate::failpoint!("compaction.before_publish");
        storage
            .rename(&tmp, &final_path)
            .map_err(|e| Error::io("rename", &tmp, e))?;
        storage
            .sync_dir(&inner.dir)
            .map_err(|e| Error::io("fsync", &inner.dir, e))?;
        crate::failpoint!("compaction.after_publish");
        Ok(())
    })();
    if let Err(e) = written {
        let _ = storage.remove_file(&tmp);
        let _ = storage.remove_file(&inner.dir.join(hint::file_name(id)));
        return Err(e);
    }
    drop(file);
    let seg = Arc::new(Segment::open(storage, &inner.dir, id, false)?);
    let mut info = SegmentInfo::new(seg.clone());
    info.kind = SEGMENT_KIND_COMPACTED;
    info.sealed = true;
    info.has_hint = hint_bytes.is_some();
    info.data_bytes = (size - HEADER_LEN) as u64;
    info.min_seq = seqs.0;
    info.max_seq = seqs.1;
    info.max_expiry = max_expiry;
    info.has_persistent = has_persistent;
    info.tombstone_bytes = tombstone_bytes;
    info.key_filter = Some(Arc::new(KeyFilter::new(&keys)));
    report.segments_written += 1;
    report.bytes_written += (size + hint_bytes.as_ref().map_or(0, Vec::len)) as u64;
    Ok((seg, info, positions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Each hold covers at most `LOCK_CHUNK` items, every item is seen once and in order, and
    /// the first `true` stops the run.
    #[test]
    fn in_holds_takes_the_lock_a_chunk_at_a_time() {
        let items: Vec<usize> = (0..LOCK_CHUNK * 2 + 100).collect();
        let holds = Cell::new(0usize);
        let mut seen = Vec::new();
        let mut per_hold: Vec<usize> = Vec::new();
        let stopped = in_holds(
            &items,
            || holds.set(holds.get() + 1),
            |_, &i| {
                if per_hold.len() < holds.get() {
                    per_hold.push(0);
                }
                *per_hold.last_mut().unwrap() += 1;
                seen.push(i);
                false
            },
        );
        assert!(!stopped);
        assert_eq!(seen, items);
        assert!(holds.get() >= 3, "{} holds", holds.get());
        assert!(per_hold.iter().all(|&n| (1..=LOCK_CHUNK).contains(&n)));

        let mut count = 0;
        assert!(in_holds(
            &items,
            || (),
            |_, &i| {
                count += 1;
                i == LOCK_CHUNK + 5
            }
        ));
        assert_eq!(count, LOCK_CHUNK + 6);
    }
}
