//! The in-memory index: every live key → where its current value is, its sequence and expiry.
//!
//! Layout, chosen for point reads first and memory second (see FORMAT.md, "Memory"):
//! - a **slab** of fixed 40-byte slots, one per key: the [`Entry`] and where the key's bytes are;
//! - a **key arena**: every key's bytes, namespace byte first, back to back in one buffer (no
//!   allocation per key; holes left by removed keys are reclaimed when they pass half the arena);
//! - a **hash table** of slot numbers (4 bytes a bucket) for point lookups: one probe, one key
//!   comparison;
//! - an **ordered list** of slot numbers in key order, cut into leaves of at most
//!   [`LEAF_MAX`] slots, for prefix scans. Appending keys in order fills leaves completely;
//!   inserts elsewhere split a full leaf in two.
//! - an **expiry heap** of (expiry, sequence, slot) for keys with a TTL, with lazy removal: an
//!   entry whose slot no longer holds that sequence is skipped when it surfaces, and the heap is
//!   rebuilt when stale entries outnumber live ones.
//!
//! Keys are handled as (namespace, key); ordering is by namespace byte, then key bytes.

use hashbrown::HashTable;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hasher};

/// Most slots a leaf of the ordered list holds before it is split.
pub const LEAF_MAX: usize = 512;

/// `Entry::seg` of a tombstone (used only while replaying the log).
pub const TOMBSTONE: u32 = u32::MAX;

/// Where a key's current value lives, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number of the write.
    pub seq: u64,
    /// Absolute expiry in unix ms; 0 for none.
    pub expires_at: u64,
    /// Segment id ([`TOMBSTONE`] for a tombstone during replay).
    pub seg: u32,
    /// Offset of the record holding the value in that segment.
    pub rec_off: u32,
    /// Offset of the value's first byte in that segment.
    pub val_off: u32,
    /// Length of the value.
    pub val_len: u32,
}

impl Entry {
    /// True if the entry has an expiry at or before `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
    /// True for a replay tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.seg == TOMBSTONE
    }
}

#[derive(Clone, Copy)]
struct Slot {
    entry: Entry,
    /// Arena offset in the low 48 bits, stored key length (namespace byte included) in the high 16.
    /// `FREE` for an unused slot.
    key: u64,
}

const FREE: u64 = u64::MAX;

impl Slot {
    fn key_range(&self) -> (usize, usize) {
        (
            (self.key & ((1 << 48) - 1)) as usize,
            (self.key >> 48) as usize,
        )
    }
}

