//! `sandstorm eval azure-vm-noise` on a slice of the real dataset (two test suites): every
//! policy is reported for both strategies, the report is written, and the metrics recompute
//! from the `--decisions` file with a few lines of pyarrow (`recompute_eval.py`).
//!
//! The dataset is read from `$SANDSTORM_DATASETS/azure-vm-noise` or, by default,
//! `../shared/datasets/azure-vm-noise` relative to the repository root.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn dataset_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = std::env::var_os("SANDSTORM_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/datasets"));
    let dir = base.join("azure-vm-noise");
    assert!(
        dir.join("measurements.parquet").is_file(),
        "the Azure VM Noise dataset is missing: expected {} (set SANDSTORM_DATASETS to the directory that contains azure-vm-noise/)",
        dir.display()
    );
    dir
}

const SUITES: [&str; 2] = ["Sysbench", "perf-bench"];

#[test]
fn eval_on_a_slice_reports_every_policy_and_recomputes_from_decisions() {
    let data = dataset_dir();
    let tmp = tempfile::tempdir().unwrap();
    let decisions = tmp.path().join("decisions.parquet");
    let report = tmp.path().join("report");
    let mut args = vec![
        "eval".to_owned(),
        "azure-vm-noise".to_owned(),
        "--data".to_owned(),
        data.to_str().unwrap().to_owned(),
        "--json".to_owned(),
        "--bootstrap".to_owned(),
        "100".to_owned(),
        "--decisions".to_owned(),
        decisions.to_str().unwrap().to_owned(),
        "--report".to_owned(),
        report.to_str().unwrap().to_owned(),
    ];
    for s in SUITES {
        args.push("--test-suite".to_owned());
        args.push(s.to_owned());
    }
    let o = Command::new(env!("CARGO_BIN_EXE_sandstorm"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["split_at"], "2023-11-29");
    let n_test = result["test_requests"].as_u64().unwrap();
    assert!(n_test > 500, "{n_test} evaluation requests");
    let strategies = result["strategies"].as_array().unwrap();
    assert_eq!(strategies.len(), 2);

    for file in [
        "index.html",
        "regret_optimize_cost.png",
        "captured_by_week_optimize_latency.png",
        "loss_by_suite_optimize_cost.png",
    ] {
        assert!(report.join(file).is_file(), "report lacks {file}");
    }

    let python = std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recompute_eval.py");
    let p = Command::new(&python)
        .args([
            script.to_str().unwrap(),
            data.to_str().unwrap(),
            decisions.to_str().unwrap(),
            &SUITES.join(","),
        ])
        .output()
        .unwrap();
    assert!(
        p.status.success(),
        "recompute_eval.py failed: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    let theirs: Value = serde_json::from_slice(&p.stdout).unwrap();

    for s in strategies {
        let name = s["strategy"].as_str().unwrap();
        let policies = s["policies"].as_array().unwrap();
        assert_eq!(policies.len(), 8, "{name}");
        let get = |policy: &str| {
            policies
                .iter()
                .find(|p| p["policy"] == policy)
                .unwrap_or_else(|| panic!("{name}: no {policy}"))
        };
        assert_eq!(get("oracle")["geomean"]["value"], 1.0);
        let gm = |p: &str| get(p)["geomean"]["value"].as_f64().unwrap();
        assert!(
            gm("sandstorm") < gm("random"),
            "{name}: router worse than random"
        );
        assert!(
            gm("sandstorm") < 1.05,
            "{name}: router GM {}",
            gm("sandstorm")
        );
        for p in policies {
            let policy = p["policy"].as_str().unwrap();
            let t = &theirs[name][policy];
            assert_eq!(t["n"].as_u64().unwrap(), n_test, "{name}/{policy}");
            for (ours, key) in [
                ("geomean", "geomean"),
                ("p95", "p95"),
                ("oracle_picks", "oracle_picks"),
            ] {
                let a = p[ours]["value"].as_f64().unwrap();
                let b = t[key].as_f64().unwrap();
                assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    "{name}/{policy} {key}: sandstorm {a}, pyarrow {b}"
                );
            }
        }
    }
}
