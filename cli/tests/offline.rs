//! Exploration, inverse-propensity weighting and offline evaluation through the `sandstorm`
//! binary: `route`/`run --explore` (flag and environment variable) log the selection
//! probability, `train --ipw` records its weights, and `eval-offline` evaluates a model set on
//! the simulator's uniformly logged telemetry and refuses telemetry without propensities and
//! model directories of another feature schema.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use std::path::Path;

use common::{models, repo, route_with_models, run, telemetry, text};
use sandstorm_features::telemetry::TelemetryRecord;
use serde_json::Value;

fn read_rows(dir: &Path) -> Vec<TelemetryRecord> {
    sandstorm_datasets::read_parquet_dir(dir)
        .unwrap()
        .iter()
        .flat_map(|b| sandstorm_features::telemetry::from_record_batch(b).unwrap())
        .collect()
}

#[test]
fn route_explores_with_the_flag_or_the_environment_and_logs_the_probability() {
    let req = repo("examples/requests/hello-python.yaml");
    // ε = 1: every feasible candidate has probability 1 / n_feasible.
    let o = route_with_models(&req, &["--json", "--explore", "epsilon:1"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let n = d["n_feasible"].as_f64().unwrap();
    assert!((d["selection_probability"].as_f64().unwrap() - 1.0 / n).abs() < 1e-12);
    assert!(d["explored"].is_boolean());

    // Greedy by default.
    let o = route_with_models(&req, &["--json"]);
    let d: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(d["selection_probability"], 1.0);
    assert_eq!(d["explored"], false);

    // SANDSTORM_EXPLORE, Thompson sampling: a probability in (0, 1].
    let o = common::bin()
        .args([
            "route",
            "--models",
            models().to_str().unwrap(),
            "--request",
            req.to_str().unwrap(),
            "--json",
        ])
        .env("SANDSTORM_EXPLORE", "thompson:64")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let p = d["selection_probability"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0, "{p}");
    if d["n_feasible"].as_u64().unwrap() > 1 {
        assert!((1.0 / 64.0..1.0).contains(&p), "{p}");
    }

    // Bad values name the flag and the problem.
    for (bad, why) in [
        ("epsilon:2", "epsilon must be in [0, 1]"),
        ("ucb", "unknown exploration"),
    ] {
        let o = route_with_models(&req, &["--explore", bad]);
        let (_, err) = text(&o);
        assert!(!o.status.success());
        assert!(err.contains("--explore") && err.contains(why), "{err}");
    }
}

#[test]
fn run_with_exploration_writes_the_probability_to_telemetry() {
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("req.yaml");
    std::fs::write(
        &req,
        "language: sh\ncommand: echo explored\ntimeout_s: 10\nconstraints:\n  allowed_providers: [local]\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("telemetry");
    let o = run(&[
        "run",
        "--models",
        models().to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
        "--telemetry-out",
        out_dir.to_str().unwrap(),
        "--explore",
        "epsilon:1",
        "--json",
    ]);
    let (out, err) = text(&o);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let rows = read_rows(&out_dir);
    assert!(!rows.is_empty(), "{v}");
    for r in &rows {
        assert_eq!(
            r.decision_id,
            v["decision"]["decision_id"].as_str().unwrap()
        );
        let expected = 1.0 / f64::from(r.n_feasible);
        assert!(
            (r.selection_probability - expected).abs() < 1e-12,
            "{} vs {expected}",
            r.selection_probability
        );
    }
}

#[test]
fn train_with_ipw_records_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ipw-models");
    let o = run(&[
        "train",
        "--telemetry",
        telemetry().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ipw",
        "--ipw-max-weight",
        "8",
        "--no-report",
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}{err}");
    assert!(
        stdout.contains("inverse-propensity weights of") && stdout.contains("clipped at 8"),
        "{stdout}"
    );
    let training: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    let w = &training["weighting"];
    assert_eq!(w["ipw"], true);
    assert_eq!(w["max_weight"], 8.0);
    // The simulator logs 1 / n_feasible: weights n_feasible, some above 8.
    assert!(w["max"].as_f64().unwrap() > 8.0, "{w}");
    assert!(w["clipped_share"].as_f64().unwrap() > 0.0, "{w}");
    // --ipw-max-weight needs --ipw.
    let o = run(&[
        "train",
        "--telemetry",
        telemetry().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ipw-max-weight",
        "8",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--ipw"), "{}", text(&o).1);
}

#[test]
fn eval_offline_estimates_each_strategy_on_uniformly_logged_telemetry() {
    let o = run(&[
        "eval-offline",
        "--telemetry",
        telemetry().to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
        "--format",
        "json",
        "--bootstrap",
        "200",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], 6000);
    assert_eq!(v["evaluated"], 6000, "{}", v["skipped"]);
    assert_eq!(v["strategy"], "logged");
    let groups = v["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["balanced", "optimize_cost", "optimize_latency"]);
    let total: u64 = groups
        .iter()
        .map(|g| g["decisions"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6000);
    for g in groups {
        for key in ["behaviour", "ips", "snips", "dm", "dr"] {
            let e = &g[key];
            let (lo, hi) = (
                e["ci95"][0].as_f64().unwrap(),
                e["ci95"][1].as_f64().unwrap(),
            );
            assert!(lo <= hi, "{key}: {e}");
            assert!(
                e["value"].as_f64().unwrap() < 0.0,
                "rewards are minus costs: {e}"
            );
        }
        let m = g["match_rate"].as_f64().unwrap();
        assert!(m > 0.0 && m < 1.0, "{g}");
        assert!(g["effective_sample_size"].as_f64().unwrap() > 10.0, "{g}");
    }

    // One strategy for every decision, as a table.
    let o = run(&[
        "eval-offline",
        "--telemetry",
        telemetry().to_str().unwrap(),
        "--models",
        models().to_str().unwrap(),
        "--strategy",
        "balanced:0.3",
        "--bootstrap",
        "50",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("6000 of 6000 logged decisions evaluated")
            && out.contains("IPS")
            && out.contains("SNIPS")
            && out.contains("DR")
            && out.contains("mean attempts"),
        "{out}"
    );
}

/// The simulator's telemetry with `edit` applied to every row, in a new directory.
fn edited_telemetry(dir: &Path, edit: impl Fn(usize, &mut TelemetryRecord)) -> std::path::PathBuf {
    let mut rows = read_rows(telemetry());
    for (i, r) in rows.iter_mut().enumerate() {
        edit(i, r);
    }
    let out = dir.join("edited");
    sandstorm_datasets::append_records(&out, &rows).unwrap();
    out
}

#[test]
fn eval_offline_refuses_telemetry_without_propensities() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = |dir: &Path| {
        let o = run(&[
            "eval-offline",
            "--telemetry",
            dir.to_str().unwrap(),
            "--models",
            models().to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        text(&o).1
    };
    // A greedy router's telemetry: probability 1 everywhere.
    let greedy = edited_telemetry(tmp.path(), |_, r| r.selection_probability = 1.0);
    let err = eval(&greedy);
    assert!(
        err.contains("telemetry without propensities") && err.contains("greedy"),
        "{err}"
    );
    // Broken probabilities: the count and the column are named.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let broken = edited_telemetry(&broken, |i, r| {
        if i % 1000 == 0 {
            r.selection_probability = if i == 0 { f64::NAN } else { 0.0 };
        }
    });
    let err = eval(&broken);
    assert!(
        err.contains("6 of 6000 logged decisions") && err.contains("`selection_probability`"),
        "{err}"
    );
    // No choice sets.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let bare = edited_telemetry(&bare, |_, r| r.decision_scores.clear());
    let err = eval(&bare);
    assert!(err.contains("without decision_scores"), "{err}");
}

#[test]
fn eval_offline_refuses_a_model_dir_of_another_feature_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(models()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let schema_path = dir.join("feature_schema.json");
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    schema["space"]["feature_version"] = Value::from(1);
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    let o = run(&[
        "eval-offline",
        "--telemetry",
        telemetry().to_str().unwrap(),
        "--models",
        dir.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot evaluate the model directory") && err.contains("feature version 1"),
        "{err}"
    );
}
