//! Hot reload from a model registry: the service serves the champion and picks up a promoted
//! (or rolled back) champion without a restart; a champion that cannot load changes nothing.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use sandstorm_service::{CHAMPION_FILE, Config, load_core};

/// Copies the shared model set to `dir` under version `version`.
fn install(from: &Path, dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let meta_path = dir.join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["version"] = serde_json::Value::from(version);
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
}

/// Replaces the champion pointer the way the registry does: temporary file, then rename.
fn point_to(registry: &Path, version: &str) {
    let tmp = registry.join(".champion.tmp");
    std::fs::write(&tmp, format!("{version}\n")).unwrap();
    std::fs::rename(&tmp, registry.join(CHAMPION_FILE)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_champion_is_served_without_a_restart() {
    let models = common::models();
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    install(models, &registry.join("v1"), "v1");
    install(models, &registry.join("v2"), "v2");
    point_to(&registry, "v1");

    let core = load_core(&Config::new(&registry)).await.unwrap();
    assert_eq!(core.router().models().version(), "v1");
    let watcher = core
        .watch_champion(Duration::from_millis(50))
        .expect("a registry is watched");

    let wait_for = |want: &'static str| {
        let core = core.clone();
        async move {
            let start = Instant::now();
            while core.router().models().version() != want {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "still serving {} instead of {want} (an explicit reload says {:?})",
                    core.router().models().version(),
                    core.reload_models()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    point_to(&registry, "v2");
    wait_for("v2").await;

    // A pointer to a version that does not exist: the current champion stays.
    point_to(&registry, "v3");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(core.router().models().version(), "v2");

    // Rollback.
    point_to(&registry, "v1");
    wait_for("v1").await;
    // The explicit reload endpoint's path resolves the champion too.
    assert_eq!(core.reload_models().unwrap(), "v1");
    watcher.abort();
}

#[tokio::test]
async fn a_plain_model_directory_is_not_watched() {
    let core = load_core(&Config::new(common::models())).await.unwrap();
    assert!(core.watch_champion(Duration::from_millis(50)).is_none());
}

/// The same over a real socket: `GET /v1/models` of a running service on a registry answers
/// the new champion's version after a promotion, without a restart (the service polls the
/// pointer every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_switches_to_a_promoted_champion() {
    let models = common::models();
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    install(models, &registry.join("v1"), "v1");
    install(models, &registry.join("v2"), "v2");
    point_to(&registry, "v1");
    let registry_dir = registry.clone();
    let server = common::TestServer::start_with(move |c| c.models_dir = registry_dir).await;
    let version = |v: serde_json::Value| v["active"]["version"].as_str().map(str::to_owned);
    let served = server.get("/v1/models", common::ACME).await;
    assert_eq!(
        version(served.json()).as_deref(),
        Some("v1"),
        "{}",
        served.text()
    );

    point_to(&registry, "v2");
    let start = Instant::now();
    loop {
        let served = server.get("/v1/models", common::ACME).await;
        if version(served.json()).as_deref() == Some("v2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still serving {}",
            served.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Decisions go on with the new champion.
    let routed = server
        .post_json("/v1/route", common::ACME, &common::local_command("echo hi"))
        .await;
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(routed.json()["model_version"], "v2", "{}", routed.text());
}
