//! Failover through a real router's decision over remote test doubles (and the real E2B
//! adapter without credentials): which failures move on to the fallback, which stop, and the
//! telemetry row of every attempt.

mod common;

use std::time::{Duration, Instant};

use common::{ALPHA, Answer, BETA, E2B, ScriptedProviderDouble};
use sandstorm_adapters::{E2bConfig, E2bProvider};
use sandstorm_executor::{
    AttemptOutcome, BreakerConfig, Breakers, ExecutorError, FailoverPolicy, Outcome,
};
use sandstorm_features::DecisionContext;
use sandstorm_features::telemetry::{RunStatus, from_record_batch, to_record_batch};
use sandstorm_router::Verdict;
use sandstorm_runtime::RunControl;

fn breakers() -> Breakers {
    Breakers::new(BreakerConfig::default())
}

#[test]
fn every_attempt_logs_the_probability_of_an_exploring_decision() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router()
        .with_exploration(sandstorm_router::Exploration::EpsilonGreedy { epsilon: 1.0 })
        .expect("valid exploration");
    let request = common::request(&["alpha", "beta"], "echo hi");
    // Seeds until exploration picks beta (probability 1/2 each): the greedy alpha is then
    // the fallback.
    let (ctx, decision) = (0..64)
        .map(|seed| {
            let ctx = DecisionContext::now().with_seed(seed);
            let d = common::decide(&router, &executor, &request, &ctx);
            (ctx, d)
        })
        .find(|(_, d)| d.winner == BETA)
        .expect("exploration picks beta for some seed");
    assert!(decision.explored);
    assert_eq!(decision.selection_probability, 0.5);
    assert_eq!(decision.fallbacks, vec![ALPHA.to_owned()]);
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    let rows = execution.telemetry();
    assert_eq!(rows.len(), 1, "beta ran at the first attempt");
    assert_eq!(rows[0].candidate_id, BETA);
    assert_eq!(rows[0].selection_probability, 0.5);

    // A failover row carries the decision's probability too.
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let (ctx, decision) = (0..64)
        .map(|seed| {
            let ctx = DecisionContext::now().with_seed(seed);
            let d = common::decide(&router, &executor, &request, &ctx);
            (ctx, d)
        })
        .find(|(_, d)| d.winner == ALPHA)
        .expect("exploration picks alpha for some seed");
    let rows = executor
        .execute(&request, &ctx, &decision, &RunControl::new())
        .telemetry();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.selection_probability == 0.5));
}

#[test]
fn quota_on_the_winner_fails_over_to_the_fallback_with_a_row_per_attempt() {
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.winner, ALPHA);
    assert_eq!(decision.fallbacks, vec![BETA.to_owned()]);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert!(matches!(execution.outcome, Outcome::Ran { attempt: 1 }));
    assert_eq!((alpha_script.calls(), beta_script.calls()), (1, 1));
    assert!(execution.skipped.is_empty());
    let result = execution.result().expect("the fallback ran the job");
    assert_eq!(result.status, RunStatus::Ok);
    assert!(result.stdout.contains(BETA), "{}", result.stdout);
    assert_eq!(execution.status(), RunStatus::Ok);

    let rows = execution.telemetry();
    assert_eq!(rows.len(), 2);
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(first.candidate_id, ALPHA);
    assert_eq!(first.attempt, 0);
    assert_eq!(first.run_id, format!("{}-run0", decision.decision_id));
    assert_eq!(first.status, RunStatus::Quota);
    assert_eq!(first.error_class.as_deref(), Some("quota"));
    assert_eq!(first.exit_code, None);
    assert_eq!(first.cost_usd, 0.0, "no sandbox was created");
    assert_eq!(first.selection_probability, 1.0);

    assert_eq!(second.candidate_id, BETA);
    assert_eq!(second.attempt, 1);
    assert_eq!(second.run_id, format!("{}-run1", decision.decision_id));
    assert_eq!(second.status, RunStatus::Ok);
    assert_eq!(second.error_class, None);
    assert_eq!(second.exit_code, Some(0));
    assert_eq!(second.total_latency_ms, 120.0);
    // Actual cost: beta's price sheet × the double's usage (1 vCPU, 1 GiB, 1.5 s).
    let beta_candidate = common::candidate(BETA);
    let expected = beta_candidate.prices.start
        + (beta_candidate.prices.vcpu_second + beta_candidate.prices.gib_second) * 1.5;
    assert!(
        (second.cost_usd - expected).abs() < 1e-15,
        "{}",
        second.cost_usd
    );

    for row in &rows {
        assert_eq!(row.decision_id, decision.decision_id);
        assert_eq!(row.source, "remote");
        assert_eq!(row.tenant, "executor-tests");
        assert_eq!(row.model_version.as_deref(), Some("constant-test-models"));
        assert_eq!(row.n_candidates as usize, decision.n_candidates);
        assert_eq!(row.decision_scores.len(), decision.candidates.len());
        let p = decision
            .candidate(&row.candidate_id)
            .and_then(|c| c.prediction.clone())
            .expect("prediction of a ranked candidate");
        assert_eq!(row.pred_latency_p50_ms, Some(p.latency_p50_ms));
        assert_eq!(row.pred_failure_prob, Some(p.failure_prob));
        assert!(row.score.is_some());
        assert!(row.ts_start_us.is_some() && row.ts_end_us >= row.ts_start_us);
    }
    // The rows fit the telemetry schema.
    let batch = to_record_batch(&rows).expect("rows convert to the telemetry schema");
    assert_eq!(from_record_batch(&batch).expect("and back"), rows);
}

