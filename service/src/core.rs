//! [`Core`]: what the HTTP API and the MCP server share — the router (swappable when models are
//! reloaded), the catalog, the local execution engine, the run registry and telemetry. Deciding
//! is synchronous and quick (tens of microseconds) and runs on the caller's thread with a
//! per-thread [`Scratch`]; runs execute on blocking threads tracked for graceful shutdown.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sandstorm_features::telemetry::{TelemetryRecord, to_micros};
use sandstorm_features::{Candidate, Catalog, DecisionContext, ProviderKind, RunRequest};
use sandstorm_router::{Decision, ModelSet, Router, Scratch};
use sandstorm_runtime::{Availability, Engine, JobSpec, RunResult};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::ServiceError;
use crate::config::Config;
use crate::error::ApiError;
use crate::obs;
use crate::policies::{NoPolicies, PolicyRegistry};
use crate::runs::{Registry, Run, RunState};

/// The champion pointer of a model registry (`sandstorm models`, `docs/training.md`): one
/// line, the champion's version, a directory next to the pointer.
pub const CHAMPION_FILE: &str = "champion";

/// The model directory to load: `dir`, or `dir/<champion>` when `dir` is a model registry.
pub fn resolve_models_dir(dir: &Path) -> Result<PathBuf, ServiceError> {
    let pointer = dir.join(CHAMPION_FILE);
    match std::fs::read_to_string(&pointer) {
        Ok(text) => {
            let version = text.trim();
            let valid = !version.is_empty()
                && !version.starts_with('.')
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(ServiceError::Config(format!(
                    "{} does not name a version: {text:?}",
                    pointer.display()
                )));
            }
            Ok(dir.join(version))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) => Err(ServiceError::Config(format!(
            "cannot read {}: {e}",
            pointer.display()
        ))),
    }
}

