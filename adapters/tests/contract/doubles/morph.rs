//! Test double of Morph Cloud's API: `POST /instance?snapshot_id=...`, `GET /instance/{id}`
//! (`pending` on the first poll, then `ready` or a scripted `error`), `POST
//! /instance/{id}/exec` with `{"command": [argv]}` answering `{"exit_code", "stdout",
//! "stderr"}`, and `DELETE /instance/{id}`. Auth is `Authorization: Bearer`; errors are
//! `{"detail": ...}` bodies.
//!
//! Exec really runs the argument vector on this host (the adapter points the job directory at
//! a temporary directory), so the files and quoting the adapter embeds in the command are
//! checked end to end.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use serde_json::json;

use super::{Recorder, Server, json, lock, serve};

pub(crate) const API_KEY: &str = "morph_test_key_42";
pub(crate) const SNAPSHOT: &str = "snapshot_abc123";

#[derive(Debug, Clone, Default)]
pub(crate) struct Behavior {
    pub(crate) create_error: Option<(u16, serde_json::Value)>,
    pub(crate) exec_error: Option<(u16, serde_json::Value)>,
    /// Report status `error` instead of `ready`.
    pub(crate) fail_start: bool,
    /// Hold exec open until the instance is deleted.
    pub(crate) hold_exec: bool,
}

#[derive(Debug, Default)]
pub(crate) struct MorphDouble {
    pub(crate) recorder: Recorder,
    behavior: Mutex<Behavior>,
    alive: Mutex<BTreeSet<String>>,
    polls: Mutex<u32>,
    created: Mutex<u32>,
    pub(crate) deleted: Mutex<Vec<String>>,
}

impl MorphDouble {
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
}

fn detail(status: u16, message: &str) -> Response {
    json(status, json!({ "detail": message }))
}

fn instance(id: &str, status: &str) -> serde_json::Value {
    json!({
        "id": id,
        "object": "instance",
        "status": status,
        "refs": { "snapshot_id": SNAPSHOT, "image_id": "morphvm-minimal" },
        "spec": { "vcpus": 1, "memory": 4096, "disk_size": 16384 },
        "metadata": {},
    })
}

async fn handle(State(double): State<Arc<MorphDouble>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let recorded = double
        .recorder
        .record(&parts.method, &parts.uri, &parts.headers, &body);
    if recorded.header("authorization") != Some(&format!("Bearer {API_KEY}")) {
        return detail(401, "Invalid API key");
    }
    let behavior = lock(&double.behavior).clone();
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["instance"]) => {
            if let Some((status, body)) = behavior.create_error {
                return json(status, body);
            }
            if recorded.query.get("snapshot_id").map(String::as_str) != Some(SNAPSHOT) {
                return detail(404, "Snapshot not found");
            }
            let id = {
                let mut created = lock(&double.created);
                *created += 1;
                format!("morphvm_{created}")
            };
            lock(&double.alive).insert(id.clone());
            json(200, instance(&id, "pending"))
        }
        (&Method::GET, ["instance", id]) => {
            if !lock(&double.alive).contains(*id) {
                return detail(404, "Instance not found");
            }
            let polls = {
                let mut polls = lock(&double.polls);
                *polls += 1;
                *polls
            };
            let status = match (polls, behavior.fail_start) {
                (1, _) => "pending",
                (_, true) => "error",
                _ => "ready",
            };
            json(200, instance(id, status))
        }
        (&Method::POST, ["instance", id, "exec"]) => {
            if !lock(&double.alive).contains(*id) {
                return detail(404, "Instance not found");
            }
            if let Some((status, body)) = behavior.exec_error {
                return json(status, body);
            }
            if behavior.hold_exec {
                while lock(&double.alive).contains(*id) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return detail(502, "instance stopped");
            }
            let argv: Vec<String> = recorded.json()["command"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let Some((program, args)) = argv.split_first() else {
                return detail(422, "command must be a non-empty list");
            };
            let output = std::process::Command::new(program).args(args).output();
            match output {
                Ok(out) => json(
                    200,
                    json!({
                        "exit_code": out.status.code().unwrap_or(-1),
                        "stdout": String::from_utf8_lossy(&out.stdout),
                        "stderr": String::from_utf8_lossy(&out.stderr),
                    }),
                ),
                Err(e) => detail(500, &e.to_string()),
            }
        }
        (&Method::DELETE, ["instance", id]) => {
            if !lock(&double.alive).remove(*id) {
                return detail(404, "Instance not found");
            }
            lock(&double.deleted).push((*id).to_owned());
            json(200, json!({}))
        }
        _ => detail(404, "Not Found"),
    }
}
