//! The log format: segment headers and records, byte for byte as `FORMAT.md` specifies them.
//!
//! Nothing else in the crate knows how bytes are laid out on disk. Encoding writes straight into
//! the destination slice (the active segment's mapping); decoding borrows from the source slice
//! and checks every length against the bytes that are really there before using it, so damaged
//! input can make decoding fail but never allocate without bound or read out of range.

use crate::error::CorruptionKind;

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TTLSTSEG";
/// The segment format version this build writes and the newest it reads (it reads version 1
/// too: see FORMAT.md, "Version log").
pub const FORMAT_VERSION: u16 = 2;
/// Length of the segment header.
pub const HEADER_LEN: usize = 40;
/// Bytes before a record's body: checksum (4) and body length (4).
pub const RECORD_PREFIX: usize = 8;
/// The largest record body accepted when reading (1 GiB + slack); bigger is corruption.
pub const MAX_BODY_LEN: usize = (1 << 30) + (1 << 20);

/// Segment header `kind`: an ordinary log segment.
pub const SEGMENT_KIND_LOG: u16 = 0;
/// Segment header `kind`: written by compaction; holds copies of older records, sealed from birth.
pub const SEGMENT_KIND_COMPACTED: u16 = 1;

/// Record or batch-entry kind: a put.
pub const KIND_PUT: u8 = 1;
/// Record or batch-entry kind: a delete tombstone.
pub const KIND_DELETE: u8 = 2;
/// Record or batch-entry kind: an expire tombstone.
pub const KIND_EXPIRE: u8 = 3;
/// Record kind: an atomic batch.
pub const KIND_BATCH: u8 = 4;
/// Flag on a put's kind byte: an 8-byte expiry follows the lengths (a varint delta in a compact
/// put).
pub const FLAG_EXPIRES: u8 = 0x80;
/// Record kind (version 2 segments only): a compact put. The sequence is a varint delta from the
/// header's base sequence and the expiry a varint delta from the header's base time.
pub const KIND_PUT_COMPACT: u8 = 5;
/// Flag on a compact put's kind byte, with [`FLAG_EXPIRES`]: the expiry lies before the header's
/// base time, and the delta is subtracted from it.
pub const FLAG_EXPIRES_BEFORE_BASE: u8 = 0x40;
/// Record kind (version 2 segments only): a batch of expire tombstones, as the expirer writes
/// them. The sequence is a varint delta from the header's base sequence; each entry's target
/// sequence is a zigzag varint delta from the previous entry's (the first from the record's).
pub const KIND_EXPIRE_BATCH: u8 = 6;

/// What records of a segment are encoded relative to, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBase {
    /// The segment's format version: compact kinds are written only from version 2 on.
    pub version: u16,
    /// The header's base sequence.
    pub base_seq: u64,
    /// The header's base time, unix ms (a whole number of seconds; 0 in version 1).
    pub base_ms: u64,
}

impl RecordBase {
    /// The base of a version 1 segment: every record in the version 1 form.
    pub const V1: RecordBase = RecordBase {
        version: 1,
        base_seq: 0,
        base_ms: 0,
    };

    fn compact(&self) -> bool {
        self.version >= 2
    }
}

/// A segment header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version the segment was written with.
    pub version: u16,
    /// [`SEGMENT_KIND_LOG`] or [`SEGMENT_KIND_COMPACTED`].
    pub kind: u16,
    /// Version 2 log segments: the id of the log segment that was active before this one was
    /// created (whose last sequence is `base_seq - 1`), 0 if none. Zero (reserved) in version 1
    /// and in compacted segments.
    pub prev_log_id: u32,
    /// The segment's id, equal to the number in its file name.
    pub segment_id: u64,
    /// Every record in the segment has a sequence number at least this.
    pub base_seq: u64,
    /// Version 2: the base time (unix seconds) that compact puts' expiries are deltas from.
    /// Zero (the reserved bytes) in version 1.
    pub base_time_s: u32,
}

impl SegmentHeader {
    /// The 40 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&self.kind.to_le_bytes());
        b[12..16].copy_from_slice(&self.prev_log_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_seq.to_le_bytes());
        b[32..36].copy_from_slice(&self.base_time_s.to_le_bytes());
        let crc = crc32fast::hash(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header. A version newer than [`FORMAT_VERSION`] is returned as is:
    /// the caller turns it into [`crate::Error::UnsupportedVersion`].
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, CorruptionKind> {
        if b.len() < HEADER_LEN {
            return Err(CorruptionKind::Truncated);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(CorruptionKind::BadMagic);
        }
        if crc32fast::hash(&b[0..36]) != u32_at(b, 36) {
            return Err(CorruptionKind::BadHeader);
        }
        Ok(SegmentHeader {
            version: u16::from_le_bytes([b[8], b[9]]),
            kind: u16::from_le_bytes([b[10], b[11]]),
            prev_log_id: u32_at(b, 12),
            segment_id: u64_at(b, 16),
            base_seq: u64_at(b, 24),
            base_time_s: u32_at(b, 32),
        })
    }

    /// What the segment's records are encoded relative to.
    pub fn record_base(&self) -> RecordBase {
        RecordBase {
            version: self.version,
            base_seq: self.base_seq,
            base_ms: u64::from(self.base_time_s) * 1000,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// One operation to encode.
#[derive(Debug, Clone, Copy)]
pub enum EncOp<'a> {
    /// Set `key` to `value`, expiring at `expires_at` (unix ms) if given.
    Put {
        /// Namespace.
        ns: u8,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Absolute expiry, unix ms.
        expires_at: Option<u64>,
    },
    /// Remove `key`.
    Delete {
        /// Namespace.
        ns: u8,
        /// Key.
        key: &'a [u8],
    },
    /// Remove `key` if its current write is the one with sequence `target_seq`.
    Expire {
        /// Namespace.
        ns: u8,
        /// Key.
        key: &'a [u8],
        /// The sequence of the write this expires.
        target_seq: u64,
    },
}

/// Length of `v` as a LEB128 varint.
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        v >>= 7;
        *at += 1;
    }
    out[*at] = v as u8;
    *at += 1;
}

fn put_bytes(out: &mut [u8], at: &mut usize, b: &[u8]) {
    out[*at..*at + b.len()].copy_from_slice(b);
    *at += b.len();
}

impl EncOp<'_> {
    /// Bytes this op takes after its kind byte (ns, lengths, fixed fields, key, value).
    fn fields_len(&self) -> usize {
        match *self {
            EncOp::Put {
                key,
                value,
                expires_at,
                ..
            } => {
                1 + varint_len(key.len() as u64)
                    + varint_len(value.len() as u64)
                    + if expires_at.is_some() { 8 } else { 0 }
                    + key.len()
                    + value.len()
            }
            EncOp::Delete { key, .. } => 1 + varint_len(key.len() as u64) + key.len(),
            EncOp::Expire { key, .. } => 1 + varint_len(key.len() as u64) + 8 + key.len(),
        }
    }