thread_local! {
    /// Each thread's scoring buffers (`Router::decide_with`): no lock, no allocation once grown.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// The shared state of the service.
#[derive(Debug)]
pub struct Core {
    router: RwLock<Arc<Router>>,
    catalog: Catalog,
    models_dir: PathBuf,
    engine: Engine,
    pub(crate) runs: Registry,
    telemetry_dir: Option<PathBuf>,
    tracker: TaskTracker,
    pub(crate) policies: Box<dyn PolicyRegistry>,
}

impl Core {
    /// Loads the catalog and the models and probes the local backends (runs small real jobs,
    /// so call it from a blocking context).
    pub fn new(config: &Config) -> Result<Self, ServiceError> {
        let catalog = match &config.catalog {
            None => Catalog::default_catalog(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ServiceError::Config(format!("cannot read catalog {}: {e}", path.display()))
                })?;
                Catalog::from_toml(&text)?
            }
        };
        let models = ModelSet::load(&resolve_models_dir(&config.models_dir)?)?;
        let router = Router::new(&catalog, models);
        let engine = Engine::new();
        for (backend, availability) in engine.availability() {
            tracing::info!(%backend, %availability, "local backend");
        }
        Ok(Self {
            router: RwLock::new(Arc::new(router)),
            catalog,
            models_dir: config.models_dir.clone(),
            engine,
            runs: Registry::new(config.max_retained_runs),
            telemetry_dir: config.telemetry_dir.clone(),
            tracker: TaskTracker::new(),
            policies: Box::new(NoPolicies),
        })
    }

    /// The current router (a cheap `Arc` clone).
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether each local backend works on this host (probed once, at start).
    pub fn availability(
        &self,
    ) -> &std::collections::BTreeMap<sandstorm_features::IsolationBackend, Availability> {
        self.engine.availability()
    }

    /// Loads the model directory again (the registry's current champion when `models_dir` is
    /// a model registry) and swaps it in; decisions in flight finish with the old models.
    /// Blocking (reads files).
    pub fn reload_models(&self) -> Result<String, ServiceError> {
        let models = ModelSet::load(&resolve_models_dir(&self.models_dir)?)?;
        let version = models.version().to_owned();
        let router = Arc::new(Router::new(&self.catalog, models));
        *self.router.write().unwrap_or_else(PoisonError::into_inner) = router;
        tracing::info!(%version, "models reloaded");
        Ok(version)
    }

    /// When `models_dir` is a model registry, polls its champion pointer every `every` and
    /// reloads the models when it changes (a promotion or rollback), without a restart. A
    /// champion that fails to load is logged and the current models stay. `None` when
    /// `models_dir` is a plain model directory. Call from a tokio runtime.
    pub fn watch_champion(
        self: &Arc<Self>,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let pointer = self.models_dir.join(CHAMPION_FILE);
        if !pointer.is_file() {
            return None;
        }
        let core = Arc::clone(self);
        // Read now, not in the task: a promotion right after this call must not be missed.
        let mut seen = std::fs::read_to_string(&pointer).ok();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = std::fs::read_to_string(&pointer).ok();
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                let core = Arc::clone(&core);
                match tokio::task::spawn_blocking(move || core.reload_models()).await {
                    Ok(Ok(version)) => tracing::info!(%version, "new champion loaded"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot load the new champion; keeping the current models")
                    }
                    Err(e) => tracing::error!(error = %e, "champion reload task failed"),
                }
            }
        }))
    }

    /// Why `candidate` cannot run from this host right now, if it cannot.
    pub fn unavailable_reason(&self, candidate: &Candidate) -> Option<String> {
        match candidate.provider_kind {
            ProviderKind::Local => match self.engine.availability().get(&candidate.backend) {
                Some(a) if a.is_available() => None,
                Some(Availability::Unavailable { reason }) => Some(format!(
                    "{} unavailable on this host: {reason}",
                    candidate.backend
                )),
                _ => Some(format!(
                    "this build has no local {} backend yet",
                    candidate.backend
                )),
            },
            ProviderKind::Edge => Some("dispatch to edge agents is not implemented yet".to_owned()),
            // Remote providers are routed; executing them needs their adapters.
            ProviderKind::Remote | ProviderKind::Kubernetes => None,
        }
    }

    /// Decides where `request` runs, recording metrics and the decision id on the span.
    pub(crate) fn decide(
        &self,
        request: &RunRequest,
    ) -> Result<(Decision, DecisionContext), ApiError> {
        let router = self.router();
        let ctx = DecisionContext::now();
        let start = Instant::now();
        let decided = SCRATCH.with_borrow_mut(|scratch| {
            router.decide_with(scratch, request, &ctx, &|c| self.unavailable_reason(c))
        });
        let strategy = request.strategy.as_str();
        metrics::histogram!(obs::DECIDE_SECONDS).record(start.elapsed().as_secs_f64());
        match decided {
            Ok(decision) => {
                let winner = decision.winner();
                metrics::counter!(obs::DECISIONS,
                    "strategy" => strategy,
                    "provider" => winner.candidate.provider.clone(),
                    "backend" => winner.candidate.backend.as_str())
                .increment(1);
                tracing::Span::current().record("decision_id", decision.decision_id.as_str());
                Ok((decision, ctx))
            }
            Err(e) => {
                let reason = match &e {
                    sandstorm_router::RouterError::NoFeasibleCandidate { .. } => {
                        "no_feasible_candidate"
                    }
                    sandstorm_router::RouterError::Features(_) => "invalid_request",
                    _ => "internal",
                };
                metrics::counter!(obs::DECISION_ERRORS, "strategy" => strategy, "reason" => reason)
                    .increment(1);
                Err(e.into())
            }
        }
    }

    /// Checks that the winner of `decision` can execute here.
    pub(crate) fn check_executable(&self, decision: &Decision) -> Result<(), ApiError> {
        let candidate = &decision.winner().candidate;
        if candidate.provider_kind == ProviderKind::Local
            && self.engine.backend(candidate.backend).is_some()
        {
            return Ok(());
        }
        Err(ApiError::NotExecutable {
            message: format!(
                "routed to {} ({} provider `{}`), but executing on {} providers needs their adapters, which this build does not have yet; constrain the request to local candidates (`constraints.allowed_providers: [\"local\"]`) to run it here",
                candidate.id,
                candidate.provider_kind.as_str(),
                candidate.provider,
                candidate.provider_kind.as_str()
            ),
            decision_id: decision.decision_id.clone(),
        })
    }

    /// Whether new runs are refused because the service is shutting down.
    pub fn is_draining(&self) -> bool {
        self.tracker.is_closed()
    }

    /// Registers a run of `decision`'s winner and starts it on a blocking thread. `permit` is
    /// the tenant's concurrency slot, released when the run ends.
    pub(crate) fn start_run(
        self: &Arc<Self>,
        tenant: &str,
        request: RunRequest,
        ctx: DecisionContext,
        decision: Decision,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Arc<Run>, ApiError> {
        if self.is_draining() {
            return Err(ApiError::Unavailable(
                "the service is shutting down and accepts no new runs".to_owned(),
            ));
        }
        self.check_executable(&decision)?;
        let run = Run::new(tenant, &decision.decision_id, &decision.winner);
        self.runs.insert(Arc::clone(&run));
        tracing::Span::current().record("run_id", run.id());
        let core = Arc::clone(self);
        let task_run = Arc::clone(&run);
        let span =
            tracing::info_span!("run", run_id = %run.id(), decision_id = %decision.decision_id);
        metrics::gauge!(obs::RUNS_IN_FLIGHT).increment(1.0);
        self.tracker.spawn_blocking(move || {
            let _enter = span.enter();
            let _permit = permit;
            core.execute(&task_run, &request, &ctx, &decision);
            metrics::gauge!(obs::RUNS_IN_FLIGHT).decrement(1.0);
        });
        Ok(run)
    }

    /// Runs the winner (blocking) and records the outcome.
    fn execute(&self, run: &Run, request: &RunRequest, ctx: &DecisionContext, decision: &Decision) {
        if run.state().is_final() {
            return; // cancelled while queued
        }
        let candidate = &decision.winner().candidate;
        let Some(backend) = self.engine.backend(candidate.backend) else {
            run.finish(
                RunState::Error,
                None,
                Some(format!(
                    "no local {} backend in this build",
                    candidate.backend
                )),
                None,
            );
            return;
        };
        run.set_state(RunState::Running);
        let outcome = backend.run_controlled(&JobSpec::from_request(request), &run.control);
        match outcome {
            Ok(result) => {
                let cancelled = run.control.is_cancelled()
                    && result.error_class.as_deref() == Some("cancelled");
                let state = if cancelled {
                    RunState::Cancelled
                } else {
                    RunState::Completed
                };
                metrics::counter!(obs::RUNS,
                    "state" => state.as_str(),
                    "status" => result.status.as_str(),
                    "backend" => candidate.backend.as_str())
                .increment(1);
                // A cancelled run says nothing about the candidate: no telemetry row.
                let file = if cancelled {
                    None
                } else {
                    self.append_telemetry(run, request, ctx, decision, &result)
                };
                tracing::info!(status = %result.status, exit_code = ?result.exit_code, state = state.as_str(), "run finished");
                run.finish(state, Some(result), None, file);
            }
            Err(e) => {
                metrics::counter!(obs::RUNS,
                    "state" => RunState::Error.as_str(),
                    "status" => "not_executed",
                    "backend" => candidate.backend.as_str())
                .increment(1);
                if e.is_user_error() {
                    tracing::info!(error = %e, "run refused");
                } else {
                    tracing::error!(error = %e, "run could not start");
                }
                run.finish(RunState::Error, None, Some(e.to_string()), None);
            }
        }
    }

    fn append_telemetry(
        &self,
        run: &Run,
        request: &RunRequest,
        ctx: &DecisionContext,
        decision: &Decision,
        result: &RunResult,
    ) -> Option<String> {
        let dir = self.telemetry_dir.as_deref()?;
        let mut record = telemetry_record(run.id(), request, ctx, decision, result);
        record.queue_ms = ((result.started_at - run.created_at).as_seconds_f64() * 1000.0).max(0.0);
        match sandstorm_datasets::append_records(dir, std::slice::from_ref(&record)) {
            Ok(file) => Some(file.display().to_string()),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "could not append telemetry");
                None
            }
        }
    }

    /// Stops accepting runs and waits for those in flight; after `grace`, cancels what is
    /// left (killing each process group) and waits for them to end.
    pub async fn drain(&self, grace: Duration) {
        self.tracker.close();
        let active = self.runs.active().len();
        if active > 0 {
            tracing::info!(active, grace_s = grace.as_secs_f64(), "draining runs");
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.runs.active();
            tracing::warn!(left = left.len(), "grace period over, cancelling runs");
            for run in left {
                cancel(&run);
            }
            self.tracker.wait().await;
        }
    }

    /// The model directory the router loads.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }
}

