//! The behaviour both local backends must share, run against real processes: output, exit
//! codes, inline code, files, the wall-clock limit, output caps, stray processes, memory.

mod common;

use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{code, command, eventually_none, live_in_group, live_with_token, run};
use sandstorm_features::{GpuRequest, InputFile, IsolationBackend, Language};
use sandstorm_runtime::{Engine, OutputStream, RunControl, RunStatus, RuntimeError};

/// How long killed processes may take to disappear from /proc.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

fn python_prints_to_stdout(backend: IsolationBackend) {
    let r = run(
        &Engine::new(),
        backend,
        &command("python3 -c 'print(1)'", 30.0),
    );
    assert_eq!(r.stdout, "1\n", "{r:?}");
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.error_class, None);
    assert!(r.exec_ms > 0.0 && r.start_ms >= 0.0 && r.total_ms >= r.exec_ms);
    // gVisor's user-space kernel hides the job's memory from the host's wait4.
    if backend != IsolationBackend::Gvisor {
        assert!(r.peak_memory_mib.is_some_and(|m| m > 1.0), "{r:?}");
    }
}

fn inline_python_code_runs(backend: IsolationBackend) {
    let job = code(
        Language::Python,
        "import os, sys\nprint('hi from', os.path.basename(sys.argv[0]))\n",
        30.0,
    );
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "hi from main.py\n");
}

fn non_zero_exit_is_failed(backend: IsolationBackend) {
    let r = run(
        &Engine::new(),
        backend,
        &command("echo oops >&2; exit 3", 30.0),
    );
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.signal, None);
    assert_eq!(r.stderr, "oops\n");
    assert_eq!(r.error_class.as_deref(), Some("exit_code"));
}

fn wall_clock_limit_kills_the_whole_group(backend: IsolationBackend, token: &str) {
    // `$$` is the shell, the leader of the job's process group under `process`.
    let job = command(&format!("echo $$; sleep {token} & sleep 100"), 1.0);
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Timeout, "{r:?}");
    assert_eq!(r.error_class.as_deref(), Some("wall_clock_timeout"));
    assert!(r.exit_code.is_none() && r.signal == Some(9), "{r:?}");
    assert!(r.exec_ms >= 1000.0, "{r:?}");
    assert!(r.total_ms < 30_000.0, "took {} ms", r.total_ms);
    if backend == IsolationBackend::Process {
        let pgid: i32 = r.stdout.trim().parse().expect("the shell printed its pid");
        let left = eventually_none(KILL_PATIENCE, || live_in_group(pgid));
        assert!(left.is_empty(), "group {pgid} still has {left:?}");
    }
    let left = eventually_none(KILL_PATIENCE, || live_with_token(token));
    assert!(left.is_empty(), "`sleep {token}` survived: {left:?}");
}

fn output_beyond_the_cap_is_truncated(backend: IsolationBackend) {
    let mut job = command(
        "python3 -c \"import sys; sys.stdout.write('x' * 300000); sys.stderr.write('e' * 10)\"",
        30.0,
    );
    job.max_output_bytes = 1000;
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout.bytes().all(|b| b == b'x'));
    assert!(r.stdout_truncated);
    assert_eq!(r.stderr, "e".repeat(10));
    assert!(!r.stderr_truncated);
}

fn request_files_are_in_the_job_directory(backend: IsolationBackend) {
    let mut job = command(
        "cat data/in.txt; printf ' '; cat top.txt; pwd > /dev/null",
        30.0,
    );
    job.files = vec![
        InputFile {
            path: "data/in.txt".into(),
            content: "hello".into(),
        },
        InputFile {
            path: "top.txt".into(),
            content: "world".into(),
        },
    ];
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "hello world");
}

fn background_grandchild_is_killed(backend: IsolationBackend, token: &str) {
    let job = command(&format!("sleep {token} & echo started"), 60.0);
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "started\n");
    // Returned without waiting for the background sleep (which holds stdout open).
    assert!(r.total_ms < 30_000.0, "took {} ms", r.total_ms);
    let left = eventually_none(KILL_PATIENCE, || live_with_token(token));
    assert!(left.is_empty(), "`sleep {token}` survived: {left:?}");
}

