//! The in-memory index: every live key → where its current value is, its sequence and expiry.
//!
//! Layout, chosen for point reads first and memory second (see FORMAT.md, "Memory"):
//! - a **hash table** of 16-byte buckets: `(32-bit hash tag, record offset)` and a copy of the
//!   location of the key's log record `(segment, offset)`. Open addressing with linear probing
//!   and deletion by backward shift (no tombstones). The home bucket is derived from the tag
//!   alone, so growing the table never reads the arena or rehashes a key. A point read costs one
//!   table cache line and then the log record itself, which holds the key (compared there), its
//!   expiry and its sequence: it never reads the arena;
//! - a **record arena**: one record per key, back to back in one buffer of 8-byte words (no
//!   allocation per key). A record is a 32-byte [`Head`] (the key's [`Entry`]: sequence, expiry,
//!   location, accounted cost; then the key length, namespace byte and flags byte) and the key
//!   bytes, padded to 8 bytes; it is addressed by its offset in words (a `u32`, so the arena
//!   holds at most 32 GiB). An update rewrites the head and the bucket's location in place; a
//!   removal marks the record dead, and the arena is compacted in place (live records slid
//!   down over the dead ones, every offset remapped) when dead records pass half of it;
//! - an **ordered list** of record offsets in key order, cut into leaves of at most
//!   [`LEAF_MAX`] offsets, for prefix scans. Appending keys in order fills leaves completely;
//!   inserts elsewhere split a full leaf in two. A removed key's record stays in it, dead and
//!   skipped by scans, until the arena is compacted or a scan that stepped over many has its
//!   range purged ([`Index::purge_removed`]);
//! - an **expiry heap** of (expiry, sequence, offset) for keys with a TTL, with lazy removal: an
//!   entry whose record is dead or no longer holds that (expiry, sequence) is skipped when it
//!   surfaces, and dropped when the heap is rebuilt (once stale entries outnumber live ones)
//!   or the arena compacted. The expirer takes due entries out ([`Index::due`]) and removes
//!   their keys.
//!
//! Keys are handled as (namespace, key); ordering is by namespace byte, then key bytes.

use std::cmp::Ordering;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use crate::heap::QuadHeap;
use crate::words::Words;

/// Most slots a leaf of the ordered list holds before it is split.
pub const LEAF_MAX: usize = 512;

/// Most leaves one [`Index::purge_removed`] goes through (64k slots: a few milliseconds).
const PURGE_LEAVES: usize = 128;

/// The removed keys a scan stepped over: still in the ordered list, skipped (see
/// [`Index::purge_removed`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// How many.
    pub count: usize,
    /// The first one's key (empty if none).
    pub first: Vec<u8>,
}

/// `Entry::seg` of a tombstone (used only while replaying the log).
pub const TOMBSTONE: u32 = u32::MAX;
/// `Entry::seg` of the tombstone of an expire (used only while replaying the log, which needs
/// to tell an expire from a delete).
pub const EXPIRE_TOMBSTONE: u32 = u32::MAX - 1;

/// Where a key's current value lives, and what it is.
///
/// The value itself (its offset and length) is read from the log record at (`seg`, `rec_off`),
/// which every read checks anyway; the index keeps only what it needs without the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number of the write.
    pub seq: u64,
    /// Absolute expiry in unix ms; 0 for none.
    pub expires_at: u64,
    /// Segment id ([`TOMBSTONE`] or [`EXPIRE_TOMBSTONE`] for a tombstone during replay).
    pub seg: u32,
    /// Offset of the record holding the value in that segment.
    pub rec_off: u32,
    /// Bytes the put is accounted as in its segment's live bytes (`segment::put_cost`), taken
    /// back when the key moves on. (During replay only, a tombstone carries the high half of an
    /// expire's target sequence here, the low half in `rec_off`.)
    pub cost: u32,
}

impl Entry {
    /// True if the entry has an expiry at or before `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
    /// True for a replay tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.seg >= EXPIRE_TOMBSTONE
    }
}

/// The head of an arena record: the key's [`Entry`], then the key's length, namespace and flags.
///
/// `repr(C)`: stored inside the arena's words and lent out by reference, so the layout (32
/// bytes, 8-aligned, integers only) is fixed.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    expires_at: u64,
    seg: u32,
    rec_off: u32,
    cost: u32,
    key_len: u16,
    ns: u8,
    flags: u8,
}

impl Head {
    fn entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            expires_at: self.expires_at,
            seg: self.seg,
            rec_off: self.rec_off,
            cost: self.cost,
        }
    }
    fn set(&mut self, e: &Entry) {
        self.seq = e.seq;
        self.expires_at = e.expires_at;
        self.seg = e.seg;
        self.rec_off = e.rec_off;
        self.cost = e.cost;
    }
    fn loc(&self) -> u64 {
        (u64::from(self.seg) << 32) | u64::from(self.rec_off)
    }
}

/// One bucket of the hash table: `key` is `(32-bit tag << 32) | record offset` (0 for an empty
/// bucket), `loc` the location of the key's log record, `(segment << 32) | offset` (a copy of the
/// one in the record's [`Head`], kept in step, so that a point read need not read the arena).
/// 16 bytes, 16-aligned: four to a cache line, never split across two.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    key: u64,
    loc: u64,
}

impl Bucket {
    fn tag(&self) -> u32 {
        (self.key >> 32) as u32
    }
    fn off(&self) -> u32 {
        self.key as u32
    }
    fn is_empty(&self) -> bool {
        self.key == 0
    }
}

/// A removed key's bucket in the previous table while the table grows (see [`Index::old`]):
/// unlike an empty bucket it keeps the probe sequences through it going. No record has it: the
/// arena never reaches offset `u32::MAX`.
const GONE: Bucket = Bucket {
    key: u64::MAX,
    loc: 0,
};

/// Where a key's bucket is: `table[i]`, or `old[i]` while the table grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    old: bool,
    i: usize,
}

/// Buckets of the previous table moved to the new one by each insert, update or removal while
/// the table grows. A growth starts with at most 85% of the old table's buckets used and the
/// next one comes at 85% of the new one (1.5 times as large), so at least 0.42 inserts per old
/// bucket lie between them: any step above 2.4 finishes in time, and 16 keeps the time a
/// lookup also probes the old table short.
const GROW_STEP: usize = 16;

/// Bytes before the key in a record: its [`Head`].
const HEADER_BYTES: usize = 32;
/// Words of a [`Head`].
const HEAD_WORDS: usize = HEADER_BYTES / 8;
const _: () = assert!(
    std::mem::size_of::<Head>() == HEADER_BYTES
        && std::mem::align_of::<Head>() == 8
        && std::mem::size_of::<Bucket>() == 16
);
/// Flags bit of a removed record.
const DEAD: u8 = 1;
/// Flags bit of a record whose heap entry [`Index::due`] handed out: the expirer is removing
/// the key. Cleared when the key is written again or put back ([`Index::requeue`]).
const TAKEN: u8 = 8;
/// The table grows when more than `MAX_LOAD_PCT`% of its buckets are used...
const MAX_LOAD_PCT: usize = 85;
/// ... by half: loads stay between 57% and 85%.
const GROW_NUM: usize = 3;
const GROW_DEN: usize = 2;
/// Smallest table.
const MIN_BUCKETS: usize = 16;
/// From this load on (with no growth under way) each insert faults in [`PREPARE_STEP_BYTES`]
/// more of the table the next growth will take ([`Index::prepare_step`]). Above the 80% a
/// table built at open has, so that a reopened store does not hold a second table until it
/// takes new keys.
const PREPARE_LOAD_PCT: usize = 81;
/// Bytes of the next table one insert faults in: one huge page.
const PREPARE_STEP_BYTES: usize = 2 << 20;
/// Words of the arena kept faulted in past its end by [`Index::populate_ahead`] (4 MiB: two huge
/// pages)...
const POPULATE_AHEAD_WORDS: usize = (4 << 20) / 8;
/// ... once the arena holds this many words (8 MiB), so that a small index never holds memory
/// it does not use.
const POPULATE_MIN_WORDS: usize = (8 << 20) / 8;
/// Which of [`Index::populated`]'s hints: the arena's (words)...
const POPULATED_ARENA: usize = 0;
/// ... and the next table's (bytes).
const POPULATED_NEXT: usize = 1;
/// The arena is compacted only once it holds at least this many dead words (1 MiB).
const COMPACT_MIN_WORDS: usize = 1 << 17;

fn record_words(key_len: usize) -> usize {
    (HEADER_BYTES + key_len).div_ceil(8)
}

/// Home bucket of a tag in a table of `n` buckets (`n < 2^32`): the tag scaled to `0..n`.
fn home(tag: u32, n: usize) -> usize {
    ((u64::from(tag) * n as u64) >> 32) as usize
}

/// Table size (a multiple of 8, one cache line) holding `keys` at no more than `load_pct`%.
fn buckets_for(keys: usize, load_pct: usize) -> usize {
    (keys * 100 / load_pct + 1)
        .next_multiple_of(8)
        .max(MIN_BUCKETS)
}

/// The head of the record at `off` in `arena`.
fn head_in(arena: &[u64], off: u32) -> &Head {
    let off = off as usize;
    let words = &arena[off..off + HEAD_WORDS];
    // SAFETY: `Head` is `repr(C)`, made only of integers (any bit pattern is valid), 32 bytes
    // with alignment 8 (checked at compile time above); `words` is 4 aligned, initialised `u64`s
    // borrowed from `arena`, so the reference lives no longer than they do.
    unsafe { &*words.as_ptr().cast::<Head>() }
}

/// Which words of an index's arena hold live records, and how many such words come before each
/// block of 64: after an in-place compaction, a record's offset is the number of live words
/// before it ([`LiveMap::new_offset`]). 16 bytes per 64 words of arena (3.1%): small enough to
/// stay in cache while the table, the ordered list and the heap are remapped through it.
struct LiveMap {
    /// `blocks[b]`: word `b * 64 + i` belongs to a live record (or is word 0) if bit `i` of
    /// `.0` is set; `.1` is the number of live words before word `b * 64`. Side by side, so
    /// that a lookup reads one cache line, not two (the table's and the heap's remaps took 25%
    /// less time than with the counts in an array of their own).
    blocks: Vec<(u64, u64)>,
}

impl LiveMap {
    /// The map of an arena whose live words are the set bits of `bits` ([`Index::live_bits`]).
    fn new(bits: &[u64]) -> LiveMap {
        let mut blocks = Vec::with_capacity(bits.len());
        let mut count = 0u64;
        for &w in bits {
            blocks.push((w, count));
            count += u64::from(w.count_ones());
        }
        LiveMap { blocks }
    }

    /// The offset of the record at `off` once the records before it have slid down.
    fn new_offset(&self, off: u32) -> u32 {
        self.moved(off).0
    }

    /// The new offset of the record at `off`, and 1 if it is live (0 if dead: the offset is
    /// then that of the next live record), without a branch: half the records of an arena
    /// being compacted are dead, in no pattern a branch predictor could learn (the heap's
    /// remap took less than half the time once it had no branch).
    fn moved(&self, off: u32) -> (u32, usize) {
        let off = off as usize;
        let (bits, before) = self.blocks[off / 64];
        let bit = 1u64 << (off % 64);
        let new = (before + u64::from((bits & (bit - 1)).count_ones())) as u32;
        (new, usize::from(bits & bit != 0))
    }

    /// Live words in the whole arena of `len` words.
    fn new_offset_of_end(&self, len: usize) -> usize {
        debug_assert_eq!(len.div_ceil(64), self.blocks.len());
        self.blocks
            .last()
            .map_or(0, |&(w, b)| b as usize + w.count_ones() as usize)
    }
}

/// The words of a bit vector that bits `start..start + len` fall in, each with the mask of those
/// bits in it.
fn bit_range(start: usize, len: usize) -> impl Iterator<Item = (usize, u64)> {
    let end = start + len;
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let b = at % 64;
        let n = (64 - b).min(end - at);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << b
        };
        let word = at / 64;
        at += n;
        Some((word, mask))
    })
}

/// Clears bits `start..start + len` of `bits`.
fn clear_bits(bits: &mut [u64], start: usize, len: usize) {
    for (w, mask) in bit_range(start, len) {
        bits[w] &= !mask;
    }
}

/// Sets bits `start..start + len` of `bits`.
fn set_bits(bits: &mut [u64], start: usize, len: usize) {
    for (w, mask) in bit_range(start, len) {
        bits[w] |= mask;
    }
}

/// Arena words from which [`Index::compact_arena`] remaps the table on a second thread (8 MiB:
/// about 170,000 16-byte keys; below it the whole compaction takes a few milliseconds).
const PARALLEL_COMPACT_WORDS: usize = 1 << 20;

