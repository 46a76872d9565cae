//! The simulator: determinism, the written files, and statistical sanity checks that fail when
//! the simulated world stops behaving like the one `docs/simulator.md` describes.

use std::collections::BTreeMap;

use sandstorm_datasets::{DatasetsError, SimulatorConfig, generate, read_parquet_dir, simulate};
use sandstorm_features::Catalog;
use sandstorm_features::telemetry::{self, RunStatus, TelemetryRecord};

fn rows(rows: usize, seed: u64) -> Vec<TelemetryRecord> {
    let cfg = SimulatorConfig {
        rows,
        seed,
        ..SimulatorConfig::default()
    };
    simulate(&Catalog::default_catalog(), &cfg).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn same_seed_gives_identical_rows_and_another_seed_does_not() {
    let a = rows(1_500, 42);
    let b = rows(1_500, 42);
    assert_eq!(a.len(), 1_500);
    assert_eq!(a, b);
    let c = rows(1_500, 43);
    assert_ne!(a, c);
    let ids: std::collections::BTreeSet<&str> = a.iter().map(|r| r.decision_id.as_str()).collect();
    assert_eq!(ids.len(), a.len(), "decision ids repeat");
}

#[test]
fn generate_writes_chunks_that_read_back_as_the_simulated_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("sim");
    let cfg = SimulatorConfig {
        rows: 2_500,
        seed: 9,
        rows_per_file: 1_000,
        ..SimulatorConfig::default()
    };
    let catalog = Catalog::default_catalog();
    let mut progress = Vec::new();
    let summary =
        generate(&catalog, &cfg, &out, &mut |done| progress.push(done)).expect("generate");
    assert_eq!(summary.rows, 2_500);
    assert_eq!(summary.files.len(), 3);
    assert_eq!(progress, [1_000, 2_000, 2_500]);
    assert_eq!(summary.status_counts.values().sum::<usize>(), 2_500);

    let read: Vec<TelemetryRecord> = read_parquet_dir(&out)
        .expect("read")
        .iter()
        .flat_map(|b| telemetry::from_record_batch(b).expect("rows"))
        .collect();
    let simulated: Vec<TelemetryRecord> = simulate(&catalog, &cfg).collect();
    assert_eq!(read, simulated);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &read {
        *counts.entry(r.status.as_str().to_owned()).or_default() += 1;
    }
    assert_eq!(counts, summary.status_counts);

    // A second run into the same directory would mix two simulations: refused.
    let err = generate(&catalog, &cfg, &out, &mut |_| {}).expect_err("not empty");
    assert!(
        matches!(err, DatasetsError::OutputNotEmpty { .. }),
        "{err:?}"
    );
    let err = generate(
        &catalog,
        &SimulatorConfig {
            rows_per_file: 0,
            ..cfg
        },
        &tmp.path().join("other"),
        &mut |_| {},
    )
    .expect_err("bad config");
    assert!(err.to_string().contains("rows_per_file"), "{err}");
    let err = generate(
        &catalog,
        &SimulatorConfig {
            days: u32::MAX,
            ..cfg
        },
        &tmp.path().join("other"),
        &mut |_| {},
    )
    .expect_err("bad config");
    assert!(err.to_string().contains("simulated period"), "{err}");
    assert!(err.is_user_error());
}

