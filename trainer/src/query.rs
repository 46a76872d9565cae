//! SQL over telemetry: DataFusion over every compacted Parquet file of a telemetry directory,
//! as table `telemetry`, plus the named reports of `sandstorm telemetry report` and the output
//! formats of `sandstorm telemetry query`.
//!
//! Readers see compacted Parquet only (root files and `date=YYYY-MM-DD/` partitions); rows still
//! in a live writer's write-ahead log (`.wal/`) become visible when it compacts
//! (docs/telemetry.md).

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use sandstorm_features::telemetry;
use sandstorm_storage::Location;

use crate::TrainerError;

/// The table name queries use.
pub const TABLE: &str = "telemetry";

/// The result of a query: its schema (also when it returned no rows) and its batches.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// How `sandstorm telemetry query` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

impl std::str::FromStr for OutputFormat {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "parquet" => Ok(Self::Parquet),
            other => Err(TrainerError::Query(format!(
                "unknown output format `{other}`: use table, csv, json or parquet"
            ))),
        }
    }
}

/// A named report of `sandstorm telemetry report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Runs, total and mean actual cost.
    Spend,
    /// p50 and p95 of `total_latency_ms`.
    Latency,
    /// Failure rate (status other than `ok`) by status and error class.
    Failures,
}

impl std::str::FromStr for Report {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spend" => Ok(Self::Spend),
            "latency" => Ok(Self::Latency),
            "failures" => Ok(Self::Failures),
            other => Err(TrainerError::Query(format!(
                "unknown report `{other}`: use spend, latency or failures"
            ))),
        }
    }
}

/// Runs `sql` over the telemetry under `dir`. Bad SQL (syntax, unknown column or function,
/// type errors) is a [`TrainerError::Query`] carrying DataFusion's message.
pub fn query_telemetry(dir: &Path, sql: &str) -> Result<QueryOutput, TrainerError> {
    query_location(&Location::Local(dir.to_owned()), sql)
}

/// [`query_telemetry`] over the telemetry at `location`: a local directory or an
/// object-store prefix (`s3://bucket/prefix`, registered with the DataFusion session).
pub fn query_location(location: &Location, sql: &str) -> Result<QueryOutput, TrainerError> {
    crate::data::check_location(
        location,
        " (rows still in a writer's log appear once it compacts; `sandstorm telemetry compact` \
         recovers logs of writers that died)",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TrainerError::Internal(e.to_string()))?;
    runtime.block_on(async {
        let ctx = session(location).await?;
        let frame = ctx.sql(sql).await.map_err(user_error)?;
        let schema: SchemaRef = Arc::clone(frame.schema().inner());
        let batches = frame.collect().await.map_err(user_error)?;
        Ok(QueryOutput { schema, batches })
    })
}

/// A DataFusion session with the telemetry at `location` registered as table [`TABLE`].
async fn session(location: &Location) -> Result<SessionContext, TrainerError> {
    let config = SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let ctx = SessionContext::new_with_config(config);
    crate::data::register(&ctx, TABLE, location).await?;
    Ok(ctx)
}

/// DataFusion errors of planning or running a user's SQL are the user's.
fn user_error(e: DataFusionError) -> TrainerError {
    match e {
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => {
            TrainerError::DataFusion(e)
        }
        DataFusionError::Internal(_) => TrainerError::DataFusion(e),
        other => TrainerError::Query(other.strip_backtrace()),
    }
}

/// The SQL of `report` grouped by the telemetry columns `by` (none: one row overall).
pub fn report_sql(report: Report, by: &[String]) -> Result<String, TrainerError> {
    let schema = telemetry::schema();
    let mut columns = Vec::with_capacity(by.len());
    for name in by {
        let name = name.trim();
        let field = schema.field_with_name(name).map_err(|_| {
            let known: Vec<&str> = schema
                .fields()
                .iter()
                .filter(|f| groupable(f.data_type()))
                .map(|f| f.name().as_str())
                .collect();
            TrainerError::Query(format!(
                "unknown column `{name}` in --by; group by one of: {}",
                known.join(", ")
            ))
        })?;
        if !groupable(field.data_type()) {
            return Err(TrainerError::Query(format!(
                "column `{name}` ({}) cannot be grouped by",
                field.data_type()
            )));
        }
        columns.push(format!("\"{name}\""));
    }
    let keys = columns.join(", ");
    let select_keys = if keys.is_empty() {
        String::new()
    } else {
        format!("{keys}, ")
    };
    let group = |extra: &str| match (keys.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!(" GROUP BY {extra}"),
        (false, true) => format!(" GROUP BY {keys}"),
        (false, false) => format!(" GROUP BY {keys}, {extra}"),
    };
    let order = |extra: &str| match (keys.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!(" ORDER BY {extra}"),
        (false, true) => format!(" ORDER BY {keys}"),
        (false, false) => format!(" ORDER BY {keys}, {extra}"),
    };
    Ok(match report {
        Report::Spend => format!(
            "SELECT {select_keys}COUNT(*) AS runs, SUM(cost_usd) AS total_cost_usd, \
             AVG(cost_usd) AS mean_cost_usd FROM {TABLE}{}{}",
            group(""),
            order("")
        ),
        Report::Latency => format!(
            "SELECT {select_keys}COUNT(*) AS runs, \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY total_latency_ms) AS p50_latency_ms, \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY total_latency_ms) AS p95_latency_ms \
             FROM {TABLE}{}{}",
            group(""),
            order("")
        ),
        Report::Failures => {
            let partition = if keys.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {keys}")
            };
            format!(
                "SELECT {select_keys}status, COALESCE(error_class, '') AS error_class, \
                 failures, runs, CAST(failures AS DOUBLE) / CAST(runs AS DOUBLE) AS failure_rate \
                 FROM (SELECT {select_keys}status, error_class, COUNT(*) AS failures, \
                 SUM(COUNT(*)) OVER ({partition}) AS runs FROM {TABLE}{}) \
                 WHERE status <> 'ok'{}",
                group("status, error_class"),
                order("failure_rate DESC, status, error_class")
            )
        }
    })
}

