//! Compaction: a sealed write-ahead-log segment becomes Parquet files partitioned by request
//! date, `date=YYYY-MM-DD/part-<writer>-<segment>.parquet`.
//!
//! Compaction is idempotent. The name of every Parquet file is derived from the segment it
//! comes from, each file is published atomically (temporary file, fsync, rename, fsync of the
//! directory), and the segment is deleted only after all of its files are durable. A crash at
//! any point leaves either the segment (compacted again on recovery, producing the same file
//! names; files already published are kept, not written twice) or the published files and no
//! segment, so no row is lost and none is duplicated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use sandstorm_features::telemetry;
use time::OffsetDateTime;

use super::segment::{read_segment, sync_dir, truncate_torn_tail};
use crate::error::DatasetsError;
use crate::parquet_io::write_parquet;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Hidden directory of the bytes of torn tails cut off segments, kept for inspection.
pub(crate) const QUARANTINE_DIR: &str = ".quarantine";

/// What compacting one segment did.
#[derive(Debug, Default)]
pub(crate) struct SegmentCompaction {
    pub(crate) rows: usize,
    pub(crate) torn_tail: bool,
    /// Where the bytes of a non-zero torn tail were kept.
    pub(crate) kept_tail: Option<PathBuf>,
    /// Every Parquet file holding the segment's rows (including files an earlier, interrupted
    /// compaction had already published).
    pub(crate) files: Vec<PathBuf>,
}

/// The partition directory name of the UTC day `day` (days since the Unix epoch).
pub(crate) fn partition_name(day: i64) -> String {
    let date = OffsetDateTime::from_unix_timestamp(day * 86_400)
        .map(OffsetDateTime::date)
        .unwrap_or(time::Date::MIN);
    format!(
        "date={:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Compacts segment `segment_id` of writer `writer_id` (file `path` in `wal_dir`) into Parquet
/// under `root`, then deletes the segment.
pub(crate) fn compact_segment(
    root: &Path,
    wal_dir: &Path,
    writer_id: &str,
    segment_id: u64,
    path: &Path,
) -> Result<SegmentCompaction, DatasetsError> {
    let contents = read_segment(path)?;
    let mut out = SegmentCompaction {
        rows: contents.rows(),
        torn_tail: contents.is_torn(),
        kept_tail: None,
        files: Vec::new(),
    };
    if contents.is_torn() {
        let keep = root.join(QUARANTINE_DIR).join(format!(
            "{writer_id}-{segment_id:08}-at-{}.torn",
            contents.valid_len
        ));
        out.kept_tail = truncate_torn_tail(path, contents.valid_len, &keep)?;
    }
    if out.rows > 0 {
        let batch = concat_batches(&telemetry::schema(), &contents.batches)?;
        for (day, indices) in rows_by_day(&batch)? {
            let partition = root.join(partition_name(day));
            let file = partition.join(format!("part-{writer_id}-{segment_id:08}.parquet"));
            if file.exists() {
                // Published by an earlier compaction that crashed before deleting the segment:
                // the file was renamed into place complete, so it holds exactly these rows.
                tracing::info!(file = %file.display(), "segment partition already compacted");
            } else {
                let new_partition = !partition.exists();
                let part = take_record_batch(&batch, &UInt32Array::from(indices))?;
                write_parquet(&file, &[part])?;
                sync_dir(&partition)?;
                if new_partition {
                    sync_dir(root)?;
                }
            }
            out.files.push(file);
        }
    }
    std::fs::remove_file(path).map_err(|e| DatasetsError::io(path, e))?;
    sync_dir(wal_dir)?;
    tracing::debug!(
        segment = %path.display(),
        rows = out.rows,
        files = out.files.len(),
        "compacted telemetry segment"
    );
    Ok(out)
}

/// Row indices of `batch` grouped by the UTC day of `ts_request_us`.
fn rows_by_day(batch: &RecordBatch) -> Result<BTreeMap<i64, Vec<u32>>, DatasetsError> {
    let ts = batch
        .column_by_name("ts_request_us")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| {
            DatasetsError::Telemetry(sandstorm_features::FeaturesError::TelemetrySchema(
                "column `ts_request_us` is not a microsecond timestamp".to_owned(),
            ))
        })?;
    let mut days: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for i in 0..ts.len() {
        let day = ts.value(i).div_euclid(MICROS_PER_DAY);
        days.entry(day).or_default().push(i as u32);
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_are_utc_dates() {
        assert_eq!(partition_name(0), "date=1970-01-01");
        assert_eq!(partition_name(-1), "date=1969-12-31");
        assert_eq!(partition_name(20_422), "date=2025-11-30");
    }
}
