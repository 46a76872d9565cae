//! Test double of E2B: the platform API (`POST /sandboxes`, `DELETE /sandboxes/{id}`,
//! `X-API-Key`, error bodies `{"code", "message"}`) and envd on the same base URL (the shared
//! sandbox host form: `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers): `POST /files`
//! (multipart upload, `X-Access-Token`) and the Connect RPC `process.Process/Start`
//! (`application/connect+json` envelopes: start, data, end events, end-of-stream message).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::{Recorder, Server, json, lock, multipart_file, serve, streamed};

pub(crate) const API_KEY: &str = "e2b_test_key_0123456789";
/// `Basic base64("user:")`, the SDK's envd user header.
pub(crate) const USER_AUTH: &str = "Basic dXNlcjo=";

/// One scripted `process.Process/Start` event.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Stdout(&'static str),
    Stderr(&'static str),
    /// Pause between events.
    Sleep(Duration),
    /// Keep the stream open until the sandbox is deleted (the stream then breaks).
    HoldUntilDeleted,
    /// The `end` event; `None` = killed (not exited).
    End(Option<i32>),
    /// The end-of-stream message, with an optional Connect error `(code, message)`.
    EndStream(Option<(&'static str, &'static str)>),
}

/// What the double answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Behavior {
    /// Answer `POST /sandboxes` with this status and body instead of creating.
    pub(crate) create_error: Option<(u16, serde_json::Value)>,
    /// Wait this long before answering `POST /sandboxes`.
    pub(crate) create_delay: Option<Duration>,
    /// Answer `POST /process.Process/Start` with this status and body instead of streaming.
    pub(crate) start_error: Option<(u16, serde_json::Value)>,
    /// Answer this many `DELETE /sandboxes/{id}` with 502 before deleting.
    pub(crate) delete_failures: u32,
    /// Answer `POST /files` with this status and body.
    pub(crate) upload_error: Option<(u16, serde_json::Value)>,
    pub(crate) events: Vec<Event>,
}

#[derive(Debug, Default)]
pub(crate) struct E2bDouble {
    pub(crate) recorder: Recorder,
    pub(crate) behavior: Mutex<Behavior>,
    /// Sandboxes alive: id → envd access token.
    alive: Mutex<BTreeMap<String, String>>,
    pub(crate) deleted: Mutex<Vec<String>>,
    /// Uploaded files: absolute path → content.
    pub(crate) files: Mutex<BTreeMap<String, Vec<u8>>>,
    created: Mutex<u32>,
    deletions: tokio::sync::Notify,
}

impl E2bDouble {
    pub(crate) fn start(behavior: Behavior) -> (Server, Arc<Self>) {
        let double = Arc::new(Self {
            behavior: Mutex::new(behavior),
            ..Self::default()
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&double));
        (serve(router), double)
    }

    pub(crate) fn deleted(&self) -> Vec<String> {
        lock(&self.deleted).clone()
    }

    pub(crate) fn alive(&self) -> BTreeSet<String> {
        lock(&self.alive).keys().cloned().collect()
    }
}

fn api_error(status: u16, message: &str) -> Response {
    json(status, json!({ "code": status, "message": message }))
}

async fn handle(State(double): State<Arc<E2bDouble>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let recorded = double
        .recorder
        .record(&parts.method, &parts.uri, &parts.headers, &body);
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["sandboxes"]) => {
            let delay = lock(&double.behavior).create_delay;
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            create(&double, &recorded.headers)
        }
        (&Method::DELETE, ["sandboxes", id]) => delete(&double, &recorded.headers, id),
        (&Method::POST, ["files"]) => upload(&double, &recorded.headers, &recorded.query, &body),
        (&Method::POST, ["process.Process", "Start"]) => start(&double, &recorded.headers).await,
        _ => api_error(404, "no such route in the e2b double"),
    }
}

fn api_key_ok(headers: &HeaderMap) -> bool {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(API_KEY)
}

fn create(double: &E2bDouble, headers: &HeaderMap) -> Response {
    if !api_key_ok(headers) {
        return api_error(401, "Invalid API key, please visit https://e2b.dev/docs");
    }
    if let Some((status, body)) = lock(&double.behavior).create_error.clone() {
        return json(status, body);
    }
    let n = {
        let mut created = lock(&double.created);
        *created += 1;
        *created
    };
    let id = format!("sbx{n}");
    let token = format!("envd-token-{n}");
    lock(&double.alive).insert(id.clone(), token.clone());
    json(
        201,
        json!({
            "templateID": "base",
            "sandboxID": id,
            "clientID": "client",
            "envdVersion": "0.2.0",
            "envdAccessToken": token,
            "domain": null,
        }),
    )
}

