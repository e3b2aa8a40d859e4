//! [`SimStorage`]: an in-memory file system that simulates power loss.
//!
//! Every file has a *live* image (what reads, writes and mappings see) and a *durable* image (what
//! a power loss keeps for sure): [`StorageFile::sync_data`] and [`StorageFile::sync_all`] copy the
//! live image, length included, to the durable one. Directory entries work the same way: a
//! creation, rename or removal changes the live namespace at once and is logged; it becomes durable
//! only when [`Storage::sync_dir`] is called on its directory.
//!
//! [`SimStorage::crash`] replaces the file system by what a power loss leaves, as chosen by a
//! [`CrashMode`]: the durable images plus all, none, or a random torn part of the unsynced bytes
//! (whole 4 KiB pages, or pages cut at a random byte), and the durable namespace plus all, none or
//! a random prefix of the directory changes since the last directory sync (a file created but
//! never dir-synced may vanish; a rename may be undone). Everything random comes from the seed
//! given to [`SimStorage::new`], so a failing run can be replayed.
//!
//! Mappings alias the live image: a file's buffer is allocated once, at the file capacity given to
//! [`SimStorage::with_file_capacity`] (default 8 MiB; untouched pages of the allocation are never
//! made resident by the OS), and never moves. A file cannot grow past its capacity (`EFBIG`).
//! Directories are created durable at once and never removed.
//!
//! Writes through a mapping may race with a sync copying the live image; the copy then holds some
//! of those bytes and not others, which is what a real page cache does too (the engine only relies
//! on bytes written before the sync began).

use super::{Mapping, OpenMode, Storage, StorageFile};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const PAGE: usize = 4096;

/// What a simulated power loss keeps of what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and directory change reached the disk anyway.
    KeepAll,
    /// Nothing that was not synced survives.
    KeepNone,
    /// Each unsynced 4 KiB page survives or not at random; a random prefix of the unsynced
    /// directory changes survives; each file keeps its synced or its live length.
    TornPages,
    /// Like [`CrashMode::TornPages`], and a page may also be cut at a random byte: its first part
    /// new, the rest old, or the other way round.
    TornBytes,
}

impl CrashMode {
    /// Every mode, for tests that try each.
    pub const ALL: [CrashMode; 4] = [
        CrashMode::KeepAll,
        CrashMode::KeepNone,
        CrashMode::TornPages,
        CrashMode::TornBytes,
    ];
}

/// The live bytes of a file: one allocation of fixed capacity that never moves.
struct Buffer {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer is plain memory; every access goes through `Inode`, which serialises its own
// accesses with a mutex; accesses through mappings follow the storage module's contract.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `cap` come from a `Vec<u8>` of that capacity (see `Inode::new`); a
        // length of 0 means no element needs dropping.
        unsafe { drop(Vec::from_raw_parts(self.ptr, 0, self.cap)) };
    }
}

struct Inode {
    buf: Buffer,
    /// Live length; the buffer is initialised up to the largest length it ever had.
    meta: Mutex<Meta>,
    durable: Mutex<Vec<u8>>,
}

struct Meta {
    len: usize,
    initialised: usize,
}

impl fmt::Debug for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("len", &lock(&self.meta).len)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn efbig() -> io::Error {
    io::Error::from_raw_os_error(libc::EFBIG)
}