#[test]
fn simulated_world_is_statistically_sane() {
    let rows = rows(30_000, 2026);
    let n = rows.len() as f64;

    // Logging policy.
    for r in &rows {
        assert_eq!(r.source, "simulator");
        assert!(r.model_version.is_none());
        // The logged choice set: every candidate, the feasible ones flagged.
        assert_eq!(r.decision_scores.len(), r.n_candidates as usize);
        let feasible: Vec<&str> = r
            .decision_scores
            .iter()
            .filter(|s| s.feasible)
            .map(|s| s.candidate_id.as_str())
            .collect();
        assert_eq!(feasible.len(), r.n_feasible as usize);
        assert!(feasible.contains(&r.candidate_id.as_str()));
        assert!(r.decision_scores.iter().all(|s| s.score.is_none()));
        assert!(
            (r.selection_probability - 1.0 / f64::from(r.n_feasible)).abs() < 1e-12,
            "{}",
            r.selection_probability
        );
    }

    // Cold starts: a Kubernetes pod is much slower to answer than a local process.
    let latency = |pred: &dyn Fn(&TelemetryRecord) -> bool| {
        median(
            rows.iter()
                .filter(|r| pred(r))
                .map(|r| r.total_latency_ms)
                .collect(),
        )
    };
    let kubernetes = latency(&|r| r.provider == "kubernetes");
    let process = latency(&|r| r.backend == "process");
    assert!(
        kubernetes > process + 1_000.0,
        "kubernetes {kubernetes} ms, process {process} ms"
    );
    let k8s_start = median(
        rows.iter()
            .filter(|r| r.provider == "kubernetes" && r.status == RunStatus::Ok)
            .map(|r| r.start_ms)
            .collect(),
    );
    let process_start = median(
        rows.iter()
            .filter(|r| r.backend == "process" && r.status == RunStatus::Ok)
            .map(|r| r.start_ms)
            .collect(),
    );
    assert!(
        k8s_start > 100.0 * process_start,
        "{k8s_start} vs {process_start}"
    );

    // GPU runs exist only where GPUs are sold, and cost more than CPU runs there.
    assert!(
        rows.iter()
            .filter(|r| r.gpu_count > 0)
            .all(|r| r.provider == "modal")
    );
    let modal_cost = |gpu: bool| {
        median(
            rows.iter()
                .filter(|r| {
                    r.provider == "modal" && r.status == RunStatus::Ok && (r.gpu_count > 0) == gpu
                })
                .map(|r| r.cost_usd)
                .collect(),
        )
    };
    let (gpu_cost, cpu_cost) = (modal_cost(true), modal_cost(false));
    assert!(
        gpu_cost > 3.0 * cpu_cost,
        "gpu {gpu_cost} vs cpu {cpu_cost}"
    );

    // Failures: present, but not dominant.
    let infra = rows
        .iter()
        .filter(|r| r.status.is_infrastructure_failure())
        .count() as f64;
    let rate = infra / n;
    assert!(
        (0.005..0.15).contains(&rate),
        "infrastructure failure rate {rate}"
    );
    let ok = rows.iter().filter(|r| r.status == RunStatus::Ok).count() as f64 / n;
    assert!(ok > 0.8, "ok share {ok}");
    for status in [
        RunStatus::Timeout,
        RunStatus::Oom,
        RunStatus::Quota,
        RunStatus::Unavailable,
    ] {
        assert!(
            rows.iter().any(|r| r.status == status),
            "no {status} rows in {n} rows"
        );
    }

    // Timeouts happen exactly when execution reached the limit, which then caps it.
    for r in &rows {
        let limit = r.timeout_s * 1000.0;
        if r.status == RunStatus::Timeout {
            assert_eq!(r.exec_ms, limit, "{}", r.run_id);
        } else {
            assert!(
                r.exec_ms < limit,
                "{} {} ran {} ms",
                r.run_id,
                r.status,
                r.exec_ms
            );
        }
    }

    // Quota refusals come from remote providers only and rise at their busy hours.
    let quota_rate = |busy: bool| {
        let remote: Vec<&TelemetryRecord> = rows
            .iter()
            .filter(|r| {
                let hour = (r.ts_request_us / 3_600_000_000).rem_euclid(24);
                r.provider_kind == "remote" && r.area == "us" && (15..21).contains(&hour) == busy
            })
            .collect();
        remote
            .iter()
            .filter(|r| r.status == RunStatus::Quota)
            .count() as f64
            / remote.len() as f64
    };
    assert!(
        rows.iter()
            .filter(|r| r.status == RunStatus::Quota)
            .all(|r| r.provider_kind == "remote")
    );
    let (busy, quiet) = (quota_rate(true), quota_rate(false));
    assert!(busy > 2.0 * quiet, "busy {busy} quiet {quiet}");

    // Runs refused before starting cost nothing; every run that started is billed.
    for r in &rows {
        match r.status {
            RunStatus::Quota => {
                assert_eq!(r.cost_usd, 0.0);
                assert!(r.ts_start_us.is_none());
            }
            RunStatus::Unavailable => assert_eq!(r.cost_usd, 0.0),
            _ => assert!(r.cost_usd > 0.0, "{} cost {}", r.run_id, r.cost_usd),
        }
        let parts = r.queue_ms + r.start_ms + r.exec_ms;
        assert!(r.total_latency_ms >= parts - 1e-6);
        if r.provider_kind == "local" {
            assert!(
                (r.total_latency_ms - parts).abs() < 1e-6,
                "local runs have no network"
            );
        }
    }

    // Local candidates serve at most 2 vCPU.
    assert!(
        rows.iter()
            .filter(|r| r.provider == "local")
            .all(|r| r.vcpu <= 2.0)
    );

    // The features reveal the work only in part: execution time follows the timeout the user
    // chose, but far from perfectly.
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.status == RunStatus::Ok && r.gpu_count == 0)
        .map(|r| (r.timeout_s.ln(), r.exec_ms.ln()))
        .collect();
    let corr = correlation(&pairs);
    assert!(
        (0.2..0.8).contains(&corr),
        "corr(log timeout, log exec) = {corr}"
    );
}

fn correlation(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

#[test]
fn another_logging_policy_sees_the_same_requests_and_its_probability_is_logged() {
    let catalog = Catalog::default_catalog();
    let cfg = SimulatorConfig {
        rows: 400,
        seed: 31,
        ..SimulatorConfig::default()
    };
    let uniform: Vec<TelemetryRecord> = simulate(&catalog, &cfg).collect();
    let last = |_: &sandstorm_features::RunRequest,
                _: &sandstorm_features::DecisionContext,
                feasible: &[&sandstorm_features::Candidate],
                _: &mut dyn rand::RngCore| (feasible.len() - 1, 1.0);
    let mut last_ids = Vec::new();
    for (u, d) in uniform
        .iter()
        .zip(sandstorm_datasets::simulate_with(&catalog, &cfg, last))
    {
        // Same request, same arrival, same choice set.
        assert_eq!(
            (
                u.ts_request_us,
                &u.tenant,
                u.vcpu,
                u.timeout_s,
                u.payload_bytes
            ),
            (
                d.ts_request_us,
                &d.tenant,
                d.vcpu,
                d.timeout_s,
                d.payload_bytes
            )
        );
        assert_eq!(u.decision_scores, d.decision_scores);
        let feasible: Vec<&str> = d
            .decision_scores
            .iter()
            .filter(|s| s.feasible)
            .map(|s| s.candidate_id.as_str())
            .collect();
        assert_eq!(d.candidate_id, *feasible.last().unwrap());
        assert_eq!(d.selection_probability, 1.0);
        last_ids.push(d.candidate_id);
    }
    assert_eq!(last_ids.len(), 400);
}