fn environment_is_minimal(backend: IsolationBackend) {
    let r = run(&Engine::new(), backend, &command("env", 30.0));
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    let names: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    // cargo sets CARGO_* for this test process; none of it may leak into the job.
    assert!(!names.iter().any(|n| n.starts_with("CARGO")), "{names:?}");
    for expected in ["PATH", "HOME", "LANG"] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    assert!(r.stdout.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"));
}

/// Far more than the limit: Python's allocation fails under RLIMIT_DATA and it exits with
/// `MemoryError`, which the runtime reports as `oom` (not `failed`): the interpreter's report
/// is on the last stderr line and the run is over its data limit.
fn allocation_beyond_memory_limit_is_oom(backend: IsolationBackend) {
    let mut job = code(
        Language::Python,
        "b = bytearray(4 * 1024 ** 3)\nprint('allocated', len(b))\n",
        30.0,
    );
    job.memory_mib = 64;
    let r = run(&Engine::new(), backend, &job);
    assert!(!r.stdout.contains("allocated"), "{r:?}");
    assert_eq!(r.status, RunStatus::Oom, "{r:?}");
    assert_eq!(r.error_class.as_deref(), Some("memory_limit"));
    assert!(r.stderr.contains("MemoryError"), "{r:?}");
    // gVisor enforces the address space instead of the data segment.
    assert!(
        r.enforced_limits
            .iter()
            .any(|l| l == "rlimit_data_mib=128" || l == "rlimit_as_mib=384"),
        "{r:?}"
    );
}

/// Growing allocations that are actually touched stop near the limit, not at 2 GiB.
fn growing_allocation_stops_at_the_limit(backend: IsolationBackend) {
    let mut job = code(
        Language::Python,
        "chunks = []\ntry:\n    for i in range(2048):\n        chunks.append(b'x' * (1 << 20))\nexcept MemoryError:\n    print('got', len(chunks))\n    raise\nprint('all', len(chunks))\n",
        30.0,
    );
    job.memory_mib = 64;
    let r = run(&Engine::new(), backend, &job);
    assert_eq!(r.status, RunStatus::Oom, "{r:?}");
    assert!(!r.stdout.contains("all"), "{r:?}");
    if let Some(peak) = r.peak_memory_mib {
        assert!(peak < 64.0 + 64.0 + 16.0, "peak {peak} MiB");
    }
    // MiB touched before the allocation failed: the limit plus headroom (gVisor's address
    // space limit includes the interpreter's mappings), never the 2 GiB asked for.
    let got: u32 = r
        .stdout
        .strip_prefix("got ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count printed: {r:?}"));
    assert!(got < 64 + 64 + 256, "{got} MiB allocated: {r:?}");
}

fn unsafe_file_path_is_a_user_error(backend: IsolationBackend) {
    let mut job = command("true", 30.0);
    job.files = vec![InputFile {
        path: "../escape.txt".into(),
        content: String::new(),
    }];
    let engine = Engine::new();
    let err = engine
        .backend(backend)
        .map(|b| b.run(&job))
        .expect("backend exists")
        .expect_err("the path must be refused");
    assert!(err.is_user_error(), "{err}");
    assert!(err.to_string().contains("../escape.txt"), "{err}");
}

fn gpu_job_is_refused_before_anything_runs(backend: IsolationBackend) {
    let mut job = command("echo ran", 30.0);
    job.gpu = Some(GpuRequest {
        count: 1,
        kinds: vec!["h100".into()],
    });
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&seen);
    let control = RunControl::with_output_observer(move |_, chunk| {
        sink.lock().expect("sink").extend_from_slice(chunk);
    });
    let engine = Engine::new();
    let err = engine
        .backend(backend)
        .map(|b| b.run_controlled(&job, &control))
        .expect("backend exists")
        .expect_err("a local backend has no GPU");
    assert!(
        matches!(err, RuntimeError::Unsupported { backend: b, .. } if b == backend),
        "{err:?}"
    );
    assert!(!err.is_user_error(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("backend `{backend}`"))
            && text.contains("1 GPU (h100)")
            && text.contains("no GPU"),
        "{text}"
    );
    assert!(seen.lock().expect("seen").is_empty(), "nothing ran");
}

