//! Training on simulated telemetry: the model directory is complete, the models beat naive
//! baselines on the time-ordered holdout, and bad input is a clear error.

use sandstorm_datasets::{SimulatorConfig, generate};
use sandstorm_features::Catalog;
use sandstorm_features::model::{FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole};
use sandstorm_trainer::{TrainConfig, TrainerError, train};

#[test]
fn trains_a_complete_model_directory_with_sane_holdout_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    let cfg = SimulatorConfig {
        rows: 8000,
        seed: 3,
        ..Default::default()
    };
    generate(&Catalog::default_catalog(), &cfg, &telemetry, &mut |_| {}).unwrap();
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
    let cfg = SimulatorConfig {
        rows: 50,
        seed: 1,
        ..Default::default()
    };
    generate(&Catalog::default_catalog(), &cfg, &telemetry, &mut |_| {}).unwrap();
    let err = train(&telemetry, &tmp.path().join("m"), &TrainConfig::default()).unwrap_err();
    assert!(err.to_string().contains("need at least 200"), "{err}");
}
