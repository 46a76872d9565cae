//! Kubernetes: one Pod per run, through kube-rs. The pod gets the job's CPU and memory as
//! requests and limits, `runtimeClassName` for the candidate's backend (gVisor or a Kata
//! micro-VM), `activeDeadlineSeconds` as a backstop, no service-account token and no
//! privilege escalation. A job without network gets a deny-all NetworkPolicy selecting only its
//! pod (created before the pod, deleted after it; enforced by the cluster's network plugin). The job's files travel base64-encoded inside the container command.
//! The adapter waits for the pod to run, follows its log (stdout and stderr interleaved, as
//! Kubernetes stores them: reported as stdout), reads the container's exit code and reason
//! (`OOMKilled` is `oom`), and deletes the pod.
//!
//! Cluster access: `SANDSTORM_K8S_URL` (an API server URL used without credentials, e.g.
//! `kubectl proxy`), else the kubeconfig (`KUBECONFIG` or `~/.kube/config`), else the
//! in-cluster service account.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, LogParams, PostParams};
use sandstorm_features::{Candidate, IsolationBackend, Language};
use sandstorm_runtime::{Availability, JobSpec, OutputStream, RunControl};

use crate::driver::{self, Bridge, Exit, Output, Sandbox};
use crate::error::{AdapterError, Phase};
use crate::{GpuUsage, RemoteProvider, RemoteRun, RunFailure, env_var};

const PROVIDER: &str = "kubernetes";

/// Label naming one run's pod, selected by its NetworkPolicy.
const RUN_LABEL: &str = "sandstorm.dev/run";

/// A name unique to this run in this process (and, with the clock and pid, across processes).
fn run_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}{:x}{n:x}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

/// Container waiting reasons that never resolve by themselves.
const FATAL_WAITING_REASONS: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Configuration of the Kubernetes adapter. [`KubernetesConfig::from_env`] reads it from the
/// environment.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `SANDSTORM_K8S_URL`: API server URL used as is, without credentials (`kubectl proxy`,
    /// tests). When unset the kubeconfig or in-cluster configuration is used.
    pub cluster_url: Option<String>,
    /// `SANDSTORM_K8S_NAMESPACE`, default `default`.
    pub namespace: String,
    /// Image for Python jobs (`SANDSTORM_K8S_IMAGE_PYTHON`, default `python:3.12-slim`).
    pub python_image: String,
    /// Image for Node jobs (`SANDSTORM_K8S_IMAGE_NODE`, default `node:22-slim`).
    pub node_image: String,
    /// Image for shell jobs (`SANDSTORM_K8S_IMAGE_SHELL`, default `debian:bookworm-slim`).
    pub shell_image: String,
    /// RuntimeClass of `gvisor` candidates (`SANDSTORM_K8S_RUNTIME_GVISOR`, default `gvisor`).
    pub gvisor_runtime_class: String,
    /// RuntimeClass of `microvm` candidates (`SANDSTORM_K8S_RUNTIME_MICROVM`, default `kata`).
    pub microvm_runtime_class: String,
    /// Job directory inside the container, default `/tmp/sandstorm-job`.
    pub workdir: String,
    /// How long a pod may take to start running (scheduling, image pull), default 300 s.
    pub start_timeout: Duration,
    /// Interval between pod status polls, default 500 ms.
    pub poll_interval: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            cluster_url: None,
            namespace: "default".into(),
            python_image: "python:3.12-slim".into(),
            node_image: "node:22-slim".into(),
            shell_image: "debian:bookworm-slim".into(),
            gvisor_runtime_class: "gvisor".into(),
            microvm_runtime_class: "kata".into(),
            workdir: "/tmp/sandstorm-job".into(),
            start_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl KubernetesConfig {
    /// Defaults overridden by the `SANDSTORM_K8S_*` variables listed on each field.
    pub fn from_env() -> Self {
        let d = Self::default();
        Self {
            cluster_url: env_var("SANDSTORM_K8S_URL"),
            namespace: env_var("SANDSTORM_K8S_NAMESPACE").unwrap_or(d.namespace.clone()),
            python_image: env_var("SANDSTORM_K8S_IMAGE_PYTHON").unwrap_or(d.python_image.clone()),
            node_image: env_var("SANDSTORM_K8S_IMAGE_NODE").unwrap_or(d.node_image.clone()),
            shell_image: env_var("SANDSTORM_K8S_IMAGE_SHELL").unwrap_or(d.shell_image.clone()),
            gvisor_runtime_class: env_var("SANDSTORM_K8S_RUNTIME_GVISOR")
                .unwrap_or(d.gvisor_runtime_class.clone()),
            microvm_runtime_class: env_var("SANDSTORM_K8S_RUNTIME_MICROVM")
                .unwrap_or(d.microvm_runtime_class.clone()),
            ..d
        }
    }

    /// Where cluster access comes from, or why there is none. Reads no file.
    fn access(&self) -> Result<String, String> {
        if let Some(url) = &self.cluster_url {
            return Ok(format!("SANDSTORM_K8S_URL {url}"));
        }
        let kubeconfig = env_var("KUBECONFIG")
            .map(|paths| paths.split(':').map(PathBuf::from).collect::<Vec<_>>())
            .unwrap_or_else(|| {
                env_var("HOME")
                    .map(|home| vec![PathBuf::from(home).join(".kube/config")])
                    .unwrap_or_default()
            });
        if let Some(path) = kubeconfig.iter().find(|p| p.is_file()) {
            return Ok(format!("kubeconfig {}", path.display()));
        }
        if env_var("KUBERNETES_SERVICE_HOST").is_some() {
            return Ok("in-cluster service account".into());
        }
        Err(
            "no cluster configured: SANDSTORM_K8S_URL is not set, no kubeconfig \
             (KUBECONFIG or ~/.kube/config) and not running in a cluster"
                .into(),
        )
    }
}

