//! [`FaultStorage`]: a wrapper that makes chosen calls fail, and counts calls.

use super::{Mapping, OpenMode, Storage, StorageFile};
use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The calls a [`FaultStorage`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `sync_data` and `sync_all` of a file.
    Sync,
    /// `write_all_at` and `set_len`.
    Write,
    /// `allocate` (reserving space for a new segment).
    Allocate,
    /// `open` with [`OpenMode::CreateNew`].
    Create,
    /// `rename`.
    Rename,
    /// `remove_file`.
    Remove,
    /// `sync_dir`.
    SyncDir,
    /// `read_exact_at` and `map`.
    Read,
}

const KINDS: usize = 8;

fn slot(kind: FaultKind) -> usize {
    kind as usize
}

/// The switchboard of a [`FaultStorage`]: which calls fail, with which errno, how many times; and
/// how many calls of each kind were made.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<[Option<(i32, u64)>; KINDS]>,
    calls: [AtomicU64; KINDS],
}

impl Faults {
    /// Makes the next `times` calls of `kind` fail with OS error `errno` (`u64::MAX`: until
    /// [`Faults::clear`]).
    pub fn inject(&self, kind: FaultKind, errno: i32, times: u64) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())[slot(kind)] = Some((errno, times));
    }

    /// Stops failing calls of `kind`.
    pub fn clear(&self, kind: FaultKind) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())[slot(kind)] = None;
    }

    /// Stops failing anything.
    pub fn clear_all(&self) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = [None; KINDS];
    }

    /// How many calls of `kind` were made (failed ones included).
    pub fn calls(&self, kind: FaultKind) -> u64 {
        self.calls[slot(kind)].load(Ordering::SeqCst)
    }

    fn check(&self, kind: FaultKind) -> io::Result<()> {
        self.calls[slot(kind)].fetch_add(1, Ordering::SeqCst);
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((errno, left)) = armed[slot(kind)] {
            armed[slot(kind)] = match left {
                u64::MAX => Some((errno, left)),
                0 | 1 => None,
                n => Some((errno, n - 1)),
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }
}

/// A [`Storage`] that forwards to another one, failing the calls its [`Faults`] say.
#[derive(Debug)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl FaultStorage {
    /// Wraps `inner`; returns the storage and the switchboard that controls it.
    pub fn new(inner: Arc<dyn Storage>) -> (Arc<FaultStorage>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Arc::new(FaultStorage {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Arc<dyn StorageFile>,
    faults: Arc<Faults>,
}

impl Storage for FaultStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.inner.try_lock(path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        if mode == OpenMode::CreateNew {
            self.faults.check(FaultKind::Create)?;
        }
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(FaultFile {
            inner,
            faults: self.faults.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check(FaultKind::Rename)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check(FaultKind::Remove)?;
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.faults.check(FaultKind::SyncDir)?;
        self.inner.sync_dir(path)
    }
}

impl StorageFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.faults.check(FaultKind::Read)?;
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.check(FaultKind::Write)?;
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check(FaultKind::Write)?;
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.faults.check(FaultKind::Allocate)?;
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.check(FaultKind::Sync)?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.faults.check(FaultKind::Sync)?;
        self.inner.sync_all()
    }
    fn map(&self, len: usize, writable: bool) -> io::Result<Arc<dyn Mapping>> {
        self.faults.check(FaultKind::Read)?;
        self.inner.map(len, writable)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len);
    }
}
