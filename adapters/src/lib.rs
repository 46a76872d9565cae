//! Remote provider adapters: run a [`JobSpec`] on a remote [`Candidate`] (E2B, Daytona, Morph
//! Cloud, Modal, Kubernetes) and report the same [`RunResult`] the local runtime does, plus the
//! measured [`Usage`] that prices the run.
//!
//! # Using it
//!
//! ```no_run
//! use sandstorm_adapters::Providers;
//! # fn demo(candidate: &sandstorm_features::Candidate, job: &sandstorm_runtime::JobSpec) {
//! let providers = Providers::from_env();
//! for (name, availability) in providers.availability() {
//!     println!("{name}: {availability}");
//! }
//! let control = sandstorm_runtime::RunControl::new();
//! match providers.run(candidate, job, &control) {
//!     Ok(run) => println!("{:?}, cost ${:.6}", run.result.status, run.cost_usd(candidate)),
//!     Err(failure) if failure.retryable() => { /* try the next candidate */ }
//!     Err(failure) => eprintln!("{failure}"),
//! }
//! # }
//! ```
//!
//! Every run creates one sandbox (E2B sandbox, Daytona sandbox, Morph instance, Modal sandbox,
//! Kubernetes pod), runs the job in it and deletes it — also after a failure, a timeout or a
//! cancel. The job's wall-clock limit is enforced by the adapter (and, where the provider has
//! one, by the provider's own deadline as a backstop); a [`RunControl`] cancel deletes the
//! sandbox, and its output observer sees output as the provider streams it.
//!
//! [`RemoteProvider::run`] blocks. Call it from a plain thread or from tokio's
//! `spawn_blocking`, never from async code: the adapters run their HTTP and gRPC clients on
//! their own small tokio runtime and wait on a channel.
//!
//! Like `runtime`, this crate must never route or train. Provider details (endpoints,
//! environment variables, what is supported) are in `docs/providers.md`.

mod daytona;
mod driver;
mod e2b;
mod edge;
mod error;
mod http;
mod kubernetes;
mod modal;
mod morph;
mod providers;

use std::fmt;

pub use daytona::{DaytonaConfig, DaytonaProvider};
pub use e2b::{E2bConfig, E2bProvider};
pub use edge::{EdgeProvider, edge_token_var};
pub use error::{AdapterError, Phase};
pub use http::client_builder as http_client_builder;
pub use kubernetes::{KubernetesConfig, KubernetesProvider};
pub use modal::{ModalConfig, ModalProvider};
pub use morph::{MorphConfig, MorphProvider};
pub use providers::Providers;
use sandstorm_features::Candidate;
use sandstorm_features::Resources;
pub use sandstorm_runtime::Availability;
use sandstorm_runtime::{JobSpec, RunControl, RunResult};

/// A remote place to run jobs: one provider's API client.
pub trait RemoteProvider: Send + Sync + fmt::Debug {
    /// The provider's name as in the catalog (`e2b`, `daytona`, `morph`, `kubernetes`,
    /// `modal`).
    fn name(&self) -> &str;

    /// Whether this process can use the provider: configured (credentials present), or why
    /// not (e.g. "E2B_API_KEY is not set"). Does not call the provider.
    fn availability(&self) -> Availability;

    /// Runs `job` on `candidate` (which must belong to this provider) in a fresh sandbox that
    /// is deleted afterwards. Blocks; see the crate docs for where to call it from.
    ///
    /// `Ok` means the job ran (to any end: exit, timeout, cancel); `Err` means it could not be
    /// run, with [`RunFailure::retryable`] saying whether another try can help and the usage
    /// of a sandbox that was created before the failure.
    fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure>;
}

/// A job that ran on a remote provider.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteRun {
    /// What happened, as the local runtime reports it. `start_ms` covers sandbox creation,
    /// readiness and upload; `total_ms` includes the delete. `enforced_limits` names the
    /// provider's sandbox id (`sandbox_id=...`).
    pub result: RunResult,
    /// The measured sandbox lifetime and resources, for cost accounting.
    pub usage: Usage,
}

