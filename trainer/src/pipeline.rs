//! The trainer's data pipeline, in polars: which telemetry rows a model set is trained on.
//!
//! [`select`] lists the compacted Parquet files of a telemetry directory (root files of the
//! older layout and Hive partitions `date=YYYY-MM-DD/`; hidden entries such as `.wal/` are
//! skipped), drops the partitions that lie outside the `[data]` window, and scans the rest as
//! one polars `LazyFrame`: the window is a predicate polars pushes into the Parquet reader (row
//! groups outside it are skipped by their statistics), derived columns and the row filter are
//! polars SQL (`SQLContext`, table `telemetry`), then the rows are ordered by request time,
//! de-duplicated and cut to the most recent `max_rows`. The result goes to the shared encoder
//! as telemetry rows: polars hands the frame over as an Arrow IPC stream, read back with the
//! telemetry schema by `sandstorm_features::telemetry::from_record_batch`, so the rows are
//! exactly those any other reader of the files sees and the feature encoding stays the one in
//! `sandstorm_features::encoding`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use polars::sql::SQLContext;
use sandstorm_features::telemetry::{self, TelemetryRecord, from_micros};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::TrainerError;

/// The table name of `[data]` SQL (`filter`, `columns`).
const TABLE: &str = "telemetry";
/// Column of the request time, also the time order of the rows.
const TIME_COLUMN: &str = "ts_request_us";
/// The order of rows: request time, then run and attempt (ties broken deterministically).
const ORDER: [&str; 3] = [TIME_COLUMN, "run_id", "attempt"];
/// A column name no telemetry column or derived column may take.
const FILTER_PROBE: &str = "__sandstorm_filter";

/// `[data]` of `train.toml`: which telemetry rows to train on. The default keeps every row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSelection {
    /// Only rows requested at or after this time (UTC microseconds since the Unix epoch).
    pub since_us: Option<i64>,
    /// Only rows requested before this time (exclusive).
    pub until_us: Option<i64>,
    /// Derived columns: name → polars SQL expression over the telemetry columns, usable in
    /// `filter` and `dedupe_by` (never features: the encoding is `features::encoding`).
    pub columns: BTreeMap<String, String>,
    /// A polars SQL predicate over the telemetry (and derived) columns; rows for which it is
    /// false or null are dropped.
    pub filter: Option<String>,
    /// Keep only the most recent row of each combination of these columns.
    pub dedupe_by: Vec<String>,
    /// Keep only the most recent rows of the selection.
    pub max_rows: Option<usize>,
}

impl DataSelection {
    /// Whether this selection keeps every row.
    pub fn is_everything(&self) -> bool {
        self == &Self::default()
    }

    /// Sets `since` from a date (`2026-11-01`, midnight UTC) or an RFC 3339 time.
    pub fn set_since(&mut self, text: &str) -> Result<(), TrainerError> {
        self.since_us = Some(parse_time("data.since", text)?);
        Ok(())
    }

    /// Sets `until` (exclusive) from a date or an RFC 3339 time.
    pub fn set_until(&mut self, text: &str) -> Result<(), TrainerError> {
        self.until_us = Some(parse_time("data.until", text)?);
        Ok(())
    }

    /// Checks what can be checked without data: times in order, SQL that parses, names free.
    pub(crate) fn validate(&self) -> Result<(), TrainerError> {
        if let (Some(s), Some(u)) = (self.since_us, self.until_us)
            && s >= u
        {
            return Err(config_error(format!(
                "data.since ({}) must be before data.until ({})",
                rfc3339_us(s),
                rfc3339_us(u)
            )));
        }
        if self.max_rows == Some(0) {
            return Err(config_error(
                "data.max_rows must be at least 1 (leave it out to keep every row)".to_owned(),
            ));
        }
        let names = telemetry_column_names();
        for (name, expr) in &self.columns {
            if names.contains(&name.as_str()) || name == FILTER_PROBE {
                return Err(config_error(format!(
                    "data.columns.{name}: `{name}` is a telemetry column; give the derived column another name"
                )));
            }
            parse_sql(&format!("data.columns.{name}"), expr)?;
        }
        if let Some(f) = &self.filter {
            parse_sql("data.filter", f)?;
        }
        for c in &self.dedupe_by {
            if !names.contains(&c.as_str()) && !self.columns.contains_key(c) {
                return Err(config_error(format!(
                    "data.dedupe_by: unknown column `{c}` (expected a telemetry column or a name from [data.columns])"
                )));
            }
        }
        Ok(())
    }
}

