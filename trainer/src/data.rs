//! Telemetry locations for the SQL engine (`query`): checking that a directory or an
//! object-store prefix holds Parquet, and registering it with a DataFusion session (for an
//! object store, the store first). The trainer's own reading is `pipeline` (polars).

use std::path::Path;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sandstorm_storage::Location;

use crate::TrainerError;

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
