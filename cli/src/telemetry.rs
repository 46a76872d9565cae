//! `sandstorm telemetry`: SQL over the telemetry Parquet (`query`), the named reports
//! (`report spend|latency|failures --by ...`) and `compact`, which recovers the write-ahead logs
//! of writers that died and publishes their rows (docs/telemetry.md). Every command takes a
//! directory or an object-store URL (`s3://bucket/prefix`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sandstorm_storage::Location;
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
        /// Telemetry location (a directory path, file:// or s3:// URL).
        #[arg(
            long,
            env = "SANDSTORM_TELEMETRY",
            default_value = "sandstorm-telemetry"
        )]
        telemetry: String,
        /// With an s3:// location: the local spool of the writers to recover and publish
        /// (default: ~/.cache/sandstorm/telemetry-spool/<url>).
        #[arg(long, env = "SANDSTORM_TELEMETRY_SPOOL")]
        spool_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Telemetry location (a directory path, file:// or s3:// URL).
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
            let location = Location::parse("--telemetry", &out.telemetry)?;
            let result = query::query_location(&location, &sql)?;
            emit(&result, &out)
        }
        TelemetryCommand::Report { report, by, out } => {
            let location = Location::parse("--telemetry", &out.telemetry)?;
            let report = match report {
                ReportKind::Spend => Report::Spend,
                ReportKind::Latency => Report::Latency,
                ReportKind::Failures => Report::Failures,
            };
            let by: Vec<String> = by.into_iter().filter(|c| !c.trim().is_empty()).collect();
            let result = query::report_location(&location, report, &by)?;
            emit(&result, &out)
        }
        TelemetryCommand::Compact {
            telemetry,
            spool_dir,
        } => compact(&telemetry, spool_dir),
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

fn compact(location: &str, spool_dir: Option<PathBuf>) -> Result<ExitCode> {
    let location = Location::parse("--telemetry", location)?;
    let writer = open_writer(&location, spool_dir)?;
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

/// A telemetry writer on `location` for a one-shot command: no background thread; closing it
/// compacts (and, on an object store, publishes) what it appended. `spool_dir` (else
/// `$SANDSTORM_TELEMETRY_SPOOL`, else the default) is the local spool of an object store.
pub(crate) fn open_writer(
    location: &Location,
    spool_dir: Option<PathBuf>,
) -> Result<sandstorm_datasets::TelemetryWriter> {
    let options = sandstorm_datasets::WriterOptions {
        background: false,
        spool_dir: spool_dir
            .or_else(|| std::env::var_os("SANDSTORM_TELEMETRY_SPOOL").map(PathBuf::from)),
        ..Default::default()
    };
    sandstorm_datasets::TelemetryWriter::open_at(location, options)
        .with_context(|| format!("opening telemetry {location}"))
}

/// Appends `records` to the telemetry at `location` and compacts them at once (one-shot
/// commands have no later moment to do it); returns the first Parquet file (or object URL)
/// holding them.
pub(crate) fn append_now(
    location: &Location,
    spool_dir: Option<PathBuf>,
    records: &[sandstorm_features::telemetry::TelemetryRecord],
) -> Result<PathBuf> {
    let writer = open_writer(location, spool_dir)?;
    writer.append_all(records)?;
    let files = writer.close()?;
    files
        .into_iter()
        .next()
        .context("internal error: compaction wrote no file")
}
