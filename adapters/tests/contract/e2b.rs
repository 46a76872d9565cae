//! E2B adapter against the E2B double.

use std::time::Duration;

use sandstorm_adapters::{AdapterError, E2bConfig, E2bProvider, RemoteProvider};
use sandstorm_features::InputFile;
use sandstorm_runtime::{OutputStream, RunControl, RunStatus};
use serde_json::json;

use crate::doubles::e2b::{API_KEY, Behavior, E2bDouble, Event, USER_AUTH};
use crate::doubles::{Server, lock};
use crate::{
    Observed, assert_gpu_refused, cancel_when_seen, candidate, code_job, command_job, gpu_job,
};

fn provider(server: &Server, key: &str) -> E2bProvider {
    E2bProvider::new(E2bConfig {
        api_key: Some(key.into()),
        api_url: server.url.clone(),
        envd_url: Some(server.url.clone()),
        ..E2bConfig::default()
    })
    .expect("provider")
}

fn ok_events() -> Vec<Event> {
    vec![
        Event::Stdout("hello "),
        Event::Stderr("warn\n"),
        Event::Sleep(Duration::from_millis(20)),
        Event::Stdout("world\n"),
        Event::End(Some(0)),
        Event::EndStream(None),
    ]
}

/// The JSON message of a Connect request envelope.
fn connect_message(body: &[u8]) -> serde_json::Value {
    assert_eq!(body[0], 0, "request envelope flags");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(body.len(), 5 + len, "one envelope");
    serde_json::from_slice(&body[5..]).expect("json message")
}

#[test]
fn e2b_runs_a_command_streams_output_and_deletes_the_sandbox() {
    let (server, double) = E2bDouble::start(Behavior {
        events: ok_events(),
        ..Behavior::default()
    });
    let observed = Observed::default();
    let candidate = candidate("e2b", None);
    let run = provider(&server, API_KEY)
        .run(&candidate, &command_job("echo hi"), &observed.control())
        .expect("run");

    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.exit_code, Some(0));
    assert_eq!(run.result.stdout, "hello world\n");
    assert_eq!(run.result.stderr, "warn\n");
    assert_eq!(
        observed.chunks(),
        vec![
            (OutputStream::Stdout, b"hello ".to_vec()),
            (OutputStream::Stderr, b"warn\n".to_vec()),
            (OutputStream::Stdout, b"world\n".to_vec()),
        ]
    );
    assert!(
        run.result
            .enforced_limits
            .contains(&"sandbox_id=sbx1".to_owned())
    );
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=blocked".to_owned())
    );

    let creates = double.recorder.matching("POST", "/sandboxes");
    assert_eq!(creates.len(), 1);
    let create = &creates[0];
    assert_eq!(create.header("x-api-key"), Some(API_KEY));
    let body = create.json();
    assert_eq!(body["templateID"], "base");
    assert_eq!(body["timeout"], 70, "job timeout 10 s + 60 s margin");
    assert_eq!(body["allow_internet_access"], false);
    assert_eq!(body["secure"], true);
    assert_eq!(body["metadata"]["candidate"], candidate.id.as_str());

    let starts = double.recorder.matching("POST", "/process.Process/Start");
    assert_eq!(starts.len(), 1);
    let start = &starts[0];
    assert_eq!(start.header("x-access-token"), Some("envd-token-1"));
    assert_eq!(start.header("authorization"), Some(USER_AUTH));
    assert_eq!(start.header("e2b-sandbox-id"), Some("sbx1"));
    let message = connect_message(&start.body);
    assert_eq!(message["process"]["cmd"], "/bin/bash");
    assert_eq!(message["process"]["args"][0], "-c");
    let script = message["process"]["args"][1].as_str().expect("script");
    assert!(script.contains("cd '/home/user/sandstorm-job'"), "{script}");
    assert!(script.ends_with("exec /bin/sh -c 'echo hi'\n"), "{script}");

    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
    assert!(double.alive().is_empty());
    assert_eq!(run.usage.sandbox_id.as_deref(), Some("sbx1"));
    assert!(run.usage.deleted);
    assert!(run.usage.sandbox_seconds > 0.0);
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (2.0, 512));
    let expected = (2.0 * candidate.prices.vcpu_second + 0.5 * candidate.prices.gib_second)
        * run.usage.sandbox_seconds;
    assert!((run.cost_usd(&candidate) - expected).abs() < 1e-15);
}

