//! The model registry: a challenger is promoted only when it beats the champion on the same
//! recent telemetry window, every decision is recorded, rollback restores the previous
//! champion, and each version is an MLflow model Python's lightgbm can load.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

use std::path::Path;

use sandstorm_datasets::{SimulatorConfig, generate};
use sandstorm_features::Catalog;
use sandstorm_features::model::ModelRole;
use sandstorm_trainer::registry::{
    CHAMPION_FILE, MLFLOW_DIR, PROMOTIONS_FILE, PromotionPolicy, Registry,
};
use sandstorm_trainer::{TrainConfig, load_telemetry, train};

fn simulate_into(dir: &Path, rows: usize, seed: u64) {
    let cfg = SimulatorConfig {
        rows,
        seed,
        ..Default::default()
    };
    generate(&Catalog::default_catalog(), &cfg, dir, &mut |_| {}).expect("simulate telemetry");
}

/// A model set trained on `telemetry`; `weak` ones get two boosting rounds at a tiny learning
/// rate, so they predict little more than the training mean.
fn train_into(telemetry: &Path, out: &Path, weak: bool, seed: u64) -> String {
    let mut cfg = TrainConfig {
        num_iterations: if weak { 2 } else { 80 },
        early_stopping_rounds: 15,
        report: false,
        seed,
        ..TrainConfig::default()
    };
    if weak {
        cfg.params
            .insert("learning_rate".into(), serde_json::Value::from(0.01));
    }
    train(telemetry, out, &cfg).unwrap().metadata.version
}

#[test]
fn worse_challengers_are_refused_better_ones_promoted_and_rollback_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    simulate_into(&telemetry, 4000, 8);
    let rows = load_telemetry(&telemetry).unwrap();
    let reg = Registry::open(&tmp.path().join("registry")).unwrap();
    let policy = PromotionPolicy::default();

    let weak = train_into(&telemetry, &tmp.path().join("weak"), true, 1);
    let good = train_into(&telemetry, &tmp.path().join("good"), false, 1);
    let weak2 = train_into(&telemetry, &tmp.path().join("weak2"), true, 2);
    assert_eq!(reg.register(&tmp.path().join("weak")).unwrap(), weak);
    assert_eq!(
        reg.register(&tmp.path().join("weak")).unwrap(),
        weak,
        "idempotent"
    );
    reg.register(&tmp.path().join("good")).unwrap();
    reg.register(&tmp.path().join("weak2")).unwrap();
    assert!(reg.champion().unwrap().is_none());

    // The first version becomes champion: there is nothing to beat.
    let d = reg.promote(&weak, &rows, &policy).unwrap();
    assert!(d.promoted, "{d:?}");
    assert_eq!(reg.champion().unwrap().as_deref(), Some(weak.as_str()));

    // A better challenger wins on the same window, every model compared.
    let d = reg.promote(&good, &rows, &policy).unwrap();
    assert!(d.promoted, "{}", d.reason);
    assert_eq!(d.previous_champion.as_deref(), Some(weak.as_str()));
    for role in ModelRole::ALL {
        let c = &d.comparisons[role.as_str()];
        assert!(
            c.champion.unwrap() > c.challenger,
            "{}: {c:?}",
            role.as_str()
        );
    }
    assert_eq!(reg.champion().unwrap().as_deref(), Some(good.as_str()));
    assert_eq!(
        std::fs::read_to_string(reg.root().join(CHAMPION_FILE)).unwrap(),
        format!("{good}\n")
    );

    // A worse one is refused and the champion stays.
    let d = reg.promote(&weak2, &rows, &policy).unwrap();
    assert!(!d.promoted);
    assert_eq!(d.action, "refuse");
    assert!(d.reason.contains("worse than the champion"), "{}", d.reason);
    assert_eq!(reg.champion().unwrap().as_deref(), Some(good.as_str()));

    // Every decision is in promotions.jsonl with both metrics.
    let log = std::fs::read_to_string(reg.root().join(PROMOTIONS_FILE)).unwrap();
    assert_eq!(log.lines().count(), 3);
    let history = reg.history().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|d| d.action.as_str())
            .collect::<Vec<_>>(),
        ["promote", "promote", "refuse"]
    );
    let refused = &history[2].comparisons["latency_p50"];
    assert_eq!(refused.metric, "mae_ms");
    assert!(refused.champion.is_some() && refused.challenger.is_finite());
    assert_eq!(history[1].window, history[2].window, "the same window");

    // Rollback restores the previous champion, once.
    let d = reg.rollback().unwrap();
    assert_eq!(d.version, weak);
    assert_eq!(reg.champion().unwrap().as_deref(), Some(weak.as_str()));
    let err = reg.rollback().unwrap_err();
    assert!(err.to_string().contains("no earlier champion"), "{err}");
    let versions = reg.versions().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(
        versions
            .iter()
            .filter(|v| v.champion)
            .map(|v| &v.version)
            .collect::<Vec<_>>(),
        [&weak]
    );
    assert!(reg.promote("nope", &rows, &policy).is_err());
}

/// Each version holds `mlflow/<model>/MLmodel`; Python reads it as YAML, loads the LightGBM
/// model it names with `lightgbm.Booster` and predicts what LightGBM predicts here.
#[test]
fn python_reads_the_mlmodel_files_and_loads_each_model() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    simulate_into(&telemetry, 1500, 3);
    let model = tmp.path().join("m");
    train_into(&telemetry, &model, false, 1);
    let reg = Registry::open(&tmp.path().join("registry")).unwrap();
    let version = reg.register(&model).unwrap();
    let dir = reg.version_dir(&version).unwrap();

    let n = sandstorm_features::encoding::N_FEATURES;
    let rows: Vec<f64> = (0..3 * n).map(|i| (i % 7) as f64).collect();
    let csv: String = rows
        .chunks(n)
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
    let script = r#"
import json, os, sys, yaml, numpy as np, lightgbm as lgb
d = sys.argv[1]
m = yaml.safe_load(open(os.path.join(d, "MLmodel")))
flavor = m["flavors"]["lightgbm"]
assert flavor["model_class"] == "lightgbm.basic.Booster", flavor
assert m["flavors"]["python_function"]["loader_module"] == "mlflow.lightgbm"
inputs = json.loads(m["signature"]["inputs"])
outputs = json.loads(m["signature"]["outputs"])
b = lgb.Booster(model_file=os.path.join(d, flavor["data"]))
assert b.num_feature() == len(inputs), (b.num_feature(), len(inputs))
assert len(outputs) == 1
x = np.loadtxt(sys.argv[2], delimiter=",", ndmin=2)
print("\n".join(repr(float(v)) for v in b.predict(x)))
"#;
    for role in ModelRole::ALL {
        let d = dir.join(MLFLOW_DIR).join(role.as_str());
        let o = std::process::Command::new(&python)
            .args(["-c", script, d.to_str().unwrap(), matrix.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            role.as_str(),
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs: Vec<f64> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let booster =
            lightgbm3::Booster::from_file(dir.join(role.file_name()).to_str().unwrap()).unwrap();
        let ours = booster
            .predict_with_params(&rows, n as i32, true, "num_threads=1")
            .unwrap();
        assert_eq!(theirs.len(), 3);
        for (a, b) in theirs.iter().zip(&ours) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
