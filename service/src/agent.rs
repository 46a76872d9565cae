//! The edge agent: `sandstorm agent` serves this host's local runtime over HTTP so that a
//! router elsewhere can dispatch jobs to it (the catalog lists the agent as an `edge`
//! provider with its region and endpoint).
//!
//! - `GET /v1/agent/health` (no token): the agent's name, region and which local backends
//!   work here.
//! - `POST /v1/agent/runs?backend=B&decision_id=D`: the body is a run request (the same JSON
//!   as `POST /v1/runs`); the job starts on backend `B` and the answer (202) carries its id.
//! - `GET /v1/agent/runs/{id}`: state and, once finished, the result.
//! - `GET /v1/agent/runs/{id}/logs`: output as server-sent events, like the router's.
//! - `DELETE /v1/agent/runs/{id}`: cancel (the job's process group is killed).
//!
//! Every endpoint but health needs `Authorization: Bearer <token>`; the agent keeps only the
//! token's SHA-256 and compares in constant time. Errors are the service's JSON errors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandstorm_features::IsolationBackend;
use sandstorm_runtime::{Availability, Engine, EngineConfig, JobSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use crate::runs::{Registry, Run, RunState, RunView};
use crate::{ServiceError, core, input};

/// Tenant name of every run an agent holds (the router that dispatched it owns it).
const AGENT_TENANT: &str = "router";

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The agent's name, as the catalog's edge provider.
    pub name: String,
    /// The region (POP) the agent stands in.
    pub region: String,
    /// The bearer token routers must present (read from a file by the CLI).
    pub token: String,
    pub engine: EngineConfig,
    /// Finished runs kept for `GET` before the oldest are forgotten.
    pub max_retained_runs: usize,
    pub max_body_bytes: usize,
}

