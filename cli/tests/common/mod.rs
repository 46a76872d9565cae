//! Helpers shared by the CLI's integration tests: running the binary, and one model set
//! trained per test binary on simulated telemetry.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandstorm"));
    c.env_remove("SANDSTORM_MODELS")
        .env_remove("SANDSTORM_CATALOG")
        .env_remove("SANDSTORM_TELEMETRY")
        .env_remove("SANDSTORM_POLICIES")
        .env_remove("SANDSTORM_TRUSTED_KEYS")
        .env_remove("SANDSTORM_BREAKER_STATE")
        .env_remove("SANDSTORM_EDGE_TOKEN")
        // Breaker state of this test binary only, never the user's.
        .env("XDG_STATE_HOME", state_home());
    for provider_key in [
        "E2B_API_KEY",
        "DAYTONA_API_KEY",
        "MORPH_API_KEY",
        "KUBECONFIG",
    ] {
        c.env_remove(provider_key);
    }
    c
}

fn state_home() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("state dir"))
        .path()
}

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub(crate) fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn sandstorm")
}

/// `sandstorm route` of `request` with the shared trained models, plus `extra` arguments.
pub(crate) fn route_with_models(request: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "route",
        "--models",
        models().to_str().unwrap(),
        "--request",
        request.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

pub(crate) fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A model directory trained once on simulated telemetry.
pub(crate) fn models() -> &'static Path {
    &trained().1
}

/// The simulated telemetry the models were trained on.
pub(crate) fn telemetry() -> &'static Path {
    &trained().2
}

fn trained() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = tmp.path().join("telemetry");
        let models = tmp.path().join("models");
        let o = run(&[
            "datasets",
            "generate",
            "--rows",
            "6000",
            "--seed",
            "11",
            "--out",
            telemetry.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        let o = run(&[
            "train",
            "--telemetry",
            telemetry.to_str().unwrap(),
            "--out",
            models.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        (tmp, models, telemetry)
    })
}

pub(crate) fn python() -> String {
    std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}
