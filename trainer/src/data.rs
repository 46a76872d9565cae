//! Telemetry directory helpers of the SQL engine (`query`); the trainer's own reading is
//! `pipeline` (polars).

use std::path::Path;

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
