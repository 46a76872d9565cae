//! Daytona: OCI container sandboxes. REST with `Authorization: Bearer`: `POST /sandbox`,
//! poll `GET /sandbox/{id}` until `started`, upload files and execute through the sandbox's
//! toolbox (`POST {toolbox}/files/upload`, `POST {toolbox}/process/execute`, where `{toolbox}`
//! is the sandbox's `toolboxProxyUrl` + `/{id}`, or `{api}/toolbox/{id}/toolbox` when the API
//! does not name a proxy), then `DELETE /sandbox/{id}`.
//!
//! Daytona's execute answers once the command ends, with stdout and stderr combined in one
//! `result`: the output is reported as stdout, observed in one chunk at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sandstorm_features::Candidate;
use sandstorm_runtime::{Availability, JobSpec, OutputStream, RunControl};
use serde::Deserialize;

use crate::driver::{self, Bridge, Configured, Exit, Output, Sandbox};
use crate::error::{AdapterError, Phase};
use crate::http::{self, Api};
use crate::{RemoteProvider, RemoteRun, RunFailure, env_var, redacted};

const PROVIDER: &str = "daytona";

/// Configuration of the Daytona adapter. [`DaytonaConfig::from_env`] reads it from the
/// environment.
#[derive(Clone)]
pub struct DaytonaConfig {
    /// `DAYTONA_API_KEY`; without it the provider is unavailable.
    pub api_key: Option<String>,
    /// `DAYTONA_API_URL`, default `https://app.daytona.io/api`.
    pub api_url: String,
    /// `DAYTONA_SNAPSHOT`: snapshot to create sandboxes from (Daytona's default otherwise).
    /// A snapshot fixes the resources: the job's CPU and memory are then not sent, and the
    /// usage takes the resources Daytona reports for the sandbox.
    pub snapshot: Option<String>,
    /// Job directory inside the sandbox, default `/tmp/sandstorm-job`.
    pub workdir: String,
    /// How long to wait for a sandbox to reach `started`, default 120 s.
    pub start_timeout: Duration,
    /// Interval between state polls, default 500 ms.
    pub poll_interval: Duration,
    /// Connect timeout of HTTP requests, default 10 s.
    pub connect_timeout: Duration,
    /// Timeout of each API request other than the job's execution, default 60 s.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for DaytonaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaytonaConfig")
            .field("api_key", &redacted(&self.api_key))
            .field("api_url", &self.api_url)
            .field("snapshot", &self.snapshot)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

impl Default for DaytonaConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            api_url: "https://app.daytona.io/api".into(),
            snapshot: None,
            workdir: "/tmp/sandstorm-job".into(),
            start_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl DaytonaConfig {
    /// Defaults overridden by `DAYTONA_API_KEY`, `DAYTONA_API_URL`, `DAYTONA_SNAPSHOT`.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            api_key: env_var("DAYTONA_API_KEY"),
            api_url: env_var("DAYTONA_API_URL").unwrap_or(d.api_url.clone()),
            snapshot: env_var("DAYTONA_SNAPSHOT"),
            ..d
        }
    }
}

/// The Daytona adapter.
#[derive(Debug)]
pub struct DaytonaProvider(Configured<Daytona>);

impl DaytonaProvider {
    /// An adapter with its own async runtime.
    pub fn new(config: DaytonaConfig) -> Result<Self, AdapterError> {
        Self::with_bridge(config, Bridge::new()?)
    }

    pub(crate) fn with_bridge(
        config: DaytonaConfig,
        bridge: Arc<Bridge>,
    ) -> Result<Self, AdapterError> {
        let sandbox = match &config.api_key {
            Some(key) => Ok(Daytona {
                api: Api::new(
                    PROVIDER,
                    config.connect_timeout,
                    config.request_timeout,
                    vec![key.clone()],
                )?,
                config,
            }),
            None => Err("DAYTONA_API_KEY is not set".to_owned()),
        };
        Ok(Self(Configured::new(PROVIDER, sandbox, bridge)))
    }
}

impl RemoteProvider for DaytonaProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn availability(&self) -> Availability {
        self.0
            .availability(|s| format!("DAYTONA_API_KEY set; API {}", s.config.api_url))
    }

    fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        self.0.run(candidate, job, control)
    }
}

#[derive(Debug)]
struct Daytona {
    config: DaytonaConfig,
    api: Api,
}