/// Parses `"2026-11-01"` (midnight UTC) or an RFC 3339 time (`"2026-11-01T08:00:00Z"`) into
/// microseconds since the Unix epoch; `key` names the setting in errors.
pub(crate) fn parse_time(key: &str, text: &str) -> Result<i64, TrainerError> {
    let t = text.trim();
    let parsed = if let Ok(d) = Date::parse(t, format_description!("[year]-[month]-[day]")) {
        Some(d.midnight().assume_utc())
    } else if let Ok(dt) = OffsetDateTime::parse(t, &Rfc3339) {
        Some(dt)
    } else {
        // TOML's own local date-times (`2026-11-01T08:00:00`, no offset) are read as UTC.
        PrimitiveDateTime::parse(
            t,
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .ok()
        .map(PrimitiveDateTime::assume_utc)
    };
    parsed
        .map(telemetry::to_micros)
        .ok_or_else(|| {
            config_error(format!(
                "{key}: invalid time `{text}` (expected a date such as 2026-11-01 or an RFC 3339 time such as 2026-11-01T08:00:00Z)"
            ))
        })
}

/// What a selection kept, recorded in `training.json` (`data`) and the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataSummary {
    /// The `[data]` settings (RFC 3339 times; absent keys are null).
    pub since: Option<String>,
    pub until: Option<String>,
    pub columns: BTreeMap<String, String>,
    pub filter: Option<String>,
    pub dedupe_by: Vec<String>,
    pub max_rows: Option<usize>,
    /// Parquet files under the telemetry directory.
    pub files: usize,
    /// Files read: date partitions entirely outside the window are not opened.
    pub files_scanned: usize,
    /// Rows in the files read.
    pub rows_scanned: usize,
    /// Rows of those inside `[since, until)`.
    pub rows_in_window: usize,
    /// Rows of those for which `filter` holds.
    pub rows_after_filter: usize,
    /// Rows left after `dedupe_by`.
    pub rows_after_dedupe: usize,
    /// Rows selected (after `max_rows`), in time order.
    pub rows: usize,
}

/// The rows a selection kept, ordered by (request time, run, attempt), and what it did.
#[derive(Debug, Clone)]
pub struct Selected {
    pub records: Vec<TelemetryRecord>,
    pub summary: DataSummary,
}