/// Runs a named report over the telemetry under `dir`.
pub fn report_telemetry(
    dir: &Path,
    report: Report,
    by: &[String],
) -> Result<QueryOutput, TrainerError> {
    query_telemetry(dir, &report_sql(report, by)?)
}

/// Runs a named report over the telemetry at `location`.
pub fn report_location(
    location: &Location,
    report: Report,
    by: &[String],
) -> Result<QueryOutput, TrainerError> {
    query_location(location, &report_sql(report, by)?)
}

fn groupable(t: &DataType) -> bool {
    !matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_)
    )
}

/// Renders `output` as text: an aligned table, CSV with a header, or JSON (an array of
/// objects). Parquet is binary: use [`write_output`].
pub fn render(output: &QueryOutput, format: OutputFormat) -> Result<String, TrainerError> {
    let arrow_err = |e: arrow::error::ArrowError| TrainerError::Internal(e.to_string());
    match format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&output.batches)
                .map_err(arrow_err)?;
            if output.batches.is_empty() {
                let names: Vec<&str> = output
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                return Ok(format!("(no rows; columns: {})\n", names.join(", ")));
            }
            Ok(format!("{table}\n"))
        }
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                for batch in &output.batches {
                    writer.write(batch).map_err(arrow_err)?;
                }
            }
            if output.batches.is_empty() {
                let names: Vec<&str> = output
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                buf.extend_from_slice(names.join(",").as_bytes());
                buf.push(b'\n');
            }
            String::from_utf8(buf).map_err(|e| TrainerError::Internal(e.to_string()))
        }
        OutputFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut buf);
                let refs: Vec<&RecordBatch> = output.batches.iter().collect();
                writer.write_batches(&refs).map_err(arrow_err)?;
                writer.finish().map_err(arrow_err)?;
            }
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            buf.push(b'\n');
            String::from_utf8(buf).map_err(|e| TrainerError::Internal(e.to_string()))
        }
        OutputFormat::Parquet => Err(TrainerError::Query(
            "parquet output is binary: give --output FILE".to_owned(),
        )),
    }
}

/// Writes `output` to `path` in `format` (Parquet atomically, like all telemetry files).
pub fn write_output(
    output: &QueryOutput,
    format: OutputFormat,
    path: &Path,
) -> Result<(), TrainerError> {
    if format == OutputFormat::Parquet {
        let batches = if output.batches.is_empty() {
            vec![RecordBatch::new_empty(Arc::clone(&output.schema))]
        } else {
            output.batches.clone()
        };
        return sandstorm_datasets::write_parquet(path, &batches)
            .map_err(|e| TrainerError::Input(e.to_string()));
    }
    let text = render(output, format)?;
    std::fs::write(path, text).map_err(|source| TrainerError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sql_checks_the_group_columns() {
        let sql = report_sql(Report::Spend, &["provider".into(), "region".into()]).expect("sql");
        assert!(sql.contains("GROUP BY \"provider\", \"region\""), "{sql}");
        let err = report_sql(Report::Spend, &["provider; DROP".into()]).expect_err("bad");
        assert!(err.to_string().contains("unknown column"), "{err}");
        let err = report_sql(Report::Latency, &["history".into()]).expect_err("struct");
        assert!(err.to_string().contains("cannot be grouped"), "{err}");
        let overall = report_sql(Report::Failures, &[]).expect("sql");
        assert!(overall.contains("OVER ()"), "{overall}");
    }

    #[test]
    fn formats_and_reports_parse() {
        assert_eq!("csv".parse::<OutputFormat>().ok(), Some(OutputFormat::Csv));
        assert!("xml".parse::<OutputFormat>().is_err());
        assert_eq!("latency".parse::<Report>().ok(), Some(Report::Latency));
        assert!("cost".parse::<Report>().is_err());
    }
}