#[test]
fn e2b_uploads_code_and_files_through_envd_and_reports_the_exit_code() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![
            Event::Stderr("boom\n"),
            Event::End(Some(3)),
            Event::EndStream(None),
        ],
        ..Behavior::default()
    });
    let mut job = code_job("print(open('data/in.txt').read())");
    job.files = vec![InputFile {
        path: "data/in.txt".into(),
        content: "payload ✓".into(),
    }];
    let run = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &job, &RunControl::new())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, Some(3));
    assert_eq!(run.result.error_class.as_deref(), Some("exit_code"));
    assert_eq!(run.result.stderr, "boom\n");

    let files = lock(&double.files).clone();
    assert_eq!(
        files
            .get("/home/user/sandstorm-job/main.py")
            .map(Vec::as_slice),
        Some(b"print(open('data/in.txt').read())".as_slice())
    );
    assert_eq!(
        files
            .get("/home/user/sandstorm-job/data/in.txt")
            .map(Vec::as_slice),
        Some("payload ✓".as_bytes())
    );
    let uploads = double.recorder.matching("POST", "/files");
    assert_eq!(uploads.len(), 2);
    assert!(
        uploads
            .iter()
            .all(|u| u.header("x-access-token") == Some("envd-token-1"))
    );
    let start = &double.recorder.matching("POST", "/process.Process/Start")[0];
    let script = connect_message(&start.body)["process"]["args"][1].clone();
    assert!(
        script
            .as_str()
            .is_some_and(|s| s.ends_with("exec python3 main.py\n")),
        "{script}"
    );
    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
}

#[test]
fn e2b_killed_process_and_output_cap() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![
            Event::Stdout("abcdefgh"),
            Event::End(None),
            Event::EndStream(None),
        ],
        ..Behavior::default()
    });
    let observed = Observed::default();
    let mut job = command_job("yes");
    job.max_output_bytes = 4;
    let run = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &job, &observed.control())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, None);
    assert_eq!(run.result.error_class.as_deref(), Some("killed"));
    assert_eq!(run.result.stdout, "abcd");
    assert!(run.result.stdout_truncated);
    assert_eq!(observed.text(OutputStream::Stdout), "abcd");
    assert_eq!(double.deleted().len(), 1);
}

#[test]
fn e2b_quota_429_is_retryable_with_the_providers_message() {
    let (server, double) = E2bDouble::start(Behavior {
        create_error: Some((
            429,
            json!({ "code": 429, "message": "You have reached the maximum number of concurrent E2B sandboxes (20)" }),
        )),
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("quota");
    assert!(failure.retryable(), "{failure}");
    assert!(failure.error.is_quota());
    assert_eq!(failure.error.run_status(), RunStatus::Quota);
    assert!(
        failure.to_string().contains("maximum number of concurrent"),
        "{failure}"
    );
    assert!(failure.usage.is_none());
    assert!(
        double
            .recorder
            .matching("POST", "/process.Process/Start")
            .is_empty()
    );
}

#[test]
fn e2b_server_error_is_retryable() {
    let (server, _double) = E2bDouble::start(Behavior {
        create_error: Some((
            503,
            json!({ "code": 503, "message": "cluster is overloaded" }),
        )),
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("503");
    assert!(failure.retryable());
    assert!(matches!(
        failure.error,
        AdapterError::Api { status: 503, .. }
    ));
    assert!(failure.to_string().contains("cluster is overloaded"));
}

#[test]
fn e2b_bad_key_is_an_auth_error_that_does_not_leak_the_key() {
    let (server, _double) = E2bDouble::start(Behavior::default());
    let wrong = "e2b_wrong_key_with_secret_bits";
    let failure = provider(&server, wrong)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("401");
    assert!(!failure.retryable());
    assert!(failure.error.is_auth());
    assert!(failure.to_string().contains("Invalid API key"), "{failure}");
    assert!(!failure.to_string().contains(wrong));
    assert!(!format!("{failure:?}").contains(wrong));
}

#[test]
fn e2b_not_found_on_start_is_not_retryable_and_the_sandbox_is_still_deleted() {
    let (server, double) = E2bDouble::start(Behavior {
        start_error: Some((
            404,
            json!({ "code": "not_found", "message": "process not found" }),
        )),
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("404");
    assert!(!failure.retryable());
    assert!(
        failure.to_string().contains("process not found"),
        "{failure}"
    );
    let usage = failure
        .usage
        .as_ref()
        .expect("usage of the created sandbox");
    assert!(usage.deleted);
    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
    assert!(failure.cost_usd(&candidate("e2b", None)) > 0.0);
}

#[test]
fn e2b_rpc_error_at_end_of_stream_keeps_code_and_message() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![
            Event::Stdout("partial"),
            Event::EndStream(Some(("resource_exhausted", "too many processes"))),
        ],
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("rpc error");
    match &failure.error {
        AdapterError::Rpc { code, message, .. } => {
            assert_eq!(code, "resource_exhausted");
            assert_eq!(message, "too many processes");
        }
        other => panic!("expected an rpc error, got {other:?}"),
    }
    assert!(failure.error.is_quota());
    assert_eq!(double.deleted().len(), 1);
}

#[test]
fn e2b_stream_that_breaks_before_the_end_is_a_protocol_error() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![Event::Stdout("x")],
        ..Behavior::default()
    });
    let failure = provider(&server, API_KEY)
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("broken stream");
    assert!(!failure.retryable(), "the job may have run: {failure}");
    assert_eq!(double.deleted().len(), 1);
}

#[test]
fn e2b_cancel_deletes_the_sandbox_while_the_job_runs() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![Event::Stdout("started\n"), Event::HoldUntilDeleted],
        ..Behavior::default()
    });
    let observed = Observed::default();
    let control = observed.control();
    cancel_when_seen(&observed, &control, "started");
    let run = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &command_job("sleep 600"), &control)
        .expect("cancelled run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert_eq!(run.result.stdout, "started\n");
    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
    assert!(run.usage.deleted);
}

