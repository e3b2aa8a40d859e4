//! Message threads: append-only, offset-addressed logs of messages with retention, opened with
//! [`Store::thread`] or [`Store::thread_with`] and listed with [`Store::threads`].
//!
//! Offsets are strictly increasing per thread and never reused: not after expiry, trimming,
//! deleting the thread, nor after a restart. A reader whose offset fell below the first live
//! message gets the messages from the first live one; each [`Message`] carries its offset, so a
//! gap (`message.offset > asked`) says that messages were skipped, and [`Stream::skipped`]
//! counts them.
//!
//! # Keys
//! In [`Namespace::THREADS`], so no user key can collide with them. A thread name is 1 to 200
//! bytes of UTF-8 without a NUL byte.
//! - `m/<thread>`: metadata, 34 bytes: version, flags (bit 0: deleted), the next offset, the trim
//!   floor (no message below it is returned), the default TTL in ms (0: none), the creation time.
//! - `t/<thread>\0<offset as 8 bytes big-endian>`: one message; the value is the write time (u64
//!   unix ms), the expiry (u64 unix ms, 0: none) and the payload. Big-endian offsets make an
//!   ordered prefix scan read the thread in offset order.
//!
//! Every append writes its messages and the metadata with the new next offset in one
//! [`crate::WriteBatch`], so the next offset is durable together with the messages; after a
//! restart it continues from there even if every message has expired or was trimmed. Appends to
//! one thread are serialized by a per-thread lock (held across the write); reads never take it.
//!
//! # Retention
//! A thread may carry a default TTL ([`ThreadOptions::default_ttl`]), stored in its metadata;
//! [`Thread::append_with_ttl`] overrides it per message. The TTL becomes an absolute deadline
//! when the message is appended and is the store expiry of the message's key: an expired message
//! vanishes from reads at once and from disk through the store's expiry and compaction. The
//! store's own default TTL does not apply to thread messages.
//!
//! # Streams
//! [`Thread::stream`] is an iterator that blocks until new messages arrive and ends (`None`) when
//! the store is closed; [`Thread::stream_with_timeout`] also ends after an idle period (real
//! time). Appends wake the streams of the same open store.

use crate::queue::{check_name, ms};
use crate::{Error, Expiry, Keyspace, Namespace, Result, Store, Waker};
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const META_VERSION: u8 = 1;
const META_LEN: usize = 34;
const DELETE_CHUNK: usize = 4096;
/// Keys listed at a time by [`Thread::len`].
const LEN_PAGE: usize = 4096;
const READ_CHUNK: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of a thread, kept with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadOptions {
    /// TTL of messages appended without one; `None` (the default) keeps them until trimmed.
    pub default_ttl: Option<Duration>,
}

impl ThreadOptions {
    /// Sets [`ThreadOptions::default_ttl`].
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }
}

/// One message of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the thread.
    pub offset: u64,
    /// The payload.
    pub payload: Vec<u8>,
    /// When it was appended, unix ms.
    pub written_at: u64,
    /// When it expires, unix ms, if it has a TTL.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    deleted: bool,
    next: u64,
    floor: u64,
    ttl_ms: u64,
    created_at: u64,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(META_LEN);
        v.push(META_VERSION);
        v.push(u8::from(self.deleted));
        for x in [self.next, self.floor, self.ttl_ms, self.created_at] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_LEN || b[0] != META_VERSION || b[1] > 1 {
            return None;
        }
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Some(Meta {
            deleted: b[1] == 1,
            next: u64_at(2)?,
            floor: u64_at(10)?,
            ttl_ms: u64_at(18)?,
            created_at: u64_at(26)?,
        })
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn msg_prefix(name: &str) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn msg_key(prefix: &[u8], offset: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(prefix: &[u8], key: &[u8]) -> Option<u64> {
    key.strip_prefix(prefix)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Describes a key of [`Namespace::THREADS`] for people (used by the inspect tool).
pub(crate) fn describe_key(key: &[u8]) -> Option<String> {
    if let Some(name) = key.strip_prefix(b"m/") {
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.contains('\0'))?;
        return Some(format!(
            "thread {name:?}: metadata (next offset, trim floor, TTL policy)"
        ));
    }
    let rest = key.strip_prefix(b"t/")?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&rest[..nul])
        .ok()
        .filter(|n| !n.is_empty())?;
    let off: [u8; 8] = rest[nul + 1..].try_into().ok()?;
    Some(format!(
        "thread {name:?}: message at offset {}",
        u64::from_be_bytes(off)
    ))
}

