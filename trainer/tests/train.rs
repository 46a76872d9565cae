//! Training on simulated telemetry: the model directory is complete, the models beat naive
//! baselines on the time-ordered holdout, and bad input is a clear error.

use sandstorm_datasets::{SimulatorConfig, generate};
use sandstorm_features::Catalog;
use sandstorm_features::model::{FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole};
use sandstorm_trainer::{TrainConfig, TrainerError, train};

/// Writes `rows` rows of simulated telemetry (seed `seed`) to `dir` and returns the config.
fn simulate_into(dir: &std::path::Path, rows: usize, seed: u64) -> SimulatorConfig {
    let cfg = SimulatorConfig {
        rows,
        seed,
        ..Default::default()
    };
    generate(&Catalog::default_catalog(), &cfg, dir, &mut |_| {}).expect("simulate telemetry");
    cfg
}

#[test]
fn trains_a_complete_model_directory_with_sane_holdout_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    simulate_into(&telemetry, 8000, 3);
    let out = tmp.path().join("models");
    let report = train(&telemetry, &out, &TrainConfig::default()).unwrap();

    for role in ModelRole::ALL {
        let text = std::fs::read_to_string(out.join(role.file_name())).unwrap();
        assert!(
            text.starts_with("tree\n"),
            "{} is a LightGBM text model",
            role.as_str()
        );
    }
    let meta: ModelMetadata =
        serde_json::from_str(&std::fs::read_to_string(out.join(METADATA_FILE)).unwrap()).unwrap();
    assert_eq!(meta, report.metadata);
    assert!(out.join(FEATURE_SCHEMA_FILE).is_file());
    // Time-ordered split: the holdout starts after training ends.
    assert!(meta.training_window.to <= meta.validation_window.from);
    assert!(meta.validation_window.to <= meta.holdout_window.from);
    assert_eq!(
        meta.training_window.rows + meta.validation_window.rows + meta.holdout_window.rows,
        8000
    );

    let m = |role: ModelRole, name: &str| meta.models[&role].metrics[name];
    // p95 coverage close to its nominal level.
    let coverage = m(ModelRole::LatencyP95, "coverage");
    assert!((0.85..=0.99).contains(&coverage), "p95 coverage {coverage}");
    // The failure model ranks better than chance.
    assert!(
        m(ModelRole::Failure, "auc") > 0.55,
        "auc {}",
        m(ModelRole::Failure, "auc")
    );
    // Latency spans four orders of magnitude across candidates; the median model must be far
    // better than predicting one constant (which would have a median APE near 100 %).
    assert!(m(ModelRole::LatencyP50, "median_ape_pct") < 80.0);
    assert!(m(ModelRole::Cost, "median_ape_pct") < 80.0);
    // Parameters are recorded verbatim in LightGBM's names.
    let p95 = &meta.models[&ModelRole::LatencyP95].params;
    assert_eq!(p95["objective"], "quantile");
    assert_eq!(p95["alpha"], 0.95);
}

#[test]
fn missing_or_empty_telemetry_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = train(
        &tmp.path().join("nope"),
        &tmp.path().join("m"),
        &TrainConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, TrainerError::Input(_)) && err.to_string().contains("does not exist"),
        "{err}"
    );
    let err = train(tmp.path(), &tmp.path().join("m"), &TrainConfig::default()).unwrap_err();
    assert!(err.to_string().contains("no .parquet files"), "{err}");

    let telemetry = tmp.path().join("small");
    simulate_into(&telemetry, 50, 1);
    let err = train(&telemetry, &tmp.path().join("m"), &TrainConfig::default()).unwrap_err();
    assert!(err.to_string().contains("need at least 200"), "{err}");
}

/// The model directory is plain LightGBM: Python's `lightgbm.Booster(model_file=...)` loads each
/// model and predicts what LightGBM predicts here, on the same encoded rows.
#[test]
fn python_lightgbm_loads_the_models_and_predicts_the_same_values() {
    use sandstorm_features::encoding::{FeatureInput, N_FEATURES};
    use sandstorm_features::model::StoredFeatureSchema;

    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    let cfg = simulate_into(&telemetry, 3000, 5);
    let out = tmp.path().join("models");
    train(&telemetry, &out, &TrainConfig::default()).unwrap();

    let schema: StoredFeatureSchema =
        serde_json::from_str(&std::fs::read_to_string(out.join(FEATURE_SCHEMA_FILE)).unwrap())
            .unwrap();
    let records: Vec<_> = sandstorm_datasets::simulate(&Catalog::default_catalog(), &cfg)
        .take(50)
        .collect();
    let mut rows = Vec::new();
    schema
        .space
        .encode_all(records.iter().map(FeatureInput::from_record), &mut rows);
    let csv: String = rows
        .chunks(N_FEATURES)
        .map(|r| {
            r.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let matrix = tmp.path().join("rows.csv");
    std::fs::write(&matrix, csv).unwrap();

    let python = std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    for role in ModelRole::ALL {
        let model = out.join(role.file_name());
        let script = "import sys, numpy as np, lightgbm as lgb\n\
                      x = np.loadtxt(sys.argv[2], delimiter=',', ndmin=2)\n\
                      print('\\n'.join(repr(float(v)) for v in lgb.Booster(model_file=sys.argv[1]).predict(x)))";
        let o = std::process::Command::new(&python)
            .args([
                "-c",
                script,
                model.to_str().unwrap(),
                matrix.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "python lightgbm failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Vec<f64> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let booster = lightgbm3::Booster::from_file(model.to_str().unwrap()).unwrap();
        let ours = booster
            .predict_with_params(&rows, N_FEATURES as i32, true, "num_threads=1")
            .unwrap();
        assert_eq!(theirs.len(), ours.len());
        for (a, b) in theirs.iter().zip(&ours) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{}: python {a} vs rust {b}",
                role.as_str()
            );
        }
    }
}
