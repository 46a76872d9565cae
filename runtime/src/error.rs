//! The one error type of the runtime crate. User errors (a job that cannot be run as written)
//! are separate variants from host problems (a backend that cannot start) and from internal
//! bugs, so callers can tell "fix your request" from "this host is broken" from "report a bug".

use std::io;

use sandstorm_features::IsolationBackend;

/// Everything that can go wrong while running a job.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The job breaks a rule (no command and no code, unsafe file path, zero timeout, ...).
    /// A user error: the same job fails the same way on every backend.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The interpreter for inline code is not installed on this host. A host configuration
    /// problem, reported before anything is spawned.
    #[error("interpreter `{program}` for language `{language}` was not found in {search_path}")]
    InterpreterNotFound {
        program: &'static str,
        language: &'static str,
        search_path: &'static str,
    },
    /// The backend cannot run jobs on this host (e.g. `bwrap` is not installed).
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        backend: IsolationBackend,
        reason: String,
    },
    /// The job needs something this backend cannot give (a GPU): it was not run. Not a user
    /// error, since another candidate may have it; nothing about the backend's health either.
    #[error("backend `{backend}` cannot run this job: {reason}")]
    Unsupported {
        backend: IsolationBackend,
        reason: String,
    },
    /// The job directory could not be created or filled (disk full, permissions, ...).
    #[error("could not prepare the job directory: {0}")]
    JobDir(#[source] io::Error),
    /// The operating system refused to start the process (fork or exec failed).
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// A bug in Sandstorm or a broken invariant of the host (e.g. our child was reaped by
    /// someone else). Not caused by the job.
    #[error("internal runtime error: {0}")]
    Internal(String),
}

impl RuntimeError {
    /// Whether the error is the caller's to fix (the job itself is not runnable as written).
    pub fn is_user_error(&self) -> bool {
        matches!(self, RuntimeError::InvalidJob(_))
    }
}
