//! The one error type of the datasets crate. User errors (a missing or empty directory, a file
//! that is not telemetry, a bad simulator setting, a catalog the simulator cannot use) are
//! distinct variants from internal ones (Arrow or Parquet refusing data Sandstorm built).

use std::io;
use std::path::PathBuf;

use sandstorm_features::FeaturesError;

/// Everything that can go wrong while simulating, writing or reading telemetry.
#[derive(Debug, thiserror::Error)]
pub enum DatasetsError {
    /// User error: the directory to read holds no `*.parquet` file.
    #[error("no parquet files in {}", dir.display())]
    NoParquetFiles { dir: PathBuf },
    /// User error: the path to read does not exist or is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// User error: a Parquet file does not hold telemetry (missing column, wrong type, other
    /// telemetry schema version).
    #[error("{} is not sandstorm telemetry: {message}", path.display())]
    NotTelemetry { path: PathBuf, message: String },
    /// User error: a file named `*.parquet` that Parquet cannot read.
    #[error("{} is not a readable parquet file: {source}", path.display())]
    UnreadableParquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    /// User error: the simulator's output directory already holds Parquet files, which a
    /// reader of the directory would mix with the new ones.
    #[error(
        "output directory {} already holds parquet files (e.g. {}); choose an empty directory",
        dir.display(),
        example.display()
    )]
    OutputNotEmpty { dir: PathBuf, example: PathBuf },
    /// User error: an imported dataset file is missing something or holds a bad value.
    #[error("{}: {message}", path.display())]
    InvalidDataset { path: PathBuf, message: String },
    /// User error: a simulator setting is out of range.
    #[error("invalid simulator config: {0}")]
    InvalidConfig(String),
    /// User error: the catalog offers no candidate the simulator can route requests to.
    #[error("catalog unusable for simulation: {0}")]
    CatalogUnusable(String),
    /// User error: nothing was given to write.
    #[error("nothing to write to {}: {what} is empty", path.display())]
    NothingToWrite { path: PathBuf, what: &'static str },
    /// A telemetry location that cannot be parsed (user error), or an object store that
    /// failed (docs/telemetry.md, "Object stores").
    #[error(transparent)]
    Storage(#[from] sandstorm_storage::StorageError),
    /// Damaged data: a write-ahead-log segment holds bytes that are not a torn tail (a bad
    /// header, or a damaged frame followed by valid ones). The file is left untouched.
    #[error("telemetry wal segment {} is corrupt at byte {offset}: {message}", path.display())]
    CorruptSegment {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    /// Internal error: rows handed to the telemetry writer could not be encoded as Arrow (they
    /// were not written; other appends are unaffected).
    #[error("internal error: telemetry rows rejected: {0}")]
    RejectedRows(String),
    /// The telemetry writer stopped after a failed write or fsync (the state of its segment is
    /// unknown, so it accepts no more rows; reopen it to recover).
    #[error("telemetry writer stopped after an earlier failure: {0}")]
    WriterFailed(String),
    /// A file system operation failed (permissions, disk full, ...).
    #[error("i/o error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Internal error: Parquet refused to encode batches Sandstorm built.
    #[error("internal parquet error writing {}: {source}", path.display())]
    WriteParquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    /// Internal error: batches handed to one write disagree on their schema.
    #[error("internal error writing {}: batch {index} has a different schema from batch 0", path.display())]
    MixedSchemas { path: PathBuf, index: usize },
    /// Internal error: building a telemetry batch from rows failed.
    #[error("internal telemetry error: {0}")]
    Telemetry(#[from] FeaturesError),
    /// Internal error: Arrow refused an operation on data Sandstorm built.
    #[error("internal arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl DatasetsError {
    /// True for errors caused by the user's input (paths, files, settings, catalog) rather than
    /// by a bug or the environment.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DatasetsError::NoParquetFiles { .. }
                | DatasetsError::NotADirectory { .. }
                | DatasetsError::NotTelemetry { .. }
                | DatasetsError::UnreadableParquet { .. }
                | DatasetsError::OutputNotEmpty { .. }
                | DatasetsError::InvalidConfig(_)
                | DatasetsError::InvalidDataset { .. }
                | DatasetsError::CatalogUnusable(_)
                | DatasetsError::NothingToWrite { .. }
        ) || matches!(self, DatasetsError::Storage(e) if e.is_user_error())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DatasetsError::Io {
            path: path.into(),
            source,
        }
    }
}
