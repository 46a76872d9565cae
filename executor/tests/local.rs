//! Local candidates on the real engine (process and bubblewrap backends of this host).

mod common;

use std::time::Duration;

use sandstorm_executor::{AttemptOutcome, ExecutorError, Outcome};
use sandstorm_features::DecisionContext;
use sandstorm_features::telemetry::RunStatus;
use sandstorm_runtime::RunControl;

/// A request for the local backends (the process backend cannot cut the network off).
fn local_request(command: &str) -> sandstorm_features::RunRequest {
    let mut request = common::request(&["local"], command);
    request.allow_network = true;
    request
}

#[test]
fn a_local_job_that_exits_non_zero_is_final() {
    let breakers =
        sandstorm_executor::Breakers::new(common::breaker_config(1, Duration::from_secs(60)));
    let executor = common::executor(Vec::new(), breakers.clone());
    let router = common::router();
    let request = local_request("echo out; echo err >&2; exit 3");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert!(decision.winner.starts_with("local/"), "{}", decision.winner);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(execution.attempts.len(), 1, "never re-run a job that ran");
    assert!(matches!(execution.outcome, Outcome::Ran { attempt: 0 }));
    let result = execution.result().expect("ran");
    assert_eq!(result.status, RunStatus::Failed);
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.stdout, "out\n");
    assert_eq!(result.stderr, "err\n");
    let rows = execution.telemetry();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.candidate_id, decision.winner);
    assert_eq!(row.source, "runtime");
    assert_eq!(row.status, RunStatus::Failed);
    assert_eq!(row.exit_code, Some(3));
    assert_eq!(row.total_latency_ms, result.total_ms);
    // Local cost: the candidate's list price × the measured total time.
    let candidate = common::candidate(&decision.winner);
    let expected = candidate.list_cost_usd(&request.resources, result.total_ms / 1000.0);
    assert_eq!(row.cost_usd, expected);
    assert!(row.cost_usd > 0.0);
    assert!(
        breakers.snapshot().is_empty(),
        "a job's own exit code is no infrastructure failure"
    );
}

#[test]
fn a_local_job_runs_and_streams_its_output_through_the_control() {
    let executor = common::executor(
        Vec::new(),
        sandstorm_executor::Breakers::new(Default::default()),
    );
    let router = common::router();
    let request = local_request("echo hello from the executor");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let control = {
        let seen = std::sync::Arc::clone(&seen);
        RunControl::with_output_observer(move |_, chunk| {
            seen.lock().expect("lock").extend_from_slice(chunk);
        })
    };

    let execution = executor.execute(&request, &ctx, &decision, &control);

    let result = execution.result().expect("ran");
    assert_eq!(result.status, RunStatus::Ok);
    assert_eq!(result.stdout, "hello from the executor\n");
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().expect("lock")),
        "hello from the executor\n"
    );
    let row = &execution.telemetry()[0];
    assert_eq!((row.status, row.exit_code), (RunStatus::Ok, Some(0)));
    assert_eq!(row.run_id, format!("{}-run0", decision.decision_id));
}

#[test]
fn a_local_job_cancelled_while_running_ends_the_execution_without_telemetry() {
    let executor = common::executor(
        Vec::new(),
        sandstorm_executor::Breakers::new(Default::default()),
    );
    let router = common::router();
    let request = local_request("sleep 30");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    let control = RunControl::new();
    let canceller = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            control.cancel();
        })
    };

    let execution = executor.execute(&request, &ctx, &decision, &control);
    canceller.join().expect("canceller");

    assert_eq!(execution.attempts.len(), 1);
    assert!(execution.attempts[0].cancelled);
    let result = execution.result().expect("it ran until cancelled");
    assert_eq!(result.error_class.as_deref(), Some("cancelled"));
    assert!(
        execution.telemetry().is_empty(),
        "a cancel says nothing about the candidate"
    );
    assert!(executor.breakers().snapshot().is_empty());
}

#[test]
fn a_gpu_job_routed_to_a_local_backend_is_refused_not_run_without_its_gpu() {
    // A catalog that (wrongly) prices a GPU for this host: the router's GPU filter then lets a
    // GPU request through to the local candidates, and the engine must refuse it rather than
    // run it on the CPU.
    let toml = common::CATALOG.replace(
        "vcpu_second = 0.000001\ngib_second = 0.0000001\n",
        "vcpu_second = 0.000001\ngib_second = 0.0000001\ngpu_second = { h100 = 0.001 }\n",
    );
    assert_ne!(toml, common::CATALOG, "the local prices were found");
    let catalog = sandstorm_features::Catalog::from_toml(&toml).expect("catalog");
    let models = tempfile::tempdir().expect("tempdir");
    common::write_constant_models(models.path());
    let router = sandstorm_router::Router::new(
        &catalog,
        sandstorm_router::ModelSet::load(models.path()).expect("models"),
    );
    let breakers =
        sandstorm_executor::Breakers::new(common::breaker_config(1, Duration::from_secs(60)));
    let executor = common::executor(Vec::new(), breakers.clone());
    let mut request = local_request("echo ran on the cpu");
    request.resources.gpu = Some(sandstorm_features::GpuRequest {
        count: 1,
        kinds: vec!["h100".into()],
    });
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert!(decision.winner.starts_with("local/"), "{}", decision.winner);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert!(execution.result().is_none(), "the job must not run");
    assert_eq!(
        execution.attempts.len(),
        1,
        "an unsupported job stops failover"
    );
    let AttemptOutcome::Failed {
        error, cost_usd, ..
    } = &execution.attempts[0].outcome
    else {
        panic!("refused: {:?}", execution.attempts[0].outcome);
    };
    assert!(error.is_unsupported() && !error.is_user_error(), "{error}");
    assert!(
        error.to_string().contains("1 GPU (h100)")
            && error.to_string().contains("local backends have no GPU"),
        "{error}"
    );
    assert_eq!(*cost_usd, 0.0);
    let Some(ExecutorError::Refused { class, .. }) = execution.error() else {
        panic!("refused: {:?}", execution.error());
    };
    assert_eq!(class, "unsupported");
    assert_eq!(execution.telemetry()[0].status, RunStatus::Unavailable);
    assert!(
        breakers.snapshot().is_empty(),
        "a job the backend cannot serve is no infrastructure failure"
    );
}
