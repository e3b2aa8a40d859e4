//! The machine's physical limits: how many fdatasyncs of 4 KiB writes a second (into a file that
//! grows, into fallocated space, into space already written), sequential write bandwidth with
//! one fdatasync at the end, and how long a random memory read takes when each one depends on
//! the one before (the floor under a point read: see [`read_latency`]).

use crate::util::{R, Rng, quantile, scale};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Figures of one sync test: syncs per second and p50/p99 latency in µs.
#[derive(Debug, Clone, Copy)]
pub struct SyncFigures {
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Where the 4 KiB writes go.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Appends past the end of the file (each sync also changes its size).
    Grow,
    /// Into space reserved with fallocate but never written (unwritten extents).
    Fallocated,
    /// Into space written and synced before.
    Prewritten,
}

const REGION: u64 = 64 << 20;

/// 4 KiB write + fdatasync, repeated for `dur`.
pub fn sync_rate(base: &Path, target: Target, dur: Duration) -> R<SyncFigures> {
    let dir = tempfile::tempdir_in(base)?;
    let path = dir.path().join("limits");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    match target {
        Target::Grow => {}
        Target::Fallocated => {
            // SAFETY: a valid open descriptor and in-range lengths.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, REGION as libc::off_t) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            f.sync_all()?;
        }
        Target::Prewritten => {
            let chunk = vec![0x5au8; 1 << 20];
            for i in 0..REGION / (1 << 20) {
                f.write_all_at(&chunk, i << 20)?;
            }
            f.sync_all()?;
        }
    }
    let block = vec![0xa5u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut off = 0u64;
    while start.elapsed() < dur && off + 4096 <= REGION {
        let t = Instant::now();
        f.write_all_at(&block, off)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        off += 4096;
    }
    let per_sec = lat.len() as f64 / start.elapsed().as_secs_f64();
    let p50_us = quantile(&mut lat, 0.5);
    let p99_us = quantile(&mut lat, 0.99);
    Ok(SyncFigures {
        per_sec,
        p50_us,
        p99_us,
    })
}

/// Sequential write of `bytes` in 1 MiB writes then one fdatasync; bytes per second. Runs a
/// warm-up pass of a quarter of the size first.
pub fn seq_write(base: &Path, bytes: u64) -> R<f64> {
    let dir = tempfile::tempdir_in(base)?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let pass = |name: &str, total: u64| -> R<f64> {
        let f = File::create(dir.path().join(name))?;
        let t = Instant::now();
        let mut off = 0;
        while off < total {
            f.write_all_at(&chunk, off)?;
            off += chunk.len() as u64;
        }
        f.sync_data()?;
        Ok(total as f64 / t.elapsed().as_secs_f64())
    };
    pass("warmup", bytes / 4)?;
    std::fs::remove_file(dir.path().join("warmup"))?;
    pass("seq", bytes)
}

/// Latency of random reads that each wait for the one before, in ns per read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLatency {
    /// One 8-byte read at a random place in an anonymous buffer the size of the index's hash
    /// table, on huge pages where the kernel gives them.
    pub table_ns: f64,
    /// One byte at a random place in a mapped file the size of the data, in the page cache and
    /// mapped in beforehand (no page faults).
    pub data_ns: f64,
    /// One of each, the second at a place that depends on what the first read: what a point
    /// read of a hash index that points into mapped log segments waits for, with no
    /// computing at all.
    pub pair_ns: f64,
}

/// The limit row of [`ReadLatency::pair_ns`]; the report reads it back for the gets target.
pub const PAIR_NS: &str =
    "dependent random reads, table then file (a point read's two waits): ns per pair";

/// Reads timed in each of [`read_latency`]'s chains.
const CHAIN_READS: u64 = 2_000_000;

/// `r` mapped onto `0..n` ([`scale`]) as an index.
fn below(r: u64, n: usize) -> usize {
    scale(r, n as u64) as usize
}

/// Measures [`ReadLatency`] for a table of `table_bytes` and data of `data_bytes` (a file
/// written under `base`). Each read's address depends on the value the one before returned,
/// so that the processor cannot overlap them: a get of a key, whose record's address comes
/// from the key's bucket, cannot overlap its two reads either.
pub fn read_latency(base: &Path, table_bytes: usize, data_bytes: usize) -> R<ReadLatency> {
    let dir = tempfile::tempdir_in(base)?;
    let path = dir.path().join("data");
    {
        let f = File::create(&path)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut rng = Rng::new(11);
        let mut off = 0;
        while off < data_bytes {
            chunk.iter_mut().for_each(|b| *b = rng.next() as u8);
            f.write_all_at(&chunk, off as u64)?;
            off += chunk.len();
        }
    }
    let data = Mapped::file(&path, data_bytes)?;
    let words = (table_bytes / 8).max(8);
    let table = Mapped::anonymous(words * 8)?;
    // SAFETY: the mapping is `words * 8` bytes, page-aligned, readable and writable, and only
    // this function uses it while `table` lives.
    let table_words = unsafe { std::slice::from_raw_parts_mut(table.ptr.cast::<u64>(), words) };
    let mut rng = Rng::new(13);
    table_words.iter_mut().for_each(|w| *w = rng.next());
    let data_bytes = data.len;
    // SAFETY: a read-only mapping of `data.len` bytes that lives as long as `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.ptr.cast_const(), data_bytes) };
    // Every page mapped in before timing.
    let touched: u64 = bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    std::hint::black_box(touched);

    /// ns per step of `step(random, what the step before read)`, run [`CHAIN_READS`] times.
    fn chain(step: impl Fn(u64, u64) -> u64) -> f64 {
        let mut rng = Rng::new(17);
        let mut dep = 0u64;
        let t = Instant::now();
        for _ in 0..CHAIN_READS {
            dep = step(rng.next(), dep);
        }
        std::hint::black_box(dep);
        t.elapsed().as_secs_f64() * 1e9 / CHAIN_READS as f64
    }
    let table_ns = chain(|r, dep| table_words[below(r ^ (dep & 1), words)]);
    let data_ns = chain(|r, dep| u64::from(bytes[below(r ^ (dep & 1), data_bytes)]));
    let pair_ns = chain(|r, dep| {
        let t = table_words[below(r ^ (dep & 1), words)];
        u64::from(bytes[below(r.rotate_left(29) ^ t, data_bytes)])
    });
    Ok(ReadLatency {
        table_ns,
        data_ns,
        pair_ns,
    })
}

/// A memory mapping, unmapped on drop.
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

impl Mapped {
    /// The first `len` bytes of the file at `path` (at most its length), read-only.
    fn file(path: &Path, len: usize) -> R<Mapped> {
        let f = File::open(path)?;
        let len = len.min(f.metadata()?.len() as usize);
        // SAFETY: a fresh shared read-only mapping of an open file; the pointer is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    /// `len` zeroed bytes, advised for huge pages before the first touch.
    fn anonymous(len: usize) -> R<Mapped> {
        // SAFETY: a fresh private anonymous mapping; the pointer is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: advice on the mapping just made; failure changes nothing.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, not used after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