/// The index. Not synchronised: the store keeps it behind its lock.
pub struct Index {
    slots: Vec<Slot>,
    free: Vec<u32>,
    arena: Vec<u8>,
    arena_garbage: usize,
    hash: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    leaves: Vec<Vec<u32>>,
    /// While true (bulk load at open) the ordered list is not maintained; `finish_bulk` builds it.
    bulk: bool,
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    heap_stale: usize,
    live: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("keys", &self.live)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index {
            slots: Vec::new(),
            free: Vec::new(),
            arena: Vec::new(),
            arena_garbage: 0,
            hash: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            leaves: Vec::new(),
            bulk: false,
            heap: BinaryHeap::new(),
            heap_stale: 0,
            live: 0,
        }
    }

    /// Number of keys held (tombstones included during a bulk load).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    fn hash_of(&self, ns: u8, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(ns);
        h.write(key);
        h.finish()
    }

    fn stored_key(&self, slot: u32) -> &[u8] {
        let (off, len) = self.slots[slot as usize].key_range();
        &self.arena[off..off + len]
    }

    /// The key of a slot as (namespace, key).
    fn split_key(&self, slot: u32) -> (u8, &[u8]) {
        let k = self.stored_key(slot);
        (k[0], &k[1..])
    }

    fn cmp_slot(&self, slot: u32, ns: u8, key: &[u8]) -> Ordering {
        let (sns, skey) = self.split_key(slot);
        sns.cmp(&ns).then_with(|| skey.cmp(key))
    }

    fn find(&self, ns: u8, key: &[u8]) -> Option<u32> {
        let h = self.hash_of(ns, key);
        self.hash
            .find(h, |&s| self.split_key(s) == (ns, key))
            .copied()
    }

    /// The entry of a key.
    pub fn get(&self, ns: u8, key: &[u8]) -> Option<&Entry> {
        self.find(ns, key).map(|s| &self.slots[s as usize].entry)
    }

    /// Begins a bulk load: inserts stop maintaining the ordered list until [`Index::finish_bulk`].
    /// `expected` keys are reserved for.
    pub fn begin_bulk(&mut self, expected: usize) {
        self.bulk = true;
        self.slots.reserve(expected);
        let hasher = self.hasher.clone();
        let slots = &self.slots;
        let arena = &self.arena;
        self.hash
            .reserve(expected, |&s| rehash(&hasher, slots, arena, s));
    }

    /// Ends a bulk load: drops every entry `keep` refuses, then builds the ordered list and the
    /// expiry heap from what is left.
    pub fn finish_bulk(&mut self, mut keep: impl FnMut(u8, &[u8], &Entry) -> bool) {
        let mut kept: Vec<u32> = Vec::with_capacity(self.live);
        let mut dropped: Vec<u32> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.key == FREE {
                continue;
            }
            let (off, len) = slot.key_range();
            let k = &self.arena[off..off + len];
            if keep(k[0], &k[1..], &slot.entry) {
                kept.push(i as u32);
            } else {
                dropped.push(i as u32);
            }
        }
        for s in dropped {
            self.unlink_slot(s);
        }
        let arena = &self.arena;
        let slots = &self.slots;
        let key_of = |s: u32| {
            let (off, len) = slots[s as usize].key_range();
            &arena[off..off + len]
        };
        if !kept.is_sorted_by(|&a, &b| key_of(a) < key_of(b)) {
            kept.sort_unstable_by(|&a, &b| key_of(a).cmp(key_of(b)));
        }
        self.leaves = kept.chunks(LEAF_MAX).map(|c| c.to_vec()).collect();
        self.bulk = false;
        self.rebuild_heap();
        self.maybe_compact_arena();
    }

    /// Sets the entry of a key, inserting it if new. Returns the previous entry.
    pub fn upsert(&mut self, ns: u8, key: &[u8], entry: Entry) -> Option<Entry> {
        let h = self.hash_of(ns, key);
        if let Some(&s) = self.hash.find(h, |&s| self.split_key(s) == (ns, key)) {
            let slot = &mut self.slots[s as usize];
            let old = slot.entry;
            slot.entry = entry;
            if old.expires_at != 0 {
                self.heap_stale += 1;
            }
            if entry.expires_at != 0 {
                self.heap.push(Reverse((entry.expires_at, entry.seq, s)));
            }
            self.maybe_rebuild_heap();
            return Some(old);
        }
        let s = self.alloc_slot(ns, key, entry);
        let hasher = self.hasher.clone();
        let slots = &self.slots;
        let arena = &self.arena;
        self.hash
            .insert_unique(h, s, |&x| rehash(&hasher, slots, arena, x));
        if !self.bulk {
            self.ordered_insert(s, ns, key);
        }
        if entry.expires_at != 0 {
            self.heap.push(Reverse((entry.expires_at, entry.seq, s)));
        }
        self.live += 1;
        None
    }

    /// Removes a key. Returns its entry.
    pub fn remove(&mut self, ns: u8, key: &[u8]) -> Option<Entry> {
        let s = self.find(ns, key)?;
        let entry = self.slots[s as usize].entry;
        if !self.bulk {
            self.ordered_remove(s, ns, key);
        }
        self.unlink_slot(s);
        self.maybe_compact_arena();
        Some(entry)
    }

    /// Removes the slot from the hash, frees it; the ordered list is the caller's business.
    fn unlink_slot(&mut self, s: u32) {
        let (ns, key) = self.split_key(s);
        let h = self.hash_of(ns, key);
        if let Ok(e) = self.hash.find_entry(h, |&x| x == s) {
            e.remove();
        }
        let slot = &mut self.slots[s as usize];
        if slot.entry.expires_at != 0 {
            self.heap_stale += 1;
        }
        self.arena_garbage += slot.key_range().1;
        slot.key = FREE;
        self.free.push(s);
        self.live -= 1;
        self.maybe_rebuild_heap();
    }

    fn alloc_slot(&mut self, ns: u8, key: &[u8], entry: Entry) -> u32 {
        let off = self.arena.len() as u64;
        self.arena.push(ns);
        self.arena.extend_from_slice(key);
        let packed = off | (((key.len() + 1) as u64) << 48);
        let slot = Slot { entry, key: packed };
        match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Index of the leaf that holds (or would hold) the key.
    fn leaf_for(&self, ns: u8, key: &[u8]) -> usize {
        let n = self
            .leaves
            .partition_point(|leaf| self.cmp_slot(leaf[0], ns, key) != Ordering::Greater);
        n.saturating_sub(1)
    }

    fn ordered_insert(&mut self, s: u32, ns: u8, key: &[u8]) {
        let Some(last) = self.leaves.last() else {
            self.leaves.push(vec![s]);
            return;
        };
        // Fast path: appending in key order.
        let last_slot = last[last.len() - 1];
        if self.cmp_slot(last_slot, ns, key) == Ordering::Less {
            if last.len() >= LEAF_MAX {
                let mut leaf = Vec::with_capacity(LEAF_MAX);
                leaf.push(s);
                self.leaves.push(leaf);
            } else if let Some(l) = self.leaves.last_mut() {
                l.push(s);
            }
            return;
        }
        let li = self.leaf_for(ns, key);
        let pos = self.leaves[li].partition_point(|&x| self.cmp_slot(x, ns, key) == Ordering::Less);
        let leaf = &mut self.leaves[li];
        leaf.insert(pos, s);
        if leaf.len() > LEAF_MAX {
            let right = leaf.split_off(leaf.len() / 2);
            self.leaves.insert(li + 1, right);
        }
    }

    fn ordered_remove(&mut self, s: u32, ns: u8, key: &[u8]) {
        let li = self.leaf_for(ns, key);
        let pos = self.leaves[li].partition_point(|&x| self.cmp_slot(x, ns, key) == Ordering::Less);
        debug_assert_eq!(self.leaves[li].get(pos), Some(&s));
        if self.leaves[li].get(pos) != Some(&s) {
            return;
        }
        self.leaves[li].remove(pos);
        if self.leaves[li].is_empty() {
            self.leaves.remove(li);
        } else if self.leaves[li].len() < LEAF_MAX / 4
            && li + 1 < self.leaves.len()
            && self.leaves[li].len() + self.leaves[li + 1].len() <= LEAF_MAX
        {
            let next = self.leaves.remove(li + 1);
            self.leaves[li].extend(next);
        }
    }

    /// Moves a key's entry to a copy of the same record (same sequence) elsewhere. False if the
    /// key now holds another write.
    pub fn repoint(
        &mut self,
        ns: u8,
        key: &[u8],
        seq: u64,
        seg: u32,
        rec_off: u32,
        val_off: u32,
    ) -> bool {
        let Some(s) = self.find(ns, key) else {
            return false;
        };
        let e = &mut self.slots[s as usize].entry;
        if e.seq != seq {
            return false;
        }
        e.seg = seg;
        e.rec_off = rec_off;
        e.val_off = val_off;
        true
    }

    /// Calls `f(key, entry)` for the keys of namespace `ns` that start with `prefix` and sort
    /// after `after` (when given), in key order, until `f` returns false.
    pub fn scan(
        &self,
        ns: u8,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &Entry) -> bool,
    ) {
        let (start, exclusive) = match after {
            Some(a) if a >= prefix => (a, true),
            _ => (prefix, false),
        };
        let mut li = self.leaf_for(ns, start);
        if li >= self.leaves.len() {
            return;
        }
        let mut pos = self.leaves[li].partition_point(|&x| match self.cmp_slot(x, ns, start) {
            Ordering::Less => true,
            Ordering::Equal => exclusive,
            Ordering::Greater => false,
        });
        loop {
            while pos < self.leaves[li].len() {
                let s = self.leaves[li][pos];
                let (kns, k) = self.split_key(s);
                if kns != ns || !k.starts_with(prefix) {
                    return;
                }
                if !f(k, &self.slots[s as usize].entry) {
                    return;
                }
                pos += 1;
            }
            li += 1;
            pos = 0;
            if li >= self.leaves.len() {
                return;
            }
        }
    }

    /// The earliest expiry among keys with a TTL.
    pub fn next_expiry(&mut self) -> Option<u64> {
        while let Some(&Reverse((exp, seq, s))) = self.heap.peek() {
            if self.heap_entry_valid(exp, seq, s) {
                return Some(exp);
            }
            self.heap.pop();
            self.heap_stale = self.heap_stale.saturating_sub(1);
        }
        None
    }

    fn heap_entry_valid(&self, exp: u64, seq: u64, s: u32) -> bool {
        let slot = &self.slots[s as usize];
        slot.key != FREE && slot.entry.seq == seq && slot.entry.expires_at == exp
    }

    /// Up to `limit` keys whose expiry is at or before `now`, earliest first, as
    /// (namespace, key, entry). They stay in the index: the caller removes them.
    pub fn due(&mut self, now: u64, limit: usize) -> Vec<(u8, Vec<u8>, Entry)> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        while out.len() < limit {
            let Some(&Reverse((exp, seq, s))) = self.heap.peek() else {
                break;
            };
            if exp > now {
                break;
            }
            let top = self.heap.pop();
            if self.heap_entry_valid(exp, seq, s) {
                let (ns, k) = self.split_key(s);
                out.push((ns, k.to_vec(), self.slots[s as usize].entry));
                seen.extend(top);
            } else {
                self.heap_stale = self.heap_stale.saturating_sub(1);
            }
        }
        // Still in the index until the caller removes them: keep them in the heap.
        self.heap.extend(seen);
        out
    }

    fn maybe_rebuild_heap(&mut self) {
        if self.heap_stale > 1024 && self.heap_stale > self.heap.len() / 2 {
            self.rebuild_heap();
        }
    }

    fn rebuild_heap(&mut self) {
        let items: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, sl)| sl.key != FREE && sl.entry.expires_at != 0)
            .map(|(i, sl)| Reverse((sl.entry.expires_at, sl.entry.seq, i as u32)))
            .collect();
        self.heap = BinaryHeap::from(items);
        self.heap_stale = 0;
    }

    fn maybe_compact_arena(&mut self) {
        if self.arena_garbage < (1 << 20) || self.arena_garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.arena_garbage);
        for slot in self.slots.iter_mut().filter(|s| s.key != FREE) {
            let (off, len) = slot.key_range();
            let new_off = arena.len() as u64;
            arena.extend_from_slice(&self.arena[off..off + len]);
            slot.key = new_off | ((len as u64) << 48);
        }
        self.arena = arena;
        self.arena_garbage = 0;
    }

    /// Bytes of memory the index holds (capacity, not just use), for statistics.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.free.capacity() * 4
            + self.arena.capacity()
            + self.hash.capacity() * 5
            + self.leaves.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.leaves.iter().map(|l| l.capacity() * 4).sum::<usize>()
            + self.heap.capacity() * std::mem::size_of::<Reverse<(u64, u64, u32)>>()
    }

    /// Calls `f` for every key (any order). For statistics and checks.
    pub fn for_each(&self, mut f: impl FnMut(u8, &[u8], &Entry)) {
        for slot in self.slots.iter().filter(|s| s.key != FREE) {
            let (off, len) = slot.key_range();
            let k = &self.arena[off..off + len];
            f(k[0], &k[1..], &slot.entry);
        }
    }
}

