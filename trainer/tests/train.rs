//! Training on simulated telemetry: the model directory is complete, the models beat naive
//! baselines on the time-ordered holdout, and bad input is a clear error. The polars data
//! pipeline reads exactly the rows DataFusion and the Arrow reader read (on the real Azure VM
//! Noise dataset imported as telemetry), and `[data]` selects the rows a model set trains on.
//!
//! The dataset is read from `$SANDSTORM_DATASETS/azure-vm-noise` or, by default,
//! `../shared/datasets/azure-vm-noise` relative to the repository root.

use std::path::{Path, PathBuf};

use sandstorm_datasets::azure_vm_noise::{self, ImportOptions};
use sandstorm_datasets::{SimulatorConfig, TelemetryWriter, WriterOptions, generate, simulate};
use sandstorm_features::Catalog;
use sandstorm_features::encoding::FeatureKind;
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole, StoredFeatureSchema,
};
use sandstorm_features::telemetry::{self, RunStatus, TelemetryRecord};
use sandstorm_trainer::{
    DataSelection, TRAINING_FILE, TrainConfig, TrainerError, load_telemetry, select_telemetry,
    train,
};

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

fn time_order(mut rows: Vec<TelemetryRecord>) -> Vec<TelemetryRecord> {
    rows.sort_by(|a, b| {
        (a.ts_request_us, &a.run_id, a.attempt).cmp(&(b.ts_request_us, &b.run_id, b.attempt))
    });
    rows
}

/// Writes `rows` as the two layouts of a telemetry directory: the first `root` rows as an
/// older root file, the rest through the writer into `date=YYYY-MM-DD/` partitions.
fn write_telemetry(dir: &Path, rows: &[TelemetryRecord], root: usize) {
    sandstorm_datasets::append_records(dir, &rows[..root]).expect("write the root file");
    let options = WriterOptions {
        background: false,
        ..WriterOptions::default()
    };
    let writer = TelemetryWriter::open(dir, options).expect("open the writer");
    writer.append_all(&rows[root..]).expect("append");
    writer.close().expect("close the writer (compaction)");
}

fn assert_same_rows(what: &str, got: &[TelemetryRecord], want: &[TelemetryRecord]) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: row {i}");
    }
}

