//! Morph Cloud: micro-VM instances started from a snapshot. REST with
//! `Authorization: Bearer`: `POST /instance?snapshot_id=...` (with a TTL as a backstop), poll
//! `GET /instance/{id}` until `ready`, `POST /instance/{id}/exec` with the command as an
//! argument vector, then `DELETE /instance/{id}`.
//!
//! Morph's file transfer is SSH/SFTP only, so the job's files travel inside the command (base64
//! in the shell script, up to [`crate::driver::MAX_INLINE_SCRIPT_BYTES`]). Exec answers once the
//! command ends: output is observed in one chunk per stream at the end. Instances cannot be
//! cut off the network by the API, so `network=not_blocked` is reported when the job asked for
//! no network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandstorm_features::Candidate;
use sandstorm_runtime::{Availability, JobSpec, OutputStream, RunControl};
use serde::Deserialize;

use crate::driver::{self, Bridge, Configured, Exit, Output, Sandbox};
use crate::error::{AdapterError, Phase};
use crate::http::{self, Api};
use crate::{RemoteProvider, RemoteRun, RunFailure, env_var, redacted};

const PROVIDER: &str = "morph";

/// Configuration of the Morph Cloud adapter. [`MorphConfig::from_env`] reads it from the
/// environment.
#[derive(Clone)]
pub struct MorphConfig {
    /// `MORPH_API_KEY`; without it the provider is unavailable.
    pub api_key: Option<String>,
    /// `MORPH_BASE_URL`, default `https://cloud.morph.so/api`.
    pub api_url: String,
    /// `MORPH_SNAPSHOT_ID`: the snapshot instances start from (required: Morph has no default
    /// image; it fixes the instance's vCPUs and memory).
    pub snapshot_id: Option<String>,
    /// vCPUs of the snapshot's instances (`MORPH_SNAPSHOT_VCPU`, default 1).
    pub snapshot_vcpu: f64,
    /// Memory of the snapshot's instances in MiB (`MORPH_SNAPSHOT_MEMORY_MIB`, default 4096).
    pub snapshot_memory_mib: u64,
    /// Job directory inside the instance, default `/tmp/sandstorm-job`.
    pub workdir: String,
    /// Added to the job's timeout for the instance's TTL (Morph stops it then, a backstop if
    /// the delete fails), default 120 s.
    pub ttl_margin: Duration,
    /// How long to wait for an instance to be `ready`, default 120 s.
    pub start_timeout: Duration,
    /// Interval between status polls, default 500 ms.
    pub poll_interval: Duration,
    /// Connect timeout of HTTP requests, default 10 s.
    pub connect_timeout: Duration,
    /// Timeout of each API request other than the job's execution, default 60 s.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for MorphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MorphConfig")
            .field("api_key", &redacted(&self.api_key))
            .field("api_url", &self.api_url)
            .field("snapshot_id", &self.snapshot_id)
            .field("snapshot_vcpu", &self.snapshot_vcpu)
            .field("snapshot_memory_mib", &self.snapshot_memory_mib)
            .finish_non_exhaustive()
    }
}

impl Default for MorphConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            api_url: "https://cloud.morph.so/api".into(),
            snapshot_id: None,
            snapshot_vcpu: 1.0,
            snapshot_memory_mib: 4096,
            workdir: "/tmp/sandstorm-job".into(),
            ttl_margin: Duration::from_secs(120),
            start_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl MorphConfig {
    /// Defaults overridden by `MORPH_API_KEY`, `MORPH_BASE_URL`, `MORPH_SNAPSHOT_ID`,
    /// `MORPH_SNAPSHOT_VCPU`, `MORPH_SNAPSHOT_MEMORY_MIB`.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            api_key: env_var("MORPH_API_KEY"),
            api_url: env_var("MORPH_BASE_URL").unwrap_or(d.api_url.clone()),
            snapshot_id: env_var("MORPH_SNAPSHOT_ID"),
            snapshot_vcpu: env_var("MORPH_SNAPSHOT_VCPU")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.snapshot_vcpu),
            snapshot_memory_mib: env_var("MORPH_SNAPSHOT_MEMORY_MIB")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.snapshot_memory_mib),
            ..d
        }
    }

    fn missing(&self) -> Option<&'static str> {
        if self.api_key.is_none() {
            Some("MORPH_API_KEY is not set")
        } else if self.snapshot_id.is_none() {
            Some("MORPH_SNAPSHOT_ID is not set (Morph starts instances from a snapshot)")
        } else {
            None
        }
    }
}

/// The Morph Cloud adapter.
#[derive(Debug)]
pub struct MorphProvider(Configured<Morph>);

impl MorphProvider {
    /// An adapter with its own async runtime.
    pub fn new(config: MorphConfig) -> Result<Self, AdapterError> {
        Self::with_bridge(config, Bridge::new()?)
    }

    pub(crate) fn with_bridge(
        config: MorphConfig,
        bridge: Arc<Bridge>,
    ) -> Result<Self, AdapterError> {
        let sandbox = match config.missing() {
            Some(reason) => Err(reason.to_owned()),
            None => Ok(Morph {
                api: Api::new(
                    PROVIDER,
                    config.connect_timeout,
                    config.request_timeout,
                    config.api_key.iter().cloned().collect(),
                )?,
                config,
            }),
        };
        Ok(Self(Configured::new(PROVIDER, sandbox, bridge)))
    }
}

