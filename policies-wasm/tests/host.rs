//! The host against real policy components: the example policies decide as intended, and
//! hostile policies (infinite loop, memory bomb, trap, wrong answers, forbidden imports,
//! oversized, unsigned or tampered modules) are contained with a clear error while the
//! host keeps working.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sandstorm_features::{Candidate, Catalog, DecisionContext, RunRequest};
use sandstorm_policies_wasm::{
    FailureKind, Manifest, PoliciesError, PolicyCandidate, PolicyEngine, PolicyKey, PolicyKind,
    PolicyLimits, PolicyOutcome, PolicyStore, Registry, TrustedKeys, author,
};

fn component(package: &str) -> Vec<u8> {
    let path = author::build_guest(package).unwrap_or_else(|e| panic!("building {package}: {e}"));
    std::fs::read(path).unwrap()
}

fn candidates() -> &'static [Arc<Candidate>] {
    static C: OnceLock<Vec<Arc<Candidate>>> = OnceLock::new();
    C.get_or_init(|| {
        Catalog::default_catalog()
            .candidates()
            .into_iter()
            .map(Arc::new)
            .collect()
    })
}

fn policy_candidates() -> Vec<PolicyCandidate<'static>> {
    candidates()
        .iter()
        .enumerate()
        .map(|(i, c)| PolicyCandidate {
            candidate: c,
            cost_usd: 0.0001 * (i as f64 + 1.0),
            latency_p50_ms: 100.0,
            latency_p95_ms: 300.0,
            failure_prob: 0.01,
        })
        .collect()
}

fn request(tenant: &str, labels: &[(&str, &str)]) -> RunRequest {
    let mut r = RunRequest::command(sandstorm_features::Language::Python, "print(1)");
    r.tenant = tenant.to_owned();
    for (k, v) in labels {
        r.labels.insert((*k).to_owned(), (*v).to_owned());
    }
    r
}

fn store_with(limits: PolicyLimits, policies: &[(&str, &str, PolicyKind)]) -> PolicyStore {
    let store = PolicyStore::new(PolicyEngine::new(limits).unwrap());
    for (package, version, kind) in policies {
        let module = component(package);
        let manifest = Manifest::for_module(package, version, "tests", *kind, &module).unwrap();
        store.install_module(manifest, &module).unwrap();
    }
    store
}

fn run_one(store: &PolicyStore, req: &RunRequest) -> PolicyOutcome {
    let mut worker = store.worker();
    let mut out = worker.evaluate(req, &DecisionContext::now(), 7, &policy_candidates());
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn eu_residency_rejects_every_non_eu_candidate_for_eu_tenants_only() {
    let store = store_with(
        PolicyLimits::deterministic(),
        &[("eu-residency", "1.0.0", PolicyKind::Filter)],
    );
    let out = run_one(&store, &request("acme-eu", &[]));
    let v = out.result.unwrap();
    for (i, c) in candidates().iter().enumerate() {
        assert_eq!(v.rejection(i).is_some(), c.area != "eu", "{}", c.id);
        if let Some(reason) = v.rejection(i) {
            assert!(reason.contains("EU"), "{reason}");
        }
    }
    assert!(v.n_rejected() > 0 && v.n_rejected() < candidates().len());
    let out = run_one(&store, &request("acme", &[]));
    assert_eq!(out.result.unwrap().n_rejected(), 0);
}

#[test]
fn untrusted_code_is_kept_off_weak_isolation_and_unknown_labels_are_errors() {
    let store = store_with(
        PolicyLimits::deterministic(),
        &[("untrusted-isolation", "1.0.0", PolicyKind::Filter)],
    );
    let v = run_one(&store, &request("t", &[("trust", "untrusted")]))
        .result
        .unwrap();
    for (i, c) in candidates().iter().enumerate() {
        let weak = c.isolation_level() < sandstorm_features::IsolationLevel::Gvisor;
        assert_eq!(v.rejection(i).is_some(), weak, "{}", c.id);
    }
    let out = run_one(&store, &request("t", &[("trust", "maybe")]));
    let err = out.result.unwrap_err();
    assert_eq!(err.kind, FailureKind::PolicyError);
    assert!(
        err.message.contains("unknown trust label"),
        "{}",
        err.message
    );
}

#[test]
fn cost_cap_and_edge_preference_adjust_scores() {
    let store = store_with(
        PolicyLimits::deterministic(),
        &[
            ("tenant-cost-cap", "1.0.0", PolicyKind::Filter),
            ("edge-rtt", "1.0.0", PolicyKind::Scorer),
        ],
    );
    let mut worker = store.worker();
    let cands = policy_candidates();
    let out = worker.evaluate(
        &request("t", &[("tier", "free")]),
        &DecisionContext::now(),
        1,
        &cands,
    );
    let names: Vec<&str> = out.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["edge-rtt", "tenant-cost-cap"]);
    let edge = out[0].result.as_ref().unwrap();
    for (i, c) in candidates().iter().enumerate() {
        let near = c.rtt_ms <= 30.0 && c.provider_kind == sandstorm_features::ProviderKind::Local;
        if near {
            assert_eq!(
                edge.adjustment(i).map(|a| a.0),
                Some(0.800000011920929),
                "{}",
                c.id
            );
        }
    }
    let cap = out[1].result.as_ref().unwrap();
    for (i, pc) in cands.iter().enumerate() {
        assert_eq!(
            cap.rejection(i).is_some(),
            pc.cost_usd > 0.0005,
            "{}",
            pc.candidate.id
        );
    }
}

