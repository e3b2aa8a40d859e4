//! [`WriteBatch`]: several writes applied all or none, also across a crash (one record, one
//! checksum).

use crate::store::Namespace;
use std::time::Duration;

/// When a written key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The store's default TTL policy ([`crate::Options::default_ttl`]).
    Default,
    /// Never.
    Never,
    /// This long after the write (zero deletes the key).
    After(Duration),
    /// At this absolute unix time in milliseconds (a time not after the write deletes the key).
    At(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct BatchOp {
    pub(crate) ns: u8,
    pub(crate) key: Vec<u8>,
    /// `None` for a delete.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) expiry: Expiry,
}

/// Writes to apply together with [`crate::Store::write_batch`]. Later operations on the same key
/// win over earlier ones.
///
/// ```
/// # fn main() -> ttlstore::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = ttlstore::Store::open(dir.path())?;
/// let mut batch = ttlstore::WriteBatch::new();
/// batch.put(b"a", b"1").delete(b"b").put_with_ttl(b"c", b"3", std::time::Duration::from_secs(9));
/// store.write_batch(batch)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub(crate) ops: Vec<BatchOp>,
    ns: u8,
}

impl WriteBatch {
    /// An empty batch writing to [`Namespace::DEFAULT`].
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// An empty batch whose operations go to `ns`.
    pub fn in_namespace(ns: Namespace) -> WriteBatch {
        WriteBatch {
            ops: Vec::new(),
            ns: ns.id(),
        }
    }

    /// Sets `key` to `value` with the store's default TTL.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.put_with(key, value, Expiry::Default)
    }

    /// Sets `key` to `value`, expiring after `ttl` (zero deletes).
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> &mut Self {
        self.put_with(key, value, Expiry::After(ttl))
    }

    /// Sets `key` to `value` with an explicit expiry.
    pub fn put_with(&mut self, key: &[u8], value: &[u8], expiry: Expiry) -> &mut Self {
        self.ops.push(BatchOp {
            ns: self.ns,
            key: key.to_vec(),
            value: Some(value.to_vec()),
            expiry,
        });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.ops.push(BatchOp {
            ns: self.ns,
            key: key.to_vec(),
            value: None,
            expiry: Expiry::Never,
        });
        self
    }

    /// Adds the operations of `other` (in their own namespaces) after these.
    pub fn extend(&mut self, other: WriteBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if there is no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
