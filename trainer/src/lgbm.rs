//! A thin, safe wrapper over the LightGBM C API for training.
//!
//! `lightgbm3`'s safe `Dataset` cannot pass dataset parameters, so categorical features (which
//! LightGBM fixes when it bins a dataset) cannot be declared through it. This module creates
//! datasets and runs the boosting loop through `lightgbm3-sys` directly and hands back the model
//! as LightGBM's text format; everything else (prediction, importance, SHAP) goes through the
//! safe `lightgbm3::Booster`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};

use lightgbm3_sys as sys;

use crate::TrainerError;

fn last_error() -> String {
    // SAFETY: LGBM_GetLastError returns a pointer to a NUL-terminated thread-local buffer owned
    // by LightGBM that stays valid until the next API call on this thread; we copy it at once.
    unsafe { CStr::from_ptr(sys::LGBM_GetLastError()) }
        .to_string_lossy()
        .into_owned()
}

fn check(code: c_int, what: &str) -> Result<(), TrainerError> {
    if code == 0 {
        Ok(())
    } else {
        Err(TrainerError::LightGbm(format!("{what}: {}", last_error())))
    }
}

fn params_string(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<CString, TrainerError> {
    let text = params
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ");
    CString::new(text)
        .map_err(|_| TrainerError::Config("parameters must not contain NUL bytes".to_owned()))
}

/// A LightGBM dataset owned by this process.
#[derive(Debug)]
pub(crate) struct Dataset {
    handle: sys::DatasetHandle,
}

impl Dataset {
    /// Bins a row-major matrix. `reference` aligns a validation set's bins with the training set.
    pub(crate) fn new(
        rows: &[f64],
        n_features: usize,
        labels: &[f32],
        weights: Option<&[f32]>,
        dataset_params: &serde_json::Map<String, serde_json::Value>,
        reference: Option<&Dataset>,
    ) -> Result<Self, TrainerError> {
        let n_rows = labels.len();
        if n_rows == 0 || rows.len() != n_rows * n_features {
            return Err(TrainerError::Internal(format!(
                "matrix of {} values does not hold {n_rows} rows of {n_features}",
                rows.len()
            )));
        }
        let n_rows_i32 = i32::try_from(n_rows)
            .map_err(|_| TrainerError::Config("more than 2^31 rows".to_owned()))?;
        let params = params_string(dataset_params)?;
        let mut handle: sys::DatasetHandle = std::ptr::null_mut();
        // SAFETY: `rows` holds n_rows * n_features f64 values laid out row-major, as declared by
        // the dtype/nrow/ncol/is_row_major arguments; LightGBM copies the data into its bins
        // before returning; `params` is NUL-terminated; `handle` is written on success only.
        let code = unsafe {
            sys::LGBM_DatasetCreateFromMat(
                rows.as_ptr().cast::<c_void>(),
                sys::C_API_DTYPE_FLOAT64 as c_int,
                n_rows_i32,
                n_features as i32,
                1,
                params.as_ptr(),
                reference.map_or(std::ptr::null_mut(), |r| r.handle),
                &mut handle,
            )
        };
        check(code, "creating dataset")?;
        let dataset = Dataset { handle };
        dataset.set_field("label", labels)?;
        if let Some(w) = weights {
            if w.len() != n_rows {
                return Err(TrainerError::Internal(format!(
                    "{} weights for {n_rows} rows",
                    w.len()
                )));
            }
            // Per-row weights (inverse-propensity weighting): LightGBM multiplies each row's
            // gradient and hessian by its weight.
            dataset.set_field("weight", w)?;
        }
        Ok(dataset)
    }

    fn set_field(&self, name: &str, values: &[f32]) -> Result<(), TrainerError> {
        let field =
            CString::new(name).map_err(|_| TrainerError::Internal("field name".to_owned()))?;
        // SAFETY: the handle is live; `field` is NUL-terminated; `values` holds exactly
        // values.len() f32 values (`label` and `weight` are float32 fields, one per row, as the
        // C_API_DTYPE_FLOAT32 argument says), which LightGBM copies before returning.
        let code = unsafe {
            sys::LGBM_DatasetSetField(
                self.handle,
                field.as_ptr(),
                values.as_ptr().cast::<c_void>(),
                values.len() as c_int,
                sys::C_API_DTYPE_FLOAT32 as c_int,
            )
        };
        check(code, "setting dataset field")
    }
}

impl Drop for Dataset {
    fn drop(&mut self) {
        // SAFETY: the handle came from LGBM_DatasetCreateFromMat and is freed exactly once.
        unsafe { sys::LGBM_DatasetFree(self.handle) };
    }
}

/// Outcome of one training run.
#[derive(Debug)]
pub(crate) struct Trained {
    /// The model in LightGBM's text format.
    pub(crate) model_text: String,
    /// Number of boosting rounds kept.
    pub(crate) num_trees: usize,
    /// The first validation metric after each round.
    pub(crate) valid_curve: Vec<f64>,
}

impl Trained {
    /// The best validation metric over the rounds (NaN without validation).
    pub(crate) fn best_valid_metric(&self, higher_is_better: bool) -> f64 {
        let it = self.valid_curve.iter().copied().filter(|v| v.is_finite());
        if higher_is_better {
            it.fold(f64::NAN, f64::max)
        } else {
            it.fold(f64::NAN, f64::min)
        }
    }
}

struct Booster {
    handle: sys::BoosterHandle,
}

impl Drop for Booster {
    fn drop(&mut self) {
        // SAFETY: the handle came from LGBM_BoosterCreate and is freed exactly once.
        unsafe { sys::LGBM_BoosterFree(self.handle) };
    }
}

impl Booster {
    fn eval(&self, data_idx: c_int) -> Result<Vec<f64>, TrainerError> {
        let mut count: c_int = 0;
        // SAFETY: live handle; `count` is a valid out pointer.
        check(
            unsafe { sys::LGBM_BoosterGetEvalCounts(self.handle, &mut count) },
            "counting metrics",
        )?;
        let mut out = vec![0.0f64; count.max(0) as usize];
        let mut len: c_int = 0;
        // SAFETY: `out` has room for `count` doubles, the number of metrics LightGBM reported.
        check(
            unsafe { sys::LGBM_BoosterGetEval(self.handle, data_idx, &mut len, out.as_mut_ptr()) },
            "evaluating",
        )?;
        out.truncate(len.max(0) as usize);
        Ok(out)
    }

    fn model_text(&self) -> Result<String, TrainerError> {
        let mut len: i64 = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // SAFETY: `buf` has buf.len() writable bytes; LightGBM writes at most buffer_len bytes
            // and reports the full length needed in `len`.
            let code = unsafe {
                sys::LGBM_BoosterSaveModelToString(
                    self.handle,
                    0,
                    -1,
                    0,
                    buf.len() as i64,
                    &mut len,
                    buf.as_mut_ptr().cast::<c_char>(),
                )
            };
            check(code, "saving model")?;
            if (len as usize) <= buf.len() {
                break;
            }
            buf = vec![0u8; len as usize];
        }
        buf.truncate((len as usize).saturating_sub(1)); // drop the trailing NUL
        String::from_utf8(buf)
            .map_err(|_| TrainerError::Internal("model text is not UTF-8".to_owned()))
    }
}