/// Cancels `run`: kills its process group if it runs, or ends it at once if it is queued.
pub(crate) fn cancel(run: &Run) {
    run.control.cancel();
    if run.state() == RunState::Queued {
        run.finish(RunState::Cancelled, None, None, None);
    }
}

/// The telemetry row of one executed run.
pub(crate) fn telemetry_record(
    run_id: &str,
    request: &RunRequest,
    ctx: &DecisionContext,
    decision: &Decision,
    result: &RunResult,
) -> TelemetryRecord {
    let winner = decision.winner();
    let candidate = &winner.candidate;
    let mut r = TelemetryRecord::for_choice(request, candidate, ctx);
    r.decision_id = decision.decision_id.clone();
    r.run_id = run_id.to_owned();
    r.source = "service".to_owned();
    r.n_candidates = decision.n_candidates as u32;
    r.n_feasible = decision.n_feasible as u32;
    r.selection_probability = 1.0;
    r.model_version = Some(decision.model_version.clone());
    if let Some(p) = &winner.prediction {
        r.pred_latency_p50_ms = Some(p.latency_p50_ms);
        r.pred_latency_p95_ms = Some(p.latency_p95_ms);
        r.pred_cost_usd = Some(p.cost_usd);
        r.pred_failure_prob = Some(p.failure_prob);
    }
    r.score = winner.score;
    r.decision_scores = decision.telemetry_scores();
    r.status = result.status;
    r.error_class = result.error_class.clone();
    r.exit_code = result.exit_code;
    r.ts_start_us = Some(to_micros(result.started_at));
    r.ts_end_us = Some(to_micros(result.started_at) + (result.total_ms * 1000.0) as i64);
    r.start_ms = result.start_ms;
    r.exec_ms = result.exec_ms;
    r.total_latency_ms = result.total_ms;
    r.peak_memory_mib = result.peak_memory_mib;
    r.cost_usd = candidate.list_cost_usd(&request.resources, result.total_ms / 1000.0);
    r
}
