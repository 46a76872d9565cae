//! Inverse-propensity weighting: on telemetry of a biased logging policy (one candidate gets
//! most `batch` jobs, which run longer for reasons no feature shows), the unweighted latency
//! model is biased for that candidate; weighting by `1 / selection_probability` removes most
//! of the bias. Measured against fresh uniformly logged telemetry of the same world, with a
//! model trained on uniformly logged telemetry (no selection bias) as the reference.

use std::collections::BTreeMap;

use rand::{Rng, RngCore};
use sandstorm_datasets::{SimulatorConfig, simulate, simulate_with};
use sandstorm_features::encoding::{FeatureInput, N_FEATURES};
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord};
use sandstorm_features::{Candidate, Catalog, DecisionContext, RunRequest};
use sandstorm_router::ModelSet;
use sandstorm_trainer::{IpwConfig, TRAINING_FILE, TrainConfig, train_records};

/// The candidate the biased policy favours for batch jobs.
const FAVOURED: &str = "local/process/local";

/// `FAVOURED` with probability 0.9 for requests labelled `job: batch`, 0.1 for the others;
/// the rest uniformly among the other feasible candidates.
fn biased(
    request: &RunRequest,
    _: &DecisionContext,
    feasible: &[&Candidate],
    rng: &mut dyn RngCore,
) -> (usize, f64) {
    let n = feasible.len();
    let Some(a) = feasible.iter().position(|c| c.id == FAVOURED) else {
        return (rng.random_range(0..n), 1.0 / n as f64);
    };
    if n == 1 {
        return (0, 1.0);
    }
    let p_a = if request.labels.get("job").map(String::as_str) == Some("batch") {
        0.9
    } else {
        0.1
    };
    if rng.random::<f64>() < p_a {
        (a, p_a)
    } else {
        let k = rng.random_range(0..n - 1);
        (if k >= a { k + 1 } else { k }, (1.0 - p_a) / (n - 1) as f64)
    }
}

fn config(ipw: Option<IpwConfig>) -> TrainConfig {
    TrainConfig {
        holdout_fraction: 0.0,
        valid_fraction: 0.1,
        num_iterations: 200,
        report: false,
        shap_sample: 0,
        ipw,
        ..TrainConfig::default()
    }
}

/// Mean `ln(predicted p50) - ln(actual latency)` per candidate over completed rows.
fn latency_bias(models: &ModelSet, rows: &[TelemetryRecord]) -> BTreeMap<String, (f64, usize)> {
    let done: Vec<&TelemetryRecord> = rows
        .iter()
        .filter(|r| matches!(r.status, RunStatus::Ok | RunStatus::Failed))
        .collect();
    let mut x = Vec::with_capacity(done.len() * N_FEATURES);
    models
        .space()
        .encode_all(done.iter().map(|r| FeatureInput::from_record(r)), &mut x);
    let predictions = models.predict(&x).expect("predict");
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (r, p) in done.iter().zip(&predictions) {
        let e = sums.entry(r.candidate_id.clone()).or_default();
        e.0 += p.latency_p50_ms.ln() - r.total_latency_ms.max(1e-3).ln();
        e.1 += 1;
    }
    for v in sums.values_mut() {
        v.0 /= v.1 as f64;
    }
    sums
}

