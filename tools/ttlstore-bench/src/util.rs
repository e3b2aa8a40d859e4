//! Shared helpers: keys and values, a small RNG, figures from /proc, sizes on disk, summaries.

use std::path::Path;
use std::time::{Duration, Instant};

/// Errors of the harness: anything printable.
pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Key length used by every workload.
pub const KEY_LEN: usize = 16;
/// Value length used by every workload.
pub const VAL_LEN: usize = 100;

/// The 16-byte key of record `i`: `k` followed by 15 decimal digits, so that keys sort like
/// their numbers and a prefix of 11 bytes selects 100k consecutive keys below 1M.
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [b'0'; KEY_LEN];
    k[0] = b'k';
    let mut n = i;
    let mut at = KEY_LEN - 1;
    while n > 0 && at > 0 {
        k[at] = b'0' + (n % 10) as u8;
        n /= 10;
        at -= 1;
    }
    k
}

/// A pool of pseudo-random bytes values are cut from, so that values do not compress.
pub struct Values {
    pool: Vec<u8>,
}

impl Values {
    /// A pool of 64 KiB from a fixed seed.
    pub fn new() -> Values {
        let mut rng = Rng::new(0x5eed);
        let pool = (0..(64 << 10) + VAL_LEN)
            .map(|_| rng.next() as u8)
            .collect();
        Values { pool }
    }

    /// The 100-byte value of record `i`.
    pub fn get(&self, i: u64) -> &[u8] {
        let at = (i.wrapping_mul(2_654_435_761) % (64 << 10)) as usize;
        &self.pool[at..at + VAL_LEN]
    }
}

/// xorshift64*: fast and good enough to pick keys.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        scale(self.next(), n)
    }
}

/// `x`, a uniformly random `u64`, mapped onto `0..n` without a division.
pub fn scale(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Apparent size (sum of st_size) and allocated size (st_blocks * 512) of everything under `dir`.
pub fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            // A file may vanish between listing and stat (compaction, sweeps): skip it.
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                apparent += md.len();
                allocated += md.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// Resident and file-backed/shared resident bytes of this process, from /proc/self/statm.
pub fn statm() -> R<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/statm")?;
    let f: Vec<u64> = s
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Ok((
        f.get(1).copied().unwrap_or(0) * page,
        f.get(2).copied().unwrap_or(0) * page,
    ))
}

/// Bytes this process (all its threads) caused to be written to storage, from /proc/self/io.
pub fn process_write_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/io") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `f` and returns its result with the elapsed time.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

/// Median, minimum and maximum of some samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Summarises samples; `None` when there are none.
pub fn summarise(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: s[0],
        max: s[n - 1],
    })
}

/// The `q` quantile (0..=1) of samples, nearest rank.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let at = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[at.min(samples.len() - 1)]
}

/// Formats a figure with 3 significant digits and a k/M/G suffix.
pub fn human(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    let (v, suffix) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e4 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let av = v.abs();
    let digits = if av >= 100.0 {
        0
    } else if av >= 10.0 {
        1
    } else if av >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.digits$}{suffix}")
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse().ok().map(Duration::from_millis);
    }
    if let Some(v) = s.strip_suffix('s') {
        return v.parse::<f64>().ok().map(Duration::from_secs_f64);
    }
    if let Some(v) = s.strip_suffix('m') {
        return v
            .parse::<f64>()
            .ok()
            .map(|m| Duration::from_secs_f64(m * 60.0));
    }
    s.parse::<f64>().ok().map(Duration::from_secs_f64)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_numbers_and_prefixes_select_100k() {
        assert_eq!(&key(0), b"k000000000000000");
        assert_eq!(&key(123_456), b"k000000000123456");
        assert!(key(99_999) < key(100_000));
        assert!(key(300_000).starts_with(b"k0000000003"));
        assert!(!key(299_999).starts_with(b"k0000000003"));
    }

    #[test]
    fn summary_and_durations() {
        let s = summarise(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(human(1_234_567.0), "1.23M");
    }
}
