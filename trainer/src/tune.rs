//! Time-ordered cross-validation (forward chaining) and a small random hyper-parameter search
//! with a time budget. Both only ever validate on rows later than the rows they train on, and
//! both are deterministic for a seed (the budget can only cut a search short, never reorder it).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{TrainerError, config, lgbm};

/// The first metric named in `params["metric"]`.
pub(crate) fn metric_name(params: &Map<String, Value>) -> String {
    params
        .iter()
        .find(|(k, _)| config::canonical_name(k).ok().flatten().as_deref() == Some("metric"))
        .and_then(|(_, v)| v.as_str())
        .and_then(|s| s.split(',').next())
        .unwrap_or("l2")
        .trim()
        .to_owned()
}

/// Whether a LightGBM metric improves upwards.
pub(crate) fn higher_is_better(metric: &str) -> bool {
    matches!(
        metric,
        "auc" | "average_precision" | "ndcg" | "map" | "auc_mu" | "lambdarank"
    )
}

/// One fold of a cross-validation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fold {
    pub(crate) train_rows: usize,
    pub(crate) valid_rows: usize,
    pub(crate) best_iteration: usize,
    pub(crate) metric: f64,
}

/// A cross-validation of one parameter set.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CvResult {
    pub(crate) metric: String,
    pub(crate) mean: f64,
    pub(crate) folds: Vec<Fold>,
}

/// Boosting settings shared by every fit of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounds {
    pub(crate) num_iterations: usize,
    pub(crate) early_stopping_rounds: usize,
}

/// Row ranges `(train_end, valid_end)` of forward-chaining folds over `n` time-ordered rows:
/// `k` >= 2 cuts the rows into `k + 1` blocks and fold `i` trains on blocks `0..i` and
/// validates on block `i`; `k` < 2 is one split with the last `valid_fraction` of rows as
/// validation.
pub(crate) fn fold_bounds(n: usize, k: usize, valid_fraction: f64) -> Vec<(usize, usize)> {
    if k < 2 {
        let n_valid = ((n as f64) * valid_fraction).ceil().max(1.0) as usize;
        return vec![(n.saturating_sub(n_valid), n)];
    }
    let block = n / (k + 1);
    (1..=k)
        .map(|i| (i * block, if i == k { n } else { (i + 1) * block }))
        .collect()
}

/// Cross-validates `params` on time-ordered rows `x` (`n_features` per row) and labels `y`.
pub(crate) fn cross_validate(
    x: &[f64],
    y: &[f64],
    weights: Option<&[f64]>,
    n_features: usize,
    bounds: &[(usize, usize)],
    params: &Map<String, Value>,
    rounds: Rounds,
) -> Result<CvResult, TrainerError> {
    let metric = metric_name(params);
    let higher = higher_is_better(&metric);
    let mut folds = Vec::new();
    for &(train_end, valid_end) in bounds {
        if train_end < 10 || valid_end <= train_end {
            return Err(TrainerError::Input(format!(
                "too few rows for a cross-validation fold ({train_end} training rows, {} validation rows)",
                valid_end.saturating_sub(train_end)
            )));
        }
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
        // Each fold's weights normalised to mean 1 on their own.
        let train_w = weights.map(|w| crate::weighting::normalised(&w[..train_end]));
        let valid_w = weights.map(|w| crate::weighting::normalised(&w[train_end..valid_end]));
        let train = lgbm::Dataset::new(
            &x[..train_end * n_features],
            n_features,
            &f32s(&y[..train_end]),
            train_w.as_deref(),
            params,
            None,
        )?;
        let valid = lgbm::Dataset::new(
            &x[train_end * n_features..valid_end * n_features],
            n_features,
            &f32s(&y[train_end..valid_end]),
            valid_w.as_deref(),
            params,
            Some(&train),
        )?;
        let trained = lgbm::train(
            &train,
            Some(lgbm::EarlyStopping {
                valid: &valid,
                rounds: rounds.early_stopping_rounds,
                higher_is_better: higher,
            }),
            params,
            rounds.num_iterations,
        )?;
        folds.push(Fold {
            train_rows: train_end,
            valid_rows: valid_end - train_end,
            best_iteration: trained.num_trees,
            metric: trained.best_valid_metric(higher),
        });
    }
    let mean = folds.iter().map(|f| f.metric).sum::<f64>() / folds.len().max(1) as f64;
    Ok(CvResult {
        metric,
        mean,
        folds,
    })
}

/// One evaluated parameter set of a search.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Trial {
    pub(crate) trial: usize,
    /// The searched parameters (the others are the model's base parameters).
    pub(crate) params: Map<String, Value>,
    pub(crate) cv: CvResult,
    pub(crate) seconds: f64,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SearchResult {
    pub(crate) metric: String,
    pub(crate) trials: Vec<Trial>,
    /// Index into `trials` of the best one.
    pub(crate) best: usize,
    /// Whether the time budget stopped the search before all trials ran.
    pub(crate) budget_exhausted: bool,
}

