//! Helpers shared by the commands: loading inputs with clear errors, availability of local
//! backends, executing a decision's winner, and printing decisions.

use std::path::Path;

use anyhow::{Context, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord, to_micros};
use sandstorm_features::{Candidate, Catalog, DecisionContext, ProviderKind, RunRequest};
use sandstorm_router::{Decision, Verdict};
use sandstorm_runtime::{Engine, JobSpec, RunResult};

pub(crate) fn load_catalog(path: Option<&Path>) -> Result<Catalog> {
    match path {
        None => Ok(Catalog::default_catalog()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read catalog {}", p.display()))?;
            Catalog::from_toml(&text).with_context(|| format!("catalog {}", p.display()))
        }
    }
}

pub(crate) fn load_request(path: &Path) -> Result<RunRequest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read request {}", path.display()))?;
    RunRequest::from_text(&text, &path.to_string_lossy())
        .with_context(|| format!("request {}", path.display()))
}

/// Why `candidate` cannot run from this host right now, if it cannot.
pub(crate) fn unavailable_reason(engine: &Engine, candidate: &Candidate) -> Option<String> {
    match candidate.provider_kind {
        ProviderKind::Local => match engine.availability().get(&candidate.backend) {
            Some(a) if a.is_available() => None,
            Some(sandstorm_runtime::Availability::Unavailable { reason }) => Some(format!(
                "{} unavailable on this host: {reason}",
                candidate.backend
            )),
            _ => Some(format!(
                "this build has no local {} backend yet",
                candidate.backend
            )),
        },
        ProviderKind::Edge => Some("dispatch to edge agents is not implemented yet".to_owned()),
        // Remote providers are routed; whether they can be executed is reported by `run`.
        ProviderKind::Remote | ProviderKind::Kubernetes => None,
    }
}

/// The result of trying to execute a decision's winner.
pub(crate) enum Execution {
    Ran {
        result: RunResult,
        record: Box<TelemetryRecord>,
    },
    NotExecutable {
        reason: String,
    },
}

/// Runs the winner when it is local; remote providers are routed but not executable yet.
pub(crate) fn execute(
    engine: &Engine,
    request: &RunRequest,
    ctx: &DecisionContext,
    decision: &Decision,
) -> Result<Execution> {
    let winner = decision.winner();
    let candidate = &winner.candidate;
    if candidate.provider_kind != ProviderKind::Local {
        return Ok(Execution::NotExecutable {
            reason: format!(
                "routed to {} ({}), but executing on {} providers is not available in this build yet",
                candidate.id,
                candidate.provider,
                candidate.provider_kind.as_str()
            ),
        });
    }
    let backend = engine
        .backend(candidate.backend)
        .with_context(|| format!("no local {} backend in this build", candidate.backend))?;
    let result = backend
        .run(&JobSpec::from_request(request))
        .with_context(|| format!("running on {}", candidate.id))?;
    let record = telemetry_row(request, ctx, decision, &result);
    Ok(Execution::Ran {
        result,
        record: Box::new(record),
    })
}

fn telemetry_row(
    request: &RunRequest,
    ctx: &DecisionContext,
    decision: &Decision,
    result: &RunResult,
) -> TelemetryRecord {
    let winner = decision.winner();
    let candidate = &winner.candidate;
    let mut r = TelemetryRecord::for_choice(request, candidate, ctx);
    r.decision_id = decision.decision_id.clone();
    r.run_id = uuid_like(&decision.decision_id);
    r.source = "runtime".to_owned();
    r.n_candidates = decision.n_candidates as u32;
    r.n_feasible = decision.n_feasible as u32;
    r.selection_probability = 1.0;
    r.model_version = Some(decision.model_version.clone());
    r.policy_versions = decision
        .policies
        .iter()
        .map(|p| format!("{}@{}", p.name, p.version))
        .collect();
    if let Some(p) = &winner.prediction {
        r.pred_latency_p50_ms = Some(p.latency_p50_ms);
        r.pred_latency_p95_ms = Some(p.latency_p95_ms);
        r.pred_cost_usd = Some(p.cost_usd);
        r.pred_failure_prob = Some(p.failure_prob);
    }
    r.score = winner.score;
    r.decision_scores = decision.telemetry_scores();
    r.status = result.status;
    r.error_class = result.error_class.clone();
    r.exit_code = result.exit_code;
    r.ts_start_us = Some(to_micros(result.started_at));
    r.ts_end_us = Some(to_micros(result.started_at) + (result.total_ms * 1000.0) as i64);
    r.queue_ms = 0.0;
    r.start_ms = result.start_ms;
    r.exec_ms = result.exec_ms;
    r.total_latency_ms = result.total_ms;
    r.peak_memory_mib = result.peak_memory_mib;
    r.cost_usd = candidate.list_cost_usd(&request.resources, result.total_ms / 1000.0);
    r
}

fn uuid_like(decision_id: &str) -> String {
    format!("{decision_id}-run0")
}

/// Process exit code for a run's status: 0 ok, 3 not executed, 1 otherwise.
pub(crate) fn exit_code_for(status: RunStatus) -> std::process::ExitCode {
    match status {
        RunStatus::Ok => std::process::ExitCode::SUCCESS,
        RunStatus::NotExecuted => std::process::ExitCode::from(3),
        _ => std::process::ExitCode::FAILURE,
    }
}

pub(crate) fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t
}

pub(crate) fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0".to_owned()
    } else if v < 0.01 {
        format!("${v:.7}")
    } else {
        format!("${v:.4}")
    }
}

pub(crate) fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// The ranked table of a decision.
pub(crate) fn decision_table(decision: &Decision) -> Table {
    let mut t = table();
    t.set_header(vec![
        "#",
        "candidate",
        "isolation",
        "p50",
        "p95",
        "cost",
        "fail",
        "verdict",
    ]);
    for (i, c) in decision.candidates.iter().enumerate() {
        let (p50, p95, cost, fail) = match &c.prediction {
            Some(p) => (
                ms(p.latency_p50_ms),
                ms(p.latency_p95_ms),
                usd(p.cost_usd),
                format!("{:.1}%", 100.0 * p.failure_prob),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let mut verdict = match &c.verdict {
            Verdict::Winner => "WINNER".to_owned(),
            Verdict::Fallback {
                rank,
                behind_by_pct,
            } => format!("fallback {rank} (+{behind_by_pct:.0}%)"),
            Verdict::Outscored { reason, .. } => format!("outscored: {reason}"),
            Verdict::Filtered { constraint, reason } => match constraint.strip_prefix("policy:") {
                Some(policy) => format!("rejected by policy {policy}: {reason}"),
                None => format!("filtered: {reason}"),
            },
        };
        for a in &c.policy_adjustments {
            verdict.push_str(&format!(
                " [policy {} ×{}: {}]",
                a.policy, a.factor, a.reason
            ));
        }
        t.add_row(vec![
            (i + 1).to_string(),
            c.candidate.id.clone(),
            c.candidate.isolation_level().to_string(),
            p50,
            p95,
            cost,
            fail,
            verdict,
        ]);
    }
    t
}
