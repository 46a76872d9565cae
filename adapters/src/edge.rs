//! Self-hosted edge agents (`sandstorm agent`): the client side. An agent serves its host's
//! local runtime over HTTP (`service::agent` is the server); the catalog lists it as an
//! `edge` provider with its region and `endpoint`, and its bearer token comes from
//! `SANDSTORM_EDGE_TOKEN_<NAME>` (name upper-cased, `-` as `_`) or `SANDSTORM_EDGE_TOKEN`.
//!
//! A run is `POST /v1/agent/runs?backend=B` with the job as a run request, then
//! `GET /v1/agent/runs/{id}` until the run is final (polling, 10 ms doubling to 200 ms), and
//! `DELETE /v1/agent/runs/{id}` when the caller cancels or the job overstays its limit. The
//! result is the agent's own [`RunResult`]; output reaches the caller's observer when the run
//! ends (the agent also streams it as server-sent events for other clients).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandstorm_features::{Candidate, ProviderKind, ProviderSpec, Resources, RunRequest};
use sandstorm_runtime::{Availability, JobSpec, OutputStream, RunControl, RunResult};
use serde::Deserialize;

use crate::driver::Bridge;
use crate::error::{AdapterError, Phase};
use crate::http::{self, Api};
use crate::{RemoteProvider, RemoteRun, RunFailure, Usage, env_var};

/// Time an agent may take beyond the job's own limit before the client gives up on it.
const OVERSTAY: Duration = Duration::from_secs(30);
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(200);

/// One edge agent from the catalog.
pub struct EdgeProvider {
    name: &'static str,
    endpoint: Option<String>,
    token: Option<String>,
    enabled: bool,
    token_var: String,
    api: Option<Api>,
    bridge: Arc<Bridge>,
}

impl std::fmt::Debug for EdgeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeProvider")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("token", &crate::redacted(&self.token))
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// The environment variable holding agent `name`'s token.
pub fn edge_token_var(name: &str) -> String {
    format!(
        "SANDSTORM_EDGE_TOKEN_{}",
        name.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

impl EdgeProvider {
    pub(crate) fn from_spec(spec: &ProviderSpec, bridge: Arc<Bridge>) -> Self {
        let token_var = edge_token_var(&spec.name);
        let token = env_var(&token_var).or_else(|| env_var("SANDSTORM_EDGE_TOKEN"));
        // Agents are few and live as long as the process: their names may be 'static.
        let name: &'static str = Box::leak(spec.name.clone().into_boxed_str());
        let api = Api::new(
            name,
            Duration::from_secs(5),
            Duration::from_secs(30),
            token.iter().cloned().collect(),
        )
        .ok();
        Self {
            name,
            endpoint: spec.endpoint.clone(),
            token,
            enabled: spec.enabled,
            token_var,
            api,
            bridge,
        }
    }

    fn configured(&self) -> Result<(&Api, &str, &str), String> {
        if !self.enabled {
            return Err("disabled in the catalog".to_owned());
        }
        let endpoint = self
            .endpoint
            .as_deref()
            .ok_or_else(|| "no `endpoint` in the catalog".to_owned())?;
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| format!("{} (or SANDSTORM_EDGE_TOKEN) is not set", self.token_var))?;
        let api = self
            .api
            .as_ref()
            .ok_or_else(|| "could not build an HTTP client".to_owned())?;
        Ok((api, endpoint, token))
    }
}

impl RemoteProvider for EdgeProvider {
    fn name(&self) -> &str {
        self.name
    }

    fn availability(&self) -> Availability {
        match self.configured() {
            Ok((_, endpoint, _)) => Availability::Available {
                detail: format!("edge agent at {endpoint}"),
            },
            Err(reason) => Availability::Unavailable { reason },
        }
    }

    fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        if candidate.provider != self.name || candidate.provider_kind != ProviderKind::Edge {
            return Err(AdapterError::Unsupported {
                provider: self.name.into(),
                reason: format!("candidate {} is not one of this agent's", candidate.id),
            }
            .into());
        }
        job.validate()
            .map_err(|e| AdapterError::InvalidJob(e.to_string()))?;
        if let Some(gpu) = &job.gpu {
            return Err(AdapterError::Unsupported {
                provider: self.name.into(),
                reason: format!(
                    "the job asks for {gpu}, but edge agent `{}` runs jobs on its host's local \
                     backends, which have no GPU",
                    self.name
                ),
            }
            .into());
        }
        let (api, endpoint, token) =
            self.configured()
                .map_err(|reason| AdapterError::NotConfigured {
                    provider: self.name.into(),
                    reason,
                })?;
        let call = Call {
            api: api.clone(),
            base: endpoint.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            backend: candidate.backend.as_str().to_owned(),
            body: request_body(job)?,
            deadline: job.timeout + OVERSTAY,
            control: control.clone(),
            vcpu: job.cpu,
            memory_mib: job.memory_mib,
            provider: self.name,
        };
        let mut run = self.bridge.run(call.run())??;
        let cap = job.max_output_bytes;
        for (stream, text) in [
            (OutputStream::Stdout, &run.result.stdout),
            (OutputStream::Stderr, &run.result.stderr),
        ] {
            let bytes = text.as_bytes();
            control.observe(stream, &bytes[..bytes.len().min(cap)]);
        }
        run.result
            .enforced_limits
            .push(format!("edge_agent={}", self.name));
        Ok(run)
    }
}