    fn kind_byte(&self) -> u8 {
        match *self {
            EncOp::Put {
                expires_at: Some(_),
                ..
            } => KIND_PUT | FLAG_EXPIRES,
            EncOp::Put { .. } => KIND_PUT,
            EncOp::Delete { .. } => KIND_DELETE,
            EncOp::Expire { .. } => KIND_EXPIRE,
        }
    }

    /// Writes the fields; returns the offset of the value (for puts) within `out`.
    fn write_fields(&self, out: &mut [u8], at: &mut usize) -> usize {
        match *self {
            EncOp::Put {
                ns,
                key,
                value,
                expires_at,
            } => {
                out[*at] = ns;
                *at += 1;
                put_varint(out, at, key.len() as u64);
                put_varint(out, at, value.len() as u64);
                if let Some(e) = expires_at {
                    put_bytes(out, at, &e.to_le_bytes());
                }
                put_bytes(out, at, key);
                let value_at = *at;
                put_bytes(out, at, value);
                value_at
            }
            EncOp::Delete { ns, key } => {
                out[*at] = ns;
                *at += 1;
                put_varint(out, at, key.len() as u64);
                put_bytes(out, at, key);
                *at
            }
            EncOp::Expire {
                ns,
                key,
                target_seq,
            } => {
                out[*at] = ns;
                *at += 1;
                put_varint(out, at, key.len() as u64);
                put_bytes(out, at, &target_seq.to_le_bytes());
                put_bytes(out, at, key);
                *at
            }
        }
    }
}

