//! The one error type of the adapters crate, [`AdapterError`], and its classification for
//! failover: [`AdapterError::retryable`] says whether running the same job again (later, or on
//! another candidate) can succeed without risking a second execution of a job that started.
//!
//! Messages keep the provider's own explanation but never a credential: every message built
//! from a provider's answer goes through [`crate::http::redact`].

use sandstorm_features::telemetry::RunStatus;

/// The step of a remote run an error happened in. Errors in [`Phase::Exec`] or later may have
/// happened after the job started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Creating the sandbox, instance or pod.
    Create,
    /// Waiting for it to be ready.
    Wait,
    /// Uploading the job's files.
    Upload,
    /// Starting or running the job.
    Exec,
    /// Deleting the sandbox.
    Delete,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Create => "create",
            Phase::Wait => "wait",
            Phase::Upload => "upload",
            Phase::Exec => "exec",
            Phase::Delete => "delete",
        }
    }

    /// Whether the job may have started by this phase.
    pub fn job_may_have_started(self) -> bool {
        matches!(self, Phase::Exec | Phase::Delete)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong while running a job on a remote provider.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The job breaks a rule every backend relies on (or a limit of this adapter, e.g. too
    /// much file content to pass inline). A user error: retrying elsewhere gives the same.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The provider has no credentials or configuration in this process (e.g. `E2B_API_KEY`
    /// is not set). Nothing was sent.
    #[error("provider `{provider}` is not configured: {reason}")]
    NotConfigured { provider: String, reason: String },
    /// The candidate asks for something this provider cannot do (a GPU, an isolation backend
    /// it does not offer, a candidate of another provider).
    #[error("provider `{provider}` cannot run this: {reason}")]
    Unsupported { provider: String, reason: String },
    /// The provider answered with an HTTP error status. `message` is the provider's own
    /// explanation (its JSON error message, or the start of the body), credentials removed.
    #[error("{provider} {phase} failed: HTTP {status}: {message}")]
    Api {
        provider: String,
        phase: Phase,
        status: u16,
        message: String,
    },
    /// An RPC ended with an error code: a Connect RPC (E2B envd) or a gRPC call (Modal), with
    /// the code's snake-case name shared by both protocols, e.g. `resource_exhausted`.
    #[error("{provider} {phase} failed: rpc error {code}: {message}")]
    Rpc {
        provider: String,
        phase: Phase,
        code: String,
        message: String,
    },
    /// The provider could not be reached, or the connection broke.
    #[error("{provider} {phase} failed: could not reach the provider: {message}")]
    Connect {
        provider: String,
        phase: Phase,
        message: String,
    },
    /// A provider step took longer than the adapter allows (e.g. the sandbox never became
    /// ready). The job's own wall-clock limit is not an error: it is a `timeout` result.
    #[error("{provider} {phase} timed out after {seconds:.1} s")]
    Timeout {
        provider: String,
        phase: Phase,
        seconds: f64,
    },
    /// The sandbox reached a failed state (e.g. Daytona `error`, Morph `error`, a pod that
    /// could not be scheduled).
    #[error("{provider} {phase} failed: {message}")]
    SandboxFailed {
        provider: String,
        phase: Phase,
        message: String,
    },
    /// The provider answered something this adapter does not understand (a changed API).
    #[error("{provider} {phase}: unexpected answer: {message}")]
    Protocol {
        provider: String,
        phase: Phase,
        message: String,
    },
    /// A bug in this crate (e.g. its async runtime could not start).
    #[error("internal adapter error: {0}")]
    Internal(String),
}

impl AdapterError {
    /// Whether the same job may succeed when tried again, here later or on another candidate,
    /// without running twice: quota and rate limits (429, `resource_exhausted`), provider
    /// errors (5xx, `unavailable`, `internal`), connection failures and timeouts before the
    /// job started, and a sandbox that failed to start. Never auth (401/403, `unauthenticated`,
    /// `permission_denied`), bad requests (400/422, `invalid_argument`), not found (404,
    /// `not_found`), invalid jobs, missing configuration or anything after the job may have
    /// started.
    pub fn retryable(&self) -> bool {
        match self {
            AdapterError::Api { status, .. } => status_retryable(*status),
            AdapterError::Rpc { code, .. } => rpc_code_retryable(code),
            AdapterError::Connect { phase, .. } | AdapterError::Timeout { phase, .. } => {
                !phase.job_may_have_started()
            }
            AdapterError::SandboxFailed { phase, .. } => !phase.job_may_have_started(),
            AdapterError::InvalidJob(_)
            | AdapterError::NotConfigured { .. }
            | AdapterError::Unsupported { .. }
            | AdapterError::Protocol { .. }
            | AdapterError::Internal(_) => false,
        }
    }

    /// Whether the job may have started before the error (a connection or stream lost while
    /// it ran): running it elsewhere may run it twice.
    pub fn job_may_have_started(&self) -> bool {
        match self {
            AdapterError::Connect { phase, .. }
            | AdapterError::Timeout { phase, .. }
            | AdapterError::SandboxFailed { phase, .. }
            | AdapterError::Protocol { phase, .. }
            | AdapterError::Rpc { phase, .. } => phase.job_may_have_started(),
            _ => false,
        }
    }

    /// Whether the error is the caller's to fix (the job itself is not runnable as written).
    pub fn is_user_error(&self) -> bool {
        matches!(self, AdapterError::InvalidJob(_))
    }

    /// Whether the provider refused for quota or rate limits.
    pub fn is_quota(&self) -> bool {
        match self {
            AdapterError::Api { status, .. } => *status == 429,
            AdapterError::Rpc { code, .. } => code == "resource_exhausted",
            _ => false,
        }
    }

    /// Whether the provider refused the credentials.
    pub fn is_auth(&self) -> bool {
        match self {
            AdapterError::Api { status, .. } => matches!(status, 401 | 403),
            AdapterError::Rpc { code, .. } => {
                matches!(code.as_str(), "unauthenticated" | "permission_denied")
            }
            _ => false,
        }
    }

    /// The outcome to record in telemetry for a run that failed with this error.
    pub fn run_status(&self) -> RunStatus {
        if self.is_quota() {
            RunStatus::Quota
        } else if self.is_user_error() {
            RunStatus::NotExecuted
        } else {
            RunStatus::Unavailable
        }
    }

    /// A short stable class for telemetry's `error_class`, e.g. `quota`, `auth`, `http_503`,
    /// `connect`, `timeout`.
    pub fn class(&self) -> String {
        match self {
            _ if self.is_quota() => "quota".into(),
            _ if self.is_auth() => "auth".into(),
            AdapterError::Api { status, .. } => format!("http_{status}"),
            AdapterError::Rpc { code, .. } => format!("rpc_{code}"),
            AdapterError::InvalidJob(_) => "invalid_job".into(),
            AdapterError::NotConfigured { .. } => "not_configured".into(),
            AdapterError::Unsupported { .. } => "unsupported".into(),
            AdapterError::Connect { .. } => "connect".into(),
            AdapterError::Timeout { .. } => "timeout".into(),
            AdapterError::SandboxFailed { .. } => "sandbox_failed".into(),
            AdapterError::Protocol { .. } => "protocol".into(),
            AdapterError::Internal(_) => "internal".into(),
        }
    }
}

/// Whether an HTTP error status is worth another try: timeouts, rate limits, server errors.
pub(crate) fn status_retryable(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (500..=599).contains(&status)
}

/// Whether a Connect or gRPC error code is worth another try: quota, the server's transient
/// and internal errors (HTTP 429, 503 and 500 in both protocols' mappings), a conflict.
pub(crate) fn rpc_code_retryable(code: &str) -> bool {
    matches!(
        code,
        "resource_exhausted" | "unavailable" | "internal" | "aborted"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> AdapterError {
        AdapterError::Api {
            provider: "e2b".into(),
            phase: Phase::Create,
            status,
            message: "m".into(),
        }
    }

    #[test]
    fn http_statuses_are_classified_for_failover() {
        for status in [429, 500, 502, 503, 504, 408] {
            assert!(api(status).retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 422] {
            assert!(!api(status).retryable(), "{status}");
        }
        assert!(api(429).is_quota());
        assert_eq!(api(429).run_status(), RunStatus::Quota);
        assert_eq!(api(503).run_status(), RunStatus::Unavailable);
        assert_eq!(api(401).class(), "auth");
        assert_eq!(api(503).class(), "http_503");
    }

    #[test]
    fn transport_errors_are_retryable_only_before_the_job_started() {
        let connect = |phase| AdapterError::Connect {
            provider: "morph".into(),
            phase,
            message: "refused".into(),
        };
        assert!(connect(Phase::Create).retryable());
        assert!(connect(Phase::Upload).retryable());
        assert!(!connect(Phase::Exec).retryable());
        assert!(connect(Phase::Exec).job_may_have_started());
        assert!(!connect(Phase::Upload).job_may_have_started());
        let timeout = AdapterError::Timeout {
            provider: "daytona".into(),
            phase: Phase::Wait,
            seconds: 60.0,
        };
        assert!(timeout.retryable());
    }

    #[test]
    fn rpc_codes_are_classified() {
        let rpc = |code: &str| AdapterError::Rpc {
            provider: "e2b".into(),
            phase: Phase::Exec,
            code: code.into(),
            message: "m".into(),
        };
        assert!(rpc("resource_exhausted").retryable());
        assert!(rpc("resource_exhausted").is_quota());
        assert!(rpc("unavailable").retryable());
        assert!(rpc("internal").retryable());
        assert!(!rpc("unauthenticated").retryable());
        assert!(!rpc("permission_denied").retryable());
        assert!(rpc("permission_denied").is_auth());
        assert!(!rpc("not_found").retryable());
        assert_eq!(rpc("not_found").class(), "rpc_not_found");
        assert!(rpc("unauthenticated").is_auth());
        assert!(!rpc("invalid_argument").retryable());
    }
}