/// The Kubernetes adapter.
#[derive(Debug)]
pub struct KubernetesProvider {
    sandbox: Result<Arc<Kubernetes>, String>,
    bridge: Arc<Bridge>,
}

impl KubernetesProvider {
    /// An adapter with its own async runtime. The cluster client is built on first use.
    pub fn new(config: KubernetesConfig) -> Result<Self, AdapterError> {
        Self::with_bridge(config, Bridge::new()?)
    }

    pub(crate) fn with_bridge(
        config: KubernetesConfig,
        bridge: Arc<Bridge>,
    ) -> Result<Self, AdapterError> {
        let sandbox = config.access().map(|access| {
            Arc::new(Kubernetes {
                config,
                access,
                client: tokio::sync::OnceCell::new(),
            })
        });
        Ok(Self { sandbox, bridge })
    }
}

impl RemoteProvider for KubernetesProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn availability(&self) -> Availability {
        match &self.sandbox {
            Ok(s) => Availability::Available {
                detail: format!("{}, namespace `{}`", s.access, s.config.namespace),
            },
            Err(reason) => Availability::Unavailable {
                reason: reason.clone(),
            },
        }
    }

    fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        let sandbox = self
            .sandbox
            .as_ref()
            .map_err(|reason| AdapterError::NotConfigured {
                provider: PROVIDER.into(),
                reason: reason.clone(),
            })?;
        self.bridge.run(driver::drive(
            Arc::clone(sandbox),
            candidate.clone(),
            job.clone(),
            control.clone(),
        ))?
    }
}

