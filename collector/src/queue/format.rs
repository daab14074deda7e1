//! The queue's on-disk formats (record framing, the reader-position file, file names) and the
//! [`Scanner`] that reads records back, stepping over damaged bytes to the next valid record.
//! Layouts are described in the module docs of [`super`].

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// First bytes of every record; resynchronisation after damage looks for them.
pub(crate) const MAGIC: [u8; 4] = *b"SNQ\x01";
/// magic, payload length, CRC-32.
pub(crate) const HEADER_LEN: usize = 12;
/// Largest payload the format admits. Bounds what a forged length can make a reader allocate.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

pub(crate) const POSITION_FILE: &str = "reader.pos";
pub(crate) const POSITION_TMP: &str = "reader.pos.tmp";
pub(crate) const LOCK_FILE: &str = "LOCK";
const POSITION_MAGIC: [u8; 4] = *b"SNQP";
const POSITION_VERSION: u8 = 1;
pub(crate) const POSITION_LEN: usize = 28;

/// Segment names have sixteen digits.
pub(crate) const MAX_SEGMENT_INDEX: u64 = 9_999_999_999_999_999;

/// Bytes read from a segment at a time (more when one record is larger).
const READ_CHUNK: usize = 1 << 20;

/// A place in the queue: a segment and a byte offset in it. Positions order as the records do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// A run of bytes that holds no valid record, skipped by readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRegion {
    /// Offset of the first damaged byte in its segment.
    pub offset: u64,
    pub len: u64,
    /// What was wrong with the first record header of the run.
    pub reason: &'static str,
}

pub(crate) fn segment_name(index: u64) -> String {
    format!("{index:016}.seg")
}

/// The index of a file named like a segment (`NNNNNNNNNNNNNNNN.seg`).
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() == 16 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// Bytes a record of `payload_len` takes on disk.
pub(crate) fn framed_len(payload_len: usize) -> u64 {
    (HEADER_LEN + payload_len) as u64
}

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// Appends one framed record. The caller has checked `payload.len() <= MAX_RECORD_BYTES`.
pub(crate) fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the bytes at the start of a window hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Nothing left to read.
    End,
    /// The window must hold at least this many bytes to decide (never more than remain).
    Need(usize),
    /// A valid record with this payload length.
    Record { len: usize },
    /// No valid record starts in the first `skip` bytes.
    Damaged { skip: usize, reason: &'static str },
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decides what starts at `window[0]`, where `window` is a prefix of the `remaining` readable
/// bytes. Pure, so it can be tested on arbitrary bytes.
pub(crate) fn parse(window: &[u8], remaining: u64) -> Parsed {
    if remaining == 0 {
        return Parsed::End;
    }
    let need = remaining.min(HEADER_LEN as u64) as usize;
    if window.len() < need {
        return Parsed::Need(need);
    }
    if remaining < HEADER_LEN as u64 {
        return resync(window, remaining, "torn record header");
    }
    if window[..4] != MAGIC {
        return resync(window, remaining, "no record header (bad magic)");
    }
    let len = le_u32(window, 4) as usize;
    let crc = le_u32(window, 8);
    if len > MAX_RECORD_BYTES {
        return resync(window, remaining, "record length over the format limit");
    }
    let framed = framed_len(len);
    if framed > remaining {
        return resync(window, remaining, "record runs past the end of the segment");
    }
    if (window.len() as u64) < framed {
        return Parsed::Need(framed as usize);
    }
    let payload = &window[HEADER_LEN..framed as usize];
    if checksum([window[4], window[5], window[6], window[7]], payload) != crc {
        return resync(window, remaining, "checksum mismatch");
    }
    Parsed::Record { len }
}

/// Skips to the next occurrence of the magic after the first byte; a partial magic at the end
/// of a window that is not the end of the data is kept for the next look.
fn resync(window: &[u8], remaining: u64, reason: &'static str) -> Parsed {
    let found = window
        .get(1..)
        .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC));
    let skip = match found {
        Some(i) => i + 1,
        None if window.len() as u64 >= remaining => window.len(),
        None => window.len().saturating_sub(MAGIC.len() - 1).max(1),
    };
    Parsed::Damaged { skip, reason }
}

/// One thing found in a segment.
#[derive(Debug)]
pub(crate) enum Item {
    Record {
        offset: u64,
        framed: u64,
        /// The payload, when the scanner was asked for it.
        payload: Option<Bytes>,
    },
    /// A maximal run of damaged bytes.
    Damaged(DamagedRegion),
}

