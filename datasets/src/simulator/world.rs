//! The simulated world: per-candidate performance profiles, time-of-day load by area, the
//! tenants, and the outcome model that turns (job, candidate, moment) into latencies, a status
//! and a cost. Every number here is an assumption of a TEST WORLD, documented in
//! `docs/simulator.md`; none is a measurement.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandstorm_features::telemetry::RunStatus;
use sandstorm_features::{
    Candidate, Catalog, IsolationBackend, ProviderKind, Resources, RunRequest, static_violation,
};
use time::{OffsetDateTime, Weekday};

use super::requests::{Job, RELAXED_CPU, RELAXED_MEMORY_MIB, RELAXED_TIMEOUT_S};
use super::sampling::{exponential, lognormal, normal, poisson, splitmix64};

/// Number of simulated tenants.
const TENANTS: usize = 50;
/// Zipf exponent of tenant traffic shares.
const TENANT_ZIPF: f64 = 1.1;
/// Probability that a cold start hits a slow path (image pull, snapshot miss).
const SLOW_START_P: f64 = 0.04;
/// Effective router-to-provider bandwidth at zero RTT, in bytes per millisecond (25 MB/s).
const BANDWIDTH_BYTES_PER_MS: f64 = 25_000.0;

/// A simulated tenant and its hidden habits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    /// Additive effect on log work.
    pub(crate) log_work: f64,
    /// Additive effect on log memory need relative to the request.
    pub(crate) log_memory: f64,
    /// Probability that the tenant's program exits non-zero.
    pub(crate) failure_rate: f64,
}

/// Hidden performance figures of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile {
    /// Median cold start, in milliseconds.
    pub(crate) start_median_ms: f64,
    /// Log-space spread of the cold start.
    pub(crate) start_sigma: f64,
    /// CPU speed relative to the reference core, backend overhead included.
    pub(crate) cpu_speed: f64,
    /// Probability that a start fails outright.
    pub(crate) unavailable: f64,
    /// Median admission/scheduling queue at zero load, in milliseconds (remote kinds).
    pub(crate) queue_median_ms: f64,
    /// Network round trips between router and candidate per run.
    pub(crate) round_trips: f64,
    /// Memory the isolation layer takes out of the sandbox's limit, in MiB.
    pub(crate) memory_overhead_mib: f64,
}

/// Everything fixed for one seed: the candidates with their profiles, the tenants, and the
/// catalog facts the request mix draws from.
#[derive(Debug, Clone)]
pub(crate) struct World {
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) profiles: Vec<Profile>,
    pub(crate) tenants: Vec<Tenant>,
    /// Cumulative Zipf weights of `tenants`.
    pub(crate) tenant_cdf: Vec<f64>,
    /// GPU kinds some candidate offers, sorted.
    pub(crate) gpu_kinds: Vec<String>,
    /// Enabled provider names, in catalog order.
    pub(crate) providers: Vec<String>,
    /// Regions of non-local candidates, sorted.
    pub(crate) remote_regions: Vec<String>,
    /// Area → its regions, for `allowed_regions` constraints, sorted.
    pub(crate) areas: Vec<(String, Vec<String>)>,
}

/// How a run ended, with its latencies and cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) status: RunStatus,
    pub(crate) error_class: Option<&'static str>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) queue_ms: f64,
    /// Network before the sandbox starts (create, upload).
    pub(crate) net_pre_ms: f64,
    pub(crate) start_ms: f64,
    pub(crate) exec_ms: f64,
    /// Network after the run (results).
    pub(crate) net_post_ms: f64,
    /// Whether the candidate began starting a sandbox (false when refused at admission).
    pub(crate) started: bool,
    pub(crate) cost_usd: f64,
    pub(crate) peak_memory_mib: Option<f64>,
}

