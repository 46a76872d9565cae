//! Circuit breakers driven by real executions: opening after consecutive failures, the
//! router no longer offering the candidate, the half-open probe, and the state file shared by
//! separate `Breakers` (as by separate CLI invocations).

mod common;

use std::time::Duration;

use common::{ALPHA, Answer, BETA, ScriptedProviderDouble};
use sandstorm_executor::{BreakerState, BreakerStatus, Breakers};
use sandstorm_features::DecisionContext;
use sandstorm_features::telemetry::RunStatus;
use sandstorm_router::Verdict;
use sandstorm_runtime::RunControl;

const ALPHA_KEY: &str = "alpha/us-east";

fn status(breakers: &Breakers, key: &str) -> Option<BreakerStatus> {
    breakers.snapshot().into_iter().find(|s| s.key == key)
}

#[test]
fn breaker_opens_routing_stops_offering_it_and_a_half_open_success_closes_it() {
    let breakers = Breakers::new(common::breaker_config(3, Duration::from_millis(200)));
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::ServerError);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers.clone());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let alpha_candidate = common::candidate(ALPHA);

    for round in 1..=3 {
        let ctx = DecisionContext::now();
        let decision = common::decide(&router, &executor, &request, &ctx);
        assert_eq!(decision.winner, ALPHA, "round {round}: still offered");
        let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
        assert_eq!(execution.attempts.len(), 2, "round {round}");
        assert_eq!(
            execution.status(),
            RunStatus::Ok,
            "round {round}: beta ran it"
        );
    }
    assert_eq!(alpha_script.calls(), 3);

    let reason = executor
        .unavailable_reason(&alpha_candidate)
        .expect("the breaker is open");
    assert!(
        reason.starts_with(&format!(
            "circuit open for {ALPHA_KEY} after 3 consecutive failures (last: http_503); next probe at "
        )),
        "{reason}"
    );
    assert_eq!(
        breakers.unavailable_reason(&alpha_candidate),
        Some(reason.clone())
    );
    let open = status(&breakers, ALPHA_KEY).expect("alpha's breaker");
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.consecutive_failures, 3);
    assert_eq!(open.last_error.as_deref(), Some("http_503"));
    assert_eq!(
        status(&breakers, "beta/eu-west"),
        None,
        "beta never failed: no breaker entry"
    );

    // The router no longer offers alpha.
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.winner, BETA);
    assert!(decision.fallbacks.is_empty());
    match &decision.candidate(ALPHA).expect("enumerated").verdict {
        Verdict::Filtered {
            constraint,
            reason: why,
        } => {
            assert_eq!(constraint, "availability");
            assert_eq!(why, &reason);
        }
        other => panic!("alpha should be filtered, is {other:?}"),
    }
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert_eq!(execution.attempts.len(), 1);
    assert_eq!(alpha_script.calls(), 3, "alpha was not called while open");

    // After the cooldown alpha is offered again; its attempt is the probe, and its success
    // closes the breaker.
    alpha_script.answer(Answer::Exit(0));
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(executor.unavailable_reason(&alpha_candidate), None);
    assert_eq!(
        status(&breakers, ALPHA_KEY).map(|s| s.state),
        Some(BreakerState::HalfOpen)
    );
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.winner, ALPHA);
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert_eq!(execution.attempts.len(), 1);
    assert!(execution.attempts[0].probe);
    assert_eq!(execution.status(), RunStatus::Ok);
    let closed = status(&breakers, ALPHA_KEY).expect("alpha's breaker");
    assert_eq!(closed.state, BreakerState::Closed);
    assert_eq!(closed.consecutive_failures, 0);
    assert_eq!(closed.next_probe_at, None);
}

#[test]
fn a_failed_probe_reopens_and_an_open_winner_is_skipped() {
    let breakers = Breakers::new(common::breaker_config(1, Duration::from_millis(200)));
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Quota);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers.clone());
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.winner, ALPHA);

    let first = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert_eq!(first.attempts.len(), 2);
    // The same decision again, while alpha's breaker is open: alpha is skipped, beta's is
    // attempt 0.
    let second = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert_eq!(alpha_script.calls(), 1);
    assert_eq!(second.skipped.len(), 1);
    assert_eq!(second.skipped[0].candidate_id, ALPHA);
    assert!(
        second.skipped[0].reason.starts_with(
            "circuit open for alpha/us-east after 1 consecutive failures (last: quota)"
        ),
        "{}",
        second.skipped[0].reason
    );
    assert_eq!(second.attempts.len(), 1);
    assert_eq!(second.attempts[0].candidate_id, BETA);
    assert_eq!(second.attempts[0].record.attempt, 0);

    // The probe after the cooldown fails: open again, for another cooldown.
    std::thread::sleep(Duration::from_millis(250));
    let third = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert_eq!(alpha_script.calls(), 2);
    assert!(third.attempts[0].probe);
    assert_eq!(third.attempts[0].record.status, RunStatus::Quota);
    let reason = breakers
        .unavailable_reason(&common::candidate(ALPHA))
        .expect("re-opened");
    assert!(reason.contains("after 2 consecutive failures"), "{reason}");
}

