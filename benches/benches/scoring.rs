//! Scoring benchmarks: native tree inference against LightGBM's C API, and whole decisions.
//!
//! Setup builds a catalog with enough candidates (the default catalog plus synthetic regions,
//! one candidate per added region), simulates telemetry on it, and trains the four models
//! with `train_records` (100 rounds, no early stop before round 100). Then:
//!
//! * `per_candidate/{native,lightgbm3}/*`: all four models over the encoded rows of the 256
//!   candidates of one request (`one_request_256`; the native evaluator folds the request's
//!   features), over 256 telemetry rows of different requests (`mixed_256`; nothing to fold),
//!   and over a single row. Criterion's throughput is per candidate and model.
//!   `lightgbm3` predicts with `num_threads=1` (its single-row C API for one row).
//! * `decision/{16,64,256}`: `Router::decide_with` end to end (enumerate, filter, encode,
//!   predict 4 models, rank, explain) with a reused `Scratch`, each call with the next of
//!   eight different requests (language, resources, timeout, code size, strategy: the
//!   request's features and the burn rates change from call to call and recur every eighth
//!   call), and
//!   `decision/256+eu-residency-policy`: the same with the eu-residency WASM policy consulted,
//!   `decision/16+{epsilon,thompson}`: 16 candidates with exploration on (ε = 0.1; Thompson
//!   with 256 Monte-Carlo draws).
//!   `decision/256-same-request`: one request over and over;
//!   `decision/256-unique-requests`: requests that each ask for resources no other asks
//!   for, so the candidates' burn rates are new on every call and only what depends on the
//!   candidates alone can be reused.
//! * After criterion, a custom timing loop (not criterion) prints p50/p99 of whole decisions.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lightgbm3::Booster;
use sandstorm_benches::{catalog_with, policy_store};
use sandstorm_features::encoding::{FeatureInput, N_FEATURES};
use sandstorm_features::model::ModelRole;
use sandstorm_features::{DecisionContext, RunRequest};
use sandstorm_router::{EvalScratch, Exploration, ModelSet, NativeModel, Router, Scratch};
use time::macros::datetime;

const SIZES: [usize; 3] = [16, 64, 256];
const REQUEST: &str = "language: python\ncommand: python3 -c 'print(1)'\nstrategy: balanced\ntimeout_s: 30\nresources:\n  cpu: 1\n  memory_mib: 512\n";
/// The request mix of the `decision` cases: (language, command, strategy, timeout, cpu,
/// memory).
const MIX: [(&str, &str, &str, u32, u32, u32); 8] = [
    ("python", "python3 -c 'print(1)'", "balanced", 30, 1, 512),
    (
        "node",
        "node -e 'console.log(2)'",
        "optimize_cost",
        10,
        1,
        256,
    ),
    (
        "python",
        "python3 train.py --epochs 3",
        "optimize_latency",
        120,
        2,
        2048,
    ),
    ("bash", "echo hello", "balanced", 5, 1, 128),
    (
        "python",
        "python3 -c 'import sys; print(sys.version)'",
        "optimize_cost",
        60,
        4,
        4096,
    ),
    ("node", "node build.js", "balanced", 300, 2, 1024),
    ("bash", "make test", "optimize_latency", 600, 2, 512),
    ("python", "pytest -q", "optimize_cost", 90, 1, 1024),
];

/// Requests of the `*-unique-requests` case, decided in turn; more than any bench runs
/// between two uses of the same request.
const UNIQUE: usize = 8192;

/// [`UNIQUE`] requests that all ask for different memory (128 MiB + i), with the mix's
/// languages, commands and strategies, 1–4 vCPUs and 5–600 s: the burn rate of every
/// candidate differs from request to request, so nothing that depends on it can be reused.
fn unique_requests() -> Vec<RunRequest> {
    (0..UNIQUE)
        .map(|i| {
            let (language, command, strategy, ..) = MIX[i % MIX.len()];
            let i = i as u32;
            request_of((
                language,
                command,
                strategy,
                5 + (i * 37) % 596,
                1 + i % 4,
                128 + i,
            ))
        })
        .collect()
}

/// The request with these (language, command, strategy, timeout, cpu, memory).
fn request_of(
    (language, command, strategy, timeout, cpu, memory): (&str, &str, &str, u32, u32, u32),
) -> RunRequest {
    let yaml = format!(
        "language: {language}\ncommand: \"{command}\"\nstrategy: {strategy}\ntimeout_s: {timeout}\nresources:\n  cpu: {cpu}\n  memory_mib: {memory}\n"
    );
    RunRequest::from_yaml(&yaml).expect("request")
}

