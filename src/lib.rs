//! # ttlstore
//!
//! An embedded, persistent key-value store built around time-to-live. Every write may carry an
//! absolute expiry; everything acknowledged survives a crash or restart with its remaining TTL
//! intact; expired data leaves memory and disk by itself.
//!
//! ```
//! # fn main() -> ttlstore::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::time::Duration;
//! use ttlstore::{Options, Store, SyncPolicy};
//!
//! let store = Store::open_with(dir.path(), Options::default().sync(SyncPolicy::Always))?;
//! store.put_with_ttl(b"session:1", b"alice", Duration::from_secs(60))?;
//! drop(store);
//! let store = Store::open(dir.path())?;
//! assert_eq!(store.get(b"session:1")?.unwrap(), b"alice");
//! # Ok(()) }
//! ```
//!
//! ## Layout of the crate
//! - [`store`](Store): the API; [`batch`](WriteBatch): atomic batches;
//! - [`format`]: every on-disk byte (see `FORMAT.md`); `segment`: segment files; `writer`: the append
//!   path and group commit; `recovery`: open and replay; `index`: the in-memory index and expiry
//!   heap (its record arena grows in place: `words`); `state`: applying a logged operation to the
//!   index;
//! - [`storage`]: the file-system trait all I/O goes through; [`clock`](Clock): time.

#![deny(missing_docs)]

mod background;
mod batch;
pub mod cache;
mod clock;
mod compaction;
mod error;
mod expiry;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
mod heap;
mod hint;
mod index;
pub mod inspect;
mod macros;
mod options;
pub mod queue;
mod recovery;
mod segment;
mod state;
pub mod storage;
mod store;
pub mod thread;
mod words;
mod writer;

pub use batch::{Expiry, WriteBatch};
pub use cache::{Cache, CacheError, CacheOptions, CacheStats, CachedValue, Lookup};
pub use clock::{Clock, ManualClock, SystemClock, Waker};
pub use compaction::CompactionReport;
pub use error::{CorruptionKind, Error, Result};
pub use expiry::ExpiredKey;
pub use options::{
    DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, Options, RecoveryMode, SyncPolicy,
    TtlPolicy,
};
pub use queue::{
    DeadLetter, PushOptions, Queue, QueueOptions, QueueStats, Task, TaskId, TaskInfo, TaskState,
};
pub use recovery::RecoveryReport;
pub use store::{Item, Keyspace, Namespace, Scan, Stats, Store, Value};
pub use thread::{Message, Stream, Thread, ThreadOptions};

/// The longest key accepted, in bytes. Keys must not be empty.
pub const MAX_KEY_LEN: usize = 65_000;
/// The longest value accepted, in bytes (512 MiB).
pub const MAX_VALUE_LEN: usize = 512 << 20;
/// The largest encoded batch accepted, in bytes (1 GiB).
pub const MAX_BATCH_BYTES: usize = 1 << 30;