/// The `echo` fixture prints every field it reads through the SDK: what the host packs into
/// the contract's `input` bytes must be what a policy sees, field by field and candidate by
/// candidate (distinct values per candidate catch swapped columns and offsets).
#[test]
fn a_policy_reads_every_field_the_host_packs() {
    use sandstorm_features::{IsolationBackend, ProviderKind};

    let store = store_with(
        PolicyLimits::default(),
        &[("echo", "1.0.0", PolicyKind::Scorer)],
    );
    let mut req = request("acme", &[("trust", "untrusted"), ("team", "ml")]);
    req.strategy = sandstorm_features::StrategyKind::OptimizeLatency;
    req.resources.cpu = 2.5;
    req.resources.memory_mib = 1536;
    req.resources.gpu = Some(sandstorm_features::GpuRequest {
        count: 2,
        kinds: Vec::new(),
    });
    req.timeout_s = 42.5;
    req.allow_network = true;
    let ctx = DecisionContext::at(time::macros::datetime!(2026-12-06 01:02:03.456 UTC));
    let with_predictions = |picked: Vec<&'static Arc<Candidate>>| -> Vec<PolicyCandidate<'static>> {
        picked
            .into_iter()
            .enumerate()
            .map(|(i, c)| PolicyCandidate {
                candidate: c,
                cost_usd: 0.0001 * (i as f64 + 1.0),
                latency_p50_ms: 100.0 + i as f64,
                latency_p95_ms: 300.0 + 2.0 * i as f64,
                failure_prob: 0.01 * (i % 7) as f64,
            })
            .collect()
    };
    let all = with_predictions(candidates().iter().take(200).collect());
    // Another set, of another size: the host repacks the candidates' own columns.
    let fewer = with_predictions(candidates().iter().rev().step_by(3).take(37).collect());
    let mut worker = store.worker();
    // The second call reuses the packed candidate columns of the first.
    for (seed, cands) in [(7, &all), (8, &all), (9, &fewer), (10, &all)] {
        let out = worker.evaluate(&req, &ctx, seed, cands).remove(0);
        let v = out.result.unwrap();
        assert_eq!(v.len(), cands.len());
        let now_ms = ctx.now.unix_timestamp_nanos() / 1_000_000;
        let head = format!(
            "tenant=acme now={now_ms} seed={seed} strategy=optimize_latency language=python \
             cpu=2.5 memory=1536 gpu=2 timeout=42.5 network=true team=ml trust=untrusted \
             label(trust)=Some(\"untrusted\")"
        );
        for (i, pc) in cands.iter().enumerate() {
            let c = &**pc.candidate;
            let backend = match c.backend {
                IsolationBackend::Process => "Process",
                IsolationBackend::Bubblewrap => "Bubblewrap",
                IsolationBackend::Gvisor => "Gvisor",
                IsolationBackend::RootlessOci => "RootlessOci",
                IsolationBackend::Microvm => "Microvm",
            };
            let kind = match c.provider_kind {
                ProviderKind::Local => "Local",
                ProviderKind::Remote => "Remote",
                ProviderKind::Kubernetes => "Kubernetes",
                ProviderKind::Edge => "Edge",
            };
            let isolation = ["Process", "Process", "Namespace", "Gvisor", "Microvm"]
                [usize::from(c.isolation_level().strength()).min(4)];
            let expected = format!(
                "{head} | {}/{backend}/{} area={} kind={kind} isolation={isolation} rtt={} cost={} p50={} p95={} failure={}",
                c.provider,
                c.region,
                c.area,
                c.rtt_ms as f32,
                pc.cost_usd,
                pc.latency_p50_ms as f32,
                pc.latency_p95_ms as f32,
                pc.failure_prob as f32,
            );
            assert_eq!(
                v.adjustment(i),
                Some((2.0, expected.as_str())),
                "candidate {i}"
            );
        }
    }
}