/// Reads a segment file from an offset up to a limit, yielding records and damaged runs in
/// order. The limit can grow (the segment being written); I/O errors are errors, damaged bytes
/// never are.
#[derive(Debug)]
pub(crate) struct Scanner {
    file: File,
    /// Bytes of the file from `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    off: u64,
    limit: u64,
    damage: Option<DamagedRegion>,
}

impl Scanner {
    pub(crate) fn new(file: File, from: u64, limit: u64) -> Self {
        Self {
            file,
            buf: Vec::new(),
            buf_start: 0,
            off: from.min(limit),
            limit,
            damage: None,
        }
    }

    /// Where the next item starts (damage not yet reported included).
    pub(crate) fn offset(&self) -> u64 {
        self.damage.as_ref().map_or(self.off, |d| d.offset)
    }

    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = self.limit.max(limit);
    }

    /// The buffered bytes from `off` on.
    fn window(&self) -> &[u8] {
        usize::try_from(self.off.saturating_sub(self.buf_start))
            .ok()
            .filter(|_| self.off >= self.buf_start)
            .and_then(|rel| self.buf.get(rel..))
            .unwrap_or_default()
    }

    /// Makes the window hold at least `n` bytes (`n` no more than remain before the limit).
    fn ensure(&mut self, n: usize) -> io::Result<()> {
        if self.window().len() >= n {
            return Ok(());
        }
        let remaining = self.limit - self.off;
        let want = (n.max(READ_CHUNK) as u64).min(remaining) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        self.buf_start = self.off;
        if let Err(e) = self.file.read_exact_at(&mut self.buf, self.off) {
            self.buf.clear();
            return Err(e);
        }
        Ok(())
    }

    /// The next record or damaged run, or `None` at the limit.
    pub(crate) fn next(&mut self, with_payload: bool) -> io::Result<Option<Item>> {
        loop {
            let remaining = self.limit.saturating_sub(self.off);
            match parse(self.window(), remaining) {
                Parsed::End => return Ok(self.damage.take().map(Item::Damaged)),
                Parsed::Need(n) => self.ensure(n)?,
                Parsed::Damaged { skip, reason } => {
                    let region = self.damage.get_or_insert(DamagedRegion {
                        offset: self.off,
                        len: 0,
                        reason,
                    });
                    region.len += skip as u64;
                    self.off += skip as u64;
                }
                Parsed::Record { len } => {
                    // Report the damage before it first; the record is parsed again next call.
                    if let Some(region) = self.damage.take() {
                        return Ok(Some(Item::Damaged(region)));
                    }
                    let framed = framed_len(len);
                    let payload = with_payload.then(|| {
                        Bytes::copy_from_slice(&self.window()[HEADER_LEN..framed as usize])
                    });
                    let offset = self.off;
                    self.off += framed;
                    return Ok(Some(Item::Record {
                        offset,
                        framed,
                        payload,
                    }));
                }
            }
        }
    }
}

