//! The engines under test behind one small interface: ttlstore and its peers fjall, redb, sled.
//!
//! Each peer is used the way its documentation recommends for the job; where a workload needs a
//! feature a peer lacks (TTL), it is emulated the way its users do it (see [`Kv::churn`]).

use crate::util::{R, VAL_LEN, Values, key};
use redb::{ReadableDatabase, ReadableTable};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The engines, in the order the tables list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Ttlstore,
    Fjall,
    Redb,
    Sled,
}

pub const ENGINES: [Engine; 4] = [Engine::Ttlstore, Engine::Fjall, Engine::Redb, Engine::Sled];

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ttlstore => "ttlstore",
            Engine::Fjall => "fjall",
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each engine's default buffering; the workload syncs once at the end.
    Buffered,
    /// Every put is durable (fdatasync or equivalent) before it returns.
    Durable,
}

/// One operation of the churn workload, on key number `id`.
#[derive(Debug, Clone, Copy)]
pub enum ChurnOp {
    /// Put key `id` with a 100-byte value expiring after `ttl_ms`.
    Put { id: u64, ttl_ms: u64 },
    /// Delete key `id`.
    Delete { id: u64 },
}

/// A store under test.
pub trait Kv: Send + Sync {
    /// Puts keys `from..to` with their values (per [`Mode`]).
    fn fill(&self, vals: &Values, from: u64, to: u64) -> R<()> {
        for i in from..to {
            self.put(&key(i), vals.get(i))?;
        }
        Ok(())
    }
    /// One put.
    fn put(&self, k: &[u8], v: &[u8]) -> R<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> R<()>;
    /// A reader for one thread (peers with read transactions keep one open).
    fn reader(&self) -> R<Box<dyn Reader + '_>>;
    /// Applies churn operations written at `now_ms` (unix ms). Returns the bytes the engine
    /// appended to its log for them when the harness can know it (ttlstore), else 0.
    fn churn(&self, vals: &Values, ops: &[ChurnOp], now_ms: u64) -> R<u64>;
    /// Removes what expired by `now_ms`; returns how many keys it removed. No-op for engines
    /// that expire keys themselves.
    fn sweep(&self, now_ms: u64) -> R<u64>;
    /// ttlstore's statistics; `None` for the peers.
    fn ttl_stats(&self) -> Option<ttlstore::Stats> {
        None
    }
    /// Queue emulation, the way users of a plain key-value store do it (one key per task): takes
    /// the first key under `q` and moves it under `l` (leased) in one atomic write; returns the
    /// task's key without the prefix. The caller serialises claims (no compare-and-swap here).
    fn queue_claim(&self) -> R<Option<Vec<u8>>>;
    /// Removes the leased task `l`+`task` (the ack), durably in [`Mode::Durable`].
    fn queue_ack(&self, task: &[u8]) -> R<()>;
    /// ttlstore's own queue, for the engine that has one.
    fn native_queue(&self) -> Option<ttlstore::Queue> {
        None
    }
    /// ttlstore's own message thread, for the engine that has one.
    fn native_thread(&self) -> Option<ttlstore::Thread> {
        None
    }
}

/// The key of a ready task in the queue emulation.
pub fn queued_key(task: &[u8]) -> Vec<u8> {
    [b"q".as_slice(), task].concat()
}

/// The key of a leased task in the queue emulation.
pub fn leased_key(task: &[u8]) -> Vec<u8> {
    [b"l".as_slice(), task].concat()
}

/// Point reads and scans for one thread.
pub trait Reader {
    /// Reads `k`; true when found with a 100-byte value.
    fn get(&mut self, k: &[u8]) -> R<bool>;
    /// Counts the keys with `prefix`, in order, touching every value.
    fn scan_prefix(&mut self, prefix: &[u8]) -> R<usize>;
}

/// Opens `engine` in `dir` (creating it if needed).
pub fn open(engine: Engine, dir: &Path, mode: Mode) -> R<Arc<dyn Kv>> {
    Ok(match engine {
        Engine::Ttlstore => Arc::new(Ttl::open(dir, mode)?),
        Engine::Fjall => Arc::new(Fjall::open(dir, mode)?),
        Engine::Redb => Arc::new(Redb::open(dir, mode)?),
        Engine::Sled => Arc::new(Sled::open(dir, mode)?),
    })
}

// ----- churn emulation shared by the peers -----
//
// What users of an ordered KV store without TTL do: the value carries its absolute expiry
// (8 bytes big-endian, then the value) under `d` + key, and an expiry index entry
// `e` + expiry + key lets a periodic sweep find what expired with one range scan. The sweep
// deletes the data key only if its stored expiry is still the one indexed (an overwrite moved
// it), and always deletes the index entry. Reads would check the stored expiry themselves.