struct Fixture {
    _dir: tempfile::TempDir,
    models_dir: std::path::PathBuf,
    request: RunRequest,
    /// The requests of [`MIX`].
    mix: Vec<RunRequest>,
    /// [`UNIQUE`] requests whose resources all differ (see [`unique_requests`]).
    unique: Vec<RunRequest>,
    ctx: DecisionContext,
    /// Encoded rows of the 256 candidates of the catalog for one request.
    rows: Vec<f64>,
    /// Encoded rows of 256 telemetry records (different requests and candidates).
    mixed: Vec<f64>,
}

fn fixture() -> Fixture {
    let catalog = catalog_with(256);
    let sim = sandstorm_datasets::SimulatorConfig {
        rows: 20_000,
        seed: 7,
        ..Default::default()
    };
    let records: Vec<_> = sandstorm_datasets::simulate(&catalog, &sim).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = sandstorm_trainer::TrainConfig {
        num_iterations: 100,
        early_stopping_rounds: 100,
        ..Default::default()
    };
    let report = sandstorm_trainer::train_records(&records, dir.path(), &cfg).expect("train");
    for (role, entry) in &report.metadata.models {
        let leaves = std::fs::read_to_string(dir.path().join(&entry.file))
            .expect("model")
            .lines()
            .filter_map(|l| l.strip_prefix("num_leaves="))
            .filter_map(|v| v.parse::<usize>().ok())
            .sum::<usize>();
        println!(
            "model {}: {} trees, {:.1} leaves per tree",
            role.as_str(),
            entry.num_trees,
            leaves as f64 / entry.num_trees.max(1) as f64
        );
    }
    let request = RunRequest::from_yaml(REQUEST).expect("request");
    let mix = MIX.into_iter().map(request_of).collect();
    let unique = unique_requests();
    let ctx = DecisionContext::at(datetime!(2026-02-03 14:00 UTC));
    let models = ModelSet::load(dir.path()).expect("models");
    let candidates = catalog.candidates();
    let mut rows = Vec::new();
    models.space().encode_all(
        candidates
            .iter()
            .map(|c| FeatureInput::from_parts(&request, c, &ctx)),
        &mut rows,
    );
    let mut mixed = Vec::new();
    models.space().encode_all(
        records
            .iter()
            .skip(1000)
            .take(256)
            .map(FeatureInput::from_record),
        &mut mixed,
    );
    Fixture {
        mixed,
        models_dir: dir.path().to_path_buf(),
        _dir: dir,
        request,
        mix,
        unique,
        ctx,
        rows,
    }
}

fn per_candidate(c: &mut Criterion, fx: &Fixture) {
    let models = ModelSet::load(&fx.models_dir).expect("models");
    let natives: Vec<&NativeModel> = ModelRole::ALL.iter().map(|r| models.model(*r)).collect();
    let boosters: Vec<Booster> = ModelRole::ALL
        .iter()
        .map(|role| {
            let text =
                std::fs::read_to_string(fx.models_dir.join(role.file_name())).expect("model");
            Booster::from_string(&text).expect("booster")
        })
        .collect();
    let mut scratch = EvalScratch::default();
    let mut out = vec![0.0; 256];

    // Throughput is per candidate and model: 4 models x rows.
    let mut g = c.benchmark_group("per_candidate");
    let single = &fx.rows[..N_FEATURES];
    for (name, rows) in [
        ("one_request_256", &fx.rows[..]),
        ("mixed_256", &fx.mixed[..]),
        ("single_row", single),
    ] {
        let n = rows.len() / N_FEATURES;
        g.throughput(Throughput::Elements(4 * n as u64));
        g.bench_function(format!("native/{name}"), |b| {
            b.iter(|| {
                for model in &natives {
                    model
                        .predict_batch_into(&mut scratch, black_box(rows), &mut out[..n])
                        .expect("predict");
                }
            })
        });
        g.bench_function(format!("lightgbm3/{name}"), |b| {
            b.iter(|| {
                for booster in &boosters {
                    black_box(
                        booster
                            .predict_with_params(
                                black_box(rows),
                                N_FEATURES as i32,
                                true,
                                "num_threads=1",
                            )
                            .expect("predict"),
                    );
                }
            })
        });
    }
    g.finish();
}

