//! The simulated request mix and each request's hidden traits.
//!
//! A [`Job`] is a valid [`RunRequest`] plus [`Hidden`] facts about the code that no feature
//! reveals directly: how much CPU work it does, how parallel it is, how much memory it really
//! needs and whether the program itself fails. The work is correlated with the timeout and the
//! payload size (which the models see) and with the tenant and job type (which they do not), so
//! the models can learn a good part of it but never all of it.

use std::collections::BTreeMap;

use rand::Rng;
use sandstorm_features::{
    Constraints, GpuRequest, InputFile, IsolationLevel, Language, Resources, RunRequest,
    StrategyKind,
};

use super::sampling::{lognormal, normal, pick, pick_cdf};
use super::world::World;

/// Largest code, command and files payload the simulator draws, in bytes.
const MAX_SIM_PAYLOAD: usize = 4 * 1024 * 1024;

/// What kind of workload a request is; hidden except through an optional `job` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    Ci,
    Notebook,
    Agent,
    Batch,
}

impl JobKind {
    fn as_str(self) -> &'static str {
        match self {
            JobKind::Ci => "ci",
            JobKind::Notebook => "notebook",
            JobKind::Agent => "agent",
            JobKind::Batch => "batch",
        }
    }

    /// Additive effect on log work.
    fn log_work(self) -> f64 {
        match self {
            JobKind::Ci => 0.0,
            JobKind::Notebook => -0.3,
            JobKind::Agent => -0.6,
            JobKind::Batch => 0.8,
        }
    }
}

/// Facts about a request's code that the simulator knows and telemetry does not record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hidden {
    /// CPU work in milliseconds on one reference core (speed 1.0).
    pub(crate) work_ms: f64,
    /// Amdahl parallel fraction of the work, in [0, 1).
    pub(crate) parallel_fraction: f64,
    /// Interpreter start-up inside the sandbox, in milliseconds.
    pub(crate) overhead_ms: f64,
    /// Peak memory the program needs, in MiB; above the limit it is OOM-killed.
    pub(crate) memory_need_mib: f64,
    /// When the program itself fails: the fraction of its run after which it exits non-zero.
    pub(crate) fails_at: Option<f64>,
    /// Exit code of a failing program.
    pub(crate) failure_exit_code: i32,
    /// Speed-up of the work on the requested GPUs (1 without GPU).
    pub(crate) gpu_speedup: f64,
}

/// A request and its hidden traits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Job {
    pub(crate) request: RunRequest,
    pub(crate) hidden: Hidden,
}

/// Resources of the "relaxed" request drawn when repeated draws found no feasible candidate:
/// the smallest shape, which [`World::usable`] checks some candidate can serve.
pub(crate) const RELAXED_CPU: f64 = 0.5;
pub(crate) const RELAXED_MEMORY_MIB: u64 = 256;
pub(crate) const RELAXED_TIMEOUT_S: f64 = 10.0;

