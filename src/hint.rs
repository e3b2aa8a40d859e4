//! Hint files: for a sealed segment, every record's key, sequence, location and expiry, without
//! the values, so that open can rebuild the index without reading the data (Bitcask's idea).
//!
//! Layout (FORMAT.md, "Hint files"): a 40-byte header, then one entry per operation in file
//! order, each the bincode 2 encoding of [`HintEntry`] with the fixed-width little-endian
//! configuration, then a 12-byte trailer (entry count, CRC-32 of everything before the CRC). A hint
//! is used only if its checksum, segment id and segment length all match; otherwise open scans the
//! segment.

use crate::error::{Error, Result};
use crate::format::{self, Op};
use crate::storage::{OpenMode, Storage};
use std::path::{Path, PathBuf};

/// First eight bytes of a hint file.
pub const HINT_MAGIC: [u8; 8] = *b"TTLSHINT";
/// Hint format version.
pub const HINT_VERSION: u16 = 1;
/// Header length.
pub const HINT_HEADER_LEN: usize = 40;
/// Trailer length: count (8) and CRC (4).
pub const HINT_TRAILER_LEN: usize = 12;
/// File name suffix.
pub const HINT_SUFFIX: &str = ".hint";

/// The hint file name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:020}{HINT_SUFFIX}")
}

/// The segment id in a hint file name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(HINT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ 1 << 20 }>()
}

/// One operation of the segment, as the hint file stores it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::BorrowDecode)]
pub struct HintEntry<'a> {
    /// The op's kind byte ([`format::KIND_PUT`], possibly with [`format::FLAG_EXPIRES`],
    /// [`format::KIND_DELETE`] or [`format::KIND_EXPIRE`]).
    pub kind: u8,
    /// Namespace.
    pub ns: u8,
    /// Sequence.
    pub seq: u64,
    /// Offset of the record holding the op.
    pub rec_off: u32,
    /// Offset of the value in the segment (puts), else 0.
    pub val_off: u32,
    /// Value length (puts), else 0.
    pub val_len: u32,
    /// Expiry of a put (0: none) or target sequence of an expire.
    pub extra: u64,
    /// Key.
    pub key: &'a [u8],
}

