//! Helpers shared by the commands: loading inputs with clear errors, the executor (local
//! engine, remote providers, edge agents, breakers), and printing decisions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sandstorm_adapters::Providers;
use sandstorm_executor::{BreakerConfig, Breakers, Executor, FailoverPolicy};
use sandstorm_features::telemetry::RunStatus;
use sandstorm_features::{Catalog, RunRequest};
use sandstorm_router::{Decision, Verdict};
use sandstorm_runtime::{Engine, EngineConfig};
use sandstorm_storage::Location;

/// The location given for `flag`: a directory path, a `file://` or an `s3://` URL.
pub(crate) fn location(flag: &str, value: &Path) -> Result<Location> {
    Ok(Location::parse(flag, &value.to_string_lossy())?)
}

/// The local model directory named by `flag`: the path itself, or for an object-store URL
/// the registry's champion (or the model directory) downloaded into the local cache
/// (`~/.cache/sandstorm/models/`).
pub(crate) fn model_dir(flag: &str, value: &Path) -> Result<PathBuf> {
    match location(flag, value)? {
        Location::Local(dir) => Ok(dir),
        Location::Remote(remote) => {
            let cache = sandstorm_storage::models::default_models_cache(&remote);
            sandstorm_storage::models::fetch_models(&remote, &cache)
                .with_context(|| format!("fetching the models at {}", remote.url()))
        }
    }
}

/// The telemetry rows at the location given for `flag`, in time order.
pub(crate) fn load_telemetry(
    flag: &str,
    value: &Path,
) -> Result<Vec<sandstorm_features::telemetry::TelemetryRecord>> {
    let location = location(flag, value)?;
    sandstorm_trainer::load_telemetry_at(&location)
        .with_context(|| format!("reading telemetry {location}"))
}

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

/// The executor of this process: the local engine, every remote provider and the catalog's
/// edge agents, and the circuit breakers shared with other `sandstorm` processes through
/// `breaker_state`.
///
/// One-shot commands run at most a few jobs, so no gVisor sandboxes are started ahead (a warm
/// pool pays off in the long-running service and agent).
pub(crate) fn executor(
    catalog: &Catalog,
    breaker_state: &Path,
    breakers: BreakerConfig,
) -> Executor {
    Executor::new(
        Arc::new(Engine::with_config(&EngineConfig {
            gvisor_pool_size: 0,
        })),
        Providers::from_env_and_catalog(catalog),
        Breakers::with_state_file(breakers, breaker_state),
        FailoverPolicy::default(),
    )
}

/// Where breaker state lives when no path is given: `$XDG_STATE_HOME/sandstorm`, else
/// `~/.local/state/sandstorm`, else the working directory.
pub(crate) fn default_breaker_state() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sandstorm").join("breakers.json")
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
