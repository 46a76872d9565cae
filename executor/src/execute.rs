//! [`Executor`]: runs a decision's winner, then its fallbacks, under the failover rules of the
//! crate docs, and reports every attempt ([`Execution`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandstorm_adapters::{AdapterError, Providers};
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord};
use sandstorm_features::{Candidate, DecisionContext, ProviderKind, RunRequest};
use sandstorm_router::Decision;
use sandstorm_runtime::{Availability, Engine, JobSpec, RunControl, RunResult, RuntimeError};
use time::OffsetDateTime;

use crate::ExecutorError;
use crate::breaker::{Breakers, Permit};
use crate::record::attempt_record;

/// How long a backoff sleeps between checks of the caller's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// How many candidates an execution tries and how long it waits between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// Attempts at most, the winner's included (at least 1). Skipped candidates do not count.
    pub max_attempts: u32,
    /// Wait before the first failover; doubles for every further one.
    pub backoff_base: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl FailoverPolicy {
    /// The wait before attempt number `attempt` (0 for the first: no wait; then
    /// `backoff_base × 2^(attempt - 1)`, at most `backoff_max`).
    pub fn backoff(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt - 1);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Why a candidate could not run the job.
#[derive(Debug)]
pub enum AttemptError {
    /// A local backend's error.
    Local(RuntimeError),
    /// A remote provider's (or edge agent's) error.
    Remote(AdapterError),
}

impl AttemptError {
    /// Whether another candidate may run the job without running it twice: see the crate
    /// docs. Locally: an unavailable backend, a spawn failure, a missing interpreter or a job
    /// directory that could not be prepared (nothing ran).
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Local(e) => matches!(
                e,
                RuntimeError::Unavailable { .. }
                    | RuntimeError::Spawn { .. }
                    | RuntimeError::InterpreterNotFound { .. }
                    | RuntimeError::JobDir(_)
            ),
            AttemptError::Remote(e) => e.retryable(),
        }
    }

    /// Whether the job itself is wrong (no candidate will run it).
    pub fn is_user_error(&self) -> bool {
        match self {
            AttemptError::Local(e) => e.is_user_error(),
            AttemptError::Remote(e) => e.is_user_error(),
        }
    }

    /// Whether the candidate cannot give the job what it needs (e.g. a GPU job on a candidate
    /// without GPUs): a mismatch of job and candidate that says nothing about the provider's
    /// health, so it is no circuit-breaker failure.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            AttemptError::Local(RuntimeError::Unsupported { .. })
                | AttemptError::Remote(AdapterError::Unsupported { .. })
        )
    }

    /// Whether the job may have started before the error.
    pub fn job_may_have_started(&self) -> bool {
        match self {
            AttemptError::Local(_) => false,
            AttemptError::Remote(e) => e.job_may_have_started(),
        }
    }

    /// The telemetry status of the attempt: `quota`, `unavailable` or `not_executed`.
    pub fn run_status(&self) -> RunStatus {
        match self {
            AttemptError::Local(e) if e.is_user_error() => RunStatus::NotExecuted,
            AttemptError::Local(_) => RunStatus::Unavailable,
            AttemptError::Remote(e) => e.run_status(),
        }
    }

    /// The telemetry error class, e.g. `quota`, `auth`, `http_503`, `spawn`.
    pub fn class(&self) -> String {
        match self {
            AttemptError::Local(e) => match e {
                RuntimeError::InvalidJob(_) => "invalid_job",
                RuntimeError::InterpreterNotFound { .. } => "interpreter_not_found",
                RuntimeError::Unavailable { .. } => "unavailable",
                RuntimeError::Unsupported { .. } => "unsupported",
                RuntimeError::JobDir(_) => "job_dir",
                RuntimeError::Spawn { .. } => "spawn",
                RuntimeError::Internal(_) => "internal",
            }
            .to_owned(),
            AttemptError::Remote(e) => e.class(),
        }
    }

    /// The message of an invalid job, without the `invalid job: ` prefix.
    fn invalid_job(&self) -> Option<&str> {
        match self {
            AttemptError::Local(RuntimeError::InvalidJob(m))
            | AttemptError::Remote(AdapterError::InvalidJob(m)) => Some(m),
            _ => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Local(e) => e.fmt(f),
            AttemptError::Remote(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttemptError::Local(e) => Some(e),
            AttemptError::Remote(e) => Some(e),
        }
    }
}

