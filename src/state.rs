//! The store's in-memory state: the index and the per-segment accounting, and the one function
//! that applies a logged operation to them, shared by the write path and by recovery so that both
//! always agree.

use crate::format::{KIND_DELETE, KIND_EXPIRE, KIND_PUT, Op};
use crate::index::{Entry, Index, KeyTag, TOMBSTONE};
use crate::segment::{SegmentInfo, put_cost};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Everything readers look at, behind the store's [`StateLock`].
#[derive(Debug, Default)]
pub struct State {
    /// Key → current value.
    pub index: Index,
    /// Segment id → segment and its accounting.
    pub segments: BTreeMap<u32, SegmentInfo>,
}

/// What applying an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The op changed the key; `old` is what it replaced (live entries only).
    Changed {
        /// The previous live entry.
        old: Option<Entry>,
    },
    /// The op was stale (an expire whose write was superseded, or an older record during replay).
    Stale,
}

/// Bytes a delete or expire record adds to its segment's tombstone bytes.
pub(crate) fn tombstone_cost(op: &Op<'_>) -> u64 {
    (crate::format::RECORD_PREFIX
        + 1
        + 8
        + 1
        + crate::format::varint_len(op.key.len() as u64)
        + op.key.len()) as u64
        + if op.kind == KIND_EXPIRE { 8 } else { 0 }
}

impl State {
    /// Takes back from its segment what a put the key no longer holds was accounted as.
    fn account_removed(&mut self, old: &Entry) {
        if old.is_tombstone() {
            return;
        }
        if let Some(info) = self.segments.get_mut(&old.seg) {
            info.live_bytes = info.live_bytes.saturating_sub(u64::from(old.cost));
            info.live_keys = info.live_keys.saturating_sub(1);
        }
    }

    /// Applies `op`, found in the record at `rec_off` of segment `seg`.
    ///
    /// In `replay` mode (recovery) ops may arrive out of sequence order, so an op older than what
    /// the index holds for its key is ignored, and deletes leave a tombstone entry (removed by
    /// `State::finish_replay`) so that an older put replayed later cannot resurrect the key.
    /// Recovery itself stages its ops and resolves each key in one go (`recovery::resolve_key`
    /// and `recovery::finish_staged`), which must end exactly as this mode does: its tests
    /// compare the two.
    ///
    /// `tag` is the key's tag ([`Index::key_tag`]) when the caller has it.
    pub fn apply(
        &mut self,
        seg: u32,
        rec_off: u32,
        op: &Op<'_>,
        replay: bool,
        tag: Option<KeyTag>,
    ) -> Applied {
        // A put needs no lookup first: the upsert decides against what it finds, in one lookup.
        let current = if op.kind != KIND_PUT {
            self.index.get(op.ns, op.key)
        } else {
            None
        };
        if op.kind != KIND_PUT
            && let Some(info) = self.segments.get_mut(&seg)
        {
            info.saw_seq(op.seq);
        }
        if replay && current.is_some_and(|c| c.seq >= op.seq) {
            self.add_tombstone_bytes(seg, op);
            return Applied::Stale;
        }
        match op.kind {
            KIND_PUT => {
                let entry = put_entry(op, seg, rec_off);
                // During replay an older op than the key's current one is stale.
                let tag = tag.unwrap_or_else(|| self.index.key_tag(op.ns, op.key));
                let (old, changed) = self.index.upsert_tagged(tag, op.ns, op.key, |cur| {
                    (!replay || cur.is_none_or(|c| c.seq < op.seq)).then_some(entry)
                });
                if !changed {
                    if let Some(info) = self.segments.get_mut(&seg) {
                        info.saw_seq(op.seq);
                    }
                    return Applied::Stale;
                }
                if let Some(o) = &old {
                    self.account_removed(o);
                }
                if let Some(info) = self.segments.get_mut(&seg) {
                    info.saw_seq(op.seq);
                    info.live_bytes += u64::from(entry.cost);
                    info.live_keys += 1;
                    match op.expires_at {
                        Some(e) => info.max_expiry = info.max_expiry.max(e),
                        None => info.has_persistent = true,
                    }
                }
                Applied::Changed {
                    old: old.filter(|o| !o.is_tombstone()),
                }
            }
            KIND_DELETE | KIND_EXPIRE => {
                self.add_tombstone_bytes(seg, op);
                let Some(cur) = current.filter(|c| !c.is_tombstone()) else {
                    // Replay may meet a tombstone before the put it removes (compaction output
                    // is replayed after newer segments): remember the removal either way.
                    return if replay {
                        self.index.upsert(op.ns, op.key, tomb(op.seq));
                        Applied::Changed { old: None }
                    } else {
                        Applied::Stale
                    };
                };
                // An expire removes exactly the write it names; a newer write survives it. During
                // replay an older current entry (its target not replayed yet) is removed too.
                let stale_expire = if replay {
                    cur.seq > op.target_seq
                } else {
                    cur.seq != op.target_seq
                };
                if op.kind == KIND_EXPIRE && stale_expire {
                    return Applied::Stale;
                }
                self.account_removed(&cur);
                if replay {
                    self.index.upsert(op.ns, op.key, tomb(op.seq));
                } else {
                    self.index.remove(op.ns, op.key);
                }
                Applied::Changed { old: Some(cur) }
            }
            _ => Applied::Stale,
        }
    }