#[test]
fn server_errors_fail_over_and_exhaust_with_a_summary() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::ServerError);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Quota);
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(execution.attempts.len(), 2);
    let Some(ExecutorError::Exhausted { summary }) = execution.error() else {
        panic!("expected exhausted, got {:?}", execution.outcome);
    };
    assert!(
        summary.contains(&format!("{ALPHA} failed (http_503)")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("{BETA} failed (quota)")),
        "{summary}"
    );
    assert!(summary.ends_with("no fallback left"), "{summary}");
    assert_eq!(execution.status(), RunStatus::Quota, "the last attempt's");
    assert_eq!(
        execution.telemetry()[0].status,
        RunStatus::Unavailable,
        "a 5xx is recorded as unavailable"
    );
    assert!(execution.result().is_none());
}

#[test]
fn auth_error_stops_without_trying_fallbacks() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::Auth);
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.fallbacks, vec![BETA.to_owned()]);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(beta_script.calls(), 0, "the fallback was not tried");
    assert_eq!(execution.attempts.len(), 1);
    let error = execution.error().expect("not run");
    assert!(
        matches!(error, ExecutorError::Refused { candidate, class, .. } if candidate == ALPHA && class == "auth"),
        "{error:?}"
    );
    assert!(error.to_string().contains("HTTP 401"), "{error}");
    assert!(!error.is_user_error());
    let rows = execution.telemetry();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RunStatus::Unavailable);
    assert_eq!(rows[0].error_class.as_deref(), Some("auth"));
}

#[test]
fn a_job_that_ran_and_exited_non_zero_is_not_retried() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::Exit(3));
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "exit 3");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(beta_script.calls(), 0);
    assert!(matches!(execution.outcome, Outcome::Ran { attempt: 0 }));
    let result = execution.result().expect("ran");
    assert_eq!(
        (result.status, result.exit_code),
        (RunStatus::Failed, Some(3))
    );
    let rows = execution.telemetry();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RunStatus::Failed);
    assert_eq!(rows[0].exit_code, Some(3));
    assert_eq!(rows[0].error_class.as_deref(), Some("exit_code"));
    assert!(rows[0].cost_usd > 0.0);
}

#[test]
fn a_connection_lost_while_the_job_ran_is_not_retried() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::LostDuringExec);
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo once");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(beta_script.calls(), 0, "the job may have run: never twice");
    let error = execution.error().expect("not run");
    assert!(
        matches!(error, ExecutorError::MayHaveRun { class, .. } if class == "connect"),
        "{error:?}"
    );
    let AttemptOutcome::Failed { cost_usd, .. } = &execution.attempts[0].outcome else {
        panic!("expected a failed attempt");
    };
    assert!(*cost_usd > 0.0, "the sandbox that existed is paid for");
    assert_eq!(execution.telemetry()[0].cost_usd, *cost_usd);
}

#[test]
fn the_attempt_limit_stops_failover() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::ServerError);
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor_with(
        vec![alpha, beta],
        breakers(),
        FailoverPolicy {
            max_attempts: 1,
            ..common::fast_policy()
        },
    );
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);

    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());

    assert_eq!(beta_script.calls(), 0);
    let Some(ExecutorError::Exhausted { summary }) = execution.error() else {
        panic!("expected exhausted, got {:?}", execution.outcome);
    };
    assert!(
        summary.ends_with("stopped after 1 attempt (the failover policy's limit)"),
        "{summary}"
    );
}

