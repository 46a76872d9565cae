//! Runs a decision: the winner, then its fallbacks when a candidate could not run the job,
//! with a circuit breaker per provider × region and one telemetry record per attempt.
//!
//! # Using it
//!
//! ```no_run
//! use std::sync::Arc;
//! use sandstorm_executor::{BreakerConfig, Breakers, Executor, FailoverPolicy};
//! # fn demo(
//! #     router: &sandstorm_router::Router,
//! #     request: &sandstorm_features::RunRequest,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let breakers = Breakers::with_state_file(BreakerConfig::default(), "/var/lib/sandstorm/breakers.json");
//! let executor = Executor::new(
//!     Arc::new(sandstorm_runtime::Engine::new()),
//!     sandstorm_adapters::Providers::from_env(),
//!     breakers,
//!     FailoverPolicy::default(),
//! );
//! let ctx = sandstorm_features::DecisionContext::now();
//! // The router offers only candidates the executor can run now (breakers included).
//! let decision = router.decide(request, &ctx, &|c| executor.unavailable_reason(c))?;
//! let execution = executor.execute(request, &ctx, &decision, &sandstorm_runtime::RunControl::new());
//! let rows = execution.telemetry(); // one row per attempt, for `datasets::append_records`
//! match execution.result() {
//!     Some(result) => println!("{:?}", result.status),
//!     None => eprintln!("{}", execution.error().map(ToString::to_string).unwrap_or_default()),
//! }
//! # Ok(()) }
//! ```
//!
//! # Failover rules
//!
//! Candidates are tried in the decision's order: the winner, then `decision.fallbacks`.
//!
//! - A job that **ran** (any exit code, wall-clock timeout, out of memory, cancelled while
//!   running) is final: a program that ran is never run again.
//! - A **retryable** failure (the job did not start and another try may work: quota or rate
//!   limits, provider 5xx, connection failures and timeouts before the job started, a sandbox
//!   that failed to start; locally an unavailable backend, a spawn failure, a missing
//!   interpreter or a job directory that could not be prepared) moves on to the next
//!   candidate after a bounded exponential backoff ([`FailoverPolicy`]).
//! - Any other failure stops: an invalid job (the user's to fix), refused credentials, a bad
//!   request, a provider that is not configured, a candidate that cannot give the job what it
//!   needs (a GPU job on a candidate without GPUs: the router's GPU filter never sends one
//!   there, so this is a catalog mistake to surface), and a failure after the job may have
//!   started (a connection lost while it ran).
//! - A cancel stops the loop (also during a backoff).
//! - Candidates that cannot run now are skipped, with the reason in
//!   [`Execution::skipped`]: a circuit breaker that is open, a provider without credentials,
//!   a local backend this host lacks. A skip is not an attempt and has no telemetry row.
//!
//! Each attempt gets one [`TelemetryRecord`](sandstorm_features::telemetry::TelemetryRecord)
//! built by [`attempt_record`], the one builder of execution telemetry rows.
//!
//! # Circuit breakers
//!
//! [`Breakers`] keeps one breaker per `provider/region`: it opens after
//! [`BreakerConfig::failure_threshold`] consecutive infrastructure failures of attempts there
//! (not a job's own non-zero exit or timeout, nor an invalid or unsupported job), refuses the
//! key for [`BreakerConfig::cooldown`], then lets one probe through (half-open): its success
//! closes the breaker, its failure re-opens it. With a state file the breakers are shared by
//! separate processes (a failing `sandstorm run` makes a later `sandstorm route` stop
//! offering the candidate).

mod breaker;
mod execute;
mod record;

pub use breaker::{BreakerConfig, BreakerState, BreakerStatus, Breakers};
pub use execute::{
    Attempt, AttemptError, AttemptOutcome, Execution, Executor, FailoverPolicy, Outcome, Skipped,
};
pub use record::attempt_record;

/// Why an execution did not run the job anywhere.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The job cannot run as written, on any candidate (no command, unsafe file path, files
    /// too large, ...). A user error.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// A candidate refused in a way another try does not fix (credentials, bad request,
    /// missing configuration, unsupported job); failover stopped there.
    #[error("{candidate} refused the run ({class}): {message}")]
    Refused {
        candidate: String,
        class: String,
        message: String,
    },
    /// The attempt failed after the job may have started (e.g. the connection broke while it
    /// ran); it is not retried elsewhere so the job never runs twice.
    #[error(
        "{candidate} failed after the job may have started ({class}): {message}; not retried so the job cannot run twice"
    )]
    MayHaveRun {
        candidate: String,
        class: String,
        message: String,
    },
    /// Every candidate tried failed with a retryable error, was skipped, or the attempt
    /// budget ran out. `summary` says what happened to each.
    #[error("no candidate could run the job: {summary}")]
    Exhausted { summary: String },
    /// The caller cancelled before the job ran anywhere.
    #[error("cancelled before the job ran")]
    Cancelled,
    /// A bug in Sandstorm (e.g. a decision whose winner is not among its candidates, a
    /// runtime invariant broken). Not caused by the job or the providers.
    #[error("internal executor error: {0}")]
    Internal(String),
}

impl ExecutorError {
    /// Whether the caller has to fix the job (no candidate will run it as written).
    pub fn is_user_error(&self) -> bool {
        matches!(self, ExecutorError::InvalidJob(_))
    }
}
