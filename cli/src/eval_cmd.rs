//! Arguments and output of `sandstorm eval azure-vm-noise`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use sandstorm_features::StrategyKind;
use time::Date;

use crate::common;
use crate::eval::{self, Estimate, EvalOptions, EvalResult};

/// The strategies the evaluation knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EvalStrategy {
    #[value(name = "optimize_cost")]
    OptimizeCost,
    #[value(name = "optimize_latency")]
    OptimizeLatency,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// Directory with units.csv, prices.csv and measurements.parquet (or the raw CSV tree).
    #[arg(long)]
    data: PathBuf,
    /// First day of the evaluation period (default: six months before the last day).
    #[arg(long, value_parser = parse_date)]
    split_at: Option<Date>,
    /// Evaluate one strategy only (default: both).
    #[arg(long, value_enum)]
    strategy: Option<EvalStrategy>,
    /// Write one row per evaluated request, strategy and policy to this Parquet file.
    #[arg(long)]
    decisions: Option<PathBuf>,
    /// Write an HTML report with PNG plots into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Only these test suites (repeatable; default: all). For quick runs and tests.
    #[arg(long = "test-suite")]
    test_suites: Vec<String>,
    /// Ignore requests after this day. For quick runs and tests.
    #[arg(long, value_parser = parse_date)]
    until: Option<Date>,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Keep the trained model directory here (default: a temporary directory, removed).
    #[arg(long)]
    models_out: Option<PathBuf>,
}

fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|e| format!("expected a date YYYY-MM-DD: {e}"))
}

pub(crate) fn run(args: &EvalArgs) -> Result<ExitCode> {
    let strategies = match args.strategy {
        Some(EvalStrategy::OptimizeCost) => vec![StrategyKind::OptimizeCost],
        Some(EvalStrategy::OptimizeLatency) => vec![StrategyKind::OptimizeLatency],
        None => vec![StrategyKind::OptimizeCost, StrategyKind::OptimizeLatency],
    };
    let opts = EvalOptions {
        data: args.data.clone(),
        split_at: args.split_at,
        strategies,
        test_suites: args.test_suites.clone(),
        until: args.until,
        bootstrap: args.bootstrap,
        models_out: args.models_out.clone(),
    };
    let quiet = args.json;
    let result = eval::evaluate(&opts, &|step| {
        if !quiet {
            eprintln!("[eval] {step}");
        }
    })?;
    if let Some(path) = &args.decisions {
        eval::write_decisions(&result, path)?;
    }
    if let Some(dir) = &args.report {
        crate::report::write(&result, dir)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_tables(&result);
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt(e: &Estimate, digits: usize) -> String {
    format!(
        "{:.d$} [{:.d$}, {:.d$}]",
        e.value,
        e.ci95[0],
        e.ci95[1],
        d = digits
    )
}

fn print_tables(r: &EvalResult) {
    println!(
        "azure-vm-noise ({} VMs): {} training requests ({} to the day before {}), {} evaluation requests ({} to {}); model {}",
        r.vm_lifespan,
        r.train_requests,
        r.first_day,
        r.split_at,
        r.test_requests,
        r.split_at,
        r.last_day,
        r.model_version
    );
    for s in &r.strategies {
        let mut t = common::table();
        t.set_header(vec![
            "policy",
            "geomean chosen/oracle [95% CI]",
            "p95",
            "oracle picks",
            "captured headroom",
        ]);
        for p in &s.policies {
            t.add_row(vec![
                p.policy.clone(),
                fmt(&p.geomean, 4),
                fmt(&p.p95, 3),
                fmt(&p.oracle_picks, 3),
                fmt(&p.captured_headroom, 3),
            ]);
        }
        println!(
            "\n{} (fixed placement chosen on the training period: {})",
            s.strategy, s.fixed_placement
        );
        println!("{t}");
    }
}