/// Real measurements (two test suites of the Azure VM Noise dataset, one telemetry row per
/// request and placement) written as date partitions plus an older root file: polars reads
/// every row exactly as DataFusion's SQL and the Arrow Parquet reader do, and a `[data]`
/// window with a filter skips the partitions outside it and keeps exactly the matching rows.
#[test]
fn polars_reads_real_telemetry_exactly_like_datafusion_and_arrow() {
    let import = ImportOptions {
        test_suites: vec!["Sysbench".to_owned(), "perf-bench".to_owned()],
        ..ImportOptions::default()
    };
    let data = azure_vm_noise::load(&dataset_dir(), &import).unwrap();
    let catalog = data.catalog().unwrap();
    let rows = data
        .telemetry(&catalog.candidates(), &data.requests())
        .unwrap();
    assert!(rows.len() > 1000, "{} rows", rows.len());
    let tmp = tempfile::tempdir().unwrap();
    write_telemetry(tmp.path(), &rows, 200);

    let polars = load_telemetry(tmp.path()).unwrap();
    let sql = sandstorm_trainer::query::query_telemetry(
        tmp.path(),
        "SELECT * FROM telemetry ORDER BY ts_request_us, run_id, attempt",
    )
    .unwrap();
    let mut datafusion = Vec::new();
    for batch in &sql.batches {
        datafusion.extend(telemetry::from_record_batch(batch).unwrap());
    }
    let mut arrow = Vec::new();
    for batch in sandstorm_datasets::read_parquet_dir(tmp.path()).unwrap() {
        arrow.extend(telemetry::from_record_batch(&batch).unwrap());
    }
    let arrow = time_order(arrow);
    assert_same_rows("polars vs datafusion", &polars, &datafusion);
    assert_same_rows("polars vs arrow", &polars, &arrow);
    assert_same_rows("polars vs the imported rows", &polars, &time_order(rows));

    // A month of one placement, the latest row of each day.
    let all = polars;
    let mid = &all[all.len() / 2];
    let candidate = mid.candidate_id.clone();
    let day = |us: i64| us.div_euclid(86_400_000_000);
    let since_us = day(mid.ts_request_us) * 86_400_000_000;
    let until_us = since_us + 30 * 86_400_000_000;
    let selection = DataSelection {
        since_us: Some(since_us),
        until_us: Some(until_us),
        columns: [("day".to_owned(), "CAST(ts_request_us AS DATE)".to_owned())].into(),
        filter: Some(format!(
            "candidate_id = '{candidate}' AND total_latency_ms > 0"
        )),
        dedupe_by: vec!["day".to_owned()],
        max_rows: None,
    };
    let got = select_telemetry(tmp.path(), &selection).unwrap();
    let in_window: Vec<&TelemetryRecord> = all
        .iter()
        .filter(|r| (since_us..until_us).contains(&r.ts_request_us))
        .collect();
    let filtered: Vec<&TelemetryRecord> = in_window
        .iter()
        .copied()
        .filter(|r| r.candidate_id == candidate && r.total_latency_ms > 0.0)
        .collect();
    let mut last = std::collections::BTreeMap::new();
    for (i, r) in filtered.iter().enumerate() {
        last.insert(day(r.ts_request_us), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let want: Vec<TelemetryRecord> = keep.iter().map(|&i| filtered[i].clone()).collect();
    assert!(!want.is_empty());
    assert_same_rows("selection", &got.records, &want);
    let s = &got.summary;
    assert_eq!(s.rows_in_window, in_window.len());
    assert_eq!(s.rows_after_filter, filtered.len());
    assert_eq!(s.rows_after_dedupe, want.len());
    assert!(filtered.len() > want.len(), "several rows a day: {s:?}");
    // The partitions of 30 days (of more than a year) and the root file are read.
    assert!(s.files_scanned * 4 < s.files, "{s:?}");
}

/// `[data]` of train.toml selects the rows a model set is trained on: the models never see a
/// filtered-out provider or a row outside the window, and training.json and the report record
/// what was selected.
#[test]
fn trains_on_the_data_selection_of_train_toml() {
    let cfg = SimulatorConfig {
        rows: 6000,
        seed: 11,
        days: 6,
        ..Default::default()
    };
    let rows: Vec<TelemetryRecord> = simulate(&Catalog::default_catalog(), &cfg).collect();
    let tmp = tempfile::tempdir().unwrap();
    let telemetry_dir = tmp.path().join("telemetry");
    write_telemetry(&telemetry_dir, &rows, 500);

    let since = "2026-01-06";
    let since_us = 1_767_657_600_000_000; // 2026-01-06T00:00:00Z
    let toml = tmp.path().join("train.toml");
    std::fs::write(
        &toml,
        format!(
            "num_iterations = 40\n[report]\nshap_sample = 50\n[data]\nsince = \"{since}\"\n\
             filter = \"provider <> 'local' AND status <> 'not_executed'\"\nmax_rows = 3000\n"
        ),
    )
    .unwrap();
    let config = TrainConfig::default().with_file(&toml).unwrap();
    let out = tmp.path().join("models");
    let report = train(&telemetry_dir, &out, &config).unwrap();

    let ordered = time_order(rows);
    let kept: Vec<&TelemetryRecord> = ordered
        .iter()
        .filter(|r| {
            r.ts_request_us >= since_us
                && r.provider != "local"
                && r.status != RunStatus::NotExecuted
        })
        .collect();
    assert!(kept.len() > 3000, "{} rows match", kept.len());
    let data = report.data.expect("data summary");
    assert_eq!(data.rows_after_filter, kept.len());
    assert_eq!(data.rows, 3000);
    assert!(data.files_scanned < data.files, "{data:?}");

    // Every selected row is executed: the three windows hold all 3000, from the 3000th most
    // recent matching row on.
    let meta = report.metadata;
    assert_eq!(
        meta.training_window.rows + meta.validation_window.rows + meta.holdout_window.rows,
        3000
    );
    let first = telemetry::from_micros(kept[kept.len() - 3000].ts_request_us);
    let first = first
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(meta.training_window.from, first);
    // The provider vocabulary fitted on the training rows has no `local`.
    let schema: StoredFeatureSchema =
        serde_json::from_str(&std::fs::read_to_string(out.join(FEATURE_SCHEMA_FILE)).unwrap())
            .unwrap();
    let categorical: Vec<&str> = schema
        .space
        .features
        .iter()
        .filter(|(_, kind)| *kind == FeatureKind::Categorical)
        .map(|(name, _)| name.as_str())
        .collect();
    let slot = categorical.iter().position(|n| *n == "provider").unwrap();
    let providers = &schema.space.levels[slot];
    assert!(providers.iter().any(|p| p == "e2b"), "{providers:?}");
    assert!(!providers.iter().any(|p| p == "local"), "{providers:?}");

    let training: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(TRAINING_FILE)).unwrap()).unwrap();
    assert_eq!(training["data"]["since"], "2026-01-06T00:00:00Z");
    assert_eq!(training["data"]["rows"], 3000);
    assert_eq!(training["data"]["max_rows"], 3000);
    let html = std::fs::read_to_string(report.report_html.unwrap()).unwrap();
    assert!(html.contains("<h2>Data</h2>"), "report has a data section");
    assert!(
        html.contains("provider &lt;&gt; 'local'"),
        "report shows the filter"
    );

    // A selection that leaves too few rows says so.
    std::fs::write(
        &toml,
        "[data]\nfilter = \"provider = 'edge-fra' AND vcpu > 1000\"\n",
    )
    .unwrap();
    let config = TrainConfig::default().with_file(&toml).unwrap();
    let err = train(&telemetry_dir, &tmp.path().join("m2"), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("found 0") && err.contains("the [data] selection kept 0 of 6000 rows"),
        "{err}"
    );
}