#[test]
fn ipw_changes_the_model_and_removes_the_bias_of_biased_logging() {
    let catalog = Catalog::default_catalog();
    let logged: Vec<TelemetryRecord> = simulate_with(
        &catalog,
        &SimulatorConfig {
            rows: 20_000,
            seed: 5,
            ..SimulatorConfig::default()
        },
        biased,
    )
    .collect();
    let favoured_batch = logged
        .iter()
        .filter(|r| r.candidate_id == FAVOURED)
        .filter(|r| r.labels_json.contains("\"batch\""))
        .count() as f64
        / logged.iter().filter(|r| r.candidate_id == FAVOURED).count() as f64;
    assert!(favoured_batch > 0.3, "biased logging: {favoured_batch}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let (plain_dir, ipw_dir) = (tmp.path().join("plain"), tmp.path().join("ipw"));
    let plain = train_records(&logged, &plain_dir, &config(None)).expect("train unweighted");
    let weighted = train_records(
        &logged,
        &ipw_dir,
        &config(Some(IpwConfig { max_weight: 20.0 })),
    )
    .expect("train weighted");

    // IPW changes the model, and says so in training.json.
    assert!(plain.weighting.is_none());
    let stats = weighted.weighting.clone().expect("weight stats");
    assert!(
        stats.min >= 1.0 && stats.max > 10.0 && stats.mean > 1.0,
        "{stats:?}"
    );
    assert!(stats.effective_sample_size < stats.rows as f64);
    let training: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ipw_dir.join(TRAINING_FILE)).expect("training.json"),
    )
    .expect("json");
    assert_eq!(training["weighting"]["ipw"], true);
    assert_eq!(training["weighting"]["max_weight"], 20.0);
    assert!(training["weighting"]["clipped_share"].as_f64().is_some());
    let plain_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(plain_dir.join(TRAINING_FILE)).expect("training.json"),
    )
    .expect("json");
    assert!(plain_json["weighting"].is_null());
    let text = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("latency_p50.txt")).expect("model")
    };
    assert_ne!(text(&plain_dir), text(&ipw_dir), "weights change the trees");

    // Judged on fresh requests of the same world (the seed draws the world: tenants and
    // their hidden traits), logged uniformly.
    let fresh: Vec<TelemetryRecord> = simulate(
        &catalog,
        &SimulatorConfig {
            rows: 50_000,
            seed: 5,
            ..SimulatorConfig::default()
        },
    )
    .skip(20_000)
    .collect();
    // The reference: the same model trained on uniformly logged telemetry of the same
    // requests, which has no selection bias to undo.
    let uniform_dir = tmp.path().join("uniform");
    let uniform: Vec<TelemetryRecord> = simulate(
        &catalog,
        &SimulatorConfig {
            rows: 20_000,
            seed: 5,
            ..SimulatorConfig::default()
        },
    )
    .collect();
    train_records(&uniform, &uniform_dir, &config(None)).expect("train on uniform logs");
    let plain_bias = latency_bias(&ModelSet::load(&plain_dir).expect("load"), &fresh);
    let ipw_bias = latency_bias(&ModelSet::load(&ipw_dir).expect("load"), &fresh);
    let uniform_bias = latency_bias(&ModelSet::load(&uniform_dir).expect("load"), &fresh);
    let (b_plain, n) = plain_bias[FAVOURED];
    let (b_ipw, _) = ipw_bias[FAVOURED];
    let (b_uniform, _) = uniform_bias[FAVOURED];
    eprintln!(
        "{FAVOURED} ({n} rows): ln bias unweighted {b_plain:+.3}, ipw {b_ipw:+.3}, trained on uniform logs {b_uniform:+.3}"
    );
    let mean_abs = |b: &BTreeMap<String, (f64, usize)>| {
        b.values().map(|(v, _)| v.abs()).sum::<f64>() / b.len() as f64
    };
    eprintln!(
        "mean |ln bias| over candidates: unweighted {:.3}, ipw {:.3}",
        mean_abs(&plain_bias),
        mean_abs(&ipw_bias)
    );
    // The unweighted model learned the favoured candidate from mostly batch jobs: too slow.
    assert!(b_plain > 0.15, "unweighted bias {b_plain}");
    assert!(
        b_plain - b_uniform > 0.15,
        "selection bias {b_plain} vs {b_uniform}"
    );
    // Weighting undoes most of it: half the bias of the unweighted model, and at most half
    // its excess over the model trained without selection bias.
    assert!(
        b_ipw.abs() < 0.5 * b_plain,
        "ipw bias {b_ipw} vs unweighted {b_plain}"
    );
    assert!(
        (b_ipw - b_uniform).abs() < 0.5 * (b_plain - b_uniform),
        "ipw {b_ipw}, unweighted {b_plain}, uniform {b_uniform}"
    );
}

#[test]
fn ipw_refuses_rows_without_a_usable_selection_probability() {
    let catalog = Catalog::default_catalog();
    let mut rows: Vec<TelemetryRecord> = simulate(
        &catalog,
        &SimulatorConfig {
            rows: 600,
            seed: 3,
            ..SimulatorConfig::default()
        },
    )
    .collect();
    for r in rows.iter_mut().take(7) {
        r.selection_probability = 0.0;
    }
    rows[7].selection_probability = f64::NAN;
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = train_records(&rows, tmp.path(), &config(Some(IpwConfig::default())))
        .expect_err("unusable propensities")
        .to_string();
    assert!(
        e.contains("8 of 600 executed rows") && e.contains("`selection_probability`"),
        "{e}"
    );
    let e = train_records(
        &rows,
        tmp.path(),
        &config(Some(IpwConfig { max_weight: 0.5 })),
    )
    .expect_err("bad max weight")
    .to_string();
    assert!(e.contains("weighting.max_weight"), "{e}");
}