fn decode_message(offset: u64, v: &[u8]) -> Option<Message> {
    let written_at = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let expires_at = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some(Message {
        offset,
        payload: v[16..].to_vec(),
        written_at,
        expires_at: (expires_at != 0).then_some(expires_at),
    })
}

struct Shared {
    /// Held across an append's write: offsets are handed out in order.
    write: Mutex<()>,
    /// The thread's metadata as last made durable.
    meta: Mutex<Meta>,
    cv: Condvar,
    /// Streams blocked waiting for a message.
    waiting: AtomicUsize,
}

/// The per-store, per-thread-name state. Holds no [`Store`].
struct ThreadExt {
    shared: Arc<Shared>,
    _waker: Arc<Waker>,
}

/// A message thread in a [`Store`]. Cheap to clone; every handle of the same name in the same
/// open store shares one state. See the [module docs](self).
///
/// ```
/// # fn main() -> ttlstore::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = ttlstore::Store::open(dir.path())?;
/// let t = store.thread("chat:42")?;
/// assert_eq!(t.append(b"hello")?, 0);
/// assert_eq!(t.append(b"world")?, 1);
/// let msgs = t.read(0, 10)?;
/// assert_eq!(msgs[1].payload, b"world");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Thread {
    store: Store,
    ks: Keyspace,
    name: Arc<str>,
    prefix: Arc<[u8]>,
    ext: Arc<ThreadExt>,
}

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the message thread `name`, with the TTL policy it was last
    /// given. A deleted thread is created again and continues its offsets.
    pub fn thread(&self, name: &str) -> Result<Thread> {
        Thread::open(self, name, None)
    }

    /// Opens (creating if needed) the message thread `name` and sets its TTL policy, durably.
    pub fn thread_with(&self, name: &str, opts: ThreadOptions) -> Result<Thread> {
        if opts.default_ttl.is_some_and(|t| ms(t) == 0) {
            return Err(Error::InvalidArgument {
                what: "a thread's default TTL must be at least 1 ms".into(),
            });
        }
        Thread::open(self, name, Some(opts))
    }

    /// The names of the threads in this store (deleted ones left out), sorted.
    pub fn threads(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.namespace(Namespace::THREADS).scan_prefix(b"m/") {
            let (k, v) = item?;
            let name = k.get(2..).and_then(|n| std::str::from_utf8(n).ok());
            if let (Some(name), Some(meta)) = (name, Meta::decode(&v))
                && !meta.deleted
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

impl Thread {
    fn open(store: &Store, name: &str, opts: Option<ThreadOptions>) -> Result<Thread> {
        check_name("thread name", name)?;
        let ks = store.namespace(Namespace::THREADS);
        let ext = store.extension::<ThreadExt>(name, || {
            let meta = match ks.get(&meta_key(name))? {
                Some(v) => Meta::decode(&v).ok_or_else(|| Error::Rejected {
                    reason: format!(
                        "thread {name:?}: its metadata record is not in a format this version reads"
                    ),
                })?,
                None => Meta {
                    deleted: true,
                    next: 0,
                    floor: 0,
                    ttl_ms: 0,
                    created_at: 0,
                },
            };
            let shared = Arc::new(Shared {
                write: Mutex::new(()),
                meta: Mutex::new(meta),
                cv: Condvar::new(),
                waiting: AtomicUsize::new(0),
            });
            let s = shared.clone();
            let waker: Arc<Waker> = Arc::new(move || {
                drop(lock(&s.meta));
                s.cv.notify_all();
            });
            store.on_close(Arc::downgrade(&waker));
            Ok(ThreadExt {
                shared,
                _waker: waker,
            })
        })?;
        let t = Thread {
            store: store.clone(),
            ks,
            name: name.into(),
            prefix: msg_prefix(name).into(),
            ext,
        };
        {
            let _w = lock(&t.ext.shared.write);
            let mut meta = *lock(&t.ext.shared.meta);
            let ttl_ms = opts.map_or(meta.ttl_ms, |o| o.default_ttl.map_or(0, ms));
            if meta.deleted || meta.ttl_ms != ttl_ms {
                if meta.deleted {
                    meta.created_at = t.store.now_ms();
                }
                meta.deleted = false;
                meta.ttl_ms = ttl_ms;
                t.write_meta(meta)?;
            }
        }
        Ok(t)
    }

    fn write_meta(&self, meta: Meta) -> Result<()> {
        self.ks
            .put_with(&meta_key(&self.name), &meta.encode(), Expiry::Never)?;
        *lock(&self.ext.shared.meta) = meta;
        self.ext.shared.cv.notify_all();
        Ok(())
    }

    fn meta(&self) -> Meta {
        *lock(&self.ext.shared.meta)
    }

    /// How many streams of this thread (in this open store) are blocked waiting for a message.
    pub fn waiting_streams(&self) -> usize {
        self.ext.shared.waiting.load(Ordering::SeqCst)
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The thread's TTL policy.
    pub fn options(&self) -> ThreadOptions {
        let m = self.meta();
        ThreadOptions {
            default_ttl: (m.ttl_ms != 0).then(|| Duration::from_millis(m.ttl_ms)),
        }
    }

    /// Appends a message with the thread's default TTL; returns its offset.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        Ok(self.append_inner(&[(payload, None)])?.start)
    }

    /// Appends a message expiring after `ttl` (at least 1 ms); returns its offset.
    pub fn append_with_ttl(&self, payload: &[u8], ttl: Duration) -> Result<u64> {
        if ms(ttl) == 0 {
            return Err(Error::InvalidArgument {
                what: "a message TTL must be at least 1 ms".into(),
            });
        }
        Ok(self.append_inner(&[(payload, Some(ms(ttl)))])?.start)
    }

    /// Appends several messages, all or none (also across a crash), with the default TTL;
    /// returns their offsets.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>> {
        let items: Vec<(&[u8], Option<u64>)> =
            payloads.iter().map(|p| (p.as_ref(), None)).collect();
        self.append_inner(&items)
    }

    fn append_inner(&self, items: &[(&[u8], Option<u64>)]) -> Result<Range<u64>> {
        for (p, _) in items {
            if p.len() + 16 > crate::MAX_VALUE_LEN {
                return Err(Error::ValueTooLarge {
                    len: p.len(),
                    max: crate::MAX_VALUE_LEN - 16,
                });
            }
        }
        let _w = lock(&self.ext.shared.write);
        let mut meta = self.meta();
        let start = meta.next;
        if items.is_empty() {
            return Ok(start..start);
        }
        let now = self.store.now_ms();
        let mut b = self.ks.batch();
        for (i, (payload, ttl)) in items.iter().enumerate() {
            let ttl = ttl.or((meta.ttl_ms != 0).then_some(meta.ttl_ms));
            let expires_at = ttl.map_or(0, |t| now.saturating_add(t.max(1)));
            let mut value = Vec::with_capacity(16 + payload.len());
            value.extend_from_slice(&now.to_be_bytes());
            value.extend_from_slice(&expires_at.to_be_bytes());
            value.extend_from_slice(payload);
            let expiry = if expires_at == 0 {
                Expiry::Never
            } else {
                Expiry::At(expires_at)
            };
            b.put_with(&msg_key(&self.prefix, start + i as u64), &value, expiry);
        }
        if meta.deleted {
            meta.created_at = now;
        }
        meta.deleted = false;
        meta.next = start + items.len() as u64;
        b.put_with(&meta_key(&self.name), &meta.encode(), Expiry::Never);
        self.store.write_batch(b)?;
        *lock(&self.ext.shared.meta) = meta;
        self.ext.shared.cv.notify_all();
        Ok(start..meta.next)
    }

    /// Up to `limit` live messages at or after `from_offset`, in offset order. If messages in
    /// between expired or were trimmed, the result starts at the first live one after them.
    pub fn read(&self, from_offset: u64, limit: usize) -> Result<Vec<Message>> {
        let meta = self.meta();
        let mut start = from_offset.max(meta.floor);
        let mut out = Vec::new();
        // Messages are mostly contiguous: look them up one by one while they are there (one
        // index lookup each), and scan past a gap.
        while out.len() < limit && start < meta.next {
            let Some(v) = self.ks.get(&msg_key(&self.prefix, start))? else {
                break;
            };
            out.push(self.decode(start, &v)?);
            start += 1;
        }
        if out.len() >= limit || start >= meta.next {
            return Ok(out);
        }
        let scan = if start == 0 {
            self.ks.scan_prefix(&self.prefix)
        } else {
            self.ks
                .scan_prefix_after(&self.prefix, &msg_key(&self.prefix, start - 1))
        };
        for item in scan {
            let (k, v) = item?;
            let Some(off) = offset_of(&self.prefix, &k) else {
                continue;
            };
            if off < start {
                continue;
            }
            out.push(self.decode(off, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn decode(&self, off: u64, v: &[u8]) -> Result<Message> {
        decode_message(off, v).ok_or_else(|| Error::Rejected {
            reason: format!(
                "thread {:?}: message {off} is not in a format this version reads",
                &*self.name
            ),
        })
    }

    /// The offset of the first live message, or [`Thread::next_offset`] if there is none.
    pub fn first_offset(&self) -> Result<u64> {
        let meta = self.meta();
        Ok(self
            .read(meta.floor, 1)?
            .first()
            .map_or(meta.next, |m| m.offset))
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.meta().next
    }

    /// The number of live messages. Counted a page of keys at a time: a long thread's keys are
    /// never all in memory at once.
    pub fn len(&self) -> Result<usize> {
        let floor = self.meta().floor;
        let mut count = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut page = match &after {
                None => self.ks.keys_with_prefix(&self.prefix, LEN_PAGE),
                Some(a) => self.ks.keys_with_prefix_after(&self.prefix, a, LEN_PAGE),
            };
            count += page
                .iter()
                .filter(|(k, _)| offset_of(&self.prefix, k).is_some_and(|o| o >= floor))
                .count();
            if page.len() < LEN_PAGE {
                return Ok(count);
            }
            after = page.pop().map(|(k, _)| k);
        }
    }

    /// True if the thread holds no live message.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.read(0, 1)?.is_empty())
    }

    /// Removes every message below `offset` (offsets past the next offset count as the next
    /// offset); returns how many live messages were removed. Offsets are not reused.
    pub fn trim_before(&self, offset: u64) -> Result<usize> {
        let _w = lock(&self.ext.shared.write);
        let mut meta = self.meta();
        let target = offset.min(meta.next);
        if target <= meta.floor {
            return Ok(0);
        }
        // In offset order: stop at the target instead of listing the whole thread.
        let mut keys = Vec::new();
        let mut live = 0;
        for item in self.ks.scan_prefix(&self.prefix) {
            let (k, _) = item?;
            match offset_of(&self.prefix, &k) {
                Some(o) if o >= target => break,
                Some(o) => live += usize::from(o >= meta.floor),
                None => continue,
            }
            keys.push(k);
        }
        meta.floor = target;
        self.remove_keys(&keys, meta)?;
        Ok(live)
    }

    /// Deletes the whole thread: its messages and its place in [`Store::threads`]. Its next
    /// offset is kept, so a thread created again under the name never reuses an offset.
    pub fn delete(&self) -> Result<()> {
        let _w = lock(&self.ext.shared.write);
        let mut meta = self.meta();
        let keys: Vec<Vec<u8>> = self
            .ks
            .keys_with_prefix(&self.prefix, usize::MAX)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        meta.floor = meta.next;
        meta.deleted = true;
        self.remove_keys(&keys, meta)
    }

    /// Deletes `keys` and writes `meta` (in the first batch, so readers skip what a crash
    /// would leave of the rest: everything below the floor).
    fn remove_keys(&self, keys: &[Vec<u8>], meta: Meta) -> Result<()> {
        let mut chunks = keys.chunks(DELETE_CHUNK);
        let mut b = self.ks.batch();
        b.put_with(&meta_key(&self.name), &meta.encode(), Expiry::Never);
        for k in chunks.next().unwrap_or(&[]) {
            b.delete(k);
        }
        self.store.write_batch(b)?;
        *lock(&self.ext.shared.meta) = meta;
        self.ext.shared.cv.notify_all();
        for chunk in chunks {
            let mut b = self.ks.batch();
            for k in chunk {
                b.delete(k);
            }
            self.store.write_batch(b)?;
        }
        Ok(())
    }

    /// An iterator over the messages from `from_offset` on that blocks for new ones and ends
    /// when the store is closed.
    pub fn stream(&self, from_offset: u64) -> Stream {
        Stream {
            thread: self.clone(),
            cursor: from_offset,
            idle: None,
            buf: VecDeque::new(),
            skipped: 0,
            done: false,
        }
    }

    /// Like [`Thread::stream`], but the iterator also ends when no message arrives for `idle`
    /// (real time).
    pub fn stream_with_timeout(&self, from_offset: u64, idle: Duration) -> Stream {
        Stream {
            idle: Some(idle),
            ..self.stream(from_offset)
        }
    }
}

/// A blocking iterator over a thread's messages: [`Thread::stream`]. Yields `Err` once (then
/// ends) if a read fails.
#[derive(Debug)]
pub struct Stream {
    thread: Thread,
    cursor: u64,
    idle: Option<Duration>,
    buf: VecDeque<Message>,
    skipped: u64,
    done: bool,
}

impl Stream {
    /// The offset the stream reads next.
    pub fn position(&self) -> u64 {
        self.buf.front().map_or(self.cursor, |m| m.offset)
    }

    /// How many offsets the stream has passed over without a message (expired or trimmed
    /// before it read them).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next message, waiting up to `timeout` (real time; `None`: no limit) for one.
    /// `Ok(None)` on timeout or when the store is closed.
    pub fn next_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<Message>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let shared = self.thread.ext.shared.clone();
        loop {
            if let Some(m) = self.buf.pop_front() {
                return Ok(Some(m));
            }
            if self.thread.store.is_closed() {
                return Ok(None);
            }
            let published = lock(&shared.meta).next;
            let msgs = self.thread.read(self.cursor, READ_CHUNK)?;
            if let Some(last) = msgs.last() {
                let mut expect = self.cursor;
                for m in &msgs {
                    self.skipped += m.offset - expect;
                    expect = m.offset + 1;
                }
                self.cursor = last.offset + 1;
                self.buf.extend(msgs);
                continue;
            }
            if published > self.cursor {
                // Messages up to `published` were durable before this read and are gone.
                self.skipped += published - self.cursor;
                self.cursor = published;
                continue;
            }
            let mut g = lock(&shared.meta);
            let _waiting = Waiting::enter(&shared.waiting);
            while g.next <= self.cursor && !self.thread.store.is_closed() {
                g = match deadline {
                    None => shared.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let now = Instant::now();
                        if d <= now {
                            return Ok(None);
                        }
                        shared
                            .cv
                            .wait_timeout(g, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        }
    }
}

/// Counts a blocked stream while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Iterator for Stream {
    type Item = Result<Message>;
    fn next(&mut self) -> Option<Result<Message>> {
        if self.done {
            return None;
        }
        match self.next_timeout(self.idle) {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_keys_are_described() {
        let m = Meta {
            deleted: true,
            next: 9,
            floor: 3,
            ttl_ms: 100,
            created_at: 7,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        let p = msg_prefix("chat");
        assert_eq!(
            describe_key(&msg_key(&p, 258)).unwrap(),
            "thread \"chat\": message at offset 258"
        );
        assert!(
            describe_key(&meta_key("chat"))
                .unwrap()
                .contains("metadata")
        );
        assert_eq!(describe_key(b"t/chat"), None);
        assert_eq!(offset_of(&p, &msg_key(&p, 5)), Some(5));
    }
}
