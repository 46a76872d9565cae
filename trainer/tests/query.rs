//! SQL over telemetry (`sandstorm telemetry query` / `report`): a GROUP BY over a million rows
//! matches counts computed independently, the named reports compute what they say, bad SQL is
//! a user error with DataFusion's message, the writer's date-partitioned layout is read, and
//! pyarrow and polars read the compacted Parquet.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take_record_batch;
use sandstorm_datasets::{
    SimulatorConfig, TelemetryWriter, WriterOptions, simulate, write_parquet,
};
use sandstorm_features::Catalog;
use sandstorm_features::telemetry::{self, TelemetryRecord};
use sandstorm_trainer::TrainerError;
use sandstorm_trainer::query::{
    OutputFormat, Report, query_telemetry, render, report_telemetry, write_output,
};

const PROVIDERS: [&str; 3] = ["local", "e2b", "modal"];
const REGIONS: [&str; 4] = ["eu-west", "us-east", "us-west", "ap-south"];

fn simulated(rows: usize, seed: u64) -> Vec<TelemetryRecord> {
    let cfg = SimulatorConfig {
        rows,
        seed,
        days: 3,
        ..SimulatorConfig::default()
    };
    simulate(&Catalog::default_catalog(), &cfg).collect()
}

/// `batch` with column `name` replaced.
fn with_column(batch: &RecordBatch, name: &str, column: ArrayRef) -> RecordBatch {
    let index = batch.schema().index_of(name).expect("column");
    let mut columns = batch.columns().to_vec();
    columns[index] = column;
    RecordBatch::try_new(batch.schema(), columns).expect("batch")
}

/// Row `i` of the generated million: provider, region and cost follow simple patterns.
fn pattern(i: usize) -> (&'static str, &'static str, f64) {
    let provider = PROVIDERS[i % 3];
    let region = REGIONS[(i / 3 + i / 1000) % 4];
    let cost = (i % 8) as f64 * 0.25;
    (provider, region, cost)
}

#[test]
fn group_by_over_a_million_rows_matches_independent_counts() {
    const ROWS: usize = 1_000_000;
    const FILES: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    // One simulated row, repeated with the Arrow API (fast in debug builds), then the grouping
    // columns overwritten.
    let template = telemetry::to_record_batch(&simulated(1, 42)).expect("template");
    let per_file = ROWS / FILES;
    let zeros = UInt32Array::from(vec![0u32; per_file]);
    let base = take_record_batch(&template, &zeros).expect("repeat");
    let mut expected: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for f in 0..FILES {
        let range = f * per_file..(f + 1) * per_file;
        let mut providers = Vec::with_capacity(per_file);
        let mut regions = Vec::with_capacity(per_file);
        let mut costs = Vec::with_capacity(per_file);
        for i in range {
            let (p, r, c) = pattern(i);
            providers.push(p);
            regions.push(r);
            costs.push(c);
            let e = expected.entry((p.to_owned(), r.to_owned())).or_default();
            e.0 += 1;
            e.1 += c;
        }
        let batch = with_column(&base, "provider", Arc::new(StringArray::from(providers)));
        let batch = with_column(&batch, "region", Arc::new(StringArray::from(regions)));
        let batch = with_column(&batch, "cost_usd", Arc::new(Float64Array::from(costs)));
        let path = dir
            .path()
            .join(format!("date=2026-11-{:02}", 20 + f % 3))
            .join(format!("part-{f}.parquet"));
        write_parquet(&path, &[batch]).expect("write");
    }

    let out = query_telemetry(
        dir.path(),
        "SELECT provider, region, COUNT(*) AS n, SUM(cost_usd) AS cost FROM telemetry \
         GROUP BY provider, region ORDER BY provider, region",
    )
    .expect("query");
    let mut got: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for batch in &out.batches {
        let col = |name: &str| batch.column_by_name(name).expect(name).clone();
        let p = col("provider");
        let r = col("region");
        let n = col("n");
        let c = col("cost");
        let p = p.as_any().downcast_ref::<StringArray>().expect("utf8");
        let r = r.as_any().downcast_ref::<StringArray>().expect("utf8");
        let n = n
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("count is int64");
        let c = c.as_any().downcast_ref::<Float64Array>().expect("f64");
        for i in 0..batch.num_rows() {
            got.insert(
                (p.value(i).to_owned(), r.value(i).to_owned()),
                (n.value(i) as u64, c.value(i)),
            );
        }
    }
    assert_eq!(got.len(), expected.len());
    for (key, (n, cost)) in &expected {
        let (gn, gcost) = got[key];
        assert_eq!(gn, *n, "count of {key:?}");
        assert!(
            (gcost - cost).abs() < 1e-6,
            "cost of {key:?}: {gcost} vs {cost}"
        );
    }
    assert_eq!(got.values().map(|v| v.0).sum::<u64>(), ROWS as u64);

    // The spend report agrees.
    let spend =
        report_telemetry(dir.path(), Report::Spend, &["provider".into()]).expect("spend report");
    let csv = render(&spend, OutputFormat::Csv).expect("csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("provider,runs,total_cost_usd,mean_cost_usd")
    );
    let runs: u64 = lines
        .map(|l| {
            l.split(',')
                .nth(1)
                .expect("runs")
                .parse::<u64>()
                .expect("int")
        })
        .sum();
    assert_eq!(runs, ROWS as u64);
}

