//! The `route`, `run`, `datasets generate` and `catalog` commands (and `print_metrics` of `train`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sandstorm_executor::{AttemptOutcome, Execution, Executor};
use sandstorm_features::{DecisionContext, RunRequest};
use sandstorm_router::{Decision, ModelSet, Router};
use sandstorm_runtime::RunControl;

use crate::RoutingArgs;
use crate::common;

/// Everything a routing command has after deciding.
struct Routed {
    request: RunRequest,
    ctx: DecisionContext,
    executor: Executor,
    decision: Decision,
}

fn decide(args: &RoutingArgs) -> Result<Routed> {
    let catalog = common::load_catalog(args.catalog.as_deref())?;
    let request = common::load_request(&args.request)?;
    let models = common::model_dir("--models", &args.models)?;
    let mut router = Router::new(&catalog, ModelSet::load(&models)?)
        .with_exploration(args.explore.unwrap_or_default())?;
    if let Some(registry) = &args.policies {
        router = router.with_policies(crate::policy::load_registry(
            registry,
            args.trusted_keys.as_deref(),
        )?);
    }
    let breaker_state = args
        .breaker_state
        .clone()
        .unwrap_or_else(common::default_breaker_state);
    let breakers = sandstorm_executor::BreakerConfig {
        failure_threshold: args.breaker_threshold.max(1),
        cooldown: std::time::Duration::try_from_secs_f64(args.breaker_cooldown_s)
            .context("--breaker-cooldown-s must be a non-negative number of seconds")?,
    };
    let executor = common::executor(&catalog, &breaker_state, breakers);
    let ctx = DecisionContext::now();
    let decision = router.decide(&request, &ctx, &|c| executor.unavailable_reason(c))?;
    Ok(Routed {
        request,
        ctx,
        executor,
        decision,
    })
}