#[test]
fn failover_waits_the_backoff_and_a_cancel_cuts_it_short() {
    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor_with(
        vec![alpha, beta],
        breakers(),
        FailoverPolicy {
            max_attempts: 4,
            backoff_base: Duration::from_millis(150),
            backoff_max: Duration::from_secs(30),
        },
    );
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);

    let start = Instant::now();
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(execution.result().is_some());
    assert!(execution.telemetry()[1].queue_ms >= 150.0);

    // The same failover with a 30 s backoff, cancelled after 100 ms.
    let (alpha, slow_alpha) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, slow_beta) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let slow = common::executor_with(
        vec![alpha, beta],
        breakers(),
        FailoverPolicy {
            max_attempts: 4,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
        },
    );
    let control = RunControl::new();
    let canceller = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            control.cancel();
        })
    };
    let start = Instant::now();
    let execution = slow.execute(&request, &ctx, &decision, &control);
    canceller.join().expect("canceller");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(matches!(execution.error(), Some(ExecutorError::Cancelled)));
    assert_eq!(execution.attempts.len(), 1, "only the winner was tried");
    assert_eq!((slow_alpha.calls(), slow_beta.calls()), (1, 0));
    assert_eq!(beta_script.calls(), 1);
}

#[test]
fn a_cancel_before_the_start_runs_nothing() {
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Exit(0));
    let executor = common::executor(vec![alpha], breakers());
    let router = common::router();
    let request = common::request(&["alpha"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    let control = RunControl::new();
    control.cancel();

    let execution = executor.execute(&request, &ctx, &decision, &control);

    assert_eq!(alpha_script.calls(), 0);
    assert!(execution.attempts.is_empty());
    assert!(matches!(execution.error(), Some(ExecutorError::Cancelled)));
    assert_eq!(execution.status(), RunStatus::NotExecuted);
}

#[test]
fn an_unconfigured_provider_is_not_offered_and_is_skipped_when_a_decision_names_it() {
    // The real E2B adapter without an API key, and no adapter at all for alpha.
    let e2b = E2bProvider::new(E2bConfig {
        api_key: None,
        ..E2bConfig::default()
    })
    .expect("e2b adapter");
    let (beta, beta_script) = ScriptedProviderDouble::boxed("beta", Answer::Quota);
    let executor = common::executor(vec![Box::new(e2b), beta], breakers());
    let reason = executor
        .unavailable_reason(&common::candidate(E2B))
        .expect("e2b is unavailable");
    assert_eq!(reason, "e2b unavailable: E2B_API_KEY is not set");
    let alpha_reason = executor
        .unavailable_reason(&common::candidate(ALPHA))
        .expect("no alpha adapter");
    assert_eq!(
        alpha_reason,
        "no remote provider `alpha` is configured in this process"
    );

    let router = common::router();
    let request = common::request(&["alpha", "beta", "e2b"], "echo hi");
    let ctx = DecisionContext::now();
    let filtered = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(filtered.winner, BETA);
    for (id, why) in [(E2B, &reason), (ALPHA, &alpha_reason)] {
        let verdict = &filtered.candidate(id).expect("enumerated").verdict;
        assert_eq!(
            verdict,
            &Verdict::Filtered {
                constraint: "availability".to_owned(),
                reason: why.clone()
            }
        );
    }

    // A decision made without the filter still names them: they are skipped, not attempted.
    let unfiltered = router.decide(&request, &ctx, &|_| None).expect("feasible");
    assert_eq!(unfiltered.winner, ALPHA);
    let execution = executor.execute(&request, &ctx, &unfiltered, &RunControl::new());
    assert_eq!(beta_script.calls(), 1);
    assert_eq!(execution.attempts.len(), 1);
    assert_eq!(
        execution.attempts[0].record.attempt, 0,
        "skips are not attempts"
    );
    let skipped: Vec<(&str, &str)> = execution
        .skipped
        .iter()
        .map(|s| (s.candidate_id.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![(ALPHA, alpha_reason.as_str()), (E2B, reason.as_str())]
    );
    let Some(ExecutorError::Exhausted { summary }) = execution.error() else {
        panic!("expected exhausted, got {:?}", execution.outcome);
    };
    assert!(summary.contains("E2B_API_KEY is not set"), "{summary}");
}

#[test]
fn an_invalid_job_is_a_user_error_and_runs_nowhere() {
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Exit(0));
    let executor = common::executor(vec![alpha], breakers());
    let router = common::router();
    let request = common::request(&["alpha"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    let mut invalid = request.clone();
    invalid.timeout_s = 0.0;

    let execution = executor.execute(&invalid, &ctx, &decision, &RunControl::new());

    assert_eq!(alpha_script.calls(), 0);
    assert!(execution.attempts.is_empty());
    let error = execution.error().expect("not run");
    assert!(error.is_user_error(), "{error:?}");
    assert!(error.to_string().starts_with("invalid job: "), "{error}");
    assert_eq!(execution.status(), RunStatus::NotExecuted);
    assert!(
        executor.breakers().snapshot().is_empty(),
        "no breaker moved"
    );
}