fn data_key(k: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(1 + k.len());
    d.push(b'd');
    d.extend_from_slice(k);
    d
}

fn index_key(exp: u64, k: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(9 + k.len());
    e.push(b'e');
    e.extend_from_slice(&exp.to_be_bytes());
    e.extend_from_slice(k);
    e
}

fn stamped(exp: u64, v: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + v.len());
    s.extend_from_slice(&exp.to_be_bytes());
    s.extend_from_slice(v);
    s
}

/// Parses an index key into (expiry, data key).
fn parse_index(e: &[u8]) -> Option<(u64, Vec<u8>)> {
    if e.len() < 9 || e[0] != b'e' {
        return None;
    }
    let exp = u64::from_be_bytes(e[1..9].try_into().ok()?);
    Some((exp, data_key(&e[9..])))
}

fn stored_expiry(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// Upper bound of the index range holding expiries `<= now`.
fn index_upper(now: u64) -> Vec<u8> {
    let mut u = vec![b'e'];
    u.extend_from_slice(&(now.saturating_add(1)).to_be_bytes());
    u
}

// ----- ttlstore -----

pub struct Ttl {
    store: ttlstore::Store,
}

impl Ttl {
    fn open(dir: &Path, mode: Mode) -> R<Ttl> {
        let mut opts = ttlstore::Options::default();
        // A segment size other than the default, for runs that show how it shapes TTL churn.
        if let Some(size) = std::env::var("TTLSTORE_SEGMENT_SIZE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            opts = opts.segment_size(size);
        }
        if mode == Mode::Durable {
            opts = opts.sync(ttlstore::SyncPolicy::Always);
        }
        Ok(Ttl {
            store: ttlstore::Store::open_with(dir, opts)?,
        })
    }
}

impl Kv for Ttl {
    fn queue_claim(&self) -> R<Option<Vec<u8>>> {
        Err("ttlstore runs its own queue (native_queue)".into())
    }
    fn queue_ack(&self, _task: &[u8]) -> R<()> {
        Err("ttlstore runs its own queue (native_queue)".into())
    }
    fn native_queue(&self) -> Option<ttlstore::Queue> {
        self.store.queue("bench").ok()
    }
    fn native_thread(&self) -> Option<ttlstore::Thread> {
        self.store.thread("bench").ok()
    }
    fn put(&self, k: &[u8], v: &[u8]) -> R<()> {
        Ok(self.store.put(k, v)?)
    }
    fn sync(&self) -> R<()> {
        Ok(self.store.sync()?)
    }
    fn reader(&self) -> R<Box<dyn Reader + '_>> {
        Ok(Box::new(TtlReader(self.store.clone())))
    }
    fn churn(&self, vals: &Values, ops: &[ChurnOp], _now_ms: u64) -> R<u64> {
        let mut logged = 0;
        for op in ops {
            match *op {
                ChurnOp::Put { id, ttl_ms } => {
                    self.store.put_with_ttl(
                        &key(id),
                        vals.get(id),
                        Duration::from_millis(ttl_ms),
                    )?;
                    logged += crate::churn::ttl_put_len();
                }
                ChurnOp::Delete { id } => {
                    if self.store.delete(&key(id))? {
                        logged += crate::churn::ttl_delete_len();
                    }
                }
            }
        }
        Ok(logged)
    }
    fn sweep(&self, _now_ms: u64) -> R<u64> {
        Ok(0)
    }
    fn ttl_stats(&self) -> Option<ttlstore::Stats> {
        Some(self.store.stats())
    }
}

struct TtlReader(ttlstore::Store);

impl Reader for TtlReader {
    fn get(&mut self, k: &[u8]) -> R<bool> {
        Ok(self.0.get(k)?.is_some_and(|v| v.len() == VAL_LEN))
    }
    fn scan_prefix(&mut self, prefix: &[u8]) -> R<usize> {
        let mut n = 0;
        let mut sum = 0u64;
        for kv in self.0.scan_prefix(prefix) {
            let (_, v) = kv?;
            sum = sum.wrapping_add(u64::from(v[0]));
            n += 1;
        }
        std::hint::black_box(sum);
        Ok(n)
    }
}

// ----- fjall -----

pub struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
    mode: Mode,
}