pub(crate) fn route(args: &RoutingArgs) -> Result<ExitCode> {
    let Routed { decision, .. } = decide(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        println!("{}", common::decision_table(&decision));
        println!("{}", decision.explanation);
        println!(
            "decision {} with model {} (selection probability {:.4}{})",
            decision.decision_id,
            decision.model_version,
            decision.selection_probability,
            if decision.explored { ", explored" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One attempt, for `run --json` and the summary line.
#[derive(Debug, serde::Serialize)]
struct AttemptView<'a> {
    attempt: u32,
    candidate: &'a str,
    status: &'a str,
    error_class: Option<&'a str>,
    error: Option<String>,
    cost_usd: f64,
}

fn attempt_views(execution: &Execution) -> Vec<AttemptView<'_>> {
    execution
        .attempts
        .iter()
        .map(|a| AttemptView {
            attempt: a.record.attempt,
            candidate: &a.candidate_id,
            status: a.record.status.as_str(),
            error_class: a.record.error_class.as_deref(),
            error: match &a.outcome {
                AttemptOutcome::Failed { error, .. } => Some(error.to_string()),
                AttemptOutcome::Ran { .. } => None,
            },
            cost_usd: a.record.cost_usd,
        })
        .collect()
}

pub(crate) fn run(args: &RoutingArgs, telemetry_out: &Path) -> Result<ExitCode> {
    let Routed {
        request,
        ctx,
        executor,
        decision,
    } = decide(args)?;
    let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
    let rows = execution.telemetry();
    let file = if rows.is_empty() {
        None
    } else {
        Some(
            crate::telemetry::append_now(
                &common::location("--telemetry-out", telemetry_out)?,
                None,
                &rows,
            )
            .with_context(|| format!("writing telemetry to {}", telemetry_out.display()))?,
        )
    };
    let attempts = attempt_views(&execution);
    if args.json {
        let out = serde_json::json!({
            "decision": decision,
            "attempts": attempts,
            "skipped": execution.skipped.iter().map(|s| serde_json::json!({"candidate": s.candidate_id, "reason": s.reason})).collect::<Vec<_>>(),
            "result": execution.result(),
            "error": execution.error().map(ToString::to_string),
            "telemetry_file": file,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for a in attempts.iter().filter(|a| a.error.is_some()) {
            eprintln!(
                "[sandstorm] attempt {} on {} failed ({}): {}",
                a.attempt,
                a.candidate,
                a.error_class.unwrap_or("-"),
                a.error.as_deref().unwrap_or("")
            );
        }
        match (execution.ran(), execution.result()) {
            (Some(ran), Some(result)) => {
                print!("{}", result.stdout);
                eprint!("{}", result.stderr);
                eprintln!(
                    "[sandstorm] {} on {}: exit {}, {} wall, peak {} MiB, cost {}; telemetry {}",
                    result.status,
                    ran.candidate_id,
                    result.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                    common::ms(result.total_ms),
                    result
                        .peak_memory_mib
                        .map_or("?".to_owned(), |m| format!("{m:.0}")),
                    common::usd(ran.record.cost_usd),
                    file.as_ref()
                        .map_or("-".to_owned(), |f| f.display().to_string())
                );
            }
            _ => {
                println!("{}", decision.explanation);
                println!(
                    "not executed: {}",
                    execution
                        .error()
                        .map_or("no candidate could run it".to_owned(), ToString::to_string)
                );
            }
        }
    }
    Ok(common::exit_code_for(execution.status()))
}

pub(crate) fn print_metrics(meta: &sandstorm_features::model::ModelMetadata) {
    let mut t = common::table();
    t.set_header(vec!["model", "objective", "trees", "holdout metrics"]);
    for (role, entry) in &meta.models {
        let objective = entry
            .params
            .get("objective")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let metrics = entry
            .metrics
            .iter()
            .filter(|(k, _)| k.as_str() != "best_valid_metric")
            .map(|(k, v)| format!("{k}={}", fmt_metric(*v)))
            .collect::<Vec<_>>()
            .join("  ");
        t.add_row(vec![
            role.as_str().to_owned(),
            objective.to_owned(),
            entry.num_trees.to_string(),
            metrics,
        ]);
    }
    println!("{t}");
    println!(
        "train {} rows ({} .. {}), validation {} rows, holdout {} rows ({} .. {})",
        meta.training_window.rows,
        meta.training_window.from,
        meta.training_window.to,
        meta.validation_window.rows,
        meta.holdout_window.rows,
        meta.holdout_window.from,
        meta.holdout_window.to
    );
}

fn fmt_metric(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

pub(crate) fn generate(
    rows: usize,
    seed: u64,
    out: &Path,
    catalog: Option<&Path>,
) -> Result<ExitCode> {
    let catalog = common::load_catalog(catalog)?;
    let summary = generate_with_progress(&catalog, rows, seed, out)?;
    println!(
        "wrote {} rows in {} file(s) to {}",
        summary.rows,
        summary.files.len(),
        out.display()
    );
    let statuses: Vec<String> = summary
        .status_counts
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    println!("outcomes: {}", statuses.join(" "));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn generate_with_progress(
    catalog: &sandstorm_features::Catalog,
    rows: usize,
    seed: u64,
    out: &Path,
) -> Result<sandstorm_datasets::GenerateSummary> {
    let bar = ProgressBar::new(rows as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({eta})")
            .map_err(|e| anyhow::anyhow!("progress template: {e}"))?
            .progress_chars("=> "),
    );
    bar.set_message("simulating telemetry");
    let cfg = sandstorm_datasets::SimulatorConfig {
        rows,
        seed,
        ..Default::default()
    };
    let summary = sandstorm_datasets::generate(catalog, &cfg, out, &mut |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    Ok(summary?)
}

pub(crate) fn spinner(message: &str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(message.to_owned());
    s.enable_steady_tick(std::time::Duration::from_millis(120));
    s
}

pub(crate) fn catalog_show(path: Option<&Path>) -> Result<ExitCode> {
    match path {
        None => print!("{}", sandstorm_features::DEFAULT_CATALOG_TOML),
        Some(p) => {
            common::load_catalog(Some(p))?;
            print!("{}", std::fs::read_to_string(p)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn catalog_check(path: Option<&Path>) -> Result<ExitCode> {
    let catalog = common::load_catalog(path)?;
    let mut t = common::table();
    t.set_header(vec![
        "candidate",
        "kind",
        "isolation",
        "$/vCPU-s",
        "$/GiB-s",
        "estimate",
        "price source",
    ]);
    for c in catalog.candidates() {
        t.add_row(vec![
            c.id.clone(),
            c.provider_kind.as_str().to_owned(),
            c.isolation_level().to_string(),
            format!("{:.8}", c.prices.vcpu_second),
            format!("{:.8}", c.prices.gib_second),
            if c.prices.estimate {
                "yes".into()
            } else {
                "no".into()
            },
            format!("{} ({})", c.prices.source, c.prices.as_of),
        ]);
    }
    println!("{t}");
    let disabled: Vec<&str> = catalog
        .providers
        .iter()
        .filter(|p| !p.enabled)
        .map(|p| p.name.as_str())
        .collect();
    println!(
        "catalog ok: {} providers, {} candidates; disabled: {}",
        catalog.providers.len(),
        catalog.candidates().len(),
        if disabled.is_empty() {
            "none".to_owned()
        } else {
            disabled.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}