#[test]
fn a_job_failing_on_its_own_does_not_trip_the_breaker() {
    let breakers = Breakers::new(common::breaker_config(2, Duration::from_secs(60)));
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Exit(1));
    let executor = common::executor(vec![alpha], breakers.clone());
    let router = common::router();
    let request = common::request(&["alpha"], "exit 1");
    for _ in 0..4 {
        let ctx = DecisionContext::now();
        let decision = common::decide(&router, &executor, &request, &ctx);
        let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
        assert_eq!(execution.status(), RunStatus::Failed);
    }
    assert_eq!(alpha_script.calls(), 4);
    assert_eq!(breakers.unavailable_reason(&common::candidate(ALPHA)), None);
    assert!(breakers.snapshot().is_empty());
}

#[test]
fn breaker_state_is_shared_through_the_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join("breakers.json");
    let config = common::breaker_config(2, Duration::from_millis(300));
    let request = common::request(&["alpha", "beta"], "echo hi");
    let router = common::router();
    let alpha_candidate = common::candidate(ALPHA);

    // "sandstorm run" twice: alpha fails both times.
    for _ in 0..2 {
        let breakers = Breakers::with_state_file(config.clone(), &path);
        let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::ServerError);
        let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
        let executor = common::executor(vec![alpha, beta], breakers);
        let ctx = DecisionContext::now();
        let decision = common::decide(&router, &executor, &request, &ctx);
        assert_eq!(decision.winner, ALPHA);
        executor.execute(&request, &ctx, &decision, &RunControl::new());
    }
    let text = std::fs::read_to_string(&path).expect("the state file exists");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["breakers"][ALPHA_KEY]["consecutive_failures"], 2);

    // A later "sandstorm route": a new instance on the same file no longer offers alpha.
    let later = Breakers::with_state_file(config.clone(), &path);
    let reason = later
        .unavailable_reason(&alpha_candidate)
        .expect("open, from the file");
    assert!(
        reason.starts_with("circuit open for alpha/us-east after 2 consecutive failures"),
        "{reason}"
    );
    let (alpha, alpha_script) = ScriptedProviderDouble::boxed("alpha", Answer::Exit(0));
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], later);
    let ctx = DecisionContext::now();
    assert_eq!(
        common::decide(&router, &executor, &request, &ctx).winner,
        BETA
    );

    // After the cooldown its probe succeeds; the next instance sees the breaker closed.
    std::thread::sleep(Duration::from_millis(350));
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    assert_eq!(decision.winner, ALPHA);
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    assert!(execution.attempts[0].probe);
    assert_eq!(alpha_script.calls(), 1);
    let next = Breakers::with_state_file(config, &path);
    assert_eq!(next.unavailable_reason(&alpha_candidate), None);
    assert_eq!(
        status(&next, ALPHA_KEY).map(|s| (s.state, s.consecutive_failures)),
        Some((BreakerState::Closed, 0))
    );
}

#[test]
fn a_corrupt_state_file_is_tolerated_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("breakers.json");
    std::fs::write(
        &path,
        "{\"version\": 1, \"breakers\": {\"alpha/us-east\": trunc",
    )
    .expect("write");
    let breakers =
        Breakers::with_state_file(common::breaker_config(1, Duration::from_secs(60)), &path);
    assert!(breakers.snapshot().is_empty(), "all closed");
    assert_eq!(breakers.unavailable_reason(&common::candidate(ALPHA)), None);

    let (alpha, _) = ScriptedProviderDouble::boxed("alpha", Answer::ServerError);
    let (beta, _) = ScriptedProviderDouble::boxed("beta", Answer::Exit(0));
    let executor = common::executor(vec![alpha, beta], breakers);
    let router = common::router();
    let request = common::request(&["alpha", "beta"], "echo hi");
    let ctx = DecisionContext::now();
    let decision = common::decide(&router, &executor, &request, &ctx);
    executor.execute(&request, &ctx, &decision, &RunControl::new());

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("valid json now");
    assert_eq!(doc["breakers"][ALPHA_KEY]["consecutive_failures"], 1);
    let reloaded =
        Breakers::with_state_file(common::breaker_config(1, Duration::from_secs(60)), &path);
    assert!(
        reloaded
            .unavailable_reason(&common::candidate(ALPHA))
            .is_some()
    );
}
