//! The machine's physical limits: how many fdatasyncs of 4 KiB writes a second (into a file that
//! grows, into fallocated space, into space already written) and sequential write bandwidth
//! with one fdatasync at the end.

use crate::util::{R, quantile};
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