/// What one attempt on one candidate produced.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// The job ran, to any end (exit code, timeout, out of memory, cancel). Final.
    Ran {
        result: RunResult,
        /// Actual cost: remote, the price sheet × the measured sandbox usage; local, the list
        /// price × the measured total time.
        cost_usd: f64,
    },
    /// The candidate could not run the job.
    Failed {
        error: AttemptError,
        /// When the attempt began.
        started_at: OffsetDateTime,
        /// How long the attempt took until it failed.
        elapsed_ms: f64,
        /// What a sandbox created before the failure cost (0 when none was created).
        cost_usd: f64,
    },
}

impl AttemptOutcome {
    /// The telemetry status.
    pub fn status(&self) -> RunStatus {
        match self {
            AttemptOutcome::Ran { result, .. } => result.status,
            AttemptOutcome::Failed { error, .. } => error.run_status(),
        }
    }

    pub fn cost_usd(&self) -> f64 {
        match self {
            AttemptOutcome::Ran { cost_usd, .. } | AttemptOutcome::Failed { cost_usd, .. } => {
                *cost_usd
            }
        }
    }

    /// When the attempt began.
    pub fn started_at(&self) -> OffsetDateTime {
        match self {
            AttemptOutcome::Ran { result, .. } => result.started_at,
            AttemptOutcome::Failed { started_at, .. } => *started_at,
        }
    }
}

/// One attempt of an execution.
#[derive(Debug)]
pub struct Attempt {
    /// The candidate tried.
    pub candidate_id: String,
    pub outcome: AttemptOutcome,
    /// Its telemetry row (attempt number = position in [`Execution::attempts`]).
    pub record: TelemetryRecord,
    /// Whether this attempt was the half-open probe of its breaker.
    pub probe: bool,
    /// Whether the caller's cancel ended it: it says nothing about the candidate and
    /// [`Execution::telemetry`] leaves its row out.
    pub cancelled: bool,
}

/// A candidate of the decision that was not tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub candidate_id: String,
    /// e.g. "circuit open for e2b/us-west after 3 consecutive failures ...".
    pub reason: String,
}

/// How an execution ended.
#[derive(Debug)]
pub enum Outcome {
    /// The job ran in attempt number `attempt` (an index into [`Execution::attempts`]).
    Ran { attempt: usize },
    /// The job ran nowhere.
    NotRun(ExecutorError),
}

/// Everything that happened while executing a decision.
#[derive(Debug)]
pub struct Execution {
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Candidates passed over without an attempt, in order.
    pub skipped: Vec<Skipped>,
    pub outcome: Outcome,
}

impl Execution {
    /// The attempt that ran the job.
    pub fn ran(&self) -> Option<&Attempt> {
        match self.outcome {
            Outcome::Ran { attempt } => self.attempts.get(attempt),
            Outcome::NotRun(_) => None,
        }
    }

    /// What happened to the job, when it ran.
    pub fn result(&self) -> Option<&RunResult> {
        match &self.ran()?.outcome {
            AttemptOutcome::Ran { result, .. } => Some(result),
            AttemptOutcome::Failed { .. } => None,
        }
    }

    /// Why the job ran nowhere.
    pub fn error(&self) -> Option<&ExecutorError> {
        match &self.outcome {
            Outcome::NotRun(e) => Some(e),
            Outcome::Ran { .. } => None,
        }
    }

    /// The status of the execution as a whole: the result's when the job ran; else the last
    /// attempt's (`quota`, `unavailable`), or `not_executed` (invalid job, cancel, nothing
    /// tried).
    pub fn status(&self) -> RunStatus {
        if let Some(result) = self.result() {
            return result.status;
        }
        match self.error() {
            Some(ExecutorError::Exhausted { .. } | ExecutorError::Refused { .. })
            | Some(ExecutorError::MayHaveRun { .. }) => self
                .attempts
                .last()
                .map_or(RunStatus::NotExecuted, |a| a.outcome.status()),
            _ => RunStatus::NotExecuted,
        }
    }