fn rehash(hasher: &hashbrown::DefaultHashBuilder, slots: &[Slot], arena: &[u8], s: u32) -> u64 {
    let (off, len) = slots[s as usize].key_range();
    let k = &arena[off..off + len];
    let mut h = hasher.build_hasher();
    h.write_u8(k[0]);
    h.write(&k[1..]);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn e(seq: u64, exp: u64) -> Entry {
        Entry {
            seq,
            expires_at: exp,
            seg: 1,
            rec_off: seq as u32,
            val_off: 0,
            val_len: 0,
        }
    }

    fn check_against(idx: &mut Index, model: &BTreeMap<(u8, Vec<u8>), Entry>) {
        assert_eq!(idx.len(), model.len());
        for ((ns, k), v) in model {
            assert_eq!(idx.get(*ns, k), Some(v));
        }
        for ns in 0..3u8 {
            let mut got = Vec::new();
            idx.scan(ns, b"", None, |k, en| {
                got.push((k.to_vec(), *en));
                true
            });
            let want: Vec<_> = model
                .iter()
                .filter(|((n, _), _)| *n == ns)
                .map(|((_, k), v)| (k.clone(), *v))
                .collect();
            assert_eq!(got, want);
        }
        let min = model
            .values()
            .filter(|v| v.expires_at != 0)
            .map(|v| v.expires_at)
            .min();
        assert_eq!(idx.next_expiry(), min);
    }

    proptest! {
        #[test]
        fn index_matches_a_btreemap(ops in prop::collection::vec((0u8..3, prop::collection::vec(0u8..4, 1..4), 0u64..4, any::<bool>()), 1..600)) {
            let mut idx = Index::new();
            let mut model = BTreeMap::new();
            for (i, (ns, key, exp, del)) in ops.into_iter().enumerate() {
                if del {
                    prop_assert_eq!(idx.remove(ns, &key), model.remove(&(ns, key.clone())));
                } else {
                    let en = e(i as u64 + 1, exp);
                    prop_assert_eq!(idx.upsert(ns, &key, en), model.insert((ns, key.clone()), en));
                }
            }
            check_against(&mut idx, &model);
        }
    }

    #[test]
    fn many_keys_split_and_merge_leaves() {
        let mut idx = Index::new();
        let mut model = BTreeMap::new();
        // Reverse order defeats the append fast path, so leaves split.
        for i in (0..5000u32).rev() {
            let k = format!("key{i:05}").into_bytes();
            idx.upsert(0, &k, e(u64::from(i) + 1, u64::from(i % 7)));
            model.insert((0, k), e(u64::from(i) + 1, u64::from(i % 7)));
        }
        check_against(&mut idx, &model);
        for i in (0..5000u32).filter(|i| i % 3 != 0) {
            let k = format!("key{i:05}").into_bytes();
            idx.remove(0, &k);
            model.remove(&(0, k));
        }
        check_against(&mut idx, &model);
        let mut got = Vec::new();
        idx.scan(0, b"key0", Some(b"key00100"), |k, _| {
            got.push(k.to_vec());
            got.len() < 3
        });
        assert_eq!(
            got,
            vec![
                b"key00102".to_vec(),
                b"key00105".to_vec(),
                b"key00108".to_vec()
            ]
        );
    }

    #[test]
    fn bulk_load_then_filter() {
        let mut idx = Index::new();
        idx.begin_bulk(100);
        for i in (0..100u64).rev() {
            let en = Entry {
                seg: if i % 10 == 0 { TOMBSTONE } else { 1 },
                ..e(i + 1, 0)
            };
            idx.upsert(1, format!("{i:03}").as_bytes(), en);
        }
        idx.finish_bulk(|_, _, en| !en.is_tombstone());
        assert_eq!(idx.len(), 90);
        let mut n = 0;
        let mut prev = Vec::new();
        idx.scan(1, b"", None, |k, _| {
            assert!(k > &prev[..]);
            prev = k.to_vec();
            n += 1;
            true
        });
        assert_eq!(n, 90);
    }

    #[test]
    fn due_reports_expired_in_order_and_skips_superseded() {
        let mut idx = Index::new();
        idx.upsert(0, b"a", e(1, 30));
        idx.upsert(0, b"b", e(2, 10));
        idx.upsert(0, b"c", e(3, 20));
        idx.upsert(0, b"b", e(4, 0)); // persisted: its old deadline is stale
        let due: Vec<_> = idx.due(25, 10).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(due, vec![b"c".to_vec()]);
        assert_eq!(idx.next_expiry(), Some(20));
    }
}
