//! Test double of the Kubernetes API server's core/v1 Pod endpoints, as kube-rs calls them:
//! `POST /api/v1/namespaces/{ns}/pods` (the double assigns `metadata.name` from
//! `generateName`), `GET .../pods/{name}` (phase `Pending` on the first poll, then `Running`,
//! then `Succeeded`/`Failed` with the container's `terminated` state once its log ended),
//! `GET .../pods/{name}/log?container=job&follow=true` (a chunked stream of the container's
//! output) and `DELETE .../pods/{name}`; and networking/v1 NetworkPolicies (`POST`/`DELETE`
//! `/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]`). Errors are
//! `Status` objects.
//!
//! The container's command really runs on this host when the log is requested (the adapter
//! points the job directory at a temporary directory): its stdout and stderr are the log, its
//! exit status the container's exit code.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use serde_json::json;

use super::{Recorder, Server, json, lock, serve, streamed};

#[derive(Debug, Clone, Default)]
pub(crate) struct Behavior {
    /// Answer the create with this status, reason and message.
    pub(crate) create_error: Option<(u16, &'static str, &'static str)>,
    /// Keep the container waiting with this reason and message.
    pub(crate) waiting: Option<(&'static str, &'static str)>,
    /// Report the container as `OOMKilled` (exit code 137) instead of its real exit.
    pub(crate) oom: bool,
}

#[derive(Debug, Default)]
struct PodState {
    pod: serde_json::Value,
    polls: u32,
    /// The container's exit code, once it ended.
    exit: Option<i32>,
}

#[derive(Debug, Default)]
pub(crate) struct KubernetesDouble {
    pub(crate) recorder: Recorder,
    behavior: Mutex<Behavior>,
    pods: Mutex<BTreeMap<String, PodState>>,
    created: Mutex<u32>,
    pub(crate) deleted: Mutex<Vec<String>>,
    /// NetworkPolicies alive: name → object.
    pub(crate) policies: Mutex<BTreeMap<String, serde_json::Value>>,
    pub(crate) deleted_policies: Mutex<Vec<String>>,
}

impl KubernetesDouble {
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

    pub(crate) fn alive(&self) -> Vec<String> {
        lock(&self.pods).keys().cloned().collect()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    json(
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

async fn handle(State(double): State<Arc<KubernetesDouble>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let recorded = double
        .recorder
        .record(&parts.method, &parts.uri, &parts.headers, &body);
    let behavior = lock(&double.behavior).clone();
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => {
            if let Some((code, reason, message)) = behavior.create_error {
                return status(code, reason, message);
            }
            let mut pod = recorded.json();
            let n = {
                let mut created = lock(&double.created);
                *created += 1;
                *created
            };
            let prefix = pod["metadata"]["generateName"]
                .as_str()
                .unwrap_or("pod-")
                .to_owned();
            let name = format!("{prefix}{n:05}");
            pod["metadata"]["name"] = name.clone().into();
            pod["metadata"]["namespace"] = (*ns).into();
            pod["metadata"]["uid"] = format!("uid-{n}").into();
            pod["status"] = json!({ "phase": "Pending" });
            lock(&double.pods).insert(
                name,
                PodState {
                    pod: pod.clone(),
                    ..PodState::default()
                },
            );
            json(201, pod)
        }
        (&Method::GET, ["api", "v1", "namespaces", _, "pods", name]) => {
            let mut pods = lock(&double.pods);
            let Some(state) = pods.get_mut(*name) else {
                return status(404, "NotFound", &format!("pods \"{name}\" not found"));
            };
            state.polls += 1;
            let mut pod = state.pod.clone();
            pod["status"] = match (state.polls, behavior.waiting, state.exit) {
                (_, Some((reason, message)), _) => json!({
                    "phase": "Pending",
                    "containerStatuses": [{ "name": "job", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                        "state": { "waiting": { "reason": reason, "message": message } } }],
                }),
                (1, None, _) => json!({
                    "phase": "Pending",
                    "containerStatuses": [{ "name": "job", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                        "state": { "waiting": { "reason": "ContainerCreating" } } }],
                }),
                (_, None, None) => json!({
                    "phase": "Running",
                    "containerStatuses": [{ "name": "job", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                        "state": { "running": { "startedAt": "2026-11-30T00:00:00Z" } } }],
                }),
                (_, None, Some(code)) => {
                    let (code, reason) = if behavior.oom {
                        (137, "OOMKilled")
                    } else if code == 0 {
                        (0, "Completed")
                    } else {
                        (code, "Error")
                    };
                    json!({
                        "phase": if code == 0 { "Succeeded" } else { "Failed" },
                        "containerStatuses": [{ "name": "job", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                            "state": { "terminated": { "exitCode": code, "reason": reason } } }],
                    })
                }
            };
            json(200, pod)
        }
        (&Method::GET, ["api", "v1", "namespaces", _, "pods", name, "log"]) => {
            logs(&double, name, &recorded.query)
        }
        (&Method::DELETE, ["api", "v1", "namespaces", _, "pods", name]) => {
            let Some(state) = lock(&double.pods).remove(*name) else {
                return status(404, "NotFound", &format!("pods \"{name}\" not found"));
            };
            lock(&double.deleted).push((*name).to_owned());
            let mut pod = state.pod;
            pod["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:01Z".into();
            json(200, pod)
        }
        (
            &Method::POST,
            [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                ns,
                "networkpolicies",
            ],
        ) => {
            let mut policy = recorded.json();
            let Some(name) = policy["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(422, "Invalid", "metadata.name: Required value");
            };
            policy["metadata"]["namespace"] = (*ns).into();
            lock(&double.policies).insert(name, policy.clone());
            json(201, policy)
        }
        (
            &Method::DELETE,
            [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                _,
                "networkpolicies",
                name,
            ],
        ) => {
            let Some(policy) = lock(&double.policies).remove(*name) else {
                return status(
                    404,
                    "NotFound",
                    &format!("networkpolicies.networking.k8s.io \"{name}\" not found"),
                );
            };
            lock(&double.deleted_policies).push((*name).to_owned());
            json(200, policy)
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// Runs the pod's container command and streams its output as the log.
fn logs(double: &Arc<KubernetesDouble>, name: &str, query: &BTreeMap<String, String>) -> Response {
    if query.get("follow").map(String::as_str) != Some("true")
        || query.get("container").map(String::as_str) != Some("job")
    {
        return status(400, "BadRequest", "expected container=job&follow=true");
    }
    let command: Vec<String> = {
        let pods = lock(&double.pods);
        let Some(state) = pods.get(name) else {
            return status(404, "NotFound", &format!("pods \"{name}\" not found"));
        };
        state.pod["spec"]["containers"][0]["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let double = Arc::clone(double);
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let Some((program, args)) = command.split_first() else {
            return;
        };
        let Ok(mut child) = std::process::Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return;
        };
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut reader| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buffer = [0_u8; 4096];
                while let Ok(n) = reader.read(&mut buffer) {
                    if n == 0 || tx.blocking_send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        for reader in readers {
            let _ = reader.join();
        }
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        if let Some(state) = lock(&double.pods).get_mut(&name) {
            state.exit = Some(code);
        }
        // Give the status a moment to "lag" behind the log, as a kubelet's does.
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
    });
    streamed("text/plain", rx)
}