#[test]
fn an_infinite_loop_is_interrupted_and_the_next_call_works() {
    // Wall-clock mode, as in serving.
    let limits = PolicyLimits {
        deadline: Duration::from_millis(20),
        ..PolicyLimits::default()
    };
    let store = store_with(limits, &[("infinite-loop", "1.0.0", PolicyKind::Filter)]);
    let mut worker = store.worker();
    let ctx = DecisionContext::now();
    let cands = policy_candidates();
    let out = worker.evaluate(&request("t", &[("hostile", "spin")]), &ctx, 1, &cands);
    let err = out[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    // The trapped instance was dropped; a fresh one answers.
    let out = worker.evaluate(&request("t", &[]), &ctx, 1, &cands);
    assert!(out[0].result.is_ok(), "{:?}", out[0].result);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_in_deterministic_mode() {
    let limits = PolicyLimits {
        fuel: Some(5_000_000),
        ..PolicyLimits::deterministic()
    };
    let store = store_with(limits, &[("infinite-loop", "1.0.0", PolicyKind::Filter)]);
    let err = run_one(&store, &request("t", &[("hostile", "spin")]))
        .result
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::OutOfFuel, "{err}");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let limits = PolicyLimits {
        memory_bytes: 8 << 20,
        ..PolicyLimits::deterministic()
    };
    let store = store_with(limits, &[("memory-bomb", "1.0.0", PolicyKind::Filter)]);
    let mut worker = store.worker();
    let ctx = DecisionContext::now();
    let out = worker.evaluate(
        &request("t", &[("hostile", "memory")]),
        &ctx,
        1,
        &policy_candidates(),
    );
    let err = out[0].result.as_ref().unwrap_err();
    assert_eq!(err.kind, FailureKind::MemoryLimit, "{err}");
    assert!(err.message.contains("8 MiB"), "{err}");
    let out = worker.evaluate(&request("t", &[]), &ctx, 1, &policy_candidates());
    assert!(out[0].result.is_ok());
}

#[test]
fn a_trap_is_reported_and_contained() {
    let store = store_with(
        PolicyLimits::deterministic(),
        &[("trap", "1.0.0", PolicyKind::Filter)],
    );
    let err = run_one(&store, &request("t", &[("hostile", "trap")]))
        .result
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    assert!(
        err.message.contains("unreachable") || err.message.contains("wasm trap"),
        "{err}"
    );
}

#[test]
fn wrong_verdict_counts_and_bad_reasons_are_invalid_output() {
    let store = store_with(
        PolicyLimits::deterministic(),
        &[("wrong-count", "1.0.0", PolicyKind::Filter)],
    );
    let err = run_one(&store, &request("t", &[])).result.unwrap_err();
    assert_eq!(err.kind, FailureKind::InvalidOutput);
    let n = candidates().len();
    assert!(
        err.message.contains(&format!("{} rejections", n - 1)),
        "{err}"
    );

    let store = store_with(
        PolicyLimits::deterministic(),
        &[("bad-reason", "1.0.0", PolicyKind::Scorer)],
    );
    let err = run_one(&store, &request("t", &[])).result.unwrap_err();
    assert!(err.message.contains("reason index 9"), "{err}");
    let err = run_one(&store, &request("t", &[("hostile", "nan")]))
        .result
        .unwrap_err();
    assert!(err.message.contains("NaN"), "{err}");
}

fn compile_err(package: &str) -> PoliciesError {
    let engine = PolicyEngine::new(PolicyLimits::deterministic()).unwrap();
    let module = component(package);
    let manifest =
        Manifest::for_module("hostile", "1.0.0", "tests", PolicyKind::Filter, &module).unwrap();
    engine.compile(package, &module, manifest).unwrap_err()
}

#[test]
fn components_importing_wasi_or_unknown_host_functions_are_refused_at_load() {
    let err = compile_err("wasi-import").to_string();
    assert!(err.contains("wasi:cli/environment@0.2.0"), "{err}");
    assert!(err.contains("may import nothing"), "{err}");
    let err = compile_err("unknown-import").to_string();
    assert!(err.contains("sandstorm:hostile/secrets"), "{err}");
}

#[test]
fn oversized_modules_and_core_modules_are_refused() {
    let engine = PolicyEngine::new(PolicyLimits::deterministic()).unwrap();
    // A 50 MB module: a valid core module with a 50 MB data segment.
    let wat = format!(
        "(module (memory 800) (data (i32.const 0) \"{}\"))",
        "\\00".repeat(50 << 20)
    );
    let big = wat::parse_str(&wat).unwrap();
    assert!(big.len() > 50 << 20);
    let manifest = Manifest::for_module("big", "1.0.0", "t", PolicyKind::Filter, &big).unwrap();
    let err = engine
        .compile("big", &big, manifest.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than the limit of 8388608 bytes"),
        "{err}"
    );

    let core = wat::parse_str("(module)").unwrap();
    let err = engine
        .compile("core", &core, manifest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a component"), "{err}");
}

#[test]
fn a_crash_looping_version_falls_back_to_the_last_good_one() {
    let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::deterministic()).unwrap());
    let good = component("noop");
    let bad = component("trap");
    store
        .install_module(
            Manifest::for_module("guard", "1.0.0", "t", PolicyKind::Filter, &good).unwrap(),
            &good,
        )
        .unwrap();
    let mut worker = store.worker();
    let ctx = DecisionContext::now();
    let cands = policy_candidates();
    let hostile = request("t", &[("hostile", "trap")]);
    assert!(worker.evaluate(&hostile, &ctx, 1, &cands)[0].result.is_ok());
    store
        .install_module(
            Manifest::for_module("guard", "1.1.0", "t", PolicyKind::Filter, &bad).unwrap(),
            &bad,
        )
        .unwrap();
    for _ in 0..sandstorm_policies_wasm::CRASH_LOOP_THRESHOLD {
        let out = worker.evaluate(&hostile, &ctx, 1, &cands);
        assert_eq!(out[0].version, "1.1.0");
        assert!(out[0].result.is_err());
    }
    let out = worker.evaluate(&hostile, &ctx, 1, &cands);
    assert_eq!(out[0].version, "1.0.0");
    assert!(out[0].fell_back);
    assert!(out[0].result.is_ok());
    let listed = store.list();
    assert!(listed[0].fell_back && listed[0].active_version == "1.0.0");
}

