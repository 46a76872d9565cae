//! End-to-end tests of the `sandstorm` binary: the quickstart, routing, running on real local
//! backends, and clear errors for bad input. One model set is trained per test binary.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{models, python, repo, route_with_models, run, text};
use serde_json::Value;

#[test]
fn quickstart_runs_the_whole_loop_and_its_telemetry_reads_back_with_pyarrow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let o = run(&[
        "quickstart",
        "--rows",
        "5000",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("quickstart ok"), "{out}");
    assert!(
        out.contains("hello-python") && out.contains("local/bubblewrap/local"),
        "{out}"
    );
    let script = r#"
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
rows = t.to_pylist()
assert len(rows) >= 5, len(rows)
for r in rows:
    assert r["source"] == "runtime" and r["provider"] == "local", r
    assert r["model_version"] and r["decision_scores"], r
statuses = sorted(r["status"] for r in rows)
print(len(rows), ",".join(statuses))
"#;
    let o = Command::new(python())
        .args(["-c", script, dir.join("telemetry/runs").to_str().unwrap()])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "pyarrow could not read the telemetry: {out}{err}"
    );
    assert!(
        out.contains("timeout") && out.contains("ok") && out.contains("failed"),
        "{out}"
    );
}

#[test]
fn route_json_lists_every_candidate_and_the_winner_meets_every_constraint() {
    let req = repo("examples/requests/hello-python.yaml");
    let o = route_with_models(&req, &["--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let candidates = d["candidates"].as_array().unwrap();
    let catalog = sandstorm_features::Catalog::default_catalog();
    assert_eq!(candidates.len(), catalog.candidates().len());
    for c in candidates {
        let status = c["verdict"]["status"].as_str().unwrap();
        if status == "filtered" {
            assert!(!c["verdict"]["reason"].as_str().unwrap().is_empty());
        } else {
            assert!(
                c["prediction"]["latency_p95_ms"].as_f64().unwrap() > 0.0,
                "{c}"
            );
            assert!(c["prediction"]["cost_usd"].as_f64().unwrap() > 0.0, "{c}");
        }
    }
    let winner = &candidates[0];
    assert_eq!(winner["verdict"]["status"], "winner");
    assert_eq!(winner["candidate"]["id"], d["winner"]);
    // hello-python: min_isolation namespace, max_latency_ms 10000, optimize_cost.
    let level = winner["candidate"]["backend"].as_str().unwrap();
    assert!(level != "process", "process isolation is below namespace");
    assert!(winner["prediction"]["latency_p95_ms"].as_f64().unwrap() <= 10000.0);
    // optimize_cost: no feasible candidate has a lower expected cost.
    let best = winner["prediction"]["expected_cost_usd"].as_f64().unwrap();
    for c in candidates
        .iter()
        .filter(|c| c["verdict"]["status"] != "filtered")
    {
        assert!(c["prediction"]["expected_cost_usd"].as_f64().unwrap() >= best);
    }
    // Up to 3 fallbacks, as many as there are other feasible candidates (remote providers
    // without credentials are not offered).
    let feasible = candidates
        .iter()
        .filter(|c| c["verdict"]["status"] != "filtered")
        .count();
    assert_eq!(
        d["fallbacks"].as_array().unwrap().len(),
        (feasible - 1).min(3)
    );
}

#[test]
fn route_table_explains_the_decision() {
    let req = repo("examples/requests/hello-python.yaml");
    let o = route_with_models(&req, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("WINNER") && out.contains("feasible candidates"),
        "{out}"
    );
    assert!(out.contains("constraints.min_isolation"), "{out}");
}

#[test]
fn impossible_constraints_name_the_binding_ones() {
    let req = repo("examples/requests/impossible.yaml");
    let o = route_with_models(&req, &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no candidate meets the request"), "{err}");
    assert!(err.contains("constraints.min_isolation removed"), "{err}");
    // The remote micro-VM providers that would qualify have no credentials here: the error
    // says which variable is missing.
    assert!(
        err.contains("availability removed") && err.contains("E2B_API_KEY is not set"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_requests_get_field_level_errors() {
    let cases = [
        ("bad-type.json", "resources.cpu"),
        ("unknown-field.yaml", "stratgy"),
        ("invalid-values.json", "resources.memory_mib"),
        ("truncated.json", "json"),
    ];
    for (file, needle) in cases {
        let req = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(file);
        let o = route_with_models(&req, &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(needle), "{file}: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
    }
    let invalid = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid-values.json");
    let (_, err) = text(&route_with_models(&invalid, &[]));
    for field in [
        "command",
        "resources.cpu",
        "resources.memory_mib",
        "timeout_s",
    ] {
        assert!(
            err.contains(field),
            "all invalid fields are reported at once: {err}"
        );
    }
}

#[test]
fn missing_model_dir_and_catalog_typo_are_clear_errors() {
    let req = repo("examples/requests/hello-python.yaml");
    let o = run(&[
        "route",
        "--models",
        "/nonexistent/models",
        "--request",
        req.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("model directory /nonexistent/models") && err.contains("sandstorm train"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let catalog = tmp.path().join("catalog.toml");
    let typo = sandstorm_features::DEFAULT_CATALOG_TOML.replacen("gib_second", "gib_secnod", 1);
    std::fs::write(&catalog, typo).unwrap();
    let o = route_with_models(&req, &["--catalog", catalog.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("gib_secnod") && err.contains("line"), "{err}");
    let o = run(&["catalog", "check", "--catalog", catalog.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

fn request_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn run_request(body: &str) -> (Output, Value, PathBuf) {
    let tmp = tempfile::tempdir().unwrap().keep();
    let req = request_file(&tmp, "req.yaml", body);
    let telemetry = tmp.join("telemetry");
    let o = run(&[
        "run",
        "--models",
        models().to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
        "--telemetry-out",
        telemetry.to_str().unwrap(),
        "--json",
    ]);
    let (out, err) = text(&o);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (o, v, telemetry)
}

const BWRAP: &str = "constraints:\n  allowed_providers: [local]\n  min_isolation: namespace\n";

#[test]
fn run_on_bubblewrap_prints_the_programs_output() {
    let (o, v, telemetry) = run_request(&format!(
        "language: python\ncommand: python3 -c 'print(1)'\ntimeout_s: 10\n{BWRAP}"
    ));
    assert!(o.status.success(), "{v}");
    assert_eq!(v["decision"]["winner"], "local/bubblewrap/local");
    assert_eq!(v["result"]["stdout"], "1\n");
    assert_eq!(v["result"]["status"], "ok");
    let rows = std::fs::read_dir(&telemetry).unwrap().count();
    assert_eq!(rows, 1, "one telemetry file per run");

    // Without --json the program's output is printed as is.
    let tmp = tempfile::tempdir().unwrap();
    let req = request_file(
        tmp.path(),
        "r.yaml",
        &format!("language: python\ncommand: python3 -c 'print(1)'\n{BWRAP}"),
    );
    let o = run(&[
        "run",
        "--models",
        models().to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
        "--telemetry-out",
        tmp.path().join("t").to_str().unwrap(),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1\n");
}

#[test]
fn network_access_fails_inside_the_sandbox() {
    // A listener on the host's loopback: reachable from the host, not from the sandbox's own
    // network namespace.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('blocked', e)\n    sys.exit(7)\n"
    );
    let body = format!(
        "language: python\ncode: {}\ntimeout_s: 10\n{BWRAP}",
        serde_json::to_string(&code).unwrap()
    );
    let (o, v, _) = run_request(&body);
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["result"]["status"], "failed");
    assert_eq!(v["result"]["exit_code"], 7);
    assert!(
        v["result"]["stdout"]
            .as_str()
            .unwrap()
            .starts_with("blocked"),
        "{v}"
    );
}

#[test]
fn sleep_beyond_the_timeout_is_killed_with_timeout_status() {
    let started = std::time::Instant::now();
    let (o, v, _) = run_request(&format!(
        "language: sh\ncommand: sleep 100\ntimeout_s: 1\n{BWRAP}"
    ));
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["result"]["status"], "timeout");
    assert!(started.elapsed().as_secs() < 60, "the sleep was not killed");
}

#[test]
fn providers_without_credentials_are_offered_nowhere() {
    let req = repo("examples/requests/untrusted-microvm.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "--models",
        models().to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
        "--telemetry-out",
        tmp.path().to_str().unwrap(),
        "--breaker-state",
        tmp.path().join("breakers.json").to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("availability") && err.contains("E2B_API_KEY is not set"),
        "{err}"
    );
}