impl RemoteRun {
    /// Actual cost of this run in USD: the candidate's price sheet applied to the measured
    /// sandbox lifetime and provisioned resources (see [`Usage::cost_usd`]).
    pub fn cost_usd(&self, candidate: &Candidate) -> f64 {
        self.usage.cost_usd(candidate)
    }
}

/// What a run consumed on the provider: the sandbox's lifetime from the create request to the
/// answer of its delete, and the resources it was provisioned with (what providers bill).
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub provider: String,
    /// The provider's id of the sandbox, instance or pod (`None` when none was created).
    pub sandbox_id: Option<String>,
    /// Seconds from sending the create request until the delete was answered (0 when no
    /// sandbox was created).
    pub sandbox_seconds: f64,
    /// vCPUs the sandbox was provisioned with.
    pub vcpu: f64,
    /// Memory the sandbox was provisioned with, in MiB.
    pub memory_mib: u64,
    /// GPUs the sandbox was provisioned with (`None`: a CPU sandbox).
    pub gpu: Option<GpuUsage>,
    /// Whether the delete succeeded. When false the sandbox lives on until the provider's own
    /// timeout (the adapters always set one), so the real cost can be higher.
    pub deleted: bool,
}

impl Usage {
    /// Cost in USD under `candidate`'s price sheet: the start fee plus (vCPU × price per
    /// vCPU-second plus GiB × price per GiB-second plus GPUs × price per GPU-second of their
    /// kind) × max(lifetime, minimum billed seconds). Zero when no sandbox was created.
    ///
    /// The GPU kind comes from the candidate's own sheet (see [`Candidate::gpu_kind_for`]);
    /// should the sheet not price it, the dearest GPU it prices stands in (an upper bound, and
    /// logged), never a GPU-free price.
    pub fn cost_usd(&self, candidate: &Candidate) -> f64 {
        if self.sandbox_id.is_none() {
            return 0.0;
        }
        let resources = Resources {
            cpu: self.vcpu,
            memory_mib: self.memory_mib,
            ..Resources::default()
        };
        let gpu_per_s = self
            .gpu
            .as_ref()
            .map_or(0.0, |gpu| gpu.price_per_s(candidate));
        let seconds = self
            .sandbox_seconds
            .max(candidate.prices.min_billed_seconds);
        candidate.list_cost_usd(&resources, self.sandbox_seconds) + gpu_per_s * seconds
    }
}

/// GPUs a sandbox was provisioned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuUsage {
    /// The GPU kind as the candidate's price sheet names it, e.g. `h100`.
    pub kind: String,
    /// How many GPUs of that kind.
    pub count: u32,
}

impl GpuUsage {
    /// USD per second of these GPUs under `candidate`'s price sheet.
    fn price_per_s(&self, candidate: &Candidate) -> f64 {
        let prices = &candidate.prices.gpu_second;
        let price = prices
            .iter()
            .find(|(kind, _)| kind.eq_ignore_ascii_case(&self.kind))
            .map(|(_, price)| *price)
            .unwrap_or_else(|| {
                let dearest = prices.values().copied().fold(0.0, f64::max);
                tracing::warn!(candidate = %candidate.id, kind = %self.kind, dearest, "the price sheet does not price this GPU kind; costing it as the dearest GPU it prices");
                dearest
            });
        price * f64::from(self.count)
    }
}

/// A run that could not be carried out: why, and what it consumed before failing.
#[derive(Debug)]
pub struct RunFailure {
    pub error: AdapterError,
    /// Usage of a sandbox created before the failure (it was deleted, or `deleted` says
    /// not); `None` when nothing was created. Boxed to keep `Result`s small.
    pub usage: Option<Box<Usage>>,
}