#[test]
fn the_registry_loads_only_signed_versions_and_keeps_the_old_one_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path());
    let key = PolicyKey::generate();
    let trust = TrustedKeys::from_hex(&[&key.public_hex()]).unwrap();
    let module = component("eu-residency");
    let v1 =
        Manifest::for_module("eu-residency", "1.0.0", "t", PolicyKind::Filter, &module).unwrap();
    registry.publish(&v1, &module, &key).unwrap();
    let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::deterministic()).unwrap());
    let report = store.sync(&registry, &trust).unwrap();
    assert_eq!(report.installed, ["eu-residency@1.0.0"]);
    assert!(
        store.sync(&registry, &trust).unwrap().installed.is_empty(),
        "already installed"
    );

    // A newer version signed by an untrusted key is refused; 1.0.0 stays active.
    let mallory = PolicyKey::generate();
    let v2 = Manifest::for_module(
        "eu-residency",
        "1.1.0",
        "mallory",
        PolicyKind::Filter,
        &module,
    )
    .unwrap();
    registry.publish(&v2, &module, &mallory).unwrap();
    let report = store.sync(&registry, &trust).unwrap();
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0]
            .1
            .to_string()
            .contains("not among the trusted keys")
    );
    assert_eq!(store.list()[0].active_version, "1.0.0");

    // A trusted version whose module was swapped after signing is refused too.
    let v3 =
        Manifest::for_module("eu-residency", "1.2.0", "t", PolicyKind::Filter, &module).unwrap();
    let dir3 = registry.publish(&v3, &module, &key).unwrap();
    std::fs::write(dir3.join("policy.wasm"), component("noop")).unwrap();
    let report = store.sync(&registry, &trust).unwrap();
    assert!(
        report.refused[0].1.to_string().contains("tampered"),
        "{:?}",
        report.refused
    );
    assert_eq!(store.list()[0].active_version, "1.0.0");
}

#[test]
fn a_watching_store_hot_swaps_new_versions_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path());
    let key = PolicyKey::generate();
    let trust = TrustedKeys::from_hex(&[&key.public_hex()]).unwrap();
    let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::deterministic()).unwrap());
    let _watch = store.watch(registry.clone(), trust, Duration::from_millis(20));
    let wait_for = |version: &str| {
        for _ in 0..500 {
            if store
                .list()
                .first()
                .is_some_and(|p| p.active_version == version)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("version {version} never became active: {:?}", store.list());
    };
    let noop = component("noop");
    let eu = component("eu-residency");
    let v1 = Manifest::for_module("residency", "1.0.0", "t", PolicyKind::Filter, &noop).unwrap();
    registry.publish(&v1, &noop, &key).unwrap();
    wait_for("1.0.0");
    // A worker created before the swap sees the new version on its next call.
    let mut worker = store.worker();
    let req = request("acme-eu", &[]);
    let out = worker.evaluate(&req, &DecisionContext::now(), 1, &policy_candidates());
    assert_eq!(out[0].result.as_ref().unwrap().n_rejected(), 0);
    let v2 = Manifest::for_module("residency", "2.0.0", "t", PolicyKind::Filter, &eu).unwrap();
    registry.publish(&v2, &eu, &key).unwrap();
    wait_for("2.0.0");
    let out = worker.evaluate(&req, &DecisionContext::now(), 1, &policy_candidates());
    assert_eq!(out[0].version, "2.0.0");
    assert!(out[0].result.as_ref().unwrap().n_rejected() > 0);
}