impl Inode {
    fn new(cap: usize, content: &[u8]) -> Arc<Inode> {
        let cap = cap.max(content.len()).max(1);
        let mut v: Vec<u8> = Vec::with_capacity(cap);
        let ptr = v.as_mut_ptr();
        let cap = v.capacity();
        std::mem::forget(v);
        let inode = Inode {
            buf: Buffer { ptr, cap },
            meta: Mutex::new(Meta {
                len: 0,
                initialised: 0,
            }),
            durable: Mutex::new(content.to_vec()),
        };
        {
            let mut m = lock(&inode.meta);
            inode.resize(&mut m, content.len());
            // SAFETY: `content.len()` bytes are inside the buffer (capacity checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(content.as_ptr(), inode.buf.ptr, content.len())
            };
        }
        Arc::new(inode)
    }

    /// Sets the live length; new bytes read as zeros. The caller holds `meta`.
    fn resize(&self, m: &mut Meta, len: usize) {
        debug_assert!(len <= self.buf.cap);
        if len > m.len {
            // SAFETY: `m.len..len` lies inside the buffer's capacity.
            unsafe { std::ptr::write_bytes(self.buf.ptr.add(m.len), 0, len - m.len) };
        } else if len < m.len {
            // Zero the cut part, so that extending the file again shows zeros, as on a real disk.
            // SAFETY: inside the capacity.
            unsafe { std::ptr::write_bytes(self.buf.ptr.add(len), 0, m.len - len) };
        }
        m.initialised = m.initialised.max(len);
        m.len = len;
    }

    fn live(&self) -> Vec<u8> {
        let m = lock(&self.meta);
        let mut out = vec![0u8; m.len];
        // SAFETY: bytes `0..len` are initialised and inside the buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.ptr, out.as_mut_ptr(), m.len) };
        out
    }
}