/// A compaction's remap of the table: every bucket to its record's new offset.
fn remap_table(table: &mut [Bucket], map: &LiveMap) {
    for b in table.iter_mut().filter(|b| !b.is_empty()) {
        b.key = (b.key & !0xFFFF_FFFF) | u64::from(map.new_offset(b.off()));
    }
}

/// A compaction's remap of the ordered list: the removed keys (dead records) leave it, the
/// others get their new offsets, in leaves filled again.
fn remap_leaves(leaves: &mut Vec<Vec<u32>>, map: &LiveMap) {
    let mut ordered = vec![0u32; leaves.iter().map(Vec::len).sum()];
    let mut n = 0;
    for &s in leaves.iter().flatten() {
        let (new, live) = map.moved(s);
        ordered[n] = new;
        n += live;
    }
    ordered.truncate(n);
    *leaves = ordered.chunks(LEAF_MAX).map(<[u32]>::to_vec).collect();
}

/// A compaction's remap of the expiry heap's entries; returns how many left. The entries of
/// dead records leave (they were counted stale); those of live records that hold a later write
/// stay, stale as they were.
fn remap_heap(heap: &mut Vec<(u64, u64, u32)>, map: &LiveMap) -> usize {
    let before = heap.len();
    let mut n = 0;
    for i in 0..heap.len() {
        let (exp, seq, off) = heap[i];
        let (new, live) = map.moved(off);
        heap[n] = (exp, seq, new);
        n += live;
    }
    heap.truncate(n);
    before - heap.len()
}

/// A compaction's slide: every run of live words moves down over the dead words before it
/// (never over live words not yet moved), in one copy per run, without reading a record.
/// Returns the live words: the arena's new length.
fn slide(arena: &mut Words, map: &LiveMap) -> usize {
    let n = arena.len();
    let blocks = &map.blocks;
    let bits = |w: usize, live: bool| {
        if live { blocks[w].0 } else { !blocks[w].0 }
    };
    // The first live word at or after `at` (`n` if none), or the first dead one.
    let next = |at: usize, live: bool| -> usize {
        let mut w = at / 64;
        let mut word = bits(w, live) & (u64::MAX << (at % 64));
        loop {
            if word != 0 {
                return (w * 64 + word.trailing_zeros() as usize).min(n);
            }
            w += 1;
            if w >= blocks.len() {
                return n;
            }
            word = bits(w, live);
        }
    };
    let mut to = 0;
    let mut at = 0;
    while at < n {
        let start = next(at, true);
        if start == n {
            break;
        }
        let end = next(start, false);
        if start != to {
            arena.copy_within(start..end, to);
        }
        to += end - start;
        at = end;
    }
    to
}

