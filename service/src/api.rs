//! The HTTP API: the axum router, its shared [`AppState`], every handler (each documented for
//! the OpenAPI document with `utoipa::path`), and the [`ApiDoc`] served at `/openapi.json`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{KeyStore, Principal};
use crate::config::Config;
use crate::core::{self, Core};
use crate::error::{ApiError, ErrorBody};
use crate::input::{parse_json, parse_run_request};
use crate::limits::TenantLimits;
use crate::obs;
use crate::policies::{Policies, PolicyInfo, PublishPolicy};
use crate::runs::{LogEvent, RunView};
use crate::schema::{
    CatalogView, DecisionDoc, Health, ModelsReloaded, ModelsView, PolicyList, RunAccepted, RunList,
    RunRequestDoc,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) keys: KeyStore,
    pub(crate) limits: TenantLimits,
    pub(crate) body_limit: usize,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(core: Arc<Core>, config: &Config) -> Self {
        Self(Arc::new(Shared {
            core,
            keys: KeyStore::new(&config.api_keys),
            limits: TenantLimits::new(config),
            body_limit: config.body_limit_bytes,
            draining: AtomicBool::new(false),
        }))
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// The API's routes, with the body limit, request spans and metrics, and panic safety net.
pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/route", post(route))
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(cancel_run))
        .route("/v1/runs/{id}/logs", get(run_logs))
        .route("/v1/policies", get(list_policies).post(publish_policy))
        .route("/v1/models", get(models))
        .route("/v1/models/reload", post(reload_models))
        .route("/v1/catalog", get(catalog))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(obs::observe_requests))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".to_owned()).into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

/// The raw body, with a JSON 413 beyond the configured limit.
pub(crate) struct Body(pub(crate) Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: state.body_limit,
                    }
                } else {
                    ApiError::invalid(
                        None,
                        format!("could not read the request body: {rejection}"),
                    )
                }
            })
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn to_json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    serde_json::to_vec(value)
        .map(|body| json_bytes(status, body))
        .map_err(|e| ApiError::Internal(format!("serializing a response: {e}")))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the process is alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        model_version: None,
    })
}

/// Readiness: models loaded, backends probed, not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "ready to route and run", body = Health),
        (status = 503, description = "shutting down", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.draining.load(Ordering::SeqCst) || state.core.is_draining() {
        return Err(ApiError::Unavailable("shutting down".to_owned()));
    }
    Ok(Json(Health {
        status: "ready",
        model_version: Some(state.core.router().models().version().to_owned()),
    }))
}

/// Prometheus metrics (admin keys only: they cover every tenant).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn metrics_page(principal: Principal) -> Result<Response, ApiError> {
    principal.require_admin("reading metrics")?;
    let text = obs::prometheus().render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "the OpenAPI document", body = Object),
        (status = 401, body = ErrorBody)))]
async fn openapi_json(_principal: Principal) -> Result<Response, ApiError> {
    to_json(StatusCode::OK, &ApiDoc::openapi())
}

/// Decide where a request would run, without running it.
#[utoipa::path(post, path = "/v1/route", tag = "routing", security(("api_key" = [])),
    request_body = RunRequestDoc,
    params(("view" = Option<String>, Query,
        description = "`full` (default): every enumerated candidate with its verdict; `summary`: only the winner and the fallbacks")),
    responses(
        (status = 200, description = "the ranked, explained decision", body = DecisionDoc),
        (status = 400, description = "invalid request; `fields` names each bad field", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "no candidate meets the constraints", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn route(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let summary = summary_view(query.as_deref())?;
    let request = parse_run_request(&body, &principal.tenant)?;
    let (mut decision, _) = state.core.decide(&request)?;
    if summary {
        // Ranked feasible candidates come first: the winner, then the fallbacks.
        decision.candidates.truncate(1 + decision.fallbacks.len());
    }
    to_json(StatusCode::OK, &decision)
}

/// Whether the query string asks for `view=summary` (`view=full` or nothing: the full
/// decision); anything else is a 400 naming the parameter.
fn summary_view(query: Option<&str>) -> Result<bool, ApiError> {
    let mut summary = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("view", "full")) => summary = false,
            Some(("view", "summary")) => summary = true,
            Some(("view", other)) => {
                return Err(ApiError::invalid(
                    Some("view"),
                    format!("unknown view {other:?}: expected `full` or `summary`"),
                ));
            }
            _ => {
                let name = pair.split('=').next().unwrap_or(pair);
                return Err(ApiError::invalid(
                    Some(name),
                    format!("unknown query parameter {name:?}: /v1/route takes only `view`"),
                ));
            }
        }
    }
    Ok(summary)
}

