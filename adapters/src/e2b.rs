//! E2B: Firecracker micro-VM sandboxes. The sandbox lifecycle goes through E2B's REST API
//! (`POST /sandboxes`, `DELETE /sandboxes/{id}`, `X-API-Key`); files and commands go to
//! `envd`, the daemon inside each sandbox: files with its HTTP upload (`POST /files`,
//! multipart), commands with its Connect RPC `process.Process/Start` (server streaming,
//! `application/connect+json` envelopes carrying start, stdout/stderr data and end events).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sandstorm_features::Candidate;
use sandstorm_runtime::{Availability, JobSpec, OutputStream, RunControl};
use serde::Deserialize;

use crate::driver::{self, Bridge, Configured, Exit, Output, Sandbox};
use crate::error::{AdapterError, Phase};
use crate::http::{self, Api};
use crate::{GpuUsage, RemoteProvider, RemoteRun, RunFailure, env_var, redacted};

const PROVIDER: &str = "e2b";
/// Port envd listens on inside every sandbox.
const ENVD_PORT: u16 = 49983;
/// Connect envelope flag: the message is compressed.
const FLAG_COMPRESSED: u8 = 0x01;
/// Connect envelope flag: end of stream (its JSON may carry an error).
const FLAG_END_STREAM: u8 = 0x02;

/// Configuration of the E2B adapter. [`E2bConfig::from_env`] reads it from the environment.
#[derive(Clone)]
pub struct E2bConfig {
    /// `E2B_API_KEY`; without it the provider is unavailable.
    pub api_key: Option<String>,
    /// `E2B_API_URL`, default `https://api.e2b.app`.
    pub api_url: String,
    /// `E2B_DOMAIN`, default `e2b.app`: envd of sandbox `ID` is `https://49983-ID.DOMAIN`
    /// (a domain in the create answer wins).
    pub domain: String,
    /// `E2B_ENVD_URL`: one base URL for every sandbox's envd (self-hosted proxies, tests);
    /// requests name the sandbox with the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers.
    pub envd_url: Option<String>,
    /// `E2B_TEMPLATE`, default `base`.
    pub template: String,
    /// vCPUs of the template's sandboxes (E2B sizes sandboxes per template;
    /// `E2B_TEMPLATE_VCPU`), default 2.
    pub template_vcpu: f64,
    /// Memory of the template's sandboxes in MiB (`E2B_TEMPLATE_MEMORY_MIB`), default 512.
    pub template_memory_mib: u64,
    /// Sandbox user running the job, default `user`.
    pub user: String,
    /// Job directory inside the sandbox, default `/home/user/sandstorm-job`.
    pub workdir: String,
    /// Added to the job's timeout for the sandbox's own lifetime (E2B kills it then, a
    /// backstop if the delete fails), default 60 s.
    pub sandbox_timeout_margin: Duration,
    /// Connect timeout of HTTP requests, default 10 s.
    pub connect_timeout: Duration,
    /// Timeout of each API request other than the job's execution, default 60 s.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for E2bConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bConfig")
            .field("api_key", &redacted(&self.api_key))
            .field("api_url", &self.api_url)
            .field("domain", &self.domain)
            .field("envd_url", &self.envd_url)
            .field("template", &self.template)
            .field("template_vcpu", &self.template_vcpu)
            .field("template_memory_mib", &self.template_memory_mib)
            .field("user", &self.user)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

impl Default for E2bConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            api_url: "https://api.e2b.app".into(),
            domain: "e2b.app".into(),
            envd_url: None,
            template: "base".into(),
            template_vcpu: 2.0,
            template_memory_mib: 512,
            user: "user".into(),
            workdir: "/home/user/sandstorm-job".into(),
            sandbox_timeout_margin: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl E2bConfig {
    /// Defaults overridden by `E2B_API_KEY`, `E2B_API_URL`, `E2B_DOMAIN`, `E2B_ENVD_URL`,
    /// `E2B_TEMPLATE`, `E2B_TEMPLATE_VCPU`, `E2B_TEMPLATE_MEMORY_MIB`.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            api_key: env_var("E2B_API_KEY"),
            api_url: env_var("E2B_API_URL").unwrap_or(d.api_url.clone()),
            domain: env_var("E2B_DOMAIN").unwrap_or(d.domain.clone()),
            envd_url: env_var("E2B_ENVD_URL"),
            template: env_var("E2B_TEMPLATE").unwrap_or(d.template.clone()),
            template_vcpu: env_var("E2B_TEMPLATE_VCPU")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.template_vcpu),
            template_memory_mib: env_var("E2B_TEMPLATE_MEMORY_MIB")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.template_memory_mib),
            ..d
        }
    }
}

/// The E2B adapter.
#[derive(Debug)]
pub struct E2bProvider(Configured<E2b>);

impl E2bProvider {
    /// An adapter with its own async runtime.
    pub fn new(config: E2bConfig) -> Result<Self, AdapterError> {
        Self::with_bridge(config, Bridge::new()?)
    }

