//! The HTML report of an evaluation (filled in below).

use std::path::Path;

use anyhow::Result;

use crate::eval::EvalResult;

pub(crate) fn write(_result: &EvalResult, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    Ok(())
}
