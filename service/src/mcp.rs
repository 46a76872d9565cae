//! The MCP server (`sandstorm mcp`): the service's core over the Model Context Protocol on
//! stdio (the official Rust SDK, `rmcp`), so an AI agent can use Sandstorm as its
//! code-execution tool.
//!
//! Tools: `route` (decide only), `run` (route, execute on a local backend, wait, and return
//! the program's output), `get_run`, `list_backends`. Resources: for each run,
//! `sandstorm://runs/{id}/logs` (output and state changes in order) and the artifacts
//! `sandstorm://runs/{id}/artifacts/{stdout.txt,stderr.txt,result.json}`. Everything runs as
//! one tenant (`--tenant`, default `mcp`): stdio has no API keys, whoever starts the process
//! is the caller.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router,
};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::config::Config;
use crate::core::Core;
use crate::error::ApiError;
use crate::input::parse_run_request;
use crate::limits::TenantLimits;
use crate::runs::{Run, RunState};

/// The tenant MCP runs act for unless told otherwise.
pub const DEFAULT_TENANT: &str = "mcp";

/// A run request, as tool arguments (the same fields as `POST /v1/runs`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RequestArgs {
    /// Language: `python`, `node`, `bash` or `sh`.
    pub language: String,
    /// A shell command line, run with `sh -c` (give `command` or `code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Inline code, run with the language's interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Files placed in the job directory: `[{"path": "data.txt", "content": "..."}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<serde_json::Value>,
    /// `{"cpu": 1, "memory_mib": 512}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    /// Wall-clock limit in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Whether the code may use the network (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_network: Option<bool>,
    /// `optimize_cost` (default), `optimize_latency` or `balanced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// For `balanced`: weight of cost against latency in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_weight: Option<f64>,
    /// Hard constraints, e.g. `{"allowed_providers": ["local"], "min_isolation": "namespace"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<serde_json::Value>,
    /// Free-form labels copied to telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<serde_json::Value>,
}

/// Arguments of `get_run`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunIdArgs {
    /// The run id `run` returned.
    pub run_id: String,
}

/// The MCP server.
#[derive(Debug, Clone)]
pub struct SandstormMcp {
    core: Arc<Core>,
    limits: Arc<TenantLimits>,
    tenant: String,
    tool_router: ToolRouter<Self>,
}

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn json_result(text: String, value: serde_json::Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

impl SandstormMcp {
    fn parse(&self, args: &RequestArgs) -> Result<sandstorm_features::RunRequest, ApiError> {
        let body = serde_json::to_vec(args)
            .map_err(|e| ApiError::Internal(format!("re-encoding tool arguments: {e}")))?;
        parse_run_request(&body, &self.tenant)
    }
}

#[tool_router]
impl SandstormMcp {
    /// A server acting for `tenant`.
    pub fn new(core: Arc<Core>, config: &Config, tenant: &str) -> Self {
        Self {
            core,
            limits: Arc::new(TenantLimits::new(config)),
            tenant: tenant.to_owned(),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Decide where code would run (provider x isolation x region) without running it: returns the winner, fallbacks, an explanation, and each feasible candidate's predicted latency, cost and failure risk."
    )]
    async fn route(&self, Parameters(args): Parameters<RequestArgs>) -> CallToolResult {
        let decided = self.parse(&args).and_then(|r| self.core.decide(&r));
        match decided {
            Err(e) => tool_error(e.to_string()),
            Ok((decision, _)) => {
                let feasible: Vec<serde_json::Value> = decision.candidates[..decision.n_feasible]
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "candidate": c.candidate.id,
                            "verdict": c.verdict,
                            "prediction": c.prediction,
                        })
                    })
                    .collect();
                let summary = serde_json::json!({
                    "decision_id": decision.decision_id,
                    "winner": decision.winner,
                    "fallbacks": decision.fallbacks,
                    "explanation": decision.explanation,
                    "model_version": decision.model_version,
                    "n_candidates": decision.n_candidates,
                    "n_feasible": decision.n_feasible,
                    "feasible": feasible,
                });
                json_result(decision.explanation.clone(), summary)
            }
        }
    }

    #[tool(
        description = "Run code: routes the request, executes it on the chosen local sandbox (process or bubblewrap), waits for it to finish and returns its stdout, stderr, exit code and status. Pin `constraints.allowed_providers: [\"local\"]` to be sure it runs on this host."
    )]
    async fn run(&self, Parameters(args): Parameters<RequestArgs>) -> CallToolResult {
        let started = (|| {
            let request = self.parse(&args)?;
            let (decision, ctx) = self.core.decide(&request)?;
            self.core.check_executable(&decision)?;
            let permit = self.limits.acquire_run(&self.tenant)?;
            self.core
                .start_run(&self.tenant, request, ctx, decision, Some(permit))
        })();
        let run = match started {
            Ok(run) => run,
            Err(e) => return tool_error(e.to_string()),
        };
        run.wait().await;
        let view = run.view();
        let value = serde_json::to_value(&view).unwrap_or_default();
        let text = match (&view.result, &view.error) {
            (Some(r), _) => {
                let mut text = format!(
                    "run {} on {}: {} (exit code {}, {:.0} ms)\n",
                    view.run_id,
                    view.candidate,
                    r.status,
                    r.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                    r.total_ms
                );
                text.push_str("--- stdout ---\n");
                text.push_str(&r.stdout);
                if !r.stderr.is_empty() {
                    text.push_str("\n--- stderr ---\n");
                    text.push_str(&r.stderr);
                }
                text
            }
            (None, Some(e)) => {
                return tool_error(format!("run {} failed to start: {e}", view.run_id));
            }
            (None, None) => format!("run {} ended as {}", view.run_id, view.state.as_str()),
        };
        json_result(text, value)
    }

    #[tool(
        description = "A run's state and result (stdout, stderr, exit code, timings) by run id."
    )]
    async fn get_run(&self, Parameters(args): Parameters<RunIdArgs>) -> CallToolResult {
        match self.core.runs.get(&args.run_id, Some(&self.tenant)) {
            None => tool_error(format!("no run `{}`", args.run_id)),
            Some(run) => {
                let view = run.view();
                let value = serde_json::to_value(&view).unwrap_or_default();
                json_result(
                    serde_json::to_string_pretty(&value).unwrap_or_default(),
                    value,
                )
            }
        }
    }

    #[tool(
        description = "The execution backends of this host and whether each works, and every catalog candidate with whether it can be executed from here."
    )]
    async fn list_backends(&self) -> CallToolResult {
        let local: Vec<serde_json::Value> = self
            .core
            .availability()
            .iter()
            .map(|(backend, availability)| {
                serde_json::json!({
                    "backend": backend.as_str(),
                    "isolation": backend.isolation_level().as_str(),
                    "available": availability.is_available(),
                    "detail": availability.to_string(),
                })
            })
            .collect();
        let router = self.core.router();
        let candidates: Vec<serde_json::Value> = router
            .candidates()
            .iter()
            .map(|c| {
                let reason = self.core.unavailable_reason(c);
                let executable =
                    reason.is_none() && c.provider_kind == sandstorm_features::ProviderKind::Local;
                serde_json::json!({
                    "candidate": c.id,
                    "provider_kind": c.provider_kind.as_str(),
                    "isolation": c.isolation_level().as_str(),
                    "executable_here": executable,
                    "unavailable_reason": reason,
                })
            })
            .collect();
        let value = serde_json::json!({ "local_backends": local, "candidates": candidates });
        json_result(
            serde_json::to_string_pretty(&value).unwrap_or_default(),
            value,
        )
    }
}

