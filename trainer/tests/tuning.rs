//! Training for data scientists: configuration files with LightGBM's own parameter names,
//! time-ordered cross-validation, the random search, importance and SHAP, and the HTML report.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

use sandstorm_datasets::{SimulatorConfig, generate};
use sandstorm_features::Catalog;
use sandstorm_features::model::{METADATA_FILE, ModelMetadata, ModelRole};
use sandstorm_trainer::{REPORT_FILE, TRAINING_FILE, TrainConfig, TrainerError, train};
use serde_json::Value;

fn simulate_into(dir: &std::path::Path, rows: usize, seed: u64) {
    let cfg = SimulatorConfig {
        rows,
        seed,
        ..Default::default()
    };
    generate(&Catalog::default_catalog(), &cfg, dir, &mut |_| {}).expect("simulate telemetry");
}

fn small() -> TrainConfig {
    TrainConfig {
        num_iterations: 40,
        early_stopping_rounds: 10,
        shap_sample: 100,
        ..TrainConfig::default()
    }
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn cross_validation_and_search_are_recorded_deterministic_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    simulate_into(&telemetry, 2500, 21);
    let cfg = TrainConfig {
        cv_folds: 3,
        search_trials: 3,
        search_budget: std::time::Duration::from_secs(600),
        ..small()
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    train(&telemetry, &a, &cfg).unwrap();
    let report = train(&telemetry, &b, &cfg).unwrap();

    // Deterministic for a seed: the same trees, the same search.
    for role in ModelRole::ALL {
        let ta = std::fs::read_to_string(a.join(role.file_name())).unwrap();
        let tb = std::fs::read_to_string(b.join(role.file_name())).unwrap();
        assert!(ta == tb, "{} differs between two runs", role.as_str());
    }
    let training = read_json(&b.join(TRAINING_FILE));
    // Only timings and the version's timestamp may differ.
    let (mut ta, mut tb) = (read_json(&a.join(TRAINING_FILE)), training.clone());
    strip_volatile(&mut ta);
    strip_volatile(&mut tb);
    assert_eq!(ta, tb);

    let meta: ModelMetadata =
        serde_json::from_str(&std::fs::read_to_string(b.join(METADATA_FILE)).unwrap()).unwrap();
    for role in ModelRole::ALL {
        let d = &training["models"][role.as_str()];
        // Forward chaining: three folds, each training on more rows than the one before.
        let folds = d["cv"]["folds"].as_array().unwrap();
        assert_eq!(folds.len(), 3, "{}", role.as_str());
        let trains: Vec<u64> = folds
            .iter()
            .map(|f| f["train_rows"].as_u64().unwrap())
            .collect();
        assert!(trains.windows(2).all(|w| w[0] < w[1]), "{trains:?}");
        // Search: trial 0 is the configured parameters, the others draw the searched ones.
        let trials = d["search"]["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 3);
        assert!(trials[0]["params"].as_object().unwrap().is_empty());
        assert!(trials[1]["params"].get("num_leaves").is_some());
        let best = d["search"]["best"].as_u64().unwrap() as usize;
        let best_metric = trials[best]["cv"]["mean"].as_f64().unwrap();
        for t in trials {
            assert!(best_metric <= t["cv"]["mean"].as_f64().unwrap());
        }
        // The winner's parameters are the model's parameters.
        let params = &meta.models[&role].params;
        for (k, v) in trials[best]["params"].as_object().unwrap() {
            assert_eq!(&params[k], v, "{} {k}", role.as_str());
        }
        assert!(meta.models[&role].metrics.contains_key("cv_metric"));
        // Importance and SHAP on a sample, by feature name.
        let gain = d["explain"]["gain"].as_object().unwrap();
        assert_eq!(gain.len(), sandstorm_features::encoding::N_FEATURES);
        assert!(gain.values().any(|v| v.as_f64().unwrap() > 0.0));
        assert_eq!(d["explain"]["shap_rows"], 100);
        let shap = d["explain"]["shap_mean_abs"].as_object().unwrap();
        assert!(shap.values().any(|v| v.as_f64().unwrap() > 0.0));
        assert!(d["valid_curve"].as_array().unwrap().len() >= meta.models[&role].num_trees);
    }

    // The report references plots that exist, relatively.
    let html_path = report.report_html.unwrap();
    assert_eq!(html_path, b.join(REPORT_FILE));
    let html = std::fs::read_to_string(&html_path).unwrap();
    let images: Vec<&str> = html
        .split("<img src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    for expected in [
        "report/predicted_vs_actual_latency_p50.png",
        "report/residuals_by_provider_latency_p50.png",
        "report/coverage_by_provider.png",
        "report/importance_failure.png",
        "report/learning_curve_cost.png",
    ] {
        assert!(images.contains(&expected), "{expected} not in the report");
    }
    for img in images {
        assert!(!img.starts_with('/'), "{img} is not relative");
        let bytes = std::fs::read(b.join(img)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{img} is not a PNG");
    }
    assert!(html.contains("Time-ordered cross-validation"));
    assert!(html.contains("Hyper-parameter search"));
}

fn strip_volatile(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("seconds");
            m.remove("version");
            m.values_mut().for_each(strip_volatile);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

#[test]
fn a_train_toml_sets_lightgbm_parameters_verbatim_and_unknown_keys_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    simulate_into(&telemetry, 1200, 4);
    let file = tmp.path().join("train.toml");
    std::fs::write(
        &file,
        "num_iterations = 15\n\
         [params]\neta = 0.2\nnum_leaves = 7\n\
         [models.failure]\nmin_data_in_leaf = 40\n\
         [search]\ntrials = 2\nbudget = \"10m\"\n",
    )
    .unwrap();
    let cfg = small().with_file(&file).unwrap();
    let out = tmp.path().join("m");
    let report = train(&telemetry, &out, &cfg).unwrap();
    for role in ModelRole::ALL {
        let p = &report.metadata.models[&role].params;
        assert_eq!(p["eta"], 0.2, "{}", role.as_str());
        assert!(
            !p.contains_key("learning_rate"),
            "the alias replaced the default"
        );
        assert_eq!(p["num_leaves"], 7);
        assert_eq!(p["num_iterations"], 15);
        assert!(report.metadata.models[&role].num_trees <= 15);
    }
    assert_eq!(
        report.metadata.models[&ModelRole::Failure].params["min_data_in_leaf"],
        40
    );
    // Parameters the user fixed are not searched.
    let training = read_json(&out.join(TRAINING_FILE));
    for role in ModelRole::ALL {
        for t in training["models"][role.as_str()]["search"]["trials"]
            .as_array()
            .unwrap()
        {
            let p = t["params"].as_object().unwrap();
            assert!(!p.contains_key("num_leaves") && !p.contains_key("learning_rate"));
        }
    }
    assert_eq!(training["config_params"]["eta"], 0.2);

    std::fs::write(&file, "[params]\nnum_leavs = 7\n").unwrap();
    let err = small().with_file(&file).unwrap_err();
    assert!(matches!(err, TrainerError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("`num_leavs`"), "{err}");

    // A parameter set programmatically is checked too.
    let mut cfg = small();
    cfg.params
        .insert("bagging_fractoin".into(), Value::from(0.5));
    let err = train(&telemetry, &tmp.path().join("x"), &cfg).unwrap_err();
    assert!(err.to_string().contains("`bagging_fractoin`"), "{err}");
}