    fn add_tombstone_bytes(&mut self, seg: u32, op: &Op<'_>) {
        if let Some(info) = self.segments.get_mut(&seg) {
            info.tombstone_bytes += tombstone_cost(op);
        }
    }

    /// Ends replay: drops tombstones, builds the ordered index and the expiry heap. Keys already
    /// expired stay (reads never serve them): the expirer logs their expiry and reports them, so
    /// that a key whose deadline passed while the process was down is still notified.
    /// (Recovery stages its ops instead; this path is the reference its tests compare with.)
    #[cfg(test)]
    pub fn finish_replay(&mut self) {
        self.index.finish_bulk(|_, _, e| !e.is_tombstone());
    }
}

/// The index entry of the put `op`, found in the record at `rec_off` of segment `seg`.
pub(crate) fn put_entry(op: &Op<'_>, seg: u32, rec_off: u32) -> Entry {
    Entry {
        seq: op.seq,
        expires_at: op.expires_at.unwrap_or(0),
        seg,
        rec_off,
        cost: put_cost(
            op.key.len(),
            rec_off,
            rec_off + op.value_offset as u32,
            op.value.len(),
            op.expires_at.is_some(),
        ),
    }
}

fn tomb(seq: u64) -> Entry {
    Entry {
        seq,
        expires_at: 0,
        seg: TOMBSTONE,
        rec_off: 0,
        cost: 0,
    }
}

/// The lock over the store's [`State`]: a reader-writer lock that also counts the threads
/// waiting to write, so that a pass which takes it over and over (compaction, a chunk at a time)
/// lets them in first.
///
/// Without that, such a pass starves writers: the standard lock, when its last reader leaves,
/// wakes a waiting writer and is free until that thread runs, and the pass takes it again long
/// before then. Measured under a short-TTL churn: the expirer, holding the writer lock, waited
/// up to 260 ms for the state lock while compaction took 35 read holds in a row, and every put
/// waited behind the expirer.
///
/// A lock poisoned by a panicking holder is taken anyway, as everywhere in the store; a
/// background thread that panics poisons the store itself (see `background`).
#[derive(Debug)]
pub struct StateLock {
    lock: RwLock<State>,
    /// Threads waiting for the write lock (those that did not get it at once).
    writers_waiting: AtomicU32,
    /// Passes waiting in [`StateLock::read_after_writers`] or
    /// [`StateLock::write_after_writers`]: while there are some, the last writer to stop waiting
    /// wakes them.
    pass_waiting: AtomicU32,
}