fn cancel_kills_the_whole_group_and_output_is_observed(backend: IsolationBackend, token: &str) {
    let seen = Arc::new(Mutex::new(Vec::<(OutputStream, Vec<u8>)>::new()));
    let sink = Arc::clone(&seen);
    let control = RunControl::with_output_observer(move |stream, chunk| {
        sink.lock().expect("lock").push((stream, chunk.to_vec()));
    });
    let job = command(
        &format!("echo started; echo err >&2; sleep {token} & sleep 100"),
        60.0,
    );
    let runner = {
        let control = control.clone();
        std::thread::spawn(move || {
            let engine = Engine::new();
            let backend = engine.backend(backend).expect("local backend");
            backend.run_controlled(&job, &control)
        })
    };
    let start = Instant::now();
    let printed = |s: &[(OutputStream, Vec<u8>)]| {
        s.iter()
            .any(|(st, c)| *st == OutputStream::Stdout && c.starts_with(b"started"))
    };
    while !printed(&seen.lock().expect("lock")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no output observed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    control.cancel();
    let r = runner
        .join()
        .expect("runner thread")
        .expect("the run itself works");
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(r.error_class.as_deref(), Some("cancelled"), "{r:?}");
    assert!(r.total_ms < 30_000.0, "took {} ms", r.total_ms);
    assert!(control.is_cancelled());
    let left = eventually_none(KILL_PATIENCE, || live_with_token(token));
    assert!(left.is_empty(), "`sleep {token}` survived: {left:?}");
    // The observed chunks are exactly the captured output.
    let seen = seen.lock().expect("lock");
    let joined = |want: OutputStream| -> String {
        let bytes: Vec<u8> = seen
            .iter()
            .filter(|(s, _)| *s == want)
            .flat_map(|(_, c)| c.clone())
            .collect();
        String::from_utf8(bytes).expect("utf-8 output")
    };
    assert_eq!(joined(OutputStream::Stdout), r.stdout);
    assert_eq!(joined(OutputStream::Stderr), r.stderr);
    assert_eq!(r.stderr, "err\n");
}

fn cancel_before_start_ends_the_run_at_once(backend: IsolationBackend) {
    let control = RunControl::new();
    control.cancel();
    let engine = Engine::new();
    let r = engine
        .backend(backend)
        .expect("local backend")
        .run_controlled(&command("sleep 100", 60.0), &control)
        .expect("the run itself works");
    assert_eq!(r.error_class.as_deref(), Some("cancelled"), "{r:?}");
    assert!(r.total_ms < 30_000.0, "took {} ms", r.total_ms);
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr, $tag:literal) => {
        mod $module {
            use super::*;

            #[test]
            fn python_prints_to_stdout() {
                super::python_prints_to_stdout($backend);
            }
            #[test]
            fn inline_python_code_runs() {
                super::inline_python_code_runs($backend);
            }
            #[test]
            fn non_zero_exit_is_failed() {
                super::non_zero_exit_is_failed($backend);
            }
            #[test]
            fn wall_clock_limit_kills_the_whole_group() {
                super::wall_clock_limit_kills_the_whole_group(
                    $backend,
                    concat!("1000.", $tag, "1"),
                );
            }
            #[test]
            fn output_beyond_the_cap_is_truncated() {
                super::output_beyond_the_cap_is_truncated($backend);
            }
            #[test]
            fn request_files_are_in_the_job_directory() {
                super::request_files_are_in_the_job_directory($backend);
            }
            #[test]
            fn background_grandchild_is_killed() {
                super::background_grandchild_is_killed($backend, concat!("1000.", $tag, "2"));
            }
            #[test]
            fn environment_is_minimal() {
                super::environment_is_minimal($backend);
            }
            #[test]
            fn allocation_beyond_memory_limit_is_oom() {
                super::allocation_beyond_memory_limit_is_oom($backend);
            }
            #[test]
            fn growing_allocation_stops_at_the_limit() {
                super::growing_allocation_stops_at_the_limit($backend);
            }
            #[test]
            fn unsafe_file_path_is_a_user_error() {
                super::unsafe_file_path_is_a_user_error($backend);
            }
            #[test]
            fn gpu_job_is_refused_before_anything_runs() {
                super::gpu_job_is_refused_before_anything_runs($backend);
            }
            #[test]
            fn cancel_kills_the_whole_group_and_output_is_observed() {
                super::cancel_kills_the_whole_group_and_output_is_observed(
                    $backend,
                    concat!("1000.", $tag, "3"),
                );
            }
            #[test]
            fn cancel_before_start_ends_the_run_at_once() {
                super::cancel_before_start_ends_the_run_at_once($backend);
            }
        }
    };
}

backend_tests!(process, IsolationBackend::Process, "7301");
backend_tests!(bubblewrap, IsolationBackend::Bubblewrap, "7302");
backend_tests!(gvisor, IsolationBackend::Gvisor, "7303");