    pub(crate) fn with_bridge(
        config: E2bConfig,
        bridge: Arc<Bridge>,
    ) -> Result<Self, AdapterError> {
        let sandbox = match &config.api_key {
            Some(key) => Ok(E2b {
                api: Api::new(
                    PROVIDER,
                    config.connect_timeout,
                    config.request_timeout,
                    vec![key.clone()],
                )?,
                config,
            }),
            None => Err("E2B_API_KEY is not set".to_owned()),
        };
        Ok(Self(Configured::new(PROVIDER, sandbox, bridge)))
    }
}

impl RemoteProvider for E2bProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn availability(&self) -> Availability {
        self.0.availability(|s| {
            format!(
                "E2B_API_KEY set; API {}, template `{}`",
                s.config.api_url, s.config.template
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
struct E2b {
    config: E2bConfig,
    api: Api,
}

/// A created E2B sandbox.
struct Handle {
    id: String,
    /// envd's access token (secure sandboxes); never logged.
    access_token: Option<String>,
    envd_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(default)]
    envd_access_token: Option<String>,
    #[serde(default)]
    domain: Option<String>,
}

impl E2b {
    fn api_key(&self) -> &str {
        self.config.api_key.as_deref().unwrap_or_default()
    }

    /// A request to envd of `handle`'s sandbox, with the SDK's headers: the sandbox user as
    /// basic auth, the access token, and the sandbox id and port for shared hosts.
    fn envd(&self, handle: &Handle, path: &str) -> reqwest::RequestBuilder {
        let user =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:", self.config.user));
        let mut request = self
            .api
            .client
            .post(http::join(&handle.envd_url, path))
            .header("Authorization", format!("Basic {user}"))
            .header("E2b-Sandbox-Id", &handle.id)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        if let Some(token) = &handle.access_token {
            request = request.header("X-Access-Token", token);
        }
        request
    }
}

impl Sandbox for E2b {
    type Handle = Handle;

    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn provisioned(&self, _job: &JobSpec) -> (f64, u64) {
        (self.config.template_vcpu, self.config.template_memory_mib)
    }

    fn enforced_limits(&self, _candidate: &Candidate, job: &JobSpec) -> Vec<String> {
        vec![
            format!("provider={PROVIDER}"),
            format!("template={}", self.config.template),
            format!("vcpu={}", self.config.template_vcpu),
            format!("memory_mib={}", self.config.template_memory_mib),
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

    fn gpu(&self, _candidate: &Candidate, job: &JobSpec) -> Result<Option<GpuUsage>, AdapterError> {
        driver::refuse_gpu(PROVIDER, job, "E2B sandboxes have no GPU")
    }

    fn check(&self, _candidate: &Candidate, job: &JobSpec) -> Result<(), AdapterError> {
        if job.cpu > self.config.template_vcpu || job.memory_mib > self.config.template_memory_mib {
            return Err(AdapterError::Unsupported {
                provider: PROVIDER.into(),
                reason: format!(
                    "template `{}` has {} vCPU and {} MiB, the job asks for {} vCPU and {} MiB",
                    self.config.template,
                    self.config.template_vcpu,
                    self.config.template_memory_mib,
                    job.cpu,
                    job.memory_mib
                ),
            });
        }
        Ok(())
    }

    async fn create(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
    ) -> Result<(Handle, String), AdapterError> {
        let timeout_s = (job.timeout + self.config.sandbox_timeout_margin)
            .as_secs_f64()
            .ceil() as u64;
        let body = serde_json::json!({
            "templateID": self.config.template,
            "timeout": timeout_s,
            "autoPause": false,
            "secure": true,
            "allow_internet_access": job.allow_network,
            "metadata": { "managed-by": "sandstorm", "candidate": candidate.id },
        });
        let created: Created = self
            .api
            .json(
                Phase::Create,
                self.api
                    .client
                    .post(http::join(&self.config.api_url, "sandboxes"))
                    .header("X-API-Key", self.api_key())
                    .json(&body),
            )
            .await?;
        let envd_url = match &self.config.envd_url {
            Some(url) => url.clone(),
            None => format!(
                "https://{ENVD_PORT}-{}.{}",
                created.sandbox_id,
                created.domain.as_deref().unwrap_or(&self.config.domain)
            ),
        };
        let id = created.sandbox_id.clone();
        Ok((
            Handle {
                id: created.sandbox_id,
                access_token: created.envd_access_token,
                envd_url,
            },
            id,
        ))
    }

    async fn wait_ready(&self, _handle: &mut Handle) -> Result<(), AdapterError> {
        // `POST /sandboxes` answers once envd is up.
        Ok(())
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
                    self.envd(handle, "files")
                        .query(&[
                            ("path", target.as_str()),
                            ("username", self.config.user.as_str()),
                        ])
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
        let request = serde_json::json!({
            "process": { "cmd": "/bin/bash", "args": ["-c", script], "envs": {} },
        });
        let body = envelope(
            0,
            &serde_json::to_vec(&request).map_err(|e| AdapterError::Internal(e.to_string()))?,
        );
        let mut response = self
            .api
            .send(
                Phase::Exec,
                self.envd(handle, "process.Process/Start")
                    .header("Content-Type", "application/connect+json")
                    .header("Connect-Protocol-Version", "1")
                    .body(body),
            )
            .await?;
        let mut decoder = EnvelopeDecoder::default();
        let mut exit = None;
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| self.api.transport_error(Phase::Exec, &e))?;
            let Some(chunk) = chunk else {
                return Err(self.api.protocol(
                    Phase::Exec,
                    "the process stream ended without an end-of-stream message",
                ));
            };
            decoder.feed(&chunk);
            while let Some((flags, payload)) = decoder.next_message() {
                if flags & FLAG_COMPRESSED != 0 {
                    return Err(self
                        .api
                        .protocol(Phase::Exec, "compressed message (none was accepted)"));
                }
                if flags & FLAG_END_STREAM != 0 {
                    return self.end_of_stream(&payload, exit);
                }
                if let Some(ended) = self.event(&payload, output)? {
                    exit = Some(ended);
                }
            }
        }
    }

    async fn delete(&self, handle: &Handle) -> Result<(), AdapterError> {
        self.api
            .delete(
                self.api
                    .client
                    .delete(http::join(
                        &self.config.api_url,
                        &format!("sandboxes/{}", handle.id),
                    ))
                    .header("X-API-Key", self.api_key()),
            )
            .await
    }
}

impl E2b {
    /// Handles one `StartResponse`; returns the exit when it is the `end` event.
    fn event(&self, payload: &[u8], output: &mut Output) -> Result<Option<Exit>, AdapterError> {
        let message: StartResponse = serde_json::from_slice(payload).map_err(|e| {
            self.api
                .protocol(Phase::Exec, format!("bad process event: {e}"))
        })?;
        let Some(event) = message.event else {
            return Ok(None);
        };
        if let Some(data) = event.data {
            for (stream, text) in [
                (OutputStream::Stdout, data.stdout),
                (OutputStream::Stderr, data.stderr),
            ] {
                if let Some(text) = text {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| {
                            self.api
                                .protocol(Phase::Exec, format!("bad output bytes: {e}"))
                        })?;
                    output.push(stream, &bytes);
                }
            }
        }
        if let Some(start) = event.start {
            tracing::debug!(provider = PROVIDER, pid = start.pid, "process started");
        }
        Ok(event.end.map(|end| Exit {
            // Protobuf JSON omits zero values: a missing exit code is 0.
            code: end.exited.then_some(end.exit_code),
            oom: false,
            deadline: false,
        }))
    }

    fn end_of_stream(&self, payload: &[u8], exit: Option<Exit>) -> Result<Exit, AdapterError> {
        let end: EndStream = serde_json::from_slice(payload).unwrap_or_default();
        if let Some(error) = end.error {
            return Err(AdapterError::Rpc {
                provider: PROVIDER.into(),
                phase: Phase::Exec,
                code: error.code,
                message: self.api.redact(&error.message),
            });
        }
        exit.ok_or_else(|| {
            self.api
                .protocol(Phase::Exec, "the stream ended before the process ended")
        })
    }
}

#[derive(Deserialize)]
struct StartResponse {
    #[serde(default)]
    event: Option<ProcessEvent>,
}

#[derive(Deserialize)]
struct ProcessEvent {
    #[serde(default)]
    start: Option<StartEvent>,
    #[serde(default)]
    data: Option<DataEvent>,
    #[serde(default)]
    end: Option<EndEvent>,
}

#[derive(Deserialize)]
struct StartEvent {
    #[serde(default)]
    pid: u32,
}

#[derive(Deserialize)]
struct DataEvent {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndEvent {
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    exited: bool,
}

#[derive(Deserialize, Default)]
struct EndStream {
    #[serde(default)]
    error: Option<ConnectError>,
}

#[derive(Deserialize)]
struct ConnectError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One Connect envelope: flags, 4-byte big-endian length, message.
pub(crate) fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(flags);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// Splits a byte stream into Connect envelopes, whatever the chunking.
#[derive(Debug, Default)]
pub(crate) struct EnvelopeDecoder {
    buffer: Vec<u8>,
}

impl EnvelopeDecoder {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    pub(crate) fn next_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let header: [u8; 5] = self.buffer.get(..5)?.try_into().ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if self.buffer.len() < 5 + len {
            return None;
        }
        let payload = self.buffer[5..5 + len].to_vec();
        self.buffer.drain(..5 + len);
        Some((header[0], payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_across_any_chunking() {
        let mut bytes = envelope(0, b"{\"a\":1}");
        bytes.extend(envelope(FLAG_END_STREAM, b"{}"));
        for split in 0..bytes.len() {
            let mut decoder = EnvelopeDecoder::default();
            let mut messages = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                decoder.feed(part);
                while let Some(m) = decoder.next_message() {
                    messages.push(m);
                }
            }
            assert_eq!(
                messages,
                vec![
                    (0, b"{\"a\":1}".to_vec()),
                    (FLAG_END_STREAM, b"{}".to_vec())
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let config = E2bConfig {
            api_key: Some("e2b_very_secret".into()),
            ..E2bConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("very_secret"), "{text}");
        assert!(text.contains("[redacted]"));
    }
}