/// A directory change not yet made durable by `sync_dir`.
#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, Arc<Inode>),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) | DirOp::Rename(p, _) => p.parent(),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Arc<Inode>>) {
        match self {
            DirOp::Link(p, inode) => {
                names.insert(p.clone(), inode.clone());
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

struct State {
    live: BTreeMap<PathBuf, Arc<Inode>>,
    durable: BTreeMap<PathBuf, Arc<Inode>>,
    log: Vec<DirOp>,
    dirs: std::collections::BTreeSet<PathBuf>,
    locks: BTreeMap<PathBuf, u64>,
    rng: u64,
    crashes: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// A simulated file system with separate live and durable images, for power-loss tests. See the
/// module docs.
pub struct SimStorage {
    state: Arc<Mutex<State>>,
    /// True between [`SimStorage::crash`] and [`SimStorage::restart`]: every call fails.
    down: Arc<AtomicBool>,
    file_capacity: usize,
    tokens: AtomicU64,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("SimStorage")
            .field("files", &s.live.len())
            .field("unsynced_dir_ops", &s.log.len())
            .field("crashes", &s.crashes)
            .finish()
    }
}

impl SimStorage {
    /// An empty file system whose random choices follow `seed`; files may grow to 8 MiB.
    pub fn new(seed: u64) -> Arc<SimStorage> {
        SimStorage::with_file_capacity(seed, 8 << 20)
    }

    /// Like [`SimStorage::new`], with files that may grow to `bytes`.
    pub fn with_file_capacity(seed: u64, bytes: usize) -> Arc<SimStorage> {
        Arc::new(SimStorage {
            state: Arc::new(Mutex::new(State {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                log: Vec::new(),
                dirs: Default::default(),
                locks: BTreeMap::new(),
                rng: seed,
                crashes: 0,
            })),
            down: Arc::new(AtomicBool::new(false)),
            file_capacity: bytes,
            tokens: AtomicU64::new(1),
        })
    }

    /// Simulates a power loss: the file system becomes what the disk would hold afterwards (see
    /// [`CrashMode`]), every lock is released, and what survived counts as durable. From then on
    /// every call fails with EIO (the machine is off: a store still running, and its threads, can
    /// change nothing) until [`SimStorage::restart`]. Writes through mappings made before go to
    /// detached copies that nothing reads any more.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = lock(&self.state);
        self.down.store(true, Ordering::SeqCst);
        s.crashes += 1;
        let keep_ops = match mode {
            CrashMode::KeepAll => s.log.len(),
            CrashMode::KeepNone => 0,
            CrashMode::TornPages | CrashMode::TornBytes => {
                let n = s.log.len() as u64;
                s.below(n + 1) as usize
            }
        };
        let mut names = s.durable.clone();
        for op in &s.log[..keep_ops] {
            op.apply(&mut names);
        }
        // One new inode per surviving old one (a file may have several names after a torn rename
        // sequence; they keep sharing it).
        let mut rebuilt: Vec<(*const Inode, Arc<Inode>)> = Vec::new();
        let mut after = BTreeMap::new();
        for (path, inode) in names {
            let key = Arc::as_ptr(&inode);
            let new = match rebuilt.iter().find(|(k, _)| *k == key) {
                Some((_, n)) => n.clone(),
                None => {
                    let content = merge(&mut s, &inode, mode);
                    let n = Inode::new(self.file_capacity, &content);
                    rebuilt.push((key, n.clone()));
                    n
                }
            };
            after.insert(path, new);
        }
        s.live = after.clone();
        s.durable = after;
        s.log.clear();
        s.locks.clear();
    }

    /// Powers the file system on again after [`SimStorage::crash`]. Drop the stores that used it
    /// before (their shutdown would otherwise run against the new disk).
    pub fn restart(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// [`SimStorage::crash`] then [`SimStorage::restart`].
    pub fn crash_and_restart(&self, mode: CrashMode) {
        self.crash(mode);
        self.restart();
    }

    fn check_up(&self) -> io::Result<()> {
        check_up(&self.down)
    }

    /// How many simulated power losses this file system went through.
    pub fn crashes(&self) -> u64 {
        lock(&self.state).crashes
    }

    /// The names of the files that exist now (live namespace), in order.
    pub fn file_names(&self) -> Vec<PathBuf> {
        lock(&self.state).live.keys().cloned().collect()
    }

    /// The live bytes of the file at `path`, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.state).live.get(path).map(|i| i.live())
    }

    /// Replaces the content of the file at `path` (creating it durably if needed), live and durable:
    /// for tests that plant damaged files.
    pub fn write_file(&self, path: &Path, content: &[u8]) {
        let mut s = lock(&self.state);
        let inode = Inode::new(self.file_capacity, content);
        s.live.insert(path.to_path_buf(), inode.clone());
        s.durable.insert(path.to_path_buf(), inode);
    }
}

/// The bytes of `inode` after a power loss in `mode`.
fn merge(s: &mut State, inode: &Inode, mode: CrashMode) -> Vec<u8> {
    let live = inode.live();
    let durable = lock(&inode.durable).clone();
    match mode {
        CrashMode::KeepAll => return live,
        CrashMode::KeepNone => return durable,
        CrashMode::TornPages | CrashMode::TornBytes => {}
    }
    let len = if s.below(2) == 0 {
        live.len()
    } else {
        durable.len()
    };
    let at = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
    let mut out = vec![0u8; len];
    for start in (0..len).step_by(PAGE) {
        let end = (start + PAGE).min(len);
        if (start..end).all(|i| at(&live, i) == at(&durable, i)) {
            for (i, b) in out[start..end].iter_mut().enumerate() {
                *b = at(&live, start + i);
            }
            continue;
        }
        let choice = if mode == CrashMode::TornBytes {
            s.below(4)
        } else {
            s.below(2)
        };
        let cut = start + s.below((end - start) as u64 + 1) as usize;
        for (i, b) in out[start..end].iter_mut().enumerate() {
            let i = start + i;
            *b = match choice {
                0 => at(&live, i),
                1 => at(&durable, i),
                2 if i < cut => at(&live, i),
                2 => at(&durable, i),
                _ if i < cut => at(&durable, i),
                _ => at(&live, i),
            };
        }
    }
    out
}

struct LockGuard {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    token: u64,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if s.locks.get(&self.path) == Some(&self.token) {
            s.locks.remove(&self.path);
        }
    }
}