struct Handle {
    id: String,
    toolbox_url: String,
    /// vCPUs and GiB Daytona reports for the sandbox.
    resources: Option<(f64, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxInfo {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error_reason: Option<String>,
    #[serde(default)]
    toolbox_proxy_url: Option<String>,
    #[serde(default)]
    cpu: Option<f64>,
    /// GiB.
    #[serde(default)]
    memory: Option<f64>,
}

impl SandboxInfo {
    fn resources(&self) -> Option<(f64, u64)> {
        Some((self.cpu?, (self.memory? * 1024.0).round() as u64))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteResponse {
    exit_code: i32,
    #[serde(default)]
    result: String,
}

/// Whole vCPUs Daytona provisions for `cpu` (it takes integers).
fn cores(cpu: f64) -> u64 {
    (cpu.ceil() as u64).max(1)
}

/// Whole GiB Daytona provisions for `memory_mib` (it takes integers).
fn gib(memory_mib: u64) -> u64 {
    memory_mib.div_ceil(1024).max(1)
}

impl Daytona {
    fn bearer(&self) -> String {
        format!(
            "Bearer {}",
            self.config.api_key.as_deref().unwrap_or_default()
        )
    }

    fn url(&self, path: &str) -> String {
        http::join(&self.config.api_url, path)
    }

    fn toolbox_url(&self, info: &SandboxInfo) -> String {
        match &info.toolbox_proxy_url {
            Some(proxy) => http::join(proxy, &info.id),
            None => self.url(&format!("toolbox/{}/toolbox", info.id)),
        }
    }
}

impl Sandbox for Daytona {
    type Handle = Handle;

    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn provisioned(&self, job: &JobSpec) -> (f64, u64) {
        (cores(job.cpu) as f64, gib(job.memory_mib) * 1024)
    }

    fn reported_resources(&self, handle: &Handle) -> Option<(f64, u64)> {
        handle.resources
    }

    fn enforced_limits(&self, _candidate: &Candidate, job: &JobSpec) -> Vec<String> {
        vec![
            format!("provider={PROVIDER}"),
            format!("vcpu={}", cores(job.cpu)),
            format!("memory_gib={}", gib(job.memory_mib)),
            format!("wall_clock_s={}", job.timeout.as_secs_f64()),
            format!(
                "network={}",
                if job.allow_network {
                    "allowed"
                } else {
                    "blocked"
                }
            ),
        ]
    }

    async fn create(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
    ) -> Result<(Handle, String), AdapterError> {
        let mut body = serde_json::json!({
            "target": candidate.area,
            "networkBlockAll": !job.allow_network,
            "autoStopInterval": job.timeout.as_secs().div_ceil(60) + 5,
            "labels": { "managed-by": "sandstorm", "candidate": candidate.id },
        });
        match &self.config.snapshot {
            // A snapshot fixes the sandbox's resources; Daytona refuses both.
            Some(snapshot) => body["snapshot"] = snapshot.clone().into(),
            None => {
                body["cpu"] = cores(job.cpu).into();
                body["memory"] = gib(job.memory_mib).into();
            }
        }
        let info: SandboxInfo = self
            .api
            .json(
                Phase::Create,
                self.api
                    .client
                    .post(self.url("sandbox"))
                    .header("Authorization", self.bearer())
                    .json(&body),
            )
            .await?;
        let id = info.id.clone();
        let handle = Handle {
            toolbox_url: self.toolbox_url(&info),
            resources: info.resources(),
            id: info.id,
        };
        Ok((handle, id))
    }

    async fn wait_ready(&self, handle: &mut Handle) -> Result<(), AdapterError> {
        let started = Instant::now();
        loop {
            let info: SandboxInfo = self
                .api
                .json(
                    Phase::Wait,
                    self.api
                        .client
                        .get(self.url(&format!("sandbox/{}", handle.id)))
                        .header("Authorization", self.bearer()),
                )
                .await?;
            match info.state.as_deref() {
                Some("started") => {
                    handle.toolbox_url = self.toolbox_url(&info);
                    handle.resources = info.resources().or(handle.resources);
                    return Ok(());
                }
                Some(state @ ("error" | "build_failed" | "destroyed" | "destroying")) => {
                    return Err(AdapterError::SandboxFailed {
                        provider: PROVIDER.into(),
                        phase: Phase::Wait,
                        message: self.api.redact(&format!(
                            "sandbox is `{state}`: {}",
                            info.error_reason.as_deref().unwrap_or("no reason given")
                        )),
                    });
                }
                _ => {}
            }
            if started.elapsed() >= self.config.start_timeout {
                return Err(AdapterError::Timeout {
                    provider: PROVIDER.into(),
                    phase: Phase::Wait,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn upload(&self, handle: &Handle, job: &JobSpec) -> Result<(), AdapterError> {
        for (path, content) in driver::job_files(job) {
            let target = format!("{}/{}", self.config.workdir.trim_end_matches('/'), path);
            let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
            let part = reqwest::multipart::Part::bytes(content.as_bytes().to_vec()).file_name(name);
            let form = reqwest::multipart::Form::new().part("file", part);
            self.api
                .send(
                    Phase::Upload,
                    self.api
                        .client
                        .post(http::join(&handle.toolbox_url, "files/upload"))
                        .header("Authorization", self.bearer())
                        .query(&[("path", target.as_str())])
                        .multipart(form),
                )
                .await?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        handle: &Handle,
        job: &JobSpec,
        output: &mut Output,
    ) -> Result<Exit, AdapterError> {
        let script = driver::job_script(PROVIDER, job, &self.config.workdir, false)?;
        // The toolbox splits `command` into words itself; base64 keeps the script intact.
        let encoded = base64::engine::general_purpose::STANDARD.encode(script);
        let command = format!("/bin/sh -c \"echo {encoded} | base64 -d | /bin/sh\"");
        let body = serde_json::json!({
            "command": command,
            "timeout": job.timeout.as_secs_f64().ceil() as u64,
        });
        let answer: ExecuteResponse = self
            .api
            .json(
                Phase::Exec,
                self.api
                    .client
                    .post(http::join(&handle.toolbox_url, "process/execute"))
                    .header("Authorization", self.bearer())
                    .json(&body),
            )
            .await?;
        output.push(OutputStream::Stdout, answer.result.as_bytes());
        Ok(Exit::code(answer.exit_code))
    }

    async fn delete(&self, handle: &Handle) -> Result<(), AdapterError> {
        self.api
            .delete(
                self.api
                    .client
                    .delete(self.url(&format!("sandbox/{}", handle.id)))
                    .header("Authorization", self.bearer()),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_up_to_what_daytona_provisions() {
        assert_eq!(cores(0.5), 1);
        assert_eq!(cores(2.0), 2);
        assert_eq!(cores(2.1), 3);
        assert_eq!(gib(512), 1);
        assert_eq!(gib(1024), 1);
        assert_eq!(gib(1025), 2);
    }
}
