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
    // GPU requests only reach candidates whose price sheet names a fitting GPU kind (in the
    // default catalog: Modal's). This filter is what keeps a GPU job away from providers and
    // backends without GPUs; the adapters and local backends refuse a GPU job they cannot give
    // a GPU too (defense in depth, for a catalog that prices a GPU nobody can provide).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use crate::request::{GpuRequest, Language};

    fn gpu_request(count: u32, kinds: &[&str]) -> RunRequest {
        let mut r = RunRequest::command(Language::Python, "nvidia-smi");
        // Network allowed, so only the GPU decides here.
        r.allow_network = true;
        r.resources.gpu = Some(GpuRequest {
            count,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        });
        r
    }

    #[test]
    fn gpu_requests_reach_only_candidates_that_price_a_fitting_gpu() {
        let candidates = Catalog::default_catalog().candidates();
        let feasible = |r: &RunRequest| -> Vec<String> {
            candidates
                .iter()
                .filter(|c| static_violation(r, c).is_none())
                .map(|c| c.id.clone())
                .collect()
        };
        let any = gpu_request(1, &[]);
        let ids = feasible(&any);
        assert!(!ids.is_empty());
        assert!(ids.iter().all(|id| id.starts_with("modal/")), "{ids:?}");
        for c in candidates.iter().filter(|c| c.gpu_kinds().next().is_none()) {
            assert_eq!(
                static_violation(&any, c),
                Some(Violation::NoGpu),
                "{}",
                c.id
            );
        }
        // Kinds match case-insensitively; a kind no candidate prices is feasible nowhere.
        assert_eq!(feasible(&gpu_request(2, &["H100"])), ids);
        let modal = candidates
            .iter()
            .find(|c| c.provider == "modal")
            .expect("modal candidate");
        assert_eq!(
            static_violation(&gpu_request(1, &["rtx-9090"]), modal),
            Some(Violation::NoMatchingGpuKind)
        );
        // `require_gpu` alone keeps CPU-only candidates out too.
        let mut cpu = RunRequest::command(Language::Python, "true");
        cpu.allow_network = true;
        cpu.constraints.require_gpu = true;
        assert_eq!(feasible(&cpu), ids);
    }

    #[test]
    fn the_priced_gpu_kind_is_the_cheapest_accepted_one() {
        let modal = Catalog::default_catalog()
            .candidates()
            .into_iter()
            .find(|c| c.provider == "modal")
            .expect("modal candidate");
        let kind = |kinds: &[&str]| {
            let r = gpu_request(1, kinds);
            let gpu = r.resources.gpu.clone().expect("gpu");
            let picked = modal.gpu_kind_for(&gpu).map(|(k, p)| (k.to_owned(), p));
            assert_eq!(
                picked.as_ref().map(|(_, p)| *p),
                modal.gpu_price_for(&r.resources)
            );
            picked.map(|(k, _)| k)
        };
        assert_eq!(kind(&[]).as_deref(), Some("t4"));
        assert_eq!(kind(&["H100", "a10g"]).as_deref(), Some("a10g"));
        assert_eq!(kind(&["nope"]), None);
        let text = |count, kinds: &[&str]| {
            gpu_request(count, kinds)
                .resources
                .gpu
                .map(|g| g.to_string())
        };
        assert_eq!(text(1, &[]).as_deref(), Some("1 GPU (any kind)"));
        assert_eq!(
            text(2, &["h100", "a100-80gb"]).as_deref(),
            Some("2 GPUs (h100 or a100-80gb)")
        );
    }
}