impl RemoteProvider for MorphProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn availability(&self) -> Availability {
        self.0.availability(|s| {
            format!(
                "MORPH_API_KEY set; API {}, snapshot {}",
                s.config.api_url,
                s.config.snapshot_id.as_deref().unwrap_or_default()
            )
        })
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
struct Morph {
    config: MorphConfig,
    api: Api,
}

struct Handle {
    id: String,
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct ExecResponse {
    exit_code: i32,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
}

impl Morph {
    fn bearer(&self) -> String {
        format!(
            "Bearer {}",
            self.config.api_key.as_deref().unwrap_or_default()
        )
    }

    fn url(&self, path: &str) -> String {
        http::join(&self.config.api_url, path)
    }
}

impl Sandbox for Morph {
    type Handle = Handle;

    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn provisioned(&self, _job: &JobSpec) -> (f64, u64) {
        (self.config.snapshot_vcpu, self.config.snapshot_memory_mib)
    }

    fn enforced_limits(&self, _candidate: &Candidate, job: &JobSpec) -> Vec<String> {
        vec![
            format!("provider={PROVIDER}"),
            format!("vcpu={}", self.config.snapshot_vcpu),
            format!("memory_mib={}", self.config.snapshot_memory_mib),
            format!("wall_clock_s={}", job.timeout.as_secs_f64()),
            format!(
                "network={}",
                if job.allow_network {
                    "allowed"
                } else {
                    "not_blocked"
                }
            ),
        ]
    }

    fn check(&self, _candidate: &Candidate, job: &JobSpec) -> Result<(), AdapterError> {
        if job.cpu > self.config.snapshot_vcpu || job.memory_mib > self.config.snapshot_memory_mib {
            return Err(AdapterError::Unsupported {
                provider: PROVIDER.into(),
                reason: format!(
                    "the snapshot's instances have {} vCPU and {} MiB, the job asks for {} vCPU and {} MiB",
                    self.config.snapshot_vcpu,
                    self.config.snapshot_memory_mib,
                    job.cpu,
                    job.memory_mib
                ),
            });
        }
        // Files travel in the command: refuse oversized jobs before creating anything.
        driver::job_script(PROVIDER, job, &self.config.workdir, true).map(drop)
    }

    async fn create(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
    ) -> Result<(Handle, String), AdapterError> {
        let ttl = (job.timeout + self.config.ttl_margin).as_secs_f64().ceil() as u64;
        let body = serde_json::json!({
            "metadata": { "managed-by": "sandstorm", "candidate": candidate.id },
            "ttl_seconds": ttl,
            "ttl_action": "stop",
        });
        let snapshot = self.config.snapshot_id.as_deref().unwrap_or_default();
        let instance: Instance = self
            .api
            .json(
                Phase::Create,
                self.api
                    .client
                    .post(self.url("instance"))
                    .query(&[("snapshot_id", snapshot)])
                    .header("Authorization", self.bearer())
                    .json(&body),
            )
            .await?;
        let id = instance.id.clone();
        Ok((Handle { id: instance.id }, id))
    }

    async fn wait_ready(&self, handle: &mut Handle) -> Result<(), AdapterError> {
        let started = Instant::now();
        loop {
            let instance: Instance = self
                .api
                .json(
                    Phase::Wait,
                    self.api
                        .client
                        .get(self.url(&format!("instance/{}", handle.id)))
                        .header("Authorization", self.bearer()),
                )
                .await?;
            match instance.status.as_deref() {
                Some("ready") => return Ok(()),
                Some("error") => {
                    return Err(AdapterError::SandboxFailed {
                        provider: PROVIDER.into(),
                        phase: Phase::Wait,
                        message: format!("instance {} is in status `error`", handle.id),
                    });
                }
                _ => {}
            }
            driver::check_start_deadline(PROVIDER, started, self.config.start_timeout)?;
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn exec(
        &self,
        handle: &Handle,
        job: &JobSpec,
        output: &mut Output,
    ) -> Result<Exit, AdapterError> {
        let script = driver::job_script(PROVIDER, job, &self.config.workdir, true)?;
        let body = serde_json::json!({ "command": ["/bin/sh", "-c", script] });
        let answer: ExecResponse = self
            .api
            .json(
                Phase::Exec,
                self.api
                    .client
                    .post(self.url(&format!("instance/{}/exec", handle.id)))
                    .header("Authorization", self.bearer())
                    .json(&body),
            )
            .await?;
        output.push(OutputStream::Stdout, answer.stdout.as_bytes());
        output.push(OutputStream::Stderr, answer.stderr.as_bytes());
        Ok(Exit::code(answer.exit_code))
    }

    async fn delete(&self, handle: &Handle) -> Result<(), AdapterError> {
        self.api
            .delete(
                self.api
                    .client
                    .delete(self.url(&format!("instance/{}", handle.id)))
                    .header("Authorization", self.bearer()),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_names_what_is_missing() {
        let bridge = Bridge::new().expect("runtime");
        let provider = MorphProvider::with_bridge(MorphConfig::default(), Arc::clone(&bridge))
            .expect("provider");
        assert_eq!(
            provider.availability(),
            Availability::Unavailable {
                reason: "MORPH_API_KEY is not set".into()
            }
        );
        let config = MorphConfig {
            api_key: Some("k".into()),
            ..MorphConfig::default()
        };
        let provider = MorphProvider::with_bridge(config, bridge).expect("provider");
        assert!(
            provider
                .availability()
                .to_string()
                .contains("MORPH_SNAPSHOT_ID"),
            "{}",
            provider.availability()
        );
    }
}