impl World {
    pub(crate) fn new(catalog: &Catalog, seed: u64) -> Self {
        let candidates = catalog.candidates();
        let profiles = candidates.iter().map(profile).collect();
        let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ 0x7E4A_4E75));
        let tenants: Vec<Tenant> = (1..=TENANTS)
            .map(|i| Tenant {
                name: format!("tenant-{i:03}"),
                log_work: 0.5 * normal(&mut rng),
                log_memory: 0.15 * normal(&mut rng),
                failure_rate: lognormal(&mut rng, 0.015, 0.6).min(0.2),
            })
            .collect();
        let mut acc = 0.0;
        let tenant_cdf = (1..=TENANTS)
            .map(|i| {
                acc += (i as f64).powf(-TENANT_ZIPF);
                acc
            })
            .collect();
        let mut gpu_kinds: Vec<String> = candidates
            .iter()
            .flat_map(|c| c.gpu_kinds().map(str::to_owned))
            .collect();
        gpu_kinds.sort();
        gpu_kinds.dedup();
        let mut providers: Vec<String> = Vec::new();
        for c in &candidates {
            if !providers.contains(&c.provider) {
                providers.push(c.provider.clone());
            }
        }
        let mut remote_regions: Vec<String> = candidates
            .iter()
            .filter(|c| c.provider_kind != ProviderKind::Local)
            .map(|c| c.region.clone())
            .collect();
        remote_regions.sort();
        remote_regions.dedup();
        let mut areas: Vec<(String, Vec<String>)> = Vec::new();
        for c in candidates
            .iter()
            .filter(|c| c.provider_kind != ProviderKind::Local)
        {
            match areas.iter_mut().find(|(a, _)| *a == c.area) {
                Some((_, regions)) if !regions.contains(&c.region) => {
                    regions.push(c.region.clone())
                }
                Some(_) => {}
                None => areas.push((c.area.clone(), vec![c.region.clone()])),
            }
        }
        areas.sort();
        for (_, regions) in &mut areas {
            regions.sort();
        }
        Self {
            candidates,
            profiles,
            tenants,
            tenant_cdf,
            gpu_kinds,
            providers,
            remote_regions,
            areas,
        }
    }

    /// Whether some candidate can serve the relaxed request shape, so that every draw ends
    /// with a feasible request; `None` when it can, else the reason.
    pub(crate) fn unusable_reason(&self) -> Option<String> {
        if self.candidates.is_empty() {
            return Some("the catalog has no enabled candidate".to_owned());
        }
        let mut request = RunRequest::command(sandstorm_features::Language::Sh, "true");
        request.resources = Resources {
            cpu: RELAXED_CPU,
            memory_mib: RELAXED_MEMORY_MIB,
            disk_mib: 512,
            gpu: None,
        };
        request.timeout_s = RELAXED_TIMEOUT_S;
        request.allow_network = true;
        let first = self
            .candidates
            .iter()
            .map(|c| static_violation(&request, c))
            .collect::<Vec<_>>();
        if first.iter().any(Option::is_none) {
            None
        } else {
            let reasons: Vec<String> = self
                .candidates
                .iter()
                .zip(first)
                .filter_map(|(c, v)| v.map(|v| format!("{}: {v}", c.id)))
                .collect();
            Some(format!(
                "no candidate accepts even a 0.5 vCPU / 256 MiB / 10 s request ({})",
                reasons.join("; ")
            ))
        }
    }

    /// Runs `job` on candidate `index` at `now`.
    pub(crate) fn run<R: Rng + ?Sized>(
        &self,
        job: &Job,
        index: usize,
        now: OffsetDateTime,
        rng: &mut R,
    ) -> Outcome {
        let cand = &self.candidates[index];
        let prof = &self.profiles[index];
        let req = &job.request;
        let hidden = &job.hidden;
        let load = area_load(&cand.area, now);
        let is_local = cand.provider_kind == ProviderKind::Local;

        // Local hosts share two vCPUs with other runs: contention slows, a full host queues.
        let (queue_ms, contention) = if is_local {
            let others = poisson(rng, 0.3 + 2.7 * load);
            let slots = cand.quotas.max_concurrency.unwrap_or(4);
            let queue = if others >= slots {
                exponential(rng, 1200.0) * f64::from(others - slots + 1)
            } else {
                lognormal(rng, 0.3, 0.5)
            };
            let demand = f64::from(others) * 0.8 + req.resources.cpu;
            (
                queue,
                (demand / cand.quotas.max_vcpu.max(1.0)).max(1.0).powf(0.8),
            )
        } else {
            let queue = lognormal(rng, prof.queue_median_ms, 0.5) * (1.0 + 3.0 * load * load);
            (queue, 1.0 + 0.1 * load)
        };

        let (net_pre_ms, net_post_ms) = if is_local {
            (0.0, 0.0)
        } else {
            let rounds = cand.rtt_ms * prof.round_trips * (0.15 * normal(rng)).exp();
            let bandwidth = BANDWIDTH_BYTES_PER_MS / (1.0 + cand.rtt_ms / 100.0);
            let transfer = req.payload_bytes() as f64 / bandwidth;
            (rounds * 0.6 + transfer, rounds * 0.4)
        };

        let refused = |status, error_class, net_pre_ms, start_ms, started| Outcome {
            status,
            error_class: Some(error_class),
            exit_code: None,
            queue_ms,
            net_pre_ms,
            start_ms,
            exec_ms: 0.0,
            net_post_ms: 0.0,
            started,
            cost_usd: 0.0,
            peak_memory_mib: None,
        };

        // Remote providers refuse more often when busy, and more often for small account limits.
        if cand.provider_kind == ProviderKind::Remote {
            let concurrency = f64::from(cand.quotas.max_concurrency.unwrap_or(50).max(1));
            let p_quota = 0.08
                * load.powi(3)
                * (50.0 / concurrency).sqrt().clamp(0.5, 2.0)
                * (req.resources.cpu / 2.0).max(0.25).powf(0.3);
            if rng.random_bool(p_quota.clamp(0.0, 1.0)) {
                let one_round = cand.rtt_ms * (0.15 * normal(rng)).exp();
                return refused(RunStatus::Quota, "quota_exceeded", one_round, 0.0, false);
            }
        }

        let mut start_ms = lognormal(rng, prof.start_median_ms, prof.start_sigma);
        if rng.random_bool(SLOW_START_P) {
            start_ms *= rng.random_range(2.0..6.0);
        }
        if req.resources.gpu.is_some() {
            start_ms += lognormal(rng, 3500.0, 0.4);
        }
        start_ms *= contention.sqrt();

        let p_unavailable = prof.unavailable
            + if cand.provider_kind == ProviderKind::Kubernetes {
                0.015 * load.powi(4)
            } else {
                0.0
            };
        if rng.random_bool(p_unavailable.clamp(0.0, 1.0)) {
            let attempt = start_ms * rng.random_range(0.3..1.5);
            return refused(
                RunStatus::Unavailable,
                "start_failed",
                net_pre_ms,
                attempt,
                true,
            );
        }

        let vcpu = req.resources.cpu;
        let speedup = if vcpu < 1.0 {
            vcpu
        } else {
            let p = hidden.parallel_fraction;
            1.0 / ((1.0 - p) + p / vcpu)
        };
        let exec_full = hidden.overhead_ms
            + hidden.work_ms / (prof.cpu_speed * speedup * hidden.gpu_speedup)
                * contention
                * (0.15 * normal(rng)).exp();

        // The earliest of: OOM kill, the program failing, the wall-clock limit.
        let limit_mib = (req.resources.memory_mib as f64 - prof.memory_overhead_mib).max(1.0);
        let timeout_ms = req.timeout_s * 1000.0;
        let mut status = RunStatus::Ok;
        let mut exec_ms = exec_full;
        if hidden.memory_need_mib > limit_mib {
            status = RunStatus::Oom;
            exec_ms = exec_full * rng.random_range(0.1..0.9);
        }
        if let Some(fraction) = hidden.fails_at {
            let at = exec_full * fraction;
            if at < exec_ms {
                status = RunStatus::Failed;
                exec_ms = at;
            }
        }
        if exec_ms >= timeout_ms {
            status = RunStatus::Timeout;
            exec_ms = timeout_ms;
        }
        let (error_class, exit_code) = match status {
            RunStatus::Ok => (None, Some(0)),
            RunStatus::Failed => (Some("nonzero_exit"), Some(hidden.failure_exit_code)),
            RunStatus::Oom => (Some("oom_killed"), Some(137)),
            _ => (Some("timeout"), None),
        };
        let peak_memory_mib = Some(if status == RunStatus::Oom {
            limit_mib
        } else {
            hidden.memory_need_mib.min(limit_mib)
        });
        let billed_s = (start_ms + exec_ms) / 1000.0;
        Outcome {
            status,
            error_class,
            exit_code,
            queue_ms,
            net_pre_ms,
            start_ms,
            exec_ms,
            net_post_ms,
            started: true,
            cost_usd: cand.list_cost_usd(&req.resources, billed_s),
            peak_memory_mib,
        }
    }
}

