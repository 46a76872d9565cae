//! The telemetry writer on an object store (a real S3-compatible server, moto): compacted
//! Parquet is published with the Hive layout and removed from the spool; files a crash left in
//! the spool (before or after their put) are published exactly once by the next writer.

mod common;

use common::records;

use std::collections::HashMap;
use std::path::Path;

use sandstorm_datasets::{Location, TelemetryWriter, WriterOptions, read_parquet_location};
use sandstorm_features::telemetry;
use sandstorm_storage::test_s3::S3Server;

fn options(spool: &Path) -> WriterOptions {
    WriterOptions {
        background: false,
        spool_dir: Some(spool.to_owned()),
        ..WriterOptions::default()
    }
}

/// How often each run_id is stored at `location`.
fn counts(location: &Location) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in read_parquet_location(location).expect("read") {
        for row in telemetry::from_record_batch(&batch).expect("rows") {
            *counts.entry(row.run_id).or_default() += 1;
        }
    }
    counts
}

fn spooled_parquet(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for partition in std::fs::read_dir(spool).expect("spool").flatten() {
        if partition.path().is_dir() {
            for f in std::fs::read_dir(partition.path())
                .expect("partition")
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".parquet") {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn compacted_files_are_published_with_the_hive_layout() {
    let server = S3Server::start();
    server.create_bucket("telemetry");
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = tmp.path().join("spool");
    let location =
        Location::parse_with("--telemetry", "s3://telemetry/prod/runs", &server.config())
            .expect("location");
    let rows = records(200, 3);
    let writer = TelemetryWriter::open_at(&location, options(&spool)).expect("open");
    assert_eq!(writer.root(), spool);
    writer.append_all(&rows[..120]).expect("append");
    let first = writer.flush().expect("flush");
    assert!(first.len() >= 2, "several date partitions: {first:?}");
    writer.append_all(&rows[120..]).expect("append");
    let last = writer.close().expect("close");
    for url in first.iter().chain(&last) {
        let url = url.to_string_lossy();
        assert!(
            url.starts_with("s3://telemetry/prod/runs/date=") && url.contains("/part-"),
            "{url}"
        );
    }
    let remote = location.as_remote().expect("remote");
    let objects = remote.list().expect("list");
    assert_eq!(objects.len(), first.len() + last.len(), "{objects:?}");
    for o in &objects {
        let (partition, file) = o.name.split_once('/').expect("partition/file");
        assert_eq!(partition.len(), "date=2026-01-01".len(), "{}", o.name);
        assert!(
            file.starts_with("part-") && file.ends_with(".parquet"),
            "{}",
            o.name
        );
    }
    assert!(
        spooled_parquet(&spool).is_empty(),
        "published files leave the spool"
    );
    assert!(!spool.join(sandstorm_datasets::WAL_DIR).exists());
    let counts = counts(&location);
    assert_eq!(counts.len(), rows.len());
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn a_crash_around_the_put_neither_loses_nor_duplicates_rows() {
    let server = S3Server::start();
    server.create_bucket("crash");
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = tmp.path().join("spool");
    let location =
        Location::parse_with("--telemetry", "s3://crash/t", &server.config()).expect("location");
    let remote = location.as_remote().expect("remote").clone();
    // What a writer that died after compacting leaves: Parquet in the spool, not published
    // (a local writer on the spool compacts exactly as the publishing one does).
    let rows = records(90, 5);
    let local = TelemetryWriter::open(&spool, options(&spool)).expect("open spool");
    local.append_all(&rows).expect("append");
    let files = local.close().expect("close");
    assert!(files.len() >= 2, "{files:?}");
    // ... and one of them was put before the crash, but not yet deleted from the spool.
    let put_first = &files[0];
    let name = put_first
        .strip_prefix(&spool)
        .expect("in spool")
        .to_string_lossy()
        .into_owned();
    remote
        .put_file(&name, put_first)
        .expect("put before the crash");

    let writer = TelemetryWriter::open_at(&location, options(&spool)).expect("reopen");
    assert_eq!(
        writer.recovery().files.len(),
        files.len(),
        "{:?}",
        writer.recovery()
    );
    writer.close().expect("close");
    assert!(spooled_parquet(&spool).is_empty());
    assert_eq!(remote.list().expect("list").len(), files.len());
    let counts = counts(&location);
    assert_eq!(counts.len(), rows.len(), "no row lost");
    assert!(counts.values().all(|n| *n == 1), "no row doubled");
}

#[test]
fn an_unreachable_store_is_an_error_and_the_rows_stay_in_the_spool() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = tmp.path().join("spool");
    let config = sandstorm_datasets::StoreConfig {
        options: vec![
            ("aws_endpoint_url".into(), "http://127.0.0.1:9".into()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), "test".into()),
            ("aws_secret_access_key".into(), "test".into()),
        ],
    };
    let location = Location::parse_with("--telemetry", "s3://nowhere/t", &config).expect("parse");
    let writer =
        TelemetryWriter::open_at(&location, options(&spool)).expect("open: nothing to publish yet");
    writer
        .append_all(&records(10, 1))
        .expect("rows are durable in the local log");
    let err = writer.close().expect_err("the put fails");
    assert!(err.to_string().contains("s3://nowhere/t/date="), "{err}");
    assert!(
        !spooled_parquet(&spool).is_empty(),
        "rows kept for the next writer"
    );
}