impl Fjall {
    fn open(dir: &Path, mode: Mode) -> R<Fjall> {
        let db = fjall::Database::builder(dir).open()?;
        let ks = db.keyspace("bench", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, ks, mode })
    }
}

impl Kv for Fjall {
    fn queue_claim(&self) -> R<Option<Vec<u8>>> {
        let Some(first) = self.ks.prefix(b"q").next() else {
            return Ok(None);
        };
        let (k, v) = first.into_inner()?;
        let task = k[1..].to_vec();
        let mut b = self.db.batch();
        b.remove(&self.ks, k.to_vec());
        b.insert(&self.ks, leased_key(&task), v.to_vec());
        b.commit()?;
        if self.mode == Mode::Durable {
            self.db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(Some(task))
    }
    fn queue_ack(&self, task: &[u8]) -> R<()> {
        self.ks.remove(leased_key(task))?;
        if self.mode == Mode::Durable {
            self.db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(())
    }
    fn put(&self, k: &[u8], v: &[u8]) -> R<()> {
        self.ks.insert(k, v)?;
        if self.mode == Mode::Durable {
            self.db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(())
    }
    fn sync(&self) -> R<()> {
        Ok(self.db.persist(fjall::PersistMode::SyncData)?)
    }
    fn reader(&self) -> R<Box<dyn Reader + '_>> {
        Ok(Box::new(FjallReader(&self.ks)))
    }
    fn churn(&self, vals: &Values, ops: &[ChurnOp], now_ms: u64) -> R<u64> {
        for op in ops {
            let mut b = self.db.batch();
            match *op {
                ChurnOp::Put { id, ttl_ms } => {
                    let exp = now_ms + ttl_ms;
                    let k = key(id);
                    b.insert(&self.ks, data_key(&k), stamped(exp, vals.get(id)));
                    b.insert(&self.ks, index_key(exp, &k), &[][..]);
                }
                ChurnOp::Delete { id } => b.remove(&self.ks, data_key(&key(id))),
            }
            b.commit()?;
        }
        Ok(0)
    }
    fn sweep(&self, now_ms: u64) -> R<u64> {
        let mut removed = 0;
        let mut b = self.db.batch();
        for g in self.ks.range(&b"e"[..]..&index_upper(now_ms)[..]) {
            let ik = g.key()?;
            let Some((exp, dk)) = parse_index(&ik) else {
                continue;
            };
            if let Some(v) = self.ks.get(&dk)?
                && stored_expiry(&v) == Some(exp)
            {
                b.remove(&self.ks, dk);
                removed += 1;
            }
            b.remove(&self.ks, ik);
            if b.len() >= 1024 {
                std::mem::replace(&mut b, self.db.batch()).commit()?;
            }
        }
        b.commit()?;
        Ok(removed)
    }
}

struct FjallReader<'a>(&'a fjall::Keyspace);

impl Reader for FjallReader<'_> {
    fn get(&mut self, k: &[u8]) -> R<bool> {
        Ok(self.0.get(k)?.is_some_and(|v| v.len() == VAL_LEN))
    }
    fn scan_prefix(&mut self, prefix: &[u8]) -> R<usize> {
        let mut n = 0;
        let mut sum = 0u64;
        for g in self.0.prefix(prefix) {
            let (_, v) = g.into_inner()?;
            sum = sum.wrapping_add(u64::from(v[0]));
            n += 1;
        }
        std::hint::black_box(sum);
        Ok(n)
    }
}

// ----- redb -----

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");

/// Puts per write transaction when not durable (what redb's users do for bulk loads).
const REDB_TXN: u64 = 1000;

pub struct Redb {
    db: redb::Database,
    mode: Mode,
}

impl Redb {
    fn open(dir: &Path, mode: Mode) -> R<Redb> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("data.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?;
        txn.commit()?;
        Ok(Redb { db, mode })
    }

    fn txn(&self) -> R<redb::WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        if self.mode == Mode::Buffered {
            txn.set_durability(redb::Durability::None)?;
        }
        Ok(txn)
    }
}

