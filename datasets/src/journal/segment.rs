//! Write-ahead-log segments: Arrow IPC stream messages in checksummed frames.
//!
//! A segment file is an 8-byte header ([`SEGMENT_MAGIC`]) followed by frames. A frame is
//! `magic (4) | payload length (u32 LE) | CRC32 of the payload (u32 LE) | payload`; the payload
//! of the first frame is the Arrow IPC schema message, every other payload one Arrow IPC
//! record-batch message (one group commit). Concatenating the payloads gives a valid Arrow IPC
//! stream, so a segment is decoded with Arrow's own [`StreamDecoder`].
//!
//! Reading distinguishes a *torn tail* — the last frame is incomplete or fails its checksum and
//! no valid frame follows it, which is what a crash in the middle of a write leaves — from
//! *corruption*: a bad frame followed by valid ones, a bad header, or a frame Arrow cannot
//! decode. A torn tail was never acknowledged (acknowledgement waits for the fsync of the whole
//! frame), so it is cut off; corruption is an error and the file is left untouched.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use sandstorm_features::telemetry;

use crate::error::DatasetsError;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SSTWAL1\n";
/// First bytes of every frame.
const FRAME_MAGIC: [u8; 4] = *b"SFRM";
/// Bytes of a frame header.
const FRAME_HEADER: usize = 12;
/// File name extension of segments.
pub(crate) const SEGMENT_EXT: &str = "seg";

/// The file name of segment `id`.
pub(crate) fn segment_file_name(id: u64) -> String {
    format!("{id:020}.{SEGMENT_EXT}")
}

/// The id of a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The open segment a writer appends to.
pub(crate) struct SegmentWriter {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    file: File,
    ipc: StreamWriter<Vec<u8>>,
    pub(crate) bytes: u64,
    pub(crate) rows: u64,
    pub(crate) created: Instant,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("bytes", &self.bytes)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl SegmentWriter {
    /// Creates segment `id` in `dir` (which must not hold it yet), writes the header and the
    /// schema frame, and makes the file and its directory entry durable.
    pub(crate) fn create(dir: &Path, id: u64) -> Result<Self, DatasetsError> {
        let path = dir.join(segment_file_name(id));
        let io = |e| DatasetsError::io(&path, e);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let mut ipc = StreamWriter::try_new(Vec::new(), &telemetry::schema())?;
        let schema_message = std::mem::take(ipc.get_mut());
        let mut bytes =
            Vec::with_capacity(SEGMENT_MAGIC.len() + FRAME_HEADER + schema_message.len());
        bytes.extend_from_slice(SEGMENT_MAGIC);
        push_frame(&mut bytes, &schema_message);
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(dir)?;
        Ok(Self {
            id,
            path,
            file,
            ipc,
            bytes: bytes.len() as u64,
            rows: 0,
            created: Instant::now(),
        })
    }

    /// Appends `batch` as one frame and returns once it is durable (`fdatasync`).
    pub(crate) fn append(&mut self, batch: &RecordBatch) -> Result<(), DatasetsError> {
        self.ipc.write(batch)?;
        let message = std::mem::take(self.ipc.get_mut());
        if u32::try_from(message.len()).is_err() {
            return Err(DatasetsError::io(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a commit of {} bytes exceeds the 4 GiB frame limit",
                        message.len()
                    ),
                ),
            ));
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + message.len());
        push_frame(&mut frame, &message);
        let io = |e| DatasetsError::io(&self.path, e);
        self.file.write_all(&frame).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.bytes += frame.len() as u64;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// `fsync` of a directory, which makes the creation, rename or removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DatasetsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DatasetsError::io(dir, e))
}

/// What a segment file holds.
#[derive(Debug)]
pub(crate) struct SegmentContents {
    /// One batch per committed frame, in commit order.
    pub(crate) batches: Vec<RecordBatch>,
    /// Length of the valid prefix of the file.
    pub(crate) valid_len: u64,
    /// Length of the file as found.
    pub(crate) file_len: u64,
}

impl SegmentContents {
    pub(crate) fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    pub(crate) fn is_torn(&self) -> bool {
        self.valid_len < self.file_len
    }
}