/// Simulated rows written through the writer (so in the date-partitioned layout).
fn journal(dir: &Path, rows: &[TelemetryRecord]) {
    let writer = TelemetryWriter::open(
        dir,
        WriterOptions {
            background: false,
            ..WriterOptions::default()
        },
    )
    .expect("open");
    writer.append_all(rows).expect("append");
    writer.close().expect("close");
}

#[test]
fn reports_compute_spend_latency_and_failure_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = simulated(3000, 5);
    journal(dir.path(), &rows);

    // Spend by provider,region: runs and totals as computed in Rust.
    let by = ["provider".to_owned(), "region".to_owned()];
    let spend = report_telemetry(dir.path(), Report::Spend, &by).expect("spend");
    let mut expected: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for r in &rows {
        let e = expected
            .entry((r.provider.clone(), r.region.clone()))
            .or_default();
        e.0 += 1;
        e.1 += r.cost_usd;
    }
    assert_eq!(spend.rows(), expected.len());
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&render(&spend, OutputFormat::Json).expect("json")).expect("parse");
    for row in &json {
        let key = (
            row["provider"].as_str().expect("provider").to_owned(),
            row["region"].as_str().expect("region").to_owned(),
        );
        let (runs, total) = expected[&key];
        assert_eq!(row["runs"].as_u64(), Some(runs), "{key:?}");
        let got = row["total_cost_usd"].as_f64().expect("total");
        assert!((got - total).abs() < 1e-9 * total.max(1.0), "{key:?}");
    }

    // Latency p50 overall: the median of total_latency_ms.
    let latency = report_telemetry(dir.path(), Report::Latency, &[]).expect("latency");
    let mut lat: Vec<f64> = rows.iter().map(|r| r.total_latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let median = (lat[1499] + lat[1500]) / 2.0;
    let batch = &latency.batches[0];
    let p50 = batch
        .column_by_name("p50_latency_ms")
        .expect("p50")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64")
        .value(0);
    assert!((p50 - median).abs() < 1e-9 * median, "{p50} vs {median}");
    assert!(batch.column_by_name("p95_latency_ms").is_some());

    // Failures: the rate of each non-ok status per provider.
    let failures =
        report_telemetry(dir.path(), Report::Failures, &["provider".into()]).expect("failures");
    let mut runs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for r in &rows {
        *runs.entry(&r.provider).or_default() += 1;
        if r.status.as_str() != "ok" {
            *failed.entry((&r.provider, r.status.as_str())).or_default() += 1;
        }
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&render(&failures, OutputFormat::Json).expect("json")).expect("parse");
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in &json {
        let provider = row["provider"].as_str().expect("provider");
        let status = row["status"].as_str().expect("status");
        assert_ne!(status, "ok");
        assert_eq!(row["runs"].as_u64(), Some(runs[provider]));
        let rate = row["failure_rate"].as_f64().expect("rate");
        let n = row["failures"].as_u64().expect("failures");
        assert!((rate - n as f64 / runs[provider] as f64).abs() < 1e-12);
        *seen
            .entry((provider.to_owned(), status.to_owned()))
            .or_default() += n;
    }
    let want: BTreeMap<(String, String), u64> = failed
        .into_iter()
        .map(|((p, s), n)| ((p.to_owned(), s.to_owned()), n))
        .collect();
    assert!(!want.is_empty(), "the simulator produces failures");
    assert_eq!(seen, want);
}

