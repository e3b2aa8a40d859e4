//! The store's in-memory state: the index and the per-segment accounting, and the one function
//! that applies a logged operation to them, shared by the write path and by recovery so that both
//! always agree.

use crate::format::{KIND_DELETE, KIND_EXPIRE, KIND_PUT, Op};
use crate::index::{Entry, Index, KeyTag, TOMBSTONE};
use crate::segment::{SegmentInfo, put_cost};
use std::collections::BTreeMap;

/// Everything readers look at, behind the store's `RwLock`.
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
