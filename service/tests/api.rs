//! The HTTP API over a real socket: every endpoint, auth refusal, tenant isolation, rate and
//! concurrency limits (429), malformed input (4xx naming the field), real local runs with
//! streamed logs and cancellation, the OpenAPI document against the routes, and graceful
//! shutdown.

#![allow(clippy::unwrap_used)] // test set-up: a failed step should abort the test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ACME, ADMIN, GLOBEX, SOLO, TINY, TestServer, local_command, sse_events};
use serde_json::{Value, json};

fn hello() -> Value {
    json!({"language": "python", "command": "python3 -c 'print(1)'", "strategy": "optimize_latency"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_need_no_key() {
    let s = TestServer::start().await;
    let r = s.send("GET", "/healthz", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
    let r = s.send("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["model_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
}

/// Every endpoint but health refuses a request without a key, or with a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_but_health_needs_a_valid_key() {
    let s = TestServer::start().await;
    let body = serde_json::to_vec(&hello()).unwrap();
    let endpoints = [
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/route"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/some-id"),
        ("DELETE", "/v1/runs/some-id"),
        ("GET", "/v1/runs/some-id/logs"),
        ("GET", "/v1/policies"),
        ("POST", "/v1/policies"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/reload"),
        ("GET", "/v1/catalog"),
    ];
    for (method, path) in endpoints {
        let b = (method == "POST").then_some(&body[..]);
        let r = s.send(method, path, None, b).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        assert_eq!(r.code(), "unauthorized");
        assert!(r.message().contains("missing api key"), "{}", r.text());
        assert!(r.header("www-authenticate").is_some());
        let r = s.send(method, path, Some("not-a-key"), b).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        assert_eq!(r.message(), "invalid api key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_returns_an_explained_decision() {
    let s = TestServer::start().await;
    let r = s.post_json("/v1/route", ACME, &hello()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert!(d["decision_id"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(d["winner"].as_str().is_some_and(|w| w.contains('/')), "{d}");
    assert!(d["explanation"].as_str().unwrap().contains("feasible"));
    assert_eq!(d["strategy"]["kind"], "optimize_latency");
    assert!(d["n_candidates"].as_u64().unwrap() > 1);
    // The documented decision schema names exactly these fields.
    let r = s.get("/openapi.json", ACME).await;
    let doc = r.json();
    let documented: BTreeSet<String> = doc["components"]["schemas"]["DecisionDoc"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let actual: BTreeSet<String> = d.as_object().unwrap().keys().cloned().collect();
    assert_eq!(documented, actual);
    // Infeasible constraints: 422 naming the binding constraint.
    let mut impossible = hello();
    impossible["constraints"] = json!({"max_cost_usd": 1e-15});
    let r = s.post_json("/v1/route", ACME, &impossible).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.code(), "no_feasible_candidate");
    assert!(r.message().contains("max_cost_usd"), "{}", r.text());

    // `?view=summary`: the same decision with only the winner and the fallbacks.
    let full = d["candidates"].as_array().unwrap().len();
    let r = s.post_json("/v1/route?view=summary", ACME, &hello()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let summary = r.json();
    let kept: Vec<&str> = summary["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["candidate"]["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![summary["winner"].as_str().unwrap()];
    expected.extend(
        summary["fallbacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap()),
    );
    assert_eq!(kept, expected);
    assert!(kept.len() < full, "{} of {full}", kept.len());
    for (query, field) in [("view=everything", "view"), ("verbose=1", "verbose")] {
        let r = s
            .post_json(&format!("/v1/route?{query}"), ACME, &hello())
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(field), "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executes_locally_streams_its_logs_and_writes_telemetry() {
    let s = TestServer::start().await;
    let r = s
        .post_json(
            "/v1/runs",
            ACME,
            &local_command("echo hello; echo oops >&2; sleep 0.3; echo bye"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let accepted = r.json();
    let id = accepted["run_id"].as_str().unwrap().to_owned();
    assert!(
        accepted["candidate"]
            .as_str()
            .unwrap()
            .starts_with("local/")
    );
    assert_eq!(accepted["logs_url"], format!("/v1/runs/{id}/logs"));

    // The SSE stream carries the output and ends with the final state.
    let r = s.get(&format!("/v1/runs/{id}/logs"), ACME).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text());
    let stdout: String = events
        .iter()
        .filter(|(e, _)| e == "stdout")
        .map(|(_, d)| d.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        stdout.contains("hello") && stdout.contains("bye"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "stderr" && d.contains("oops")),
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap(),
        &("state".to_owned(), "completed".to_owned())
    );

    let v = s.wait_run(&id, ACME, |v| v["state"] == "completed").await;
    assert_eq!(v["result"]["status"], "ok", "{v}");
    assert_eq!(v["result"]["stdout"], "hello\nbye\n");
    assert_eq!(v["result"]["exit_code"], 0);
    assert_eq!(v["tenant"], "acme");
    let file = v["telemetry_file"].as_str().expect("telemetry written");
    assert!(std::path::Path::new(file).is_file(), "{file}");
    assert!(file.starts_with(s.dir.path().to_str().unwrap()));

    // Listing shows the run; a late log subscriber gets the whole log replayed.
    let r = s.get("/v1/runs", ACME).await;
    assert!(
        r.json()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["run_id"] == id)
    );
    let again = sse_events(&s.get(&format!("/v1/runs/{id}/logs"), ACME).await.text());
    assert_eq!(again, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_run() {
    let s = TestServer::start().await;
    let r = s
        .post_json("/v1/runs", ACME, &local_command("echo started; sleep 100"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    s.wait_run(&id, ACME, |v| v["state"] == "running").await;
    let r = s
        .send("DELETE", &format!("/v1/runs/{id}"), Some(ACME), None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = s.wait_run(&id, ACME, |v| v["state"] == "cancelled").await;
    assert_eq!(v["result"]["error_class"], "cancelled", "{v}");
    assert!(v["result"]["total_ms"].as_f64().unwrap() < 30_000.0);
    assert!(
        v["telemetry_file"].is_null(),
        "no telemetry for a cancelled run"
    );
    let r = s
        .send("DELETE", &format!("/v1/runs/{id}"), Some(ACME), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.code(), "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_runs() {
    let s = TestServer::start().await;
    let r = s
        .post_json("/v1/runs", ACME, &local_command("echo mine"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    s.wait_run(&id, ACME, |v| v["state"] == "completed").await;
    for (method, path) in [
        ("GET", format!("/v1/runs/{id}")),
        ("GET", format!("/v1/runs/{id}/logs")),
        ("DELETE", format!("/v1/runs/{id}")),
    ] {
        let r = s.send(method, &path, Some(GLOBEX), None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert_eq!(r.code(), "not_found");
    }
    let r = s.get("/v1/runs", GLOBEX).await;
    assert_eq!(r.json()["runs"], json!([]));
    // Another key of the same tenant sees it.
    assert_eq!(s.get(&format!("/v1/runs/{id}"), ADMIN).await.status, 200);
    // A request cannot claim another tenant.
    let mut other = local_command("true");
    other["tenant"] = json!("acme");
    let r = s.post_json("/v1/runs", GLOBEX, &other).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.message().contains("tenant"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let s = TestServer::start().await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let r = s.get("/v1/models", TINY).await;
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
        }
    }
    let r = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(statuses[0], 200);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.message().contains("tenant `tiny`"), "{}", r.text());
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1)
    );
    // Other tenants are not affected.
    assert_eq!(s.get("/v1/models", ACME).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_429() {
    let s = TestServer::start().await;
    let r = s
        .post_json("/v1/runs", SOLO, &local_command("sleep 100"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    let r = s.post_json("/v1/runs", SOLO, &local_command("true")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "concurrency_limited");
    assert!(r.message().contains("1 runs in flight"), "{}", r.text());
    // Routing is not a run: still allowed.
    assert_eq!(s.post_json("/v1/route", SOLO, &hello()).await.status, 200);
    s.send("DELETE", &format!("/v1/runs/{id}"), Some(SOLO), None)
        .await;
    s.wait_run(&id, SOLO, |v| v["state"] == "cancelled").await;
    let r = s.post_json("/v1/runs", SOLO, &local_command("true")).await;
    assert_eq!(r.status, 202, "the slot is free again: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_4xx_naming_the_field() {
    let s = TestServer::start_with(|c| c.body_limit_bytes = 64 * 1024).await;
    // (name, body, status, field named, text in the message)
    type Case = (
        &'static str,
        Vec<u8>,
        u16,
        Option<&'static str>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "truncated",
            br#"{"language": "python", "comma"#.to_vec(),
            400,
            None,
            "ends early",
        ),
        (
            "not json",
            b"language=python".to_vec(),
            400,
            None,
            "malformed JSON",
        ),
        ("empty", Vec::new(), 400, None, "empty"),
        (
            "array",
            b"[1, 2]".to_vec(),
            400,
            None,
            "must be a JSON object",
        ),
        (
            "wrong type",
            br#"{"language": "python", "command": "x", "timeout_s": "soon"}"#.to_vec(),
            400,
            Some("timeout_s"),
            "invalid type",
        ),
        (
            "nested wrong type",
            br#"{"language": "python", "command": "x", "resources": {"memory_mib": "lots"}}"#
                .to_vec(),
            400,
            Some("resources.memory_mib"),
            "invalid type",
        ),
        (
            "unknown strategy",
            br#"{"language": "python", "command": "x", "strategy": "fastest"}"#.to_vec(),
            400,
            Some("strategy"),
            "unknown variant `fastest`",
        ),
        (
            "unknown field",
            br#"{"language": "python", "command": "x", "priority": 9}"#.to_vec(),
            400,
            Some("priority"),
            "unknown field `priority`",
        ),
        (
            "unknown language",
            br#"{"language": "cobol", "command": "x"}"#.to_vec(),
            400,
            Some("language"),
            "unknown variant",
        ),
        (
            "rule broken",
            br#"{"language": "python", "command": "x", "resources": {"cpu": -1}}"#.to_vec(),
            400,
            Some("resources.cpu"),
            "vCPUs",
        ),
        (
            "missing command",
            br#"{"language": "python"}"#.to_vec(),
            400,
            Some("command"),
            "required",
        ),
        (
            "trailing data",
            br#"{"language": "python", "command": "x"} {}"#.to_vec(),
            400,
            None,
            "after the JSON value",
        ),
        (
            "huge body",
            {
                let mut b = br#"{"language": "python", "code": ""#.to_vec();
                b.extend(std::iter::repeat_n(b'x', 200 * 1024));
                b.extend_from_slice(br#""}"#);
                b
            },
            413,
            None,
            "larger than the limit of 65536 bytes",
        ),
    ];
    for path in ["/v1/route", "/v1/runs"] {
        for (name, body, status, field, needle) in &cases {
            let r = s.send("POST", path, Some(ACME), Some(body)).await;
            assert_eq!(r.status, *status, "{path} {name}: {}", r.text());
            let v = r.json();
            assert!(r.message().contains(needle), "{path} {name}: {v}");
            if let Some(f) = field {
                assert_eq!(v["error"]["fields"][0]["field"], *f, "{path} {name}: {v}");
                assert!(r.message().contains(f), "{path} {name}: {v}");
            }
        }
    }
    // Nothing ran, and no client mistake is ever a 5xx.
    assert_eq!(s.get("/v1/runs", ACME).await.json()["runs"], json!([]));
    let r = s.send("GET", "/v1/nope", Some(ACME), None).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = s.send("PUT", "/v1/route", Some(ACME), Some(b"{}")).await;
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_without_credentials_are_offered_nowhere() {
    let s = TestServer::start().await;
    let mut req = hello();
    // Only remote micro-VM providers qualify, and none has credentials in tests.
    req["constraints"] = json!({"min_isolation": "microvm"});
    for path in ["/v1/route", "/v1/runs"] {
        let r = s.post_json(path, ACME, &req).await;
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert_eq!(r.code(), "no_feasible_candidate", "{}", r.text());
        assert!(r.text().contains("availability"), "{}", r.text());
        assert!(r.text().contains("is not set"), "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policies_section_none_run_and_publishing_says_how_to_enable_it() {
    let s = TestServer::start().await;
    let r = s.get("/v1/policies", ACME).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"policies": []}));
    let r = s
        .send("POST", "/v1/policies", Some(ACME), Some(b"{}"))
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    assert!(r.message().contains("admin"));
    let r = s
        .send("POST", "/v1/policies", Some(ADMIN), Some(b"{}"))
        .await;
    assert_eq!((r.status, r.code().as_str()), (501, "not_implemented"));
    assert!(r.message().contains("[policies]"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_catalog_and_metrics() {
    let s = TestServer::start().await;
    let r = s.get("/v1/models", ACME).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let active = &r.json()["active"];
    let version = active["version"].as_str().unwrap().to_owned();
    assert!(
        active["models"]["latency_p50"]["num_trees"]
            .as_u64()
            .unwrap()
            > 0,
        "{active}"
    );
    assert!(active["models"]["failure"]["metrics"].is_object());

    let r = s.send("POST", "/v1/models/reload", Some(ACME), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.send("POST", "/v1/models/reload", Some(ADMIN), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], version);

    let r = s.get("/v1/catalog", ACME).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let candidates = c["candidates"].as_array().unwrap();
    assert!(
        candidates
            .iter()
            .any(|x| x["id"] == "local/process/local" && x["available_here"] == true),
        "{c}"
    );
    assert!(candidates.iter().all(|x| x["prices"]["source"].is_string()));
    assert!(!c["providers"].as_array().unwrap().is_empty());

    assert_eq!(s.post_json("/v1/route", ACME, &hello()).await.status, 200);
    let r = s.get("/metrics", ACME).await;
    assert_eq!(r.status, 403, "metrics need admin: {}", r.text());
    let r = s.get("/metrics", ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for metric in [
        "sandstorm_decisions_total{strategy=\"optimize_latency\"",
        "sandstorm_decide_duration_seconds_bucket",
        "sandstorm_http_requests_total",
        "sandstorm_policy_errors_total",
        "sandstorm_runs_in_flight",
    ] {
        assert!(text.contains(metric), "{metric} missing from\n{text}");
    }
}

/// Every operation of the OpenAPI document is a route of the server, and the document lists
/// exactly the routes the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let s = TestServer::start().await;
    let r = s.get("/openapi.json", ACME).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/route"),
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/{id}"),
        ("DELETE", "/v1/runs/{id}"),
        ("GET", "/v1/runs/{id}/logs"),
        ("GET", "/v1/policies"),
        ("POST", "/v1/policies"),
        ("GET", "/v1/models"),
        ("POST", "/v1/models/reload"),
        ("GET", "/v1/catalog"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);
    // Each documented operation reaches a handler (not the 404/405 fallbacks).
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "no-such-run");
        let body = (method == "POST").then_some(&b"{}"[..]);
        let r = s.send(method, &concrete, Some(ADMIN), body).await;
        let text = r.text();
        assert_ne!(r.status, 405, "{method} {path}: {text}");
        assert!(!text.contains("no route for"), "{method} {path}: {text}");
        assert!(r.status < 500 || r.status == 501, "{method} {path}: {text}");
    }
    // Every operation but health declares the api key.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let secured = op["security"].is_array();
        assert_eq!(secured, !path.ends_with("z"), "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_runs() {
    let mut s = TestServer::start().await;
    let r = s
        .post_json("/v1/runs", ACME, &local_command("sleep 1; echo drained"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    s.wait_run(&id, ACME, |v| v["state"] == "running").await;
    // Keep a log stream open across the shutdown: it ends with the run.
    let (addr, path) = (s.addr, format!("/v1/runs/{id}/logs"));
    let logs =
        tokio::spawn(async move { common::send(addr, "GET", &path, Some(ACME), None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = s.shutdown();
    let result = tokio::time::timeout(Duration::from_secs(60), stopped)
        .await
        .expect("stops in time")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let events = sse_events(&logs.await.unwrap().text());
    assert!(
        events
            .iter()
            .any(|(e, d)| e == "stdout" && d.contains("drained")),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap().1, "completed");
    // The socket is closed.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    // Draining compacted the run's telemetry row into Parquet.
    let batches = sandstorm_datasets::read_parquet_dir(&s.dir.path().join("telemetry")).unwrap();
    let rows: Vec<_> = batches
        .iter()
        .flat_map(|b| sandstorm_features::telemetry::from_record_batch(b).unwrap())
        .collect();
    assert!(rows.iter().any(|r| r.run_id == id), "{} rows", rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_runs_after_the_grace_period() {
    let mut s = TestServer::start_with(|c| c.shutdown_grace_s = 0.5).await;
    let r = s
        .post_json("/v1/runs", ACME, &local_command("sleep 100"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    s.wait_run(&id, ACME, |v| v["state"] == "running").await;
    let (addr, path) = (s.addr, format!("/v1/runs/{id}/logs"));
    let logs =
        tokio::spawn(async move { common::send(addr, "GET", &path, Some(ACME), None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), s.shutdown())
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    let events = sse_events(&logs.await.unwrap().text());
    assert_eq!(events.last().unwrap().1, "cancelled", "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exploring_service_logs_each_runs_selection_probability() {
    let mut s = TestServer::start_with(|c| {
        c.exploration = sandstorm_router::Exploration::EpsilonGreedy { epsilon: 1.0 };
    })
    .await;
    // ε = 1: every feasible candidate is chosen with probability 1 / n_feasible.
    let r = s.post_json("/v1/route", ACME, &local_command("true")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    let n = d["n_feasible"].as_f64().unwrap();
    assert!(
        (d["selection_probability"].as_f64().unwrap() - 1.0 / n).abs() < 1e-12,
        "{d}"
    );
    assert!(d["explored"].is_boolean());

    let r = s
        .post_json("/v1/runs", ACME, &local_command("echo explored"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["run_id"].as_str().unwrap().to_owned();
    s.wait_run(&id, ACME, |v| v["state"] == "completed").await;
    tokio::time::timeout(Duration::from_secs(60), s.shutdown())
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
    let batches = sandstorm_datasets::read_parquet_dir(&s.dir.path().join("telemetry")).unwrap();
    let rows: Vec<_> = batches
        .iter()
        .flat_map(|b| sandstorm_features::telemetry::from_record_batch(b).unwrap())
        .filter(|r| r.run_id == id)
        .collect();
    assert!(!rows.is_empty());
    for row in rows {
        let expected = 1.0 / f64::from(row.n_feasible);
        assert!(
            (row.selection_probability - expected).abs() < 1e-12,
            "{} with {} feasible",
            row.selection_probability,
            row.n_feasible
        );
    }
}