/// The `[data]` example of docs/training.md, verbatim (times moved to the simulated period),
/// reads, runs and keeps exactly the rows it describes.
#[test]
fn the_documented_data_example_selects_what_it_says() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/training.md"))
            .expect("docs/training.md");
    let start = docs
        .find("```toml\n[data]\nsince")
        .expect("the [data] example")
        + 8;
    let example = &docs[start..start + docs[start..].find("```").expect("end of the example")];
    let example = example
        .replace("2026-11-01", "2026-01-06")
        .replace("2026-12-01T12:00:00Z", "2026-01-09T12:00:00Z");
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("train.toml");
    std::fs::write(&toml, &example).unwrap();
    let config = TrainConfig::default().with_file(&toml).unwrap();

    let sim = SimulatorConfig {
        rows: 3000,
        seed: 4,
        days: 8,
        ..Default::default()
    };
    let rows: Vec<TelemetryRecord> = simulate(&Catalog::default_catalog(), &sim).collect();
    let dir = tmp.path().join("telemetry");
    write_telemetry(&dir, &rows, 100);
    let got = select_telemetry(&dir, &config.data).unwrap();

    let (since, until) = (1_767_657_600_000_000, 1_767_960_000_000_000); // 01-06, 01-09T12Z
    let ordered = time_order(rows);
    let kept: Vec<&TelemetryRecord> = ordered
        .iter()
        .filter(|r| {
            (since..until).contains(&r.ts_request_us)
                && r.provider != "local"
                && r.attempt == 0
                && matches!(
                    r.status,
                    RunStatus::Ok | RunStatus::Failed | RunStatus::Timeout
                )
        })
        .collect();
    // dedupe_by = ["decision_id"]: the last row of each decision.
    let mut last = std::collections::BTreeMap::new();
    for (i, r) in kept.iter().enumerate() {
        last.insert(r.decision_id.as_str(), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let want: Vec<TelemetryRecord> = keep.iter().map(|&i| kept[i].clone()).collect();
    assert!(want.len() > 100, "{} rows", want.len());
    assert_same_rows("documented example", &got.records, &want);
    let s = &got.summary;
    assert_eq!(s.columns.len(), 2);
    assert_eq!(s.max_rows, Some(200_000));
    assert!(s.files_scanned < s.files, "{s:?}");
}
