//! `sandstorm telemetry`: SQL over the telemetry Parquet (`query`), the named reports
//! (`report spend|latency|failures --by ...`) and `compact`, which recovers the write-ahead logs
//! of writers that died and publishes their rows (docs/telemetry.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sandstorm_trainer::query::{self, OutputFormat, QueryOutput, Report};

#[derive(Debug, Subcommand)]
pub(crate) enum TelemetryCommand {
    /// Run SQL over the telemetry (table `telemetry`, DataFusion's SQL dialect).
    Query {
        /// The query, e.g. "SELECT provider, COUNT(*) FROM telemetry GROUP BY provider".
        sql: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A named report: spend (runs, total and mean cost), latency (p50/p95 of
    /// total_latency_ms) or failures (failure rate by status and error class).
    Report {
        #[arg(value_enum)]
        report: ReportKind,
        /// Columns to group by, comma-separated (e.g. provider,region); none: overall.
        #[arg(long, value_delimiter = ',', default_value = "provider")]
        by: Vec<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Recover the write-ahead logs of writers that died and compact them into Parquet.
    Compact {
        /// Telemetry directory (a path or file:// URL).
        #[arg(
            long,
            env = "SANDSTORM_TELEMETRY",
            default_value = "sandstorm-telemetry"
        )]
        telemetry: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Telemetry directory (a path or file:// URL).
    #[arg(
        long,
        env = "SANDSTORM_TELEMETRY",
        default_value = "sandstorm-telemetry"
    )]
    telemetry: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the result to this file instead of standard output (required for parquet).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReportKind {
    Spend,
    Latency,
    Failures,
}

pub(crate) fn command(command: TelemetryCommand) -> Result<ExitCode> {
    match command {
        TelemetryCommand::Query { sql, out } => {
            let dir = sandstorm_datasets::telemetry_path(&out.telemetry)?;
            let result = query::query_telemetry(&dir, &sql)?;
            emit(&result, &out)
        }
        TelemetryCommand::Report { report, by, out } => {
            let dir = sandstorm_datasets::telemetry_path(&out.telemetry)?;
            let report = match report {
                ReportKind::Spend => Report::Spend,
                ReportKind::Latency => Report::Latency,
                ReportKind::Failures => Report::Failures,
            };
            let by: Vec<String> = by.into_iter().filter(|c| !c.trim().is_empty()).collect();
            let result = query::report_telemetry(&dir, report, &by)?;
            emit(&result, &out)
        }
        TelemetryCommand::Compact { telemetry } => compact(&telemetry),
    }
}

fn emit(result: &QueryOutput, out: &OutputArgs) -> Result<ExitCode> {
    let format = match out.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
        Format::Parquet => OutputFormat::Parquet,
    };
    match &out.output {
        Some(path) => {
            query::write_output(result, format, path)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{} rows written to {}", result.rows(), path.display());
        }
        None => print!("{}", query::render(result, format)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn compact(location: &str) -> Result<ExitCode> {
    let dir = sandstorm_datasets::telemetry_path(location)?;
    let writer = open_writer(&dir)?;
    let recovery = writer.recovery().clone();
    writer.close().context("compacting telemetry")?;
    println!(
        "recovered {} dead writer(s): {} segment(s), {} row(s) ({} torn tail(s) cut), {} file(s)",
        recovery.writers,
        recovery.segments,
        recovery.rows,
        recovery.torn_tails,
        recovery.files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A telemetry writer on `dir` for a one-shot command: no background thread; closing it
/// compacts what it appended.
pub(crate) fn open_writer(dir: &Path) -> Result<sandstorm_datasets::TelemetryWriter> {
    let options = sandstorm_datasets::WriterOptions {
        background: false,
        ..Default::default()
    };
    sandstorm_datasets::TelemetryWriter::open(dir, options)
        .with_context(|| format!("opening telemetry {}", dir.display()))
}

/// Appends `records` to the telemetry under `dir` and compacts them at once (one-shot commands
/// have no later moment to do it); returns the first Parquet file holding them.
pub(crate) fn append_now(
    dir: &Path,
    records: &[sandstorm_features::telemetry::TelemetryRecord],
) -> Result<PathBuf> {
    let writer = open_writer(dir)?;
    writer.append_all(records)?;
    let files = writer.close()?;
    files
        .into_iter()
        .next()
        .context("internal error: compaction wrote no file")
}
