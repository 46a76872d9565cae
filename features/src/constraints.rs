//! Hard constraints that can be checked from the request and the catalog alone, before any
//! prediction: provider and region lists, isolation, GPUs, quotas and network enforcement.
//! Shared by the router and the simulator's logging policy so both agree on feasibility.

use std::fmt;

use serde::Serialize;

use crate::candidate::{Candidate, IsolationLevel};
use crate::request::RunRequest;

/// Why a candidate cannot serve a request, whatever the models predict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    ProviderNotAllowed,
    ProviderExcluded,
    RegionMismatch {
        wanted: String,
    },
    RegionNotAllowed,
    IsolationTooWeak {
        have: IsolationLevel,
        need: IsolationLevel,
    },
    NoGpu,
    NoMatchingGpuKind,
    CpuQuota {
        max_vcpu: f64,
    },
    MemoryQuota {
        max_memory_mib: u64,
    },
    TimeoutQuota {
        max_timeout_s: f64,
    },
    CannotBlockNetwork,
}

impl Violation {
    /// The request field that binds, for "no feasible candidate" errors.
    pub fn constraint(&self) -> &'static str {
        match self {
            Violation::ProviderNotAllowed => "constraints.allowed_providers",
            Violation::ProviderExcluded => "constraints.excluded_providers",
            Violation::RegionMismatch { .. } => "constraints.region",
            Violation::RegionNotAllowed => "constraints.allowed_regions",
            Violation::IsolationTooWeak { .. } => "constraints.min_isolation",
            Violation::NoGpu | Violation::NoMatchingGpuKind => "resources.gpu",
            Violation::CpuQuota { .. } => "resources.cpu",
            Violation::MemoryQuota { .. } => "resources.memory_mib",
            Violation::TimeoutQuota { .. } => "timeout_s",
            Violation::CannotBlockNetwork => "allow_network",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.constraint();
        match self {
            Violation::ProviderNotAllowed => write!(f, "{field}: provider not in the allowed list"),
            Violation::ProviderExcluded => write!(f, "{field}: provider excluded"),
            Violation::RegionMismatch { wanted } => write!(f, "{field}: region is not `{wanted}`"),
            Violation::RegionNotAllowed => write!(f, "{field}: region not in the allowed list"),
            Violation::IsolationTooWeak { have, need } => {
                write!(f, "{field}: isolation `{have}` is weaker than `{need}`")
            }
            Violation::NoGpu => write!(f, "{field}: no GPU offered"),
            Violation::NoMatchingGpuKind => {
                write!(f, "{field}: none of the requested GPU kinds is offered")
            }
            Violation::CpuQuota { max_vcpu } => write!(
                f,
                "{field}: more than the provider's {max_vcpu} vCPU per run"
            ),
            Violation::MemoryQuota { max_memory_mib } => write!(
                f,
                "{field}: more than the provider's {max_memory_mib} MiB per run"
            ),
            Violation::TimeoutQuota { max_timeout_s } => write!(
                f,
                "{field}: longer than the provider's {max_timeout_s} s limit"
            ),
            Violation::CannotBlockNetwork => write!(
                f,
                "{field}: network must be off, and this backend cannot cut it off"
            ),
        }
    }
}

/// The first hard constraint `candidate` breaks for `request`, if any.
pub fn static_violation(request: &RunRequest, candidate: &Candidate) -> Option<Violation> {
    let c = &request.constraints;
    if !c.allowed_providers.is_empty() && !c.allowed_providers.contains(&candidate.provider) {
        return Some(Violation::ProviderNotAllowed);
    }
    if c.excluded_providers.contains(&candidate.provider) {
        return Some(Violation::ProviderExcluded);
    }
    if let Some(region) = &c.region
        && &candidate.region != region
    {
        return Some(Violation::RegionMismatch {
            wanted: region.clone(),
        });
    }
    if !c.allowed_regions.is_empty() && !c.allowed_regions.contains(&candidate.region) {
        return Some(Violation::RegionNotAllowed);
    }
    if let Some(need) = c.min_isolation {
        let have = candidate.isolation_level();
        if have < need {
            return Some(Violation::IsolationTooWeak { have, need });
        }
    }
    let offers_gpu = candidate.gpu_kinds().next().is_some();
    if (c.require_gpu || request.resources.gpu.is_some()) && !offers_gpu {
        return Some(Violation::NoGpu);
    }
    if candidate.gpu_price_for(&request.resources).is_none() {
        return Some(Violation::NoMatchingGpuKind);
    }
    let q = &candidate.quotas;
    if request.resources.cpu > q.max_vcpu {
        return Some(Violation::CpuQuota {
            max_vcpu: q.max_vcpu,
        });
    }
    if request.resources.memory_mib > q.max_memory_mib {
        return Some(Violation::MemoryQuota {
            max_memory_mib: q.max_memory_mib,
        });
    }
    if let Some(max_timeout_s) = q.max_timeout_s
        && request.timeout_s > max_timeout_s
    {
        return Some(Violation::TimeoutQuota { max_timeout_s });
    }
    if !request.allow_network && !candidate.backend.can_block_network() {
        return Some(Violation::CannotBlockNetwork);
    }
    None
}
