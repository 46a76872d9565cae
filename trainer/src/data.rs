//! Loads telemetry Parquet with DataFusion, in time order, as telemetry rows.

use std::path::Path;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use sandstorm_features::telemetry::{self, TelemetryRecord};

use crate::TrainerError;

/// Reads every `*.parquet` file under `dir` ordered by request time.
pub(crate) fn load_telemetry(dir: &Path) -> Result<Vec<TelemetryRecord>, TrainerError> {
    if !dir.is_dir() {
        return Err(TrainerError::Input(format!(
            "telemetry directory {} does not exist",
            dir.display()
        )));
    }
    if !has_parquet(dir) {
        return Err(TrainerError::Input(format!(
            "no .parquet files under {}",
            dir.display()
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TrainerError::Internal(e.to_string()))?;
    let batches = runtime.block_on(async {
        // Plain Utf8 columns (not views) so batches match the telemetry schema exactly.
        let config = SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let ctx = SessionContext::new_with_config(config);
        let location = format!("{}/", dir.display());
        ctx.register_parquet("telemetry", &location, ParquetReadOptions::default())
            .await?;
        ctx.sql("SELECT * FROM telemetry ORDER BY ts_request_us, run_id, attempt")
            .await?
            .collect()
            .await
    })?;
    let mut rows = Vec::new();
    for batch in &batches {
        telemetry::check_schema(batch.schema_ref())
            .map_err(|e| TrainerError::Input(format!("{}: {e}", dir.display())))?;
        rows.extend(telemetry::from_record_batch(batch)?);
    }
    Ok(rows)
}

/// Whether any `*.parquet` file lies under `dir`.
pub(crate) fn has_parquet(dir: &Path) -> bool {
    walk(dir).any(|p| p.extension().is_some_and(|e| e == "parquet"))
}

fn walk(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    std::iter::from_fn(move || {
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            } else {
                return Some(path);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_datasets::{SimulatorConfig, TelemetryWriter, WriterOptions, simulate};
    use sandstorm_features::Catalog;

    #[test]
    fn loads_the_writers_date_partitions_beside_older_root_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SimulatorConfig {
            rows: 60,
            seed: 9,
            days: 3,
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

        let loaded = load_telemetry(dir.path()).expect("load");
        let mut want = rows;
        want.sort_by(|a, b| {
            (a.ts_request_us, &a.run_id, a.attempt).cmp(&(b.ts_request_us, &b.run_id, b.attempt))
        });
        assert_eq!(loaded, want);
    }
}
