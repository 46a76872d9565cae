//! [`attempt_record`]: the one builder of execution telemetry rows — the request's features,
//! the candidate tried, the decision's predictions and scores, and the attempt's outcome.

use sandstorm_features::telemetry::{TelemetryRecord, to_micros};
use sandstorm_features::{Candidate, DecisionContext, ProviderKind, RunRequest};
use sandstorm_router::Decision;

use crate::execute::AttemptOutcome;

/// The telemetry `source` of an attempt on `candidate`: `runtime` (local backends), `remote`
/// (remote providers and Kubernetes) or `edge` (edge agents).
fn source(candidate: &Candidate) -> &'static str {
    match candidate.provider_kind {
        ProviderKind::Local => "runtime",
        ProviderKind::Remote | ProviderKind::Kubernetes => "remote",
        ProviderKind::Edge => "edge",
    }
}

/// The telemetry row of attempt number `attempt` (0 for the first, then 1, 2, ... for
/// failovers) of `decision` on `candidate`.
///
/// Identity: `run_id` = `<decision_id>-run<attempt>`, `source` from the candidate's kind.
/// Decision: the candidate's predictions and score, every candidate's scores, model and
/// policy versions; `selection_probability` is the decision's (1 when the router does not
/// explore) on every attempt: the executor adds no randomness (the winner, then the
/// fallbacks in order), so a failover's candidate was tried because the first choice, made
/// with that probability, failed; `attempt` tells failovers apart, and offline evaluation
/// uses attempt 0 only. Outcome: status,
/// error class and exit code of the result, or the failure's `run_status()` / `class()`;
/// timings (`queue_ms` from the request's arrival `ctx.now` to the attempt's start); the
/// actual cost the outcome carries. The `history` features are left at their defaults (the
/// decision does not carry them).
pub fn attempt_record(
    request: &RunRequest,
    ctx: &DecisionContext,
    decision: &Decision,
    candidate: &Candidate,
    attempt: u32,
    outcome: &AttemptOutcome,
) -> TelemetryRecord {
    let mut r = TelemetryRecord::for_choice(request, candidate, ctx);
    r.decision_id = decision.decision_id.clone();
    r.run_id = format!("{}-run{attempt}", decision.decision_id);
    r.attempt = attempt;
    r.source = source(candidate).to_owned();
    r.n_candidates = decision.n_candidates as u32;
    r.n_feasible = decision.n_feasible as u32;
    r.selection_probability = decision.selection_probability;
    r.model_version = Some(decision.model_version.clone());
    r.policy_versions = decision
        .policies
        .iter()
        .map(|p| format!("{}@{}", p.name, p.version))
        .collect();
    if let Some(verdict) = decision.candidate(&candidate.id) {
        if let Some(p) = &verdict.prediction {
            r.pred_latency_p50_ms = Some(p.latency_p50_ms);
            r.pred_latency_p95_ms = Some(p.latency_p95_ms);
            r.pred_cost_usd = Some(p.cost_usd);
            r.pred_failure_prob = Some(p.failure_prob);
        }
        r.score = verdict.score;
    }
    r.decision_scores = decision.telemetry_scores();
    let started_at = outcome.started_at();
    r.queue_ms = ((started_at - ctx.now).as_seconds_f64() * 1000.0).max(0.0);
    r.ts_start_us = Some(to_micros(started_at));
    r.status = outcome.status();
    r.cost_usd = outcome.cost_usd();
    match outcome {
        AttemptOutcome::Ran { result, .. } => {
            r.error_class = result.error_class.clone();
            r.exit_code = result.exit_code;
            r.start_ms = result.start_ms;
            r.exec_ms = result.exec_ms;
            r.total_latency_ms = result.total_ms;
            r.peak_memory_mib = result.peak_memory_mib;
        }
        AttemptOutcome::Failed {
            error, elapsed_ms, ..
        } => {
            r.error_class = Some(error.class());
            r.exit_code = None;
            // All of it was spent trying to start.
            r.start_ms = *elapsed_ms;
            r.exec_ms = 0.0;
            r.total_latency_ms = *elapsed_ms;
            r.peak_memory_mib = None;
        }
    }
    r.ts_end_us = r
        .ts_start_us
        .map(|start| start + (r.total_latency_ms * 1000.0) as i64);
    r
}
