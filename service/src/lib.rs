//! The router service: Sandstorm's front door for autopilot customers and AI agents.
//!
//! - [`Service`]: the HTTP API (axum on tokio) — `POST /v1/route` (decision only),
//!   `POST /v1/runs` (route and execute on a local backend), `GET /v1/runs/{id}`,
//!   `GET /v1/runs/{id}/logs` (server-sent events), `DELETE /v1/runs/{id}` (cancel: kills the
//!   process group), `GET/POST /v1/policies`, `GET /v1/models`, `POST /v1/models/reload`,
//!   `GET /v1/catalog`, `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus) and
//!   `GET /openapi.json` ([`ApiDoc`], generated from the handlers with utoipa).
//! - Auth: API keys stored as SHA-256 in the [`Config`], mapped to tenants; tenants see only
//!   their own runs; the `admin` scope publishes policies, reloads models and reads metrics.
//!   Per-tenant rate limits (GCRA, `governor`) and concurrency limits answer 429.
//! - Hot reload: `models_dir` may be a model registry (`sandstorm models`), local or in an
//!   object store (`s3://...`, versions downloaded into a local cache); the service then
//!   serves its champion and swaps models in when the `champion` pointer changes.
//! - [`mcp`]: the same core as an MCP server over stdio (`rmcp`), with tools `route`, `run`,
//!   `get_run`, `list_backends` and resources for run logs and results.
//!
//! Every client mistake is a 4xx with a JSON error naming the field; internal errors are a
//! 500 that leaks nothing (see `error`). Shutdown stops accepting, drains in-flight runs for
//! `shutdown_grace_s`, then cancels what is left. This crate is serving code: it never depends
//! on the trainer, polars or DataFusion (`scripts/check-invariants.sh`).

pub mod agent;
mod api;
mod auth;
mod config;
mod core;
mod error;
mod input;
mod limits;
pub mod mcp;
mod obs;
mod policies;
mod runs;
mod schema;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use agent::{Agent, AgentConfig};
pub use api::ApiDoc;
pub use config::{ApiKey, Config, Limits, PoliciesConfig, Scope, TenantLimits, hash_api_key};
pub use core::{CHAMPION_FILE, Core, resolve_models_dir};

/// How often a service on a model registry checks the champion pointer.
const CHAMPION_POLL: Duration = Duration::from_secs(2);
pub use policies::PolicyInfo;
pub use runs::{LogEvent, Run, RunState, RunView};

/// Everything that can stop the service from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration file is missing, unreadable or breaks a rule.
    #[error("invalid service configuration: {0}")]
    Config(String),
    /// The model directory or catalog could not be loaded.
    #[error(transparent)]
    Router(#[from] sandstorm_router::RouterError),
    #[error(transparent)]
    Features(#[from] sandstorm_features::FeaturesError),
    /// Binding or serving the socket failed.
    #[error("cannot serve on {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The telemetry directory could not be opened (or a dead writer's log recovered).
    #[error("telemetry: {0}")]
    Telemetry(#[from] sandstorm_datasets::DatasetsError),
    /// A model or telemetry location in an object store failed (unreachable, missing).
    #[error(transparent)]
    Storage(#[from] sandstorm_storage::StorageError),
    /// The MCP transport failed.
    #[error("mcp server: {0}")]
    Mcp(String),
    /// A bug in Sandstorm.
    #[error("internal service error: {0}")]
    Internal(String),
}

/// Loads the models and catalog and probes the local backends, off the async threads.
pub async fn load_core(config: &Config) -> Result<Arc<Core>, ServiceError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || Core::new(&config))
        .await
        .map_err(|e| ServiceError::Internal(format!("loading task failed: {e}")))?
        .map(Arc::new)
}

/// The HTTP service, bound to its socket and ready to [`Service::run`].
#[derive(Debug)]
pub struct Service {
    core: Arc<Core>,
    state: api::AppState,
    listener: tokio::net::TcpListener,
    grace: Duration,
}

impl Service {
    /// Loads everything and binds `config.listen`.
    pub async fn bind(config: Config) -> Result<Self, ServiceError> {
        config.validate()?;
        let core = load_core(&config).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServiceError::Io {
                addr: config.listen.to_string(),
                source,
            })?;
        // Install the recorder before the first request.
        obs::prometheus();
        Ok(Self {
            state: api::AppState::new(Arc::clone(&core), &config),
            core,
            listener,
            grace: Duration::try_from_secs_f64(config.shutdown_grace_s).unwrap_or_default(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServiceError> {
        self.listener
            .local_addr()
            .map_err(|source| ServiceError::Io {
                addr: "the listener".to_owned(),
                source,
            })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Serves until `shutdown` completes, then stops accepting connections, drains in-flight
    /// runs (cancelling them after the grace period) and returns once every connection ended.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let addr = self.local_addr()?;
        let Service {
            core,
            state,
            listener,
            grace,
        } = self;
        let app = api::router(state.clone());
        let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
        let drain_core = Arc::clone(&core);
        let drain = tokio::spawn(async move {
            if signal_rx.await.is_ok() {
                drain_core.drain(grace).await;
            }
        });
        let upkeep = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                obs::prometheus().run_upkeep();
            }
        });
        let champion = core.watch_champion(CHAMPION_POLL);
        tracing::info!(%addr, "serving");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutdown requested: refusing new connections, draining runs");
                state.set_draining();
                let _ = signal_tx.send(());
            })
            .await;
        upkeep.abort();
        if let Some(w) = champion {
            w.abort();
        }
        // Connections are closed; wait for the runs (their drain started with the signal;
        // draining again is immediate, and covers a server that stopped without one).
        let _ = drain.await;
        core.drain(grace).await;
        tracing::info!("stopped");
        served.map_err(|source| ServiceError::Io {
            addr: addr.to_string(),
            source,
        })
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