/// Route a request and execute it on the winner (local backends in this build).
#[utoipa::path(post, path = "/v1/runs", tag = "runs", security(("api_key" = [])),
    request_body = RunRequestDoc,
    responses(
        (status = 202, description = "accepted; poll the run or stream its logs", body = RunAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 409, description = "the winner is a provider this build cannot execute", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "rate or concurrency limit", body = ErrorBody),
        (status = 503, description = "shutting down", body = ErrorBody)))]
async fn create_run(
    State(state): State<AppState>,
    principal: Principal,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let request = parse_run_request(&body, &principal.tenant)?;
    let (decision, ctx) = state.core.decide(&request)?;
    state.core.check_executable(&decision)?;
    let permit = state.limits.acquire_run(&principal.tenant)?;
    let run = state
        .core
        .start_run(&principal.tenant, request, ctx, decision, Some(permit))?;
    let id = run.id().to_owned();
    to_json(
        StatusCode::ACCEPTED,
        &RunAccepted {
            status_url: format!("/v1/runs/{id}"),
            logs_url: format!("/v1/runs/{id}/logs"),
            run_id: id,
            decision_id: run.decision_id.clone(),
            candidate: run.candidate.clone(),
            state: run.state(),
        },
    )
}

/// The caller's runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", security(("api_key" = [])),
    responses((status = 200, body = RunList), (status = 401, body = ErrorBody)))]
async fn list_runs(State(state): State<AppState>, principal: Principal) -> Json<RunList> {
    Json(RunList {
        runs: state
            .core
            .runs
            .list(Some(&principal.tenant))
            .iter()
            .map(|r| r.view())
            .collect(),
    })
}

fn find_run(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Arc<crate::runs::Run>, ApiError> {
    tracing::Span::current().record("run_id", id);
    state
        .core
        .runs
        .get(id, Some(&principal.tenant))
        .ok_or_else(|| {
            ApiError::NotFound(format!("no run `{id}` for tenant `{}`", principal.tenant))
        })
}

/// A run's state and, once it ran, its result.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", security(("api_key" = [])),
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "no such run for this tenant", body = ErrorBody)))]
async fn get_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    Ok(Json(find_run(&state, &principal, &id)?.view()))
}

/// Cancel a run: its whole process group is killed.
#[utoipa::path(delete, path = "/v1/runs/{id}", tag = "runs", security(("api_key" = [])),
    params(("id" = String, Path, description = "run id")),
    responses((status = 202, description = "cancelling; the run ends as `cancelled`", body = RunView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the run already finished", body = ErrorBody)))]
async fn cancel_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = find_run(&state, &principal, &id)?;
    let current = run.state();
    if current.is_final() {
        return Err(ApiError::Conflict(format!(
            "run `{id}` already finished ({})",
            current.as_str()
        )));
    }
    core::cancel(&run);
    Ok((StatusCode::ACCEPTED, Json(run.view())))
}

/// A run's output as server-sent events: `stdout` and `stderr` chunks as they are produced
/// and `state` changes; the stream ends after the final state (`completed`, `cancelled`,
/// `error`). Connecting late replays the log from the start.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "runs", security(("api_key" = [])),
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, description = "`text/event-stream`; each event's `id` is its position in the log", body = LogEvent, content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn run_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = find_run(&state, &principal, &id)?;
    Ok(crate::runs::sse_logs(&run))
}

/// The policies the router applies, with their active versions.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", security(("api_key" = [])),
    responses((status = 200, body = PolicyList), (status = 401, body = ErrorBody)))]
async fn list_policies(State(state): State<AppState>, _principal: Principal) -> Json<PolicyList> {
    Json(PolicyList {
        policies: state
            .core
            .policies
            .as_ref()
            .map(Policies::list)
            .unwrap_or_default(),
    })
}