/// Draws one job. `relaxed` draws the smallest, constraint-free shape (network allowed, no GPU,
/// 0.5 vCPU, 256 MiB, 10 s) with the usual language, payload and hidden traits.
pub(crate) fn sample_job<R: Rng + ?Sized>(world: &World, rng: &mut R, relaxed: bool) -> Job {
    let language = pick(
        rng,
        &[
            (Language::Python, 0.55),
            (Language::Node, 0.25),
            (Language::Bash, 0.12),
            (Language::Sh, 0.08),
        ],
    );
    let tenant_index = pick_cdf(rng, &world.tenant_cdf);
    let tenant = &world.tenants[tenant_index];
    let job_kind = pick(
        rng,
        &[
            (JobKind::Ci, 0.30),
            (JobKind::Notebook, 0.25),
            (JobKind::Agent, 0.30),
            (JobKind::Batch, 0.15),
        ],
    );

    // Payload: inline code or a shell command, plus optional input files.
    let use_command = matches!(language, Language::Bash | Language::Sh) && rng.random_bool(0.4);
    let body_len = if use_command {
        lognormal(rng, 60.0, 0.8).clamp(4.0, 4096.0) as usize
    } else {
        lognormal(rng, 1500.0, 1.3).clamp(16.0, 2.0 * 1024.0 * 1024.0) as usize
    };
    let file_count = pick(rng, &[(0_u32, 0.65), (1, 0.12), (2, 0.08), (3, 0.05)]);
    let file_count = if file_count == 0 && rng.random_bool(0.1) {
        rng.random_range(4..=12)
    } else {
        file_count
    };
    let mut budget = MAX_SIM_PAYLOAD.saturating_sub(body_len);
    let mut files = Vec::with_capacity(file_count as usize);
    for k in 0..file_count {
        let len = (lognormal(rng, 6000.0, 1.6).clamp(1.0, 1024.0 * 1024.0) as usize).min(budget);
        budget -= len;
        files.push(InputFile {
            path: format!("data/input_{k}.csv"),
            content: "0".repeat(len),
        });
    }
    let body = "#".repeat(body_len.max(1));
    let (command, code) = if use_command {
        (Some(body), None)
    } else {
        (None, Some(body))
    };

    // Resources.
    let (cpu, memory_mib, timeout_s, allow_network) = if relaxed {
        (RELAXED_CPU, RELAXED_MEMORY_MIB, RELAXED_TIMEOUT_S, true)
    } else {
        let cpu = pick(
            rng,
            &[
                (0.5_f64, 0.15),
                (1.0, 0.40),
                (2.0, 0.25),
                (4.0, 0.13),
                (8.0, 0.07),
            ],
        );
        let per_cpu = pick(
            rng,
            &[(0.5_f64, 0.20), (1.0, 0.35), (2.0, 0.30), (4.0, 0.15)],
        );
        let memory = (cpu * 1024.0 * per_cpu).clamp(256.0, 16384.0) as u64;
        let timeout = pick(
            rng,
            &[
                (10.0_f64, 0.10),
                (30.0, 0.22),
                (60.0, 0.33),
                (120.0, 0.15),
                (300.0, 0.12),
                (600.0, 0.08),
            ],
        );
        (cpu, memory, timeout, rng.random_bool(0.3))
    };
    let disk_mib = pick(
        rng,
        &[(512_u64, 0.1), (1024, 0.6), (4096, 0.2), (10240, 0.1)],
    );
    let gpu = if !relaxed && !world.gpu_kinds.is_empty() && rng.random_bool(0.02) {
        let count = if rng.random_bool(0.85) { 1 } else { 2 };
        let kinds = if rng.random_bool(0.4) {
            Vec::new()
        } else {
            let n = rng.random_range(1..=2.min(world.gpu_kinds.len()));
            let mut kinds: Vec<String> = Vec::with_capacity(n);
            while kinds.len() < n {
                let kind = &world.gpu_kinds[rng.random_range(0..world.gpu_kinds.len())];
                if !kinds.contains(kind) {
                    kinds.push(kind.clone());
                }
            }
            kinds
        };
        Some(GpuRequest { count, kinds })
    } else {
        None
    };
    let (cpu, memory_mib) = if gpu.is_some() {
        (cpu.max(2.0), memory_mib.max(8192))
    } else {
        (cpu, memory_mib)
    };

    // What to optimise.
    let strategy = pick(
        rng,
        &[
            (StrategyKind::OptimizeCost, 0.45),
            (StrategyKind::OptimizeLatency, 0.35),
            (StrategyKind::Balanced, 0.20),
        ],
    );
    let cost_weight = (strategy == StrategyKind::Balanced && rng.random_bool(0.7))
        .then(|| f64::from(rng.random_range(1..=9_u8)) / 10.0);

    let constraints = if relaxed {
        Constraints::default()
    } else {
        sample_constraints(world, rng)
    };

    let mut labels = BTreeMap::new();
    if rng.random_bool(0.6) {
        labels.insert("job".to_owned(), job_kind.as_str().to_owned());
    }

    let request = RunRequest {
        language,
        command,
        code,
        files,
        resources: Resources {
            cpu,
            memory_mib,
            disk_mib,
            gpu,
        },
        timeout_s,
        allow_network,
        strategy,
        cost_weight,
        constraints,
        tenant: tenant.name.clone(),
        labels,
        workload: None,
    };
    let hidden = sample_hidden(&request, tenant, job_kind, rng);
    Job { request, hidden }
}

