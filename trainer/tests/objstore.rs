//! The trainer's readers on an object store (a real S3-compatible server, moto): telemetry
//! loaded from `s3://` equals the same telemetry loaded from disk, a GROUP BY over the bucket
//! equals the one over the directory, and the registry works in the bucket (register, promote,
//! list, rollback; the champion pointer object names the version).

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

use sandstorm_datasets::{Location, SimulatorConfig, TelemetryWriter, WriterOptions, simulate};
use sandstorm_features::Catalog;
use sandstorm_storage::test_s3::S3Server;
use sandstorm_trainer::registry::{PromotionPolicy, Registry};
use sandstorm_trainer::{TrainConfig, load_telemetry, load_telemetry_at, query, train_records};

#[test]
fn readers_and_registry_work_on_an_object_store() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimulatorConfig {
        rows: 2000,
        seed: 21,
        days: 3,
        ..SimulatorConfig::default()
    };
    let rows: Vec<_> = simulate(&Catalog::default_catalog(), &cfg).collect();
    let local = tmp.path().join("local");
    let remote = Location::parse_with("--telemetry", "s3://lake/t", &server.config()).unwrap();
    for location in [Location::Local(local.clone()), remote.clone()] {
        let options = WriterOptions {
            background: false,
            spool_dir: Some(tmp.path().join("spool")),
            ..WriterOptions::default()
        };
        let writer = TelemetryWriter::open_at(&location, options).unwrap();
        writer.append_all(&rows).unwrap();
        writer.close().unwrap();
    }
    let from_disk = load_telemetry(&local).unwrap();
    let from_s3 = load_telemetry_at(&remote).unwrap();
    assert_eq!(from_disk.len(), rows.len());
    assert_eq!(from_s3, from_disk);

    let sql = "SELECT provider, region, COUNT(*) AS runs, SUM(cost_usd) AS cost FROM telemetry \
               GROUP BY provider, region ORDER BY provider, region";
    let a = query::render(
        &query::query_telemetry(&local, sql).unwrap(),
        query::OutputFormat::Csv,
    )
    .unwrap();
    let b = query::render(
        &query::query_location(&remote, sql).unwrap(),
        query::OutputFormat::Csv,
    )
    .unwrap();
    assert_eq!(a, b);
    let empty = Location::parse_with("--telemetry", "s3://lake/nothing", &server.config()).unwrap();
    let e = query::query_location(&empty, "SELECT 1").unwrap_err();
    assert!(
        e.to_string()
            .contains("no .parquet objects under s3://lake/nothing"),
        "{e}"
    );

    // The registry in the bucket.
    let reg_location =
        Location::parse_with("--registry", "s3://lake/registry", &server.config()).unwrap();
    let reg = Registry::open_at(&reg_location, Some(&tmp.path().join("cache"))).unwrap();
    let train = |name: &str, rounds: usize| {
        let cfg = TrainConfig {
            num_iterations: rounds,
            report: false,
            ..TrainConfig::default()
        };
        let out = tmp.path().join(name);
        train_records(&from_s3, &out, &cfg).unwrap();
        reg.register(&out).unwrap()
    };
    let weak = train("weak", 2);
    let good = train("good", 40);
    let policy = PromotionPolicy::default();
    assert!(reg.promote(&weak, &from_s3, &policy).unwrap().promoted);
    let d = reg.promote(&good, &from_s3, &policy).unwrap();
    assert!(d.promoted, "{d:?}");
    assert_eq!(reg.champion().unwrap().as_deref(), Some(good.as_str()));
    let versions = reg.versions().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(
        versions
            .iter()
            .all(|v| v.dir.to_string_lossy().starts_with("s3://lake/registry/"))
    );
    assert_eq!(reg.history().unwrap().len(), 2);
    reg.rollback().unwrap();
    assert_eq!(reg.champion().unwrap().as_deref(), Some(weak.as_str()));
    assert!(reg.version_dir("nope").is_err());
}