/// Asks the kernel to back a large buffer with transparent huge pages (where the system leaves
/// that to the program): random lookups in the table and the arena then cost a cache miss but
/// rarely a page-table walk. Advice only; failure changes nothing.
fn advise_huge_pages<T>(buf: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        const MIN_BYTES: usize = 4 << 20;
        let bytes = buf.capacity() * std::mem::size_of::<T>();
        if bytes < MIN_BYTES {
            return;
        }
        let start = (buf.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (buf.as_ptr() as usize + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel backs pages of this
            // range, which lies inside the vector's own allocation; it never changes contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Turns a table built at open into huge pages on a thread of its own, one huge page at a time,
/// until it is done or the owner stops it (dropping this handle).
///
/// A table built at open is faulted in small pages (populating huge pages there cost 13 to 43 ms
/// per million keys of open time) and only advised for huge pages, which the kernel's background
/// scan takes minutes to act on; until then every point read pays a TLB miss on the table. With
/// `MADV_COLLAPSE` (Linux 6.1) a second core does it in 20 to 45 ms right after open: random gets
/// after open were 4% faster in a scratch loop (5 alternations; 8% with the table collapsed
/// before the first get). The kernel keeps the contents as they are,
/// whatever the index does with the memory meanwhile; the handle only guarantees that no call
/// is made once the table may have been freed: each call runs under the lock that `drop` takes.
struct Collapser {
    stopped: Arc<Mutex<bool>>,
}

impl Collapser {
    /// Starts collapsing the huge pages wholly inside `table` (nothing for a small table, or
    /// where threads cannot be started).
    fn start(table: &[Bucket]) -> Option<Collapser> {
        #[cfg(target_os = "linux")]
        {
            /// `MADV_COLLAPSE` (Linux ABI; not in every libc binding).
            const MADV_COLLAPSE: libc::c_int = 25;
            const HUGE: usize = 2 << 20;
            let start = (table.as_ptr() as usize).next_multiple_of(HUGE);
            let end = (table.as_ptr() as usize + std::mem::size_of_val(table)) / HUGE * HUGE;
            if end <= start {
                return None;
            }
            let stopped = Arc::new(Mutex::new(false));
            let flag = stopped.clone();
            let spawned = std::thread::Builder::new()
                .name("ttlstore-collapse".into())
                .spawn(move || {
                    let mut at = start;
                    while at < end {
                        let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                        if *stopped {
                            return;
                        }
                        // SAFETY: the range is inside the table, which is alive: its owner sets
                        // `stopped` under this lock before it frees the table. MADV_COLLAPSE
                        // never changes the contents of memory.
                        let r =
                            unsafe { libc::madvise(at as *mut libc::c_void, HUGE, MADV_COLLAPSE) };
                        drop(stopped);
                        if r != 0 {
                            // Unsupported, or no huge page to be had: it was only advice.
                            return;
                        }
                        at += HUGE;
                    }
                });
            spawned.ok().map(|_| Collapser { stopped })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = table;
            None
        }
    }
}

impl Drop for Collapser {
    fn drop(&mut self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// `n` empty buckets from a zeroed allocation: for a large table, fresh pages not yet touched
/// (as `vec![0u64; n]` gets), so that the huge-page advice given next still applies to all of
/// them. (`vec![Bucket::default(); n]` would write every bucket first, faulting small pages in.)
fn zeroed_buckets(n: usize) -> Vec<Bucket> {
    let n = n.max(1);
    let Ok(layout) = std::alloc::Layout::array::<Bucket>(n) else {
        panic!("index: a table of {n} buckets does not fit the address space");
    };
    // SAFETY: `layout` has a nonzero size (n >= 1, 16-byte buckets).
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Bucket>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of `n` buckets, which is
    // the layout a `Vec<Bucket>` of capacity `n` deallocates with; all `n` are initialised: a
    // `Bucket` is two integers, and all-zero bytes are the empty bucket.
    unsafe { Vec::from_raw_parts(p, n, n) }
}

/// A zeroed table of `n` buckets whose pages are already mapped writable.
///
/// A calloc'd buffer is backed by the shared zero page until written: a lookup that probes an
/// untouched page maps the zero page, and the first insert there then takes a copy-on-write fault
/// and a TLB shootdown of every core running the process (seen as ~7% of a fill). Touching every
/// page once up front (see [`populate`]) after the huge-page advice makes the table's pages plain
/// writable memory from the start.
fn new_table(n: usize) -> Vec<Bucket> {
    let mut table = zeroed_buckets(n);
    advise_huge_pages(&table);
    populate(&mut table, 0, usize::MAX);
    table
}

/// Faults in, writable, the pages of `table` wholly inside its bytes `from..to` (`to` capped at
/// its end): one `MADV_POPULATE_WRITE`, or a write per page where that is unknown. Nothing for a
/// table under 64 pages (its pages are few enough to fault in as used). Never changes what the
/// table holds.
fn populate(table: &mut [Bucket], from: usize, to: usize) {
    if populate_shared(table, from, to) {
        return;
    }
    // The advice is unknown here (an older kernel): a write per page instead.
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let bytes = std::mem::size_of_val(table);
        let base = table.as_mut_ptr() as usize;
        let start = (base + from.min(bytes)).next_multiple_of(PAGE);
        let end = (base + to.min(bytes)) / PAGE * PAGE;
        let size = std::mem::size_of::<Bucket>();
        if end > start {
            for i in ((start - base) / size..(end - base) / size).step_by(PAGE / size) {
                // SAFETY: `i` indexes a bucket inside the table; a volatile write of the bucket
                // already there, so that the compiler keeps the store that faults the page in.
                unsafe { std::ptr::write_volatile(table.as_mut_ptr().add(i), table[i]) };
            }
        }
    }
}

/// [`populate`] through shared access: the `MADV_POPULATE_WRITE` alone, which never changes
/// memory (readers may probe the table meanwhile). False if it was not done (see
/// [`crate::words::populate_write`]); true for a table too small to bother.
fn populate_shared(table: &[Bucket], from: usize, to: usize) -> bool {
    let bytes = std::mem::size_of_val(table);
    if bytes < 64 * 4096 {
        return true;
    }
    let base = table.as_ptr().cast::<u8>();
    // SAFETY: both offsets are capped at the table's length in bytes: inside its allocation.
    let (start, end) = unsafe { (base.add(from.min(bytes)), base.add(to.min(bytes))) };
    crate::words::populate_write(start, end)
}

/// Starts loading the cache line that holds `items[i]` (nothing if `i` is out of range), so that
/// a later access overlaps the memory latency with other work. A hint: it never changes memory.
pub(crate) fn prefetch<T>(items: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < items.len() {
        // SAFETY: `i < items.len()`, so the address lies inside the slice; a prefetch never
        // faults and does not change memory.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(items.as_ptr().add(i).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, i);
}

/// A key's hash tag in one index ([`Index::key_tag`]): it depends only on the key and the
/// index's hash seed, so it stays valid while the table grows. Computed once per key on the
/// write path, for both the prefetch of its table line and the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTag(u32);

/// Walks the probe sequence of `tag` in `table`, calling `hit(bucket number, bucket)` for each
/// bucket that carries the tag, until it returns `Some`; `None` at the first empty bucket.
fn probe_in<T>(
    table: &[Bucket],
    tag: u32,
    mut hit: impl FnMut(usize, Bucket) -> Option<T>,
) -> Option<T> {
    let n = table.len();
    let mut i = home(tag, n);
    loop {
        let b = table[i];
        if b.is_empty() {
            return None;
        }
        if b.tag() == tag
            && let Some(t) = hit(i, b)
        {
            return Some(t);
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
}

/// Inserts `bucket` (known absent) into a table that has room.
fn table_insert(table: &mut [Bucket], bucket: Bucket) {
    let n = table.len();
    let mut i = home(bucket.tag(), n);
    while !table[i].is_empty() {
        i += 1;
        if i == n {
            i = 0;
        }
    }
    table[i] = bucket;
}

/// Flags bit of a staged record (only between [`Index::stage`] and [`Index::finish_staged`]): the
/// op carried an expiry field.
pub const STAGED_EXPIRES: u8 = 2;
/// Flags bit of a staged record: replaying the op changed nothing (a stale op).
const STAGED_STALE: u8 = 4;

/// A staged bulk load (recovery): every replayed op's record is appended to the arena as it is
/// read, without touching the table; [`Index::build_staged`] then groups the records by key and
/// builds the table in one pass in home-bucket order, and [`Index::finish_staged`] ends the load.
#[derive(Debug, Default)]
pub struct Staged {
    /// The bucket of every staged record (tag, offset and log location), in staging order: the
    /// table is built from these without reading the arena.
    pairs: Vec<Bucket>,
}

/// Where a staged load stood, to take back what was staged after it ([`Index::stage_rollback`]).
#[derive(Debug, Clone, Copy)]
pub struct StageMark {
    arena: usize,
    pairs: usize,
}

/// Sorts buckets by their `(tag << 32) | offset` word (tag first, then offset), in place, using
/// `scratch` (at least as long) as working space: two stable counting-sort passes on the tag's
/// 22 high bits (each pass writes to only 2048 places, so it streams), then each run of equal
/// high bits (a fraction of a bucket on average) sorted in place. Equal tags end up adjacent, in
/// staging order, and home buckets ascend (a home is monotone in the tag).
fn sort_pairs(pairs: &mut [Bucket], scratch: &mut [Bucket]) {
    const DIGIT: u32 = 11;
    const RADIX: usize = 1 << DIGIT;
    let n = pairs.len();
    if n < 1 << 12 {
        pairs.sort_unstable_by_key(|b| b.key);
        return;
    }
    let scratch = &mut scratch[..n];
    let low_shift = 64 - 2 * DIGIT;
    let high_shift = 64 - DIGIT;
    let digit = |p: &Bucket, shift: u32| (p.key >> shift) as usize & (RADIX - 1);
    let mut counts = vec![[0usize; RADIX]; 2];
    for p in pairs.iter() {
        counts[0][digit(p, low_shift)] += 1;
        counts[1][digit(p, high_shift)] += 1;
    }
    let starts = |pass: usize| {
        let mut next = [0usize; RADIX];
        let mut sum = 0;
        for (d, c) in counts[pass].iter().enumerate() {
            next[d] = sum;
            sum += c;
        }
        next
    };
    // Low digit into the scratch space, then high digit back.
    let mut next = starts(0);
    for p in pairs.iter() {
        let d = digit(p, low_shift);
        scratch[next[d]] = *p;
        next[d] += 1;
    }
    let mut next = starts(1);
    for p in scratch.iter() {
        let d = digit(p, high_shift);
        pairs[next[d]] = *p;
        next[d] += 1;
    }
    // Runs of equal high bits, put in full order.
    let mut i = 0;
    while i < n {
        let top = pairs[i].key >> low_shift;
        let mut j = i + 1;
        while j < n && pairs[j].key >> low_shift == top {
            j += 1;
        }
        if j - i > 1 {
            pairs[i..j].sort_unstable_by_key(|b| b.key);
        }
        i = j;
    }
}

/// The index. Not synchronised: the store keeps it behind its lock.
pub struct Index {
    /// Records; word 0 is never a record, so a bucket of 0 means empty. It grows in place
    /// (see [`Words`]).
    arena: Words,
    /// Words of dead records in `arena`.
    garbage: usize,
    /// Bit `i % 64` of `live_bits[i / 64]`: word `i` of the arena belongs to a live record (or
    /// is word 0, which no record uses). Kept up to date as records are added and killed (1 bit
    /// per 8 bytes of arena, 1.6%), so that a compaction has its [`LiveMap`] without reading
    /// every record's head first.
    live_bits: Vec<u64>,
    /// The hash table (see [`Bucket`]). Every insert goes here.
    table: Vec<Bucket>,
    /// While the table grows: the previous table, whose buckets move to `table` a few at a time,
    /// in bucket order, as the index is written ([`GROW_STEP`]), so that no write waits for the
    /// whole table to be copied (that took 6 ms at a million keys). Empty otherwise. Lookups
    /// probe both.
    old: Vec<Bucket>,
    /// Buckets of `old` before this one have moved: their copies there are stale, kept only so
    /// that probe sequences through them stay intact.
    moved: usize,
    /// The table the next growth will take, faulted in a step at a time as inserts near the
    /// growth ([`Index::prepare_step`]), so that the growth does not fault in a whole table at
    /// once (2-4 ms for 25 MB in a warm process, 19-52 ms in a cold one, while every write
    /// waits). Empty otherwise.
    next: Vec<Bucket>,
    /// Bytes of `next` faulted in so far.
    next_ready: usize,
    /// How far [`Index::populate_ahead`] faulted memory in: arena words, and bytes of `next`.
    /// Hints stored through shared access, reset when that memory is given back or replaced;
    /// a wrong one only moves page faults back under the writers' lock.
    populated: [AtomicUsize; 2],
    /// Turning the table built at open into huge pages (see [`Collapser`]); dropped (which stops
    /// it) before that table is replaced or freed.
    collapser: Option<Collapser>,
    hasher: hashbrown::DefaultHashBuilder,
    leaves: Vec<Vec<u32>>,
    /// While true (bulk load at open) the ordered list is not maintained; `finish_bulk` builds it.
    bulk: bool,
    heap: QuadHeap<(u64, u64, u32)>,
    heap_stale: usize,
    /// Records flagged [`TAKEN`]: keys with an expiry but, for now, no heap entry.
    taken: usize,
    live: usize,
    /// Dead words below which the arena is not compacted (a constant but in tests).
    compact_min: usize,
    /// Arena words from which a compaction uses a second thread ([`PARALLEL_COMPACT_WORDS`]
    /// but in tests).
    parallel_compact: usize,
    /// Tests force tag collisions by masking tags (all ones otherwise).
    #[cfg(test)]
    tag_mask: u32,
}

impl Drop for Index {
    fn drop(&mut self) {
        // Before the table is freed with the other fields.
        self.collapser = None;
    }
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
            arena: {
                let mut arena = Words::new();
                arena.push(0);
                arena
            },
            garbage: 0,
            live_bits: vec![1],
            table: zeroed_buckets(MIN_BUCKETS),
            old: Vec::new(),
            moved: 0,
            next: Vec::new(),
            next_ready: 0,
            populated: [AtomicUsize::new(0), AtomicUsize::new(0)],
            collapser: None,
            hasher: hashbrown::DefaultHashBuilder::default(),
            leaves: Vec::new(),
            bulk: false,
            heap: QuadHeap::new(),
            heap_stale: 0,
            taken: 0,
            live: 0,
            compact_min: COMPACT_MIN_WORDS,
            parallel_compact: PARALLEL_COMPACT_WORDS,
            #[cfg(test)]
            tag_mask: u32::MAX,
        }
    }

    /// Number of keys held, those past their expiry included until the expirer removes them
    /// (tombstones too during a bulk load).
    pub fn len(&self) -> usize {
        self.live
    }

    /// The 32-bit tag of a key: the high half of a well-mixed 64-bit hash.
    fn tag_of(&self, ns: u8, key: &[u8]) -> u32 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(ns);
        h.write(key);
        let x = h.finish();
        // One more multiply-xorshift round so that the high bits depend on every input bit.
        let x = (x ^ (x >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        #[cfg(test)]
        return (x >> 32) as u32 & self.tag_mask;
        #[cfg(not(test))]
        return (x >> 32) as u32;
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a `u64` buffer viewed as its bytes: same allocation, length in bytes, `u8` has
        // alignment 1 and every bit pattern is a valid `u8`.
        unsafe {
            std::slice::from_raw_parts(self.arena.as_ptr().cast::<u8>(), self.arena.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of the arena.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.as_mut_ptr().cast::<u8>(),
                self.arena.len() * 8,
            )
        }
    }

    fn head(&self, off: u32) -> &Head {
        head_in(&self.arena, off)
    }

    fn head_mut(&mut self, off: u32) -> &mut Head {
        let off = off as usize;
        let words = &mut self.arena[off..off + HEAD_WORDS];
        // SAFETY: as in `head`, with the unique borrow.
        unsafe { &mut *words.as_mut_ptr().cast::<Head>() }
    }

    fn entry(&self, off: u32) -> Entry {
        self.head(off).entry()
    }

    /// The bucket of the record at `off`, whose key has `tag`: its offset and a copy of its log
    /// location.
    fn bucket_for(&self, tag: u32, off: u32) -> Bucket {
        Bucket {
            key: (u64::from(tag) << 32) | u64::from(off),
            loc: self.head(off).loc(),
        }
    }

    /// Sets the entry of the record at `off` and the location copy in its bucket, together.
    fn set_entry(&mut self, slot: Slot, off: u32, entry: &Entry) {
        let head = self.head_mut(off);
        head.set(entry);
        let loc = head.loc();
        if slot.old {
            self.old[slot.i].loc = loc;
        } else {
            self.table[slot.i].loc = loc;
        }
    }

    /// (key length, namespace, flags) of the record at `off`.
    fn header(&self, off: u32) -> (usize, u8, u8) {
        let h = self.head(off);
        (usize::from(h.key_len), h.ns, h.flags)
    }

    /// The key of a record as (namespace, key).
    fn key_of(&self, off: u32) -> (u8, &[u8]) {
        let (len, ns, _) = self.header(off);
        let p = off as usize * 8 + HEADER_BYTES;
        (ns, &self.bytes()[p..p + len])
    }

    fn is_dead(&self, off: u32) -> bool {
        self.header(off).2 & DEAD != 0
    }

    fn words_at(&self, off: u32) -> usize {
        record_words(self.header(off).0)
    }

    fn cmp_rec(&self, off: u32, ns: u8, key: &[u8]) -> Ordering {
        let (rns, rkey) = self.key_of(off);
        rns.cmp(&ns).then_with(|| rkey.cmp(key))
    }

    fn cmp_recs(&self, a: u32, b: u32) -> Ordering {
        let (bns, bkey) = self.key_of(b);
        self.cmp_rec(a, bns, bkey)
    }

    /// Walks the probe sequence of `tag`, calling `hit(slot, bucket)` for each bucket that
    /// carries the tag, until it returns `Some`; `None` when the sequence ends (at an empty
    /// bucket) first. While the table grows, the old table's sequence follows, without its
    /// stale and removed buckets.
    fn probe<T>(&self, tag: u32, mut hit: impl FnMut(Slot, Bucket) -> Option<T>) -> Option<T> {
        if let Some(t) = probe_in(&self.table, tag, |i, b| hit(Slot { old: false, i }, b)) {
            return Some(t);
        }
        if self.old.is_empty() {
            return None;
        }
        let moved = self.moved;
        probe_in(&self.old, tag, |i, b| {
            if i < moved || b == GONE {
                None
            } else {
                hit(Slot { old: true, i }, b)
            }
        })
    }

    /// Slot and record offset of a key.
    fn find(&self, ns: u8, key: &[u8], tag: u32) -> Option<(Slot, u32)> {
        self.probe(tag, |slot, b| {
            (self.key_of(b.off()) == (ns, key)).then_some((slot, b.off()))
        })
    }

    /// Takes a key's bucket out of the table it is in.
    fn table_remove(&mut self, slot: Slot) {
        if slot.old {
            // Not emptied: the probe sequences of the old table's other keys go through it.
            self.old[slot.i] = GONE;
        } else {
            self.table_remove_at(slot.i);
        }
    }

    /// Empties bucket `i` of the table, shifting back the entries after it that may move closer
    /// to home.
    fn table_remove_at(&mut self, mut i: usize) {
        let n = self.table.len();
        let mut j = i;
        loop {
            j += 1;
            if j == n {
                j = 0;
            }
            let b = self.table[j];
            if b.is_empty() {
                break;
            }
            let k = home(b.tag(), n);
            // The entry at j stays if its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.table[i] = b;
                i = j;
            }
        }
        self.table[i] = Bucket::default();
    }

    /// Rebuilds the table with `n` buckets at once (tags give homes: the arena is not read).
    fn resize_table(&mut self, n: usize) {
        self.start_growth(n);
        self.finish_growth();
    }

    /// Makes a new table of `n` buckets the one inserts go to, and the current one the old
    /// table whose buckets move over (see [`Index::grow_step`]). A growth still under way ends
    /// first (only when far more keys came at once than a growth leaves room for): the new table
    /// must hold every key.
    fn start_growth(&mut self, n: usize) {
        self.finish_growth();
        self.collapser = None;
        let mut next = std::mem::take(&mut self.next);
        self.forget_populated(POPULATED_NEXT);
        let table = if next.len() == n {
            populate(&mut next, self.next_ready, usize::MAX);
            next
        } else {
            new_table(n)
        };
        self.next_ready = 0;
        self.old = std::mem::replace(&mut self.table, table);
        self.moved = 0;
    }

    /// The number of buckets the next growth of a table of `len` buckets gives it (when keys
    /// come one at a time).
    fn grown_len(len: usize) -> usize {
        (len / GROW_DEN * GROW_NUM).next_multiple_of(8)
    }

    /// One step of preparing the next growth's table: allocates it (zeroed, advised for huge
    /// pages) at the first call, then faults in the next [`PREPARE_STEP_BYTES`] of it.
    fn prepare_step(&mut self) {
        let n = Self::grown_len(self.table.len());
        if self.next.len() != n {
            // Only allocated (address space): the writer faults its first steps in ahead, under
            // the shared lock ([`Index::populate_ahead`]), before the next insert comes here.
            self.next = zeroed_buckets(n);
            advise_huge_pages(&self.next);
            self.next_ready = 0;
            self.forget_populated(POPULATED_NEXT);
            return;
        }
        let bytes = n * std::mem::size_of::<Bucket>();
        if self.next_ready < bytes {
            let to = self.next_ready.saturating_add(PREPARE_STEP_BYTES);
            populate(&mut self.next, self.next_ready, to);
            self.next_ready = to.min(bytes);
        }
    }

    /// Makes room in the table for `extra` more keys: if it is too full, starts a growth (the
    /// buckets move over later, [`GROW_STEP`] at a time).
    fn reserve(&mut self, extra: usize) {
        let want = self.live + extra;
        let len = self.table.len();
        if want * 100 > len * MAX_LOAD_PCT {
            self.start_growth(buckets_for(want, MAX_LOAD_PCT).max(Self::grown_len(len)));
        } else if want * 100 > len * PREPARE_LOAD_PCT
            && self.old.is_empty()
            && len * std::mem::size_of::<Bucket>() >= PREPARE_STEP_BYTES
        {
            self.prepare_step();
        }
    }

    /// Moves up to `buckets` more buckets of the old table to the new one while the table
    /// grows; drops the old table once all have moved. True while buckets are left to move.
    ///
    /// Writes call it with [`GROW_STEP`]; when writes stop halfway through a growth, the
    /// compactor calls it with larger steps, so that the old table's memory is given back.
    pub fn grow_step(&mut self, buckets: usize) -> bool {
        if self.old.is_empty() {
            return false;
        }
        let end = self.moved.saturating_add(buckets).min(self.old.len());
        for i in self.moved..end {
            let b = self.old[i];
            if !b.is_empty() && b != GONE {
                table_insert(&mut self.table, b);
            }
        }
        self.moved = end;
        if end == self.old.len() {
            self.old = Vec::new();
            self.moved = 0;
        }
        !self.old.is_empty()
    }

    /// Ends a growth under way at once (before work that rewrites or replaces every bucket).
    fn finish_growth(&mut self) {
        let _ = self.grow_step(usize::MAX);
    }

    /// The key's hash tag, for the calls that take one instead of hashing the key again.
    pub fn key_tag(&self, ns: u8, key: &[u8]) -> KeyTag {
        KeyTag(self.tag_of(ns, key))
    }

    /// Starts loading the table line a lookup of the key (of tag `tag`) will probe first, so
    /// that work done before the lookup (encoding and checksumming a record) overlaps the cache
    /// miss.
    pub fn prefetch(&self, tag: KeyTag) {
        prefetch(&self.table, home(tag.0, self.table.len()));
    }

    /// After a write, under the exclusive lock: true if [`Index::populate_ahead`] should run
    /// before the next one. Makes room in the arena for what it will fault in (address space
    /// only: nothing is touched here).
    ///
    /// Fresh memory is faulted in as writes first touch it: a huge page of the arena every
    /// 43,690 puts of 16-byte keys, and one of the next growth's table per insert as the table
    /// nears its growth. Each fault waits for the kernel (the host of a virtual machine that
    /// took the memory back: 4.4 ms a huge page here). Under the exclusive lock every reader
    /// waited that long too; the writer faults the memory in ahead, under the shared lock.
    pub fn wants_populate(&mut self) -> bool {
        let len = self.arena.len();
        let arena = len >= POPULATE_MIN_WORDS && {
            self.arena.reserve(POPULATE_AHEAD_WORDS);
            *self.populated[POPULATED_ARENA].get_mut() < len + POPULATE_AHEAD_WORDS / 2
        };
        let next_bytes = std::mem::size_of_val(&self.next[..]);
        let next = self.next_ready < next_bytes
            && *self.populated[POPULATED_NEXT].get_mut()
                < (self.next_ready + PREPARE_STEP_BYTES).min(next_bytes);
        arena || next
    }

    /// Faults in the memory the next writes will touch first (see [`Index::wants_populate`]):
    /// the arena's next [`POPULATE_AHEAD_WORDS`] past its end, and the next two steps of the
    /// table being prepared. Under the shared lock: it never changes what memory holds, so
    /// readers go on meanwhile; only the writer calls it.
    pub fn populate_ahead(&self) {
        let len = self.arena.len();
        if len >= POPULATE_MIN_WORDS {
            let to = (len + POPULATE_AHEAD_WORDS).min(self.arena.capacity());
            let from = self.populated[POPULATED_ARENA]
                .load(AtomicOrdering::Relaxed)
                .max(len);
            if from < to {
                self.arena.populate(from, to);
            }
            self.populated[POPULATED_ARENA].store(to, AtomicOrdering::Relaxed);
        }
        let next_bytes = std::mem::size_of_val(&self.next[..]);
        if self.next_ready < next_bytes {
            let to = (self.next_ready + 2 * PREPARE_STEP_BYTES).min(next_bytes);
            let from = self.populated[POPULATED_NEXT]
                .load(AtomicOrdering::Relaxed)
                .max(self.next_ready);
            if from < to {
                populate_shared(&self.next, from, to);
            }
            self.populated[POPULATED_NEXT].store(to, AtomicOrdering::Relaxed);
        }
    }

    /// Forgets how far the arena ([`POPULATED_ARENA`]) or the next table ([`POPULATED_NEXT`])
    /// was faulted in ahead: that memory was given back or replaced.
    fn forget_populated(&mut self, which: usize) {
        *self.populated[which].get_mut() = 0;
    }

    /// The entry of a key.
    pub fn get(&self, ns: u8, key: &[u8]) -> Option<Entry> {
        let tag = self.tag_of(ns, key);
        self.find(ns, key, tag).map(|(_, off)| self.entry(off))
    }

    /// A point read that never touches the arena: calls `read(location)` with the log location
    /// (`(segment << 32) | record offset`) of every key whose bucket carries the key's tag, in
    /// probe order, until it returns `Some` (the record there is the key's: the caller checks
    /// the key in the record itself). `None` when the probe ends first: the key is absent.
    ///
    /// One cache miss in the table, then the caller's read of the record, instead of table,
    /// arena and record one after the other.
    pub fn find_in_log<T>(
        &self,
        ns: u8,
        key: &[u8],
        mut read: impl FnMut(u64) -> Option<T>,
    ) -> Option<T> {
        self.probe(self.tag_of(ns, key), |_, b| read(b.loc))
    }

    /// Begins a bulk load: inserts stop maintaining the ordered list until [`Index::finish_bulk`].
    /// `expected` keys are reserved for.
    #[cfg(test)]
    pub fn begin_bulk(&mut self, expected: usize) {
        self.bulk = true;
        let n = buckets_for(self.live + expected, 80);
        if n > self.table.len() {
            self.resize_table(n);
        }
    }

    /// Ends a bulk load: drops every entry `keep` refuses, then builds the ordered list and the
    /// expiry heap from what is left.
    #[cfg(test)]
    pub fn finish_bulk(&mut self, mut keep: impl FnMut(u8, &[u8], &Entry) -> bool) {
        let mut kept: Vec<u32> = Vec::with_capacity(self.live);
        let mut dropped: Vec<u32> = Vec::new();
        let mut off = 1;
        while off < self.arena.len() {
            let o = off as u32;
            let (len, ns, flags) = self.header(o);
            if flags & DEAD == 0 {
                let (_, key) = self.key_of(o);
                if keep(ns, key, &self.entry(o)) {
                    kept.push(o);
                } else {
                    dropped.push(o);
                }
            }
            off += record_words(len);
        }
        let in_order = kept.is_sorted_by(|&a, &b| self.cmp_recs(a, b) == Ordering::Less);
        self.finish_kept(kept, in_order, dropped, None);
    }

    /// Ends a bulk load once the live records have been sorted out: `dropped` leave the index,
    /// `kept` (in arena order; `in_order` if that is key order) make the ordered list, and `heap`
    /// (if the caller collected it: every kept record with an expiry) the expiry heap.
    fn finish_kept(
        &mut self,
        mut kept: Vec<u32>,
        in_order: bool,
        dropped: Vec<u32>,
        heap: Option<Vec<(u64, u64, u32)>>,
    ) {
        for o in dropped {
            let (ns, key) = self.key_of(o);
            let found = self.find(ns, key, self.tag_of(ns, key));
            debug_assert_eq!(found.map(|f| f.1), Some(o));
            if let Some((slot, _)) = found {
                self.table_remove(slot);
            }
            self.kill(o);
        }
        if !in_order {
            kept.sort_unstable_by(|&a, &b| self.cmp_recs(a, b));
        }
        self.leaves = kept.chunks(LEAF_MAX).map(|c| c.to_vec()).collect();
        self.bulk = false;
        // The expected count was an estimate: give back a table far larger than needed.
        if self.table.len() > MIN_BUCKETS && self.live * 100 < self.table.len() * 40 {
            self.resize_table(buckets_for(self.live, 75));
        }
        // The heap first: a compaction remaps it.
        match heap {
            Some(items) => {
                self.heap = QuadHeap::from_vec(items);
                self.heap_stale = 0;
            }
            None => self.rebuild_heap(),
        }
        self.maybe_compact_arena();
        if self.arena.capacity() > self.arena.len() + self.arena.len() / 8 {
            self.arena.shrink_to_fit();
            self.forget_populated(POPULATED_ARENA);
        }
    }

    /// Sets the entry of a key, inserting it if new. Returns the previous entry.
    pub fn upsert(&mut self, ns: u8, key: &[u8], entry: Entry) -> Option<Entry> {
        self.upsert_with(ns, key, |_| Some(entry)).0
    }

    /// Sets a key's entry to what `decide` returns for its current one (`None`: leave it), with
    /// one lookup. Returns the previous entry and whether it changed.
    pub fn upsert_with(
        &mut self,
        ns: u8,
        key: &[u8],
        decide: impl FnOnce(Option<&Entry>) -> Option<Entry>,
    ) -> (Option<Entry>, bool) {
        self.upsert_tagged(self.key_tag(ns, key), ns, key, decide)
    }

    /// [`Index::upsert_with`] for a key whose tag the caller has ([`Index::key_tag`]).
    pub fn upsert_tagged(
        &mut self,
        tag: KeyTag,
        ns: u8,
        key: &[u8],
        decide: impl FnOnce(Option<&Entry>) -> Option<Entry>,
    ) -> (Option<Entry>, bool) {
        debug_assert_eq!(tag, self.key_tag(ns, key));
        let _ = self.grow_step(GROW_STEP);
        let tag = tag.0;
        if let Some((slot, off)) = self.find(ns, key, tag) {
            let old = self.entry(off);
            let Some(entry) = decide(Some(&old)) else {
                return (Some(old), false);
            };
            self.set_entry(slot, off, &entry);
            if old.expires_at != 0 {
                self.heap_entry_gone(off);
            }
            if entry.expires_at != 0 {
                self.heap.push((entry.expires_at, entry.seq, off));
            }
            self.maybe_rebuild_heap();
            return (Some(old), true);
        }
        let Some(entry) = decide(None) else {
            return (None, false);
        };
        self.reserve(1);
        let off = self.push_record(ns, key, &entry);
        let bucket = self.bucket_for(tag, off);
        table_insert(&mut self.table, bucket);
        if !self.bulk {
            self.ordered_insert(off, ns, key);
        }
        if entry.expires_at != 0 {
            self.heap.push((entry.expires_at, entry.seq, off));
        }
        self.live += 1;
        (None, true)
    }

    /// Removes a key. Returns its entry.
    pub fn remove(&mut self, ns: u8, key: &[u8]) -> Option<Entry> {
        let _ = self.grow_step(GROW_STEP);
        let (slot, off) = self.find(ns, key, self.tag_of(ns, key))?;
        let entry = self.entry(off);
        // The record stays in the ordered list, dead (scans skip it), until the arena is
        // compacted: finding its place there took two binary searches over keys read from all
        // over the arena, 20% of a short-TTL churn's CPU time in the expirer's removals.
        self.table_remove(slot);
        self.kill(off);
        self.maybe_compact_arena();
        // A table prepared for a growth that removals have put off is given back.
        if !self.next.is_empty() && self.live * 100 < self.table.len() * (PREPARE_LOAD_PCT - 10) {
            self.next = Vec::new();
            self.next_ready = 0;
            self.forget_populated(POPULATED_NEXT);
        }
        Some(entry)
    }

    /// Marks a record (already out of the table) dead; the ordered list is the caller's business.
    fn kill(&mut self, off: u32) {
        let words = self.words_at(off);
        self.head_mut(off).flags |= DEAD;
        clear_bits(&mut self.live_bits, off as usize, words);
        if self.entry(off).expires_at != 0 {
            self.heap_entry_gone(off);
        }
        self.garbage += words;
        self.live -= 1;
        self.maybe_rebuild_heap();
    }

    /// Accounts for the write of the record at `off` (which has an expiry) no longer being its
    /// key's current one: its heap entry is stale now, or gone if [`Index::due`] handed it out.
    fn heap_entry_gone(&mut self, off: u32) {
        let head = self.head_mut(off);
        if head.flags & TAKEN != 0 {
            head.flags &= !TAKEN;
            self.taken -= 1;
        } else {
            self.heap_stale += 1;
        }
    }

    /// Appends a record; returns its offset.
    fn push_record(&mut self, ns: u8, key: &[u8], entry: &Entry) -> u32 {
        let off = self.arena.len();
        let end = off + record_words(key.len());
        // Offsets are u32 words: the arena is limited to 32 GiB of records (about 500 million
        // 16-byte keys); past that the index cannot address a record and stops the process
        // rather than corrupt itself. Key lengths fit the u16 field (MAX_KEY_LEN < 65536).
        assert!(
            u32::try_from(end).is_ok() && u16::try_from(key.len()).is_ok(),
            "index arena full"
        );
        self.arena.resize(end, 0);
        self.live_bits.resize(end.div_ceil(64), 0);
        set_bits(&mut self.live_bits, off, end - off);
        let head = self.head_mut(off as u32);
        head.set(entry);
        head.key_len = key.len() as u16;
        head.ns = ns;
        head.flags = 0;
        let p = off * 8 + HEADER_BYTES;
        self.bytes_mut()[p..p + key.len()].copy_from_slice(key);
        off as u32
    }

    /// Index of the leaf that holds (or would hold) the key.
    fn leaf_for(&self, ns: u8, key: &[u8]) -> usize {
        let n = self
            .leaves
            .partition_point(|leaf| self.cmp_rec(leaf[0], ns, key) != Ordering::Greater);
        n.saturating_sub(1)
    }

    fn ordered_insert(&mut self, s: u32, ns: u8, key: &[u8]) {
        let Some(last) = self.leaves.last() else {
            self.leaves.push(vec![s]);
            return;
        };
        // Fast path: appending in key order.
        let last_slot = last[last.len() - 1];
        if self.cmp_rec(last_slot, ns, key) == Ordering::Less {
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
        let pos = self.leaves[li].partition_point(|&x| self.cmp_rec(x, ns, key) == Ordering::Less);
        let leaf = &mut self.leaves[li];
        leaf.insert(pos, s);
        if leaf.len() > LEAF_MAX {
            let right = leaf.split_off(leaf.len() / 2);
            self.leaves.insert(li + 1, right);
        }
    }

    /// Moves a key's entry to a copy of the same record (same sequence) elsewhere, accounted as
    /// `cost` bytes there. False if the key now holds another write.
    pub fn repoint(
        &mut self,
        ns: u8,
        key: &[u8],
        seq: u64,
        seg: u32,
        rec_off: u32,
        cost: u32,
    ) -> bool {
        let Some((slot, off)) = self.find(ns, key, self.tag_of(ns, key)) else {
            return false;
        };
        let old = self.entry(off);
        if old.seq != seq {
            return false;
        }
        let moved = Entry {
            seg,
            rec_off,
            cost,
            ..old
        };
        self.set_entry(slot, off, &moved);
        true
    }

    /// Calls `f(key, entry)` for the keys of namespace `ns` that start with `prefix` and sort
    /// after `after` (when given), in key order, until `f` returns false. Returns the removed
    /// keys it stepped over (see [`Index::purge_removed`]).
    pub fn scan(
        &self,
        ns: u8,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &Entry) -> bool,
    ) -> Skipped {
        let (start, exclusive) = match after {
            Some(a) if a >= prefix => (a, true),
            _ => (prefix, false),
        };
        let mut skipped = Skipped::default();
        let mut li = self.leaf_for(ns, start);
        if li >= self.leaves.len() {
            return skipped;
        }
        let mut pos = self.leaves[li].partition_point(|&x| match self.cmp_rec(x, ns, start) {
            Ordering::Less => true,
            Ordering::Equal => exclusive,
            Ordering::Greater => false,
        });
        loop {
            while pos < self.leaves[li].len() {
                let s = self.leaves[li][pos];
                let (kns, k) = self.key_of(s);
                if kns != ns || !k.starts_with(prefix) {
                    return skipped;
                }
                if self.is_dead(s) {
                    if skipped.count == 0 {
                        skipped.first = k.to_vec();
                    }
                    skipped.count += 1;
                } else if !f(k, &self.entry(s)) {
                    return skipped;
                }
                pos += 1;
            }
            li += 1;
            pos = 0;
            if li >= self.leaves.len() {
                return skipped;
            }
        }
    }

    /// Takes the removed keys out of the ordered list from the leaf that holds (`ns`, `start`)
    /// on, through the keys that start with `prefix` or at most [`PURGE_LEAVES`] leaves. Removed
    /// keys otherwise stay there until the arena is compacted, which a store whose garbage is
    /// elsewhere may put off for long: a scan that steps over many has them purged from the
    /// first it met ([`Skipped::first`]), as a read in LevelDB can start a compaction. Returns
    /// how many it took out.
    pub fn purge_removed(&mut self, ns: u8, prefix: &[u8], start: &[u8]) -> usize {
        let mut removed = 0;
        let mut li = self.leaf_for(ns, start);
        for _ in 0..PURGE_LEAVES {
            let Some(leaf) = self.leaves.get_mut(li) else {
                break;
            };
            let mut leaf = std::mem::take(leaf);
            let last = leaf[leaf.len() - 1];
            // The range ends in this leaf if its last key lies past it.
            let (lns, lkey) = self.key_of(last);
            let ends_here = self.cmp_rec(last, ns, start) == Ordering::Greater
                && !(lns == ns && lkey.starts_with(prefix));
            let before = leaf.len();
            leaf.retain(|&s| !self.is_dead(s));
            removed += before - leaf.len();
            if leaf.is_empty() {
                self.leaves.remove(li);
            } else {
                self.leaves[li] = leaf;
                li += 1;
            }
            if ends_here {
                break;
            }
        }
        removed
    }

    /// The earliest expiry among keys with a TTL.
    pub fn next_expiry(&mut self) -> Option<u64> {
        while let Some(&(exp, seq, s)) = self.heap.peek() {
            if self.heap_entry_valid(exp, seq, s) {
                return Some(exp);
            }
            self.heap.pop();
            self.heap_stale = self.heap_stale.saturating_sub(1);
        }
        None
    }

    fn heap_entry_valid(&self, exp: u64, seq: u64, off: u32) -> bool {
        if self.is_dead(off) {
            return false;
        }
        let e = self.entry(off);
        e.seq == seq && e.expires_at == exp
    }

    /// Up to `limit` keys whose expiry is at or before `now`, earliest first, as
    /// (namespace, key, entry). They stay in the index, for the caller to remove, but their heap
    /// entries go with them (the records are flagged [`TAKEN`]): a caller that cannot remove
    /// them puts them back with [`Index::requeue`]. Pushing the entries back here instead, to
    /// pop them a second time as stale after the removal, took three heap operations per
    /// expired key rather than one: the heap's pops were 15% of a short-TTL churn's CPU time.
    pub fn due(&mut self, now: u64, limit: usize) -> Vec<(u8, Vec<u8>, Entry)> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(&(exp, seq, s)) = self.heap.peek() else {
                break;
            };
            if exp > now {
                break;
            }
            self.heap.pop();
            if self.heap_entry_valid(exp, seq, s) {
                let (ns, k) = self.key_of(s);
                out.push((ns, k.to_vec(), self.entry(s)));
                self.head_mut(s).flags |= TAKEN;
                self.taken += 1;
            } else {
                self.heap_stale = self.heap_stale.saturating_sub(1);
            }
        }
        out
    }

    /// Gives back the heap entries of keys that [`Index::due`] handed out and that are still
    /// there with the same write (the caller could not remove them). Others are skipped.
    pub fn requeue(&mut self, keys: &[(u8, Vec<u8>, Entry)]) {
        for (ns, key, e) in keys {
            let Some((_, off)) = self.find(*ns, key, self.tag_of(*ns, key)) else {
                continue;
            };
            let head = self.head_mut(off);
            if head.flags & TAKEN != 0 && head.seq == e.seq {
                head.flags &= !TAKEN;
                let entry = (head.expires_at, head.seq, off);
                self.taken -= 1;
                self.heap.push(entry);
            }
        }
    }

    fn maybe_rebuild_heap(&mut self) {
        if self.heap_stale > 1024 && self.heap_stale > self.heap.len() / 2 {
            self.rebuild_heap();
        }
    }

    /// Offsets of the live records, in arena order.
    fn live_records(&self) -> impl Iterator<Item = u32> + '_ {
        let mut off = 1;
        std::iter::from_fn(move || {
            while off < self.arena.len() {
                let o = off as u32;
                let (len, _, flags) = self.header(o);
                off += record_words(len);
                if flags & DEAD == 0 {
                    return Some(o);
                }
            }
            None
        })
    }

    /// Rebuilds the heap from the records: one entry for every key with an expiry, those
    /// [`Index::due`] handed out included (they become ordinary heap entries again).
    fn rebuild_heap(&mut self) {
        let with_expiry: Vec<u32> = self
            .live_records()
            .filter(|&o| self.head(o).expires_at != 0)
            .collect();
        let items: Vec<_> = with_expiry
            .into_iter()
            .map(|o| {
                let head = self.head_mut(o);
                head.flags &= !TAKEN;
                (head.expires_at, head.seq, o)
            })
            .collect();
        self.heap = QuadHeap::from_vec(items);
        self.heap_stale = 0;
        self.taken = 0;
    }

    /// Compacts the arena if dead records pass half of it.
    fn maybe_compact_arena(&mut self) {
        if self.garbage >= self.compact_min.max(1) && self.garbage * 2 >= self.arena.len() {
            self.compact_arena();
        }
    }

    /// Compacts the arena in place: the live records slide down over the dead ones, in order,
    /// and every offset is remapped: the table's, the ordered list's and the heap's (the dead
    /// records' entries leave those two here).
    ///
    /// A record's new offset is the number of live words before it, which a [`LiveMap`] gives
    /// without reading the record: the remaps never touch the arena, and no second arena is
    /// allocated. Copying into a fresh arena and remapping through forwarding words in the old
    /// one took 166-182 ms for a million live keys among two million records: the kernel
    /// zeroing the new arena's pages, and a cache miss in the old arena per remapped offset.
    /// In place it took 58-66 ms (scratch test, 1M live among 2M records with expiries): 11 ms
    /// to build the map by reading every record's head, 11-16 ms for each of the three remaps,
    /// 11 ms for a slide that copied record by record. With the live bits kept as records come
    /// and go (the map's counts take 0.3 ms), one copy per run of live words (7 ms), remaps
    /// without a branch on liveness, and the table's remap (11-14 ms) on a second thread, it
    /// takes 20-25 ms.
    fn compact_arena(&mut self) {
        self.finish_growth();
        let map = LiveMap::new(&self.live_bits);
        let mut heap = std::mem::take(&mut self.heap).into_vec();
        let parallel = self.arena.len() >= self.parallel_compact;
        let Index {
            table,
            leaves,
            arena,
            ..
        } = self;
        // The four passes each read the map and write their own structure. On a large index the
        // table's, the longest, runs on a second thread while this one does the other three: the
        // store's writers wait for this meanwhile, so that core has little else to do.
        let mut dropped = 0;
        let (spawned, to) = std::thread::scope(|s| {
            let side = if parallel {
                std::thread::Builder::new()
                    .name("ttlstore-index".into())
                    .spawn_scoped(s, || remap_table(table, &map))
                    .ok()
            } else {
                None
            };
            dropped = remap_heap(&mut heap, &map);
            remap_leaves(leaves, &map);
            let to = slide(arena, &map);
            let spawned = side.is_some();
            if let Some(side) = side
                && let Err(panic) = side.join()
            {
                std::panic::resume_unwind(panic);
            }
            (spawned, to)
        });
        if !spawned {
            remap_table(table, &map);
        }
        debug_assert_eq!(to, map.new_offset_of_end(arena.len()));
        arena.truncate(to);
        arena.shrink_to_fit();
        self.forget_populated(POPULATED_ARENA);
        self.heap = QuadHeap::from_vec(heap);
        self.heap_stale -= dropped;
        // The live records are now exactly the first `to` words.
        let mut bits = vec![0u64; to.div_ceil(64)];
        set_bits(&mut bits, 0, to);
        self.live_bits = bits;
        self.garbage = 0;
    }

    /// Bytes of memory the index holds (capacity, not just use), for statistics.
    pub fn memory_bytes(&self) -> usize {
        self.arena.capacity() * 8
            + (self.table.capacity() + self.old.capacity() + self.next.capacity())
                * std::mem::size_of::<Bucket>()
            + self.leaves.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.leaves.iter().map(|l| l.capacity() * 4).sum::<usize>()
            + self.heap.capacity() * std::mem::size_of::<(u64, u64, u32)>()
            + self.live_bits.capacity() * 8
    }

    /// Keys held whose entry has an expiry, those past it included: the expiry heap holds one
    /// entry for each, but those [`Index::due`] handed out, and `heap_stale` more (outside a
    /// bulk load).
    pub fn ttl_key_count(&self) -> usize {
        (self.heap.len() + self.taken).saturating_sub(self.heap_stale)
    }

    /// Keys held whose expiry is at or before `now` (the expirer has not removed them yet): the
    /// expiry heap's entries that are due and still a key's current write, and the keys
    /// [`Index::due`] handed out (due when it did; the expirer removes them under the writer
    /// lock, so outside tests there are some only in that moment). A pass over the heap,
    /// which holds one entry per key with an expiry (plus stale ones), without reading the keys.
    pub fn expired_count(&self, now: u64) -> usize {
        self.taken
            + self
                .heap
                .iter()
                .filter(|&&(exp, seq, off)| exp <= now && self.heap_entry_valid(exp, seq, off))
                .count()
    }

    /// Calls `f` for every key (any order). For the tests' checks.
    #[cfg(test)]
    pub fn for_each(&self, mut f: impl FnMut(u8, &[u8], &Entry)) {
        for o in self.live_records() {
            let (ns, k) = self.key_of(o);
            f(ns, k, &self.entry(o));
        }
    }
}

/// Most arena words `records` records whose keys total `key_bytes` bytes take.
pub fn arena_words_bound(records: usize, key_bytes: usize) -> usize {
    (records.saturating_mul(HEADER_BYTES + 7)).saturating_add(key_bytes) / 8
}

/// Staged bulk loads (recovery).
impl Index {
    /// Begins a staged bulk load of about `records` records taking about `words` arena words (a
    /// generous estimate costs only address space: the capacity is advised to huge pages and
    /// touched only as records arrive). The index must be empty.
    pub fn begin_staged(&mut self, records: usize, words: usize) -> Staged {
        debug_assert!(self.live == 0 && self.arena.len() == 1);
        self.bulk = true;
        self.arena.reserve_exact(words);
        Staged {
            pairs: Vec::with_capacity(records),
        }
    }

    /// Appends the record of one replayed op (`flags`: 0 or [`STAGED_EXPIRES`]). Nothing is
    /// looked up: [`Index::build_staged`] sorts it out.
    pub fn stage(&mut self, st: &mut Staged, ns: u8, key: &[u8], entry: Entry, flags: u8) {
        let tag = self.tag_of(ns, key);
        self.stage_tagged(st, tag, ns, key, entry, flags);
    }

    /// [`Index::stage`] with the key's tag given (tests force tag collisions with it).
    fn stage_tagged(
        &mut self,
        st: &mut Staged,
        tag: u32,
        ns: u8,
        key: &[u8],
        entry: Entry,
        flags: u8,
    ) {
        let off = self.push_record(ns, key, &entry);
        self.head_mut(off).flags = flags & STAGED_EXPIRES;
        st.pairs.push(self.bucket_for(tag, off));
    }

    /// Where the staged load stands now.
    pub fn stage_mark(&self, st: &Staged) -> StageMark {
        StageMark {
            arena: self.arena.len(),
            pairs: st.pairs.len(),
        }
    }

    /// Takes back every record staged since `mark`.
    pub fn stage_rollback(&mut self, st: &mut Staged, mark: StageMark) {
        self.arena.truncate(mark.arena);
        let end = self.live_bits.len() * 64;
        clear_bits(&mut self.live_bits, mark.arena, end - mark.arena);
        self.live_bits.truncate(mark.arena.div_ceil(64));
        st.pairs.truncate(mark.pairs);
    }

    /// Builds the table from the staged records. The records of each key are handed to
    /// `resolve` in staging order; it says which of them changed the key when replayed in that
    /// order (`changed`, one flag per record) and returns the one the key ends with. The others
    /// are marked dead. A key staged once needs no call: its one record changed it and stays.
    pub fn build_staged(
        &mut self,
        st: Staged,
        mut resolve: impl FnMut(&[Entry], &mut [bool]) -> usize,
    ) {
        self.collapser = None;
        self.finish_growth();
        let mut sorted = st.pairs;
        let n = buckets_for(sorted.len(), 80).max(self.table.len());
        // Fresh zeroed pages, faulted in small as they are first used: populating huge pages up
        // front cost 13 to 43 ms per million keys at open (measured). The sort uses the new
        // table as its working space (the table has more buckets than there are pairs), so its
        // pages are faulted in once rather than for a separate buffer as well; then the part it
        // used is emptied again.
        let mut table = zeroed_buckets(n);
        sort_pairs(&mut sorted, &mut table);
        table[..sorted.len()].fill(Bucket::default());
        // Buckets arrive in ascending home order, so each goes to its home or just past the
        // previous one (the linear-probing invariant holds); only a run past the table's end
        // wraps, through the general insert.
        let mut next = 0usize;
        let mut place = |table: &mut [Bucket], b: Bucket| {
            let at = home(b.tag(), n).max(next);
            if at < n {
                table[at] = b;
                next = at + 1;
            } else {
                table_insert(table, b);
            }
        };
        let mut ops: Vec<Entry> = Vec::new();
        let mut changed: Vec<bool> = Vec::new();
        let mut members: Vec<u32> = Vec::new();
        let mut same: Vec<u32> = Vec::new();
        let mut rest: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let tag = sorted[i].key >> 32;
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].key >> 32 == tag {
                j += 1;
            }
            if j == i + 1 {
                place(&mut table, sorted[i]);
                self.live += 1;
                i = j;
                continue;
            }
            // Equal tags: split them by key (distinct keys may share a tag), each key's records
            // in staging order.
            // One key at a time, each pass linear (a key rewritten a million times is one group).
            members.clear();
            members.extend(sorted[i..j].iter().map(Bucket::off));
            while let Some(&first) = members.first() {
                same.clear();
                rest.clear();
                for &m in &members {
                    if self.key_of(m) == self.key_of(first) {
                        same.push(m);
                    } else {
                        rest.push(m);
                    }
                }
                std::mem::swap(&mut members, &mut rest);
                let survivor = if same.len() == 1 {
                    0
                } else {
                    ops.clear();
                    ops.extend(same.iter().map(|&o| self.entry(o)));
                    changed.clear();
                    changed.resize(same.len(), true);
                    let s = resolve(&ops, &mut changed);
                    for (k, &o) in same.iter().enumerate() {
                        if !changed[k] {
                            self.head_mut(o).flags |= STAGED_STALE;
                        }
                        if k != s {
                            self.head_mut(o).flags |= DEAD;
                            let words = self.words_at(o);
                            clear_bits(&mut self.live_bits, o as usize, words);
                            self.garbage += words;
                        }
                    }
                    s
                };
                place(&mut table, self.bucket_for(tag as u32, same[survivor]));
                self.live += 1;
            }
            i = j;
        }
        // Advised once filled, as `resize_table` does: faulting fresh huge pages in during the
        // load made it slower (and less predictable) than small pages. The store has it made huge
        // once open is done ([`Index::collapse_in_background`]).
        advise_huge_pages(&table);
        self.table = table;
        self.next = Vec::new();
        self.next_ready = 0;
        self.forget_populated(POPULATED_NEXT);
    }

    /// Starts turning the table into huge pages on a thread of its own (see [`Collapser`]): for
    /// a table built at open, once the open is done (while open runs, the kernel's collapse
    /// would hold up its page faults). Returns at once.
    pub fn collapse_in_background(&mut self) {
        self.collapser = Collapser::start(&self.table);
    }

    /// Ends a staged load: calls `visit(entry, expires, changed, current)` for every
    /// staged record in staging order (`expires`: staged with [`STAGED_EXPIRES`]; `changed`:
    /// replaying it changed its key; `current`: the key ends with it), then finishes as
    /// [`Index::finish_bulk`] does with `keep`.
    pub fn finish_staged(
        &mut self,
        mut visit: impl FnMut(&Entry, bool, bool, bool),
        mut keep: impl FnMut(u8, &[u8], &Entry) -> bool,
    ) {
        let mut kept: Vec<u32> = Vec::with_capacity(self.live);
        let mut dropped: Vec<u32> = Vec::new();
        let mut heap = Vec::new();
        // Whether the kept records are in key order, checked as the walk meets them (the previous
        // one is still in cache), rather than in a second pass.
        let mut in_order = true;
        let mut off = 1;
        while off < self.arena.len() {
            let o = off as u32;
            let (len, ns, flags) = self.header(o);
            let live = flags & DEAD == 0;
            let entry = self.entry(o);
            visit(
                &entry,
                flags & STAGED_EXPIRES != 0,
                flags & STAGED_STALE == 0,
                live,
            );
            if flags & (STAGED_EXPIRES | STAGED_STALE) != 0 {
                self.head_mut(o).flags = flags & DEAD;
            }
            if live {
                let (_, key) = self.key_of(o);
                if keep(ns, key, &entry) {
                    if in_order
                        && let Some(&prev) = kept.last()
                        && self.cmp_rec(prev, ns, key) != Ordering::Less
                    {
                        in_order = false;
                    }
                    kept.push(o);
                    if entry.expires_at != 0 {
                        heap.push((entry.expires_at, entry.seq, o));
                    }
                } else {
                    dropped.push(o);
                }
            }
            off += record_words(len);
        }
        self.finish_kept(kept, in_order, dropped, Some(heap));
    }
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
            cost: (seq as u32).wrapping_mul(7),
        }
    }

    fn check_against(idx: &mut Index, model: &BTreeMap<(u8, Vec<u8>), Entry>) {
        assert_eq!(idx.len(), model.len());
        let loc = |e: &Entry| (u64::from(e.seg) << 32) | u64::from(e.rec_off);
        for ((ns, k), v) in model {
            assert_eq!(idx.get(*ns, k), Some(*v));
            // A point read through the log: offered the location of every key with the same
            // tag, in probe order, until it accepts its own (the caller checks the key there).
            let mut offered = 0;
            let found = idx.find_in_log(*ns, k, |l| {
                offered += 1;
                (l == loc(v)).then_some(l)
            });
            assert_eq!(found, Some(loc(v)));
            assert!(offered <= model.len());
        }
        // An absent key is offered only other keys' locations, then not found.
        let locs: std::collections::HashSet<u64> = model.values().map(loc).collect();
        let found = idx.find_in_log(0, b"absent key", |l| {
            assert!(locs.contains(&l));
            None::<()>
        });
        assert_eq!(found, None);
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
        fn index_matches_a_btreemap(ops in prop::collection::vec((0u8..3, prop::collection::vec(0u8..4, 1..4), 0u64..4, any::<bool>()), 1..600), few_tags in any::<bool>()) {
            let mut idx = Index::new();
            if few_tags {
                // Four tags for all keys: every lookup goes through buckets of other keys.
                idx.tag_mask = 0xC000_0000;
            }
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

    /// Checks the internal structure: table, arena, leaves and heap agree.
    fn check_structure(idx: &Index) {
        let mut in_table = 0;
        // While the table grows, the old table's buckets from `moved` on count too (its stale
        // ones, before `moved`, must never be found).
        let current = idx
            .table
            .iter()
            .enumerate()
            .map(|(i, b)| (Slot { old: false, i }, b));
        let old = idx
            .old
            .iter()
            .enumerate()
            .map(|(i, b)| (Slot { old: true, i }, b));
        for (slot, &b) in current.chain(old.skip(idx.moved)) {
            if b.is_empty() || b == GONE {
                continue;
            }
            in_table += 1;
            let off = b.off();
            assert!(!idx.is_dead(off));
            let (ns, key) = idx.key_of(off);
            assert_eq!(b.tag(), idx.tag_of(ns, key));
            assert_eq!(idx.find(ns, key, idx.tag_of(ns, key)), Some((slot, off)));
            // The bucket's copy of the location is the record's.
            assert_eq!(b.loc, idx.head(off).loc());
        }
        assert_eq!(in_table, idx.live);
        if !idx.bulk {
            // The counts statistics read instead of walking the keys.
            let with_ttl = idx
                .live_records()
                .filter(|&o| idx.entry(o).expires_at != 0)
                .count();
            assert_eq!(idx.ttl_key_count(), with_ttl);
            let taken = idx
                .live_records()
                .filter(|&o| idx.header(o).2 & TAKEN != 0)
                .count();
            assert_eq!(idx.taken, taken);
            for now in [0, 1, 2, 3, u64::MAX] {
                let expired = idx
                    .live_records()
                    .filter(|&o| idx.header(o).2 & TAKEN == 0 && idx.entry(o).is_expired(now))
                    .count();
                assert_eq!(idx.expired_count(now), expired + taken, "at {now}");
            }
        }
        assert!(idx.old.is_empty() && idx.moved == 0 || idx.moved < idx.old.len());
        assert_eq!(idx.live_records().count(), idx.live);
        // The live bits are the words of the live records (and word 0).
        let mut bits = vec![0u64; idx.arena.len().div_ceil(64)];
        set_bits(&mut bits, 0, 1);
        for o in idx.live_records() {
            set_bits(&mut bits, o as usize, idx.words_at(o));
        }
        assert_eq!(idx.live_bits, bits);
        assert!(idx.live * 100 <= idx.table.len() * MAX_LOAD_PCT);
        if !idx.bulk {
            // Every live record once, in key order; removed ones (dead, until the arena is
            // compacted) in their places among them.
            let ordered: Vec<u32> = idx.leaves.iter().flatten().copied().collect();
            assert!(ordered.is_sorted_by(|&a, &b| idx.cmp_recs(a, b) != Ordering::Greater));
            let live: Vec<u32> = ordered.into_iter().filter(|&o| !idx.is_dead(o)).collect();
            assert_eq!(live.len(), idx.live);
            assert!(live.is_sorted_by(|&a, &b| idx.cmp_recs(a, b) == Ordering::Less));
            let dead_words: usize = idx
                .leaves
                .iter()
                .flatten()
                .filter(|&&o| idx.is_dead(o))
                .map(|&o| idx.words_at(o))
                .sum();
            assert!(dead_words <= idx.garbage);
            assert!(
                idx.leaves
                    .iter()
                    .all(|l| !l.is_empty() && l.len() <= LEAF_MAX)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every state while the table grows (two tables, buckets moving a few at a time) is
        /// checked: keys found in exactly one place, stale copies never, removals and updates
        /// of keys not yet moved kept.
        #[test]
        fn a_growing_table_is_right_at_every_step(
            ops in prop::collection::vec((0u16..400, 0u8..10), 1..1500),
            few_tags in any::<bool>(),
        ) {
            let mut idx = Index::new();
            if few_tags {
                idx.tag_mask = 0xFF00_0000;
            }
            let mut model = BTreeMap::new();
            let mut grew = false;
            for (i, (k, what)) in ops.into_iter().enumerate() {
                let key = format!("key{k}").into_bytes();
                if what < 3 {
                    prop_assert_eq!(idx.remove(0, &key), model.remove(&key));
                } else {
                    let en = e(i as u64 + 1, u64::from(what % 2) * (i as u64 + 9));
                    prop_assert_eq!(idx.upsert(0, &key, en), model.insert(key, en));
                }
                grew |= !idx.old.is_empty();
                check_structure(&idx);
                for (k, v) in &model {
                    prop_assert_eq!(idx.get(0, k), Some(*v));
                }
            }
            // Enough distinct keys always pass the first growth: the 16 buckets take 13 keys
            // (85%), the 14th starts it.
            prop_assert!(grew || model.len() * 100 <= MIN_BUCKETS * MAX_LOAD_PCT);
        }
    }

    #[test]
    fn a_growth_left_halfway_is_finished_by_larger_steps_and_gives_its_memory_back() {
        let mut idx = Index::new();
        let mut model = BTreeMap::new();
        let mut i = 0u64;
        // Write until a growth of a table of at least 4096 buckets is under way.
        while idx.old.len() < 4096 {
            let key = format!("key{i}").into_bytes();
            idx.upsert(0, &key, e(i + 1, 0));
            model.insert((0u8, key), e(i + 1, 0));
            i += 1;
        }
        let before = idx.memory_bytes();
        let old_bytes = idx.old.capacity() * std::mem::size_of::<Bucket>();
        // Steps of 1000 buckets: true while buckets are left, then false, then the old table is
        // gone.
        let mut steps = 0;
        while idx.grow_step(1000) {
            steps += 1;
            check_structure(&idx);
        }
        assert!(steps >= 3, "{steps}");
        assert!(idx.old.is_empty());
        assert!(!idx.grow_step(1000));
        assert_eq!(idx.memory_bytes(), before - old_bytes);
        check_structure(&idx);
        check_against(&mut idx, &model);
    }

    fn apply_ops(
        idx: &mut Index,
        ops: Vec<(u8, u16, u64, bool)>,
    ) -> BTreeMap<(u8, Vec<u8>), Entry> {
        let mut model = BTreeMap::new();
        for (i, (ns, k, exp, del)) in ops.into_iter().enumerate() {
            // Keys of varied lengths (padding) sharing prefixes (ordering).
            let key = format!("k{k}{}", "x".repeat(usize::from(k % 13))).into_bytes();
            if del {
                assert_eq!(idx.remove(ns, &key), model.remove(&(ns, key.clone())));
            } else {
                let en = e(i as u64 + 1, exp);
                assert_eq!(
                    idx.upsert(ns, &key, en),
                    model.insert((ns, key.clone()), en)
                );
            }
        }
        model
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn growth_and_arena_compaction_match_a_btreemap(
            ops in prop::collection::vec((0u8..3, 0u16..3000, 0u64..50, prop::bool::weighted(0.4)), 1..8000),
            compact_often in any::<bool>(),
            parallel in any::<bool>(),
        ) {
            let mut idx = Index::new();
            if compact_often {
                idx.compact_min = 0;
            }
            if parallel {
                idx.parallel_compact = 0;
            }
            let model = apply_ops(&mut idx, ops);
            check_structure(&idx);
            check_against(&mut idx, &model);
            // `for_each` sees exactly the model.
            let mut all = BTreeMap::new();
            idx.for_each(|ns, k, en| {
                all.insert((ns, k.to_vec()), *en);
            });
            prop_assert_eq!(&all, &model);
            // `due` reports exactly the expired keys, earliest first, and hands their heap
            // entries out until they are put back.
            let next = idx.next_expiry();
            let taken = idx.due(25, usize::MAX);
            check_structure(&idx);
            prop_assert!(idx.next_expiry().is_none_or(|t| t > 25));
            let mut due: Vec<_> = taken.iter().map(|(ns, k, en)| (en.expires_at, *ns, k.clone())).collect();
            let mut want: Vec<_> = model.iter().filter(|(_, v)| v.expires_at != 0 && v.expires_at <= 25).map(|((ns, k), v)| (v.expires_at, *ns, k.clone())).collect();
            prop_assert!(due.is_sorted_by_key(|d| d.0));
            due.sort();
            want.sort();
            prop_assert_eq!(due, want);
            idx.requeue(&taken);
            check_structure(&idx);
            prop_assert_eq!(idx.next_expiry(), next);
        }

        #[test]
        fn bulk_load_with_many_keys_matches_a_btreemap(
            ops in prop::collection::vec((0u8..3, 0u16..4000, 0u64..50, prop::bool::weighted(0.1)), 1..6000),
            expected in 0usize..10_000,
            drop_mod in 2u64..7,
        ) {
            let mut idx = Index::new();
            idx.begin_bulk(expected);
            let mut model = apply_ops(&mut idx, ops);
            check_structure(&idx);
            idx.finish_bulk(|_, _, en| en.seq % drop_mod != 0);
            model.retain(|_, v| v.seq % drop_mod != 0);
            check_structure(&idx);
            check_against(&mut idx, &model);
            // Still usable after the bulk load.
            let key = b"after-bulk".to_vec();
            prop_assert_eq!(idx.upsert(1, &key, e(1_000_000, 3)), None);
            model.insert((1, key), e(1_000_000, 3));
            check_structure(&idx);
            check_against(&mut idx, &model);
        }
    }

    #[test]
    fn compaction_remaps_every_offset() {
        let mut idx = Index::new();
        idx.compact_min = 0;
        // The table's and the heap's remaps on a thread of their own, as in a large index.
        idx.parallel_compact = 0;
        let mut model = BTreeMap::new();
        for i in 0..20_000u64 {
            let k = format!("{i:016}").into_bytes();
            idx.upsert(2, &k, e(i + 1, i % 5 * 10));
            model.insert((2, k), e(i + 1, i % 5 * 10));
        }
        // Heap entries gone stale in place: kept keys written again with the same expiry (told
        // apart by their sequence) and with another one.
        for i in (1..20_000u64).step_by(4) {
            let k = format!("{i:016}").into_bytes();
            let exp = i % 5 * 10 + u64::from(i % 8 == 5);
            idx.upsert(2, &k, e(100_000 + i, exp));
            model.insert((2, k), e(100_000 + i, exp));
        }
        // Keys the expirer has taken out of the heap, removed or not yet when the arena moves.
        let taken = idx.due(10, 200);
        assert_eq!(taken.len(), 200);
        // (Removals may rebuild the heap before they compact the arena: compact it here too.)
        assert!(idx.heap_stale > 0);
        idx.compact_arena();
        check_structure(&idx);
        let before = idx.arena.len();
        for i in (0..20_000u64).filter(|i| i % 4 != 1) {
            let k = format!("{i:016}").into_bytes();
            assert_eq!(idx.remove(2, &k), model.remove(&(2, k)));
        }
        assert!(idx.arena.len() < before / 2, "the arena was compacted");
        check_structure(&idx);
        check_against(&mut idx, &model);
        idx.requeue(&taken);
        check_structure(&idx);
        let all = idx.due(u64::MAX, usize::MAX);
        let mut due: Vec<_> = all.iter().map(|(_, k, _)| k.clone()).collect();
        let mut want: Vec<_> = model
            .iter()
            .filter(|(_, en)| en.expires_at != 0)
            .map(|((_, k), _)| k.clone())
            .collect();
        due.sort();
        want.sort();
        assert_eq!(due, want);
        idx.requeue(&all);
        check_structure(&idx);
        assert!(idx.repoint(2, b"0000000000000001", 100_001, 9, 1, 2));
        assert_eq!(idx.get(2, b"0000000000000001").map(|en| en.seg), Some(9));
    }

    /// The table a growth takes was faulted in a step at a time by the inserts before it (it is
    /// the same allocation), and removals that put the growth off give it back.
    #[test]
    fn a_growth_takes_the_table_the_inserts_before_it_prepared() {
        let mut idx = Index::new();
        let mut prepared: Option<(usize, bool)> = None;
        let mut growths = 0;
        let mut i = 0u64;
        while growths < 2 {
            let len = idx.table.len();
            let k = i.to_be_bytes();
            idx.upsert(0, &k, e(i + 1, 0));
            i += 1;
            if idx.table.len() != len {
                if len * 16 >= PREPARE_STEP_BYTES {
                    let (ptr, ready) = prepared.expect("a prepared table");
                    assert!(ready, "faulted in whole before the growth");
                    assert_eq!(idx.table.as_ptr() as usize, ptr);
                    growths += 1;
                }
                assert!(idx.next.is_empty() && idx.next_ready == 0);
                prepared = None;
            } else if !idx.next.is_empty() {
                assert!(idx.live * 100 > idx.table.len() * PREPARE_LOAD_PCT);
                let whole = idx.next_ready == idx.next.len() * 16;
                prepared = Some((idx.next.as_ptr() as usize, whole));
            }
        }
        check_structure(&idx);
        // Up to the next growth's preparation, then removals that put it off.
        while idx.next.is_empty() {
            let k = i.to_be_bytes();
            idx.upsert(0, &k, e(i + 1, 0));
            i += 1;
        }
        assert!(idx.memory_bytes() >= (idx.table.len() + idx.next.len()) * 16);
        let mut j = 0u64;
        while !idx.next.is_empty() {
            assert!(idx.remove(0, &j.to_be_bytes()).is_some());
            j += 1;
        }
        assert!(idx.live * 100 < idx.table.len() * (PREPARE_LOAD_PCT - 10) + 100);
        check_structure(&idx);
        for k in j..i {
            assert_eq!(idx.get(0, &k.to_be_bytes()).map(|en| en.seq), Some(k + 1));
        }
    }

    /// Pages of `bytes` bytes from `start` that are in memory (`mincore`).
    #[cfg(target_os = "linux")]
    fn resident_pages(start: *const u8, bytes: usize) -> usize {
        let from = start as usize / 4096 * 4096;
        let len = start as usize + bytes - from;
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: the range lies inside a mapping of the caller's; mincore only reports on it.
        let r = unsafe { libc::mincore(from as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// The writer faults fresh memory in ahead of its writes, under shared access (see
    /// [`Index::wants_populate`]): the arena's next 4 MiB once it is large, and the steps of the
    /// table being prepared, which the insert that allocates it no longer faults in itself.
    #[cfg(target_os = "linux")]
    #[test]
    fn fresh_memory_is_faulted_in_ahead_of_the_writes() {
        let mut idx = Index::new();
        let mut i = 0u64;
        let mut put = |idx: &mut Index| {
            idx.upsert(0, &i.to_be_bytes(), e(i + 1, 0));
            i += 1;
        };
        // A small index asks for nothing.
        for _ in 0..1000 {
            put(&mut idx);
        }
        assert!(!idx.wants_populate());
        // A table being prepared: allocated by one insert, faulted in ahead of the next ones.
        let mut steps_ahead = 0;
        while idx.arena.len() < POPULATE_MIN_WORDS || steps_ahead < 3 {
            let had_next = !idx.next.is_empty();
            put(&mut idx);
            if !had_next && !idx.next.is_empty() {
                assert_eq!(idx.next_ready, 0, "the allocating insert faults nothing in");
                assert!(idx.wants_populate());
                idx.populate_ahead();
                assert!(!idx.wants_populate());
                // Whole pages only: the partial ones at either end may be left out.
                let ahead = (2 * PREPARE_STEP_BYTES).min(idx.next.len() * 16);
                let resident = resident_pages(idx.next.as_ptr().cast(), ahead);
                assert!(
                    resident >= ahead / 4096 - 1,
                    "{resident} pages of {ahead} bytes"
                );
                steps_ahead += 1;
            } else if idx.wants_populate() {
                idx.populate_ahead();
                if !idx.next.is_empty() {
                    let ready = idx.next_ready;
                    let ahead = (2 * PREPARE_STEP_BYTES).min(idx.next.len() * 16 - ready);
                    // SAFETY: `ready + ahead` is at most the table's length in bytes.
                    let at = unsafe { idx.next.as_ptr().cast::<u8>().add(ready) };
                    assert!(resident_pages(at, ahead) >= ahead / 4096 - 1);
                    steps_ahead += 1;
                }
            }
        }
        // The arena, past its end: asked for, faulted in, then not asked for again until half of
        // that is used.
        assert!(
            idx.wants_populate() || {
                idx.populate_ahead();
                true
            }
        );
        idx.populate_ahead();
        let end = idx.arena.len();
        assert!(idx.arena.capacity() >= end + POPULATE_AHEAD_WORDS);
        // SAFETY: `end` words are in use, and the capacity holds the next 4 MiB.
        let past = unsafe { idx.arena.as_ptr().add(end).cast::<u8>() };
        let window = POPULATE_AHEAD_WORDS * 8;
        assert!(resident_pages(past, window) >= window / 4096 - 1);
        let populated = idx.populated[POPULATED_ARENA].load(AtomicOrdering::Relaxed);
        assert_eq!(populated, end + POPULATE_AHEAD_WORDS);
        while idx.arena.len() + POPULATE_AHEAD_WORDS / 2 <= populated {
            if idx.wants_populate() {
                assert!(
                    !idx.next.is_empty(),
                    "only the table being prepared asks meanwhile"
                );
                idx.populate_ahead();
            }
            put(&mut idx);
        }
        assert!(idx.wants_populate());
        check_structure(&idx);
        // A compaction gives the arena's spare pages back, and the hint with them.
        let live = i;
        let mut k = 0u64;
        loop {
            assert!(idx.remove(0, &k.to_be_bytes()).is_some());
            k += 1;
            if idx.garbage == 0 {
                break;
            }
        }
        assert!(idx.arena.len() < populated * 2 / 3, "compacted");
        assert_eq!(
            idx.populated[POPULATED_ARENA].load(AtomicOrdering::Relaxed),
            0
        );
        check_structure(&idx);
        for k in k..live {
            assert_eq!(idx.get(0, &k.to_be_bytes()).map(|en| en.seq), Some(k + 1));
        }
    }

    /// The slide moves runs of live words that span many 64-word blocks of the live bits, and
    /// runs that start or end anywhere in one, whatever the keys' lengths.
    #[test]
    fn compaction_slides_records_of_every_length() {
        for parallel in [false, true] {
            let mut idx = Index::new();
            idx.compact_min = usize::MAX;
            if parallel {
                idx.parallel_compact = 0;
            }
            let mut model = BTreeMap::new();
            let key = |i: u64| {
                let len = 1 + (i * 7919 % 1500) as usize;
                let mut k = format!("{i:06}").into_bytes();
                k.resize(len.max(6), b'a' + (i % 26) as u8);
                k
            };
            for i in 0..3000u64 {
                idx.upsert(1, &key(i), e(i + 1, i % 3));
                model.insert((1, key(i)), e(i + 1, i % 3));
            }
            // Dead runs of every length between live runs of every length.
            let mut i = 0;
            let mut step = 1;
            while i < 3000 {
                for j in i..(i + step).min(3000) {
                    assert!(idx.remove(1, &key(j)).is_some());
                    model.remove(&(1, key(j)));
                }
                i += 2 * step;
                step = step % 9 + 1;
            }
            check_structure(&idx);
            let live_words = idx.arena.len() - idx.garbage;
            // The removed keys' heap entries are the only stale ones, and they leave.
            assert!(idx.heap_stale > 0);
            idx.compact_arena();
            assert_eq!(idx.arena.len(), live_words);
            assert_eq!(idx.heap_stale, 0);
            let with_ttl = model.values().filter(|en| en.expires_at != 0).count();
            assert_eq!(idx.heap.len(), with_ttl);
            check_structure(&idx);
            check_against(&mut idx, &model);
            // Keeps working: more writes, removals and another compaction.
            for i in (0..3000u64).step_by(5) {
                idx.upsert(1, &key(i), e(10_000 + i, 7));
                model.insert((1, key(i)), e(10_000 + i, 7));
            }
            for i in (0..3000u64).step_by(3) {
                assert_eq!(idx.remove(1, &key(i)), model.remove(&(1, key(i))));
            }
            idx.compact_arena();
            check_structure(&idx);
            check_against(&mut idx, &model);
        }
    }

    /// Removed keys stay in the ordered list, never seen by scans, until a scan that stepped over
    /// many has their range purged: only that range, a bounded number of leaves at a time.
    #[test]
    fn a_purge_takes_the_removed_keys_of_a_scanned_range_out_of_the_list() {
        let mut idx = Index::new();
        // As in a store whose garbage stays under half of its arena: no compaction.
        idx.compact_min = usize::MAX;
        let mut model = BTreeMap::new();
        let key = |p: char, i: u64| format!("{p}{i:06}").into_bytes();
        for (p, n) in [('a', 3000), ('b', 3000), ('c', 3000), ('d', 70_000)] {
            for i in 0..n {
                idx.upsert(0, &key(p, i), e(i + 1, 0));
                model.insert((0, key(p, i)), e(i + 1, 0));
            }
        }
        let mut remove = |idx: &mut Index, p: char, i: u64| {
            assert!(idx.remove(0, &key(p, i)).is_some());
            model.remove(&(0, key(p, i)));
        };
        for i in (0..3000).filter(|i| i % 10 != 0) {
            remove(&mut idx, 'b', i);
        }
        for i in (0..3000).step_by(7) {
            remove(&mut idx, 'a', i);
        }
        for i in (0..70_000).filter(|i| i % 10 != 0) {
            remove(&mut idx, 'd', i);
        }
        check_structure(&idx);
        let scan = |idx: &Index, p: &[u8]| {
            let mut seen = Vec::new();
            let skipped = idx.scan(0, p, None, |k, _| {
                seen.push(k.to_vec());
                true
            });
            if skipped.count > 0 {
                assert!(skipped.first.starts_with(p));
                assert!(!model.contains_key(&(0, skipped.first.clone())));
            }
            let want: Vec<Vec<u8>> = model
                .keys()
                .filter(|(_, k)| k.starts_with(p))
                .map(|(_, k)| k.clone())
                .collect();
            assert_eq!(seen, want);
            skipped
        };
        let b = scan(&idx, b"b");
        assert_eq!(b.count, 2700);
        assert!(idx.purge_removed(0, b"b", &b.first) >= 2700);
        check_structure(&idx);
        assert_eq!(scan(&idx, b"b").count, 0);
        // The leaf where `b` starts may have held some of `a`'s; the rest are still there.
        assert!(scan(&idx, b"a").count > 300);
        assert_eq!(scan(&idx, b"c").count, 0);
        // A long range takes several purges, each through a bounded number of leaves and each
        // from the first removed key the scan met.
        let mut d = scan(&idx, b"d");
        assert_eq!(d.count, 63_000);
        let mut rounds = 0;
        while d.count > 0 {
            let purged = idx.purge_removed(0, b"d", &d.first);
            assert!(purged > 0 && purged < 63_000, "{purged}");
            rounds += 1;
            d = scan(&idx, b"d");
        }
        assert!(rounds >= 2, "{rounds}");
        check_structure(&idx);
        check_against(&mut idx, &model);
    }

    #[test]
    fn many_keys_split_leaves_and_scans_skip_the_removed_ones() {
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

    /// A staged load with tags forced to collide (many keys per tag, tags at the table's end so
    /// that runs wrap around): the last record of each key wins, the table finds every key.
    fn staged_with_forced_tags(keys: u32, tag_of: impl Fn(u32) -> u32) {
        let mut idx = Index::new();
        let mut st = idx.begin_staged(16, 16);
        let mut model = BTreeMap::new();
        let mut seq = 0;
        for round in 0..3u32 {
            for i in (0..keys).filter(|i| (i + round) % 3 != 0) {
                seq += 1;
                let key = format!("key{i}").into_bytes();
                let en = e(seq, u64::from(i % 4));
                idx.stage_tagged(&mut st, tag_of(i), 1, &key, en, 0);
                model.insert((1u8, key), en);
            }
        }
        let mut groups = 0;
        idx.build_staged(st, |ops, changed| {
            groups += 1;
            assert!(
                ops.is_sorted_by_key(|o| o.seq),
                "a key's records in staging order"
            );
            changed.fill(true);
            ops.len() - 1
        });
        assert!(groups > 0);
        let mut visited = 0;
        idx.finish_staged(
            |en, expires, changed, _| {
                assert!(!expires && changed);
                assert!(en.seq <= seq);
                visited += 1;
            },
            |_, _, _| true,
        );
        assert_eq!(visited, seq as usize);
        // The table under the forced tags: every key found, nothing else in it, and every
        // bucket reachable from its home through occupied buckets (what lookups rely on).
        for i in 0..keys {
            let key = format!("key{i}").into_bytes();
            let found = idx.find(1, &key, tag_of(i)).map(|(_, off)| idx.entry(off));
            assert_eq!(found.as_ref(), model.get(&(1, key)));
        }
        let n = idx.table.len();
        let used: Vec<usize> = (0..n).filter(|&i| !idx.table[i].is_empty()).collect();
        assert_eq!(used.len(), model.len());
        assert_eq!(idx.live, model.len());
        for &i in &used {
            let mut j = home(idx.table[i].tag(), n);
            while j != i {
                assert!(!idx.table[j].is_empty());
                j = (j + 1) % n;
            }
        }
        let ordered: Vec<u32> = idx.leaves.iter().flatten().copied().collect();
        assert_eq!(ordered.len(), model.len());
        assert!(ordered.is_sorted_by(|&a, &b| idx.cmp_recs(a, b) == Ordering::Less));
        assert_eq!(idx.live_records().count(), model.len());
    }

    #[test]
    fn staged_load_of_one_key_written_many_times() {
        let mut idx = Index::new();
        let mut st = idx.begin_staged(0, 0);
        let n = 30_000u64;
        for seq in 1..=n {
            idx.stage(&mut st, 0, b"counter", e(seq, 0), 0);
        }
        idx.stage(&mut st, 0, b"other", e(n + 1, 0), 0);
        idx.build_staged(st, |ops, changed| {
            // The highest sequence wins; the others were stale when replayed after it.
            let best = (0..ops.len()).max_by_key(|&k| ops[k].seq).unwrap_or(0);
            for (k, c) in changed.iter_mut().enumerate() {
                *c = k == best;
            }
            best
        });
        let mut stale = 0;
        idx.finish_staged(
            |_, _, changed, current| {
                stale += usize::from(!changed);
                assert!(current == changed);
            },
            |_, _, _| true,
        );
        assert_eq!(stale, n as usize - 1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.get(0, b"counter"), Some(e(n, 0)));
        check_structure(&idx);
    }

    #[test]
    fn staged_load_with_colliding_and_wrapping_tags() {
        staged_with_forced_tags(300, |i| i % 7);
        staged_with_forced_tags(300, |i| u32::MAX - i % 5);
        staged_with_forced_tags(6000, |i| u32::MAX - i % 3000);
        staged_with_forced_tags(6000, |i| i.wrapping_mul(0x9E37_79B9));
    }

    #[test]
    fn due_reports_expired_in_order_and_skips_superseded() {
        let mut idx = Index::new();
        idx.upsert(0, b"a", e(1, 30));
        idx.upsert(0, b"b", e(2, 10));
        idx.upsert(0, b"c", e(3, 20));
        idx.upsert(0, b"b", e(4, 0)); // persisted: its old deadline is stale
        let taken = idx.due(25, 10);
        let due: Vec<_> = taken.iter().map(|(_, k, _)| k.clone()).collect();
        assert_eq!(due, vec![b"c".to_vec()]);
        // Handed out: the heap's next is the key after it, until it comes back.
        assert_eq!(idx.next_expiry(), Some(30));
        assert_eq!(idx.ttl_key_count(), 2);
        idx.requeue(&taken);
        assert_eq!(idx.next_expiry(), Some(20));
        check_structure(&idx);
        // Removed while handed out (the expirer's case), or written again: counted right.
        let taken = idx.due(25, 10);
        assert_eq!(idx.remove(0, b"c").map(|en| en.seq), Some(3));
        check_structure(&idx);
        idx.requeue(&taken);
        assert_eq!(idx.next_expiry(), Some(30));
        idx.upsert(0, b"d", e(5, 5));
        let taken = idx.due(25, 10);
        assert_eq!(taken.len(), 1);
        idx.upsert(0, b"d", e(6, 40));
        check_structure(&idx);
        idx.requeue(&taken);
        assert_eq!(idx.ttl_key_count(), 2);
        check_structure(&idx);
        assert_eq!(idx.next_expiry(), Some(30));
    }
}
