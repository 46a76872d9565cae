//! `sandstorm train` with a configuration file, cross-validation, search and the report, and
//! the model registry commands: `models promote` refuses a worse challenger, promotes a better
//! one, records both; `models list` and `models rollback`.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use common::{run, text};
use serde_json::Value;

/// Simulates 3,000 telemetry rows with `seed` into `out` (`sandstorm datasets generate`).
fn generate(out: &str, seed: &str) {
    let o = run(&[
        "datasets", "generate", "--rows", "3000", "--seed", seed, "--out", out,
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn train_with_search_writes_a_report_and_the_registry_promotes_only_better_models() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    generate(&p("telemetry"), "5");
    std::fs::write(
        tmp.path().join("train.toml"),
        "num_iterations = 40\nearly_stopping_rounds = 10\n[params]\nmax_bin = 63\n[report]\nshap_sample = 50\n",
    )
    .unwrap();

    let o = run(&[
        "train",
        "--telemetry",
        &p("telemetry"),
        "--out",
        &p("good"),
        "--config",
        &p("train.toml"),
        "--cv-folds",
        "2",
        "--search-trials",
        "2",
        "--search-budget",
        "5m",
        "--registry",
        &p("reg"),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("report:") && out.contains("registered"),
        "{out}"
    );
    assert!(tmp.path().join("good/report.html").is_file());
    assert!(
        tmp.path()
            .join("good/report/learning_curve_latency_p50.png")
            .is_file()
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("good/metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["models"]["cost"]["params"]["max_bin"], 63);
    let good = meta["version"].as_str().unwrap().to_owned();

    // A weak challenger: two rounds.
    let o = run(&[
        "train",
        "--telemetry",
        &p("telemetry"),
        "--out",
        &p("weak"),
        "--num-iterations",
        "2",
        "--no-report",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!tmp.path().join("weak/report.html").exists());

    // First promotion: no champion yet.
    let o = run(&[
        "models",
        "promote",
        "--registry",
        &p("reg"),
        "--telemetry",
        &p("telemetry"),
        &good,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("promoted {good}")), "{out}");

    // The weak one (a directory, registered on the way) is refused: exit code 2.
    let o = run(&[
        "models",
        "promote",
        "--registry",
        &p("reg"),
        "--telemetry",
        &p("telemetry"),
        "--margin",
        "0.02",
        "--json",
        &p("weak"),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["action"], "refuse");
    assert_eq!(d["previous_champion"], good.as_str());
    let c = &d["comparisons"]["failure"];
    assert_eq!(c["metric"], "logloss");
    assert!(c["champion"].as_f64().unwrap() < c["challenger"].as_f64().unwrap());
    let log = std::fs::read_to_string(tmp.path().join("reg/promotions.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);

    let o = run(&["models", "list", "--registry", &p("reg"), "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let list: Value = serde_json::from_str(&text(&o).0).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let champions: Vec<&str> = list
        .iter()
        .filter(|v| v["champion"] == true)
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(champions, [good.as_str()]);
    assert!(
        tmp.path()
            .join("reg")
            .join(&good)
            .join("mlflow/latency_p50/MLmodel")
            .is_file()
    );

    // Nothing to roll back to: one champion only.
    let o = run(&["models", "rollback", "--registry", &p("reg")]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no earlier champion"), "{:?}", text(&o));
}

#[test]
fn an_unknown_lightgbm_parameter_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, "[params]\nlearning_rat = 0.1\n").unwrap();
    let o = run(&[
        "train",
        "--telemetry",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("m").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(
        err.contains("unknown lightgbm parameter `learning_rat`"),
        "{err}"
    );
}

/// `--since` and `--filter` select the training rows like `[data]` of train.toml: the run prints
/// how many rows each step kept and training.json records the selection; a bad filter or time
/// is an error naming the setting.
#[test]
fn train_selects_rows_with_since_and_filter_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    generate(&p("telemetry"), "6");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--telemetry",
            &p("telemetry"),
            "--out",
            &p("m"),
            "--num-iterations",
            "20",
            "--no-report",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = train(&["--since", "2026-01-12", "--filter", "provider <> 'local'"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("telemetry: ") && out.contains("(3000 in "),
        "{out}"
    );
    let training: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("m/training.json")).unwrap())
            .unwrap();
    let data = &training["data"];
    assert_eq!(data["since"], "2026-01-12T00:00:00Z");
    assert_eq!(data["filter"], "provider <> 'local'");
    let (window, rows) = (
        data["rows_in_window"].as_u64().unwrap(),
        data["rows"].as_u64().unwrap(),
    );
    assert!(window < 3000 && rows < window && rows > 200, "{data}");

    let o = train(&["--filter", "providr = 'e2b'"]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(
        err.contains("data.filter: `providr = 'e2b'`") && err.contains("\"providr\""),
        "{err}"
    );
    let o = train(&["--since", "soon"]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("data.since: invalid time `soon`"),
        "{:?}",
        text(&o)
    );
}
