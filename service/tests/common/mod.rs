//! Helpers of the service tests: a small model set trained once per test binary, a server on
//! 127.0.0.1:0 with known API keys, and a minimal HTTP/1.1 client over a real socket (so the
//! tests can send truncated, oversized or malformed requests exactly as written).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandstorm_features::Catalog;
use sandstorm_service::{ApiKey, Config, Scope, Service, TenantLimits, hash_api_key};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ADMIN: &str = "admin-key-acme";
pub const ACME: &str = "key-acme";
pub const GLOBEX: &str = "key-globex";
/// Tenant `tiny`: 1 request/s, burst 2.
pub const TINY: &str = "key-tiny";
/// Tenant `solo`: one run at a time.
pub const SOLO: &str = "key-solo";

/// A model directory trained once on simulated telemetry.
pub fn models() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    // Training starts its own tokio runtime: do it on a plain thread, outside the test's.
    &DIR.get_or_init(|| std::thread::spawn(train).join().expect("training thread"))
        .1
}

fn train() -> (tempfile::TempDir, PathBuf) {
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let telemetry = tmp.path().join("telemetry");
        let cfg = sandstorm_datasets::SimulatorConfig {
            rows: 3000,
            seed: 5,
            ..Default::default()
        };
        sandstorm_datasets::generate(&Catalog::default_catalog(), &cfg, &telemetry, &mut |_| {})
            .expect("simulate telemetry");
        let models = tmp.path().join("models");
        let train = sandstorm_trainer::TrainConfig {
            num_iterations: 40,
            ..Default::default()
        };
        sandstorm_trainer::train(&telemetry, &models, &train).expect("train models");
        (tmp, models)
    }
}

fn key(key: &str, tenant: &str, admin: bool) -> ApiKey {
    let text = format!(
        "sha256 = '{}'\ntenant = '{tenant}'\nscopes = {}",
        hash_api_key(key),
        if admin { "['admin']" } else { "[]" }
    );
    toml::from_str(&text).expect("api key")
}

/// The test configuration: five keys, generous default limits, telemetry in `dir`.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::new(models());
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.telemetry_dir = Some(dir.join("telemetry"));
    c.limits.requests_per_second = 1000;
    c.limits.burst = 1000;
    c.limits.max_concurrent_runs = 8;
    c.shutdown_grace_s = 10.0;
    c.api_keys = vec![
        key(ADMIN, "acme", true),
        key(ACME, "acme", false),
        key(GLOBEX, "globex", false),
        key(TINY, "tiny", false),
        key(SOLO, "solo", false),
    ];
    c.tenants.insert(
        "tiny".into(),
        TenantLimits {
            requests_per_second: Some(1),
            burst: Some(2),
            max_concurrent_runs: None,
        },
    );
    c.tenants.insert(
        "solo".into(),
        TenantLimits {
            requests_per_second: None,
            burst: None,
            max_concurrent_runs: Some(1),
        },
    );
    let _ = Scope::Admin;
    c
}

/// A running service and how to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sandstorm_service::ServiceError>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        edit(&mut c);
        let service = Service::bind(c).await.expect("service starts");
        let addr = service.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
            dir,
        }
    }

    /// Starts shutdown; the returned handle ends when the service has drained and stopped.
    pub fn shutdown(
        &mut self,
    ) -> tokio::task::JoinHandle<Result<(), sandstorm_service::ServiceError>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("running")
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Response {
        send(self.addr, method, path, key, body).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.send("GET", path, Some(key), None).await
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send("POST", path, Some(key), Some(&bytes)).await
    }

    /// Polls `GET /v1/runs/{id}` until `done` says so (or panics after 60 s).
    pub async fn wait_run(&self, id: &str, key: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/v1/runs/{id}"), key).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            if done(&v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "run never got there: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A response as read off the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    if let Some(b) = body {
        request.extend_from_slice(b);
    }
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut raw)).await;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
            break;
        };
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

/// A request that runs `command` locally (pinned to the local provider).
pub fn local_command(command: &str) -> Value {
    serde_json::json!({
        "language": "sh",
        "command": command,
        "timeout_s": 60,
        "constraints": {"allowed_providers": ["local"]},
    })
}

/// Server-sent events of a body: (event, data) pairs.
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let mut event = String::from("message");
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            events.push((event, data.join("\n")));
        }
    }
    events
}