/// Total encoded length (prefix included) of a record holding `ops`: a plain record for one op,
/// a batch record for several.
pub fn record_len(ops: &[EncOp<'_>]) -> usize {
    RECORD_PREFIX + body_len(ops)
}

fn body_len(ops: &[EncOp<'_>]) -> usize {
    match ops {
        [one] => 1 + 8 + one.fields_len(),
        many => {
            1 + 8
                + varint_len(many.len() as u64)
                + many.iter().map(|op| 1 + op.fields_len()).sum::<usize>()
        }
    }
}

/// Encodes `ops` as one record into `out`, which must be exactly [`record_len`] long. The ops get
/// sequence numbers `seq`, `seq + 1`, …. Pushes, for each op, the offset of its value within
/// `out` onto `value_offsets`.
pub fn encode_record(
    out: &mut [u8],
    segment_id: u64,
    seq: u64,
    ops: &[EncOp<'_>],
    value_offsets: &mut Vec<usize>,
) {
    encode_v1(out, &CrcSeed::new(segment_id), seq, ops, value_offsets);
}

/// [`encode_record`] with the segment's checksum seed.
fn encode_v1(
    out: &mut [u8],
    seed: &CrcSeed,
    seq: u64,
    ops: &[EncOp<'_>],
    value_offsets: &mut Vec<usize>,
) {
    debug_assert!(!ops.is_empty());
    debug_assert_eq!(out.len(), record_len(ops));
    let body = out.len() - RECORD_PREFIX;
    out[4..8].copy_from_slice(&(body as u32).to_le_bytes());
    let mut at = RECORD_PREFIX;
    match ops {
        [one] => {
            out[at] = one.kind_byte();
            at += 1;
            put_bytes(out, &mut at, &seq.to_le_bytes());
            value_offsets.push(one.write_fields(out, &mut at));
        }
        many => {
            out[at] = KIND_BATCH;
            at += 1;
            put_bytes(out, &mut at, &seq.to_le_bytes());
            put_varint(out, &mut at, many.len() as u64);
            for op in many {
                out[at] = op.kind_byte();
                at += 1;
                value_offsets.push(op.write_fields(out, &mut at));
            }
        }
    }
    debug_assert_eq!(at, out.len());
    let crc = seed.crc(&out[4..]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// How a record is laid out in a segment with a given [`RecordBase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The version 1 forms: kinds 1 to 4.
    V1,
    /// One put, [`KIND_PUT_COMPACT`].
    PutCompact,
    /// Only expires, [`KIND_EXPIRE_BATCH`].
    ExpireBatch,
}

fn shape(base: &RecordBase, seq: u64, ops: &[EncOp<'_>]) -> Shape {
    if !base.compact() || seq < base.base_seq {
        return Shape::V1;
    }
    match ops {
        [EncOp::Put { .. }] => Shape::PutCompact,
        _ if ops.iter().all(|op| matches!(op, EncOp::Expire { .. })) => Shape::ExpireBatch,
        _ => Shape::V1,
    }
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The expiry field of a compact put: flag bits and delta from the base time.
fn expiry_delta(base_ms: u64, expires_at: u64) -> (u8, u64) {
    if expires_at >= base_ms {
        (FLAG_EXPIRES, expires_at - base_ms)
    } else {
        (
            FLAG_EXPIRES | FLAG_EXPIRES_BEFORE_BASE,
            base_ms - expires_at,
        )
    }
}

/// Encoded length (prefix included) of the record holding `ops`, with first sequence `seq`, in a
/// segment whose records are relative to `base`: the compact forms where `base` allows them
/// (version 2: one put, or only expires), else the same as [`record_len`].
pub fn record_len_at(base: &RecordBase, seq: u64, ops: &[EncOp<'_>]) -> usize {
    match shape(base, seq, ops) {
        Shape::V1 => record_len(ops),
        Shape::PutCompact => {
            let EncOp::Put {
                key,
                value,
                expires_at,
                ..
            } = ops[0]
            else {
                unreachable!("shape() chose PutCompact for one put")
            };
            RECORD_PREFIX
                + 1
                + varint_len(seq - base.base_seq)
                + 1
                + varint_len(key.len() as u64)
                + varint_len(value.len() as u64)
                + expires_at.map_or(0, |e| varint_len(expiry_delta(base.base_ms, e).1))
                + key.len()
                + value.len()
        }
        Shape::ExpireBatch => {
            let mut prev = seq;
            let mut n =
                RECORD_PREFIX + 1 + varint_len(seq - base.base_seq) + varint_len(ops.len() as u64);
            for op in ops {
                if let EncOp::Expire {
                    key, target_seq, ..
                } = *op
                {
                    n += 1
                        + varint_len(key.len() as u64)
                        + varint_len(zigzag(target_seq.wrapping_sub(prev) as i64))
                        + key.len();
                    prev = target_seq;
                }
            }
            n
        }
    }
}

/// Encodes `ops` as one record into `out`, which must be exactly [`record_len_at`] long, in the
/// form [`record_len_at`] measured, for the segment whose checksum seed is `seed`. Otherwise as
/// [`encode_record`].
pub fn encode_record_at(
    out: &mut [u8],
    base: &RecordBase,
    seed: &CrcSeed,
    seq: u64,
    ops: &[EncOp<'_>],
    value_offsets: &mut Vec<usize>,
) {
    debug_assert!(!ops.is_empty());
    debug_assert_eq!(out.len(), record_len_at(base, seq, ops));
    let mut at = RECORD_PREFIX;
    match shape(base, seq, ops) {
        Shape::V1 => return encode_v1(out, seed, seq, ops, value_offsets),
        Shape::PutCompact => {
            let EncOp::Put {
                ns,
                key,
                value,
                expires_at,
            } = ops[0]
            else {
                unreachable!("shape() chose PutCompact for one put")
            };
            let exp = expires_at.map(|e| expiry_delta(base.base_ms, e));
            out[at] = KIND_PUT_COMPACT | exp.map_or(0, |(flags, _)| flags);
            at += 1;
            put_varint(out, &mut at, seq - base.base_seq);
            out[at] = ns;
            at += 1;
            put_varint(out, &mut at, key.len() as u64);
            put_varint(out, &mut at, value.len() as u64);
            if let Some((_, d)) = exp {
                put_varint(out, &mut at, d);
            }
            put_bytes(out, &mut at, key);
            value_offsets.push(at);
            put_bytes(out, &mut at, value);
        }
        Shape::ExpireBatch => {
            out[at] = KIND_EXPIRE_BATCH;
            at += 1;
            put_varint(out, &mut at, seq - base.base_seq);
            put_varint(out, &mut at, ops.len() as u64);
            let mut prev = seq;
            for op in ops {
                if let EncOp::Expire {
                    ns,
                    key,
                    target_seq,
                } = *op
                {
                    out[at] = ns;
                    at += 1;
                    put_varint(out, &mut at, key.len() as u64);
                    put_varint(out, &mut at, zigzag(target_seq.wrapping_sub(prev) as i64));
                    put_bytes(out, &mut at, key);
                    prev = target_seq;
                }
                value_offsets.push(at);
            }
        }
    }
    debug_assert_eq!(at, out.len());
    let body = out.len() - RECORD_PREFIX;
    out[4..8].copy_from_slice(&(body as u32).to_le_bytes());
    let crc = seed.crc(&out[4..]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum of a record: CRC-32 (IEEE) of the segment id (8 bytes LE), then the length
/// field and the body.
pub fn record_crc(segment_id: u64, len_and_body: &[u8]) -> u32 {
    CrcSeed::new(segment_id).crc(len_and_body)
}

/// The checksum state of a segment's records before their own bytes: CRC-32 over the segment
/// id. A segment computes it once; each record's check then starts from a copy, without
/// hashing the id again or a fresh hasher's CPU-feature lookup (together about a third of the
/// instructions of a checked read of a 100-byte value).
#[derive(Clone, Debug)]
pub struct CrcSeed(crc32fast::Hasher);

impl CrcSeed {
    /// The state after segment `segment_id`'s id.
    pub fn new(segment_id: u64) -> CrcSeed {
        let mut h = crc32fast::Hasher::new();
        h.update(&segment_id.to_le_bytes());
        CrcSeed(h)
    }

    /// The checksum of a record of this segment: [`record_crc`] of its id and `len_and_body`.
    #[inline]
    pub fn crc(&self, len_and_body: &[u8]) -> u32 {
        let mut h = self.0.clone();
        h.update(len_and_body);
        h.finalize()
    }
}

/// Why a record could not be read at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Zeros where a record would start: the end of the data in a preallocated segment.
    End,
    /// Not a valid record.
    Corrupt(CorruptionKind),
}

/// A record that passed its checksum, borrowed from the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Offset of the record in its segment.
    pub offset: usize,
    /// Encoded length, prefix included.
    pub len: usize,
    /// Kind byte without flags: [`KIND_PUT`], [`KIND_DELETE`], [`KIND_EXPIRE`] or [`KIND_BATCH`].
    pub kind: u8,
    /// Sequence of the record (of its first entry, for a batch).
    pub seq: u64,
    /// The bytes of the whole record.
    pub bytes: &'a [u8],
    /// Where the fields after the kind and sequence start, within `bytes`.
    body_at: usize,
    /// The segment's base time (unix ms) for compact records; 0 for version 1 records.
    base_ms: u64,
}

/// One decoded operation of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    /// [`KIND_PUT`], [`KIND_DELETE`] or [`KIND_EXPIRE`].
    pub kind: u8,
    /// The op's sequence number.
    pub seq: u64,
    /// Namespace.
    pub ns: u8,
    /// Key.
    pub key: &'a [u8],
    /// Value (puts; empty otherwise).
    pub value: &'a [u8],
    /// Offset of the value within the record.
    pub value_offset: usize,
    /// Absolute expiry of a put, unix ms.
    pub expires_at: Option<u64>,
    /// For expires: the sequence of the write expired.
    pub target_seq: u64,
}

impl<'a> Op<'a> {
    /// A put of `value` (found at `value_offset` of its record) under `(ns, key)`.
    pub fn put(
        seq: u64,
        ns: u8,
        key: &'a [u8],
        value: &'a [u8],
        value_offset: usize,
        expires_at: Option<u64>,
    ) -> Op<'a> {
        Op {
            kind: KIND_PUT,
            seq,
            ns,
            key,
            value,
            value_offset,
            expires_at,
            target_seq: 0,
        }
    }
}

/// True if a record's kind byte (flags included) is a compact put's.
fn is_compact_put(kind_byte: u8) -> bool {
    kind_byte & !(FLAG_EXPIRES | FLAG_EXPIRES_BEFORE_BASE) == KIND_PUT_COMPACT
}

/// Reads and checks the record starting at `offset` of `data` (a whole segment file).
pub fn read_record(data: &[u8], offset: usize, segment_id: u64) -> Result<Record<'_>, RecordError> {
    read_record_in(data, offset, &CrcSeed::new(segment_id), None, true)
}

/// [`read_record`] for a segment whose checksum seed and record base (from its header) the
/// caller already holds: `base` must be what the header at the start of `data` gives, or `None`
/// to decode it from there. The CRC is checked only if `verify` (the framing and lengths always
/// are: a record read without its CRC can be wrong but never reaches outside `data`).
#[inline]
pub fn read_record_in<'a>(
    data: &'a [u8],
    offset: usize,
    seed: &CrcSeed,
    base: Option<&RecordBase>,
    verify: bool,
) -> Result<Record<'a>, RecordError> {
    let rest = data.len().saturating_sub(offset);
    if rest < RECORD_PREFIX {
        if data[offset.min(data.len())..].iter().all(|&b| b == 0) {
            return Err(RecordError::End);
        }
        return Err(RecordError::Corrupt(CorruptionKind::Truncated));
    }
    let crc = u32_at(data, offset);
    let body = u32_at(data, offset + 4) as usize;
    if body == 0 {
        if crc == 0 {
            return Err(RecordError::End);
        }
        return Err(RecordError::Corrupt(CorruptionKind::Malformed(
            "zero body length",
        )));
    }
    if body > MAX_BODY_LEN || body > rest - RECORD_PREFIX {
        return Err(RecordError::Corrupt(CorruptionKind::Truncated));
    }
    let bytes = &data[offset..offset + RECORD_PREFIX + body];
    if verify && seed.crc(&bytes[4..]) != crc {
        return Err(RecordError::Corrupt(CorruptionKind::BadChecksum));
    }
    let kind_byte = bytes[RECORD_PREFIX];
    let compact = kind_byte == KIND_EXPIRE_BATCH || is_compact_put(kind_byte);
    if compact {
        let base = match base {
            Some(b) if b.version >= 2 => *b,
            Some(_) => return Err(RecordError::Corrupt(COMPACT_OUTSIDE)),
            None => compact_base(data).map_err(RecordError::Corrupt)?,
        };
        let mut c = Cursor {
            b: bytes,
            at: RECORD_PREFIX + 1,
        };
        let delta = c.varint().map_err(RecordError::Corrupt)?;
        let seq = base
            .base_seq
            .checked_add(delta)
            .ok_or(RecordError::Corrupt(CorruptionKind::Malformed(
                "sequence overflow",
            )))?;
        let kind = if kind_byte == KIND_EXPIRE_BATCH {
            KIND_BATCH
        } else {
            KIND_PUT
        };
        return Ok(Record {
            offset,
            len: bytes.len(),
            kind,
            seq,
            bytes,
            body_at: c.at,
            base_ms: base.base_ms,
        });
    }
    if body < 9 {
        return Err(RecordError::Corrupt(CorruptionKind::Malformed(
            "body shorter than kind and sequence",
        )));
    }
    let kind = kind_byte & !FLAG_EXPIRES;
    if !(KIND_PUT..=KIND_BATCH).contains(&kind) {
        return Err(RecordError::Corrupt(CorruptionKind::Malformed(
            "unknown record kind",
        )));
    }
    let seq = u64_at(bytes, RECORD_PREFIX + 1);
    Ok(Record {
        offset,
        len: bytes.len(),
        kind,
        seq,
        bytes,
        body_at: RECORD_PREFIX + 9,
        base_ms: 0,
    })
}

/// The base of a compact record: from the header at the start of `data`, which must be a version
/// 2 (or later) segment. The header's checksum was checked when the segment was opened.
const LEFT_OVER: CorruptionKind = CorruptionKind::Malformed("bytes left over after the last field");

const COMPACT_OUTSIDE: CorruptionKind =
    CorruptionKind::Malformed("compact record outside a version 2 segment");

fn compact_base(data: &[u8]) -> Result<RecordBase, CorruptionKind> {
    if data.len() < HEADER_LEN
        || data[0..8] != SEGMENT_MAGIC
        || u16::from_le_bytes([data[8], data[9]]) < 2
    {
        return Err(COMPACT_OUTSIDE);
    }
    Ok(RecordBase {
        version: u16::from_le_bytes([data[8], data[9]]),
        base_seq: u64_at(data, 24),
        base_ms: u64::from(u32_at(data, 32)) * 1000,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

type DecodeResult<T> = Result<T, CorruptionKind>;

impl<'a> Cursor<'a> {
    #[inline]
    fn u8(&mut self) -> DecodeResult<u8> {
        let v = *self
            .b
            .get(self.at)
            .ok_or(CorruptionKind::Malformed("field past end of record"))?;
        self.at += 1;
        Ok(v)
    }
    fn u64(&mut self) -> DecodeResult<u64> {
        let s = self.take(8)?;
        Ok(u64_at(s, 0))
    }
    #[inline]
    fn varint(&mut self) -> DecodeResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CorruptionKind::Malformed("varint longer than 10 bytes"))
    }
    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(CorruptionKind::Malformed("length past end of record"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    #[inline]
    fn len(&mut self) -> DecodeResult<usize> {
        let v = self.varint()?;
        usize::try_from(v).map_err(|_| CorruptionKind::Malformed("length does not fit"))
    }

    fn op(&mut self, kind_byte: u8, seq: u64) -> DecodeResult<Op<'a>> {
        let kind = kind_byte & !FLAG_EXPIRES;
        let ns = self.u8()?;
        let klen = self.len()?;
        let mut op = Op {
            kind,
            seq,
            ns,
            key: &[],
            value: &[],
            value_offset: 0,
            expires_at: None,
            target_seq: 0,
        };
        match kind {
            KIND_PUT => {
                let vlen = self.len()?;
                if kind_byte & FLAG_EXPIRES != 0 {
                    op.expires_at = Some(self.u64()?);
                }
                op.key = self.take(klen)?;
                op.value_offset = self.at;
                op.value = self.take(vlen)?;
            }
            KIND_DELETE => {
                if kind_byte & FLAG_EXPIRES != 0 {
                    return Err(CorruptionKind::Malformed("expiry flag on a delete"));
                }
                op.key = self.take(klen)?;
            }
            KIND_EXPIRE => {
                if kind_byte & FLAG_EXPIRES != 0 {
                    return Err(CorruptionKind::Malformed("expiry flag on an expire"));
                }
                op.target_seq = self.u64()?;
                op.key = self.take(klen)?;
            }
            _ => return Err(CorruptionKind::Malformed("unknown operation kind")),
        }
        check_key_len(op.key)?;
        Ok(op)
    }
}

fn check_key_len(key: &[u8]) -> DecodeResult<()> {
    if key.is_empty() || key.len() > crate::MAX_KEY_LEN {
        return Err(CorruptionKind::Malformed("key length out of range"));
    }
    Ok(())
}

impl<'a> Record<'a> {
    /// Decodes every operation of the record, in sequence order, into `out` (cleared first).
    /// Either all decode or none is returned.
    pub fn ops(&self, out: &mut Vec<Op<'a>>) -> DecodeResult<()> {
        out.clear();
        self.each_op(|op| out.push(op))
    }

    /// Decodes every operation of the record, in sequence order, handing each to `each`, and
    /// checks that nothing is left over after the last.
    #[inline]
    fn each_op(&self, mut each: impl FnMut(Op<'a>)) -> DecodeResult<()> {
        let mut c = Cursor {
            b: self.bytes,
            at: self.body_at,
        };
        let kind_byte = self.bytes[RECORD_PREFIX];
        if kind_byte == KIND_EXPIRE_BATCH {
            let count = c.len()?;
            // Every entry takes at least 4 bytes: bound the count by the bytes present.
            if count == 0 || count > (self.bytes.len() - c.at) / 4 {
                return Err(CorruptionKind::Malformed("batch count out of range"));
            }
            let mut prev = self.seq;
            for i in 0..count as u64 {
                let seq = self
                    .seq
                    .checked_add(i)
                    .ok_or(CorruptionKind::Malformed("sequence overflow"))?;
                let ns = c.u8()?;
                let klen = c.len()?;
                let target_seq = prev.wrapping_add(unzigzag(c.varint()?) as u64);
                prev = target_seq;
                let key = c.take(klen)?;
                check_key_len(key)?;
                each(Op {
                    kind: KIND_EXPIRE,
                    seq,
                    ns,
                    key,
                    value: &[],
                    value_offset: 0,
                    expires_at: None,
                    target_seq,
                });
            }
        } else if is_compact_put(kind_byte) {
            each(self.compact_put(&mut c, kind_byte)?);
        } else if kind_byte == KIND_BATCH {
            self.batch_ops(&mut c, each)?;
        } else {
            each(c.op(kind_byte, self.seq)?);
        }
        if c.at != self.bytes.len() {
            return Err(LEFT_OVER);
        }
        Ok(())
    }

    /// Decodes the operations of a batch record from `c` (at its count), in order, handing each
    /// to `each`.
    fn batch_ops(&self, c: &mut Cursor<'a>, mut each: impl FnMut(Op<'a>)) -> DecodeResult<()> {
        let count = c.len()?;
        // Every entry takes at least 3 bytes: bound the count by the bytes present.
        if count == 0 || count > (self.bytes.len() - c.at) / 3 {
            return Err(CorruptionKind::Malformed("batch count out of range"));
        }
        for i in 0..count as u64 {
            let kb = c.u8()?;
            if kb & !FLAG_EXPIRES == KIND_BATCH {
                return Err(CorruptionKind::Malformed("batch inside a batch"));
            }
            let seq = self
                .seq
                .checked_add(i)
                .ok_or(CorruptionKind::Malformed("sequence overflow"))?;
            each(c.op(kb, seq)?);
        }
        Ok(())
    }

    /// The operation of a compact put record, decoded from `c` (at the fields after the sequence).
    fn compact_put(&self, c: &mut Cursor<'a>, kind_byte: u8) -> DecodeResult<Op<'a>> {
        let ns = c.u8()?;
        let klen = c.len()?;
        let vlen = c.len()?;
        let expires_at = match kind_byte & (FLAG_EXPIRES | FLAG_EXPIRES_BEFORE_BASE) {
            0 => None,
            FLAG_EXPIRES => Some(
                self.base_ms
                    .checked_add(c.varint()?)
                    .ok_or(CorruptionKind::Malformed("expiry overflow"))?,
            ),
            f if f == FLAG_EXPIRES | FLAG_EXPIRES_BEFORE_BASE => Some(
                self.base_ms
                    .checked_sub(c.varint()?)
                    .ok_or(CorruptionKind::Malformed("expiry before 1970"))?,
            ),
            _ => {
                return Err(CorruptionKind::Malformed(
                    "before-base flag without an expiry",
                ));
            }
        };
        let key = c.take(klen)?;
        check_key_len(key)?;
        let value_offset = c.at;
        let value = c.take(vlen)?;
        Ok(Op::put(self.seq, ns, key, value, value_offset, expires_at))
    }

    /// Where the value of a single-put record lies within it: `(offset, length)`; `None` for a
    /// batch (whose puts [`Record::put_of`] finds by key). The caller knows the record is the
    /// key's current put (the index points at it), so the key is not compared. The value is a
    /// put record's last field: only the lengths before it are decoded (a scan calls this for
    /// every key), and the span is checked to lie after them, inside the record.
    #[inline]
    pub fn single_put_value(&self) -> DecodeResult<Option<(usize, usize)>> {
        let kind_byte = self.bytes[RECORD_PREFIX];
        let single = is_compact_put(kind_byte) || kind_byte & !FLAG_EXPIRES == KIND_PUT;
        if !single {
            return Ok(None);
        }
        let mut c = Cursor {
            b: self.bytes,
            at: self.body_at + 1,
        };
        let klen = c.len()?;
        let vlen = c.len()?;
        let start = self
            .bytes
            .len()
            .checked_sub(vlen)
            .filter(|&s| s >= c.at.saturating_add(klen))
            .ok_or(CorruptionKind::Malformed("length past end of record"))?;
        Ok(Some((start, vlen)))
    }

    /// The put of `(ns, key)` this record leaves in force: its last operation on that key, if
    /// that is a put. `None` if the record does not end with a put of the key. Decodes without
    /// allocating (a point read calls it).
    #[inline]
    pub fn put_of(&self, ns: u8, key: &[u8]) -> DecodeResult<Option<Op<'a>>> {
        let kind_byte = self.bytes[RECORD_PREFIX];
        if is_compact_put(kind_byte) {
            // The common case, without the walk over a record's operations: its one put,
            // checked to end where the record does.
            let mut c = Cursor {
                b: self.bytes,
                at: self.body_at,
            };
            let op = self.compact_put(&mut c, kind_byte)?;
            if c.at != self.bytes.len() {
                return Err(LEFT_OVER);
            }
            return Ok((op.ns == ns && op.key == key).then_some(op));
        }
        let mut last = None;
        self.each_op(|op| {
            if op.ns == ns && op.key == key {
                last = Some(op);
            }
        })?;
        Ok(last.filter(|op| op.kind == KIND_PUT))
    }

    /// How the record's bytes divide between its operations: pushes each op's share onto
    /// `out` (cleared first) and returns the bytes shared by all (a batch's prefix, kind,
    /// sequence and count); the shares and the shared bytes add up to [`Record::len`]. A record
    /// of one operation gives that operation all of it. `ops` must be what [`Record::ops`]
    /// decoded from this record.
    pub fn op_shares(&self, ops: &[Op<'_>], out: &mut Vec<u64>) -> u64 {
        out.clear();
        let kind_byte = self.bytes[RECORD_PREFIX];
        if kind_byte == KIND_EXPIRE_BATCH {
            let mut prev = self.seq;
            for op in ops {
                let d = zigzag(op.target_seq.wrapping_sub(prev) as i64);
                prev = op.target_seq;
                out.push(
                    (1 + varint_len(op.key.len() as u64) + varint_len(d) + op.key.len()) as u64,
                );
            }
        } else if kind_byte == KIND_BATCH {
            for op in ops {
                let k = op.key.len();
                let fixed = 1 + 1 + varint_len(k as u64) + k;
                out.push(match op.kind {
                    KIND_PUT => {
                        fixed
                            + varint_len(op.value.len() as u64)
                            + op.value.len()
                            + if op.expires_at.is_some() { 8 } else { 0 }
                    }
                    KIND_EXPIRE => fixed + 8,
                    _ => fixed,
                } as u64);
            }
        } else {
            out.push(self.len as u64);
            return 0;
        }
        (self.len as u64).saturating_sub(out.iter().sum())
    }

    /// The sequence of the record's last operation.
    pub fn last_seq(&self, ops: &[Op<'_>]) -> u64 {
        ops.last().map_or(self.seq, |o| o.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks decoded ops against what was encoded: sequences from `seq`, every field, and each
    /// value at the offset the encoder reported (`offs`, relative to the record at `at` of
    /// `bytes`).
    fn check_decoded(
        out: &[Op<'_>],
        ops: &[EncOp<'_>],
        seq: u64,
        bytes: &[u8],
        at: usize,
        offs: &[usize],
    ) {
        assert_eq!(out.len(), ops.len());
        for (i, (d, e)) in out.iter().zip(ops).enumerate() {
            assert_eq!(d.seq, seq + i as u64);
            match *e {
                EncOp::Put {
                    ns,
                    key,
                    value,
                    expires_at,
                } => {
                    assert_eq!(
                        (d.kind, d.ns, d.key, d.value, d.expires_at),
                        (KIND_PUT, ns, key, value, expires_at)
                    );
                    assert_eq!(offs[i], d.value_offset);
                    assert_eq!(&bytes[at + d.value_offset..][..value.len()], value);
                }
                EncOp::Delete { ns, key } => {
                    assert_eq!((d.kind, d.ns, d.key), (KIND_DELETE, ns, key))
                }
                EncOp::Expire {
                    ns,
                    key,
                    target_seq,
                } => {
                    assert_eq!(
                        (d.kind, d.ns, d.key, d.target_seq),
                        (KIND_EXPIRE, ns, key, target_seq)
                    )
                }
            }
        }
    }

    /// Checks the point-read decoders against the full decode `out` of `rec`: `put_of` finds
    /// each key's last op when that is a put (and nothing for a key the record does not hold),
    /// `single_put_value` the value of a record of one put (and nothing otherwise).
    fn check_lookups(rec: &Record<'_>, out: &[Op<'_>]) {
        for op in out {
            let last = out.iter().rev().find(|o| (o.ns, o.key) == (op.ns, op.key));
            let want = last.filter(|o| o.kind == KIND_PUT).copied();
            assert_eq!(rec.put_of(op.ns, op.key), Ok(want));
            let other_ns = op.ns.wrapping_add(1);
            if !out.iter().any(|o| (o.ns, o.key) == (other_ns, op.key)) {
                assert_eq!(rec.put_of(other_ns, op.key), Ok(None));
            }
        }
        assert_eq!(rec.put_of(0, b"a key in no record"), Ok(None));
        let single = match out {
            [op] if op.kind == KIND_PUT => Some((op.value_offset, op.value.len())),
            _ => None,
        };
        assert_eq!(rec.single_put_value(), Ok(single));
    }

    fn roundtrip(ops: &[EncOp<'_>]) {
        let mut buf = vec![0u8; record_len(ops) + 16];
        let n = record_len(ops);
        let mut offs = Vec::new();
        encode_record(&mut buf[..n], 7, 100, ops, &mut offs);
        let rec = read_record(&buf, 0, 7).expect("valid");
        assert_eq!(rec.len, n);
        assert_eq!(rec.seq, 100);
        let mut out = Vec::new();
        rec.ops(&mut out).expect("decodes");
        check_decoded(&out, ops, 100, &buf, 0, &offs);
        check_lookups(&rec, &out);
        // Bound to the segment: the same bytes fail under another id.
        assert_eq!(
            read_record(&buf, 0, 8).unwrap_err(),
            RecordError::Corrupt(CorruptionKind::BadChecksum)
        );
        // The zeros after it read as the end.
        assert_eq!(read_record(&buf, n, 7).unwrap_err(), RecordError::End);
    }

    #[test]
    fn records_roundtrip() {
        roundtrip(&[EncOp::Put {
            ns: 0,
            key: b"k",
            value: b"v",
            expires_at: None,
        }]);
        roundtrip(&[EncOp::Put {
            ns: 3,
            key: &[1; 300],
            value: &[2; 70000],
            expires_at: Some(1 << 50),
        }]);
        roundtrip(&[EncOp::Delete {
            ns: 0,
            key: b"gone",
        }]);
        roundtrip(&[EncOp::Expire {
            ns: 1,
            key: b"old",
            target_seq: 99,
        }]);
        roundtrip(&[
            EncOp::Put {
                ns: 0,
                key: b"a",
                value: b"1",
                expires_at: Some(5),
            },
            EncOp::Delete { ns: 0, key: b"b" },
            EncOp::Put {
                ns: 2,
                key: b"c",
                value: b"",
                expires_at: None,
            },
        ]);
        // A batch that writes keys more than once: a point read finds the last op of its key.
        roundtrip(&[
            EncOp::Put {
                ns: 0,
                key: b"a",
                value: b"first",
                expires_at: None,
            },
            EncOp::Put {
                ns: 1,
                key: b"a",
                value: b"other namespace",
                expires_at: Some(9),
            },
            EncOp::Delete { ns: 0, key: b"a" },
            EncOp::Put {
                ns: 0,
                key: b"c",
                value: b"old",
                expires_at: Some(7),
            },
            EncOp::Put {
                ns: 0,
                key: b"c",
                value: b"new",
                expires_at: None,
            },
        ]);
    }

    #[test]
    fn header_roundtrip_and_damage() {
        let h = SegmentHeader {
            version: 1,
            kind: 0,
            prev_log_id: 41,
            segment_id: 42,
            base_seq: 9,
            base_time_s: 1_700_000_000,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(CorruptionKind::BadHeader));
        b[0] = b'x';
        assert_eq!(SegmentHeader::decode(&b), Err(CorruptionKind::BadMagic));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_caught() {
        let ops = [EncOp::Put {
            ns: 0,
            key: b"key",
            value: b"value",
            expires_at: Some(77),
        }];
        let n = record_len(&ops);
        let mut buf = vec![0u8; n];
        encode_record(&mut buf, 1, 5, &ops, &mut Vec::new());
        for cut in 0..n {
            let r = read_record(&buf[..cut], 0, 1);
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        for byte in 0..n {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                if let Ok(rec) = read_record(&b, 0, 1) {
                    panic!("flip at {byte}:{bit} accepted as {rec:?}");
                }
            }
        }
    }

    fn v2_segment(base: &RecordBase, id: u64) -> Vec<u8> {
        SegmentHeader {
            version: base.version,
            kind: SEGMENT_KIND_LOG,
            prev_log_id: 0,
            segment_id: id,
            base_seq: base.base_seq,
            base_time_s: (base.base_ms / 1000) as u32,
        }
        .encode()
        .to_vec()
    }

    /// Encodes `ops` at the end of a version 2 segment and reads them back.
    fn roundtrip_at(base: &RecordBase, seq: u64, ops: &[EncOp<'_>]) -> (usize, Vec<u8>) {
        let mut seg = v2_segment(base, 9);
        let at = seg.len();
        let n = record_len_at(base, seq, ops);
        seg.resize(at + n + 16, 0);
        let mut offs = Vec::new();
        encode_record_at(
            &mut seg[at..at + n],
            base,
            &CrcSeed::new(9),
            seq,
            ops,
            &mut offs,
        );
        let rec = read_record(&seg, at, 9).expect("valid");
        assert_eq!((rec.len, rec.seq), (n, seq));
        let mut out = Vec::new();
        rec.ops(&mut out).expect("decodes");
        check_decoded(&out, ops, seq, &seg, at, &offs);
        check_lookups(&rec, &out);
        assert_eq!(
            read_record(&seg, at, 10).unwrap_err(),
            RecordError::Corrupt(CorruptionKind::BadChecksum)
        );
        assert_eq!(read_record(&seg, at + n, 9).unwrap_err(), RecordError::End);
        seg.truncate(at + n);
        (at, seg)
    }

    const BASE: RecordBase = RecordBase {
        version: 2,
        base_seq: 1_000_000,
        base_ms: 1_767_225_600_000,
    };

    #[test]
    fn compact_records_roundtrip_and_are_smaller() {
        let key = [b'k'; 16];
        let value = [7u8; 100];
        for expires_at in [
            None,
            Some(BASE.base_ms),
            Some(BASE.base_ms + 5_000),
            Some(BASE.base_ms - 1),
            Some(0),
            Some(u64::MAX),
        ] {
            let put = [EncOp::Put {
                ns: 3,
                key: &key,
                value: &value,
                expires_at,
            }];
            let (at, seg) = roundtrip_at(&BASE, BASE.base_seq + 20_000, &put);
            assert_eq!(seg[at + RECORD_PREFIX] & 0x3f, KIND_PUT_COMPACT);
        }
        let put = [EncOp::Put {
            ns: 0,
            key: &key,
            value: &value,
            expires_at: Some(BASE.base_ms + 5_000),
        }];
        // The churn benchmark's put: 144 bytes in version 1, 133 here.
        assert_eq!(record_len(&put), 144);
        assert_eq!(record_len_at(&BASE, BASE.base_seq + 20_000, &put), 133);
        // The expirer's batch: 27 bytes an entry in version 1, 19 here when the targets are
        // close together.
        let keys: Vec<[u8; 16]> = (0..=255u8).map(|i| [i; 16]).collect();
        let expires: Vec<EncOp<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| EncOp::Expire {
                ns: 0,
                key: k,
                target_seq: BASE.base_seq + 10 + i as u64,
            })
            .collect();
        let seq = BASE.base_seq + 600_000;
        let (at, seg) = roundtrip_at(&BASE, seq, &expires);
        assert_eq!(seg[at + RECORD_PREFIX], KIND_EXPIRE_BATCH);
        assert_eq!(record_len(&expires), 8 + 1 + 8 + 2 + 256 * 27);
        assert_eq!(
            record_len_at(&BASE, seq, &expires),
            8 + 1 + 3 + 2 + 3 + 256 * 19 - 1
        );
        // Targets in any order, one entry, extreme values.
        roundtrip_at(
            &BASE,
            seq,
            &[
                EncOp::Expire {
                    ns: 1,
                    key: b"z",
                    target_seq: u64::MAX,
                },
                EncOp::Expire {
                    ns: 2,
                    key: b"a",
                    target_seq: 0,
                },
                EncOp::Expire {
                    ns: 0,
                    key: &[9; 300],
                    target_seq: seq - 1,
                },
            ],
        );
        roundtrip_at(
            &BASE,
            BASE.base_seq,
            &[EncOp::Expire {
                ns: 0,
                key: b"one",
                target_seq: 5,
            }],
        );
        // Deletes and mixed batches keep the version 1 forms, in a version 2 segment too.
        roundtrip_at(
            &BASE,
            seq,
            &[EncOp::Delete {
                ns: 0,
                key: b"gone",
            }],
        );
        roundtrip_at(
            &BASE,
            seq,
            &[
                EncOp::Put {
                    ns: 0,
                    key: b"a",
                    value: b"1",
                    expires_at: Some(5),
                },
                EncOp::Expire {
                    ns: 0,
                    key: b"b",
                    target_seq: 3,
                },
            ],
        );
        // A sequence below the base (never written) falls back to the version 1 form.
        let (at, seg) = roundtrip_at(&BASE, 5, &put);
        assert_eq!(seg[at + RECORD_PREFIX], KIND_PUT | FLAG_EXPIRES);
        // A version 1 base writes version 1 records only.
        assert_eq!(
            record_len_at(&RecordBase::V1, BASE.base_seq + 20_000, &put),
            144
        );
    }

    #[test]
    fn compact_records_need_a_version_2_header() {
        let put = [EncOp::Put {
            ns: 0,
            key: b"key",
            value: b"v",
            expires_at: Some(BASE.base_ms + 1),
        }];
        let (at, mut seg) = roundtrip_at(&BASE, BASE.base_seq + 1, &put);
        let compact_outside = RecordError::Corrupt(CorruptionKind::Malformed(
            "compact record outside a version 2 segment",
        ));
        // The same record bytes after a version 1 header, and without any header.
        let mut v1 = SegmentHeader {
            version: 1,
            kind: SEGMENT_KIND_LOG,
            prev_log_id: 0,
            segment_id: 9,
            base_seq: 0,
            base_time_s: 0,
        }
        .encode()
        .to_vec();
        v1.extend_from_slice(&seg[at..]);
        assert_eq!(read_record(&v1, at, 9).unwrap_err(), compact_outside);
        assert_eq!(read_record(&seg[at..], 0, 9).unwrap_err(), compact_outside);
        // A reader that holds the segment's base: a version 1 base refuses the record too, the
        // header's own base reads it as the header does.
        let seed = CrcSeed::new(9);
        assert_eq!(
            read_record_in(&seg, at, &seed, Some(&RecordBase::V1), true).unwrap_err(),
            compact_outside
        );
        let held = read_record_in(&seg, at, &seed, Some(&BASE), true).expect("valid");
        let read = read_record(&seg, at, 9).expect("valid");
        assert_eq!(
            (held.seq, held.len, held.base_ms),
            (read.seq, read.len, read.base_ms)
        );
        // The base comes from the header: another base time shifts the expiry.
        seg[32] ^= 1;
        let rec = read_record(&seg, at, 9).expect("the record itself is intact");
        let mut ops = Vec::new();
        rec.ops(&mut ops).expect("decodes");
        assert_ne!(ops[0].expires_at, Some(BASE.base_ms + 1));
    }

    #[test]
    fn a_seeded_checksum_is_the_checksum_of_id_and_bytes() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for id in [0, 1, 9, u64::from(u32::MAX), u64::MAX] {
            let seed = CrcSeed::new(id);
            for len in 0..bytes.len() {
                let mut whole = id.to_le_bytes().to_vec();
                whole.extend_from_slice(&bytes[..len]);
                let want = crc32fast::hash(&whole);
                assert_eq!(seed.crc(&bytes[..len]), want, "id {id}, {len} bytes");
                assert_eq!(record_crc(id, &bytes[..len]), want, "id {id}, {len} bytes");
            }
        }
    }

    /// A compact put with a byte after its value and a checksum that covers it: every decoder,
    /// the point read's shortcut included, refuses it.
    #[test]
    fn a_compact_put_with_bytes_after_its_value_is_refused() {
        let put = [EncOp::Put {
            ns: 0,
            key: b"key",
            value: b"value",
            expires_at: None,
        }];
        let (at, mut seg) = roundtrip_at(&BASE, BASE.base_seq + 1, &put);
        let n = record_len_at(&BASE, BASE.base_seq + 1, &put);
        seg.truncate(at + n);
        seg.push(0x55);
        let body = (n + 1 - RECORD_PREFIX) as u32;
        seg[at + 4..at + 8].copy_from_slice(&body.to_le_bytes());
        let crc = record_crc(9, &seg[at + 4..]);
        seg[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        let rec = read_record(&seg, at, 9).expect("the checksum holds");
        assert_eq!(rec.ops(&mut Vec::new()), Err(LEFT_OVER));
        assert_eq!(rec.put_of(0, b"key"), Err(LEFT_OVER));
        assert_eq!(rec.put_of(0, b"other"), Err(LEFT_OVER));
    }

    #[test]
    fn every_truncation_and_bit_flip_of_a_compact_record_is_caught() {
        let keys = [*b"key-a", *b"key-b"];
        let cases: [&[EncOp<'_>]; 2] = [
            &[EncOp::Put {
                ns: 0,
                key: b"key",
                value: b"value",
                expires_at: Some(BASE.base_ms + 77),
            }],
            &[
                EncOp::Expire {
                    ns: 0,
                    key: &keys[0],
                    target_seq: BASE.base_seq + 3,
                },
                EncOp::Expire {
                    ns: 0,
                    key: &keys[1],
                    target_seq: BASE.base_seq + 4,
                },
            ],
        ];
        for ops in cases {
            let (at, seg) = roundtrip_at(&BASE, BASE.base_seq + 9, ops);
            let n = seg.len() - at;
            for cut in at..at + n {
                assert!(read_record(&seg[..cut], at, 9).is_err(), "cut at {cut}");
            }
            for byte in at..at + n {
                for bit in 0..8 {
                    let mut b = seg.clone();
                    b[byte] ^= 1 << bit;
                    if let Ok(rec) = read_record(&b, at, 9) {
                        panic!("flip at {byte}:{bit} accepted as {rec:?}");
                    }
                }
            }
        }
    }
}
