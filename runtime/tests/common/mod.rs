//! Helpers shared by the integration tests: building jobs, picking a backend, and looking for
//! surviving processes in `/proc`.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use sandstorm_features::{IsolationBackend, Language, RunRequest};
use sandstorm_runtime::{Backend, Engine, JobSpec, RunResult};

/// A `sh -c` job with the request defaults and the given wall-clock limit.
pub fn command(cmd: &str, timeout_s: f64) -> JobSpec {
    let mut request = RunRequest::command(Language::Sh, cmd);
    request.timeout_s = timeout_s;
    JobSpec::from_request(&request)
}

/// An inline-code job.
pub fn code(language: Language, code: &str, timeout_s: f64) -> JobSpec {
    let mut request = RunRequest::command(language, "unused");
    request.command = None;
    request.code = Some(code.to_owned());
    request.timeout_s = timeout_s;
    JobSpec::from_request(&request)
}

pub fn run(engine: &Engine, backend: IsolationBackend, job: &JobSpec) -> RunResult {
    let backend: &dyn Backend = engine
        .backend(backend)
        .unwrap_or_else(|| panic!("engine has no {backend} backend"));
    match backend.run(job) {
        Ok(result) => result,
        Err(e) => panic!("run failed: {e}"),
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn live_in_group(pgid: i32) -> Vec<i32> {
    live_processes()
        .into_iter()
        .filter(|(_, stat, _)| {
            // stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgid)
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Live processes whose command line contains `token`.
pub fn live_with_token(token: &str) -> Vec<i32> {
    live_processes()
        .into_iter()
        .filter(|(_, _, cmdline)| cmdline.contains(token))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// (pid, stat, cmdline) of every process not in the zombie state.
fn live_processes() -> Vec<(i32, String, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            if state == "Z" || state == "X" {
                return None;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, stat, cmdline))
        })
        .collect()
}

/// Polls `found` until it returns nothing (SIGKILL is delivered asynchronously, so a killed
/// process may linger for a moment) and returns what was still found after `patience`.
pub fn eventually_none(patience: Duration, mut found: impl FnMut() -> Vec<i32>) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let left = found();
        if left.is_empty() || start.elapsed() > patience {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