impl StateLock {
    /// A lock over `state`.
    pub fn new(state: State) -> StateLock {
        StateLock {
            lock: RwLock::new(state),
            writers_waiting: AtomicU32::new(0),
            pass_waiting: AtomicU32::new(0),
        }
    }

    /// Shared access, for one read.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive access. Counted as waiting only if the lock is not free at once, so the
    /// uncontended path costs what the plain lock does.
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        if let Ok(g) = self.lock.try_write() {
            return g;
        }
        self.writers_waiting.fetch_add(1, Ordering::SeqCst);
        let g = self.lock.write().unwrap_or_else(|e| e.into_inner());
        if self.writers_waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && self.pass_waiting.load(Ordering::SeqCst) != 0
        {
            atomic_wait::wake_all(&self.writers_waiting);
        }
        g
    }

    /// Shared access if no writer holds or waits for the lock.
    #[cfg(test)]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, State>> {
        self.lock.try_read().ok()
    }

    /// Threads waiting for the write lock.
    #[cfg(test)]
    pub fn writers_waiting(&self) -> u32 {
        self.writers_waiting.load(Ordering::SeqCst)
    }

    /// Shared access for one chunk of a long pass: first waits until no writer waits.
    pub fn read_after_writers(&self) -> RwLockReadGuard<'_, State> {
        self.wait_for_writers();
        self.read()
    }

    /// Exclusive access for one chunk of a long pass: first waits until no other writer waits.
    pub fn write_after_writers(&self) -> RwLockWriteGuard<'_, State> {
        self.wait_for_writers();
        self.write()
    }

    fn wait_for_writers(&self) {
        loop {
            let n = self.writers_waiting.load(Ordering::SeqCst);
            if n == 0 {
                return;
            }
            self.pass_waiting.fetch_add(1, Ordering::SeqCst);
            // A writer that stopped waiting after the load above changed the count, so the
            // wait returns at once; one that stops later sees `pass_waiting` and wakes it.
            atomic_wait::wait(&self.writers_waiting, n);
            self.pass_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Yields until `cond` holds; panics (rather than hangs) if it never does.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1_000_000 {
            if cond() {
                return;
            }
            std::thread::yield_now();
        }
        panic!("never happened: {what}");
    }

    /// A pass's chunk lets a waiting writer in first: it waits (visibly, in `pass_waiting`)
    /// while the writer waits, and gets the lock only after the writer had it.
    #[test]
    fn a_pass_waits_for_a_waiting_writer() {
        let lock = Arc::new(StateLock::new(State::default()));
        let reader = lock.read();
        let wrote = Arc::new(AtomicBool::new(false));
        let writer = {
            let (lock, wrote) = (lock.clone(), wrote.clone());
            std::thread::spawn(move || {
                let _g = lock.write();
                wrote.store(true, Ordering::SeqCst);
            })
        };
        wait_until("the writer waits", || {
            lock.writers_waiting.load(Ordering::SeqCst) == 1
        });
        let pass = {
            let (lock, wrote) = (lock.clone(), wrote.clone());
            std::thread::spawn(move || {
                let _g = lock.read_after_writers();
                wrote.load(Ordering::SeqCst)
            })
        };
        wait_until("the pass waits for the writer", || {
            lock.pass_waiting.load(Ordering::SeqCst) == 1
        });
        drop(reader);
        writer.join().unwrap();
        assert!(
            pass.join().unwrap(),
            "the pass had the lock before the writer"
        );
        assert_eq!(lock.writers_waiting.load(Ordering::SeqCst), 0);
        assert_eq!(lock.pass_waiting.load(Ordering::SeqCst), 0);
    }

    /// Without a waiting writer a pass takes the lock at once, shared with readers.
    #[test]
    fn a_pass_without_writers_waiting_goes_at_once() {
        let lock = StateLock::new(State::default());
        let _reader = lock.read();
        let _pass = lock.read_after_writers();
        assert_eq!(lock.pass_waiting.load(Ordering::SeqCst), 0);
    }
}
