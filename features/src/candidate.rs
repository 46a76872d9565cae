//! `Candidate`: one place a request can run = provider × isolation backend × edge target, with
//! the attributes models and policies need. Candidates are expanded from the [`crate::Catalog`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{PriceSheet, Quotas};
use crate::request::{GpuRequest, Resources};

/// How strongly a backend separates the code from its host, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// A plain process with rlimits: shares the host kernel and file system view.
    Process,
    /// Linux namespaces (bubblewrap, OCI containers): shared kernel, private views.
    Namespace,
    /// A user-space kernel (gVisor): syscalls served outside the host kernel.
    Gvisor,
    /// A hardware-virtualised micro-VM (Firecracker, Kata, Cloud Hypervisor).
    Microvm,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationLevel::Process => "process",
            IsolationLevel::Namespace => "namespace",
            IsolationLevel::Gvisor => "gvisor",
            IsolationLevel::Microvm => "microvm",
        }
    }

    /// Numeric strength used as a model feature (1 = weakest).
    pub fn strength(self) -> u8 {
        self as u8 + 1
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mechanism that isolates a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationBackend {
    Process,
    Bubblewrap,
    Gvisor,
    RootlessOci,
    Microvm,
}

impl IsolationBackend {
    pub const ALL: [IsolationBackend; 5] = [
        IsolationBackend::Process,
        IsolationBackend::Bubblewrap,
        IsolationBackend::Gvisor,
        IsolationBackend::RootlessOci,
        IsolationBackend::Microvm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IsolationBackend::Process => "process",
            IsolationBackend::Bubblewrap => "bubblewrap",
            IsolationBackend::Gvisor => "gvisor",
            IsolationBackend::RootlessOci => "rootless_oci",
            IsolationBackend::Microvm => "microvm",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }

    pub fn isolation_level(self) -> IsolationLevel {
        match self {
            IsolationBackend::Process => IsolationLevel::Process,
            IsolationBackend::Bubblewrap | IsolationBackend::RootlessOci => {
                IsolationLevel::Namespace
            }
            IsolationBackend::Gvisor => IsolationLevel::Gvisor,
            IsolationBackend::Microvm => IsolationLevel::Microvm,
        }
    }

    /// Whether this backend can cut the run off the network.
    pub fn can_block_network(self) -> bool {
        !matches!(self, IsolationBackend::Process)
    }
}

impl fmt::Display for IsolationBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who operates the place a candidate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// This host, through the `runtime` crate.
    Local,
    /// A sandbox cloud reached through an `adapters` client.
    Remote,
    /// A Kubernetes cluster (one pod per run).
    Kubernetes,
    /// A self-hosted `sandstorm agent` at some site.
    Edge,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Remote => "remote",
            ProviderKind::Kubernetes => "kubernetes",
            ProviderKind::Edge => "edge",
        }
    }
}

/// One place a request can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `provider/backend/region`, unique in a catalog.
    pub id: String,
    pub provider: String,
    pub provider_kind: ProviderKind,
    pub backend: IsolationBackend,
    /// Region (or site) name from the catalog.
    pub region: String,
    /// Coarse geography of the region, e.g. `us`, `eu`, `ap`, `local`.
    pub area: String,
    /// Typical network round trip from the router to this target, in milliseconds.
    pub rtt_ms: f64,
    pub prices: PriceSheet,
    pub quotas: Quotas,
    /// Address of an edge agent, when `provider_kind` is `edge`.
    pub endpoint: Option<String>,
}

impl Candidate {
    pub fn isolation_level(&self) -> IsolationLevel {
        self.backend.isolation_level()
    }

    /// GPU kinds this candidate offers (empty: CPU only).
    pub fn gpu_kinds(&self) -> impl Iterator<Item = &str> {
        self.prices.gpu_second.keys().map(String::as_str)
    }

    /// Price per GPU-second of the cheapest GPU kind that satisfies `resources`: `Some(0.0)` when
    /// no GPU is requested, `None` when a GPU is requested and this candidate has no fitting kind.
    pub fn gpu_price_for(&self, resources: &Resources) -> Option<f64> {
        match &resources.gpu {
            None => Some(0.0),
            Some(gpu) => self.gpu_kind_for(gpu).map(|(_, price)| price),
        }
    }

    /// The GPU kind (as the price sheet names it) and its price per GPU-second that a run of
    /// `gpu` gets on this candidate: the cheapest priced kind among the accepted ones (any
    /// priced kind when `gpu.kinds` is empty; the first by name on a tie). `None` when no
    /// priced kind is accepted. This is the kind [`Candidate::gpu_price_for`] prices, so an
    /// adapter that asks its provider for this kind is billed what the router predicted.
    pub fn gpu_kind_for(&self, gpu: &GpuRequest) -> Option<(&str, f64)> {
        self.prices
            .gpu_second
            .iter()
            .filter(|(kind, _)| {
                gpu.kinds.is_empty() || gpu.kinds.iter().any(|k| k.eq_ignore_ascii_case(kind))
            })
            .map(|(kind, price)| (kind.as_str(), *price))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// List-price burn rate of a run with these resources, in USD per second (no start fee).
    /// A GPU request this candidate cannot serve is priced at infinity.
    pub fn burn_rate_usd_per_s(&self, resources: &Resources) -> f64 {
        let gpu = self
            .gpu_price_for(resources)
            .map_or(f64::INFINITY, |p| p * f64::from(resources.gpu_count()));
        resources.cpu * self.prices.vcpu_second
            + resources.memory_gib() * self.prices.gib_second
            + gpu
    }

    /// List-price cost of running `seconds` with these resources, start fee and minimum billing
    /// included.
    pub fn list_cost_usd(&self, resources: &Resources, seconds: f64) -> f64 {
        self.prices.start
            + self.burn_rate_usd_per_s(resources) * seconds.max(self.prices.min_billed_seconds)
    }
}