/// Reads the telemetry under `dir` through `selection` (see the module documentation).
pub fn select(dir: &Path, selection: &DataSelection) -> Result<Selected, TrainerError> {
    selection.validate()?;
    let files = parquet_files(dir)?;
    let total_files = files.len();
    let scanned: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| f.overlaps(selection.since_us, selection.until_us))
        .map(|f| f.path)
        .collect();
    let mut summary = DataSummary {
        since: selection.since_us.map(rfc3339_us),
        until: selection.until_us.map(rfc3339_us),
        columns: selection.columns.clone(),
        filter: selection.filter.clone(),
        dedupe_by: selection.dedupe_by.clone(),
        max_rows: selection.max_rows,
        files: total_files,
        files_scanned: scanned.len(),
        rows_scanned: 0,
        rows_in_window: 0,
        rows_after_filter: 0,
        rows_after_dedupe: 0,
        rows: 0,
    };
    if scanned.is_empty() {
        tracing::info!(dir = %dir.display(), files = total_files, "no telemetry partition in the data window");
        return Ok(Selected {
            records: Vec::new(),
            summary,
        });
    }
    let polars_err = |e: PolarsError| TrainerError::Input(format!("{}: {e}", dir.display()));

    let scan = scan(&scanned).map_err(polars_err)?;
    let names = telemetry_column_names();
    let schema = scan.clone().collect_schema().map_err(polars_err)?;
    if let Some(missing) = names.iter().find(|n| !schema.contains(n)) {
        return Err(TrainerError::Input(format!(
            "{}: telemetry column `{missing}` is missing",
            dir.display()
        )));
    }
    summary.rows_scanned = count(scan.clone()).map_err(polars_err)?;

    let mut frame = windowed(scan, selection.since_us, selection.until_us);
    summary.rows_in_window = if selection.since_us.is_some() || selection.until_us.is_some() {
        count(frame.clone()).map_err(polars_err)?
    } else {
        summary.rows_scanned
    };

    // Derived columns and the filter: polars SQL over table `telemetry`.
    for (name, expr) in &selection.columns {
        let key = format!("data.columns.{name}");
        frame = sql(
            &key,
            expr,
            frame,
            &format!("SELECT *, {expr} AS {} FROM {TABLE}", quote_ident(name)),
        )?;
    }
    if let Some(f) = &selection.filter {
        let probe = sql(
            "data.filter",
            f,
            frame.clone(),
            &format!("SELECT ({f}) AS {FILTER_PROBE} FROM {TABLE}"),
        )?;
        let dtype = probe
            .clone()
            .collect_schema()
            .map_err(|e| sql_error("data.filter", f, &e))?
            .get(FILTER_PROBE)
            .cloned();
        if dtype != Some(DataType::Boolean) {
            return Err(config_error(format!(
                "data.filter: `{f}` must be a true/false condition, it is of type {}",
                dtype.map_or_else(|| "unknown".to_owned(), |d| d.to_string())
            )));
        }
        frame = sql(
            "data.filter",
            f,
            frame,
            &format!("SELECT * FROM {TABLE} WHERE {f}"),
        )?;
    }
    let filtered = frame.collect().map_err(|e| match &selection.filter {
        // Errors that only show on data (a cast that fails on some row, ...).
        Some(f) => sql_error("data.filter", f, &e),
        None => polars_err(e),
    })?;
    summary.rows_after_filter = filtered.height();

    // Time order, one row per dedupe key (the most recent), the most recent `max_rows`.
    let sort = SortMultipleOptions::default().with_maintain_order(true);
    let mut frame = filtered.lazy().sort(ORDER, sort);
    if !selection.dedupe_by.is_empty() {
        let keys: Vec<Expr> = selection
            .dedupe_by
            .iter()
            .map(|c| col(c.as_str()))
            .collect();
        frame = frame.unique_stable_generic(Some(keys), UniqueKeepStrategy::Last);
    }
    let deduped = frame.collect().map_err(polars_err)?;
    summary.rows_after_dedupe = deduped.height();
    let mut frame = deduped.lazy();
    if let Some(n) = selection.max_rows {
        frame = frame.tail(IdxSize::try_from(n).unwrap_or(IdxSize::MAX));
    }
    // Only the telemetry columns, in schema order, go to the shared decoder.
    let mut out = frame
        .select(names.iter().map(|n| col(*n)).collect::<Vec<_>>())
        .collect()
        .map_err(polars_err)?;
    summary.rows = out.height();
    let records = to_records(&mut out).map_err(|e| match e {
        TrainerError::Features(f) => TrainerError::Input(format!("{}: {f}", dir.display())),
        other => other,
    })?;
    tracing::info!(
        dir = %dir.display(),
        files = summary.files_scanned,
        scanned = summary.rows_scanned,
        in_window = summary.rows_in_window,
        after_filter = summary.rows_after_filter,
        rows = summary.rows,
        "selected telemetry"
    );
    Ok(Selected { records, summary })
}

