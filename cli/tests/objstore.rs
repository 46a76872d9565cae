//! Telemetry and the model registry in an object store, end to end against a real
//! S3-compatible server (moto): rows written by the telemetry writer are published to
//! `s3://lake/telemetry`; `telemetry query` groups them; `train` reads them and registers
//! models in `s3://lake/registry`; `models promote|list|rollback` work there; `route` and a
//! running `serve` load the champion from the bucket, and the service switches to a newly
//! promoted champion without a restart (over its socket). Bad schemes and an unreachable
//! endpoint are clear errors.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Service, http_get};

use sandstorm_datasets::{Location, SimulatorConfig, TelemetryWriter, WriterOptions, simulate};
use sandstorm_features::Catalog;
use sandstorm_storage::test_s3::S3Server;
use serde_json::Value;

/// `sandstorm ARGS` pointed at `server`, with its caches under `cache`.
fn s3_run(server: &S3Server, cache: &Path, args: &[&str]) -> Output {
    command(server, cache).args(args).output().unwrap()
}

fn command(server: &S3Server, cache: &Path) -> Command {
    let mut c = common::bin();
    c.envs(server.env()).env("SANDSTORM_CACHE_DIR", cache);
    c
}

fn ok(o: &Output) -> String {
    let (out, err) = common::text(o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    out
}

fn train(server: &S3Server, cache: &Path, out: &Path, iterations: &str) -> String {
    let out = ok(&s3_run(
        server,
        cache,
        &[
            "train",
            "--telemetry",
            "s3://lake/telemetry",
            "--out",
            out.to_str().unwrap(),
            "--num-iterations",
            iterations,
            "--no-report",
            "--registry",
            "s3://lake/registry",
            "--json",
        ],
    ));
    let meta: Value = serde_json::from_str(&out).unwrap();
    meta["version"].as_str().unwrap().to_owned()
}

fn promote(server: &S3Server, cache: &Path, version: &str) -> Output {
    s3_run(
        server,
        cache,
        &[
            "models",
            "promote",
            "--registry",
            "s3://lake/registry",
            "--telemetry",
            "s3://lake/telemetry",
            "--json",
            version,
        ],
    )
}

#[test]
fn telemetry_and_registry_live_in_an_object_store() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");

    // Rows through the writer: spooled locally, published to the bucket.
    let cfg = SimulatorConfig {
        rows: 3000,
        seed: 5,
        days: 4,
        ..SimulatorConfig::default()
    };
    let rows: Vec<_> = simulate(&Catalog::default_catalog(), &cfg).collect();
    let location =
        Location::parse_with("--telemetry", "s3://lake/telemetry", &server.config()).unwrap();
    let options = WriterOptions {
        background: false,
        spool_dir: Some(tmp.path().join("spool")),
        ..WriterOptions::default()
    };
    let writer = TelemetryWriter::open_at(&location, options).unwrap();
    writer.append_all(&rows).unwrap();
    let published = writer.close().unwrap();
    assert!(published.len() >= 4, "{published:?}");

    // SQL over the bucket.
    let out = ok(&s3_run(
        &server,
        &cache,
        &[
            "telemetry",
            "query",
            "SELECT provider, COUNT(*) AS runs FROM telemetry GROUP BY provider ORDER BY provider",
            "--telemetry",
            "s3://lake/telemetry",
            "--format",
            "csv",
        ],
    ));
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *want.entry(r.provider.clone()).or_default() += 1;
    }
    let got: BTreeMap<String, usize> = out
        .lines()
        .skip(1)
        .map(|l| {
            let (p, n) = l.split_once(',').unwrap();
            (p.to_owned(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(got, want);
    ok(&s3_run(
        &server,
        &cache,
        &[
            "telemetry",
            "report",
            "spend",
            "--telemetry",
            "s3://lake/telemetry",
        ],
    ));

    // Train from the bucket into the bucket's registry; the first version becomes champion.
    let weak = train(&server, &cache, &tmp.path().join("weak"), "2");
    let o = promote(&server, &cache, &weak);
    ok(&o);

    // The service serves the champion from the bucket.
    let key = "test-key-objstore";
    let config = tmp.path().join("service.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmodels_dir = \"s3://lake/registry\"\nmodels_cache_dir = \"models-cache\"\n\
             telemetry_dir = \"s3://lake/service-telemetry\"\ntelemetry_spool_dir = \"spool-service\"\n\n\
             [[api_keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
            sandstorm_service::hash_api_key(key)
        ),
    )
    .unwrap();
    let service = Service::start_with(command(&server, &cache), &config);
    let addr = service.addr.clone();
    let served = |addr: &str| {
        let (status, body) = http_get(addr, "/v1/models", Some(key));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["active"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(served(&addr), weak);

    // A better challenger is promoted in the bucket; the running service switches to it.
    let good = train(&server, &cache, &tmp.path().join("good"), "60");
    let o = promote(&server, &cache, &good);
    let d: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(d["promoted"], true, "{d}");
    let start = Instant::now();
    while served(&addr) != good {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the service still serves {} instead of {good}",
            served(&addr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The weak one again is refused (exit 2), and recorded.
    let o = promote(&server, &cache, &weak);
    assert_eq!(o.status.code(), Some(2), "{:?}", common::text(&o));
    let list: Value = serde_json::from_str(&ok(&s3_run(
        &server,
        &cache,
        &[
            "models",
            "list",
            "--registry",
            "s3://lake/registry",
            "--json",
        ],
    )))
    .unwrap();
    let versions = list.as_array().unwrap();
    assert_eq!(versions.len(), 2, "{list}");
    assert!(
        versions
            .iter()
            .any(|v| v["version"] == good.as_str() && v["champion"] == true),
        "{list}"
    );

    // `route` loads the champion from the bucket too.
    let request = common::repo("examples/requests/hello-python.yaml");
    let out = ok(&s3_run(
        &server,
        &cache,
        &[
            "route",
            "--models",
            "s3://lake/registry",
            "--request",
            request.to_str().unwrap(),
            "--json",
        ],
    ));
    let decision: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decision["model_version"], good.as_str());

    // Rollback moves the pointer back; the service follows.
    ok(&s3_run(
        &server,
        &cache,
        &["models", "rollback", "--registry", "s3://lake/registry"],
    ));
    let start = Instant::now();
    while served(&addr) != weak {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rollback not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bad_schemes_and_unreachable_stores_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = common::run(&[
        "telemetry",
        "query",
        "SELECT 1",
        "--telemetry",
        "gs://bucket/t",
    ]);
    let (_, err) = common::text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--telemetry") && err.contains("scheme `gs`") && err.contains("s3://"),
        "{err}"
    );
    let o = common::run(&["models", "list", "--registry", "s3://Not_A_Bucket/r"]);
    let (_, err) = common::text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--registry") && err.contains("bucket name"),
        "{err}"
    );

    let mut c = common::bin();
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SANDSTORM_CACHE_DIR", tmp.path());
    let o = c
        .args([
            "telemetry",
            "query",
            "SELECT 1",
            "--telemetry",
            "s3://bucket/telemetry",
        ])
        .output()
        .unwrap();
    let (_, err) = common::text(&o);
    assert!(!o.status.success());
    assert!(err.contains("s3://bucket/telemetry"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
