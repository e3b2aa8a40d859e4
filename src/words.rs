//! A growable buffer of 8-byte words that grows in place: the index's record arena.
//!
//! A `Vec` that outgrows its allocation is copied into a new one. For the arena of a large index
//! that copy, and the page faults of the fresh copy, stalled writes for 5, 10 and 19 ms as it grew
//! past 8, 16 and 32 MB during a fill of 1M keys (about 8% of the fill's time; the allocator only
//! moves a block without copying when it happened to be mapped on its own).
//!
//! On Linux, a [`Words`] therefore reserves address space for as many words as the arena can
//! ever address, once, without memory behind it (`PROT_NONE`, `MAP_NORESERVE`), and makes pages
//! of it usable as it grows: growing never moves or copies a word, and pages the kernel backed
//! with huge pages stay huge. Should the reservation be refused (a limit on address space), it
//! reserves less and, past that, moves to a larger reservation with one copy, like a `Vec`.
//! Elsewhere it is a `Vec<u64>`.

#[cfg(target_os = "linux")]
pub use linux::Words;
#[cfg(not(target_os = "linux"))]
pub use portable::Words;

/// Faults in, writable, the whole pages inside the bytes `start..end` (`MADV_POPULATE_WRITE`,
/// Linux 5.14), as if each were written with what it holds: never changes memory. False if
/// nothing was done (another system, an older kernel, or a range not mapped writable); the
/// pages then fault in when first written, as they would have anyway.
pub fn populate_write(start: *const u8, end: *const u8) -> bool {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let from = (start as usize).next_multiple_of(PAGE);
        let to = end as usize / PAGE * PAGE;
        if to <= from {
            return true;
        }
        // SAFETY: MADV_POPULATE_WRITE only makes the kernel back the pages of the range and map
        // them writable; it never changes what they hold, and on a range that is not mapped
        // writable it fails without effect.
        unsafe {
            libc::madvise(
                from as *mut libc::c_void,
                to - from,
                libc::MADV_POPULATE_WRITE,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, end);
        false
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ptr::NonNull;

    /// Words of address space reserved at first: all that the arena's 32-bit word offsets reach.
    const RESERVE_WORDS: usize = 1 << 32;
    /// Reservations start on a huge-page boundary, so that the kernel can back the whole buffer
    /// with huge pages.
    const ALIGN: usize = 2 << 20;
    /// Memory is made usable in steps of whole pages...
    const PAGE_WORDS: usize = 4096 / 8;
    /// ... and of whole huge pages once the buffer is that large.
    const HUGE_WORDS: usize = ALIGN / 8;

    /// A growable buffer of `u64`s (see the module documentation).
    pub struct Words {
        /// First word (aligned to [`ALIGN`]); dangling while nothing is reserved.
        base: NonNull<u64>,
        /// Words in use.
        len: usize,
        /// Words readable and writable from `base`.
        cap: usize,
        /// Words of address space reserved from `base`.
        reserved: usize,
        /// The mapping to unmap on drop: its start and length in bytes (0: none).
        map: (usize, usize),
    }

    // SAFETY: `Words` owns its memory exclusively, like a `Vec<u64>`; nothing in it is tied to a
    // thread.
    unsafe impl Send for Words {}
    // SAFETY: shared access only reads (`Deref`), as for a `Vec<u64>`.
    unsafe impl Sync for Words {}

    impl Words {
        /// An empty buffer; no memory or address space is taken until it grows.
        pub fn new() -> Words {
            Words {
                base: NonNull::dangling(),
                len: 0,
                cap: 0,
                reserved: 0,
                map: (0, 0),
            }
        }

        /// Words in use.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Words it holds without growing.
        pub fn capacity(&self) -> usize {
            self.cap
        }

        /// Pointer to the first word.
        pub fn as_ptr(&self) -> *const u64 {
            self.base.as_ptr()
        }

        /// Mutable pointer to the first word.
        pub fn as_mut_ptr(&mut self) -> *mut u64 {
            self.base.as_ptr()
        }

        /// Makes room for at least `additional` more words, exactly (rounded up to a page).
        pub fn reserve_exact(&mut self, additional: usize) {
            let want = self
                .len
                .checked_add(additional)
                .unwrap_or_else(|| overflow());
            if want > self.cap {
                self.grow_to(want);
            }
        }

        /// Makes room for at least `additional` more words, growing as [`Words::push`] does.
        pub fn reserve(&mut self, additional: usize) {
            if additional > self.cap - self.len {
                self.grow_amortized(additional);
            }
        }

        /// Faults in, writable, the pages of the spare capacity from word `from` to word `to`
        /// (both capped at the capacity; whole pages only), so that appends there do not wait
        /// for the kernel. Never changes memory, so shared access suffices: the words in use
        /// may be read meanwhile. False if that was not done (see [`populate_write`]).
        pub fn populate(&self, from: usize, to: usize) -> bool {
            let (from, to) = (from.min(self.cap), to.min(self.cap));
            if from >= to {
                return true;
            }
            // SAFETY: both offsets are at most `cap`, inside the buffer's mapping.
            let (start, end) = unsafe {
                (
                    self.base.as_ptr().add(from).cast::<u8>(),
                    self.base.as_ptr().add(to).cast::<u8>(),
                )
            };
            super::populate_write(start, end)
        }

        /// Appends a word.
        pub fn push(&mut self, w: u64) {
            if self.len == self.cap {
                self.grow_amortized(1);
            }
            // SAFETY: `len < cap`, and words below `cap` are mapped readable and writable.
            unsafe { self.base.as_ptr().add(self.len).write(w) };
            self.len += 1;
        }

        /// Sets the length to `new_len`, filling new words with `value`.
        pub fn resize(&mut self, new_len: usize, value: u64) {
            if new_len <= self.len {
                self.len = new_len;
                return;
            }
            if new_len > self.cap {
                self.grow_amortized(new_len - self.len);
            }
            // SAFETY: `len..new_len` lies below `cap`, in usable memory.
            let fresh = unsafe {
                std::slice::from_raw_parts_mut(self.base.as_ptr().add(self.len), new_len - self.len)
            };
            fresh.fill(value);
            self.len = new_len;
        }

        /// Shortens the buffer to `len` words (nothing if it is not longer).
        pub fn truncate(&mut self, len: usize) {
            self.len = self.len.min(len);
        }

        /// Gives back the memory of whole pages past the words in use.
        pub fn shrink_to_fit(&mut self) {
            let keep = self.len.next_multiple_of(PAGE_WORDS);
            if keep >= self.cap {
                return;
            }
            // SAFETY: `keep..cap` lies inside the reservation and holds no word in use; dropping
            // its pages and making it inaccessible again touches nothing else.
            unsafe {
                let at = self.base.as_ptr().add(keep).cast::<libc::c_void>();
                let bytes = (self.cap - keep) * 8;
                libc::madvise(at, bytes, libc::MADV_DONTNEED);
                libc::mprotect(at, bytes, libc::PROT_NONE);
            }
            self.cap = keep;
        }

        fn grow_amortized(&mut self, additional: usize) {
            let need = self
                .len
                .checked_add(additional)
                .unwrap_or_else(|| overflow());
            self.grow_to(need.max(self.cap.saturating_mul(2)));
        }

        /// Makes at least `want` words usable.
        fn grow_to(&mut self, want: usize) {
            let step = if want >= HUGE_WORDS {
                HUGE_WORDS
            } else {
                PAGE_WORDS
            };
            let want = want
                .checked_next_multiple_of(step)
                .unwrap_or_else(|| overflow());
            if want > self.reserved {
                self.move_to_reservation(want);
            }
            // SAFETY: `cap..want` lies inside this buffer's reservation (`want <= reserved`).
            let ok = unsafe {
                libc::mprotect(
                    self.base.as_ptr().add(self.cap).cast::<libc::c_void>(),
                    (want - self.cap) * 8,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            } == 0;
            if !ok {
                out_of_memory(want);
            }
            self.cap = want;
        }

        /// Moves the words to a new reservation of at least `want` words (the first reservation,
        /// or, should a reservation have been refused its full size, a larger one).
        fn move_to_reservation(&mut self, want: usize) {
            let words = RESERVE_WORDS.max(want).max(self.reserved.saturating_mul(2));
            self.move_to_reservation_of(words, want);
        }

        /// Moves the words to a new reservation of `words` words, or of fewer, down to `want`,
        /// if the system refuses that much address space.
        fn move_to_reservation_of(&mut self, mut words: usize, want: usize) {
            let (start, bytes) = loop {
                let bytes = words
                    .checked_mul(8)
                    .and_then(|b| b.checked_add(ALIGN))
                    .unwrap_or_else(|| overflow());
                // SAFETY: a fresh private anonymous mapping with no access: it only takes
                // address space, and nothing else refers to it.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        bytes,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    break (p as usize, bytes);
                }
                if words == want {
                    out_of_memory(want);
                }
                words = (words / 2).max(want);
            };
            let base = start.next_multiple_of(ALIGN) as *mut u64;
            // SAFETY: the first `len` words of the old buffer are usable; the new buffer's first
            // `len` words are made usable here, inside the new reservation (`len < want <=
            // words`), so the copy stays in bounds on both sides, and the two never overlap.
            unsafe {
                if self.len > 0 {
                    let bytes_used = (self.len.next_multiple_of(PAGE_WORDS)) * 8;
                    if libc::mprotect(
                        base.cast::<libc::c_void>(),
                        bytes_used,
                        libc::PROT_READ | libc::PROT_WRITE,
                    ) != 0
                    {
                        libc::munmap(start as *mut libc::c_void, bytes);
                        out_of_memory(want);
                    }
                    std::ptr::copy_nonoverlapping(self.base.as_ptr(), base, self.len);
                }
                // Huge pages where the kernel leaves that to the program: random lookups then
                // rarely need a page-table walk. Advice only.
                libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
            self.unmap();
            // SAFETY: `start` came from a successful mmap, so it is not null.
            self.base = unsafe { NonNull::new_unchecked(base) };
            self.cap = self.len.next_multiple_of(PAGE_WORDS);
            self.reserved = words;
            self.map = (start, bytes);
        }

        fn unmap(&mut self) {
            if self.map.1 != 0 {
                // SAFETY: the whole mapping this buffer made, which nothing else refers to (the
                // buffer is borrowed uniquely and its words are no longer lent out).
                unsafe { libc::munmap(self.map.0 as *mut libc::c_void, self.map.1) };
                self.map = (0, 0);
            }
        }
    }

    impl Drop for Words {
        fn drop(&mut self) {
            self.unmap();
        }
    }

    impl std::ops::Deref for Words {
        type Target = [u64];
        fn deref(&self) -> &[u64] {
            // SAFETY: the first `len` words are usable and initialised (every word below `len`
            // was written by push, extend or resize), and are borrowed with `self`.
            unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
        }
    }

    impl std::ops::DerefMut for Words {
        fn deref_mut(&mut self) -> &mut [u64] {
            // SAFETY: as in `deref`, with the unique borrow.
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
        }
    }

    #[cold]
    fn overflow() -> ! {
        panic!("capacity overflow")
    }

    #[cold]
    fn out_of_memory(words: usize) -> ! {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::array::<u64>(words).unwrap_or(std::alloc::Layout::new::<u64>()),
        )
    }

    #[cfg(test)]
    impl Words {
        /// A buffer whose first reservation holds only `words` words, so that tests reach the
        /// move to a larger one.
        pub fn with_small_reservation(words: usize) -> Words {
            let mut w = Words::new();
            w.move_to_reservation_of(words, words);
            w
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    /// A growable buffer of `u64`s: a `Vec<u64>` on this system.
    #[derive(Default)]
    pub struct Words(Vec<u64>);

    impl Words {
        /// An empty buffer.
        pub fn new() -> Words {
            Words(Vec::new())
        }
        /// Words in use.
        pub fn len(&self) -> usize {
            self.0.len()
        }
        /// Words it holds without growing.
        pub fn capacity(&self) -> usize {
            self.0.capacity()
        }
        /// Pointer to the first word.
        pub fn as_ptr(&self) -> *const u64 {
            self.0.as_ptr()
        }
        /// Mutable pointer to the first word.
        pub fn as_mut_ptr(&mut self) -> *mut u64 {
            self.0.as_mut_ptr()
        }
        /// Makes room for at least `additional` more words.
        pub fn reserve_exact(&mut self, additional: usize) {
            self.0.reserve_exact(additional);
        }
        /// Makes room for at least `additional` more words, growing as `push` does.
        pub fn reserve(&mut self, additional: usize) {
            self.0.reserve(additional);
        }
        /// Would fault in spare capacity ahead of appends; nothing on this system.
        pub fn populate(&self, _from: usize, _to: usize) -> bool {
            false
        }
        /// Appends a word.
        pub fn push(&mut self, w: u64) {
            self.0.push(w);
        }
        /// Sets the length, filling new words with `value`.
        pub fn resize(&mut self, new_len: usize, value: u64) {
            self.0.resize(new_len, value);
        }
        /// Shortens the buffer.
        pub fn truncate(&mut self, len: usize) {
            self.0.truncate(len);
        }
        /// Gives back unused capacity.
        pub fn shrink_to_fit(&mut self) {
            self.0.shrink_to_fit();
        }
    }

    impl std::ops::Deref for Words {
        type Target = [u64];
        fn deref(&self) -> &[u64] {
            &self.0
        }
    }

    impl std::ops::DerefMut for Words {
        fn deref_mut(&mut self) -> &mut [u64] {
            &mut self.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Words;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        Extend(Vec<u64>),
        Resize(usize, u64),
        Truncate(usize),
        Reserve(usize),
        Shrink,
        Write(usize, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u64>().prop_map(Op::Push),
            2 => prop::collection::vec(any::<u64>(), 0..3000).prop_map(Op::Extend),
            2 => (0usize..20_000, any::<u64>()).prop_map(|(n, v)| Op::Resize(n, v)),
            1 => (0usize..20_000).prop_map(Op::Truncate),
            1 => (0usize..5000).prop_map(Op::Reserve),
            1 => Just(Op::Shrink),
            2 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::Write(i, v)),
        ]
    }

    fn check(mut w: Words, ops: &[Op]) {
        let mut model: Vec<u64> = Vec::new();
        for op in ops {
            match op.clone() {
                Op::Push(v) => {
                    w.push(v);
                    model.push(v);
                }
                Op::Extend(s) => {
                    for &v in &s {
                        w.push(v);
                    }
                    model.extend_from_slice(&s);
                }
                Op::Resize(n, v) => {
                    w.resize(n, v);
                    model.resize(n, v);
                }
                Op::Truncate(n) => {
                    w.truncate(n);
                    model.truncate(n);
                }
                Op::Reserve(n) => {
                    w.reserve_exact(n);
                    assert!(w.capacity() >= w.len() + n);
                }
                Op::Shrink => w.shrink_to_fit(),
                Op::Write(i, v) => {
                    if !model.is_empty() {
                        let i = i % model.len();
                        w[i] = v;
                        model[i] = v;
                    }
                }
            }
            assert!(w.capacity() >= w.len());
            assert_eq!(&w[..], &model[..]);
        }
    }

    proptest! {
        #[test]
        fn words_behave_like_a_vec(ops in prop::collection::vec(op(), 1..60)) {
            check(Words::new(), &ops);
        }
    }

    #[cfg(target_os = "linux")]
    proptest! {
        /// A reservation too small for what is written: the words move to a larger one intact.
        #[test]
        fn words_outgrowing_a_small_reservation_keep_their_contents(
            ops in prop::collection::vec(op(), 1..60),
        ) {
            check(Words::with_small_reservation(1024), &ops);
        }
    }

    #[test]
    fn growing_keeps_the_words_in_place() {
        let mut w = Words::new();
        w.reserve_exact(10);
        w.push(7);
        let at = w.as_ptr();
        for i in 0..3_000_000u64 {
            w.push(i);
        }
        #[cfg(target_os = "linux")]
        assert_eq!(at, w.as_ptr(), "the buffer moved while growing");
        assert_eq!(w[0], 7);
        assert_eq!(w[w.len() - 1], 2_999_999);
        let _ = at;
    }
}
