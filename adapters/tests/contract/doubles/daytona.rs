//! Test double of Daytona's API: `POST /sandbox`, `GET /sandbox/{id}` (state `creating` on
//! the first poll, then `started` or a scripted failure), `DELETE /sandbox/{id}`, and the
//! toolbox at `/toolbox/{id}/toolbox/...` (or at a `toolboxProxyUrl` when scripted):
//! `files/upload` (multipart) and `process/execute` (`{"exitCode", "result"}`). Auth is
//! `Authorization: Bearer`; errors are NestJS bodies `{"statusCode", "message", "error"}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::json;

use super::{Recorder, Server, json, lock, multipart_file, serve};

pub(crate) const API_KEY: &str = "dtn_test_key_abcdef";

#[derive(Debug, Clone, Default)]
pub(crate) struct Behavior {
    pub(crate) create_error: Option<(u16, serde_json::Value)>,
    /// Report this state (and reason) instead of `started`.
    pub(crate) failed_state: Option<(&'static str, &'static str)>,
    /// Stay `creating` forever.
    pub(crate) never_starts: bool,
    /// Answer sandboxes with `toolboxProxyUrl` = `{base}/proxy`.
    pub(crate) proxy: bool,
    pub(crate) exit_code: i32,
    pub(crate) result: &'static str,
    /// Delay before answering execute (until the sandbox is deleted, if longer).
    pub(crate) execute_delay: Option<Duration>,
}

#[derive(Debug, Default)]
pub(crate) struct DaytonaDouble {
    pub(crate) recorder: Recorder,
    behavior: Mutex<Behavior>,
    base_url: Mutex<String>,
    /// Sandboxes alive: id → polls answered.
    alive: Mutex<BTreeMap<String, u32>>,
    pub(crate) deleted: Mutex<Vec<String>>,
    pub(crate) files: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl DaytonaDouble {
    pub(crate) fn start(behavior: Behavior) -> (Server, Arc<Self>) {
        let double = Arc::new(Self {
            behavior: Mutex::new(behavior),
            ..Self::default()
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&double));
        let server = serve(router);
        *lock(&double.base_url) = server.url.clone();
        (server, double)
    }

    pub(crate) fn deleted(&self) -> Vec<String> {
        lock(&self.deleted).clone()
    }
}

fn error(status: u16, message: &str, error: &str) -> Response {
    json(
        status,
        json!({ "statusCode": status, "message": message, "error": error }),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {API_KEY}"))
}

fn sandbox_json(
    double: &DaytonaDouble,
    id: &str,
    state: &str,
    reason: Option<&str>,
) -> serde_json::Value {
    let mut value = json!({
        "id": id,
        "state": state,
        "errorReason": reason,
        "cpu": 2,
        "memory": 4,
        "target": "us",
    });
    if lock(&double.behavior).proxy {
        value["toolboxProxyUrl"] = format!("{}/proxy", lock(&double.base_url)).into();
    }
    value
}

async fn handle(State(double): State<Arc<DaytonaDouble>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let recorded = double
        .recorder
        .record(&parts.method, &parts.uri, &parts.headers, &body);
    if !authorized(&parts.headers) {
        return error(401, "Invalid API key", "Unauthorized");
    }
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    let behavior = lock(&double.behavior).clone();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["sandbox"]) => {
            if let Some((status, body)) = behavior.create_error {
                return json(status, body);
            }
            let id = format!(
                "dtn-{}",
                lock(&double.alive).len() + lock(&double.deleted).len() + 1
            );
            lock(&double.alive).insert(id.clone(), 0);
            json(200, sandbox_json(&double, &id, "creating", None))
        }
        (&Method::GET, ["sandbox", id]) => {
            let polls = {
                let mut alive = lock(&double.alive);
                let Some(polls) = alive.get_mut(*id) else {
                    return error(404, &format!("Sandbox with ID {id} not found"), "Not Found");
                };
                *polls += 1;
                *polls
            };
            match (polls, behavior.failed_state) {
                (1, _) => json(200, sandbox_json(&double, id, "creating", None)),
                _ if behavior.never_starts => {
                    json(200, sandbox_json(&double, id, "creating", None))
                }
                (_, Some((state, reason))) => {
                    json(200, sandbox_json(&double, id, state, Some(reason)))
                }
                _ => json(200, sandbox_json(&double, id, "started", None)),
            }
        }
        (&Method::DELETE, ["sandbox", id]) => {
            if lock(&double.alive).remove(*id).is_none() {
                return error(404, &format!("Sandbox with ID {id} not found"), "Not Found");
            }
            lock(&double.deleted).push((*id).to_owned());
            json(200, json!({}))
        }
        (&Method::POST, ["toolbox", id, "toolbox", rest @ ..]) if !behavior.proxy => {
            toolbox(
                &double,
                id,
                rest,
                &recorded.query,
                &parts.headers,
                &body,
                &behavior,
            )
            .await
        }
        (&Method::POST, ["proxy", id, rest @ ..]) if behavior.proxy => {
            toolbox(
                &double,
                id,
                rest,
                &recorded.query,
                &parts.headers,
                &body,
                &behavior,
            )
            .await
        }
        _ => error(
            404,
            &format!("Cannot {} {}", parts.method, recorded.path),
            "Not Found",
        ),
    }
}

async fn toolbox(
    double: &DaytonaDouble,
    id: &str,
    rest: &[&str],
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    behavior: &Behavior,
) -> Response {
    if !lock(&double.alive).contains_key(id) {
        return error(404, "sandbox not found", "Not Found");
    }
    match rest {
        ["files", "upload"] => {
            let Some(path) = query.get("path") else {
                return error(400, "path is required", "Bad Request");
            };
            let Some((_, content)) = multipart_file(headers, body) else {
                return error(400, "file is required", "Bad Request");
            };
            lock(&double.files).insert(path.clone(), content);
            json(200, json!({}))
        }
        ["process", "execute"] => {
            if let Some(delay) = behavior.execute_delay {
                let started = std::time::Instant::now();
                while started.elapsed() < delay && lock(&double.alive).contains_key(id) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            json(
                200,
                json!({ "exitCode": behavior.exit_code, "result": behavior.result }),
            )
        }
        _ => error(404, "no such toolbox route", "Not Found"),
    }
}
