//! Parquet I/O for telemetry: atomic zstd writes, appending rows as new files, and reading a
//! directory of files back as batches with the canonical telemetry schema.
//!
//! Every write goes to a hidden temporary file in the target directory first and is renamed
//! into place, so a reader never sees a half-written `*.parquet` file. Readers skip hidden
//! files, which also skips temporaries left by a crashed writer.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sandstorm_features::telemetry::{self, TELEMETRY_SCHEMA_VERSION, TelemetryRecord};
use time::OffsetDateTime;

use crate::error::DatasetsError;

/// zstd level of every file written: a good size/speed trade-off for telemetry.
const ZSTD_LEVEL: i32 = 3;
/// Rows per batch when reading.
const READ_BATCH_ROWS: usize = 65_536;
/// Schema metadata key holding the telemetry schema version.
const VERSION_KEY: &str = "sandstorm.telemetry.version";

/// Writes `batches` (which must share one schema) to `path` as one zstd-compressed Parquet file.
///
/// The file is written to a hidden temporary file beside `path`, synced, then renamed over
/// `path`, so `path` either does not exist or is complete. Missing parent directories are
/// created.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<(), DatasetsError> {
    let Some(first) = batches.first() else {
        return Err(DatasetsError::NothingToWrite {
            path: path.to_owned(),
            what: "the list of batches",
        });
    };
    let schema = first.schema();
    if let Some(index) = batches.iter().position(|b| b.schema() != schema) {
        return Err(DatasetsError::MixedSchemas {
            path: path.to_owned(),
            index,
        });
    }
    let Some(file_name) = path.file_name() else {
        return Err(DatasetsError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        ));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| DatasetsError::io(&parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = write_file(&tmp, &schema, batches)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| DatasetsError::io(path, e)));
    if result.is_err() {
        // Best effort: the temporary file is hidden from readers anyway.
        let _ = fs::remove_file(&tmp);
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    tracing::debug!(path = %path.display(), rows, "wrote parquet file");
    result
}

fn write_file(
    tmp: &Path,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), DatasetsError> {
    let parquet_err = |source| DatasetsError::WriteParquet {
        path: tmp.to_owned(),
        source,
    };
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(parquet_err)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let file = File::create(tmp).map_err(|e| DatasetsError::io(tmp, e))?;
    let mut writer =
        ArrowWriter::try_new(file, Arc::clone(schema), Some(props)).map_err(parquet_err)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_err)?;
    }
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all().map_err(|e| DatasetsError::io(tmp, e))
}

/// Reads every `*.parquet` file under `dir` (recursively, sorted by path, hidden files and
/// directories skipped) and returns their rows as batches with exactly the canonical
/// [`telemetry::schema`]: columns in canonical order, compatible types (large strings,
/// dictionaries, string views, large lists, other time zones) cast, extra columns dropped.
///
/// Errors name the file and, for schema problems, the column.
pub fn read_parquet_dir(dir: &Path) -> Result<Vec<RecordBatch>, DatasetsError> {
    if !dir.is_dir() {
        return Err(DatasetsError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let files = parquet_files(dir)?;
    if files.is_empty() {
        return Err(DatasetsError::NoParquetFiles {
            dir: dir.to_owned(),
        });
    }
    let mut out = Vec::new();
    for path in &files {
        read_file(path, &mut out)?;
    }
    let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
    tracing::debug!(dir = %dir.display(), files = files.len(), rows, "read telemetry");
    Ok(out)
}

/// Reads the telemetry at `location`: a local directory ([`read_parquet_dir`]) or every
/// `*.parquet` object below an object-store prefix (names with a hidden segment skipped),
/// downloaded into memory, in name order. Errors name the file or object.
pub fn read_parquet_location(
    location: &sandstorm_storage::Location,
) -> Result<Vec<RecordBatch>, DatasetsError> {
    let remote = match location {
        sandstorm_storage::Location::Local(dir) => return read_parquet_dir(dir),
        sandstorm_storage::Location::Remote(remote) => remote,
    };
    let names: Vec<String> = remote
        .list()?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".parquet") && !n.split('/').any(|p| p.starts_with('.')))
        .collect();
    if names.is_empty() {
        return Err(DatasetsError::NoParquetFiles {
            dir: PathBuf::from(remote.url()),
        });
    }
    let mut out = Vec::new();
    for name in &names {
        let url = PathBuf::from(remote.object_url(name));
        let bytes = remote
            .get(name)?
            .ok_or_else(|| DatasetsError::NotADirectory { path: url.clone() })?;
        read_from(&url, bytes, &mut out)?;
    }
    tracing::debug!(location = %remote.url(), files = names.len(), "read telemetry");
    Ok(out)
}