fn sample_constraints<R: Rng + ?Sized>(world: &World, rng: &mut R) -> Constraints {
    let mut c = Constraints::default();
    if rng.random_bool(0.07) {
        c.min_isolation = Some(pick(
            rng,
            &[
                (IsolationLevel::Namespace, 0.25),
                (IsolationLevel::Gvisor, 0.45),
                (IsolationLevel::Microvm, 0.30),
            ],
        ));
    }
    if !world.remote_regions.is_empty() {
        if rng.random_bool(0.03) {
            let i = rng.random_range(0..world.remote_regions.len());
            c.region = Some(world.remote_regions[i].clone());
        } else if rng.random_bool(0.02) {
            let (_, regions) = &world.areas[rng.random_range(0..world.areas.len())];
            c.allowed_regions = regions.clone();
        }
    }
    if !world.providers.is_empty() {
        if rng.random_bool(0.03) {
            let i = rng.random_range(0..world.providers.len());
            c.excluded_providers = vec![world.providers[i].clone()];
        } else if rng.random_bool(0.01) {
            let a = rng.random_range(0..world.providers.len());
            let b = rng.random_range(0..world.providers.len());
            c.allowed_providers = vec![world.providers[a].clone()];
            if b != a {
                c.allowed_providers.push(world.providers[b].clone());
            }
        }
    }
    c
}

fn sample_hidden<R: Rng + ?Sized>(
    request: &RunRequest,
    tenant: &super::world::Tenant,
    job: JobKind,
    rng: &mut R,
) -> Hidden {
    let (lang_work, overhead_median, mem_offset, mem_floor, max_parallel) = match request.language {
        Language::Python => (0.0, 25.0, -1.2, 40.0, 0.35),
        Language::Node => (-0.15, 40.0, -1.3, 60.0, 0.25),
        Language::Bash => (-0.5, 3.0, -1.9, 4.0, 0.6),
        Language::Sh => (-0.6, 2.0, -2.0, 2.0, 0.6),
    };
    let payload = request.payload_bytes().max(1) as f64;
    let gpu = request.resources.gpu.is_some();
    let log_work = (request.timeout_s * 1000.0 * 0.02).ln()
        + lang_work
        + 0.2 * (payload / 1500.0).ln()
        + tenant.log_work
        + job.log_work()
        + if gpu { 4.0_f64.ln() } else { 0.0 }
        + 1.25 * normal(rng);
    let batch_bonus = if job == JobKind::Batch { 0.3 } else { 0.0 };
    let parallel_fraction = (rng.random::<f64>() * max_parallel + batch_bonus).min(0.95);
    let requested = request.resources.memory_mib as f64;
    let memory_need_mib = (requested * (mem_offset + tenant.log_memory + 0.5 * normal(rng)).exp())
        .max(mem_floor * (0.3 * normal(rng)).exp());
    let fail_rate = tenant.failure_rate
        * match request.language {
            Language::Bash | Language::Sh => 1.6,
            _ => 1.0,
        };
    let fails_at = rng
        .random_bool(fail_rate.clamp(0.0, 1.0))
        .then(|| rng.random_range(0.02..1.0));
    let failure_exit_code = match request.language {
        Language::Bash | Language::Sh => pick(rng, &[(1, 0.6), (2, 0.2), (127, 0.2)]),
        _ => 1,
    };
    Hidden {
        work_ms: log_work.exp(),
        parallel_fraction,
        overhead_ms: lognormal(rng, overhead_median, 0.2),
        memory_need_mib,
        fails_at,
        failure_exit_code,
        gpu_speedup: if gpu {
            lognormal(rng, 10.0, 0.3) * f64::from(request.resources.gpu_count()).sqrt()
        } else {
            1.0
        },
    }
}
