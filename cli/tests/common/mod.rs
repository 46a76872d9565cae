//! Helpers shared by the CLI's integration tests: running the binary, and one model set
//! trained per test binary on simulated telemetry.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandstorm"));
    c.env_remove("SANDSTORM_MODELS")
        .env_remove("SANDSTORM_CATALOG")
        .env_remove("SANDSTORM_TELEMETRY")
        .env_remove("SANDSTORM_POLICIES")
        .env_remove("SANDSTORM_TRUSTED_KEYS")
        .env_remove("SANDSTORM_BREAKER_STATE")
        .env_remove("SANDSTORM_EDGE_TOKEN")
        .env_remove("SANDSTORM_URL")
        .env_remove("SANDSTORM_API_KEY")
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

/// `sandstorm serve --config CONFIG` running on the address it printed; killed on drop.
pub(crate) struct Service {
    pub(crate) child: Child,
    /// `host:port`.
    pub(crate) addr: String,
}

impl Service {
    /// Starts the service (its config should listen on `127.0.0.1:0`) and waits for its
    /// `listening on http://ADDR` line.
    pub(crate) fn start(config: &Path) -> Self {
        Self::start_with(bin(), config)
    }

    /// [`Service::start`] from `command` (the binary with its environment set up).
    pub(crate) fn start_with(mut command: Command, config: &Path) -> Self {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sandstorm serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let start = Instant::now();
        let mut seen = String::new();
        while start.elapsed() < Duration::from_secs(120) {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let addr = addr.trim().to_owned();
                // Keep draining stderr so the service never blocks on a full pipe.
                std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
                return Self { child, addr };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("no listening line from sandstorm serve:\n{seen}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over a plain socket with `Authorization: Bearer key`: status and body.
pub(crate) fn http_get(addr: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
