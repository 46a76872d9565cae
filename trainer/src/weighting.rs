//! Inverse-propensity weighting (IPW) of training rows.
//!
//! Telemetry of a router's own choices over-represents the candidates it liked: a model fit
//! to it learns each candidate from the requests that candidate was chosen for, not from the
//! request mix. Weighting each row by `1 / selection_probability` (the probability with
//! which the logging policy chose that candidate, logged by exploring routers and by the
//! simulator) makes every candidate's rows stand for the whole request mix again.
//!
//! Weights are **clipped** at `max_weight`: a row logged with probability 0.001 would
//! otherwise count a thousand times, and a few such rows would dominate the gradients (high
//! variance, overfitting to a handful of rows); clipping trades a little of the correction
//! for much less variance. Each dataset's weights are then **normalised to mean 1**, so
//! LightGBM's count- and hessian-based regularisation (`min_sum_hessian_in_leaf`, `lambda_l2`,
//! leaf values) works on the same scale as without weights.

use sandstorm_features::telemetry::TelemetryRecord;
use serde::Serialize;

use crate::TrainerError;

/// Largest weight when none is configured.
pub const DEFAULT_MAX_WEIGHT: f64 = 20.0;

/// Inverse-propensity weighting settings (`[weighting]` of `train.toml`, `--ipw`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpwConfig {
    /// Weights `1 / selection_probability` above this are clipped to it (>= 1).
    pub max_weight: f64,
}

impl Default for IpwConfig {
    fn default() -> Self {
        Self {
            max_weight: DEFAULT_MAX_WEIGHT,
        }
    }
}

impl IpwConfig {
    pub(crate) fn validate(&self) -> Result<(), TrainerError> {
        if self.max_weight.is_finite() && self.max_weight >= 1.0 {
            Ok(())
        } else {
            Err(TrainerError::Config(format!(
                "weighting.max_weight must be a number >= 1, got {}",
                self.max_weight
            )))
        }
    }
}

/// What the weights of the training rows looked like (`training.json`, `weighting`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightStats {
    pub ipw: bool,
    pub max_weight: f64,
    /// Training rows weighted.
    pub rows: usize,
    /// Of `1 / selection_probability`, before clipping.
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Share of training rows whose weight was clipped to `max_weight`.
    pub clipped_share: f64,
    /// `(Σ w)² / Σ w²` of the clipped weights: how many unweighted rows they are worth.
    pub effective_sample_size: f64,
}

/// The clipped weight `min(1 / selection_probability, max_weight)` of every row; an error
/// naming the count and the column when some row has no usable probability.
pub(crate) fn clipped_weights(
    rows: &[&TelemetryRecord],
    cfg: &IpwConfig,
) -> Result<Vec<f64>, TrainerError> {
    let bad = rows
        .iter()
        .filter(|r| !usable(r.selection_probability))
        .count();
    if bad > 0 {
        return Err(TrainerError::Input(format!(
            "inverse-propensity weighting needs the logging policy's probabilities, but {bad} of {} executed rows have no usable value in column `selection_probability` (0, NaN or outside (0, 1]); train without --ipw or on telemetry of an exploring router",
            rows.len()
        )));
    }
    Ok(rows
        .iter()
        .map(|r| (1.0 / r.selection_probability).min(cfg.max_weight))
        .collect())
}

fn usable(p: f64) -> bool {
    p.is_finite() && p > 0.0 && p <= 1.0
}

/// Statistics of the weights of `rows` (the training split).
pub(crate) fn stats(rows: &[&TelemetryRecord], clipped: &[f64], cfg: &IpwConfig) -> WeightStats {
    let raw: Vec<f64> = rows.iter().map(|r| 1.0 / r.selection_probability).collect();
    let n = raw.len().max(1) as f64;
    let sum: f64 = clipped.iter().sum();
    let sum_sq: f64 = clipped.iter().map(|w| w * w).sum();
    WeightStats {
        ipw: true,
        max_weight: cfg.max_weight,
        rows: raw.len(),
        min: raw.iter().copied().fold(f64::INFINITY, f64::min),
        max: raw.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        mean: raw.iter().sum::<f64>() / n,
        clipped_share: raw.iter().filter(|w| **w > cfg.max_weight).count() as f64 / n,
        effective_sample_size: if sum_sq > 0.0 {
            sum * sum / sum_sq
        } else {
            0.0
        },
    }
}

/// `weights` scaled to mean 1, as LightGBM's `f32` dataset weights.
pub(crate) fn normalised(weights: &[f64]) -> Vec<f32> {
    let mean = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
    let scale = if mean > 0.0 { 1.0 / mean } else { 1.0 };
    weights.iter().map(|w| (w * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sandstorm_features::{Catalog, DecisionContext, Language, RunRequest};

    fn row(p: f64) -> TelemetryRecord {
        let request = RunRequest::command(Language::Sh, "true");
        let candidate = &Catalog::default_catalog().candidates()[0];
        let mut r = TelemetryRecord::for_choice(&request, candidate, &DecisionContext::now());
        r.selection_probability = p;
        r
    }

    #[test]
    fn unusable_probabilities_are_an_error_naming_count_and_column() {
        let rows: Vec<TelemetryRecord> = [0.5, 0.0, f64::NAN, 1.0, 1.5]
            .into_iter()
            .map(row)
            .collect();
        let refs: Vec<&TelemetryRecord> = rows.iter().collect();
        let e = clipped_weights(&refs, &IpwConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 of 5 executed rows") && e.contains("`selection_probability`"),
            "{e}"
        );
    }

    #[test]
    fn weights_are_clipped_and_described() {
        let rows: Vec<TelemetryRecord> = [1.0, 0.5, 0.1, 0.01].into_iter().map(row).collect();
        let refs: Vec<&TelemetryRecord> = rows.iter().collect();
        let cfg = IpwConfig { max_weight: 20.0 };
        let w = clipped_weights(&refs, &cfg).unwrap();
        assert_eq!(w, vec![1.0, 2.0, 10.0, 20.0]);
        let s = stats(&refs, &w, &cfg);
        assert_eq!((s.min, s.max, s.rows), (1.0, 100.0, 4));
        assert!((s.mean - 113.0 / 4.0).abs() < 1e-9);
        assert_eq!(s.clipped_share, 0.25);
        assert!((s.effective_sample_size - 33.0 * 33.0 / 505.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn normalised_weights_have_mean_one(w in proptest::collection::vec(1.0f64..50.0, 1..200)) {
            let n = normalised(&w);
            let mean = n.iter().map(|x| f64::from(*x)).sum::<f64>() / n.len() as f64;
            prop_assert!((mean - 1.0).abs() < 1e-4);
            // Ratios between rows are kept.
            for (a, b) in w.iter().zip(&n) {
                let ratio = f64::from(*b) / f64::from(n[0]);
                prop_assert!((ratio - a / w[0]).abs() < 1e-4 * (a / w[0]));
            }
        }
    }
}
