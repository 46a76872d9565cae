//! `sandstorm serve` and `sandstorm mcp` as a user starts them: the HTTP service from a
//! configuration file (answers, stops cleanly on SIGTERM), and the MCP server driven by the
//! real Python MCP client (`mcp` from PyPI, installed by scripts/setup.sh): tools listed and
//! callable, `run` returns the program's output, resources for logs and artifacts.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Service, http_get};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandstorm"));
    for var in [
        "SANDSTORM_MODELS",
        "SANDSTORM_CATALOG",
        "SANDSTORM_TELEMETRY",
        "SANDSTORM_SERVICE_CONFIG",
        "SANDSTORM_LISTEN",
    ] {
        c.env_remove(var);
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A model directory trained once with the CLI on simulated telemetry.
fn models() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = tmp.path().join("telemetry");
        let models = tmp.path().join("models");
        let o = bin()
            .args([
                "datasets", "generate", "--rows", "3000", "--seed", "3", "--out",
            ])
            .arg(&telemetry)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let o = bin()
            .args(["train", "--telemetry"])
            .arg(&telemetry)
            .arg("--out")
            .arg(&models)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        (tmp, models)
    })
    .1
}

#[test]
fn serve_answers_with_its_config_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "test-key-123";
    let hash = sandstorm_service::hash_api_key(key);
    let config = tmp.path().join("service.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmodels_dir = {:?}\ntelemetry_dir = \"telemetry\"\n\n[[api_keys]]\nsha256 = \"{hash}\"\ntenant = \"acme\"\n",
            models()
        ),
    )
    .unwrap();
    let mut service = Service::start_with(bin(), &config);
    let addr = service.addr.clone();
    assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    let (status, body) = http_get(&addr, "/v1/models", Some(key));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\""), "{body}");
    assert_eq!(http_get(&addr, "/v1/models", None).0, 401);

    let pid = service.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn api_key_prints_a_key_and_its_hash() {
    let o = bin()
        .args(["api-key", "--tenant", "acme", "--admin"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let key = out
        .lines()
        .find_map(|l| l.split(": ").nth(1).filter(|k| k.starts_with("ss_")))
        .unwrap();
    assert!(out.contains(&sandstorm_service::hash_api_key(key)), "{out}");
    assert!(out.contains("tenant = \"acme\"") && out.contains("scopes = [\"admin\"]"));
}

const MCP_CLIENT: &str = r#"
import asyncio, json, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")

async def main():
    binary, models, telemetry = sys.argv[1:4]
    params = StdioServerParameters(
        command=binary, args=["mcp", "--models", models, "--telemetry-out", telemetry])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "sandstorm", init.server_info
            tools = await session.list_tools()
            names = sorted(t.name for t in tools.tools)
            assert names == ["get_run", "list_backends", "route", "run"], names
            run_tool = next(t for t in tools.tools if t.name == "run")
            assert "language" in run_tool.input_schema["properties"], run_tool.input_schema

            local = {"allowed_providers": ["local"]}
            r = await session.call_tool("run", {
                "language": "python", "code": "import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)",
                "constraints": local})
            assert not r.is_error, text_of(r)
            assert "42" in text_of(r), text_of(r)
            run = r.structured_content
            assert run["state"] == "completed", run
            assert run["result"]["stdout"] == "42\n", run
            assert run["result"]["status"] == "ok", run
            run_id = run["run_id"]

            failing = await session.call_tool("run", {
                "language": "sh", "command": "echo bad >&2; exit 3", "constraints": local})
            assert failing.structured_content["result"]["exit_code"] == 3, failing
            assert "bad" in text_of(failing)

            r = await session.call_tool("route", {
                "language": "python", "command": "python3 -V", "strategy": "optimize_latency"})
            assert not r.is_error, text_of(r)
            assert "/" in r.structured_content["winner"], r.structured_content
            assert r.structured_content["explanation"] == text_of(r)

            r = await session.call_tool("get_run", {"run_id": run_id})
            assert r.structured_content["result"]["stdout"] == "42\n", r
            r = await session.call_tool("get_run", {"run_id": "nope"})
            assert r.is_error and "nope" in text_of(r), r

            r = await session.call_tool("list_backends", {})
            backends = {b["backend"]: b for b in r.structured_content["local_backends"]}
            assert backends["process"]["available"], backends
            assert any(c["executable_here"] for c in r.structured_content["candidates"])

            bad = await session.call_tool("run", {
                "language": "python", "code": "print(1)", "strategy": "fastest"})
            assert bad.is_error and "strategy" in text_of(bad), text_of(bad)
            remote = await session.call_tool("run", {
                "language": "python", "code": "print(1)", "constraints": {"min_isolation": "microvm"}})
            # Remote micro-VM providers have no credentials here: offered nowhere, and the
            # error says which variable is missing.
            assert remote.is_error and "E2B_API_KEY is not set" in text_of(remote), text_of(remote)

            resources = await session.list_resources()
            uris = {str(res.uri) for res in resources.resources}
            base = f"sandstorm://runs/{run_id}"
            for suffix in ["/logs", "/artifacts/stdout.txt", "/artifacts/stderr.txt", "/artifacts/result.json"]:
                assert base + suffix in uris, (suffix, uris)
            logs = await session.read_resource(base + "/logs")
            assert "42" in logs.contents[0].text and "state: completed" in logs.contents[0].text, logs
            out = await session.read_resource(base + "/artifacts/stdout.txt")
            assert out.contents[0].text == "42\n", out
            err = await session.read_resource(base + "/artifacts/stderr.txt")
            assert err.contents[0].text == "warn\n", err
            result = json.loads((await session.read_resource(base + "/artifacts/result.json")).contents[0].text)
            assert result["result"]["exit_code"] == 0, result
            templates = await session.list_resource_templates()
            assert len(templates.resource_templates) == 2, templates
            print("MCP_OK", init.protocol_version, ",".join(names))

asyncio.run(main())
"#;

#[test]
fn mcp_tools_work_from_the_python_mcp_client() {
    let python = std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let check = Command::new(&python).args(["-c", "import mcp"]).output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "the Python `mcp` package is missing for {python}: run `. scripts/setup.sh` (it installs it into the venv and sets SANDSTORM_PYTHON)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = tmp.path().join("telemetry");
    let o = Command::new(&python)
        .arg("-c")
        .arg(MCP_CLIENT)
        .arg(env!("CARGO_BIN_EXE_sandstorm"))
        .arg(models())
        .arg(&telemetry)
        .env_remove("SANDSTORM_MODELS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MCP_OK"), "{}", text(&o));
    // Both executed runs left a telemetry row (published when the server's writer closed, or
    // recovered from its write-ahead log by the next writer).
    let options = sandstorm_datasets::WriterOptions {
        background: false,
        ..Default::default()
    };
    sandstorm_datasets::TelemetryWriter::open(&telemetry, options)
        .unwrap()
        .close()
        .unwrap();
    let rows: usize = sandstorm_datasets::read_parquet_dir(&telemetry)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 2, "{}", text(&o));
}
