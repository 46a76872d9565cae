//! The storage operations against a real S3-compatible server (moto): put, get, list,
//! directories, model download through the champion pointer, and clear errors for a missing
//! bucket and an unreachable endpoint.

use sandstorm_storage::test_s3::S3Server;
use sandstorm_storage::{Location, StoreConfig, models};

fn remote(server: &S3Server, url: &str) -> sandstorm_storage::Remote {
    Location::parse_with("--registry", url, &server.config())
        .expect("location")
        .as_remote()
        .expect("remote")
        .clone()
}

#[test]
fn objects_directories_and_models_round_trip() {
    let server = S3Server::start();
    server.create_bucket("reg");
    let reg = remote(&server, "s3://reg/models");
    assert_eq!(reg.get("champion").expect("get"), None);
    assert!(reg.list().expect("list").is_empty());

    let tmp = tempfile::tempdir().expect("tmp");
    let v1 = tmp.path().join("v1");
    std::fs::create_dir_all(v1.join("report")).expect("mkdir");
    std::fs::write(v1.join("metadata.json"), br#"{"version":"v1"}"#).expect("write");
    std::fs::write(v1.join("cost.txt"), b"tree").expect("write");
    std::fs::write(v1.join("report/plot.png"), b"png").expect("write");
    assert_eq!(
        reg.child("v1")
            .upload_dir(&v1, "metadata.json")
            .expect("upload"),
        3
    );
    let names: Vec<String> = reg
        .list()
        .expect("list")
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(
        names,
        ["v1/cost.txt", "v1/metadata.json", "v1/report/plot.png"]
    );
    assert_eq!(reg.list_dirs().expect("dirs"), ["v1"]);

    // No pointer: the location is not a model directory.
    let cache = tmp.path().join("cache");
    let e = models::fetch_models(&reg, &cache).expect_err("no champion");
    assert!(e.to_string().contains("not a model directory"), "{e}");
    reg.put("champion", "v1\n").expect("pointer");
    assert_eq!(
        models::read_champion(&reg).expect("read"),
        Some("v1".to_owned())
    );
    let dir = models::fetch_models(&reg, &cache).expect("fetch");
    assert_eq!(std::fs::read(dir.join("cost.txt")).expect("model"), b"tree");
    assert!(
        !dir.join("report").exists(),
        "only the top-level files are served"
    );
    // Cached: a second fetch is the same directory.
    assert_eq!(models::fetch_models(&reg, &cache).expect("fetch"), dir);

    reg.put("champion", "../etc\n").expect("pointer");
    assert!(models::read_champion(&reg).is_err());
    reg.delete("champion").expect("delete");
    reg.delete("champion")
        .expect("deleting a missing object is fine");
}

#[test]
fn missing_buckets_and_unreachable_endpoints_are_clear_errors() {
    let server = S3Server::start();
    let missing = remote(&server, "s3://no-such-bucket/x");
    let e = missing.put("a", "b").expect_err("no bucket");
    assert!(e.to_string().contains("s3://no-such-bucket/x/a"), "{e}");

    let unreachable = StoreConfig {
        options: vec![
            ("aws_endpoint_url".into(), "http://127.0.0.1:9".into()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), "test".into()),
            ("aws_secret_access_key".into(), "test".into()),
        ],
    };
    let loc = Location::parse_with("--telemetry", "s3://bucket/t", &unreachable).expect("parse");
    let start = std::time::Instant::now();
    let e = loc
        .as_remote()
        .expect("remote")
        .list()
        .expect_err("unreachable");
    assert!(start.elapsed() < std::time::Duration::from_secs(60));
    assert!(e.to_string().contains("s3://bucket/t"), "{e}");
}