impl<'a> HintEntry<'a> {
    /// The hint entry of `op`, found in the record at `rec_off`.
    pub fn of(op: &Op<'a>, rec_off: usize) -> HintEntry<'a> {
        let is_put = op.kind == format::KIND_PUT;
        HintEntry {
            kind: op.kind
                | if op.expires_at.is_some() {
                    format::FLAG_EXPIRES
                } else {
                    0
                },
            ns: op.ns,
            seq: op.seq,
            rec_off: rec_off as u32,
            val_off: if is_put {
                (rec_off + op.value_offset) as u32
            } else {
                0
            },
            val_len: op.value.len() as u32,
            extra: if is_put {
                op.expires_at.unwrap_or(0)
            } else {
                op.target_seq
            },
            key: op.key,
        }
    }

    /// The op this entry describes, its value borrowed from `segment` (the whole segment file).
    pub fn to_op(&self, segment: &'a [u8]) -> Option<Op<'a>> {
        let kind = self.kind & !format::FLAG_EXPIRES;
        let (value, value_offset) = if kind == format::KIND_PUT {
            let start = self.val_off as usize;
            let v = segment.get(start..start.checked_add(self.val_len as usize)?)?;
            (v, start.checked_sub(self.rec_off as usize)?)
        } else {
            (&[][..], 0)
        };
        if !(format::KIND_PUT..=format::KIND_EXPIRE).contains(&kind) || self.key.is_empty() {
            return None;
        }
        Some(Op {
            kind,
            seq: self.seq,
            ns: self.ns,
            key: self.key,
            value,
            value_offset,
            expires_at: (kind == format::KIND_PUT && self.kind & format::FLAG_EXPIRES != 0)
                .then_some(self.extra),
            target_seq: if kind == format::KIND_EXPIRE {
                self.extra
            } else {
                0
            },
        })
    }
}

/// Encodes a hint file for segment `segment_id` whose data ends at `segment_len`.
pub fn encode(segment_id: u64, segment_len: u64, entries: &[HintEntry<'_>]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(HINT_HEADER_LEN + entries.len() * 48 + HINT_TRAILER_LEN);
    out.extend_from_slice(&HINT_MAGIC);
    out.extend_from_slice(&HINT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&segment_id.to_le_bytes());
    out.extend_from_slice(&segment_len.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    for e in entries {
        bincode::encode_into_std_write(e, &mut out, config()).map_err(|err| {
            Error::InvalidArgument {
                what: format!("hint entry does not encode: {err}"),
            }
        })?;
    }
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Fixed bytes of an encoded entry (all but the key's bytes).
const ENTRY_FIXED_LEN: usize = 38;

/// The entry count and total key bytes a hint file claims, from its size and trailer alone
/// (nothing is checked beyond plausibility: for sizing buffers before [`entries`] checks it).
pub fn sizes(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.len() < HINT_HEADER_LEN + HINT_TRAILER_LEN || bytes[0..8] != HINT_MAGIC {
        return None;
    }
    let at = bytes.len() - HINT_TRAILER_LEN;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    let count = usize::try_from(u64::from_le_bytes(b)).ok()?;
    let body = at - HINT_HEADER_LEN;
    let key_bytes = body.checked_sub(count.checked_mul(ENTRY_FIXED_LEN)?)?;
    Some((count, key_bytes))
}

/// Why a hint file was not usable.
pub type HintError = &'static str;

/// Checks a hint file's header and checksum and returns an iterator over its entries, which
/// decodes them one at a time (no allocation per file). Every entry decoding and the byte count
/// are checked as the iteration goes: an `Err` item ends it.
pub fn entries(
    bytes: &[u8],
    segment_id: u64,
    segment_len: u64,
) -> std::result::Result<Entries<'_>, HintError> {
    if bytes.len() < HINT_HEADER_LEN + HINT_TRAILER_LEN || bytes[0..8] != HINT_MAGIC {
        return Err("not a hint file");
    }
    let body_end = bytes.len() - 4;
    let crc = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    if crc32fast::hash(&bytes[..body_end]) != crc {
        return Err("checksum mismatch");
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if u16::from_le_bytes([bytes[8], bytes[9]]) != HINT_VERSION {
        return Err("unknown hint version");
    }
    if u64_at(16) != segment_id {
        return Err("names another segment");
    }
    if u64_at(24) != segment_len {
        return Err("segment length differs");
    }
    let count = u64_at(body_end - 8);
    let entries_end = body_end - 8;
    if count > ((entries_end - HINT_HEADER_LEN) / ENTRY_FIXED_LEN) as u64 {
        return Err("entry count out of range");
    }
    Ok(Entries {
        bytes: &bytes[..entries_end],
        at: HINT_HEADER_LEN,
        left: count,
    })
}

/// The entries of a hint file, decoded one at a time. See [`entries`].
#[derive(Debug)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
    left: u64,
}

impl Entries<'_> {
    /// Entries not yet decoded.
    pub fn remaining(&self) -> u64 {
        self.left
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = std::result::Result<HintEntry<'a>, HintError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return (self.at != self.bytes.len())
                .then_some(Err("bytes after the last entry"))
                .inspect(|_| {
                    self.at = self.bytes.len();
                });
        }
        self.left -= 1;
        match decode_entry(&self.bytes[self.at..]) {
            Some((e, n)) => {
                self.at += n;
                Some(Ok(e))
            }
            None => {
                self.left = 0;
                self.at = self.bytes.len();
                Some(Err("entry does not decode"))
            }
        }
    }
}

/// Decodes the entry at the start of `b`: the bytes bincode's fixed-width little-endian
/// encoding of [`HintEntry`] gives (FORMAT.md, "Hint files"), read directly, which is several
/// times faster than the generic decoder. None if `b` is too short or the key length is out of
/// range (above [`crate::MAX_KEY_LEN`], which no record can hold). Returns the entry and its
/// length.
fn decode_entry(b: &[u8]) -> Option<(HintEntry<'_>, usize)> {
    let fixed: &[u8; ENTRY_FIXED_LEN] = b.get(..ENTRY_FIXED_LEN)?.try_into().ok()?;
    let u32_at =
        |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let u64_at = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&fixed[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let key_len = usize::try_from(u64_at(30))
        .ok()
        .filter(|&l| l <= crate::MAX_KEY_LEN)?;
    let end = ENTRY_FIXED_LEN + key_len;
    let key = b.get(ENTRY_FIXED_LEN..end)?;
    Some((
        HintEntry {
            kind: fixed[0],
            ns: fixed[1],
            seq: u64_at(2),
            rec_off: u32_at(10),
            val_off: u32_at(14),
            val_len: u32_at(18),
            extra: u64_at(22),
            key,
        },
        end,
    ))
}

/// Decodes a whole hint file, checking it describes segment `segment_id` of length
/// `segment_len`.
pub fn decode(
    bytes: &[u8],
    segment_id: u64,
    segment_len: u64,
) -> std::result::Result<Vec<HintEntry<'_>>, HintError> {
    let it = entries(bytes, segment_id, segment_len)?;
    let mut out = Vec::with_capacity(it.remaining() as usize);
    for e in it {
        out.push(e?);
    }
    Ok(out)
}

/// Writes the hint file of segment `id` atomically (temporary name, fsync, rename). The caller
/// syncs the directory when it needs the name durable; a lost hint only costs a scan at open.
pub fn write(storage: &dyn Storage, dir: &Path, id: u64, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(file_name(id));
    let tmp = dir.join(format!("{}.tmp", file_name(id)));
    let _ = storage.remove_file(&tmp);
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| Error::io("write", &tmp, e))?;
    crate::failpoint!("hint.before_sync");
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", &tmp, e))?;
    drop(file);
    crate::failpoint!("hint.before_rename");
    storage
        .rename(&tmp, &path)
        .map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(path)
}

/// Maps a hint file read-only, if present.
pub fn map(
    storage: &dyn Storage,
    dir: &Path,
    id: u64,
) -> Result<Option<std::sync::Arc<dyn crate::storage::Mapping>>> {
    let path = dir.join(file_name(id));
    let file = match storage.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    let map = file
        .map(usize::try_from(len).unwrap_or(0), false)
        .map_err(|e| Error::io("mmap", &path, e))?;
    Ok(Some(map))
}

/// Reads a whole hint file, if present.
pub fn read(storage: &dyn Storage, dir: &Path, id: u64) -> Result<Option<Vec<u8>>> {
    let path = dir.join(file_name(id));
    let file = match storage.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_decoding_matches_bincode() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys: Vec<Vec<u8>> = (0..200)
            .map(|i| (0..(i % 40 + 1)).map(|j| (j * 7 + i) as u8).collect())
            .collect();
        for key in &keys {
            let e = HintEntry {
                kind: next() as u8,
                ns: next() as u8,
                seq: next(),
                rec_off: next() as u32,
                val_off: next() as u32,
                val_len: next() as u32,
                extra: next(),
                key,
            };
            let mut bytes = Vec::new();
            bincode::encode_into_std_write(&e, &mut bytes, config()).unwrap();
            bytes.extend_from_slice(b"tail");
            let (got, n) = decode_entry(&bytes).unwrap();
            let (want, m): (HintEntry<'_>, usize) =
                bincode::borrow_decode_from_slice(&bytes, config()).unwrap();
            assert_eq!((got, n), (want, m));
            assert_eq!(n, ENTRY_FIXED_LEN + key.len());
            assert!(decode_entry(&bytes[..n - 1]).is_none());
        }
        // A key longer than any record can hold does not decode.
        let long = vec![1u8; crate::MAX_KEY_LEN + 1];
        let e = HintEntry {
            kind: 1,
            ns: 0,
            seq: 1,
            rec_off: 40,
            val_off: 40,
            val_len: 0,
            extra: 0,
            key: &long,
        };
        let mut bytes = Vec::new();
        bincode::encode_into_std_write(&e, &mut bytes, config()).unwrap();
        assert!(decode_entry(&bytes).is_none());
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn roundtrip_and_damage() {
        let e = HintEntry {
            kind: format::KIND_PUT | format::FLAG_EXPIRES,
            ns: 2,
            seq: 9,
            rec_off: 40,
            val_off: 60,
            val_len: 3,
            extra: 77,
            key: b"abc",
        };
        let d = HintEntry {
            kind: format::KIND_EXPIRE,
            ns: 0,
            seq: 10,
            rec_off: 70,
            val_off: 0,
            val_len: 0,
            extra: 9,
            key: b"z",
        };
        let bytes = encode(5, 100, &[e.clone(), d.clone()]).unwrap();
        assert_eq!(decode(&bytes, 5, 100).unwrap(), vec![e, d]);
        assert!(decode(&bytes, 6, 100).is_err());
        assert!(decode(&bytes, 5, 101).is_err());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, 5, 100).is_err(), "flip at {i} accepted");
            assert!(decode(&bytes[..i], 5, 100).is_err());
        }
    }
}
