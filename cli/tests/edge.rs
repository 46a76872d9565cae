//! Edge agents end to end: two `sandstorm agent` processes on loopback ports stand for two
//! sites; `sandstorm run` routes to each by the request's constraints, the job runs on that
//! agent, and the telemetry row names it. Requests without the agent's token are refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};

use arrow::array::{Array, StringArray};
use common::{bin, models, text};

const TOKEN: &str = "edge-test-token-0123456789abcdef";

/// A running agent, killed on drop.
struct AgentProcess {
    child: Child,
    addr: String,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(name: &str, region: &str, token_file: &Path) -> AgentProcess {
    let mut child = bin()
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
            "--name",
            name,
            "--region",
            region,
            "--gvisor-pool",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the agent exited before listening")
            .expect("read agent stderr");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stderr so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    AgentProcess { child, addr }
}

/// The default catalog with `edge-fra` enabled at `fra` and a second agent `edge-par`
/// (region eu-west) at `par`.
fn catalog(fra: &str, par: &str) -> String {
    let default = sandstorm_features::DEFAULT_CATALOG_TOML;
    let start = default
        .find("[[providers]]\nname = \"edge-fra\"")
        .expect("edge-fra in the default catalog");
    let rest = &default[start + 1..];
    let end = rest
        .find("[[providers]]")
        .map_or(default.len(), |i| start + 1 + i);
    let block = &default[start..end];
    let fra_block = block
        .replace("enabled = false", "enabled = true")
        .replace("http://127.0.0.1:7701", &format!("http://{fra}"));
    let par_block = fra_block
        .replace("edge-fra", "edge-par")
        .replace("eu-central", "eu-west")
        .replace(fra, par);
    format!(
        "{}{}{}\n{}",
        &default[..start],
        fra_block,
        &default[end..],
        par_block
    )
}

fn request(dir: &Path, name: &str, provider: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "language: python\ncode: |\n  import os\n  print('hi from', '{provider}', os.getcwd())\ntimeout_s: 20\nconstraints:\n  allowed_providers: [{provider}]\n"
        ),
    )
    .unwrap();
    path
}

fn providers_in(telemetry: &Path) -> Vec<String> {
    let batches = sandstorm_datasets::read_parquet_dir(telemetry).expect("telemetry");
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name("provider")
            .expect("provider column")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings")
            .clone();
        out.extend((0..col.len()).map(|i| col.value(i).to_owned()));
    }
    out
}

/// The status code of a raw HTTP request to `addr`.
fn status_of(addr: &str, head: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(head.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn jobs_routed_to_edge_agents_run_there_and_telemetry_names_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let fra = start_agent("edge-fra", "eu-central", &token_file);
    let par = start_agent("edge-par", "eu-west", &token_file);
    let catalog_file = tmp.path().join("catalog.toml");
    std::fs::write(&catalog_file, catalog(&fra.addr, &par.addr)).unwrap();

    for agent in ["edge-fra", "edge-par"] {
        let telemetry = tmp.path().join(format!("telemetry-{agent}"));
        let o = bin()
            .env("SANDSTORM_EDGE_TOKEN", TOKEN)
            .args([
                "run",
                "--models",
                models().to_str().unwrap(),
                "--catalog",
                catalog_file.to_str().unwrap(),
                "--request",
                request(tmp.path(), agent, agent).to_str().unwrap(),
                "--telemetry-out",
                telemetry.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{agent}: {out}{err}");
        // The job ran in the agent's sandbox (bubblewrap's job directory is /work).
        assert_eq!(out.trim(), format!("hi from {agent} /work"), "{err}");
        assert!(err.contains(&format!("on {agent}/")), "{err}");
        assert_eq!(providers_in(&telemetry), vec![agent.to_owned()]);
    }

    // Without the token the router does not offer the agent, and says why.
    let o = bin()
        .args([
            "route",
            "--models",
            models().to_str().unwrap(),
            "--catalog",
            catalog_file.to_str().unwrap(),
            "--request",
            request(tmp.path(), "no-token", "edge-fra")
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(err.contains("SANDSTORM_EDGE_TOKEN_EDGE_FRA"), "{err}");

    // The agent itself refuses requests without its token, or with another one.
    let body = "{\"language\":\"sh\",\"command\":\"true\"}";
    for auth in ["", "Authorization: Bearer not-the-token-at-all-000\r\n"] {
        let head = format!(
            "POST /v1/agent/runs?backend=bubblewrap HTTP/1.1\r\nHost: agent\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(status_of(&fra.addr, &head), 401, "auth {auth:?}");
    }
    let health = "GET /v1/agent/health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&fra.addr, health), 200);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_agent_opens_its_breaker_and_recovers_after_the_cooldown() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let fra_addr = format!("127.0.0.1:{}", free_port());
    let par_addr = format!("127.0.0.1:{}", free_port());
    let catalog_file = tmp.path().join("catalog.toml");
    std::fs::write(&catalog_file, catalog(&fra_addr, &par_addr)).unwrap();
    let state = tmp.path().join("breakers.json");
    let req = request(tmp.path(), "fra", "edge-fra");
    let sandstorm = |command: &str| {
        let mut args = vec![
            command,
            "--models",
            models().to_str().unwrap(),
            "--catalog",
            catalog_file.to_str().unwrap(),
            "--request",
            req.to_str().unwrap(),
            "--breaker-state",
            state.to_str().unwrap(),
            "--breaker-threshold",
            "2",
            "--breaker-cooldown-s",
            "2",
        ];
        let telemetry = tmp.path().join("telemetry");
        if command == "run" {
            args.extend(["--telemetry-out", telemetry.to_str().unwrap()]);
        }
        let o = bin()
            .env("SANDSTORM_EDGE_TOKEN", TOKEN)
            .args(&args)
            .output()
            .unwrap();
        let (out, err) = text(&o);
        (o.status.success(), out, err)
    };
    // Nothing listens: each run's only candidate fails to connect (retryable, no fallback).
    for _ in 0..2 {
        let (ok, out, err) = sandstorm("run");
        assert!(!ok, "{out}{err}");
        assert!(err.contains("attempt 0 on edge-fra"), "{err}");
    }
    let (ok, out, err) = sandstorm("route");
    assert!(!ok, "{out}");
    assert!(
        err.contains("circuit open for edge-fra/eu-central"),
        "{err}"
    );
    let o = bin()
        .args(["status", "--breaker-state", state.to_str().unwrap()])
        .output()
        .unwrap();
    let (out, _) = text(&o);
    assert!(
        out.contains("edge-fra/eu-central") && out.contains("open"),
        "{out}"
    );

    // The agent comes up; after the cooldown one probe goes through, succeeds, and closes it.
    let _agent = {
        let mut child = bin()
            .args([
                "agent",
                "--listen",
                &fra_addr,
                "--token-file",
                token_file.to_str().unwrap(),
                "--name",
                "edge-fra",
                "--region",
                "eu-central",
                "--gvisor-pool",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))),
            "the agent did not start"
        );
        std::thread::spawn(move || for _ in lines {});
        AgentProcess {
            child,
            addr: fra_addr.clone(),
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (ok, out, err) = sandstorm("run");
    assert!(ok, "{out}{err}");
    assert!(out.contains("hi from edge-fra"), "{out}");
    let (ok, out, err) = sandstorm("route");
    assert!(ok, "{out}{err}");
    assert!(out.contains("edge-fra/bubblewrap/eu-central"), "{out}");
}