impl RunFailure {
    /// See [`AdapterError::retryable`].
    pub fn retryable(&self) -> bool {
        self.error.retryable()
    }

    /// Actual cost of what was consumed before the failure, in USD.
    pub fn cost_usd(&self, candidate: &Candidate) -> f64 {
        self.usage.as_ref().map_or(0.0, |u| u.cost_usd(candidate))
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RunFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<AdapterError> for RunFailure {
    fn from(error: AdapterError) -> Self {
        Self { error, usage: None }
    }
}

/// Reads an environment variable, treating an empty value as unset.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Debug output of a secret: whether it is set, never its value.
pub(crate) fn redacted(secret: &Option<String>) -> &'static str {
    if secret.is_some() {
        "[redacted]"
    } else {
        "None"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_features::Catalog;

    fn candidate(provider: &str) -> Candidate {
        Catalog::default_catalog()
            .candidates()
            .into_iter()
            .find(|c| c.provider == provider)
            .expect("provider in the default catalog")
    }

    #[test]
    fn cost_of_a_gpu_run_includes_its_gpus() {
        let modal = candidate("modal");
        let usage = Usage {
            provider: "modal".into(),
            sandbox_id: Some("sb-1".into()),
            sandbox_seconds: 10.0,
            vcpu: 2.0,
            memory_mib: 2048,
            gpu: Some(GpuUsage {
                kind: "h100".into(),
                count: 2,
            }),
            deleted: true,
        };
        let h100 = modal.prices.gpu_second["h100"];
        assert!(h100 > 0.0);
        let expected = modal.prices.start
            + (2.0 * modal.prices.vcpu_second + 2.0 * modal.prices.gib_second + 2.0 * h100)
                * 10.0_f64.max(modal.prices.min_billed_seconds);
        assert!((usage.cost_usd(&modal) - expected).abs() < 1e-12);
        // The same as the router's list price of the request, GPU included.
        let resources = Resources {
            cpu: 2.0,
            memory_mib: 2048,
            gpu: Some(sandstorm_features::GpuRequest {
                count: 2,
                kinds: vec!["h100".into()],
            }),
            ..Resources::default()
        };
        assert!((usage.cost_usd(&modal) - modal.list_cost_usd(&resources, 10.0)).abs() < 1e-12);
        let cpu_only = Usage {
            gpu: None,
            ..usage.clone()
        };
        let gpu_share = usage.cost_usd(&modal) - cpu_only.cost_usd(&modal);
        assert!((gpu_share - 2.0 * h100 * 10.0).abs() < 1e-12, "{gpu_share}");
        // A kind the sheet does not price is costed as its dearest GPU, never as free.
        let unpriced = Usage {
            gpu: Some(GpuUsage {
                kind: "b200".into(),
                count: 1,
            }),
            ..usage
        };
        let dearest = modal
            .prices
            .gpu_second
            .values()
            .copied()
            .fold(0.0, f64::max);
        assert!(
            (unpriced.cost_usd(&modal) - cpu_only.cost_usd(&modal) - dearest * 10.0).abs() < 1e-12
        );
    }

    #[test]
    fn cost_is_price_sheet_times_measured_lifetime_and_resources() {
        let e2b = candidate("e2b");
        let usage = Usage {
            provider: "e2b".into(),
            sandbox_id: Some("sbx".into()),
            sandbox_seconds: 10.0,
            vcpu: 2.0,
            memory_mib: 1024,
            gpu: None,
            deleted: true,
        };
        let expected = e2b.prices.start
            + (2.0 * e2b.prices.vcpu_second + 1.0 * e2b.prices.gib_second)
                * 10.0_f64.max(e2b.prices.min_billed_seconds);
        assert!((usage.cost_usd(&e2b) - expected).abs() < 1e-12);
        assert!(usage.cost_usd(&e2b) > 0.0);
        let none = Usage {
            sandbox_id: None,
            ..usage
        };
        assert_eq!(none.cost_usd(&e2b), 0.0);
    }
}
