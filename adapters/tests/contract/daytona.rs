//! Daytona adapter against the Daytona double.

use std::time::{Duration, Instant};

use base64::Engine;
use sandstorm_adapters::{AdapterError, DaytonaConfig, DaytonaProvider, RemoteProvider};
use sandstorm_features::InputFile;
use sandstorm_runtime::{OutputStream, RunControl, RunStatus};
use serde_json::json;

use crate::doubles::daytona::{API_KEY, Behavior, DaytonaDouble};
use crate::doubles::{Server, lock};
use crate::{Observed, assert_gpu_refused, candidate, code_job, command_job, gpu_job};

fn provider(server: &Server, key: &str) -> DaytonaProvider {
    DaytonaProvider::new(DaytonaConfig {
        api_key: Some(key.into()),
        api_url: server.url.clone(),
        poll_interval: Duration::from_millis(20),
        ..DaytonaConfig::default()
    })
    .expect("provider")
}

/// The script inside the execute request's `sh -c "echo B64 | base64 -d | /bin/sh"`.
fn script_of(command: &str) -> String {
    let encoded = command
        .strip_prefix("/bin/sh -c \"echo ")
        .and_then(|rest| rest.strip_suffix(" | base64 -d | /bin/sh\""))
        .unwrap_or_else(|| panic!("unexpected command {command}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 script");
    String::from_utf8(bytes).expect("utf-8 script")
}

#[test]
fn daytona_creates_waits_uploads_executes_and_deletes() {
    let (server, double) = DaytonaDouble::start(Behavior {
        result: "hello\n",
        ..Behavior::default()
    });
    let mut job = code_job("print(open('data/in.txt').read())");
    job.files = vec![InputFile {
        path: "data/in.txt".into(),
        content: "hello".into(),
    }];
    let observed = Observed::default();
    let candidate = candidate("daytona", None);
    let run = provider(&server, API_KEY)
        .run(&candidate, &job, &observed.control())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.exit_code, Some(0));
    assert_eq!(run.result.stdout, "hello\n");
    assert_eq!(
        observed.chunks(),
        vec![(OutputStream::Stdout, b"hello\n".to_vec())]
    );

    let create = &double.recorder.matching("POST", "/sandbox")[0];
    assert_eq!(
        create.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    let body = create.json();
    assert_eq!(body["cpu"], 1);
    assert_eq!(body["memory"], 1);
    assert_eq!(body["target"], candidate.area.as_str());
    assert_eq!(body["networkBlockAll"], true);
    assert_eq!(body["labels"]["managed-by"], "sandstorm");
    assert!(
        double.recorder.matching("GET", "/sandbox/dtn-1").len() >= 2,
        "polled until started"
    );

    let files = lock(&double.files).clone();
    assert_eq!(
        files.get("/tmp/sandstorm-job/main.py").map(Vec::as_slice),
        Some(b"print(open('data/in.txt').read())".as_slice())
    );
    assert_eq!(
        files
            .get("/tmp/sandstorm-job/data/in.txt")
            .map(Vec::as_slice),
        Some(b"hello".as_slice())
    );
    let execute = &double
        .recorder
        .matching("POST", "/toolbox/dtn-1/toolbox/process/execute")[0];
    let body = execute.json();
    assert_eq!(body["timeout"], 10);
    let script = script_of(body["command"].as_str().expect("command"));
    assert!(
        script.starts_with("mkdir -p '/tmp/sandstorm-job' && cd '/tmp/sandstorm-job'"),
        "{script}"
    );
    assert!(script.ends_with("exec python3 main.py\n"), "{script}");

    assert_eq!(double.deleted(), vec!["dtn-1".to_owned()]);
    assert!(run.usage.deleted);
    // The usage takes the resources Daytona reports (the double reports 2 vCPU / 4 GiB).
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (2.0, 4096));
    assert!(run.cost_usd(&candidate) > 0.0);
}