const URI_PREFIX: &str = "sandstorm://runs/";
const ARTIFACTS: [(&str, &str); 3] = [
    ("stdout.txt", "text/plain"),
    ("stderr.txt", "text/plain"),
    ("result.json", "application/json"),
];

impl SandstormMcp {
    fn find(&self, uri: &str) -> Result<(Arc<Run>, String), ErrorData> {
        let not_found = || ErrorData::resource_not_found(format!("no resource `{uri}`"), None);
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(not_found)?;
        let (id, what) = rest.split_once('/').ok_or_else(not_found)?;
        let run = self
            .core
            .runs
            .get(id, Some(&self.tenant))
            .ok_or_else(not_found)?;
        Ok((run, what.to_owned()))
    }
}

/// A run's log as text: output in the order it was produced, state changes on their own lines.
fn log_text(run: &Run) -> String {
    let (past, _, _) = run.subscribe();
    let mut text = String::new();
    for e in past {
        match e.kind {
            "state" => {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("[sandstorm] state: {}\n", e.data));
            }
            _ => text.push_str(&e.data),
        }
    }
    text
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandstormMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("sandstorm", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Sandstorm runs code in a sandbox chosen for cost, latency and isolation. Use `run` to execute code and get its output, `route` to see where it would run and why, `list_backends` to see what this host can execute. Run logs and artifacts are resources under sandstorm://runs/{run_id}/.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resources = Vec::new();
        for run in self.core.runs.list(Some(&self.tenant)) {
            let id = run.id();
            resources.push(
                Resource::new(format!("{URI_PREFIX}{id}/logs"), format!("run {id} logs"))
                    .with_mime_type("text/plain")
                    .with_description("the run's output and state changes, in order"),
            );
            if run.state() == RunState::Completed || run.state() == RunState::Cancelled {
                for (name, mime) in ARTIFACTS {
                    resources.push(
                        Resource::new(
                            format!("{URI_PREFIX}{id}/artifacts/{name}"),
                            format!("run {id} {name}"),
                        )
                        .with_mime_type(mime),
                    );
                }
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{URI_PREFIX}{{run_id}}/logs"), "run logs")
                .with_mime_type("text/plain"),
            ResourceTemplate::new(
                format!("{URI_PREFIX}{{run_id}}/artifacts/{{name}}"),
                "run artifacts: stdout.txt, stderr.txt, result.json",
            ),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let (run, what) = self.find(&uri)?;
        let contents = match what.as_str() {
            "logs" => ResourceContents::text(log_text(&run), uri),
            "artifacts/stdout.txt" => ResourceContents::text(run.output_text().0, uri),
            "artifacts/stderr.txt" => ResourceContents::text(run.output_text().1, uri),
            "artifacts/result.json" => {
                let json = serde_json::to_string_pretty(&run.view())
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                ResourceContents::text(json, uri).with_mime_type("application/json")
            }
            _ => {
                return Err(ErrorData::resource_not_found(
                    format!("no resource `{uri}`"),
                    None,
                ));
            }
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// Serves MCP on stdin/stdout until the client disconnects, then drains the runs.
pub async fn serve_stdio(config: &Config, tenant: &str) -> Result<(), ServiceError> {
    let core = crate::load_core(config).await?;
    let server = SandstormMcp::new(Arc::clone(&core), config, tenant);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServiceError::Mcp(e.to_string()))?;
    let reason = running
        .waiting()
        .await
        .map_err(|e| ServiceError::Mcp(e.to_string()))?;
    tracing::info!(?reason, "mcp client disconnected");
    core.drain(std::time::Duration::try_from_secs_f64(config.shutdown_grace_s).unwrap_or_default())
        .await;
    Ok(())
}
