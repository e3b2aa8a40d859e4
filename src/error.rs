//! The one error type of the crate.
//!
//! Every fallible call returns [`Error`]. Its variants are structured so that a program can act on
//! them (retry after [`Error::Locked`], alert on [`Error::Corruption`], stop writing after
//! [`Error::Poisoned`]) and its messages say what to do about the problem.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed. `op` names the call, `path` the file it was about.
    Io {
        /// The operation that failed, such as `"fdatasync"` or `"open"`.
        op: &'static str,
        /// The file or directory the operation was about.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another handle, in this or another process, has the data directory open.
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The directory holds files but no ttlstore data; ttlstore refuses to write into it.
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// A file found there that is not ttlstore's.
        found: String,
    },
    /// Bytes on disk do not form what they should.
    Corruption {
        /// The id of the segment (or the segment a hint file describes).
        segment: u64,
        /// The byte offset in that file where the problem starts.
        offset: u64,
        /// What exactly is wrong.
        kind: CorruptionKind,
    },
    /// A file was written by a newer version of ttlstore than this one.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The format version found in it.
        found: u16,
        /// The newest format version this build reads.
        supported: u16,
    },
    /// A key was empty or longer than [`crate::MAX_KEY_LEN`].
    InvalidKey {
        /// The length of the rejected key.
        len: usize,
    },
    /// A value was longer than [`crate::MAX_VALUE_LEN`].
    ValueTooLarge {
        /// The length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch encodes to more than [`crate::MAX_BATCH_BYTES`], or is otherwise unusable.
    BatchTooLarge {
        /// The encoded size of the batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An argument was outside its documented range.
    InvalidArgument {
        /// What was wrong with it.
        what: String,
    },
    /// An earlier write or sync failed, or a background thread panicked, so the store can no
    /// longer promise that what it acknowledges is on disk. Reads still work.
    Poisoned {
        /// Why the store was poisoned.
        reason: String,
    },
    /// The store was closed.
    Closed,
    /// A higher layer (thread, queue, cache) refused an operation; the message says why.
    Rejected {
        /// Why the operation was refused.
        reason: String,
    },
}

/// The ways bytes on disk can be wrong. Carried by [`Error::Corruption`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The file does not start with the ttlstore magic bytes.
    BadMagic,
    /// The header's checksum does not match.
    BadHeader,
    /// The id in the header is not the id in the file's name.
    WrongSegmentId {
        /// The id in the header.
        found: u64,
    },
    /// A record's checksum does not match its bytes (or it belongs to another segment).
    BadChecksum,
    /// A record's length runs past the end of the file.
    Truncated,
    /// A record's fields do not decode.
    Malformed(&'static str),
    /// Sequence numbers must strictly increase through the log; this one does not.
    SequenceOutOfOrder {
        /// The last good sequence number.
        previous: u64,
        /// The one found.
        found: u64,
    },
    /// A hint file does not agree with its segment.
    BadHint(&'static str),
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::BadMagic => {
                f.write_str("the file does not start with ttlstore's magic")
            }
            CorruptionKind::BadHeader => f.write_str("the header checksum does not match"),
            CorruptionKind::WrongSegmentId { found } => {
                write!(f, "the header names segment {found}, not the file's own id")
            }
            CorruptionKind::BadChecksum => f.write_str("record checksum mismatch"),
            CorruptionKind::Truncated => f.write_str("a record runs past the end of the file"),
            CorruptionKind::Malformed(what) => write!(f, "malformed record: {what}"),
            CorruptionKind::SequenceOutOfOrder { previous, found } => {
                write!(
                    f,
                    "sequence {found} follows {previous}; sequences must increase"
                )
            }
            CorruptionKind::BadHint(what) => {
                write!(f, "hint file disagrees with its segment: {what}")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => write!(
                f,
                "{op} failed on {}: {source} (check free space, permissions and the device; \
                 nothing that was not acknowledged before this error was made durable)",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "{} is already open by another Store handle, in this process or another; \
                 close that one first (or clone the existing Store instead of opening twice)",
                path.display()
            ),
            Error::NotAStore { path, found } => write!(
                f,
                "{} is not empty and holds no ttlstore data (found {found:?}); \
                 open an empty or new directory, or the directory of an existing store",
                path.display()
            ),
            Error::Corruption {
                segment,
                offset,
                kind,
            } => write!(
                f,
                "corruption in segment {segment} at byte {offset}: {kind}; \
                 run `ttlstore-inspect verify` on the directory, restore it from a backup, \
                 or open it with RecoveryMode::Salvage to keep every record that checks out"
            ),
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has format version {found} but this build reads up to {supported}; \
                 upgrade ttlstore to open it",
                path.display()
            ),
            Error::InvalidKey { len } => write!(
                f,
                "keys must be 1 to {} bytes long, this one is {len}",
                crate::MAX_KEY_LEN
            ),
            Error::ValueTooLarge { len, max } => write!(
                f,
                "values may be at most {max} bytes, this one is {len}; split it or store a reference"
            ),
            Error::BatchTooLarge { len, max } => write!(
                f,
                "the batch encodes to {len} bytes, more than the limit of {max}; split it"
            ),
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::Poisoned { reason } => write!(
                f,
                "the store refuses writes since an earlier failure ({reason}); reads still work. \
                 Drop every handle and reopen the store to recover from what is on disk"
            ),
            Error::Closed => f.write_str("the store has been closed"),
            Error::Rejected { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(segment: u64, offset: u64, kind: CorruptionKind) -> Self {
        Error::Corruption {
            segment,
            offset,
            kind,
        }
    }

    /// True for [`Error::Corruption`] and [`Error::UnsupportedVersion`]: the bytes on disk, not
    /// the machine, are the problem.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// True when the failure came from the operating system reporting a full disk (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}