#[test]
fn daytona_uses_the_toolbox_proxy_url_when_the_sandbox_names_one() {
    let (server, double) = DaytonaDouble::start(Behavior {
        proxy: true,
        exit_code: 2,
        result: "oops",
        ..Behavior::default()
    });
    let run = provider(&server, API_KEY)
        .run(
            &candidate("daytona", None),
            &command_job("false"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, Some(2));
    assert_eq!(run.result.stdout, "oops");
    assert_eq!(
        double
            .recorder
            .matching("POST", "/proxy/dtn-1/process/execute")
            .len(),
        1
    );
    assert_eq!(double.deleted(), vec!["dtn-1".to_owned()]);
}

#[test]
fn daytona_sandbox_in_error_state_fails_retryably_and_is_deleted() {
    let (server, double) = DaytonaDouble::start(Behavior {
        failed_state: Some(("error", "no runner available in region us")),
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("error state");
    assert!(
        matches!(failure.error, AdapterError::SandboxFailed { .. }),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(
        failure.to_string().contains("no runner available"),
        "{failure}"
    );
    assert_eq!(double.deleted(), vec!["dtn-1".to_owned()]);
    assert!(
        double
            .recorder
            .matching("POST", "/toolbox/dtn-1/toolbox/process/execute")
            .is_empty()
    );
}

#[test]
fn daytona_error_bodies_are_classified() {
    let cases = [
        (
            429,
            json!({ "statusCode": 429, "message": "ThrottlerException: Too Many Requests" }),
            true,
            "Too Many Requests",
        ),
        (
            400,
            json!({ "statusCode": 400, "message": ["cpu must not be greater than 4"], "error": "Bad Request" }),
            false,
            "cpu must not be greater than 4",
        ),
        (
            403,
            json!({ "statusCode": 403, "message": "Forbidden resource", "error": "Forbidden" }),
            false,
            "Forbidden resource",
        ),
        (
            500,
            json!({ "statusCode": 500, "message": "Internal server error" }),
            true,
            "Internal server error",
        ),
    ];
    for (status, body, retryable, message) in cases {
        let (server, double) = DaytonaDouble::start(Behavior {
            create_error: Some((status, body)),
            ..Behavior::default()
        });
        let failure = provider(&server, API_KEY)
            .run(
                &candidate("daytona", None),
                &command_job("true"),
                &RunControl::new(),
            )
            .expect_err("error");
        assert_eq!(failure.retryable(), retryable, "{status}: {failure}");
        assert!(matches!(failure.error, AdapterError::Api { status: s, .. } if s == status));
        assert!(failure.to_string().contains(message), "{failure}");
        assert!(double.deleted().is_empty());
    }
}

#[test]
fn daytona_bad_key_is_an_auth_error() {
    let (server, _double) = DaytonaDouble::start(Behavior::default());
    let failure = provider(&server, "dtn_wrong_secret")
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("401");
    assert!(failure.error.is_auth());
    assert!(!failure.retryable());
    assert!(failure.to_string().contains("Invalid API key"));
    assert!(!format!("{failure:?}").contains("dtn_wrong_secret"));
}

#[test]
fn daytona_cancel_and_timeout_delete_the_sandbox() {
    let (server, double) = DaytonaDouble::start(Behavior {
        execute_delay: Some(Duration::from_secs(30)),
        ..Behavior::default()
    });
    let provider = provider(&server, API_KEY);
    let control = RunControl::new();
    let canceller = control.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        canceller.cancel();
    });
    let began = Instant::now();
    let run = provider
        .run(
            &candidate("daytona", None),
            &command_job("sleep 600"),
            &control,
        )
        .expect("cancelled");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert!(began.elapsed() < Duration::from_secs(10));
    assert_eq!(double.deleted(), vec!["dtn-1".to_owned()]);

    let mut job = command_job("sleep 600");
    job.timeout = Duration::from_millis(300);
    let run = provider
        .run(&candidate("daytona", None), &job, &RunControl::new())
        .expect("timed out");
    assert_eq!(run.result.status, RunStatus::Timeout);
    assert_eq!(
        double.deleted(),
        vec!["dtn-1".to_owned(), "dtn-2".to_owned()]
    );
}

#[test]
fn daytona_cancel_while_waiting_and_start_timeout_delete_the_sandbox() {
    let (server, double) = DaytonaDouble::start(Behavior {
        never_starts: true,
        ..Behavior::default()
    });
    let provider = DaytonaProvider::new(DaytonaConfig {
        api_key: Some(API_KEY.into()),
        api_url: server.url.clone(),
        poll_interval: Duration::from_millis(20),
        start_timeout: Duration::from_millis(300),
        ..DaytonaConfig::default()
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("never started");
    assert!(
        matches!(
            failure.error,
            AdapterError::Timeout {
                phase: sandstorm_adapters::Phase::Wait,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert_eq!(double.deleted(), vec!["dtn-1".to_owned()]);

    let provider = DaytonaProvider::new(DaytonaConfig {
        api_key: Some(API_KEY.into()),
        api_url: server.url.clone(),
        poll_interval: Duration::from_millis(20),
        ..DaytonaConfig::default()
    })
    .expect("provider");
    let control = RunControl::new();
    let canceller = control.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        canceller.cancel();
    });
    let began = Instant::now();
    let run = provider
        .run(&candidate("daytona", None), &command_job("true"), &control)
        .expect("cancelled while waiting");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(
        double.deleted(),
        vec!["dtn-1".to_owned(), "dtn-2".to_owned()]
    );
}

#[test]
fn daytona_snapshot_sandboxes_do_not_send_resources() {
    let (server, double) = DaytonaDouble::start(Behavior::default());
    let provider = DaytonaProvider::new(DaytonaConfig {
        api_key: Some(API_KEY.into()),
        api_url: server.url.clone(),
        snapshot: Some("python-3.12".into()),
        poll_interval: Duration::from_millis(20),
        ..DaytonaConfig::default()
    })
    .expect("provider");
    provider
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("run");
    let body = double.recorder.matching("POST", "/sandbox")[0].json();
    assert_eq!(body["snapshot"], "python-3.12");
    assert!(
        body.get("cpu").is_none() && body.get("memory").is_none(),
        "{body}"
    );
}

#[test]
fn daytona_refuses_a_gpu_job_before_calling() {
    let (server, double) = DaytonaDouble::start(Behavior::default());
    let failure = provider(&server, API_KEY)
        .run(&candidate("daytona", None), &gpu_job(), &RunControl::new())
        .expect_err("no GPU");
    assert_gpu_refused(
        &failure,
        "daytona",
        "this adapter creates daytona sandboxes without a GPU",
    );
    assert!(double.recorder.all().is_empty());
}
