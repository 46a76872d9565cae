//! Morph Cloud adapter against the Morph double (whose exec really runs the command).

use std::time::Duration;

use sandstorm_adapters::{AdapterError, MorphConfig, MorphProvider, RemoteProvider};
use sandstorm_features::InputFile;
use sandstorm_runtime::{OutputStream, RunControl, RunStatus};
use serde_json::json;

use crate::doubles::Server;
use crate::doubles::morph::{API_KEY, Behavior, MorphDouble, SNAPSHOT};
use crate::{Observed, assert_gpu_refused, candidate, command_job, gpu_job};

fn config(server: &Server, workdir: &std::path::Path) -> MorphConfig {
    MorphConfig {
        api_key: Some(API_KEY.into()),
        api_url: server.url.clone(),
        snapshot_id: Some(SNAPSHOT.into()),
        workdir: workdir.join("job").display().to_string(),
        poll_interval: Duration::from_millis(20),
        ..MorphConfig::default()
    }
}

fn provider(server: &Server, workdir: &std::path::Path) -> MorphProvider {
    MorphProvider::new(config(server, workdir)).expect("provider")
}

#[test]
fn morph_runs_the_command_with_its_embedded_files_and_deletes_the_instance() {
    let (server, double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job("cat \"data/it's.txt\"; echo err >&2; exit 4");
    job.files = vec![InputFile {
        path: "data/it's.txt".into(),
        content: "it's ✓ here\n".into(),
    }];
    let observed = Observed::default();
    let candidate = candidate("morph", None);
    let run = provider(&server, dir.path())
        .run(&candidate, &job, &observed.control())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, Some(4));
    assert_eq!(run.result.stdout, "it's ✓ here\n");
    assert_eq!(run.result.stderr, "err\n");
    assert_eq!(observed.text(OutputStream::Stdout), "it's ✓ here\n");
    assert_eq!(observed.text(OutputStream::Stderr), "err\n");
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=not_blocked".to_owned())
    );

    let create = &double.recorder.matching("POST", "/instance")[0];
    assert_eq!(
        create.query.get("snapshot_id").map(String::as_str),
        Some(SNAPSHOT)
    );
    let body = create.json();
    assert_eq!(body["ttl_seconds"], 130, "job timeout 10 s + 120 s margin");
    assert_eq!(body["ttl_action"], "stop");
    assert_eq!(body["metadata"]["candidate"], candidate.id.as_str());
    let exec = &double.recorder.matching("POST", "/instance/morphvm_1/exec")[0];
    let command = exec.json()["command"].clone();
    assert_eq!(command[0], "/bin/sh");
    assert_eq!(command[1], "-c");
    assert!(double.recorder.matching("GET", "/instance/morphvm_1").len() >= 2);

    assert_eq!(double.deleted(), vec!["morphvm_1".to_owned()]);
    assert!(run.usage.deleted);
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (1.0, 4096));
    assert!(run.cost_usd(&candidate) > 0.0);
}

#[test]
fn morph_exit_zero_is_ok() {
    let (server, _double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("morph", None),
            &command_job("printf 'a b'"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.stdout, "a b");
}

#[test]
fn morph_instance_in_error_fails_retryably_and_is_deleted() {
    let (server, double) = MorphDouble::start(Behavior {
        fail_start: true,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let failure = provider(&server, dir.path())
        .run(
            &candidate("morph", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("error status");
    assert!(
        matches!(failure.error, AdapterError::SandboxFailed { .. }),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert_eq!(double.deleted(), vec!["morphvm_1".to_owned()]);
}

#[test]
fn morph_error_bodies_are_classified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            Behavior {
                create_error: Some((429, json!({ "detail": "Rate limit exceeded" }))),
                ..Behavior::default()
            },
            true,
            "Rate limit exceeded",
            0,
        ),
        (
            Behavior {
                create_error: Some((
                    422,
                    json!({ "detail": [{ "loc": ["body", "ttl_seconds"], "msg": "field required" }] }),
                )),
                ..Behavior::default()
            },
            false,
            "field required",
            0,
        ),
        (
            Behavior {
                create_error: Some((500, json!({ "detail": "Internal Server Error" }))),
                ..Behavior::default()
            },
            true,
            "Internal Server Error",
            0,
        ),
        // An error status from exec means the request was refused: retryable, and the
        // instance is deleted.
        (
            Behavior {
                exec_error: Some((503, json!({ "detail": "instance agent unavailable" }))),
                ..Behavior::default()
            },
            true,
            "instance agent unavailable",
            1,
        ),
    ];
    for (behavior, retryable, message, deleted) in cases {
        let (server, double) = MorphDouble::start(behavior);
        let failure = provider(&server, dir.path())
            .run(
                &candidate("morph", None),
                &command_job("true"),
                &RunControl::new(),
            )
            .expect_err("error");
        assert_eq!(failure.retryable(), retryable, "{failure}");
        assert!(failure.to_string().contains(message), "{failure}");
        assert_eq!(double.deleted().len(), deleted, "{failure}");
    }
}

#[test]
fn morph_unknown_snapshot_is_a_not_found_error() {
    let (server, double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = MorphProvider::new(MorphConfig {
        snapshot_id: Some("snapshot_missing".into()),
        ..config(&server, dir.path())
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("morph", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("404");
    assert!(matches!(
        failure.error,
        AdapterError::Api { status: 404, .. }
    ));
    assert!(!failure.retryable());
    assert!(failure.to_string().contains("Snapshot not found"));
    assert!(double.deleted().is_empty());
}

#[test]
fn morph_bad_key_is_an_auth_error() {
    let (server, _double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = MorphProvider::new(MorphConfig {
        api_key: Some("morph_wrong_secret".into()),
        ..config(&server, dir.path())
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("morph", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("401");
    assert!(failure.error.is_auth());
    assert!(!failure.retryable());
    assert!(!failure.to_string().contains("morph_wrong_secret"));
}

#[test]
fn morph_cancel_deletes_the_instance() {
    let (server, double) = MorphDouble::start(Behavior {
        hold_exec: true,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let control = RunControl::new();
    let canceller = control.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        canceller.cancel();
    });
    let run = provider(&server, dir.path())
        .run(
            &candidate("morph", None),
            &command_job("sleep 600"),
            &control,
        )
        .expect("cancelled");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert_eq!(double.deleted(), vec!["morphvm_1".to_owned()]);
}

#[test]
fn morph_refuses_what_the_snapshot_cannot_hold_before_creating_anything() {
    let (server, double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job("true");
    job.cpu = 4.0;
    let failure = provider(&server, dir.path())
        .run(&candidate("morph", None), &job, &RunControl::new())
        .expect_err("too big");
    assert!(matches!(failure.error, AdapterError::Unsupported { .. }));
    let mut job = command_job("true");
    job.files = vec![InputFile {
        path: "big.txt".into(),
        content: "x".repeat(200 * 1024),
    }];
    let failure = provider(&server, dir.path())
        .run(&candidate("morph", None), &job, &RunControl::new())
        .expect_err("too many bytes inline");
    assert!(failure.error.is_user_error(), "{failure}");
    assert!(double.recorder.all().is_empty());
}

#[test]
fn morph_refuses_a_gpu_job_before_calling() {
    let (server, double) = MorphDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let failure = provider(&server, dir.path())
        .run(&candidate("morph", None), &gpu_job(), &RunControl::new())
        .expect_err("no GPU");
    assert_gpu_refused(
        &failure,
        "morph",
        "this adapter creates morph sandboxes without a GPU",
    );
    assert!(double.recorder.all().is_empty());
}