/// Reads segment `path`, stopping at a torn tail (see the module documentation). Fails on
/// corruption, naming the file and byte offset.
pub(crate) fn read_segment(path: &Path) -> Result<SegmentContents, DatasetsError> {
    let data = std::fs::read(path).map_err(|e| DatasetsError::io(path, e))?;
    let corrupt = |offset: usize, message: String| DatasetsError::CorruptSegment {
        path: path.to_owned(),
        offset: offset as u64,
        message,
    };
    let file_len = data.len() as u64;
    if data.len() < SEGMENT_MAGIC.len() {
        // A crash while the header was being written: nothing was ever acknowledged.
        if SEGMENT_MAGIC.starts_with(&data) || data.iter().all(|&b| b == 0) {
            return Ok(SegmentContents {
                batches: Vec::new(),
                valid_len: 0,
                file_len,
            });
        }
        return Err(corrupt(0, "the segment header is damaged".to_owned()));
    }
    if &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err(corrupt(
            0,
            "the file does not start with the segment header".to_owned(),
        ));
    }
    let mut pos = SEGMENT_MAGIC.len();
    let mut payloads = Vec::new();
    while pos < data.len() {
        match parse_frame(&data, pos) {
            Ok((payload, next)) => {
                payloads.push(payload);
                pos = next;
            }
            Err(reason) => {
                if let Some(later) = next_valid_frame(&data, pos + 1) {
                    return Err(corrupt(
                        pos,
                        format!(
                            "{reason}, but a valid frame follows at byte {later}: acknowledged \
                             rows may follow the damage, so the file was left untouched"
                        ),
                    ));
                }
                tracing::warn!(
                    path = %path.display(),
                    offset = pos,
                    file_len,
                    %reason,
                    "torn tail in telemetry wal segment"
                );
                break;
            }
        }
    }
    let valid_len = pos as u64;
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    let mut offset = SEGMENT_MAGIC.len();
    for (index, range) in payloads.into_iter().enumerate() {
        let mut buffer = Buffer::from(&data[range.clone()]);
        while !buffer.is_empty() {
            match decoder.decode(&mut buffer) {
                Ok(Some(batch)) => {
                    // The schema message is only applied once the next message arrives, so
                    // the schema is checked on each batch.
                    let schema = telemetry::schema();
                    if batch.schema_ref().fields() != schema.fields() {
                        return Err(corrupt(
                            offset,
                            "the segment's schema is not this build's telemetry schema".to_owned(),
                        ));
                    }
                    batches.push(batch.with_schema(schema)?);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(corrupt(
                        offset,
                        format!("frame {index} is not an arrow ipc message: {e}"),
                    ));
                }
            }
        }
        offset = range.end;
    }
    Ok(SegmentContents {
        batches,
        valid_len,
        file_len,
    })
}

/// The payload range and the end of the frame at `pos`, or why there is no valid frame there.
fn parse_frame(data: &[u8], pos: usize) -> Result<(std::ops::Range<usize>, usize), String> {
    let rest = &data[pos..];
    if rest.len() < FRAME_HEADER {
        return Err(format!(
            "incomplete frame header ({} of {FRAME_HEADER} bytes)",
            rest.len()
        ));
    }
    if rest[..4] != FRAME_MAGIC {
        return Err("no frame marker".to_owned());
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    let start = pos + FRAME_HEADER;
    let Some(end) = start.checked_add(len).filter(|&end| end <= data.len()) else {
        return Err(format!(
            "frame of {len} bytes runs past the end of the file ({} bytes left)",
            data.len() - start
        ));
    };
    if crc32fast::hash(&data[start..end]) != crc {
        return Err("frame checksum mismatch".to_owned());
    }
    Ok((start..end, end))
}

/// The offset of the first valid frame at or after `from`.
fn next_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while pos + FRAME_HEADER <= data.len() {
        let found = data[pos..]
            .windows(FRAME_MAGIC.len())
            .position(|w| w == FRAME_MAGIC)?;
        let at = pos + found;
        if parse_frame(data, at).is_ok() {
            return Some(at);
        }
        pos = at + 1;
    }
    None
}