struct Kubernetes {
    config: KubernetesConfig,
    access: String,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("config", &self.config)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

struct Handle {
    name: String,
    pods: kube::Api<Pod>,
    /// The run's deny-all NetworkPolicy, when the job has no network.
    policy: Option<(String, kube::Api<NetworkPolicy>)>,
}

/// A kube error as an adapter error of `phase`.
fn kube_error(phase: Phase, e: kube::Error) -> AdapterError {
    match e {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            // A ResourceQuota refusal is a 403 `exceeded quota`: a quota, not an auth error,
            // so it is classified as a 429 (retryable) with the original status in the text.
            let (code, message) = if status.code == 403 && message.contains("exceeded quota") {
                (429, format!("(HTTP 403) {message}"))
            } else {
                (status.code, message)
            };
            AdapterError::Api {
                provider: PROVIDER.into(),
                phase,
                status: code,
                message,
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => AdapterError::Connect {
            provider: PROVIDER.into(),
            phase,
            message: e.to_string(),
        },
        other => AdapterError::Protocol {
            provider: PROVIDER.into(),
            phase,
            message: other.to_string(),
        },
    }
}

/// CPU quantity in millicores, at least 10m.
fn millicores(cpu: f64) -> u64 {
    ((cpu * 1000.0).ceil() as u64).max(10)
}

impl Kubernetes {
    async fn client(&self) -> Result<kube::Client, AdapterError> {
        let client =
            self.client
                .get_or_try_init(|| async {
                    let config = match &self.config.cluster_url {
                        Some(url) => {
                            let uri = url.parse().map_err(|e| AdapterError::NotConfigured {
                                provider: PROVIDER.into(),
                                reason: format!("SANDSTORM_K8S_URL `{url}` is not a URL: {e}"),
                            })?;
                            kube::Config::new(uri)
                        }
                        None => kube::Config::infer().await.map_err(|e| {
                            AdapterError::NotConfigured {
                                provider: PROVIDER.into(),
                                reason: format!("could not load the cluster configuration: {e}"),
                            }
                        })?,
                    };
                    // kube retries 429/503/504 up to 15 times with backoff; failover decides
                    // instead, from the classified error.
                    let mut config = config;
                    config.default_retry = false;
                    kube::Client::try_from(config).map_err(|e| AdapterError::NotConfigured {
                        provider: PROVIDER.into(),
                        reason: format!("could not build the cluster client: {e}"),
                    })
                })
                .await?;
        Ok(client.clone())
    }

    fn image(&self, language: Language) -> &str {
        match language {
            Language::Python => &self.config.python_image,
            Language::Node => &self.config.node_image,
            Language::Bash | Language::Sh => &self.config.shell_image,
        }
    }

    fn runtime_class(&self, backend: IsolationBackend) -> Option<&str> {
        match backend {
            IsolationBackend::Gvisor => Some(&self.config.gvisor_runtime_class),
            IsolationBackend::Microvm => Some(&self.config.microvm_runtime_class),
            _ => None,
        }
    }

    fn pod(&self, candidate: &Candidate, job: &JobSpec, run: &str) -> Result<Pod, AdapterError> {
        let script = driver::job_script(PROVIDER, job, &self.config.workdir, true)?;
        let quantity = serde_json::json!({
            "cpu": format!("{}m", millicores(job.cpu)),
            "memory": format!("{}Mi", job.memory_mib),
        });
        let deadline = (job.timeout + self.config.start_timeout)
            .as_secs_f64()
            .ceil() as u64;
        let mut spec = serde_json::json!({
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "job",
                "image": self.image(job.language),
                "command": ["/bin/sh", "-c", script],
                "resources": { "requests": quantity, "limits": quantity },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        });
        if let Some(class) = self.runtime_class(candidate.backend) {
            spec["runtimeClassName"] = class.into();
        }
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "sandstorm-",
                "labels": { "app.kubernetes.io/managed-by": "sandstorm", RUN_LABEL: run },
                "annotations": { "sandstorm.dev/candidate": candidate.id },
            },
            "spec": spec,
        });
        serde_json::from_value(pod).map_err(|e| AdapterError::Internal(format!("pod spec: {e}")))
    }

    /// A NetworkPolicy denying all ingress and egress of the pod labelled `run`.
    fn deny_all_policy(run: &str) -> Result<NetworkPolicy, AdapterError> {
        let policy = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": format!("sandstorm-{run}"),
                "labels": { "app.kubernetes.io/managed-by": "sandstorm" },
            },
            "spec": {
                "podSelector": { "matchLabels": { RUN_LABEL: run } },
                "policyTypes": ["Ingress", "Egress"],
            },
        });
        serde_json::from_value(policy)
            .map_err(|e| AdapterError::Internal(format!("network policy: {e}")))
    }

    async fn get(&self, handle: &Handle, phase: Phase) -> Result<Pod, AdapterError> {
        handle
            .pods
            .get(&handle.name)
            .await
            .map_err(|e| kube_error(phase, e))
    }
}

/// Deletes a run's NetworkPolicy; a failure is logged (the policy selects no other pod).
async fn delete_policy(policy: Option<&(String, kube::Api<NetworkPolicy>)>) {
    let Some((name, policies)) = policy else {
        return;
    };
    match policies.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            tracing::warn!(policy = %name, error = %e, "could not delete the run's network policy")
        }
    }
}