/// The run request the agent receives for `job`.
fn request_body(job: &JobSpec) -> Result<Vec<u8>, AdapterError> {
    let mut request = RunRequest::command(job.language, "");
    request.command = job.command.clone();
    request.code = job.code.clone();
    request.files = job.files.clone();
    request.resources = Resources {
        cpu: job.cpu,
        memory_mib: job.memory_mib,
        // Refused before sending (see `run`); passed on so an agent refuses it too.
        gpu: job.gpu.clone(),
        ..request.resources
    };
    request.timeout_s = job.timeout.as_secs_f64();
    request.allow_network = job.allow_network;
    serde_json::to_vec(&request)
        .map_err(|e| AdapterError::Internal(format!("encoding the run request: {e}")))
}

#[derive(Debug, Deserialize)]
struct Accepted {
    run_id: String,
}

#[derive(Debug, Deserialize)]
struct View {
    state: String,
    result: Option<RunResult>,
    error: Option<String>,
}

/// One run on one agent, on the adapters' runtime.
struct Call {
    api: Api,
    base: String,
    token: String,
    backend: String,
    body: Vec<u8>,
    deadline: Duration,
    control: RunControl,
    vcpu: f64,
    memory_mib: u64,
    provider: &'static str,
}

impl Call {
    async fn run(self) -> Result<RemoteRun, RunFailure> {
        let started = Instant::now();
        let started_at = time::OffsetDateTime::now_utc();
        if self.control.is_cancelled() {
            return Ok(RemoteRun {
                result: cancelled(started_at, started),
                usage: Usage {
                    provider: self.provider.to_owned(),
                    sandbox_id: None,
                    sandbox_seconds: 0.0,
                    vcpu: self.vcpu,
                    memory_mib: self.memory_mib,
                    gpu: None,
                    deleted: false,
                },
            });
        }
        let accepted: Accepted = self
            .api
            .json(
                Phase::Create,
                self.api
                    .client
                    .post(http::join(&self.base, "/v1/agent/runs"))
                    .query(&[("backend", self.backend.as_str())])
                    .bearer_auth(&self.token)
                    .header("content-type", "application/json")
                    .body(self.body.clone()),
            )
            .await?;
        let id = accepted.run_id;
        let usage = |deleted| Usage {
            provider: self.provider.to_owned(),
            sandbox_id: Some(id.clone()),
            sandbox_seconds: started.elapsed().as_secs_f64(),
            vcpu: self.vcpu,
            memory_mib: self.memory_mib,
            gpu: None,
            deleted,
        };
        let run_url = http::join(&self.base, &format!("/v1/agent/runs/{id}"));
        let mut pause = FIRST_POLL;
        let mut cancel_sent = false;
        loop {
            if (self.control.is_cancelled() || started.elapsed() > self.deadline) && !cancel_sent {
                cancel_sent = true;
                // 409 means it finished meanwhile: the next poll reads its result.
                let _ = self
                    .api
                    .send(
                        Phase::Delete,
                        self.api.client.delete(&run_url).bearer_auth(&self.token),
                    )
                    .await;
            }
            let view: View = self
                .api
                .json(
                    Phase::Exec,
                    self.api
                        .client
                        .get(&run_url)
                        .bearer_auth(&self.token)
                        .timeout(Duration::from_secs(30)),
                )
                .await
                .map_err(|error| RunFailure {
                    error,
                    usage: Some(Box::new(usage(false))),
                })?;
            match (view.state.as_str(), view.result) {
                ("completed" | "cancelled", Some(result)) => {
                    return Ok(RemoteRun {
                        result,
                        usage: usage(true),
                    });
                }
                ("cancelled", None) => {
                    return Ok(RemoteRun {
                        result: cancelled(started_at, started),
                        usage: usage(true),
                    });
                }
                ("error", _) | ("completed", None) => {
                    return Err(RunFailure {
                        error: AdapterError::SandboxFailed {
                            provider: self.provider.into(),
                            phase: Phase::Exec,
                            message: view
                                .error
                                .unwrap_or_else(|| "the agent reported no result".to_owned()),
                        },
                        usage: Some(Box::new(usage(true))),
                    });
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}

/// The result of a run cancelled before the agent started it.
fn cancelled(started_at: time::OffsetDateTime, started: Instant) -> RunResult {
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    RunResult {
        status: sandstorm_runtime::RunStatus::Failed,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        started_at,
        start_ms: total_ms,
        exec_ms: 0.0,
        total_ms,
        peak_memory_mib: None,
        error_class: Some("cancelled".to_owned()),
        enforced_limits: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_features::{Catalog, GpuRequest, Language};

    #[test]
    fn a_gpu_job_is_refused_before_the_agent_is_called() {
        let catalog = Catalog::from_toml(
            &sandstorm_features::DEFAULT_CATALOG_TOML.replace("enabled = false", "enabled = true"),
        )
        .expect("catalog");
        let spec = catalog
            .providers
            .iter()
            .find(|p| p.kind == ProviderKind::Edge)
            .expect("edge agent");
        let candidate = catalog
            .candidates()
            .into_iter()
            .find(|c| c.provider == spec.name)
            .expect("edge candidate");
        let bridge = Bridge::new().expect("bridge");
        // No token: a call to the agent would fail as not configured instead.
        let agent = EdgeProvider::from_spec(spec, bridge);
        let mut request = RunRequest::command(Language::Sh, "nvidia-smi");
        request.resources.gpu = Some(GpuRequest {
            count: 1,
            kinds: Vec::new(),
        });
        let job = JobSpec::from_request(&request);
        let failure = agent
            .run(&candidate, &job, &RunControl::new())
            .expect_err("no GPU at the edge");
        assert!(
            matches!(failure.error, AdapterError::Unsupported { .. }),
            "{failure:?}"
        );
        assert!(!failure.retryable() && failure.usage.is_none());
        assert_eq!(
            failure.to_string(),
            format!(
                "provider `{0}` cannot run this: the job asks for 1 GPU (any kind), but edge \
                 agent `{0}` runs jobs on its host's local backends, which have no GPU",
                spec.name
            )
        );
        let body: RunRequest =
            serde_json::from_slice(&request_body(&job).expect("body")).expect("request");
        assert_eq!(body.resources.gpu, request.resources.gpu);
    }
}