#[test]
fn e2b_cancel_before_start_creates_nothing() {
    let (server, double) = E2bDouble::start(Behavior::default());
    let control = RunControl::new();
    control.cancel();
    let run = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &command_job("true"), &control)
        .expect("cancelled run");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert!(double.recorder.all().is_empty());
    assert_eq!(run.cost_usd(&candidate("e2b", None)), 0.0);
}

#[test]
fn e2b_wall_clock_timeout_deletes_the_sandbox() {
    let (server, double) = E2bDouble::start(Behavior {
        events: vec![Event::Stdout("tick\n"), Event::HoldUntilDeleted],
        ..Behavior::default()
    });
    let mut job = command_job("sleep 600");
    job.timeout = Duration::from_millis(300);
    let run = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &job, &RunControl::new())
        .expect("timed-out run");
    assert_eq!(run.result.status, RunStatus::Timeout);
    assert_eq!(
        run.result.error_class.as_deref(),
        Some("wall_clock_timeout")
    );
    assert_eq!(run.result.stdout, "tick\n");
    assert!(run.result.exec_ms >= 300.0, "{}", run.result.exec_ms);
    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
}

#[test]
fn e2b_unreachable_api_is_a_retryable_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let provider = E2bProvider::new(E2bConfig {
        api_key: Some(API_KEY.into()),
        api_url: url,
        ..E2bConfig::default()
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("connect");
    assert!(
        matches!(failure.error, AdapterError::Connect { .. }),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(failure.usage.is_none());
}

#[test]
fn e2b_refuses_a_candidate_of_another_provider_and_invalid_jobs() {
    let (server, double) = E2bDouble::start(Behavior::default());
    let provider = provider(&server, API_KEY);
    let failure = provider
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("other provider");
    assert!(matches!(failure.error, AdapterError::Unsupported { .. }));
    let mut job = command_job("true");
    job.command = None;
    let failure = provider
        .run(&candidate("e2b", None), &job, &RunControl::new())
        .expect_err("invalid job");
    assert!(failure.error.is_user_error());
    assert!(!failure.retryable());
    assert!(double.recorder.all().is_empty());
}

#[test]
fn e2b_provider_that_does_not_answer_is_a_retryable_timeout() {
    let (server, _double) = E2bDouble::start(Behavior {
        create_delay: Some(Duration::from_secs(5)),
        ..Behavior::default()
    });
    let provider = E2bProvider::new(E2bConfig {
        api_key: Some(API_KEY.into()),
        api_url: server.url.clone(),
        envd_url: Some(server.url.clone()),
        request_timeout: Duration::from_millis(200),
        ..E2bConfig::default()
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("timeout");
    assert!(
        matches!(
            failure.error,
            AdapterError::Timeout {
                phase: sandstorm_adapters::Phase::Create,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(!failure.error.job_may_have_started());
}

#[test]
fn e2b_delete_is_retried_on_server_errors_and_a_lost_delete_is_reported() {
    let (server, double) = E2bDouble::start(Behavior {
        events: ok_events(),
        delete_failures: 2,
        ..Behavior::default()
    });
    let provider = provider(&server, API_KEY);
    let run = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("run");
    assert!(run.usage.deleted);
    assert_eq!(double.deleted(), vec!["sbx1".to_owned()]);
    assert_eq!(
        double.recorder.matching("DELETE", "/sandboxes/sbx1").len(),
        3
    );

    lock(&double.behavior).delete_failures = 10;
    let run = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("the job's result stands even when the delete fails");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert!(!run.usage.deleted);
    assert_eq!(
        double.recorder.matching("DELETE", "/sandboxes/sbx2").len(),
        3
    );
    assert_eq!(double.alive().len(), 1);
}

#[test]
fn e2b_refuses_a_gpu_job_before_calling() {
    let (server, double) = E2bDouble::start(Behavior::default());
    let failure = provider(&server, API_KEY)
        .run(&candidate("e2b", None), &gpu_job(), &RunControl::new())
        .expect_err("no GPU");
    assert_gpu_refused(&failure, "e2b", "E2B sandboxes have no GPU");
    assert!(double.recorder.all().is_empty());
}
