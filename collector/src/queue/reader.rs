//! The reading side: [`fill`] reads the records after the reader's cursor into the read-ahead
//! buffer (`State::ahead`), stepping over damage, and moves on to the next segment when one is
//! finished. It runs inside `spawn_blocking` with the `reader` mutex held, taking the `state`
//! mutex only briefly to see how far it may read and to hand over what it read.

use std::fs::File;
use std::sync::PoisonError;

use super::format::{Item, Position, Scanner, segment_name};
use super::{Cursor, Record, RecordId, Shared};

/// One fill stops after this many records or bytes of payload.
const MAX_AHEAD_RECORDS: usize = 1024;
const MAX_AHEAD_BYTES: usize = 4 << 20;

/// The file reader: where reading continues, and the segment open for it.
#[derive(Debug)]
pub(crate) struct FileReader {
    cursor: Cursor,
    open: Option<(u64, Scanner)>,
}

impl FileReader {
    pub(crate) fn new(cursor: Cursor) -> Self {
        Self { cursor, open: None }
    }

    /// Where the next fill starts.
    pub(crate) fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Continues after `cursor` in the same segment: the records before it were handed to
    /// the readers without being read here.
    pub(crate) fn skip_to(&mut self, cursor: Cursor) {
        debug_assert_eq!(cursor.pos.segment, self.cursor.pos.segment);
        self.cursor = cursor;
        // The scanner (if open) is still before the skipped records.
        self.open = None;
    }

    fn move_to(&mut self, (segment, base): (u64, u64)) {
        self.cursor = Cursor {
            pos: Position { segment, offset: 0 },
            logical: base,
        };
        self.open = None;
    }
}

/// Where the reader may read in its current segment.
struct Bounds {
    limit: u64,
    /// The segment is no longer written: at its end, go to `next` (index, logical base).
    finished: bool,
    next: (u64, u64),
}

fn bounds(shared: &Shared, segment: u64) -> Bounds {
    let st = shared.state();
    if segment < st.write.pos.segment {
        let next = st
            .segments
            .range(segment + 1..)
            .next()
            .map(|(&i, &b)| (i, b))
            .filter(|&(i, _)| i < st.write.pos.segment)
            .unwrap_or((st.write.pos.segment, st.write_base));
        Bounds {
            limit: st.finished_len(segment),
            finished: true,
            next,
        }
    } else {
        Bounds {
            limit: st.write.pos.offset,
            finished: false,
            next: (segment, 0),
        }
    }
}

/// Reads ahead from where the reader stopped, up to what the writer has published.
pub(crate) fn fill(shared: &Shared) {
    let mut reader = shared.reader.lock().unwrap_or_else(PoisonError::into_inner);
    let mut records: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    let mut damaged = 0u64;
    let mut errors = 0u64;
    loop {
        let segment = reader.cursor.pos.segment;
        let b = bounds(shared, segment);
        if reader.cursor.pos.offset >= b.limit {
            if b.finished {
                reader.move_to(b.next);
                continue;
            }
            break;
        }
        if reader.open.as_ref().map(|(i, _)| *i) != Some(segment) {
            let path = shared.dir.join(segment_name(segment));
            match File::open(&path) {
                Ok(f) => {
                    reader.open =
                        Some((segment, Scanner::new(f, reader.cursor.pos.offset, b.limit)))
                }
                Err(e) => {
                    errors += 1;
                    tracing::error!("cannot open queue segment {}: {e}", path.display());
                    if b.finished {
                        tracing::error!("skipping the rest of {}", path.display());
                        reader.move_to(b.next);
                        continue;
                    }
                    break;
                }
            }
        }
        let base = reader.cursor.logical - reader.cursor.pos.offset;
        let Some((_, scanner)) = reader.open.as_mut() else {
            break;
        };
        scanner.set_limit(b.limit);
        match scanner.next(true) {
            Ok(Some(Item::Record {
                offset,
                framed,
                payload,
            })) => {
                let data = payload.unwrap_or_default();
                bytes += data.len();
                records.push(Record {
                    id: RecordId {
                        pos: Position { segment, offset },
                        framed,
                        logical: base + offset,
                    },
                    data,
                    companion: None,
                });
                reader.cursor = Cursor {
                    pos: Position {
                        segment,
                        offset: offset + framed,
                    },
                    logical: base + offset + framed,
                };
                if records.len() >= MAX_AHEAD_RECORDS || bytes >= MAX_AHEAD_BYTES {
                    break;
                }
            }
            Ok(Some(Item::Damaged(r))) => {
                tracing::debug!(
                    "queue segment {segment}: skipping {} damaged bytes at offset {} ({})",
                    r.len,
                    r.offset,
                    r.reason
                );
                damaged += r.len;
                let offset = r.offset + r.len;
                reader.cursor = Cursor {
                    pos: Position { segment, offset },
                    logical: base + offset,
                };
            }
            Ok(None) => {
                let offset = scanner.offset().max(b.limit);
                reader.cursor = Cursor {
                    pos: Position { segment, offset },
                    logical: base + offset,
                };
            }
            Err(e) => {
                errors += 1;
                let path = shared.dir.join(segment_name(segment));
                tracing::error!(
                    "cannot read queue segment {} at offset {}: {e}",
                    path.display(),
                    reader.cursor.pos.offset
                );
                if b.finished {
                    tracing::error!("skipping the rest of {}", path.display());
                    reader.move_to(b.next);
                    continue;
                }
                reader.open = None;
                break;
            }
        }
    }
    let mut st = shared.state();
    st.ahead.extend(records);
    st.read_to = reader.cursor;
    st.damaged_bytes_skipped += damaged;
    st.read_errors += errors;
}