/// Routers over catalogs of each size, and one over 256 candidates that also runs the
/// eu-residency WASM policy (the request's tenant is not an EU tenant, so the policy keeps
/// every candidate: the price of consulting a policy on every decision).
fn routers(fx: &Fixture) -> Vec<(String, usize, Router)> {
    let mut out: Vec<(String, usize, Router)> = SIZES
        .iter()
        .map(|&n| {
            let models = ModelSet::load(&fx.models_dir).expect("models");
            (n.to_string(), n, Router::new(&catalog_with(n), models))
        })
        .collect();
    let models = ModelSet::load(&fx.models_dir).expect("models");
    let router =
        Router::new(&catalog_with(256), models).with_policies(policy_store("eu-residency"));
    out.push(("256+eu-residency-policy".to_owned(), 256, router));
    // Exploration (off in every case above): ε-greedy draws two numbers, Thompson samples
    // every feasible candidate 257 times.
    for (name, exploration) in [
        ("epsilon", Exploration::EpsilonGreedy { epsilon: 0.1 }),
        ("thompson", Exploration::Thompson { draws: 256 }),
    ] {
        let models = ModelSet::load(&fx.models_dir).expect("models");
        let router = Router::new(&catalog_with(16), models)
            .with_exploration(exploration)
            .expect("valid exploration");
        out.push((format!("16+{name}"), 16, router));
    }
    for case in ["256-same-request", "256-unique-requests"] {
        let models = ModelSet::load(&fx.models_dir).expect("models");
        out.push((
            case.to_owned(),
            256,
            Router::new(&catalog_with(256), models),
        ));
    }
    out
}

/// The requests a case decides, in turn: the mix, the one request for `*-same-request`, or
/// requests never seen before for `*-unique-requests`.
fn requests_of<'a>(fx: &'a Fixture, name: &str) -> &'a [RunRequest] {
    if name.ends_with("same-request") {
        std::slice::from_ref(&fx.request)
    } else if name.ends_with("unique-requests") {
        &fx.unique
    } else {
        &fx.mix
    }
}

fn decisions(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("decision");
    for (name, n, router) in routers(fx) {
        let mut scratch = Scratch::with_capacity(n);
        let requests = requests_of(fx, &name);
        for request in requests.iter().take(MIX.len()) {
            let d = router
                .decide_with(&mut scratch, request, &fx.ctx, &|_| None)
                .expect("decision");
            assert_eq!(d.n_candidates, n);
            println!(
                "decision/{name}: {} feasible of {} ({:?}, winner {})",
                d.n_feasible, d.n_candidates, d.strategy, d.winner
            );
        }
        g.throughput(Throughput::Elements(n as u64));
        let mut next = 0;
        g.bench_with_input(BenchmarkId::from_parameter(&name), &n, |b, _| {
            b.iter(|| {
                next = (next + 1) % requests.len();
                router
                    .decide_with(&mut scratch, black_box(&requests[next]), &fx.ctx, &|_| None)
                    .expect("decision")
            })
        });
    }
    g.finish();
}

/// Custom timing loop (not criterion): p50 and p99 of whole decisions.
fn decision_percentiles(fx: &Fixture) {
    const ITERATIONS: usize = 5_000;
    println!(
        "custom timing loop (not criterion): Router::decide_with, {ITERATIONS} iterations after 500 warm-up"
    );
    for (name, n, router) in routers(fx) {
        let mut scratch = Scratch::with_capacity(n);
        let mut times: Vec<Duration> = Vec::with_capacity(ITERATIONS);
        let requests = requests_of(fx, &name);
        for i in 0..ITERATIONS + 500 {
            let request = &requests[i % requests.len()];
            let start = Instant::now();
            let d = router
                .decide_with(&mut scratch, black_box(request), &fx.ctx, &|_| None)
                .expect("decision");
            let elapsed = start.elapsed();
            black_box(d);
            if i >= 500 {
                times.push(elapsed);
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "decision/{name} candidates x 4 models: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            at(0.50).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            times[times.len() - 1].as_secs_f64() * 1e6
        );
    }
}

fn main() {
    let fx = fixture();
    let mut c = Criterion::default().configure_from_args();
    per_candidate(&mut c, &fx);
    decisions(&mut c, &fx);
    c.final_summary();
    decision_percentiles(&fx);
}
