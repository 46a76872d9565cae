//! The one error type of the storage crate. User errors (a location that cannot be parsed, a
//! scheme that is not supported, an object that does not exist) are distinct variants from the
//! environment's (the store refused or could not be reached, the local disk failed).

use std::path::PathBuf;

/// Everything that can go wrong parsing a location or talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// User error: the location given for `what` (a flag or configuration field) is malformed.
    #[error("invalid {what} `{location}`: {message}")]
    InvalidLocation {
        what: String,
        location: String,
        message: String,
    },
    /// User error: a URL scheme this build does not support.
    #[error(
        "unsupported {what} `{location}`: scheme `{scheme}` is not supported; use a local path, \
         file:// or s3:// (gs:// and azure are not built in)"
    )]
    UnsupportedScheme {
        what: String,
        location: String,
        scheme: String,
    },
    /// User error: something that must exist in the store does not.
    #[error("{0}")]
    NotFound(String),
    /// The object store failed or could not be reached (after its retries).
    #[error("object store error on {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
    /// A local file system operation failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Internal error: the storage runtime could not be started.
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl StorageError {
    /// True for errors caused by the user's input rather than by the store or the machine.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StorageError::InvalidLocation { .. }
                | StorageError::UnsupportedScheme { .. }
                | StorageError::NotFound(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}