impl AgentConfig {
    fn validate(&self) -> Result<(), ServiceError> {
        if self.token.trim().len() < 16 {
            return Err(ServiceError::Config(
                "the agent token must be at least 16 characters".to_owned(),
            ));
        }
        if self.name.trim().is_empty() || self.region.trim().is_empty() {
            return Err(ServiceError::Config(
                "the agent needs a name and a region".to_owned(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct AgentState {
    name: String,
    region: String,
    token_sha256: [u8; 32],
    engine: Arc<Engine>,
    runs: Registry,
    tracker: TaskTracker,
}

/// A bound, not yet serving, edge agent.
#[derive(Debug)]
pub struct Agent {
    state: Arc<AgentState>,
    listener: tokio::net::TcpListener,
    body_limit: usize,
}

impl Agent {
    /// Probes the local backends (in a blocking task) and binds the listener.
    pub async fn bind(config: AgentConfig) -> Result<Self, ServiceError> {
        config.validate()?;
        let engine_config = config.engine.clone();
        let engine = tokio::task::spawn_blocking(move || {
            let engine = Engine::with_config(&engine_config);
            engine.availability();
            engine
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("probing the backends failed: {e}")))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServiceError::Io {
                addr: config.listen.to_string(),
                source,
            })?;
        Ok(Self {
            state: Arc::new(AgentState {
                name: config.name,
                region: config.region,
                token_sha256: Sha256::digest(config.token.trim().as_bytes()).into(),
                engine: Arc::new(engine),
                runs: Registry::new(config.max_retained_runs),
                tracker: TaskTracker::new(),
            }),
            listener,
            body_limit: config.max_body_bytes,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServiceError> {
        self.listener
            .local_addr()
            .map_err(|source| ServiceError::Io {
                addr: "the listener".to_owned(),
                source,
            })
    }

    /// Serves until `shutdown`, then cancels what still runs and waits for it.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let addr = self.local_addr()?;
        let state = Arc::clone(&self.state);
        let app = Router::new()
            .route("/v1/agent/health", get(health))
            .route("/v1/agent/runs", post(start_run))
            .route("/v1/agent/runs/{id}", get(get_run).delete(cancel_run))
            .route("/v1/agent/runs/{id}/logs", get(run_logs))
            .fallback(|| async { ApiError::NotFound("no such agent route".to_owned()) })
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(Arc::clone(&self.state));
        tracing::info!(%addr, agent = %state.name, region = %state.region, "agent serving");
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        for run in state.runs.active() {
            core::cancel(&run);
        }
        state.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(30), state.tracker.wait()).await;
        served.map_err(|source| ServiceError::Io {
            addr: addr.to_string(),
            source,
        })
    }
}

fn authenticate(state: &AgentState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("missing `Authorization: Bearer <agent token>`".to_owned())
        })?;
    let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
    // Constant time: every byte is compared whatever the earlier ones were.
    let diff = digest
        .iter()
        .zip(state.token_sha256.iter())
        .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid agent token".to_owned()))
    }
}

#[derive(Debug, Serialize)]
struct Health {
    agent: String,
    region: String,
    backends: Vec<BackendHealth>,
}

#[derive(Debug, Serialize)]
struct BackendHealth {
    backend: IsolationBackend,
    available: bool,
    detail: String,
}

async fn health(State(state): State<Arc<AgentState>>) -> Response {
    let backends = state
        .engine
        .availability()
        .iter()
        .map(|(backend, a)| BackendHealth {
            backend: *backend,
            available: a.is_available(),
            detail: a.explanation().to_owned(),
        })
        .collect();
    axum::Json(Health {
        agent: state.name.clone(),
        region: state.region.clone(),
        backends,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    backend: String,
    decision_id: Option<String>,
}

/// What `POST /v1/agent/runs` answers.
#[derive(Debug, Serialize)]
struct Accepted {
    run_id: String,
    agent: String,
    backend: IsolationBackend,
    state: RunState,
}

async fn start_run(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    params: Result<Query<StartParams>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let Query(params) = params.map_err(|e| {
        ApiError::invalid(
            Some("query"),
            format!("expected `?backend=<isolation backend>[&decision_id=<id>]`: {e}"),
        )
    })?;
    let backend: IsolationBackend = serde_json::from_value(serde_json::Value::String(
        params.backend.clone(),
    ))
    .map_err(|_| {
        ApiError::invalid(
            Some("backend"),
            format!(
                "unknown backend `{}`; expected one of process, bubblewrap, gvisor, rootless_oci, microvm",
                params.backend
            ),
        )
    })?;
    let request = input::parse_run_request(&body, AGENT_TENANT)?;
    match state.engine.availability().get(&backend) {
        Some(Availability::Available { .. }) if state.engine.backend(backend).is_some() => {}
        Some(Availability::Unavailable { reason }) => {
            return Err(ApiError::Unavailable(format!(
                "backend {backend} is unavailable on agent {}: {reason}",
                state.name
            )));
        }
        _ => {
            return Err(ApiError::Unavailable(format!(
                "agent {} has no {backend} backend",
                state.name
            )));
        }
    }
    let decision_id = params.decision_id.unwrap_or_default();
    let run = Run::new(
        AGENT_TENANT,
        &decision_id,
        &format!("{}/{backend}", state.name),
    );
    state.runs.insert(Arc::clone(&run));
    let task_state = Arc::clone(&state);
    let task_run = Arc::clone(&run);
    let job = JobSpec::from_request(&request);
    state.tracker.spawn_blocking(move || {
        if task_run.state().is_final() {
            return;
        }
        let Some(runner) = task_state.engine.backend(backend) else {
            task_run.finish(RunState::Error, None, Some("backend vanished".into()), None);
            return;
        };
        task_run.set_state(RunState::Running);
        match runner.run_controlled(&job, &task_run.control) {
            Ok(result) => {
                let cancelled = task_run.control.is_cancelled()
                    && result.error_class.as_deref() == Some("cancelled");
                let final_state = if cancelled {
                    RunState::Cancelled
                } else {
                    RunState::Completed
                };
                tracing::info!(run_id = task_run.id(), status = %result.status, "agent run finished");
                task_run.finish(final_state, Some(result), None, None);
            }
            Err(e) => task_run.finish(RunState::Error, None, Some(e.to_string()), None),
        }
    });
    let accepted = Accepted {
        run_id: run.id().to_owned(),
        agent: state.name.clone(),
        backend,
        state: run.state(),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response())
}

fn find(state: &AgentState, id: &str) -> Result<Arc<Run>, ApiError> {
    state
        .runs
        .get(id, Some(AGENT_TENANT))
        .ok_or_else(|| ApiError::NotFound(format!("no run `{id}` on agent {}", state.name)))
}

async fn get_run(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<RunView>, ApiError> {
    authenticate(&state, &headers)?;
    Ok(axum::Json(find(&state, &id)?.view()))
}

async fn cancel_run(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<RunView>), ApiError> {
    authenticate(&state, &headers)?;
    let run = find(&state, &id)?;
    if run.state().is_final() {
        return Err(ApiError::Conflict(format!(
            "run `{id}` already finished ({})",
            run.state().as_str()
        )));
    }
    core::cancel(&run);
    Ok((StatusCode::ACCEPTED, axum::Json(run.view())))
}

async fn run_logs(
    State(state): State<Arc<AgentState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let run = find(&state, &id)?;
    Ok(crate::runs::sse_logs(&run).into_response())
}