/// Early stopping on a validation set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EarlyStopping<'a> {
    pub(crate) valid: &'a Dataset,
    /// Stop when the first metric has not improved for this many rounds.
    pub(crate) rounds: usize,
    /// Whether the first metric improves upwards (e.g. `auc`).
    pub(crate) higher_is_better: bool,
}

/// Trains a booster for at most `num_iterations` rounds; with `early_stopping`, stops when the
/// validation metric stalls and keeps the best round.
pub(crate) fn train(
    train: &Dataset,
    early_stopping: Option<EarlyStopping<'_>>,
    params: &serde_json::Map<String, serde_json::Value>,
    num_iterations: usize,
) -> Result<Trained, TrainerError> {
    let p = params_string(params)?;
    let mut handle: sys::BoosterHandle = std::ptr::null_mut();
    // SAFETY: `train.handle` is a live dataset; `p` is NUL-terminated; `handle` is an out pointer.
    check(
        unsafe { sys::LGBM_BoosterCreate(train.handle, p.as_ptr(), &mut handle) },
        "creating booster",
    )?;
    let booster = Booster { handle };
    if let Some(es) = &early_stopping {
        // SAFETY: both handles are live; LightGBM keeps a pointer to the validation dataset,
        // which outlives the booster (it is borrowed for this whole function).
        check(
            unsafe { sys::LGBM_BoosterAddValidData(booster.handle, es.valid.handle) },
            "adding validation data",
        )?;
    }

    let mut curve = Vec::new();
    let mut best = (0usize, f64::NAN);
    let mut rounds = 0;
    for round in 1..=num_iterations {
        let mut finished: c_int = 0;
        // SAFETY: live handle; `finished` is a valid out pointer.
        check(
            unsafe { sys::LGBM_BoosterUpdateOneIter(booster.handle, &mut finished) },
            "boosting",
        )?;
        if finished != 0 {
            break;
        }
        rounds = round;
        let Some(es) = &early_stopping else {
            continue;
        };
        let metric = booster.eval(1)?.first().copied().unwrap_or(f64::NAN);
        curve.push(metric);
        let better = best.1.is_nan()
            || if es.higher_is_better {
                metric > best.1
            } else {
                metric < best.1
            };
        if better {
            best = (round, metric);
        } else if round - best.0 >= es.rounds {
            break;
        }
    }
    let rounds_done = rounds;
    let keep = if best.0 == 0 { rounds_done } else { best.0 };
    for _ in keep..rounds_done {
        // SAFETY: live handle; we roll back only rounds that were added above.
        check(
            unsafe { sys::LGBM_BoosterRollbackOneIter(booster.handle) },
            "rolling back",
        )?;
    }
    Ok(Trained {
        model_text: booster.model_text()?,
        num_trees: keep,
        valid_curve: curve,
    })
}

/// Every LightGBM parameter name with its aliases (`LGBM_DumpParamAliases`), as LightGBM
/// itself knows them, so configuration files are checked against the library they run on.
pub(crate) fn param_aliases()
-> Result<std::collections::BTreeMap<String, Vec<String>>, TrainerError> {
    let mut len: i64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: `buf` has buf.len() writable bytes; LightGBM writes at most that many and
        // reports the full length needed in `len`.
        let code = unsafe {
            sys::LGBM_DumpParamAliases(buf.len() as i64, &mut len, buf.as_mut_ptr().cast())
        };
        check(code, "listing parameters")?;
        if (len as usize) <= buf.len() {
            break;
        }
        buf = vec![0u8; len as usize];
    }
    buf.truncate((len as usize).saturating_sub(1));
    serde_json::from_slice(&buf)
        .map_err(|e| TrainerError::Internal(format!("parameter aliases are not JSON: {e}")))
}
