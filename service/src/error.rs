//! [`ApiError`]: every way an HTTP request can fail, as one enum that turns itself into a JSON
//! response (`{"error": {"code", "message", ...}}`) with the right status. Client mistakes are
//! 4xx and name the field; internal errors are logged in full and answered with a bare 500
//! that leaks nothing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sandstorm_features::FieldError;
use sandstorm_router::BindingConstraint;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_request`, `rate_limited`.
    pub(crate) code: &'static str,
    /// One sentence a person can read.
    pub(crate) message: String,
    /// The offending fields, for `invalid_request`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldErrorDoc>)]
    pub(crate) fields: Vec<FieldError>,
    /// Seconds to wait before retrying, for 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_s: Option<u64>,
    /// The decision, when the error follows one (`not_executable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decision_id: Option<String>,
    /// Constraints that removed candidates, for `no_feasible_candidate`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub(crate) binding_constraints: Vec<BindingConstraint>,
}

/// One invalid field.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // documents `FieldError` in the OpenAPI document
pub(crate) struct FieldErrorDoc {
    /// Dotted path, e.g. `resources.cpu`.
    field: String,
    message: String,
}

/// Every error an endpoint returns.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Unparseable JSON, a wrong type, an unknown field or a broken field rule (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        fields: Vec<FieldError>,
    },
    /// No or unknown API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks a scope, or acts for another tenant (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such run for this tenant, or no such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The run cannot change state any more, e.g. cancelling a finished run (409).
    #[error("{0}")]
    Conflict(String),
    /// The winner is a provider this build cannot execute (409).
    #[error("{message}")]
    NotExecutable {
        message: String,
        decision_id: String,
    },
    /// The body is larger than the configured limit (413).
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Every candidate was removed by the request's constraints (422).
    #[error("{summary}")]
    NoFeasibleCandidate {
        summary: String,
        binding: Vec<BindingConstraint>,
    },
    /// Too many requests or runs for the tenant (429).
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
    /// A feature this build does not have (501).
    #[error("{0}")]
    NotImplemented(String),
    /// The service is not ready or is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a host problem; the detail is logged, never sent (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn invalid(field: Option<&str>, message: impl Into<String>) -> Self {
        let message = message.into();
        let fields = field
            .map(|f| {
                vec![FieldError {
                    field: f.to_owned(),
                    message: message.clone(),
                }]
            })
            .unwrap_or_default();
        let message = match field {
            Some(f) => format!("invalid request: field `{f}`: {message}"),
            None => format!("invalid request: {message}"),
        };
        ApiError::InvalidRequest { message, fields }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::NotExecutable { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoFeasibleCandidate { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotExecutable { .. } => "not_executable",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NoFeasibleCandidate { .. } => "no_feasible_candidate",
            ApiError::TooManyRequests { code, .. } => code,
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body of this error.
    pub(crate) fn body(self) -> ErrorBody {
        let code = self.code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error (details are in the service log)".to_owned()
            }
            other => other.to_string(),
        };
        let mut detail = ErrorDetail {
            code,
            message,
            fields: Vec::new(),
            retry_after_s: None,
            decision_id: None,
            binding_constraints: Vec::new(),
        };
        match self {
            ApiError::InvalidRequest { fields, .. } => detail.fields = fields,
            ApiError::TooManyRequests { retry_after_s, .. } => {
                detail.retry_after_s = Some(retry_after_s);
            }
            ApiError::NotExecutable { decision_id, .. } => detail.decision_id = Some(decision_id),
            ApiError::NoFeasibleCandidate { binding, .. } => detail.binding_constraints = binding,
            _ => {}
        }
        ErrorBody { error: detail }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        let unauthorized = matches!(self, ApiError::Unauthorized(_));
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sandstorm\""),
            );
        }
        response
    }
}

impl From<sandstorm_features::FeaturesError> for ApiError {
    fn from(e: sandstorm_features::FeaturesError) -> Self {
        use sandstorm_features::FeaturesError as F;
        match e {
            F::RequestInvalid(fields) => ApiError::InvalidRequest {
                message: F::RequestInvalid(fields.clone()).to_string(),
                fields,
            },
            F::RequestSyntax { message, .. } => ApiError::invalid(None, message),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<sandstorm_router::RouterError> for ApiError {
    fn from(e: sandstorm_router::RouterError) -> Self {
        use sandstorm_router::RouterError as R;
        match e {
            R::NoFeasibleCandidate { binding, summary } => ApiError::NoFeasibleCandidate {
                summary: format!("no candidate meets the request: {summary}"),
                binding,
            },
            R::Features(f) => f.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