impl Kv for Redb {
    fn fill(&self, vals: &Values, from: u64, to: u64) -> R<()> {
        if self.mode == Mode::Durable {
            for i in from..to {
                self.put(&key(i), vals.get(i))?;
            }
            return Ok(());
        }
        let mut i = from;
        while i < to {
            let txn = self.txn()?;
            {
                let mut t = txn.open_table(TABLE)?;
                for j in i..(i + REDB_TXN).min(to) {
                    t.insert(&key(j)[..], vals.get(j))?;
                }
            }
            txn.commit()?;
            i += REDB_TXN;
        }
        Ok(())
    }
    fn queue_claim(&self) -> R<Option<Vec<u8>>> {
        let txn = self.txn()?;
        let task = {
            let mut t = txn.open_table(TABLE)?;
            let first = t
                .range(&b"q"[..]..&b"r"[..])?
                .next()
                .transpose()?
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
            match first {
                Some((k, v)) => {
                    t.remove(&k[..])?;
                    t.insert(&leased_key(&k[1..])[..], &v[..])?;
                    Some(k[1..].to_vec())
                }
                None => None,
            }
        };
        txn.commit()?;
        Ok(task)
    }
    fn queue_ack(&self, task: &[u8]) -> R<()> {
        let txn = self.txn()?;
        txn.open_table(TABLE)?.remove(&leased_key(task)[..])?;
        txn.commit()?;
        Ok(())
    }
    fn put(&self, k: &[u8], v: &[u8]) -> R<()> {
        let txn = self.txn()?;
        txn.open_table(TABLE)?.insert(k, v)?;
        txn.commit()?;
        Ok(())
    }
    fn sync(&self) -> R<()> {
        // An empty transaction with Immediate durability makes every earlier one durable.
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }
    fn reader(&self) -> R<Box<dyn Reader + '_>> {
        let table = self.db.begin_read()?.open_table(TABLE)?;
        Ok(Box::new(RedbReader(table)))
    }
    fn churn(&self, vals: &Values, ops: &[ChurnOp], now_ms: u64) -> R<u64> {
        // One transaction per group of operations (the driver sends groups of 64): a
        // transaction per put would cap redb far below the offered rate.
        let txn = self.txn()?;
        {
            let mut t = txn.open_table(TABLE)?;
            for op in ops {
                match *op {
                    ChurnOp::Put { id, ttl_ms } => {
                        let exp = now_ms + ttl_ms;
                        let k = key(id);
                        t.insert(&data_key(&k)[..], &stamped(exp, vals.get(id))[..])?;
                        t.insert(&index_key(exp, &k)[..], &[][..])?;
                    }
                    ChurnOp::Delete { id } => {
                        t.remove(&data_key(&key(id))[..])?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(0)
    }
    fn sweep(&self, now_ms: u64) -> R<u64> {
        let txn = self.txn()?;
        let mut removed = 0;
        {
            let mut t = txn.open_table(TABLE)?;
            let upper = index_upper(now_ms);
            let mut due = Vec::new();
            for kv in t.range(&b"e"[..]..&upper[..])? {
                let (k, _) = kv?;
                due.push(k.value().to_vec());
            }
            for ik in due {
                let Some((exp, dk)) = parse_index(&ik) else {
                    continue;
                };
                let current = t.get(&dk[..])?.and_then(|v| stored_expiry(v.value()));
                if current == Some(exp) {
                    t.remove(&dk[..])?;
                    removed += 1;
                }
                t.remove(&ik[..])?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

struct RedbReader(redb::ReadOnlyTable<&'static [u8], &'static [u8]>);

impl Reader for RedbReader {
    fn get(&mut self, k: &[u8]) -> R<bool> {
        Ok(self.0.get(k)?.is_some_and(|v| v.value().len() == VAL_LEN))
    }
    fn scan_prefix(&mut self, prefix: &[u8]) -> R<usize> {
        let mut upper = prefix.to_vec();
        // Prefixes here are ASCII digits: incrementing the last byte gives the range end.
        if let Some(last) = upper.last_mut() {
            *last += 1;
        }
        let mut n = 0;
        let mut sum = 0u64;
        for kv in self.0.range(prefix..&upper[..])? {
            let (_, v) = kv?;
            sum = sum.wrapping_add(u64::from(v.value()[0]));
            n += 1;
        }
        std::hint::black_box(sum);
        Ok(n)
    }
}

// ----- sled -----

pub struct Sled {
    db: sled::Db,
    mode: Mode,
}

impl Sled {
    fn open(dir: &Path, mode: Mode) -> R<Sled> {
        Ok(Sled {
            db: sled::open(dir)?,
            mode,
        })
    }
}

impl Kv for Sled {
    fn queue_claim(&self) -> R<Option<Vec<u8>>> {
        let Some((k, v)) = self.db.scan_prefix(b"q").next().transpose()? else {
            return Ok(None);
        };
        let task = k[1..].to_vec();
        let mut b = sled::Batch::default();
        b.remove(k);
        b.insert(leased_key(&task), v);
        self.db.apply_batch(b)?;
        if self.mode == Mode::Durable {
            self.db.flush()?;
        }
        Ok(Some(task))
    }
    fn queue_ack(&self, task: &[u8]) -> R<()> {
        self.db.remove(leased_key(task))?;
        if self.mode == Mode::Durable {
            self.db.flush()?;
        }
        Ok(())
    }
    fn put(&self, k: &[u8], v: &[u8]) -> R<()> {
        self.db.insert(k, v)?;
        if self.mode == Mode::Durable {
            // sled's strongest sync (sync_file_range on Linux, never fdatasync).
            self.db.flush()?;
        }
        Ok(())
    }
    fn sync(&self) -> R<()> {
        self.db.flush()?;
        Ok(())
    }
    fn reader(&self) -> R<Box<dyn Reader + '_>> {
        Ok(Box::new(SledReader(&self.db)))
    }
    fn churn(&self, vals: &Values, ops: &[ChurnOp], now_ms: u64) -> R<u64> {
        for op in ops {
            let mut b = sled::Batch::default();
            match *op {
                ChurnOp::Put { id, ttl_ms } => {
                    let exp = now_ms + ttl_ms;
                    let k = key(id);
                    b.insert(data_key(&k), stamped(exp, vals.get(id)));
                    b.insert(index_key(exp, &k), &[][..]);
                }
                ChurnOp::Delete { id } => b.remove(data_key(&key(id))),
            }
            self.db.apply_batch(b)?;
        }
        Ok(0)
    }
    fn sweep(&self, now_ms: u64) -> R<u64> {
        let mut removed = 0;
        let mut b = sled::Batch::default();
        let mut pending = 0;
        for kv in self.db.range(&b"e"[..]..&index_upper(now_ms)[..]) {
            let (ik, _) = kv?;
            let Some((exp, dk)) = parse_index(&ik) else {
                continue;
            };
            if let Some(v) = self.db.get(&dk)?
                && stored_expiry(&v) == Some(exp)
            {
                b.remove(dk);
                removed += 1;
            }
            b.remove(ik);
            pending += 1;
            if pending >= 1024 {
                self.db.apply_batch(std::mem::take(&mut b))?;
                pending = 0;
            }
        }
        self.db.apply_batch(b)?;
        Ok(removed)
    }
}

struct SledReader<'a>(&'a sled::Db);

impl Reader for SledReader<'_> {
    fn get(&mut self, k: &[u8]) -> R<bool> {
        Ok(self.0.get(k)?.is_some_and(|v| v.len() == VAL_LEN))
    }
    fn scan_prefix(&mut self, prefix: &[u8]) -> R<usize> {
        let mut n = 0;
        let mut sum = 0u64;
        for kv in self.0.scan_prefix(prefix) {
            let (_, v) = kv?;
            sum = sum.wrapping_add(u64::from(v[0]));
            n += 1;
        }
        std::hint::black_box(sum);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine reads back what it wrote, scans in order, and the peers' TTL emulation
    /// removes exactly the expired keys (and keeps an overwritten one).
    #[test]
    fn engines_agree() {
        let vals = Values::new();
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let kv = open(engine, dir.path(), Mode::Buffered).unwrap();
            kv.fill(&vals, 0, 2500).unwrap();
            kv.sync().unwrap();
            let mut r = kv.reader().unwrap();
            assert!(r.get(&key(1234)).unwrap(), "{}", engine.name());
            assert!(!r.get(&key(9999)).unwrap(), "{}", engine.name());
            assert_eq!(
                r.scan_prefix(b"k00000000000001").unwrap(),
                10,
                "{}",
                engine.name()
            );
            drop(r);
            if engine == Engine::Ttlstore {
                continue;
            }
            let now = 1_000_000;
            let ops = [
                ChurnOp::Put { id: 1, ttl_ms: 10 },
                ChurnOp::Put { id: 2, ttl_ms: 10 },
                ChurnOp::Put { id: 3, ttl_ms: 10 },
                ChurnOp::Delete { id: 3 },
            ];
            kv.churn(&vals, &ops, now).unwrap();
            kv.churn(&vals, &[ChurnOp::Put { id: 2, ttl_ms: 100 }], now)
                .unwrap();
            // Key 1 expired; key 2 was overwritten with a later expiry; key 3 was deleted.
            assert_eq!(kv.sweep(now + 50).unwrap(), 1, "{}", engine.name());
            assert_eq!(kv.sweep(now + 200).unwrap(), 1, "{}", engine.name());
            assert_eq!(kv.sweep(now + 300).unwrap(), 0, "{}", engine.name());
        }
    }
}