/// The parameters searched, by LightGBM name. A parameter the user set is never searched.
pub(crate) const SEARCHED: [&str; 8] = [
    "num_leaves",
    "learning_rate",
    "feature_fraction",
    "bagging_fraction",
    "bagging_freq",
    "min_data_in_leaf",
    "lambda_l1",
    "lambda_l2",
];

/// Draws a parameter set (only `free` keys) from the search space.
fn sample(rng: &mut StdRng, free: &[&str]) -> Map<String, Value> {
    let log_uniform = |rng: &mut StdRng, lo: f64, hi: f64| {
        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
    };
    let mut m = Map::new();
    // Every draw is made whether or not the key is free, so the sequence is the same for a seed.
    let num_leaves = log_uniform(rng, 8.0, 128.0).round() as i64;
    let learning_rate = round4(log_uniform(rng, 0.01, 0.3));
    let feature_fraction = round4(0.5 + 0.5 * rng.random::<f64>());
    let bagging_fraction = round4(0.5 + 0.5 * rng.random::<f64>());
    let bagging_freq = [0i64, 1, 5][rng.random_range(0..3)];
    let min_data_in_leaf = log_uniform(rng, 5.0, 100.0).round() as i64;
    let l1 = if rng.random::<f64>() < 0.3 {
        0.0
    } else {
        round4(log_uniform(rng, 1e-3, 10.0))
    };
    let l2 = if rng.random::<f64>() < 0.3 {
        0.0
    } else {
        round4(log_uniform(rng, 1e-3, 10.0))
    };
    let values = [
        Value::from(num_leaves),
        Value::from(learning_rate),
        Value::from(feature_fraction),
        Value::from(bagging_fraction),
        Value::from(bagging_freq),
        Value::from(min_data_in_leaf),
        Value::from(l1),
        Value::from(l2),
    ];
    for (k, v) in SEARCHED.iter().zip(values) {
        if free.contains(k) {
            m.insert((*k).to_owned(), v);
        }
    }
    m
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Random search: trial 0 is `base` itself, trials 1.. draw the `free` parameters; each is
/// scored by [`cross_validate`]; stops after `trials` trials or when `budget` has passed (the
/// first trial always runs). `on_trial` is called after each trial.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search(
    x: &[f64],
    y: &[f64],
    weights: Option<&[f64]>,
    n_features: usize,
    bounds: &[(usize, usize)],
    base: &Map<String, Value>,
    free: &[&str],
    trials: usize,
    budget: Duration,
    rounds: Rounds,
    seed: u64,
    on_trial: &mut dyn FnMut(),
) -> Result<SearchResult, TrainerError> {
    let metric = metric_name(base);
    let higher = higher_is_better(&metric);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut budget_exhausted = false;
    for t in 0..trials.max(1) {
        let overrides = if t == 0 {
            Map::new()
        } else {
            sample(&mut rng, free)
        };
        if t > 0 && started.elapsed() >= budget {
            budget_exhausted = true;
            break;
        }
        let mut params = base.clone();
        config::merge_params(&mut params, &overrides)?;
        let t0 = Instant::now();
        let cv = cross_validate(x, y, weights, n_features, bounds, &params, rounds)?;
        tracing::debug!(trial = t, metric = cv.mean, "search trial");
        out.push(Trial {
            trial: t,
            params: overrides,
            cv,
            seconds: t0.elapsed().as_secs_f64(),
        });
        on_trial();
    }
    let best = out
        .iter()
        .enumerate()
        .filter(|(_, t)| t.cv.mean.is_finite())
        .min_by(|a, b| {
            let (x, y) = (a.1.cv.mean, b.1.cv.mean);
            if higher {
                y.total_cmp(&x)
            } else {
                x.total_cmp(&y)
            }
        })
        .map_or(0, |(i, _)| i);
    Ok(SearchResult {
        metric,
        trials: out,
        best,
        budget_exhausted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_chaining_folds_validate_after_they_train() {
        let b = fold_bounds(100, 3, 0.1);
        assert_eq!(b, vec![(25, 50), (50, 75), (75, 100)]);
        for (t, v) in &b {
            assert!(t < v);
        }
        assert_eq!(fold_bounds(100, 1, 0.1), vec![(90, 100)]);
    }

    #[test]
    fn samples_are_deterministic_and_respect_fixed_keys() {
        let a = sample(&mut StdRng::seed_from_u64(3), &SEARCHED);
        let b = sample(&mut StdRng::seed_from_u64(3), &SEARCHED);
        assert_eq!(a, b);
        let leaves = a["num_leaves"].as_i64().unwrap();
        assert!((8..=128).contains(&leaves));
        let lr = a["learning_rate"].as_f64().unwrap();
        assert!((0.01..=0.3).contains(&lr));
        let c = sample(&mut StdRng::seed_from_u64(3), &["lambda_l1"]);
        assert_eq!(c.len(), 1);
        assert_eq!(c["lambda_l1"], a["lambda_l1"]);
    }

    #[test]
    fn metric_direction() {
        let mut p = Map::new();
        p.insert("metric".into(), Value::from("auc,binary_logloss"));
        assert_eq!(metric_name(&p), "auc");
        assert!(higher_is_better("auc"));
        assert!(!higher_is_better("l2"));
    }
}