fn read_file(path: &Path, out: &mut Vec<RecordBatch>) -> Result<(), DatasetsError> {
    let file = File::open(path).map_err(|e| DatasetsError::io(path, e))?;
    read_from(path, file, out)
}

/// Reads one Parquet file (`path` names it in errors) from `reader`.
fn read_from<R: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    reader: R,
    out: &mut Vec<RecordBatch>,
) -> Result<(), DatasetsError> {
    let unreadable = |source| DatasetsError::UnreadableParquet {
        path: path.to_owned(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(unreadable)?;
    let file_schema = Arc::clone(builder.schema());
    let not_telemetry = |message: String| DatasetsError::NotTelemetry {
        path: path.to_owned(),
        message,
    };
    if let Some(version) = file_schema.metadata().get(VERSION_KEY)
        && version != TELEMETRY_SCHEMA_VERSION
    {
        return Err(not_telemetry(format!(
            "telemetry schema version {version}, this build reads version {TELEMETRY_SCHEMA_VERSION}"
        )));
    }
    telemetry::check_schema(&file_schema).map_err(|e| not_telemetry(schema_message(e)))?;
    let reader = builder
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(unreadable)?;
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(e.into()))?;
        out.push(conform(&batch).map_err(not_telemetry)?);
    }
    Ok(())
}

/// The message of a features schema error without its generic prefix.
fn schema_message(e: sandstorm_features::FeaturesError) -> String {
    match e {
        sandstorm_features::FeaturesError::TelemetrySchema(m) => m,
        other => other.to_string(),
    }
}

/// `batch` rearranged and cast to the canonical telemetry schema.
fn conform(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let schema = telemetry::schema();
    if batch.schema_ref().fields() == schema.fields() {
        return RecordBatch::try_new(schema, batch.columns().to_vec()).map_err(|e| e.to_string());
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| format!("column `{name}` is missing"))?;
        if column.data_type() == field.data_type() {
            columns.push(Arc::clone(column));
        } else {
            let cast = cast(column, field.data_type()).map_err(|e| {
                format!(
                    "column `{name}` of type {} cannot be read as {}: {e}",
                    column.data_type(),
                    field.data_type()
                )
            })?;
            columns.push(cast);
        }
        if !field.is_nullable() && columns.last().is_some_and(|c| c.null_count() > 0) {
            return Err(format!("column `{name}` holds nulls but must not"));
        }
    }
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

/// Every `*.parquet` file under `dir`, recursively, sorted; hidden entries are skipped and
/// symbolic links to directories are not followed.
fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, DatasetsError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current).map_err(|e| DatasetsError::io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DatasetsError::io(&current, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| DatasetsError::io(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if name.ends_with(".parquet") && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The first `*.parquet` file under `dir`, if `dir` exists and holds one.
pub(crate) fn first_parquet_file(dir: &Path) -> Result<Option<PathBuf>, DatasetsError> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(parquet_files(dir)?.into_iter().next())
}

/// Writes `records` as one new file `runs-<utc timestamp>-<uuid>.parquet` in `dir` (created
/// when missing), atomically, and returns its path. Each call makes a new file, so concurrent
/// writers never collide.
pub fn append_records(dir: &Path, records: &[TelemetryRecord]) -> Result<PathBuf, DatasetsError> {
    if records.is_empty() {
        return Err(DatasetsError::NothingToWrite {
            path: dir.to_owned(),
            what: "the list of records",
        });
    }
    let t = OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
    let path = dir.join(format!(
        "runs-{stamp}-{}.parquet",
        uuid::Uuid::new_v4().simple()
    ));
    let batch = telemetry::to_record_batch(records)?;
    write_parquet(&path, &[batch])?;
    tracing::info!(path = %path.display(), rows = records.len(), "appended telemetry");
    Ok(path)
}