/// Load in [0.1, 1] of an area at `now`: a daily bump centred on the area's busy hour (UTC),
/// damped at weekends. The local host follows the router's site (us).
pub(crate) fn area_load(area: &str, now: OffsetDateTime) -> f64 {
    let centre = match area {
        "us" | "local" => 18.0,
        "eu" => 12.0,
        "ap" => 5.0,
        _ => 15.0,
    };
    let hour = f64::from(now.hour()) + f64::from(now.minute()) / 60.0;
    let phase = (hour - centre) / 24.0 * std::f64::consts::TAU;
    let daily = (0.5 + 0.5 * phase.cos()).powi(2);
    let weekend = matches!(now.weekday(), Weekday::Saturday | Weekday::Sunday);
    let load = 0.1 + 0.9 * daily;
    if weekend { load * 0.55 } else { load }
}

/// The hidden performance profile of a candidate: named providers of the default catalog have
/// their own figures, any other provider gets figures by kind and backend.
pub(crate) fn profile(c: &Candidate) -> Profile {
    use IsolationBackend as B;
    // Defaults for self-hosted backends (local host, edge agents).
    let (host_start, host_sigma) = match c.backend {
        B::Process => (3.0, 0.3),
        B::Bubblewrap => (8.0, 0.3),
        B::Gvisor => (150.0, 0.25),
        B::RootlessOci => (300.0, 0.3),
        B::Microvm => (200.0, 0.3),
    };
    let backend_speed = match c.backend {
        B::Process | B::Bubblewrap => 1.0,
        B::RootlessOci => 0.99,
        B::Gvisor => 0.85,
        B::Microvm => 0.95,
    };
    let memory_overhead_mib = match c.backend {
        B::Process | B::Bubblewrap | B::RootlessOci => 0.0,
        B::Gvisor => 40.0,
        B::Microvm => 30.0,
    };
    // Kubernetes runtime classes: gVisor and Kata add to the pod start.
    let runtime_class_extra = match c.backend {
        B::Gvisor => 350.0,
        B::Microvm => 1200.0,
        _ => 0.0,
    };
    // (start median, start sigma, speed, unavailable, queue median, round trips)
    let (start, sigma, speed, unavailable, queue, rounds) =
        match (c.provider.as_str(), c.provider_kind) {
            ("e2b", ProviderKind::Remote) => (180.0, 0.35, 0.95, 0.006, 15.0, 3.0),
            ("daytona", ProviderKind::Remote) => (120.0, 0.4, 0.95, 0.008, 25.0, 3.0),
            ("modal", ProviderKind::Remote) => (900.0, 0.5, 1.1, 0.005, 40.0, 4.0),
            ("morph", ProviderKind::Remote) => (300.0, 0.35, 0.9, 0.012, 30.0, 3.0),
            (_, ProviderKind::Remote) => (400.0, 0.5, 0.95, 0.008, 30.0, 3.0),
            (_, ProviderKind::Kubernetes) => {
                (2500.0 + runtime_class_extra, 0.45, 1.05, 0.003, 200.0, 3.0)
            }
            (_, ProviderKind::Local) => {
                let unavailable = match c.backend {
                    B::Process | B::Bubblewrap => 0.001,
                    _ => 0.003,
                };
                (host_start, host_sigma, 1.0, unavailable, 0.0, 0.0)
            }
            (_, ProviderKind::Edge) => (host_start, host_sigma, 0.9, 0.004, 5.0, 2.0),
        };
    Profile {
        start_median_ms: start,
        start_sigma: sigma,
        cpu_speed: speed * backend_speed,
        unavailable,
        queue_median_ms: queue,
        round_trips: rounds,
        memory_overhead_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn busy_hours_differ_by_area() {
        let eu_noon = datetime!(2026-01-06 12:00 UTC);
        assert!(area_load("eu", eu_noon) > 0.95);
        assert!(area_load("ap", eu_noon) < 0.3);
        assert!(area_load("ap", datetime!(2026-01-06 17:00 UTC)) < 0.15);
        assert!(area_load("us", datetime!(2026-01-06 18:00 UTC)) > 0.95);
        let saturday = datetime!(2026-01-10 12:00 UTC);
        assert!(area_load("eu", saturday) < 0.6);
    }

    #[test]
    fn default_catalog_profiles_order_cold_starts() {
        let catalog = Catalog::default_catalog();
        let world = World::new(&catalog, 1);
        let start = |id: &str| {
            let i = world
                .candidates
                .iter()
                .position(|c| c.id == id)
                .unwrap_or_else(|| panic!("no candidate {id}"));
            world.profiles[i].start_median_ms
        };
        assert!(start("local/process/local") < start("local/bubblewrap/local"));
        assert!(start("local/gvisor/local") < start("e2b/microvm/us-west"));
        assert!(start("modal/gvisor/us-east") < start("kubernetes/rootless_oci/us-east"));
        assert!(start("kubernetes/rootless_oci/us-east") < start("kubernetes/microvm/us-east"));
        assert!(world.unusable_reason().is_none());
        assert!(!world.gpu_kinds.is_empty());
    }
}