fn delete(double: &E2bDouble, headers: &HeaderMap, id: &str) -> Response {
    if !api_key_ok(headers) {
        return api_error(401, "Invalid API key");
    }
    {
        let mut behavior = lock(&double.behavior);
        if behavior.delete_failures > 0 {
            behavior.delete_failures -= 1;
            return api_error(502, "upstream connect error");
        }
    }
    if lock(&double.alive).remove(id).is_none() {
        return api_error(404, &format!("sandbox \"{id}\" not found"));
    }
    lock(&double.deleted).push(id.to_owned());
    double.deletions.notify_waiters();
    axum::http::StatusCode::NO_CONTENT.into_response()
}

/// Checks envd's headers: the sandbox exists and the access token is its own.
fn envd_auth(double: &E2bDouble, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = header("e2b-sandbox-id") else {
        return Err(Box::new(api_error(400, "missing E2b-Sandbox-Id")));
    };
    if header("e2b-sandbox-port") != Some("49983") {
        return Err(Box::new(api_error(400, "missing E2b-Sandbox-Port")));
    }
    let alive = lock(&double.alive);
    let Some(token) = alive.get(id) else {
        return Err(Box::new(api_error(502, "sandbox not found")));
    };
    if header("x-access-token") != Some(token.as_str()) {
        return Err(Box::new(api_error(401, "invalid access token")));
    }
    if header("authorization") != Some(USER_AUTH) {
        return Err(Box::new(api_error(401, "invalid user")));
    }
    Ok(())
}

fn upload(
    double: &E2bDouble,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    body: &Bytes,
) -> Response {
    if let Err(response) = envd_auth(double, headers) {
        return *response;
    }
    if let Some((status, body)) = lock(&double.behavior).upload_error.clone() {
        return json(status, body);
    }
    let Some(path) = query.get("path") else {
        return api_error(400, "path is required");
    };
    if query.get("username").map(String::as_str) != Some("user") {
        return api_error(400, "username is required");
    }
    let Some((name, content)) = multipart_file(headers, body) else {
        return api_error(400, "no file part");
    };
    lock(&double.files).insert(path.clone(), content);
    json(200, json!([{ "path": path, "name": name, "type": "file" }]))
}

fn envelope(flags: u8, value: &serde_json::Value) -> Vec<u8> {
    let payload = serde_json::to_vec(value).unwrap_or_default();
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

async fn start(double: &Arc<E2bDouble>, headers: &HeaderMap) -> Response {
    if let Err(response) = envd_auth(double, headers) {
        return *response;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("content-type") != Some("application/connect+json")
        || header("connect-protocol-version") != Some("1")
    {
        return json(
            415,
            json!({ "code": "unknown", "message": "not a connect streaming request" }),
        );
    }
    let (behavior, id) = (
        lock(&double.behavior).clone(),
        header("e2b-sandbox-id").unwrap_or_default().to_owned(),
    );
    if let Some((status, body)) = behavior.start_error {
        return json(status, body);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let double = Arc::clone(double);
    tokio::spawn(async move {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let _ = tx
            .send(envelope(0, &json!({ "event": { "start": { "pid": 42 } } })))
            .await;
        for event in behavior.events {
            let message = match event {
                Event::Stdout(s) => {
                    envelope(0, &json!({ "event": { "data": { "stdout": b64(s) } } }))
                }
                Event::Stderr(s) => {
                    envelope(0, &json!({ "event": { "data": { "stderr": b64(s) } } }))
                }
                Event::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Event::HoldUntilDeleted => {
                    loop {
                        let notified = double.deletions.notified();
                        if !lock(&double.alive).contains_key(&id) {
                            break;
                        }
                        notified.await;
                    }
                    // The sandbox is gone: the connection breaks without an end message.
                    return;
                }
                // Protobuf JSON omits zero values: exit code 0 is sent without `exitCode`.
                Event::End(Some(0)) => envelope(
                    0,
                    &json!({ "event": { "end": { "exited": true, "status": "exit status 0" } } }),
                ),
                Event::End(Some(code)) => envelope(
                    0,
                    &json!({ "event": { "end": { "exitCode": code, "exited": true, "status": format!("exit status {code}") } } }),
                ),
                Event::End(None) => envelope(
                    0,
                    &json!({ "event": { "end": { "status": "signal: killed" } } }),
                ),
                Event::EndStream(None) => envelope(2, &json!({})),
                Event::EndStream(Some((code, message))) => {
                    envelope(2, &json!({ "error": { "code": code, "message": message } }))
                }
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    streamed("application/connect+json", rx)
}
