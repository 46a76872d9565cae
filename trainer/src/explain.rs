//! What a model relies on: LightGBM's split and gain importance of every feature, and SHAP
//! values (`predict_contrib`) on an evenly spaced sample of rows.

use std::collections::BTreeMap;

use lightgbm3::{Booster, ImportanceType};
use sandstorm_features::encoding::{FEATURES, N_FEATURES};
use serde::Serialize;

use crate::TrainerError;

/// Importance and SHAP summary of one model, by feature name.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Explanation {
    /// Times each feature is used in a split.
    pub(crate) split: BTreeMap<String, f64>,
    /// Total loss reduction of the splits on each feature.
    pub(crate) gain: BTreeMap<String, f64>,
    /// Mean |SHAP value| (in the model's raw output units) over `shap_rows` rows.
    pub(crate) shap_mean_abs: BTreeMap<String, f64>,
    /// Mean SHAP bias (expected raw output).
    pub(crate) shap_bias: f64,
    pub(crate) shap_rows: usize,
}

/// Importance of `booster` and SHAP values of up to `sample` of the `n_rows` encoded rows `x`.
pub(crate) fn explain(
    booster: &Booster,
    x: &[f64],
    n_rows: usize,
    sample: usize,
) -> Result<Explanation, TrainerError> {
    let named = |values: Vec<f64>| -> BTreeMap<String, f64> {
        FEATURES
            .iter()
            .zip(values)
            .map(|((name, _), v)| ((*name).to_owned(), v))
            .collect()
    };
    let split = named(booster.feature_importance(ImportanceType::Split)?);
    let gain = named(booster.feature_importance(ImportanceType::Gain)?);
    let take = sample.min(n_rows);
    let mut shap_mean_abs = BTreeMap::new();
    let mut shap_bias = f64::NAN;
    if take > 0 {
        let mut rows = Vec::with_capacity(take * N_FEATURES);
        for k in 0..take {
            let i = k * n_rows / take;
            rows.extend_from_slice(&x[i * N_FEATURES..(i + 1) * N_FEATURES]);
        }
        let contrib = booster.predict_contrib(&rows, N_FEATURES as i32, true)?;
        let width = N_FEATURES + 1;
        if contrib.len() != take * width {
            return Err(TrainerError::Internal(format!(
                "predict_contrib returned {} values for {take} rows of {width}",
                contrib.len()
            )));
        }
        let mut sums = vec![0.0; width];
        for row in contrib.chunks_exact(width) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v.abs();
            }
        }
        shap_bias = contrib
            .chunks_exact(width)
            .map(|r| r[N_FEATURES])
            .sum::<f64>()
            / take as f64;
        shap_mean_abs = named(sums[..N_FEATURES].iter().map(|s| s / take as f64).collect());
    }
    Ok(Explanation {
        split,
        gain,
        shap_mean_abs,
        shap_bias,
        shap_rows: take,
    })
}
