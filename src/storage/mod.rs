//! The one door through which the engine touches files.
//!
//! Every byte the engine reads or writes, every fsync, rename, unlink and lock goes through
//! [`Storage`] and [`StorageFile`]. Production uses [`OsStorage`]; tests wrap it in
//! [`FaultStorage`] to make calls fail on demand (ENOSPC, EIO, a failed fsync), or replace it with
//! a simulated file system that keeps what was synced apart from what was only written, to
//! simulate power loss.
//!
//! This module is public so that tests outside the crate can inject faults; it is not part of the
//! stable API and may change in any release.
//!
//! # Mappings
//! Segments are read, and the active segment written, through memory mappings
//! ([`StorageFile::map`]). The contract every implementation keeps:
//! - the bytes of a mapping *are* the file's bytes: what is written through a writable mapping is
//!   what [`StorageFile::read_exact_at`] returns and what [`StorageFile::sync_data`] makes durable;
//! - a mapping stays valid as long as its `Arc` lives, also after the file is renamed, unlinked or
//!   shortened with [`StorageFile::set_len`] (the engine then never touches bytes past the new
//!   length);
//! - the engine writes through a writable mapping only to bytes no reader has been given, so
//!   readers and the writer never touch the same byte at once.

mod fault;
mod os;
mod sim;

pub use fault::{FaultKind, FaultStorage, Faults};
pub use os::OsStorage;
pub use sim::{CrashMode, SimStorage};

use std::any::Any;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// How [`Storage::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; the file must not exist yet and is created empty.
    CreateNew,
}

/// A file system, as the engine sees it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a directory (files only matter to the engine).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Takes an exclusive advisory lock on the file at `path` (creating it if needed). `Ok(None)`
    /// means another holder has it. The lock is released when the returned guard drops.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames a file, replacing any file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// An open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True if the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's length, cutting or extending it with zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Extends the file to at least `len` bytes and reserves disk space for them, so that later
    /// writes through a mapping cannot run out of space. Fails with ENOSPC on a full disk.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the size, if it changed) durable: fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all its metadata durable: fsync.
    fn sync_all(&self) -> io::Result<()>;
    /// Maps the first `len` bytes of the file (which must exist), writable or not.
    fn map(&self, len: usize, writable: bool) -> io::Result<Arc<dyn Mapping>>;
    /// A hint to start writing bytes `offset..offset + len` back to the disk now, without waiting
    /// for it, so that a later [`StorageFile::sync_data`] has less left to do. It makes nothing
    /// durable (only `sync_data` and `sync_all` do), and an implementation must not consume a
    /// write error the next `sync_data` would report. Ignoring it is always correct.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// A memory mapping of (part of) a file. See the module docs for the contract.
pub trait Mapping: Send + Sync + fmt::Debug + Any {
    /// The address of the first byte: the same for the mapping's whole life, valid for
    /// [`Mapping::len`] bytes while `self` lives (a segment reads it once). Writing through it
    /// is allowed only for writable mappings.
    fn as_ptr(&self) -> *mut u8;
    /// The mapped length in bytes.
    fn len(&self) -> usize;
    /// True when the mapping has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A hint that bytes `start..start + len` of a writable mapping (all inside the file) are
    /// about to be written: an implementation may fault their pages in ahead, in one call rather
    /// than one page fault per page. It never changes the bytes; ignoring it is always correct.
    fn prefault(&self, start: usize, len: usize) {
        let _ = (start, len);
    }
    /// A hint that bytes `start..start + len` of a writable mapping will not be written through
    /// it again: an implementation may drop its page-table entries for them, so that writing
    /// the pages back finds none to write-protect (one TLB flush for the range instead of one per
    /// page). The bytes stay what they are, readable through the mapping; ignoring it is always
    /// correct.
    fn written(&self, start: usize, len: usize) {
        let _ = (start, len);
    }
}

/// Bytes `start..start + len` of a mapping as a slice.
///
/// # Panics
/// If the range is outside the mapping (an engine bug, never a property of data on disk: every
/// caller checks ranges read from disk against the file's length first).
pub(crate) fn mapped(map: &dyn Mapping, start: usize, len: usize) -> &[u8] {
    // SAFETY: `as_ptr` is valid for `len()` bytes while `map` lives (the trait's contract), which
    // the borrow of `map` outlasts.
    unsafe { mapped_at(map.as_ptr(), map.len(), start, len) }
}

/// Bytes `start..start + len` of the mapping of `map_len` bytes at `ptr`, as a slice.
///
/// # Safety
/// `ptr` must be a mapping's address ([`Mapping::as_ptr`]), valid for `map_len` bytes for as
/// long as the returned slice lives.
///
/// # Panics
/// As [`mapped`].
#[inline]
pub(crate) unsafe fn mapped_at<'a>(
    ptr: *const u8,
    map_len: usize,
    start: usize,
    len: usize,
) -> &'a [u8] {
    let end = start.checked_add(len).filter(|&e| e <= map_len);
    assert!(
        end.is_some(),
        "mapped range {start}+{len} outside a mapping of {map_len}"
    );
    if len == 0 {
        return &[];
    }
    // SAFETY: the range lies inside the mapping (checked above), valid as long as the slice by
    // the caller's promise, and by the module contract no writer touches bytes a reader was given.
    unsafe { std::slice::from_raw_parts(ptr.add(start), len) }
}