    /// The telemetry rows to append: one per attempt, except attempts the caller's cancel
    /// ended (they say nothing about the candidate).
    pub fn telemetry(&self) -> Vec<TelemetryRecord> {
        self.attempts
            .iter()
            .filter(|a| !a.cancelled)
            .map(|a| a.record.clone())
            .collect()
    }
}

/// Runs decisions: local candidates on the engine's backends, every other kind (remote,
/// Kubernetes, edge) through the provider of the same name. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Executor {
    engine: Arc<Engine>,
    providers: Providers,
    breakers: Breakers,
    policy: FailoverPolicy,
}

impl Executor {
    pub fn new(
        engine: Arc<Engine>,
        providers: Providers,
        breakers: Breakers,
        mut policy: FailoverPolicy,
    ) -> Self {
        policy.max_attempts = policy.max_attempts.max(1);
        Self {
            engine,
            providers,
            breakers,
            policy,
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    pub fn policy(&self) -> &FailoverPolicy {
        &self.policy
    }

    /// Why `candidate` cannot run now, for the router's filter: a local backend this host
    /// lacks (the engine's probe), a provider that is not configured (e.g. "E2B_API_KEY is
    /// not set") or absent from this build, or an open circuit breaker. `None` when it can.
    pub fn unavailable_reason(&self, candidate: &Candidate) -> Option<String> {
        self.capability_reason(candidate)
            .or_else(|| self.breakers.unavailable_reason(candidate))
    }

    /// Why this process cannot run `candidate` at all, breakers aside.
    fn capability_reason(&self, candidate: &Candidate) -> Option<String> {
        match candidate.provider_kind {
            ProviderKind::Local => match self.engine.availability().get(&candidate.backend) {
                Some(Availability::Available { .. }) => None,
                Some(Availability::Unavailable { reason }) => Some(format!(
                    "{} unavailable on this host: {reason}",
                    candidate.backend
                )),
                None => Some(format!(
                    "this build has no local {} backend",
                    candidate.backend
                )),
            },
            ProviderKind::Remote | ProviderKind::Kubernetes | ProviderKind::Edge => {
                match self.providers.get(&candidate.provider) {
                    None => Some(format!(
                        "no {} provider `{}` is configured in this process",
                        candidate.provider_kind.as_str(),
                        candidate.provider
                    )),
                    Some(p) => match p.availability() {
                        Availability::Available { .. } => None,
                        Availability::Unavailable { reason } => {
                            Some(format!("{} unavailable: {reason}", candidate.provider))
                        }
                    },
                }
            }
        }
    }

    /// Runs `request` as `decision` says: the winner, then its fallbacks on retryable
    /// failures (see the crate docs). Blocks until the job ran somewhere or nothing is left to
    /// try; call it from a plain thread or `spawn_blocking`. `control` cancels and observes
    /// output of whichever attempt is running.
    pub fn execute(
        &self,
        request: &RunRequest,
        ctx: &DecisionContext,
        decision: &Decision,
        control: &RunControl,
    ) -> Execution {
        let job = JobSpec::from_request(request);
        let mut execution = Execution {
            attempts: Vec::new(),
            skipped: Vec::new(),
            outcome: Outcome::NotRun(ExecutorError::Cancelled),
        };
        if let Err(e) = job.validate() {
            let error = match e {
                RuntimeError::InvalidJob(m) => ExecutorError::InvalidJob(m),
                other => ExecutorError::Internal(other.to_string()),
            };
            execution.outcome = Outcome::NotRun(error);
            return execution;
        }
        // What happened to each candidate, for the error when none ran the job.
        let mut notes: Vec<String> = Vec::new();
        let order = std::iter::once(&decision.winner).chain(&decision.fallbacks);
        let mut budget_spent = false;
        let mut stop: Option<ExecutorError> = None;
        for id in order {
            if control.is_cancelled() {
                stop = Some(ExecutorError::Cancelled);
                break;
            }
            let n = execution.attempts.len();
            if n >= self.policy.max_attempts as usize {
                budget_spent = true;
                break;
            }
            let Some(verdict) = decision.candidate(id) else {
                stop = Some(ExecutorError::Internal(format!(
                    "candidate `{id}` is in the decision's order but not among its candidates"
                )));
                break;
            };
            let candidate = &*verdict.candidate;
            let permit = match self
                .capability_reason(candidate)
                .map_or_else(|| self.breakers.acquire(candidate), Err)
            {
                Ok(permit) => permit,
                Err(reason) => {
                    tracing::info!(candidate = %id, %reason, "skipping candidate");
                    notes.push(format!("{id} skipped: {reason}"));
                    execution.skipped.push(Skipped {
                        candidate_id: id.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let delay = self.policy.backoff(n as u32);
            if !delay.is_zero() {
                tracing::debug!(candidate = %id, delay_ms = delay.as_millis() as u64, "backing off before failover");
                if !sleep_unless_cancelled(delay, control) {
                    permit.neutral();
                    stop = Some(ExecutorError::Cancelled);
                    break;
                }
            }
            let probe = permit.is_probe();
            let outcome = self.attempt(candidate, request, &job, control);
            let cancelled = control.is_cancelled()
                && match &outcome {
                    AttemptOutcome::Ran { result, .. } => {
                        result.error_class.as_deref() == Some("cancelled")
                    }
                    AttemptOutcome::Failed { .. } => true,
                };
            settle(permit, &outcome, cancelled);
            let record = attempt_record(request, ctx, decision, candidate, n as u32, &outcome);
            let next = match &outcome {
                AttemptOutcome::Ran { result, .. } => {
                    tracing::info!(candidate = %id, attempt = n, status = %result.status, exit_code = ?result.exit_code, "job ran");
                    Some(Outcome::Ran { attempt: n })
                }
                AttemptOutcome::Failed { error, .. } => {
                    let class = error.class();
                    let next = if cancelled {
                        Some(ExecutorError::Cancelled)
                    } else if let Some(message) = error.invalid_job() {
                        Some(ExecutorError::InvalidJob(message.to_owned()))
                    } else if error.job_may_have_started() {
                        Some(ExecutorError::MayHaveRun {
                            candidate: id.clone(),
                            class: class.clone(),
                            message: error.to_string(),
                        })
                    } else if !error.retryable() {
                        Some(ExecutorError::Refused {
                            candidate: id.clone(),
                            class: class.clone(),
                            message: error.to_string(),
                        })
                    } else {
                        None
                    };
                    match &next {
                        None => {
                            tracing::warn!(candidate = %id, attempt = n, %class, %error, "attempt failed; failing over")
                        }
                        Some(stop) => {
                            tracing::warn!(candidate = %id, attempt = n, %class, %error, "attempt failed; not failing over: {stop}")
                        }
                    }
                    notes.push(format!("{id} failed ({class}): {error}"));
                    next.map(Outcome::NotRun)
                }
            };
            execution.attempts.push(Attempt {
                candidate_id: id.clone(),
                outcome,
                record,
                probe,
                cancelled,
            });
            match next {
                Some(Outcome::NotRun(e)) => {
                    stop = Some(e);
                    break;
                }
                Some(ran) => {
                    execution.outcome = ran;
                    return execution;
                }
                None => {}
            }
        }
        let error = stop.unwrap_or_else(|| {
            if budget_spent {
                let n = self.policy.max_attempts;
                let s = if n == 1 { "" } else { "s" };
                notes.push(format!(
                    "stopped after {n} attempt{s} (the failover policy's limit)"
                ));
            } else if notes.is_empty() {
                notes.push("the decision has no candidate".to_owned());
            } else {
                notes.push("no fallback left".to_owned());
            }
            ExecutorError::Exhausted {
                summary: notes.join("; "),
            }
        });
        execution.outcome = Outcome::NotRun(error);
        execution
    }

    /// One attempt on one candidate.
    fn attempt(
        &self,
        candidate: &Candidate,
        request: &RunRequest,
        job: &JobSpec,
        control: &RunControl,
    ) -> AttemptOutcome {
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let failed = |error: AttemptError, cost_usd: f64| AttemptOutcome::Failed {
            error,
            started_at,
            elapsed_ms: clock.elapsed().as_secs_f64() * 1000.0,
            cost_usd,
        };
        match candidate.provider_kind {
            ProviderKind::Local => {
                let Some(backend) = self.engine.backend(candidate.backend) else {
                    return failed(
                        AttemptError::Local(RuntimeError::Unavailable {
                            backend: candidate.backend,
                            reason: "this build has no local backend of this kind".to_owned(),
                        }),
                        0.0,
                    );
                };
                match backend.run_controlled(job, control) {
                    Ok(result) => AttemptOutcome::Ran {
                        cost_usd: candidate
                            .list_cost_usd(&request.resources, result.total_ms / 1000.0),
                        result,
                    },
                    Err(e) => failed(AttemptError::Local(e), 0.0),
                }
            }
            ProviderKind::Remote | ProviderKind::Kubernetes | ProviderKind::Edge => {
                match self.providers.run(candidate, job, control) {
                    Ok(run) => AttemptOutcome::Ran {
                        cost_usd: run.cost_usd(candidate),
                        result: run.result,
                    },
                    Err(failure) => {
                        let cost = failure.cost_usd(candidate);
                        failed(AttemptError::Remote(failure.error), cost)
                    }
                }
            }
        }
    }
}

/// Tells the breaker what the attempt says about its provider × region.
fn settle(permit: Permit<'_>, outcome: &AttemptOutcome, cancelled: bool) {
    if cancelled {
        permit.neutral();
        return;
    }
    match outcome {
        AttemptOutcome::Ran { result, .. } => match result.status {
            // A run reported as refused or unavailable (not the job's own end).
            RunStatus::Quota | RunStatus::Unavailable => permit.failure(result.status.as_str()),
            _ => permit.success(),
        },
        AttemptOutcome::Failed { error, .. } if error.is_user_error() || error.is_unsupported() => {
            permit.neutral()
        }
        AttemptOutcome::Failed { error, .. } => permit.failure(&error.class()),
    }
}

/// Sleeps `delay`, waking early when `control` is cancelled. Returns whether it slept in full.
fn sleep_unless_cancelled(delay: Duration, control: &RunControl) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if control.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(CANCEL_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_and_breakers_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Executor>();
        assert_send_sync::<Breakers>();
        assert_send_sync::<Execution>();
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_max() {
        let p = FailoverPolicy::default();
        let ms = |a| p.backoff(a).as_millis();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6].map(ms),
            [0, 100, 200, 400, 800, 1600, 2000]
        );
        assert_eq!(p.backoff(u32::MAX), p.backoff_max);
    }

    #[test]
    fn a_cancel_cuts_a_backoff_short() {
        let control = RunControl::new();
        assert!(sleep_unless_cancelled(Duration::from_millis(5), &control));
        let c = control.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            c.cancel();
        });
        let start = Instant::now();
        assert!(!sleep_unless_cancelled(Duration::from_secs(10), &control));
        assert!(start.elapsed() < Duration::from_secs(5));
        canceller.join().expect("canceller");
    }

    #[test]
    fn local_errors_are_classified_for_failover() {
        let unavailable = AttemptError::Local(RuntimeError::Unavailable {
            backend: sandstorm_features::IsolationBackend::Bubblewrap,
            reason: "bwrap is not installed".into(),
        });
        assert!(unavailable.retryable());
        assert_eq!(unavailable.run_status(), RunStatus::Unavailable);
        assert_eq!(unavailable.class(), "unavailable");
        let spawn = AttemptError::Local(RuntimeError::Spawn {
            program: "python3".into(),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        });
        assert!(spawn.retryable());
        let invalid = AttemptError::Local(RuntimeError::InvalidJob("no command".into()));
        assert!(!invalid.retryable());
        assert!(invalid.is_user_error());
        assert_eq!(invalid.run_status(), RunStatus::NotExecuted);
        assert_eq!(invalid.invalid_job(), Some("no command"));
        let internal = AttemptError::Local(RuntimeError::Internal("bug".into()));
        assert!(!internal.retryable());
        assert!(!internal.is_user_error());
        assert!(!internal.is_unsupported());
        let no_gpu = AttemptError::Local(RuntimeError::Unsupported {
            backend: sandstorm_features::IsolationBackend::Process,
            reason: "the job asks for 1 GPU (any kind), and local backends have no GPU".into(),
        });
        assert!(!no_gpu.retryable() && !no_gpu.is_user_error());
        assert!(no_gpu.is_unsupported());
        assert_eq!(no_gpu.class(), "unsupported");
        assert_eq!(no_gpu.run_status(), RunStatus::Unavailable);
    }
}