fn check_up(down: &AtomicBool) -> io::Result<()> {
    if down.load(Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check_up()?;
        let mut s = lock(&self.state);
        for p in path.ancestors() {
            s.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.check_up()?;
        let s = lock(&self.state);
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.check_up()?;
        let mut s = lock(&self.state);
        if !s.live.contains_key(path) {
            let inode = Inode::new(self.file_capacity.min(PAGE), &[]);
            s.live.insert(path.to_path_buf(), inode.clone());
            s.log.push(DirOp::Link(path.to_path_buf(), inode));
        }
        if s.locks.contains_key(path) {
            return Ok(None);
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        s.locks.insert(path.to_path_buf(), token);
        Ok(Some(Box::new(LockGuard {
            state: self.state.clone(),
            path: path.to_path_buf(),
            token,
        })))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        self.check_up()?;
        let mut s = lock(&self.state);
        let inode = match mode {
            OpenMode::Read | OpenMode::ReadWrite => {
                s.live.get(path).cloned().ok_or_else(|| not_found(path))?
            }
            OpenMode::CreateNew => {
                if s.live.contains_key(path) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists", path.display()),
                    ));
                }
                if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
                    return Err(not_found(path));
                }
                let inode = Inode::new(self.file_capacity, &[]);
                s.live.insert(path.to_path_buf(), inode.clone());
                s.log.push(DirOp::Link(path.to_path_buf(), inode.clone()));
                inode
            }
        };
        Ok(Arc::new(SimFile {
            inode,
            writable: mode != OpenMode::Read,
            down: self.down.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_up()?;
        let mut s = lock(&self.state);
        let inode = s.live.remove(from).ok_or_else(|| not_found(from))?;
        s.live.insert(to.to_path_buf(), inode);
        s.log
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_up()?;
        let mut s = lock(&self.state);
        s.live.remove(path).ok_or_else(|| not_found(path))?;
        s.log.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check_up()?;
        let mut s = lock(&self.state);
        if !s.dirs.contains(path) {
            return Err(not_found(path));
        }
        let log = std::mem::take(&mut s.log);
        let mut durable = std::mem::take(&mut s.durable);
        for op in log {
            // A rename across directories is not something the engine does; it is made durable by
            // a sync of the source's directory.
            if op.dir() == Some(path) {
                op.apply(&mut durable);
            } else {
                s.log.push(op);
            }
        }
        s.durable = durable;
        Ok(())
    }
}

/// An open file of a [`SimStorage`].
#[derive(Debug)]
struct SimFile {
    inode: Arc<Inode>,
    writable: bool,
    down: Arc<AtomicBool>,
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        check_up(&self.down)?;
        Ok(lock(&self.inode.meta).len as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_up(&self.down)?;
        let m = lock(&self.inode.meta);
        let start = usize::try_from(offset).map_err(|_| efbig())?;
        if start.checked_add(buf.len()).is_none_or(|end| end > m.len) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        // SAFETY: `start..start + buf.len()` is inside the initialised length (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.inode.buf.ptr.add(start),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_up(&self.down)?;
        if !self.writable {
            return Err(read_only());
        }
        let mut m = lock(&self.inode.meta);
        let start = usize::try_from(offset).map_err(|_| efbig())?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.inode.buf.cap)
            .ok_or_else(efbig)?;
        if end > m.len {
            self.inode.resize(&mut m, end);
        }
        // SAFETY: `start..end` is inside the buffer and initialised (resized above).
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.inode.buf.ptr.add(start), buf.len())
        };
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        check_up(&self.down)?;
        if !self.writable {
            return Err(read_only());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.inode.buf.cap)
            .ok_or_else(efbig)?;
        let mut m = lock(&self.inode.meta);
        self.inode.resize(&mut m, len);
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        check_up(&self.down)?;
        if !self.writable {
            return Err(read_only());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.inode.buf.cap)
            .ok_or_else(efbig)?;
        let mut m = lock(&self.inode.meta);
        if len > m.len {
            self.inode.resize(&mut m, len);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        check_up(&self.down)?;
        let live = self.inode.live();
        *lock(&self.inode.durable) = live;
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn map(&self, len: usize, writable: bool) -> io::Result<Arc<dyn Mapping>> {
        check_up(&self.down)?;
        if writable && !self.writable {
            return Err(read_only());
        }
        // A mapping may run past the end of the file, as on Linux: the engine writes there only
        // after extending the file. It may not run past the buffer.
        if len > self.inode.buf.cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping past the file capacity",
            ));
        }
        Ok(Arc::new(SimMapping {
            inode: self.inode.clone(),
            len,
        }))
    }
}

/// A mapping of a [`SimStorage`] file: the live buffer itself.
#[derive(Debug)]
struct SimMapping {
    inode: Arc<Inode>,
    len: usize,
}

