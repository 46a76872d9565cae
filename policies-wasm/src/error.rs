//! The crate's error type: what went wrong loading, verifying, publishing or building a policy.
//! A policy that fails while it runs is not an error of this crate but a [`crate::PolicyFailure`]
//! in its outcome, because routing goes on under the policy's failure mode.

use std::path::PathBuf;

/// Errors of the policy host, registry and authoring tools.
#[derive(Debug, thiserror::Error)]
pub enum PoliciesError {
    /// The module is larger than the host accepts.
    #[error("policy module {what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("policy {what} is not a valid WebAssembly component: {reason}")]
    InvalidComponent { what: String, reason: String },
    /// The component imports something outside the policy world.
    #[error(
        "policy {what} imports {imports}, but a policy may import nothing (policies are pure: time, tenant and seed arrive in the request)"
    )]
    ForbiddenImports { what: String, imports: String },
    /// The component does not export the contract's `filter-score` with the right type.
    #[error("policy {what} does not implement the sandstorm:policy@{abi} world: {reason}")]
    WrongExports {
        what: String,
        abi: &'static str,
        reason: String,
    },
    /// The manifest's ABI version is not one this host speaks.
    #[error("policy {name} was built for ABI {found}, this host speaks {expected}")]
    AbiMismatch {
        name: String,
        found: String,
        expected: &'static str,
    },
    /// The module's bytes do not match the sha256 in its manifest.
    #[error(
        "policy {name}@{version}: module sha256 {actual} does not match the manifest's {expected} (tampered or corrupt)"
    )]
    DigestMismatch {
        name: String,
        version: String,
        expected: String,
        actual: String,
    },
    /// The manifest has no valid signature from a trusted key.
    #[error("policy {name}@{version}: {reason}")]
    Untrusted {
        name: String,
        version: String,
        reason: String,
    },
    /// The version is in the registry already; published versions are immutable.
    #[error("{id} is already published in {registry}; versions are immutable, bump the version")]
    AlreadyPublished { id: String, registry: PathBuf },
    /// A manifest, key or fixture file is malformed.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// A name, version or argument a user gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Building a policy crate failed.
    #[error("building policy {dir}: {reason}")]
    Build { dir: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug in this crate or in wasmtime's configuration, not the user's input.
    #[error("internal error in the policy host: {0}")]
    Internal(String),
}

impl PoliciesError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PoliciesError::Io {
            path: path.into(),
            source,
        }
    }
}