/// Publish a signed policy version (admin): the files `sandstorm policy publish` writes. The
/// signature must verify against the service's trusted keys and the module must compile; the
/// version is then stored in the registry and runs on the next decision.
#[utoipa::path(post, path = "/v1/policies", tag = "policies", security(("api_key" = [])),
    request_body = PublishPolicy,
    responses(
        (status = 201, body = PolicyInfo),
        (status = 400, description = "bad base64, manifest or signature, an untrusted signer, a module that does not match its manifest or is not a valid policy", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "the key lacks the `admin` scope", body = ErrorBody),
        (status = 409, description = "this version is already published", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 501, description = "the service has no `[policies]` configuration", body = ErrorBody)))]
async fn publish_policy(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require_admin("publishing policies")?;
    if state.core.policies.is_none() {
        return Err(ApiError::NotImplemented(
            "this service runs no policies: add a [policies] section (registry, trusted_keys) to its configuration".to_owned(),
        ));
    }
    let upload: PublishPolicy = parse_json(&body)?;
    let core = Arc::clone(&state.core);
    let info = tokio::task::spawn_blocking(move || match &core.policies {
        Some(p) => p.publish(upload),
        None => Err(ApiError::Internal("policies vanished".to_owned())),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("publishing task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// The active model set: version, training windows, per-model trees and holdout metrics.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("api_key" = [])),
    responses((status = 200, body = ModelsView), (status = 401, body = ErrorBody)))]
async fn models(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<Response, ApiError> {
    let router = state.core.router();
    let active = serde_json::to_value(router.models().metadata())
        .map_err(|e| ApiError::Internal(format!("serializing model metadata: {e}")))?;
    to_json(StatusCode::OK, &ModelsView { active })
}

/// Reload the model directory (admin), e.g. after `sandstorm train` wrote a new model set.
#[utoipa::path(post, path = "/v1/models/reload", tag = "models", security(("api_key" = [])),
    responses((status = 200, body = ModelsReloaded),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 500, description = "the directory could not be loaded; the old models stay active", body = ErrorBody)))]
async fn reload_models(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ModelsReloaded>, ApiError> {
    principal.require_admin("reloading models")?;
    let previous_version = state.core.router().models().version().to_owned();
    let core = Arc::clone(&state.core);
    let version = tokio::task::spawn_blocking(move || core.reload_models())
        .await
        .map_err(|e| ApiError::Internal(format!("model reload task: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(key = ?principal.key_name, %previous_version, %version, "models reloaded");
    Ok(Json(ModelsReloaded {
        previous_version,
        version,
    }))
}

/// The catalog: regions, providers with prices and their sources, and every candidate with
/// whether this host can run it now.
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog", security(("api_key" = [])),
    responses((status = 200, body = CatalogView), (status = 401, body = ErrorBody)))]
async fn catalog(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<Response, ApiError> {
    let core = &state.core;
    let catalog = core.catalog();
    let candidates = core
        .router()
        .candidates()
        .iter()
        .map(|c| {
            let mut v = to_value(&**c)?;
            let reason = core.unavailable_reason(c);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("available_here".into(), (reason.is_none()).into());
                obj.insert("unavailable_reason".into(), reason.into());
            }
            Ok(v)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    to_json(
        StatusCode::OK,
        &CatalogView {
            schema_version: catalog.schema_version,
            regions: to_value(&catalog.regions)?,
            providers: to_value(&catalog.providers)?,
            candidates,
        },
    )
}

fn to_value<T: serde::Serialize + ?Sized>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(format!("serializing: {e}")))
}

/// The OpenAPI document of the API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Sandstorm router service", description = "Route code-execution requests to the best provider × isolation × region, run them, stream their output."),
    paths(healthz, readyz, metrics_page, openapi_json, route, create_run, list_runs, get_run,
        cancel_run, run_logs, list_policies, publish_policy, models, reload_models, catalog),
    components(schemas(ErrorBody, RunRequestDoc, DecisionDoc, RunAccepted, RunView, LogEvent,
        Health, PolicyList, PolicyInfo, PublishPolicy, ModelsView, ModelsReloaded, CatalogView, RunList)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("an api key from the service configuration"))
                        .build(),
                ),
            );
        }
    }
}
