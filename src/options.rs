//! [`Options`] for [`crate::Store::open_with`]: durability, segment size, recovery, TTL policy,
//! clock and storage.

use crate::clock::{Clock, SystemClock};
use crate::storage::{OsStorage, Storage};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// When acknowledged writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write returns only after its bytes are on disk (fdatasync). Concurrent writers share
    /// one fdatasync (group commit). Survives power loss.
    Always,
    /// A background thread syncs at this interval, like Redis `appendfsync everysec`. Writes
    /// survive a crash of the process at once (they are in the OS page cache when the call
    /// returns) and a power loss once the next sync has run.
    Interval(Duration),
    /// ttlstore never syncs by itself; [`crate::Store::sync`] does. Writes survive a crash of the
    /// process, not a power loss.
    Never,
}

/// What [`crate::Store::open`] does with damaged bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn or corrupt tail of the last segment (what a crash in the middle of an append
    /// leaves) is cut back to the last valid record and the cut is synced; damage anywhere else is
    /// [`crate::Error::Corruption`]. The default.
    #[default]
    TolerateTailCorruption,
    /// Any damaged byte, the last segment's tail included, is [`crate::Error::Corruption`].
    AbsoluteConsistency,
    /// Keep every record that checks out: skip damaged stretches of any segment, resuming at the
    /// next record whose checksum (bound to its segment) is valid. For rescuing data; what was
    /// skipped is counted in [`crate::RecoveryReport`].
    Salvage,
}

/// The TTL that [`crate::Store::put`] applies when no TTL is given.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TtlPolicy {
    /// TTL for writes that give none; `None` keeps them forever.
    pub default_ttl: Option<Duration>,
    /// A fraction in `0.0..=1.0`: each default TTL is shortened by a random part of up to this
    /// fraction, so keys written together do not all expire in the same instant. Never lengthened.
    pub jitter: f64,
}

/// Settings for [`crate::Store::open_with`]. Built with chained setters from `Options::default()`.
#[derive(Clone)]
pub struct Options {
    pub(crate) sync: SyncPolicy,
    pub(crate) segment_size: u64,
    pub(crate) recovery: RecoveryMode,
    pub(crate) ttl: TtlPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) verify_reads: bool,
    pub(crate) compaction_threshold: f64,
    pub(crate) background: bool,
    pub(crate) seal_on_close: bool,
    pub(crate) expiry_horizon: Duration,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("sync", &self.sync)
            .field("segment_size", &self.segment_size)
            .field("recovery", &self.recovery)
            .field("ttl", &self.ttl)
            .field("clock", &self.clock)
            .field("verify_reads", &self.verify_reads)
            .field("compaction_threshold", &self.compaction_threshold)
            .field("background", &self.background)
            .field("seal_on_close", &self.seal_on_close)
            .field("expiry_horizon", &self.expiry_horizon)
            .finish_non_exhaustive()
    }
}

/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest segment size accepted: 4 KiB.
pub const MIN_SEGMENT_SIZE: u64 = 4 << 10;
/// The largest segment size accepted: 1 GiB (offsets inside a segment are 32-bit).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            segment_size: DEFAULT_SEGMENT_SIZE,
            recovery: RecoveryMode::default(),
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            storage: Arc::new(OsStorage),
            verify_reads: true,
            compaction_threshold: 0.5,
            background: true,
            seal_on_close: true,
            expiry_horizon: Duration::from_secs(600),
        }
    }
}

impl Options {
    /// When writes reach the disk. Default: `Interval(1 s)`.
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Size at which the active segment is sealed and a new one started. Default 64 MiB;
    /// accepted range [`MIN_SEGMENT_SIZE`]..=[`MAX_SEGMENT_SIZE`] (checked at open). A record
    /// larger than this gets a segment of its own.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// What to do with damaged bytes at open. Default: [`RecoveryMode::TolerateTailCorruption`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// TTL for [`crate::Store::put`]; `None` (the default) keeps such keys forever.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl.default_ttl = ttl;
        self
    }

    /// Jitter of the default TTL, as a fraction in `0.0..=1.0` (checked at open). Default 0.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl.jitter = fraction;
        self
    }

    /// The whole TTL policy at once.
    pub fn ttl_policy(mut self, policy: TtlPolicy) -> Self {
        self.ttl = policy;
        self
    }

    /// The clock every expiry is read from. Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Check each record's checksum when it is read (default: true). Costs a few percent of read
    /// throughput; catches bit rot at the read that would return it.
    pub fn verify_reads(mut self, verify: bool) -> Self {
        self.verify_reads = verify;
        self
    }

    /// Dead fraction (`0.0..=1.0`) at which a sealed segment is rewritten by compaction. Default
    /// 0.5. Segments with no live data at all are dropped whole whatever this is.
    pub fn compaction_threshold(mut self, fraction: f64) -> Self {
        self.compaction_threshold = fraction;
        self
    }

    /// A sealed segment whose every put expires within this horizon is not rewritten, however
    /// dead it is: it is left to expire and be dropped whole, which writes nothing. Default 10
    /// minutes; zero rewrites such segments like any other.
    pub fn expiry_horizon(mut self, horizon: Duration) -> Self {
        self.expiry_horizon = horizon;
        self
    }

    /// Seal the active segment when the last handle drops, if it holds at least 1/16 of the
    /// segment size, and write its hint (default: true), so that the next open reads hint files
    /// only instead of scanning the segment. Off: the segment stays active and the next open
    /// scans it (as after a crash).
    pub fn seal_on_close(mut self, on: bool) -> Self {
        self.seal_on_close = on;
        self
    }

    /// Run the background expirer and compactor (default: true). Without them expired keys still
    /// read as absent, and [`crate::Store::compact`] does the same work on demand.
    pub fn background_threads(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// The file system. Default: [`OsStorage`]. For tests that inject faults or simulate power
    /// loss; not part of the stable API.
    #[doc(hidden)]
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |what: String| Err(crate::Error::InvalidArgument { what });
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return bad(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            ));
        }
        if !(0.0..=1.0).contains(&self.compaction_threshold) {
            return bad(format!(
                "compaction_threshold {} is outside 0.0..=1.0",
                self.compaction_threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.ttl.jitter) {
            return bad(format!(
                "ttl_jitter {} is outside 0.0..=1.0",
                self.ttl.jitter
            ));
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return bad("SyncPolicy::Interval needs a non-zero interval".into());
        }
        if self.ttl.default_ttl == Some(Duration::ZERO) {
            return bad("a default TTL of zero would delete every write; use None".into());
        }
        Ok(())
    }
}