/// Cuts a torn tail off segment `path` so that it ends with its last complete frame. Unless
/// the tail is all zeros (space allocated, never written), its bytes are first kept in file
/// `keep` (made durable), so that even a damaged last frame is never silently destroyed;
/// returns that file.
pub(crate) fn truncate_torn_tail(
    path: &Path,
    valid_len: u64,
    keep: &Path,
) -> Result<Option<PathBuf>, DatasetsError> {
    let io = |e| DatasetsError::io(path, e);
    let data = std::fs::read(path).map_err(io)?;
    let tail = data.get(valid_len as usize..).unwrap_or_default();
    let kept = if tail.iter().any(|&b| b != 0) {
        let dir = keep.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| DatasetsError::io(dir, e))?;
        let mut file = File::create(keep).map_err(|e| DatasetsError::io(keep, e))?;
        file.write_all(tail)
            .and_then(|()| file.sync_all())
            .map_err(|e| DatasetsError::io(keep, e))?;
        sync_dir(dir)?;
        tracing::warn!(
            segment = %path.display(),
            offset = valid_len,
            bytes = tail.len(),
            kept = %keep.display(),
            "cut the torn tail of a telemetry wal segment; its bytes are kept"
        );
        Some(keep.to_owned())
    } else {
        None
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(valid_len).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let cfg = crate::SimulatorConfig {
            rows,
            seed: 7,
            ..crate::SimulatorConfig::default()
        };
        let records: Vec<_> =
            crate::simulate(&sandstorm_features::Catalog::default_catalog(), &cfg).collect();
        telemetry::to_record_batch(&records).expect("batch")
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.arrow"), None);
    }

    #[test]
    fn frames_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = SegmentWriter::create(dir.path(), 1).expect("create");
        w.append(&batch(3)).expect("append");
        w.append(&batch(5)).expect("append");
        let contents = read_segment(&w.path).expect("read");
        assert_eq!(contents.batches.len(), 2);
        assert_eq!(contents.rows(), 8);
        assert!(!contents.is_torn());
        assert_eq!(contents.valid_len, w.bytes);
    }

    #[test]
    fn every_torn_tail_is_cut_at_the_last_complete_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = SegmentWriter::create(dir.path(), 1).expect("create");
        w.append(&batch(2)).expect("append");
        let after_first = w.bytes;
        w.append(&batch(4)).expect("append");
        let full = std::fs::read(&w.path).expect("read");
        // Every prefix that ends inside the second frame keeps exactly the first frame.
        for len in (after_first as usize..full.len()).step_by(97) {
            let path = dir.path().join(segment_file_name(2));
            std::fs::write(&path, &full[..len]).expect("write");
            let contents = read_segment(&path).expect("torn tail is not an error");
            assert_eq!(contents.rows(), 2, "prefix of {len} bytes");
            assert_eq!(contents.valid_len, after_first);
        }
        // A tail of zeros (space allocated, data never written) is torn too.
        let mut zeros = full[..after_first as usize].to_vec();
        zeros.extend(std::iter::repeat_n(0u8, 4096));
        let path = dir.path().join(segment_file_name(3));
        std::fs::write(&path, &zeros).expect("write");
        let contents = read_segment(&path).expect("zeros are a torn tail");
        assert_eq!(contents.rows(), 2);
        let keep = dir.path().join("kept");
        let kept = truncate_torn_tail(&path, contents.valid_len, &keep).expect("truncate");
        assert_eq!(kept, None, "a zero tail is not kept");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            after_first,
            "file cut at the last complete frame"
        );
    }

    #[test]
    fn damage_before_a_valid_frame_is_an_error_not_a_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = SegmentWriter::create(dir.path(), 1).expect("create");
        w.append(&batch(2)).expect("append");
        let after_first = w.bytes as usize;
        w.append(&batch(4)).expect("append");
        let mut bytes = std::fs::read(&w.path).expect("read");
        // Flip a byte inside the first record-batch frame's payload.
        bytes[after_first - 10] ^= 0xff;
        std::fs::write(&w.path, &bytes).expect("write");
        let err = read_segment(&w.path).expect_err("corruption");
        let message = err.to_string();
        assert!(
            matches!(err, DatasetsError::CorruptSegment { .. }),
            "{message}"
        );
        assert!(message.contains("checksum mismatch"), "{message}");
        assert!(message.contains(&w.path.display().to_string()), "{message}");
        // The file was left untouched.
        assert_eq!(std::fs::read(&w.path).expect("read"), bytes);
    }

    #[test]
    fn a_foreign_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(segment_file_name(1));
        std::fs::write(&path, b"PAR1 this is not a segment at all").expect("write");
        let err = read_segment(&path).expect_err("foreign");
        assert!(err.to_string().contains("segment header"), "{err}");
    }
}
