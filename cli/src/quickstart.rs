//! `sandstorm quickstart`: the whole loop on embedded defaults — simulate telemetry, train,
//! route the example requests, run the local winners, and summarise predicted vs actual.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord};
use sandstorm_features::{Catalog, DecisionContext, RunRequest};
use sandstorm_router::{ModelSet, Router};
use sandstorm_runtime::RunControl;

use crate::common;
use crate::run;

/// The example requests shipped in `examples/requests/`.
const EXAMPLES: [(&str, &str); 8] = [
    (
        "hello-python.yaml",
        include_str!("../../examples/requests/hello-python.yaml"),
    ),
    (
        "inline-primes.yaml",
        include_str!("../../examples/requests/inline-primes.yaml"),
    ),
    (
        "shell-with-files.yaml",
        include_str!("../../examples/requests/shell-with-files.yaml"),
    ),
    (
        "network-off.yaml",
        include_str!("../../examples/requests/network-off.yaml"),
    ),
    (
        "sleep-timeout.yaml",
        include_str!("../../examples/requests/sleep-timeout.yaml"),
    ),
    (
        "untrusted-microvm.yaml",
        include_str!("../../examples/requests/untrusted-microvm.yaml"),
    ),
    (
        "gpu-inference.yaml",
        include_str!("../../examples/requests/gpu-inference.yaml"),
    ),
    (
        "eu-balanced.yaml",
        include_str!("../../examples/requests/eu-balanced.yaml"),
    ),
];

#[derive(Debug, Args)]
pub(crate) struct QuickstartArgs {
    /// Working directory for telemetry and models.
    #[arg(long, default_value = "sandstorm-quickstart")]
    dir: PathBuf,
    /// Rows of simulated telemetry to train on.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Simulator seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub(crate) fn quickstart(args: &QuickstartArgs) -> Result<ExitCode> {
    let catalog = Catalog::default_catalog();
    let sim_dir = args.dir.join("telemetry/simulated");
    let runs_dir = args.dir.join("telemetry/runs");
    let model_dir = args.dir.join("models/current");
    if sim_dir.exists() {
        std::fs::remove_dir_all(&sim_dir)
            .with_context(|| format!("clearing {}", sim_dir.display()))?;
    }

    println!(
        "1/4 simulating {} telemetry rows (seed {}) into {}",
        args.rows,
        args.seed,
        sim_dir.display()
    );
    let summary = run::generate_with_progress(&catalog, args.rows, args.seed, &sim_dir)?;
    let statuses: Vec<String> = summary
        .status_counts
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    println!(
        "    {} rows, outcomes: {}",
        summary.rows,
        statuses.join(" ")
    );

    println!("2/4 training models into {}", model_dir.display());
    let spinner = run::spinner("training latency, cost and failure models");
    let report = sandstorm_trainer::train(
        &sim_dir,
        &model_dir,
        &sandstorm_trainer::TrainConfig::default(),
    );
    spinner.finish_and_clear();
    let report = report?;
    run::print_metrics(&report.metadata);

    println!(
        "3/4 routing {} example requests and running the local winners",
        EXAMPLES.len()
    );
    let router = Router::new(&catalog, ModelSet::load(&model_dir)?);
    let breaker_state = args.dir.join("breakers.json");
    let executor = common::executor(
        &catalog,
        &breaker_state,
        sandstorm_executor::BreakerConfig::default(),
    );
    let mut records: Vec<TelemetryRecord> = Vec::new();
    let mut mismatches = Vec::new();
    let mut t = common::table();
    t.set_header(vec![
        "example",
        "strategy",
        "decision",
        "predicted p50 / cost",
        "actual latency / cost",
        "status",
        "output",
    ]);
    for (name, text) in EXAMPLES {
        let request = RunRequest::from_yaml(text).with_context(|| format!("example {name}"))?;
        let ctx = DecisionContext::now();
        let expected = request
            .labels
            .get("expect")
            .map(String::as_str)
            .unwrap_or("ok");
        let decision = match router.decide(&request, &ctx, &|c| executor.unavailable_reason(c)) {
            Ok(decision) => decision,
            // Remote providers without credentials are offered nowhere: say so and go on.
            Err(e @ sandstorm_router::RouterError::NoFeasibleCandidate { .. }) => {
                if expected != RunStatus::NotExecuted.as_str() {
                    mismatches.push(format!("{name}: expected {expected}, got no candidate"));
                }
                let reason: String = e.to_string().chars().take(70).collect();
                t.add_row(vec![
                    name.trim_end_matches(".yaml").to_owned(),
                    request.strategy.as_str().to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    RunStatus::NotExecuted.to_string(),
                    reason,
                ]);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("routing {name}")),
        };
        let pred = decision
            .winner()
            .prediction
            .as_ref()
            .map_or("-".to_owned(), |p| {
                format!(
                    "{} / {}",
                    common::ms(p.latency_p50_ms),
                    common::usd(p.cost_usd)
                )
            });
        let execution = executor.execute(&request, &ctx, &decision, &RunControl::new());
        records.extend(execution.telemetry());
        let (status, actual, output) = match (execution.ran(), execution.result()) {
            (Some(ran), Some(result)) => {
                let actual = format!(
                    "{} / {}",
                    common::ms(result.total_ms),
                    common::usd(ran.record.cost_usd)
                );
                let first_line = result
                    .stdout
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect::<String>();
                (result.status, actual, first_line)
            }
            _ => (
                RunStatus::NotExecuted,
                "-".to_owned(),
                execution
                    .error()
                    .map_or("not executed".to_owned(), ToString::to_string)
                    .chars()
                    .take(60)
                    .collect(),
            ),
        };
        if status.as_str() != expected {
            mismatches.push(format!("{name}: expected {expected}, got {status}"));
        }
        t.add_row(vec![
            name.trim_end_matches(".yaml").to_owned(),
            request.strategy.as_str().to_owned(),
            decision.winner.clone(),
            pred,
            actual,
            status.to_string(),
            output,
        ]);
    }
    println!("{t}");

    println!("4/4 writing the telemetry of {} real runs", records.len());
    let file = crate::telemetry::append_now(
        &sandstorm_storage::Location::Local(runs_dir.clone()),
        None,
        &records,
    )
    .with_context(|| format!("writing telemetry to {}", runs_dir.display()))?;
    println!("    telemetry: {}", file.display());
    println!(
        "    models:    {} (version {})",
        model_dir.display(),
        report.metadata.version
    );
    println!(
        "next: sandstorm route --models {} --request examples/requests/hello-python.yaml",
        model_dir.display()
    );
    if mismatches.is_empty() {
        println!("quickstart ok: every example ended as expected");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "quickstart: {} example(s) did not end as expected:\n  {}",
            mismatches.len(),
            mismatches.join("\n  ")
        );
        Ok(ExitCode::FAILURE)
    }
}
