//! Loads telemetry Parquet with DataFusion, in time order, as telemetry rows, from a local
//! directory or an object store (the store is registered with the DataFusion session, which
//! then reads the objects directly).

use std::path::Path;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use sandstorm_features::telemetry::{self, TelemetryRecord};
use sandstorm_storage::Location;

use crate::TrainerError;

/// Reads every `*.parquet` file under `dir` ordered by request time.
pub(crate) fn load_telemetry(dir: &Path) -> Result<Vec<TelemetryRecord>, TrainerError> {
    load_telemetry_at(&Location::Local(dir.to_owned()))
}

/// Checks that `location` holds telemetry Parquet; `hint` ends the error when it holds none.
pub(crate) fn check_location(location: &Location, hint: &str) -> Result<(), TrainerError> {
    match location {
        Location::Local(dir) => {
            if !dir.is_dir() {
                return Err(TrainerError::Input(format!(
                    "telemetry directory {} does not exist",
                    dir.display()
                )));
            }
            if !has_parquet(dir) {
                return Err(TrainerError::Input(format!(
                    "no .parquet files under {}{hint}",
                    dir.display()
                )));
            }
        }
        Location::Remote(remote) => {
            if !remote.list()?.iter().any(|o| o.name.ends_with(".parquet")) {
                return Err(TrainerError::Input(format!(
                    "no .parquet objects under {}{hint}",
                    remote.url()
                )));
            }
        }
    }
    Ok(())
}

/// Registers the telemetry at `location` as table `table` of `ctx` (for an object store, the
/// store first, under its `s3://bucket` URL).
pub(crate) async fn register(
    ctx: &SessionContext,
    table: &str,
    location: &Location,
) -> Result<(), TrainerError> {
    let url = match location {
        Location::Local(dir) => format!("{}/", dir.display()),
        Location::Remote(remote) => {
            let store_url = ObjectStoreUrl::parse(remote.store_url())?;
            ctx.register_object_store(store_url.as_ref(), remote.store());
            format!("{}/", remote.url())
        }
    };
    ctx.register_parquet(table, &url, ParquetReadOptions::default())
        .await?;
    Ok(())
}

/// Reads every `*.parquet` file or object at `location` ordered by request time.
pub(crate) fn load_telemetry_at(location: &Location) -> Result<Vec<TelemetryRecord>, TrainerError> {
    check_location(location, "")?;
    // Timers and I/O: an object store's client needs them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainerError::Internal(e.to_string()))?;
    let batches = runtime.block_on(async {
        // Plain Utf8 columns (not views) so batches match the telemetry schema exactly.
        let config = SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let ctx = SessionContext::new_with_config(config);
        register(&ctx, "telemetry", location).await?;
        Ok::<_, TrainerError>(
            ctx.sql("SELECT * FROM telemetry ORDER BY ts_request_us, run_id, attempt")
                .await?
                .collect()
                .await?,
        )
    })?;
    let mut rows = Vec::new();
    for batch in &batches {
        telemetry::check_schema(batch.schema_ref())
            .map_err(|e| TrainerError::Input(format!("{location}: {e}")))?;
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