/// The reader-position file's bytes.
pub(crate) fn encode_position(p: Position) -> [u8; POSITION_LEN] {
    let mut out = [0u8; POSITION_LEN];
    out[..4].copy_from_slice(&POSITION_MAGIC);
    out[4] = POSITION_VERSION;
    out[8..16].copy_from_slice(&p.segment.to_le_bytes());
    out[16..24].copy_from_slice(&p.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode_position(bytes: &[u8]) -> Result<Position, &'static str> {
    if bytes.len() != POSITION_LEN {
        return Err("wrong size");
    }
    if bytes[..4] != POSITION_MAGIC {
        return Err("bad magic");
    }
    if crc32fast::hash(&bytes[..24]) != le_u32(bytes, 24) {
        return Err("checksum mismatch");
    }
    if bytes[4] != POSITION_VERSION {
        return Err("unknown version");
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Ok(Position {
        segment: u64_at(8),
        offset: u64_at(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, payload);
        out
    }

    /// Every item of `bytes`, parsed with the whole input in view.
    fn items(bytes: &[u8]) -> Vec<Result<Vec<u8>, (u64, u64)>> {
        let mut out = Vec::new();
        let mut off = 0usize;
        let mut damage: Option<(u64, u64)> = None;
        loop {
            match parse(&bytes[off..], (bytes.len() - off) as u64) {
                Parsed::End => break,
                Parsed::Need(n) => panic!("need {n} with everything in view"),
                Parsed::Damaged { skip, .. } => {
                    let d = damage.get_or_insert((off as u64, 0));
                    d.1 += skip as u64;
                    off += skip;
                }
                Parsed::Record { len } => {
                    if let Some(d) = damage.take() {
                        out.push(Err(d));
                    }
                    out.push(Ok(bytes[off + HEADER_LEN..off + HEADER_LEN + len].to_vec()));
                    off += HEADER_LEN + len;
                }
            }
        }
        out.extend(damage.map(Err));
        out
    }

    #[test]
    fn records_parse_back() {
        let mut bytes = record(b"hello");
        bytes.extend(record(b""));
        bytes.extend(record(&[7; 300]));
        assert_eq!(
            items(&bytes),
            [Ok(b"hello".to_vec()), Ok(vec![]), Ok(vec![7; 300])]
        );
    }

    #[test]
    fn damage_is_one_region_and_what_follows_survives() {
        let a = record(b"first record");
        let b = record(b"second record");
        let c = record(b"third record");
        for at in 0..b.len() {
            let mut bytes = [a.clone(), b.clone(), c.clone()].concat();
            bytes[a.len() + at] ^= 0x20;
            let got = items(&bytes);
            assert_eq!(
                got,
                [
                    Ok(b"first record".to_vec()),
                    Err((a.len() as u64, b.len() as u64)),
                    Ok(b"third record".to_vec())
                ],
                "flipped byte {at}"
            );
        }
    }

    #[test]
    fn torn_tail_is_damage_to_the_end() {
        let a = record(b"kept");
        let b = record(b"torn in the middle");
        for cut in 1..b.len() {
            let bytes = [a.clone(), b[..cut].to_vec()].concat();
            assert_eq!(
                items(&bytes),
                [Ok(b"kept".to_vec()), Err((a.len() as u64, cut as u64))],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn partial_windows_ask_for_more() {
        let a = record(&[1; 100]);
        assert_eq!(parse(&a[..5], a.len() as u64), Parsed::Need(HEADER_LEN));
        assert_eq!(parse(&a[..20], a.len() as u64), Parsed::Need(a.len()));
        // A magic split across the window's end is not skipped over.
        let mut garbage = vec![0u8; 10];
        garbage.extend_from_slice(&MAGIC[..2]);
        assert_eq!(
            parse(&garbage, 1000),
            Parsed::Damaged {
                skip: 9,
                reason: "no record header (bad magic)"
            }
        );
    }

    #[test]
    fn scanner_reads_in_chunks_and_grows_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let big = vec![9u8; READ_CHUNK + 10];
        let bytes = [record(b"a"), record(&big), b"junk".to_vec(), record(b"c")].concat();
        std::fs::write(&path, &bytes).unwrap();
        let first = record(b"a").len() as u64;
        let mut s = Scanner::new(File::open(&path).unwrap(), 0, first);
        let Some(Item::Record { payload, .. }) = s.next(true).unwrap() else {
            panic!()
        };
        assert_eq!(payload.unwrap(), &b"a"[..]);
        assert!(s.next(true).unwrap().is_none());
        s.set_limit(bytes.len() as u64);
        let Some(Item::Record { payload, .. }) = s.next(true).unwrap() else {
            panic!()
        };
        assert_eq!(payload.unwrap().len(), big.len());
        let Some(Item::Damaged(d)) = s.next(false).unwrap() else {
            panic!()
        };
        assert_eq!(d.len, 4);
        assert!(matches!(s.next(false).unwrap(), Some(Item::Record { .. })));
        assert!(s.next(false).unwrap().is_none());
        assert_eq!(s.offset(), bytes.len() as u64);
    }

    #[test]
    fn position_file_round_trip_and_damage() {
        let p = Position {
            segment: 12,
            offset: 345,
        };
        let bytes = encode_position(p);
        assert_eq!(decode_position(&bytes), Ok(p));
        for i in 0..POSITION_LEN {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert!(decode_position(&bad).is_err(), "byte {i}");
        }
        assert_eq!(decode_position(&bytes[..10]), Err("wrong size"));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(7), "0000000000000007.seg");
        assert_eq!(parse_segment_name("0000000000000007.seg"), Some(7));
        for foreign in ["7.seg", "000000000000000x.seg", "0000000000000007", "a.seg"] {
            assert_eq!(parse_segment_name(foreign), None, "{foreign}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_records_around_it_survive(
            before in proptest::collection::vec(any::<u8>(), 0..64),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let bytes = [record(&before), garbage.clone(), record(&after)].concat();
            let got = items(&bytes);
            let records: Vec<_> = got.iter().filter_map(|i| i.as_ref().ok()).collect();
            prop_assert_eq!(records.first().copied(), Some(&before));
            prop_assert_eq!(records.last().copied(), Some(&after));
            let _ = items(&garbage);
        }
    }
}
