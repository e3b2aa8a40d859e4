//! [`OsStorage`]: the real file system.

use super::{Mapping, OpenMode, Storage, StorageFile};
use std::any::Any;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The operating system's file system.
///
/// Locking: a POSIX record lock (`fcntl(F_SETLK)`) on the `LOCK` file keeps other processes out,
/// and a process-wide table of held lock files keeps a second opener in this process out. Record
/// locks are chosen over `flock` because they are not inherited: with `flock` a child process
/// forked by another thread briefly shares the lock between its fork and its exec, so a close
/// followed at once by a reopen could be refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

#[derive(Debug)]
struct OsFile {
    file: File,
}

#[derive(Debug)]
struct OsMapping {
    raw: Option<memmap2::MmapRaw>,
}

impl Mapping for OsMapping {
    fn as_ptr(&self) -> *mut u8 {
        match &self.raw {
            Some(m) => m.as_mut_ptr(),
            None => std::ptr::NonNull::dangling().as_ptr(),
        }
    }
    fn len(&self) -> usize {
        self.raw.as_ref().map_or(0, |m| m.len())
    }
    fn prefault(&self, start: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Some((m, start, len)) = self.clamped(start, len) {
            // A hint: an older kernel without MADV_POPULATE_WRITE (before 5.14) refuses it, and
            // the pages are then faulted in one at a time as they are written, as without it.
            let _ = m.advise_range(memmap2::Advice::PopulateWrite, start, len);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
    fn written(&self, start: usize, len: usize) {
        #[cfg(target_os = "linux")]
        if let Some((m, start, len)) = self.clamped(start, len) {
            // MADV_DONTNEED on a shared file mapping only removes page-table entries: a dirty
            // page's data stays in the page cache, dirty, and a later access maps it again. A
            // hint: a failure changes nothing.
            // SAFETY: the range lies inside the mapping; the engine never writes these bytes
            // through it again, and readers that touch them fault the same page-cache pages back
            // in, so no live reference to the memory is invalidated.
            let _ =
                unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
}

impl OsMapping {
    /// The mapping and the part of `start..start + len` inside it, if any (for the hints).
    #[cfg(target_os = "linux")]
    fn clamped(&self, start: usize, len: usize) -> Option<(&memmap2::MmapRaw, usize, usize)> {
        let m = self.raw.as_ref()?;
        (start < m.len()).then(|| (m, start, len.min(m.len() - start)))
    }
}

impl Storage for OsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let canonical = fs::canonicalize(path)?;
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(&canonical) {
            return Ok(None);
        }
        if !record_lock(&file)? {
            return Ok(None);
        }
        held.insert(canonical.clone());
        Ok(Some(Box::new(LockGuard {
            _file: file,
            path: canonical,
        })))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(OsFile {
            file: o.open(path)?,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

impl StorageFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        allocate(&self.file, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SYNC_FILE_RANGE_WRITE alone starts writeback of the range's dirty pages and
            // returns: it neither waits nor checks for write errors, so an error is still
            // reported by the next fdatasync of the file. A hint: its result is not needed.
            // SAFETY: a plain system call on a descriptor this file owns; no memory is passed.
            let _ = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    fn map(&self, len: usize, writable: bool) -> io::Result<Arc<dyn Mapping>> {
        if len == 0 {
            return Ok(Arc::new(OsMapping { raw: None }));
        }
        let opts = {
            let mut o = memmap2::MmapOptions::new();
            o.len(len);
            o
        };
        let raw = if writable {
            opts.map_raw(&self.file)?
        } else {
            opts.map_raw_read_only(&self.file)?
        };
        Ok(Arc::new(OsMapping { raw: Some(raw) }))
    }
}

static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Holds a lock file open (and so its record lock) and its place in [`HELD`].
struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
    }
}

/// Takes a write lock on the whole file; false if another process holds one.
fn record_lock(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is a valid value; every field used is set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    loop {
        // SAFETY: fcntl on a descriptor we own with a pointer to a live flock struct.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
        if r == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(target_os = "linux")]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len_off =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // File systems without fallocate: extend with zeros by writing them, so the blocks
            // exist and a write through a mapping cannot hit a full disk later.
            Some(libc::EOPNOTSUPP) => return zero_extend(file, len),
            _ => return Err(err),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    zero_extend(file, len)
}

fn zero_extend(file: &File, len: u64) -> io::Result<()> {
    let mut at = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
