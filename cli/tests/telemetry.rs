//! `sandstorm telemetry`: SQL queries and reports over simulated telemetry in every output
//! format, clear errors for bad SQL, bad columns and unsupported locations, and `compact`.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use common::{run, text};

/// Simulated telemetry of `rows` rows in a fresh directory.
fn telemetry(rows: usize) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("telemetry");
    let dir = dir.to_str().unwrap().to_owned();
    let o = run(&[
        "datasets",
        "generate",
        "--rows",
        &rows.to_string(),
        "--out",
        &dir,
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    (tmp, dir)
}

#[test]
fn query_and_reports_answer_over_the_telemetry() {
    let (tmp, dir) = telemetry(2000);
    let o = run(&[
        "telemetry",
        "query",
        "SELECT COUNT(*) AS n FROM telemetry",
        "--telemetry",
        &dir,
        "--format",
        "json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["n"], 2000, "{out}");

    let o = run(&[
        "telemetry",
        "report",
        "spend",
        "--by",
        "provider,region",
        "--telemetry",
        &format!("file://{dir}"),
        "--format",
        "csv",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("provider,region,runs,total_cost_usd,mean_cost_usd")
    );
    let runs: u64 = lines
        .map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(runs, 2000);

    for report in ["latency", "failures"] {
        let o = run(&["telemetry", "report", report, "--telemetry", &dir]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{report}: {err}");
        assert!(out.contains("provider"), "{report}: {out}");
    }

    let file = tmp.path().join("out.parquet");
    let o = run(&[
        "telemetry",
        "query",
        "SELECT run_id FROM telemetry LIMIT 7",
        "--telemetry",
        &dir,
        "--format",
        "parquet",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(file.is_file());
}

#[test]
fn mistakes_are_clear_errors() {
    let (_tmp, dir) = telemetry(50);
    let cases: [(&[&str], &str); 4] = [
        (
            &["query", "SELECT nope FROM telemetry", "--telemetry", &dir],
            "invalid query",
        ),
        (
            &["report", "spend", "--by", "colour", "--telemetry", &dir],
            "unknown column `colour`",
        ),
        (
            &["query", "SELECT 1", "--telemetry", "gs://bucket/t"],
            "scheme `gs` is not supported",
        ),
        (
            &[
                "query",
                "SELECT 1",
                "--telemetry",
                &dir,
                "--format",
                "parquet",
            ],
            "--output",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["telemetry"];
        all.extend_from_slice(args);
        let o = run(&all);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn compact_recovers_nothing_on_a_clean_directory_and_leaves_rows_alone() {
    let (_tmp, dir) = telemetry(30);
    let o = run(&["telemetry", "compact", "--telemetry", &dir]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("recovered 0 dead writer(s)"), "{out}");
    let o = run(&[
        "telemetry",
        "query",
        "SELECT COUNT(*) AS n FROM telemetry",
        "--telemetry",
        &dir,
        "--format",
        "csv",
    ]);
    assert_eq!(text(&o).0, "n\n30\n");
}