impl Mapping for SimMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.inode.buf.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/sim/db")
    }

    #[test]
    fn unsynced_bytes_and_entries_follow_the_crash_mode() {
        let fs = SimStorage::new(7);
        fs.create_dir_all(&dir()).unwrap();
        let a = dir().join("a");
        let f = fs.open(&a, OpenMode::CreateNew).unwrap();
        f.write_all_at(b"synced", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        f.write_all_at(b"LATER!", 0).unwrap();
        let b = dir().join("b");
        fs.open(&b, OpenMode::CreateNew)
            .unwrap()
            .write_all_at(b"new", 0)
            .unwrap();
        drop(f);

        fs.crash_and_restart(CrashMode::KeepNone);
        assert_eq!(fs.read_file(&a).unwrap(), b"synced");
        assert!(
            fs.read_file(&b).is_none(),
            "a file never dir-synced vanishes"
        );

        let f = fs.open(&a, OpenMode::ReadWrite).unwrap();
        f.write_all_at(b"again", 6).unwrap();
        fs.rename(&a, &b).unwrap();
        fs.crash_and_restart(CrashMode::KeepAll);
        assert_eq!(fs.read_file(&b).unwrap(), b"syncedagain");
        assert!(fs.read_file(&a).is_none());
    }

    #[test]
    fn mappings_alias_the_live_image_and_a_sync_makes_it_durable() {
        let fs = SimStorage::new(1);
        fs.create_dir_all(&dir()).unwrap();
        let p = dir().join("seg");
        let f = fs.open(&p, OpenMode::CreateNew).unwrap();
        f.allocate(8192).unwrap();
        let m = f.map(8192, true).unwrap();
        // SAFETY: inside the 8192-byte writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), m.as_ptr().add(5000), 5) };
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 5000).unwrap();
        assert_eq!(&buf, b"hello");
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(b"XXXXX".as_ptr(), m.as_ptr().add(100), 5) };
        f.set_len(6000).unwrap();
        assert_eq!(m.len(), 8192);
        drop((f, m));
        fs.crash_and_restart(CrashMode::KeepNone);
        let data = fs.read_file(&p).unwrap();
        assert_eq!(data.len(), 8192);
        assert_eq!(&data[5000..5005], b"hello");
        assert_eq!(&data[100..105], &[0; 5]);
    }

    #[test]
    fn torn_crashes_are_deterministic_for_a_seed() {
        let run = |seed| {
            let fs = SimStorage::new(seed);
            fs.create_dir_all(&dir()).unwrap();
            let p = dir().join("f");
            let f = fs.open(&p, OpenMode::CreateNew).unwrap();
            f.write_all_at(&[1u8; 20_000], 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(&dir()).unwrap();
            f.write_all_at(&[2u8; 30_000], 0).unwrap();
            drop(f);
            fs.crash_and_restart(CrashMode::TornBytes);
            fs.read_file(&p).unwrap()
        };
        assert_eq!(run(3), run(3));
        let outcomes: std::collections::BTreeSet<Vec<u8>> = (0..20).map(run).collect();
        assert!(
            outcomes.len() > 2,
            "torn crashes should differ between seeds"
        );
        for o in &outcomes {
            assert!(o.len() == 20_000 || o.len() == 30_000);
            assert!(o.iter().all(|&b| b == 1 || b == 2 || b == 0));
        }
    }

    #[test]
    fn locks_exclude_and_a_crash_releases_them() {
        let fs = SimStorage::new(0);
        fs.create_dir_all(&dir()).unwrap();
        let l = dir().join("LOCK");
        let g = fs.try_lock(&l).unwrap().unwrap();
        assert!(fs.try_lock(&l).unwrap().is_none());
        fs.crash_and_restart(CrashMode::KeepAll);
        let g2 = fs.try_lock(&l).unwrap().unwrap();
        drop(g); // a stale guard does not release the new holder's lock
        assert!(fs.try_lock(&l).unwrap().is_none());
        drop(g2);
        assert!(fs.try_lock(&l).unwrap().is_some());
    }
}