/// One lazy scan over `files` (no Hive columns: the partition value is `ts_request_us`).
fn scan(files: &[PathBuf]) -> PolarsResult<LazyFrame> {
    let paths = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p))
        .collect::<PolarsResult<Vec<_>>>()?;
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(false),
            ..HiveOptions::default()
        },
        ..ScanArgsParquet::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
}

/// `frame` inside `[since, until)`: a plain column-against-literal predicate, which polars
/// pushes into the Parquet scan (row groups outside it are skipped by their statistics).
fn windowed(mut frame: LazyFrame, since: Option<i64>, until: Option<i64>) -> LazyFrame {
    let time = || col(TIME_COLUMN);
    let micros = |us: i64| {
        lit(us).cast(DataType::Datetime(
            TimeUnit::Microseconds,
            Some(TimeZone::UTC),
        ))
    };
    if let Some(s) = since {
        frame = frame.filter(time().gt_eq(micros(s)));
    }
    if let Some(u) = until {
        frame = frame.filter(time().lt(micros(u)));
    }
    frame
}

/// Rows of `frame`; polars reads only what it needs (no column for a bare scan, the
/// predicate's columns for a filtered one).
fn count(frame: LazyFrame) -> PolarsResult<usize> {
    let df = frame.select([len().alias("n")]).collect()?;
    let n = df.column("n")?.get(0)?.extract::<u64>().unwrap_or(0);
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Runs `query` (built around the user's SQL `text`) with `frame` as table `telemetry`;
/// errors name `key` and quote `text`.
fn sql(key: &str, text: &str, frame: LazyFrame, query: &str) -> Result<LazyFrame, TrainerError> {
    let mut ctx = SQLContext::new();
    ctx.register(TABLE, frame);
    let out = ctx.execute(query).map_err(|e| sql_error(key, text, &e))?;
    // Resolving the schema surfaces unknown columns and type errors now, with the key.
    out.clone()
        .collect_schema()
        .map_err(|e| sql_error(key, text, &e))?;
    Ok(out)
}

/// Parses `text` as one SQL expression (syntax only; columns are checked against the data).
fn parse_sql(key: &str, text: &str) -> Result<(), TrainerError> {
    if text.trim().is_empty() {
        return Err(config_error(format!("{key} is empty")));
    }
    polars::sql::sql_expr(text)
        .map(|_| ())
        .map_err(|e| sql_error(key, text, &e))
}

fn sql_error(key: &str, text: &str, e: &PolarsError) -> TrainerError {
    config_error(format!("{key}: `{text}`: {e}"))
}

fn config_error(message: String) -> TrainerError {
    TrainerError::Config(message)
}

/// `name` as a double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The frame's rows as telemetry rows: an Arrow IPC stream from polars, read back by
/// `arrow` and decoded with the telemetry schema (`features::telemetry::from_record_batch`).
fn to_records(df: &mut DataFrame) -> Result<Vec<TelemetryRecord>, TrainerError> {
    use polars::io::SerWriter;
    use polars::io::ipc::IpcStreamWriter;

    let mut bytes = Vec::new();
    IpcStreamWriter::new(&mut bytes)
        .with_compat_level(CompatLevel::oldest())
        .finish(df)
        .map_err(|e| TrainerError::Internal(format!("handing rows from polars to arrow: {e}")))?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| TrainerError::Internal(format!("reading rows from polars: {e}")))?;
    let mut records = Vec::with_capacity(df.height());
    for batch in reader {
        let batch =
            batch.map_err(|e| TrainerError::Internal(format!("reading rows from polars: {e}")))?;
        records.extend(telemetry::from_record_batch(&batch)?);
    }
    Ok(records)
}

fn telemetry_column_names() -> Vec<&'static str> {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            telemetry::schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .iter()
        .map(String::as_str)
        .collect()
}

fn rfc3339_us(us: i64) -> String {
    from_micros(us).format(&Rfc3339).unwrap_or_default()
}