/// The pod's phase.
fn phase_of(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// A container waiting reason that will not resolve, with its message.
fn fatal_waiting(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| FATAL_WAITING_REASONS.contains(&r))
        })
        .map(|w| {
            format!(
                "{}: {}",
                w.reason.as_deref().unwrap_or_default(),
                w.message.as_deref().unwrap_or("no message")
            )
        })
}

/// The job container's exit, once it terminated.
fn terminated(pod: &Pod) -> Option<Exit> {
    let status = pod.status.as_ref()?;
    let deadline = status.reason.as_deref() == Some("DeadlineExceeded");
    let term = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == "job"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    match term {
        Some(t) => Some(Exit {
            code: Some(t.exit_code),
            oom: t.reason.as_deref() == Some("OOMKilled"),
            deadline,
        }),
        None if deadline => Some(Exit {
            code: None,
            oom: false,
            deadline,
        }),
        None => None,
    }
}

impl Sandbox for Kubernetes {
    type Handle = Handle;

    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn provisioned(&self, job: &JobSpec) -> (f64, u64) {
        (millicores(job.cpu) as f64 / 1000.0, job.memory_mib)
    }

    fn enforced_limits(&self, candidate: &Candidate, job: &JobSpec) -> Vec<String> {
        let mut limits = vec![
            format!("provider={PROVIDER}"),
            format!("cpu_limit_m={}", millicores(job.cpu)),
            format!("memory_limit_mib={}", job.memory_mib),
            format!("wall_clock_s={}", job.timeout.as_secs_f64()),
            format!(
                "network={}",
                if job.allow_network {
                    "allowed"
                } else {
                    "blocked_by_network_policy"
                }
            ),
        ];
        if let Some(class) = self.runtime_class(candidate.backend) {
            limits.push(format!("runtime_class={class}"));
        }
        limits
    }

    fn gpu(&self, _candidate: &Candidate, job: &JobSpec) -> Result<Option<GpuUsage>, AdapterError> {
        // A cluster may have GPU nodes, but a pod only gets one with an `nvidia.com/gpu` limit
        // (plus a node selector for the kind), and the catalog prices no GPU for kubernetes.
        driver::refuse_gpu(
            PROVIDER,
            job,
            "this adapter sets no `nvidia.com/gpu` limit on its pods (the catalog prices no GPU \
             for kubernetes)",
        )
    }

    fn check(&self, candidate: &Candidate, job: &JobSpec) -> Result<(), AdapterError> {
        if !matches!(
            candidate.backend,
            IsolationBackend::RootlessOci | IsolationBackend::Gvisor | IsolationBackend::Microvm
        ) {
            return Err(AdapterError::Unsupported {
                provider: PROVIDER.into(),
                reason: format!("backend `{}` is not a pod runtime", candidate.backend),
            });
        }
        self.pod(candidate, job, "check").map(drop)
    }

