//! The error type of the features crate: user errors (bad request, bad catalog, bad telemetry)
//! are distinct variants from internal bugs.

use std::fmt;

/// One problem with one field of a user document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `resources.cpu`.
    pub field: String,
    /// What was expected, in lowercase prose.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// The request text could not be parsed as JSON or YAML of the expected shape.
    #[error("invalid request ({format}): {message}")]
    RequestSyntax {
        format: &'static str,
        message: String,
    },
    /// The request parsed but breaks field rules.
    #[error("invalid request: {}", join(.0))]
    RequestInvalid(Vec<FieldError>),
    /// The catalog TOML could not be parsed.
    #[error("invalid catalog: {0}")]
    CatalogSyntax(String),
    /// The catalog parsed but breaks rules (unknown region, negative price, ...).
    #[error("invalid catalog: {}", join(.0))]
    CatalogInvalid(Vec<FieldError>),
    /// A telemetry batch does not have the expected schema.
    #[error("telemetry schema mismatch: {0}")]
    TelemetrySchema(String),
    /// A feature schema stored with a model does not match this build's encoder.
    #[error("feature schema mismatch: {0}")]
    FeatureSchema(String),
    /// Arrow refused to build or read a batch; this is a bug in Sandstorm, not a user error.
    #[error("internal arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}
