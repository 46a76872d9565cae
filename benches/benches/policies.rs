//! WebAssembly policy benchmarks (issue targets: warm call on 256 candidates p50 ≤ 5 µs,
//! pooled instantiation ≤ 25 µs):
//!
//! * `policy_warm_256/{wasm,native}_eu_residency`: one call of the eu-residency policy on the
//!   256 candidates of one request (an EU tenant: every non-EU candidate is rejected), through
//!   wasmtime with a warm instance, and the same logic as plain Rust in the same run;
//! * `policy_warm_256/wasm_noop`: the smallest policy on the same input: the price of the
//!   boundary (argument lowering, call, verdict lifting and validation);
//! * `policy_noop_call/0`: a no-op call with zero candidates: the fixed cost of a call;
//! * `policy_instantiate/pooled`: a fresh instance from the pooling allocator (store, instance,
//!   drop), what a worker pays after a trap.
//!
//! Reproduce: `./scripts/bench.sh policies` (or `cargo bench -p sandstorm-benches --bench
//! policies`). A custom loop after criterion prints p50/p99 of the warm calls.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sandstorm_benches::{catalog_with, compiled_policy, policy_store};
use sandstorm_features::{Candidate, DecisionContext, RunRequest};
use sandstorm_policies_wasm::PolicyCandidate;

struct Fixture {
    candidates: Vec<Arc<Candidate>>,
    request: RunRequest,
    ctx: DecisionContext,
}

fn fixture() -> Fixture {
    let candidates: Vec<Arc<Candidate>> = catalog_with(256)
        .candidates()
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut request = RunRequest::command(
        sandstorm_features::Language::Python,
        "python3 -c 'print(1)'",
    );
    request.tenant = "acme-eu".to_owned();
    Fixture {
        candidates,
        request,
        ctx: DecisionContext::now(),
    }
}

fn inputs(fx: &Fixture) -> Vec<PolicyCandidate<'_>> {
    fx.candidates
        .iter()
        .enumerate()
        .map(|(i, c)| PolicyCandidate {
            candidate: c,
            cost_usd: 1e-5 * (1.0 + i as f64),
            latency_p50_ms: 300.0 + i as f64,
            latency_p95_ms: 900.0 + i as f64,
            failure_prob: 0.02,
        })
        .collect()
}

/// The eu-residency policy as plain Rust, with the same output shape as the host's verdicts
/// (one optional reason per candidate).
fn native_eu_residency(
    request: &RunRequest,
    cands: &[PolicyCandidate<'_>],
) -> Vec<Option<&'static str>> {
    let eu_tenant = request.tenant.ends_with("-eu")
        || request.labels.get("residency").is_some_and(|v| v == "eu");
    cands
        .iter()
        .map(|c| {
            (eu_tenant && c.candidate.area != "eu")
                .then_some("EU tenant: data must stay in EU regions")
        })
        .collect()
}

fn main() {
    let fx = fixture();
    let cands = inputs(&fx);
    let eu = policy_store("eu-residency");
    let noop = policy_store("noop");
    let mut eu_worker = eu.worker();
    let mut noop_worker = noop.worker();
    // Same answers from both implementations.
    let wasm = eu_worker.evaluate(&fx.request, &fx.ctx, 1, &cands);
    let verdicts = wasm[0].result.as_ref().expect("eu-residency answers");
    let native = native_eu_residency(&fx.request, &cands);
    for (i, n) in native.iter().enumerate() {
        assert_eq!(verdicts.rejection(i), *n, "candidate {i}");
    }
    println!(
        "eu-residency rejects {} of {} candidates",
        verdicts.n_rejected(),
        cands.len()
    );

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("policy_warm_256");
    g.bench_function("wasm_eu_residency", |b| {
        b.iter(|| eu_worker.evaluate(black_box(&fx.request), &fx.ctx, 1, black_box(&cands)))
    });
    g.bench_function("native_eu_residency", |b| {
        b.iter(|| native_eu_residency(black_box(&fx.request), black_box(&cands)))
    });
    g.bench_function("wasm_noop", |b| {
        b.iter(|| noop_worker.evaluate(black_box(&fx.request), &fx.ctx, 1, black_box(&cands)))
    });
    g.finish();
    c.bench_function("policy_noop_call/0", |b| {
        b.iter(|| noop_worker.evaluate(black_box(&fx.request), &fx.ctx, 1, &[]))
    });
    let compiled = compiled_policy("eu-residency");
    c.bench_function("policy_instantiate/pooled", |b| {
        b.iter(|| compiled.check_instantiation().expect("instantiate"))
    });
    c.final_summary();

    const ITERATIONS: usize = 20_000;
    println!("custom timing loop (not criterion): {ITERATIONS} warm calls after 1000 warm-up");
    for (name, worker) in [("eu-residency", &mut eu_worker), ("noop", &mut noop_worker)] {
        let mut times: Vec<Duration> = Vec::with_capacity(ITERATIONS);
        for i in 0..ITERATIONS + 1000 {
            let start = Instant::now();
            black_box(worker.evaluate(black_box(&fx.request), &fx.ctx, 1, &cands));
            if i >= 1000 {
                times.push(start.elapsed());
            }
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "policy {name} warm on 256 candidates: p50 {:.2} us, p99 {:.2} us",
            at(0.50).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6
        );
    }
}