    async fn create(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
    ) -> Result<(Handle, String), AdapterError> {
        let client = self.client().await?;
        let namespace = &self.config.namespace;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        let run = run_token();
        let pod = self.pod(candidate, job, &run)?;
        // The policy exists before the pod does, so the job never runs with network.
        let policy = if job.allow_network {
            None
        } else {
            let policies: kube::Api<NetworkPolicy> = kube::Api::namespaced(client, namespace);
            let policy = Self::deny_all_policy(&run)?;
            policies
                .create(&PostParams::default(), &policy)
                .await
                .map_err(|e| kube_error(Phase::Create, e))?;
            Some((format!("sandstorm-{run}"), policies))
        };
        let created = match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => created,
            Err(e) => {
                delete_policy(policy.as_ref()).await;
                return Err(kube_error(Phase::Create, e));
            }
        };
        let Some(name) = created.metadata.name else {
            delete_policy(policy.as_ref()).await;
            return Err(AdapterError::Protocol {
                provider: PROVIDER.into(),
                phase: Phase::Create,
                message: "the created pod has no name".into(),
            });
        };
        Ok((
            Handle {
                name: name.clone(),
                pods,
                policy,
            },
            name,
        ))
    }

    async fn wait_ready(&self, handle: &mut Handle) -> Result<(), AdapterError> {
        let started = Instant::now();
        loop {
            let pod = self.get(handle, Phase::Wait).await?;
            if matches!(phase_of(&pod), "Running" | "Succeeded" | "Failed") {
                return Ok(());
            }
            if let Some(reason) = fatal_waiting(&pod) {
                return Err(AdapterError::SandboxFailed {
                    provider: PROVIDER.into(),
                    phase: Phase::Wait,
                    message: format!("pod {} cannot start: {reason}", handle.name),
                });
            }
            driver::check_start_deadline(PROVIDER, started, self.config.start_timeout)?;
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn exec(
        &self,
        handle: &Handle,
        _job: &JobSpec,
        output: &mut Output,
    ) -> Result<Exit, AdapterError> {
        let params = LogParams {
            container: Some("job".into()),
            follow: true,
            ..LogParams::default()
        };
        let mut logs = handle
            .pods
            .log_stream(&handle.name, &params)
            .await
            .map_err(|e| kube_error(Phase::Exec, e))?;
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let n = logs
                .read(&mut buffer)
                .await
                .map_err(|e| AdapterError::Connect {
                    provider: PROVIDER.into(),
                    phase: Phase::Exec,
                    message: format!("log stream: {e}"),
                })?;
            if n == 0 {
                break;
            }
            output.push(OutputStream::Stdout, &buffer[..n]);
        }
        // The log ends when the container does; its status may lag a little behind.
        loop {
            let pod = self.get(handle, Phase::Exec).await?;
            if let Some(exit) = terminated(&pod) {
                return Ok(exit);
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn delete(&self, handle: &Handle) -> Result<(), AdapterError> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let pod = match handle.pods.delete(&handle.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(kube_error(Phase::Delete, e)),
        };
        delete_policy(handle.policy.as_ref()).await;
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_features::{Catalog, RunRequest};

    fn candidate(backend: IsolationBackend) -> Candidate {
        Catalog::default_catalog()
            .candidates()
            .into_iter()
            .find(|c| c.provider == PROVIDER && c.backend == backend)
            .expect("kubernetes candidate")
    }

    fn sandbox() -> Kubernetes {
        Kubernetes {
            config: KubernetesConfig::default(),
            access: "test".into(),
            client: tokio::sync::OnceCell::new(),
        }
    }

    #[test]
    fn pod_carries_limits_runtime_class_and_deadline() {
        let mut request = RunRequest::command(Language::Python, "python3 -V");
        request.resources.cpu = 0.5;
        request.resources.memory_mib = 256;
        request.timeout_s = 30.0;
        let job = JobSpec::from_request(&request);
        let pod = sandbox()
            .pod(&candidate(IsolationBackend::Gvisor), &job, "r1")
            .expect("pod");
        let value = serde_json::to_value(&pod).expect("json");
        assert_eq!(value["metadata"]["labels"][RUN_LABEL], "r1");
        let policy =
            serde_json::to_value(Kubernetes::deny_all_policy("r1").expect("policy")).expect("json");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"][RUN_LABEL],
            "r1"
        );
        assert_eq!(policy["metadata"]["name"], "sandstorm-r1");
        let spec = &value["spec"];
        assert_eq!(spec["runtimeClassName"], "gvisor");
        assert_eq!(spec["activeDeadlineSeconds"], 330);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        let container = &spec["containers"][0];
        assert_eq!(container["image"], "python:3.12-slim");
        assert_eq!(container["resources"]["limits"]["cpu"], "500m");
        assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(container["resources"]["requests"]["memory"], "256Mi");
        let kata = sandbox()
            .pod(&candidate(IsolationBackend::Microvm), &job, "r1")
            .expect("pod");
        assert_eq!(
            kata.spec.and_then(|s| s.runtime_class_name).as_deref(),
            Some("kata")
        );
        let oci = sandbox()
            .pod(&candidate(IsolationBackend::RootlessOci), &job, "r1")
            .expect("pod");
        assert_eq!(oci.spec.and_then(|s| s.runtime_class_name), None);
    }

    #[test]
    fn explicit_url_makes_it_available() {
        let config = KubernetesConfig {
            cluster_url: Some("http://127.0.0.1:8001".into()),
            ..KubernetesConfig::default()
        };
        assert!(config.access().is_ok_and(|a| a.contains("127.0.0.1:8001")));
    }
}