#[test]
fn bad_sql_is_a_user_error_with_datafusions_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal(dir.path(), &simulated(20, 6));
    let err = query_telemetry(dir.path(), "SELECT no_such_column FROM telemetry")
        .expect_err("unknown column");
    assert!(matches!(err, TrainerError::Query(_)), "{err:?}");
    assert!(err.to_string().contains("no_such_column"), "{err}");
    let err = query_telemetry(dir.path(), "SELEC 1").expect_err("syntax");
    assert!(matches!(err, TrainerError::Query(_)), "{err:?}");
    let err = report_telemetry(dir.path(), Report::Spend, &["nope".into()]).expect_err("by");
    assert!(err.to_string().contains("unknown column `nope`"), "{err}");
    let missing = dir.path().join("missing");
    let err = query_telemetry(&missing, "SELECT 1").expect_err("no dir");
    assert!(matches!(err, TrainerError::Input(_)), "{err:?}");
}

#[test]
fn query_output_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = simulated(50, 7);
    journal(dir.path(), &rows);
    let out = query_telemetry(
        dir.path(),
        "SELECT run_id, cost_usd FROM telemetry ORDER BY run_id LIMIT 3",
    )
    .expect("query");
    let table = render(&out, OutputFormat::Table).expect("table");
    assert!(table.contains("| run_id"), "{table}");
    let csv = render(&out, OutputFormat::Csv).expect("csv");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let path = dir.path().join("out").join("result.parquet");
    write_output(&out, OutputFormat::Parquet, &path).expect("parquet");
    // The result file is a Parquet file of three rows (read back outside the telemetry dir
    // reader: it is not telemetry).
    let file = std::fs::File::open(&path).expect("open");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let n: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(n, 3);
    let empty =
        query_telemetry(dir.path(), "SELECT run_id FROM telemetry WHERE false").expect("empty");
    assert_eq!(render(&empty, OutputFormat::Json).expect("json"), "[]\n");
    assert!(
        render(&empty, OutputFormat::Table)
            .expect("table")
            .contains("no rows")
    );
    assert!(render(&out, OutputFormat::Parquet).is_err());
}

#[test]
fn pyarrow_and_polars_read_the_compacted_telemetry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = simulated(500, 8);
    journal(dir.path(), &rows);
    let python = std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // Both libraries read the hive-partitioned directory; the `date` partition column they
    // add is dropped, and rows are sorted by run_id for comparison.
    let script = r#"
import sys, json, glob, os
import pyarrow.parquet as pq, polars as pl
root = sys.argv[1]
files = sorted(f for f in glob.glob(os.path.join(root, "date=*", "*.parquet")))
t = pq.read_table(files).sort_by("run_id")
df = pl.read_parquet(files).sort("run_id")
out = {
  "pyarrow_rows": t.num_rows,
  "polars_rows": df.height,
  "pyarrow": {"run_id": t.column("run_id").to_pylist(), "cost_usd": t.column("cost_usd").to_pylist(),
              "status": t.column("status").to_pylist(), "provider": t.column("provider").to_pylist()},
  "polars": {"run_id": df["run_id"].to_list(), "cost_usd": df["cost_usd"].to_list(),
             "status": df["status"].to_list(), "provider": df["provider"].to_list()},
  "polars_ts_us": df["ts_request_us"].cast(pl.Int64).to_list(),
}
print(json.dumps(out))
"#;
    let o = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .expect("run python (scripts/setup.sh installs pyarrow and polars)");
    assert!(
        o.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let mut rows = rows;
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    assert_eq!(v["pyarrow_rows"].as_u64(), Some(500));
    assert_eq!(v["polars_rows"].as_u64(), Some(500));
    let run_ids: Vec<&str> = rows.iter().map(|r| r.run_id.as_str()).collect();
    let costs: Vec<f64> = rows.iter().map(|r| r.cost_usd).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let providers: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.ts_request_us).collect();
    for lib in ["pyarrow", "polars"] {
        let col = |name: &str| v[lib][name].as_array().expect(name).clone();
        let strs = |name: &str| -> Vec<String> {
            col(name)
                .iter()
                .map(|x| x.as_str().expect("str").to_owned())
                .collect()
        };
        assert_eq!(strs("run_id"), run_ids, "{lib} run_id");
        assert_eq!(strs("status"), statuses, "{lib} status");
        assert_eq!(strs("provider"), providers, "{lib} provider");
        let c: Vec<f64> = col("cost_usd")
            .iter()
            .map(|x| x.as_f64().expect("f64"))
            .collect();
        assert_eq!(c, costs, "{lib} cost_usd");
    }
    let got_ts: Vec<i64> = v["polars_ts_us"]
        .as_array()
        .expect("ts")
        .iter()
        .map(|x| x.as_i64().expect("i64"))
        .collect();
    assert_eq!(got_ts, ts, "polars reads the UTC microsecond timestamps");
}
