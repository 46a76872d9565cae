//! [`Core`]: what the HTTP API and the MCP server share — the router (swappable when models are
//! reloaded), the catalog, the local execution engine, the run registry and telemetry. Deciding
//! is synchronous and quick (tens of microseconds) and runs on the caller's thread with a
//! per-thread [`Scratch`]; runs execute on blocking threads tracked for graceful shutdown.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sandstorm_adapters::Providers;
use sandstorm_executor::{BreakerConfig, Breakers, Executor, FailoverPolicy};
use sandstorm_features::telemetry::{TelemetryRecord, to_micros};
use sandstorm_features::{Candidate, Catalog, DecisionContext, RunRequest};
use sandstorm_router::{Decision, Exploration, ModelSet, Router, Scratch};
use sandstorm_runtime::{Availability, Engine};
use sandstorm_storage::{Location, models as storage_models};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::ServiceError;
use crate::config::Config;
use crate::error::ApiError;
use crate::obs;
use crate::policies::Policies;
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

/// Loads the models of `models_dir`: from a local directory or registry, or, when
/// `remote` is given, from the object store through its local cache.
fn load_models(
    models_dir: &Path,
    remote: Option<&(sandstorm_storage::Remote, PathBuf)>,
) -> Result<ModelSet, ServiceError> {
    match remote {
        None => Ok(ModelSet::load(&resolve_models_dir(models_dir)?)?),
        Some((remote, cache)) => Ok(ModelSet::load(&storage_models::fetch_models(
            remote, cache,
        )?)?),
    }
}