/// A Parquet file of a telemetry directory and, for a Hive partition, its UTC date.
#[derive(Debug)]
struct TelemetryFile {
    path: PathBuf,
    /// Microseconds of the partition's first instant (`date=YYYY-MM-DD`), `None` for files
    /// outside a date partition.
    day_start_us: Option<i64>,
}

const DAY_US: i64 = 86_400_000_000;

impl TelemetryFile {
    /// Whether rows of this file can lie in `[since, until)`.
    fn overlaps(&self, since: Option<i64>, until: Option<i64>) -> bool {
        let Some(start) = self.day_start_us else {
            return true;
        };
        since.is_none_or(|s| start + DAY_US > s) && until.is_none_or(|u| start < u)
    }
}

/// The `*.parquet` files under `dir` (hidden entries such as `.wal/` skipped), sorted.
fn parquet_files(dir: &Path) -> Result<Vec<TelemetryFile>, TrainerError> {
    if !dir.is_dir() {
        return Err(TrainerError::Input(format!(
            "telemetry directory {} does not exist",
            dir.display()
        )));
    }
    let io = |path: &Path, source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), None)];
    while let Some((current, day)) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(|e| io(&current, e))? {
            let entry = entry.map_err(|e| io(&current, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                let day = name
                    .strip_prefix("date=")
                    .and_then(|d| Date::parse(d, format_description!("[year]-[month]-[day]")).ok())
                    .map(|d| telemetry::to_micros(d.midnight().assume_utc()))
                    .or(day);
                pending.push((path, day));
            } else if name.ends_with(".parquet") {
                files.push(TelemetryFile {
                    path,
                    day_start_us: day,
                });
            }
        }
    }
    if files.is_empty() {
        return Err(TrainerError::Input(format!(
            "no .parquet files under {}",
            dir.display()
        )));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_datasets::{SimulatorConfig, TelemetryWriter, WriterOptions, simulate};
    use sandstorm_features::Catalog;
    use sandstorm_features::telemetry::RunStatus;

    fn sorted(mut rows: Vec<TelemetryRecord>) -> Vec<TelemetryRecord> {
        rows.sort_by(|a, b| {
            (a.ts_request_us, &a.run_id, a.attempt).cmp(&(b.ts_request_us, &b.run_id, b.attempt))
        });
        rows
    }

    /// Simulated rows over `days` days: the first 10 in the older root layout, the rest in
    /// date partitions through the writer, with a live writer's hidden log beside them.
    fn telemetry(rows: usize, days: u32) -> (tempfile::TempDir, Vec<TelemetryRecord>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SimulatorConfig {
            rows,
            seed: 9,
            days,
            ..SimulatorConfig::default()
        };
        let rows: Vec<TelemetryRecord> = simulate(&Catalog::default_catalog(), &cfg).collect();
        sandstorm_datasets::append_records(dir.path(), &rows[..10]).expect("older layout");
        let options = WriterOptions {
            background: false,
            ..WriterOptions::default()
        };
        let writer = TelemetryWriter::open(dir.path(), options).expect("open");
        writer.append_all(&rows[10..]).expect("append");
        let files = writer.close().expect("close");
        assert!(files.len() >= 2, "several date partitions: {files:?}");
        // A hidden file that ends in .parquet (a compaction's temporary file) is not read.
        std::fs::create_dir_all(dir.path().join(".wal/w1")).expect("wal dir");
        std::fs::write(dir.path().join(".wal/w1/.part.parquet"), b"not parquet").expect("tmp");
        (dir, rows)
    }

    #[test]
    fn everything_is_every_row_in_time_order() {
        let (dir, rows) = telemetry(120, 3);
        let got = select(dir.path(), &DataSelection::default()).expect("select");
        assert_eq!(got.records, sorted(rows.clone()));
        let s = &got.summary;
        assert_eq!((s.rows_scanned, s.rows_in_window, s.rows), (120, 120, 120));
        assert_eq!(s.files, s.files_scanned);
        assert!(s.files >= 3, "{s:?}");
    }

    #[test]
    fn the_window_skips_partitions_and_keeps_rows_inside_it() {
        let (dir, rows) = telemetry(300, 4);
        let all = sorted(rows);
        // Boundaries at the middle of the second and the third day of the data.
        let first_day = all[0].ts_request_us.div_euclid(DAY_US) * DAY_US;
        let since = first_day + DAY_US + DAY_US / 2;
        let until = first_day + 2 * DAY_US + DAY_US / 2;
        let sel = DataSelection {
            since_us: Some(since),
            until_us: Some(until),
            ..DataSelection::default()
        };
        let got = select(dir.path(), &sel).expect("select");
        let want: Vec<_> = all
            .iter()
            .filter(|r| (since..until).contains(&r.ts_request_us))
            .cloned()
            .collect();
        assert!(!want.is_empty() && want.len() < all.len());
        assert_eq!(got.records, want);
        let s = &got.summary;
        // Two date partitions plus the root file are read; the other days are not opened.
        assert_eq!(s.files_scanned, 3, "{s:?}");
        assert!(s.files > s.files_scanned, "{s:?}");
        assert_eq!(s.rows_in_window, want.len());
        assert_eq!(s.since.as_deref(), Some(rfc3339_us(since).as_str()));
    }

    #[test]
    fn the_window_is_pushed_into_the_parquet_scan() {
        let (dir, _) = telemetry(60, 2);
        let files: Vec<PathBuf> = parquet_files(dir.path())
            .expect("files")
            .into_iter()
            .map(|f| f.path)
            .collect();
        let frame = windowed(scan(&files).expect("scan"), Some(1), Some(2));
        let plan = frame.clone().explain(true).expect("plan");
        // No filter above the scan: the predicate is the scan's own selection.
        assert!(!plan.contains("FILTER"), "{plan}");
        assert!(
            plan.contains("SELECTION") && plan.contains("ts_request_us"),
            "{plan}"
        );
        // Counting the window reads one column.
        let plan = frame
            .select([len().alias("n")])
            .explain(true)
            .expect("plan");
        assert!(plan.contains("PROJECT 1/"), "{plan}");
    }

    #[test]
    fn sql_filter_derived_columns_dedupe_and_max_rows() {
        let (dir, rows) = telemetry(400, 2);
        let all = sorted(rows);
        let sel = DataSelection {
            columns: BTreeMap::from([("slow".to_owned(), "total_latency_ms > 1000".to_owned())]),
            filter: Some("provider <> 'local' AND attempt = 0 AND NOT slow".to_owned()),
            dedupe_by: vec!["provider".to_owned(), "region".to_owned()],
            max_rows: Some(5),
            ..DataSelection::default()
        };
        let got = select(dir.path(), &sel).expect("select");
        let kept: Vec<&TelemetryRecord> = all
            .iter()
            .filter(|r| r.provider != "local" && r.attempt == 0 && r.total_latency_ms <= 1000.0)
            .collect();
        // The most recent row of each (provider, region), in time order.
        let mut last: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, r) in kept.iter().enumerate() {
            last.insert((r.provider.as_str(), r.region.as_str()), i);
        }
        let mut idx: Vec<usize> = last.into_values().collect();
        idx.sort_unstable();
        let deduped: Vec<TelemetryRecord> = idx.iter().map(|&i| kept[i].clone()).collect();
        let want = deduped[deduped.len().saturating_sub(5)..].to_vec();
        assert_eq!(got.records, want);
        let s = &got.summary;
        assert_eq!(s.rows_after_filter, kept.len());
        assert_eq!(s.rows_after_dedupe, deduped.len());
        assert_eq!(s.rows, 5);
        assert!(kept.len() > deduped.len() && deduped.len() > 5, "{s:?}");
    }

    #[test]
    fn sql_compares_times_and_strings_like_a_data_scientist_writes_them() {
        let (dir, rows) = telemetry(200, 3);
        let all = sorted(rows);
        // Midnight (UTC) after the 100th row, written as a date.
        let cut = (all[100].ts_request_us.div_euclid(DAY_US) + 1) * DAY_US;
        let sel = DataSelection {
            filter: Some(format!(
                "ts_request_us >= '{}' AND status IN ('ok', 'failed') AND region LIKE 'eu%'",
                from_micros(cut).date()
            )),
            ..DataSelection::default()
        };
        let got = select(dir.path(), &sel).expect("select");
        let want: Vec<_> = all
            .iter()
            .filter(|r| {
                r.ts_request_us >= cut
                    && matches!(r.status, RunStatus::Ok | RunStatus::Failed)
                    && r.region.starts_with("eu")
            })
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got.records, want);
    }

    #[test]
    fn bad_settings_are_errors_naming_the_key() {
        let (dir, _) = telemetry(40, 2);
        let cases: Vec<(DataSelection, &str)> = vec![
            (
                DataSelection {
                    filter: Some("provider = ".to_owned()),
                    ..DataSelection::default()
                },
                "data.filter",
            ),
            (
                DataSelection {
                    filter: Some("providr = 'e2b'".to_owned()),
                    ..DataSelection::default()
                },
                "data.filter: `providr = 'e2b'`",
            ),
            (
                DataSelection {
                    filter: Some("total_latency_ms * 2".to_owned()),
                    ..DataSelection::default()
                },
                "data.filter: `total_latency_ms * 2` must be a true/false condition",
            ),
            (
                DataSelection {
                    columns: BTreeMap::from([("x".to_owned(), "nosuch + 1".to_owned())]),
                    ..DataSelection::default()
                },
                "data.columns.x",
            ),
            (
                DataSelection {
                    columns: BTreeMap::from([("provider".to_owned(), "1".to_owned())]),
                    ..DataSelection::default()
                },
                "data.columns.provider: `provider` is a telemetry column",
            ),
            (
                DataSelection {
                    dedupe_by: vec!["runid".to_owned()],
                    ..DataSelection::default()
                },
                "data.dedupe_by: unknown column `runid`",
            ),
            (
                DataSelection {
                    since_us: Some(10),
                    until_us: Some(10),
                    ..DataSelection::default()
                },
                "data.since",
            ),
            (
                DataSelection {
                    max_rows: Some(0),
                    ..DataSelection::default()
                },
                "data.max_rows",
            ),
        ];
        for (sel, want) in cases {
            let err = select(dir.path(), &sel).expect_err(want).to_string();
            assert!(
                err.starts_with("invalid training configuration: ") && err.contains(want),
                "{want}: {err}"
            );
        }
    }

    #[test]
    fn times_parse_as_dates_or_rfc3339() {
        let day = parse_time("data.since", "2026-11-01").expect("date");
        assert_eq!(rfc3339_us(day), "2026-11-01T00:00:00Z");
        let t = parse_time("data.since", "2026-11-01T08:30:00+01:00").expect("rfc3339");
        assert_eq!(t - day, 7 * 3_600_000_000 + 30 * 60_000_000);
        assert_eq!(
            parse_time("data.until", "2026-11-01T08:30:00").expect("local"),
            day + 8 * 3_600_000_000 + 30 * 60_000_000
        );
        let err = parse_time("data.until", "yesterday")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.until: invalid time `yesterday`"),
            "{err}"
        );
    }

    #[test]
    fn a_window_with_no_partition_selects_nothing() {
        let (dir, _) = telemetry(40, 2);
        let sel = DataSelection {
            since_us: Some(parse_time("s", "2000-01-01").expect("t")),
            until_us: Some(parse_time("u", "2000-01-02").expect("t")),
            ..DataSelection::default()
        };
        let got = select(dir.path(), &sel).expect("select");
        // Only the root file (no partition date) is read, and none of its rows is that old.
        assert_eq!(got.summary.files_scanned, 1);
        assert!(got.records.is_empty());
    }
}