thread_local! {
    /// Each thread's scoring buffers (`Router::decide_with`): no lock, no allocation once grown.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// A router over `catalog` with `models`, running `policies` when there are any and exploring
/// as configured.
fn router_for(
    catalog: &Catalog,
    models: ModelSet,
    policies: Option<&Policies>,
    exploration: Exploration,
) -> Result<Router, ServiceError> {
    let router = Router::new(catalog, models).with_exploration(exploration)?;
    Ok(match policies {
        Some(p) => router.with_policies(p.store().clone()),
        None => router,
    })
}

/// The shared state of the service.
#[derive(Debug)]
pub struct Core {
    router: RwLock<Arc<Router>>,
    catalog: Catalog,
    models_dir: PathBuf,
    /// The object store `models_dir` names, with the local cache its versions go to.
    remote_models: Option<(sandstorm_storage::Remote, PathBuf)>,
    /// How the router explores (kept across model reloads).
    exploration: Exploration,
    /// Runs decisions: local engine, remote providers, edge agents, failover, breakers.
    executor: Executor,
    pub(crate) runs: Registry,
    /// The one writer of this service's telemetry (write-ahead log, then Parquet).
    telemetry: Option<sandstorm_datasets::TelemetryWriter>,
    tracker: TaskTracker,
    /// The WASM policies every decision runs, when the configuration has `[policies]`.
    pub(crate) policies: Option<Policies>,
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
        let remote_models =
            match Location::parse("models_dir", &config.models_dir.to_string_lossy())
                .map_err(|e| ServiceError::Config(e.to_string()))?
            {
                Location::Local(_) => None,
                Location::Remote(remote) => {
                    let cache = config
                        .models_cache_dir
                        .clone()
                        .unwrap_or_else(|| storage_models::default_models_cache(&remote));
                    Some((remote, cache))
                }
            };
        let models = load_models(&config.models_dir, remote_models.as_ref())?;
        let policies = config.policies.as_ref().map(Policies::open).transpose()?;
        let router = router_for(&catalog, models, policies.as_ref(), config.exploration)?;
        if !config.exploration.is_off() {
            tracing::info!(exploration = %config.exploration, "router explores");
        }
        let telemetry = match &config.telemetry_dir {
            None => None,
            Some(dir) => {
                let location = Location::parse("telemetry_dir", &dir.to_string_lossy())
                    .map_err(|e| ServiceError::Config(e.to_string()))?;
                let options = sandstorm_datasets::WriterOptions {
                    spool_dir: config.telemetry_spool_dir.clone(),
                    ..sandstorm_datasets::WriterOptions::default()
                };
                Some(sandstorm_datasets::TelemetryWriter::open_at(
                    &location, options,
                )?)
            }
        };
        let engine = Engine::new();
        for (backend, availability) in engine.availability() {
            tracing::info!(%backend, %availability, "local backend");
        }
        let providers = Providers::from_env_and_catalog(&catalog);
        for (provider, availability) in providers.availability() {
            tracing::info!(%provider, %availability, "remote provider");
        }
        let executor = Executor::new(
            Arc::new(engine),
            providers,
            Breakers::new(BreakerConfig::default()),
            FailoverPolicy::default(),
        );
        Ok(Self {
            router: RwLock::new(Arc::new(router)),
            catalog,
            models_dir: config.models_dir.clone(),
            remote_models,
            exploration: config.exploration,
            executor,
            runs: Registry::new(config.max_retained_runs),
            telemetry,
            tracker: TaskTracker::new(),
            policies,
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
        self.executor.engine().availability()
    }

    /// Loads the model directory again (the registry's current champion when `models_dir` is
    /// a model registry) and swaps it in; decisions in flight finish with the old models.
    /// Blocking (reads files).
    pub fn reload_models(&self) -> Result<String, ServiceError> {
        let models = load_models(&self.models_dir, self.remote_models.as_ref())?;
        let version = models.version().to_owned();
        let router = Arc::new(router_for(
            &self.catalog,
            models,
            self.policies.as_ref(),
            self.exploration,
        )?);
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
        if let Some((remote, _)) = &self.remote_models {
            return self.watch_remote_champion(remote.clone(), every);
        }
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

    /// [`Core::watch_champion`] of a registry in an object store: polls the `champion` object
    /// (a small GET per tick, on a blocking thread); a store that cannot be reached is logged
    /// and polled again.
    fn watch_remote_champion(
        self: &Arc<Self>,
        remote: sandstorm_storage::Remote,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut seen = match storage_models::read_champion(&remote) {
            Ok(Some(version)) => Some(version),
            Ok(None) => return None, // a plain model directory
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the champion pointer; polling it anyway");
                None
            }
        };
        let core = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let remote = remote.clone();
                let now = match tokio::task::spawn_blocking(move || {
                    storage_models::read_champion(&remote)
                })
                .await
                {
                    Ok(Ok(Some(version))) => Some(version),
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the champion pointer");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "champion poll task failed");
                        continue;
                    }
                };
                if now == seen {
                    continue;
                }
                let core = Arc::clone(&core);
                match tokio::task::spawn_blocking(move || core.reload_models()).await {
                    Ok(Ok(version)) => {
                        tracing::info!(%version, "new champion loaded");
                        seen = now;
                    }
                    Ok(Err(e)) => {
                        // Tried again at the next tick (a download may have failed).
                        tracing::error!(error = %e, "cannot load the new champion; keeping the current models")
                    }
                    Err(e) => tracing::error!(error = %e, "champion reload task failed"),
                }
            }
        }))
    }

    /// Why `candidate` cannot run from this host right now, if it cannot: a local backend
    /// that does not work here, a provider without credentials, an open circuit breaker.
    pub fn unavailable_reason(&self, candidate: &Candidate) -> Option<String> {
        self.executor.unavailable_reason(candidate)
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
                for report in &decision.policies {
                    metrics::histogram!(obs::POLICY_SECONDS, "policy" => report.name.clone())
                        .record(report.elapsed_us / 1e6);
                    if let Some(failure) = &report.failure {
                        metrics::counter!(obs::POLICY_ERRORS,
                            "policy" => report.name.clone(),
                            "kind" => failure.kind.as_str())
                        .increment(1);
                    }
                }
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

    /// Checks that the winner of `decision` can still execute here (its provider or breaker
    /// may have changed since the decision).
    pub(crate) fn check_executable(&self, decision: &Decision) -> Result<(), ApiError> {
        let candidate = &decision.winner().candidate;
        match self.executor.unavailable_reason(candidate) {
            None => Ok(()),
            Some(reason) => Err(ApiError::NotExecutable {
                message: format!("routed to {}, which cannot run now: {reason}", candidate.id),
                decision_id: decision.decision_id.clone(),
            }),
        }
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

    /// Runs the decision (blocking): the winner, then its fallbacks on retryable failures,
    /// and records every attempt's telemetry.
    fn execute(&self, run: &Run, request: &RunRequest, ctx: &DecisionContext, decision: &Decision) {
        if run.state().is_final() {
            return; // cancelled while queued
        }
        run.set_state(RunState::Running);
        let execution = self.executor.execute(request, ctx, decision, &run.control);
        let file = self.append_telemetry(run, execution.telemetry());
        let backend = execution
            .ran()
            .map(|a| a.record.backend.clone())
            .unwrap_or_default();
        match (execution.ran(), execution.result()) {
            (Some(attempt), Some(result)) => {
                let state = if attempt.cancelled {
                    RunState::Cancelled
                } else {
                    RunState::Completed
                };
                metrics::counter!(obs::RUNS,
                    "state" => state.as_str(),
                    "status" => result.status.as_str(),
                    "backend" => backend)
                .increment(1);
                tracing::info!(candidate = %attempt.candidate_id, status = %result.status,
                    exit_code = ?result.exit_code, state = state.as_str(), "run finished");
                run.finish(state, Some(result.clone()), None, file);
            }
            _ => {
                let error = execution
                    .error()
                    .map_or("no candidate could run it".to_owned(), ToString::to_string);
                let state = if run.control.is_cancelled() {
                    RunState::Cancelled
                } else {
                    RunState::Error
                };
                metrics::counter!(obs::RUNS,
                    "state" => state.as_str(),
                    "status" => "not_executed",
                    "backend" => backend)
                .increment(1);
                tracing::warn!(
                    error,
                    attempts = execution.attempts.len(),
                    "run could not execute"
                );
                run.finish(state, None, Some(error), file);
            }
        }
    }

    /// Appends the attempts' rows (the run's id on each, `source` = `service`); returns the
    /// write-ahead segment that holds them.
    fn append_telemetry(&self, run: &Run, mut rows: Vec<TelemetryRecord>) -> Option<String> {
        let writer = self.telemetry.as_ref()?;
        if rows.is_empty() {
            return None;
        }
        for row in &mut rows {
            row.run_id = run.id().to_owned();
            row.source = "service".to_owned();
            if let Some(start) = row.ts_start_us {
                let created = to_micros(run.created_at);
                row.queue_ms = ((start - created) as f64 / 1000.0).max(0.0);
            }
        }
        match writer.append_all(&rows) {
            Ok(ack) => Some(ack.segment.display().to_string()),
            Err(e) => {
                let dir = writer.root();
                tracing::error!(dir = %dir.display(), error = %e, "could not append telemetry");
                None
            }
        }
    }

    /// Stops accepting runs and waits for those in flight; after `grace`, cancels what is
    /// left (killing each process group) and waits for them to end. Then compacts the
    /// telemetry written so far into Parquet.
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
        // Publish the telemetry of the drained runs now rather than at the next start.
        if let Some(writer) = &self.telemetry {
            match writer.flush() {
                Ok(files) => tracing::info!(files = files.len(), "telemetry compacted"),
                Err(e) => tracing::error!(error = %e, "telemetry stays in the wal until recovered"),
            }
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
