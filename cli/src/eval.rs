//! `sandstorm eval azure-vm-noise`: the routing evaluated on real measurements, against
//! baselines and the oracle, with the protocol of `docs/evaluation.md`.
//!
//! The dataset is imported by `sandstorm_datasets::azure_vm_noise` (requests, history features,
//! telemetry, catalog); the Sandstorm policy is the product itself: the training requests'
//! telemetry goes through `sandstorm_trainer::train_records`, and every evaluation request is
//! decided by `sandstorm_router::Router` with the same feature encoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandstorm_datasets::azure_vm_noise::{self, AzureVmNoise, DayRequest, ImportOptions};
use sandstorm_features::StrategyKind;
use sandstorm_router::{ModelSet, Router, Scratch};
use serde::Serialize;
use time::{Date, Month};

/// Seed of the random policy and of the bootstrap.
const SEED: u64 = 20_240_529;
/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// Options of one evaluation run.
#[derive(Debug, Clone)]
pub(crate) struct EvalOptions {
    pub(crate) data: PathBuf,
    pub(crate) split_at: Option<Date>,
    pub(crate) strategies: Vec<StrategyKind>,
    pub(crate) test_suites: Vec<String>,
    pub(crate) until: Option<Date>,
    pub(crate) bootstrap: usize,
    pub(crate) models_out: Option<PathBuf>,
}

/// The policies, in table order.
pub(crate) const POLICIES: [&str; 8] = [
    "sandstorm",
    "oracle",
    "fixed_best_on_train",
    "cheapest_list_price",
    "random",
    "lookup_median",
    "lookup_ewma",
    "worst",
];

/// A metric with its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Estimate {
    pub(crate) value: f64,
    pub(crate) ci95: [f64; 2],
}

/// Metrics of one policy under one strategy.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PolicyMetrics {
    pub(crate) policy: String,
    /// Geometric mean of chosen / oracle.
    pub(crate) geomean: Estimate,
    /// 95th percentile of chosen / oracle.
    pub(crate) p95: Estimate,
    /// Share of requests where the policy picked the oracle's placement.
    pub(crate) oracle_picks: Estimate,
    /// (GM_fixed - GM) / (GM_fixed - 1).
    pub(crate) captured_headroom: Estimate,
}

/// Everything one strategy's evaluation produced.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StrategyResult {
    pub(crate) strategy: String,
    pub(crate) fixed_placement: String,
    pub(crate) policies: Vec<PolicyMetrics>,
    /// Per policy (in [`POLICIES`] order), the placement index chosen for each test request.
    #[serde(skip)]
    pub(crate) picks: Vec<Vec<usize>>,
    /// Per test request and placement: time per unit (latency) or cost per unit.
    #[serde(skip)]
    pub(crate) values: Vec<Vec<f64>>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EvalResult {
    pub(crate) dataset: String,
    pub(crate) data_dir: String,
    pub(crate) vm_lifespan: String,
    pub(crate) test_suites: Vec<String>,
    pub(crate) first_day: String,
    pub(crate) last_day: String,
    pub(crate) split_at: String,
    pub(crate) train_requests: usize,
    pub(crate) test_requests: usize,
    pub(crate) placements: Vec<String>,
    pub(crate) model_version: String,
    pub(crate) bootstrap_resamples: usize,
    pub(crate) strategies: Vec<StrategyResult>,
    #[serde(skip)]
    pub(crate) dataset_data: Arc<AzureVmNoise>,
    #[serde(skip)]
    pub(crate) test: Vec<DayRequest>,
}

pub(crate) fn date_of_day(day: i32) -> Date {
    Date::from_julian_day(day + UNIX_EPOCH_JULIAN_DAY).unwrap_or(Date::MIN)
}

fn day_of_date(date: Date) -> i32 {
    date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY
}

/// `date` minus `months` calendar months, the day clamped to the target month's length.
fn months_before(date: Date, months: i32) -> Date {
    let total = date.year() * 12 + i32::from(u8::from(date.month())) - 1 - months;
    let (year, month0) = (total.div_euclid(12), total.rem_euclid(12));
    let month = Month::try_from((month0 + 1) as u8).unwrap_or(Month::January);
    let day = date.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).unwrap_or(date)
}

/// Runs the protocol.
pub(crate) fn evaluate(opts: &EvalOptions, progress: &dyn Fn(&str)) -> Result<EvalResult> {
    progress("importing the dataset");
    let import = ImportOptions {
        test_suites: opts.test_suites.clone(),
        ..ImportOptions::default()
    };
    let data = azure_vm_noise::load(&opts.data, &import)
        .with_context(|| format!("importing {}", opts.data.display()))?;
    let data = Arc::new(data);
    let catalog = data.catalog()?;
    let candidates = catalog.candidates();
    let mut requests = data.requests();
    if let Some(until) = opts.until {
        let last = day_of_date(until);
        requests.retain(|r| r.day <= last);
    }
    let (Some(first), Some(last)) = (requests.first(), requests.last()) else {
        bail!(
            "{} holds no request measured on all {} placements",
            opts.data.display(),
            data.placements.len()
        );
    };
    let (first_day, last_day) = (first.day, last.day);
    let split = opts
        .split_at
        .unwrap_or_else(|| months_before(date_of_day(last_day), 6));
    let split_day = day_of_date(split);
    let (train, test): (Vec<DayRequest>, Vec<DayRequest>) =
        requests.into_iter().partition(|r| r.day < split_day);
    if train.is_empty() || test.is_empty() {
        bail!(
            "split date {split} leaves {} training and {} evaluation requests; both must be non-empty (data spans {} to {})",
            train.len(),
            test.len(),
            date_of_day(first_day),
            date_of_day(last_day)
        );
    }
    tracing::info!(train = train.len(), test = test.len(), %split, "split");

    progress("training the router's models on the training requests");
    // The models learn deviations from each placement's history anchor; a test's first days,
    // before every placement has a past outcome, would teach absolute levels instead
    // (docs/evaluation.md), so training uses the requests with history on every placement.
    let with_history: Vec<DayRequest> = train
        .iter()
        .filter(|r| r.history.iter().all(|h| h.count >= 1))
        .cloned()
        .collect();
    let records = data.telemetry(&candidates, &with_history)?;
    let (model_dir, temporary) = match &opts.models_out {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "sandstorm-eval-models-{}-{}",
                std::process::id(),
                SEED
            )),
            true,
        ),
    };
    let cfg = sandstorm_trainer::TrainConfig {
        holdout_fraction: 0.0,
        valid_fraction: 0.2,
        ..sandstorm_trainer::TrainConfig::default()
    };
    let report = sandstorm_trainer::train_records(&records, &model_dir, &cfg)
        .context("training on the training requests")?;
    let models = ModelSet::load(&model_dir)?;
    if temporary {
        let _ = std::fs::remove_dir_all(&model_dir);
    }
    let router = Router::new(&catalog, models);
    let placement_of: HashMap<&str, usize> = data
        .placements
        .iter()
        .enumerate()
        .map(|(i, p)| (p.candidate_id.as_str(), i))
        .collect();

    let prices: Vec<f64> = data
        .placements
        .iter()
        .map(|p| p.price_usd_per_hour)
        .collect();
    let mut results = Vec::new();
    for &strategy in &opts.strategies {
        progress(&format!(
            "routing {} requests ({})",
            test.len(),
            strategy.as_str()
        ));
        let value = |r: &DayRequest, p: usize| match strategy {
            StrategyKind::OptimizeCost => r.time_ms[p] * prices[p] / 3.6e6,
            _ => r.time_ms[p],
        };
        let values: Vec<Vec<f64>> = test
            .iter()
            .map(|r| (0..prices.len()).map(|p| value(r, p)).collect())
            .collect();
        let n_p = prices.len();
        // Fixed placement: the best geometric mean of chosen / oracle on the training requests.
        let mut train_log = vec![0.0; n_p];
        for r in &train {
            let v: Vec<f64> = (0..n_p).map(|p| value(r, p)).collect();
            let best = v.iter().copied().fold(f64::INFINITY, f64::min);
            for p in 0..n_p {
                train_log[p] += (v[p] / best).ln();
            }
        }
        let fixed = argmin(&train_log);
        let cheapest = argmin(&prices);
        let mut rng = StdRng::seed_from_u64(SEED);
        let ln_price = |p: usize| match strategy {
            StrategyKind::OptimizeCost => prices[p].ln(),
            _ => 0.0,
        };
        let lookup =
            |r: &DayRequest,
             level: fn(&sandstorm_features::history::HistoryFeatures) -> Option<f64>| {
                let scores: Vec<f64> = (0..n_p)
                    .map(|p| level(&r.history[p]).map_or(f64::INFINITY, |l| l + ln_price(p)))
                    .collect();
                if scores.iter().all(|s| s.is_infinite()) {
                    cheapest
                } else {
                    argmin(&scores)
                }
            };
        let mut picks: Vec<Vec<usize>> = vec![Vec::with_capacity(test.len()); POLICIES.len()];
        let mut scratch = Scratch::with_capacity(n_p);
        for (r, v) in test.iter().zip(&values) {
            let run = data.run_request(r, strategy);
            let ctx = AzureVmNoise::context(r);
            let history = |c: &sandstorm_features::Candidate| {
                placement_of
                    .get(c.id.as_str())
                    .map(|&p| r.history[p])
                    .unwrap_or_default()
            };
            let decision = router
                .decide_with_history(&mut scratch, &run, &ctx, &|_| None, &history)
                .with_context(|| format!("routing {}", run.workload.as_deref().unwrap_or("")))?;
            if tracing::enabled!(tracing::Level::TRACE) {
                for c in &decision.candidates {
                    let p = placement_of
                        .get(c.candidate.id.as_str())
                        .copied()
                        .unwrap_or(0);
                    tracing::trace!(
                        workload = run.workload.as_deref().unwrap_or(""),
                        day = r.day,
                        candidate = %c.candidate.id,
                        predicted_ms = c.prediction.as_ref().map(|p| p.latency_p50_ms),
                        predicted_usd = c.prediction.as_ref().map(|p| p.cost_usd),
                        anchor_ms = r.history[p].ln_ewma_fast.map(f64::exp),
                        actual = v[p],
                        "router prediction"
                    );
                }
            }
            let chosen = *placement_of
                .get(decision.winner.as_str())
                .with_context(|| format!("router chose {}, not a placement", decision.winner))?;
            picks[0].push(chosen);
            picks[1].push(argmin(v));
            picks[2].push(fixed);
            picks[3].push(cheapest);
            picks[4].push(rng.random_range(0..n_p));
            picks[5].push(lookup(r, |h| h.ln_median));
            picks[6].push(lookup(r, |h| h.ln_ewma_fast));
            picks[7].push(argmax(v));
        }
        let policies = metrics(&values, &picks, fixed_index(), opts.bootstrap);
        results.push(StrategyResult {
            strategy: strategy.as_str().to_owned(),
            fixed_placement: data.placements[fixed].candidate_id.clone(),
            policies,
            picks,
            values,
        });
    }
    Ok(EvalResult {
        dataset: azure_vm_noise::DATASET_NAME.to_owned(),
        data_dir: opts.data.display().to_string(),
        vm_lifespan: import.vm_lifespan.clone(),
        test_suites: opts.test_suites.clone(),
        first_day: date_of_day(first_day).to_string(),
        last_day: date_of_day(last_day).to_string(),
        split_at: split.to_string(),
        train_requests: train.len(),
        test_requests: test.len(),
        placements: data
            .placements
            .iter()
            .map(|p| format!("{}/{}", p.vm_region, p.vm_sku))
            .collect(),
        model_version: report.metadata.version.clone(),
        bootstrap_resamples: opts.bootstrap,
        strategies: results,
        dataset_data: data,
        test,
    })
}

/// Index of `fixed_best_on_train` in [`POLICIES`].
fn fixed_index() -> usize {
    2
}

fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x < v[best] {
            best = i;
        }
    }
    best
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Per request: ln(chosen / oracle) and whether the pick was the oracle's.
pub(crate) fn per_request(values: &[Vec<f64>], picks: &[usize]) -> Vec<(f64, bool)> {
    values
        .iter()
        .zip(picks)
        .map(|(v, &p)| {
            let best = v.iter().copied().fold(f64::INFINITY, f64::min);
            let ratio = v[p] / best;
            (ratio.ln(), ratio <= 1.0 + 1e-12)
        })
        .collect()
}

/// The `q` quantile of `v` (linear interpolation, numpy's default), reordering `v` in O(n).
fn quantile_unsorted(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, lo_value, rest) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_value = *lo_value;
    let hi_value = if pos > lo as f64 {
        rest.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        lo_value
    };
    lo_value + (hi_value - lo_value) * (pos - lo as f64)
}

/// The point metrics (geometric mean, p95, oracle-pick share) of one policy on the requests
/// `idx` (indices into `lr`), reusing `buf`.
fn point(
    lr: &[(f64, bool)],
    idx: &mut dyn Iterator<Item = usize>,
    buf: &mut Vec<f64>,
) -> (f64, f64, f64) {
    let mut sum = 0.0;
    let mut hits = 0usize;
    buf.clear();
    for i in idx {
        sum += lr[i].0;
        hits += usize::from(lr[i].1);
        buf.push(lr[i].0.exp());
    }
    let n = buf.len().max(1) as f64;
    let p95 = quantile_unsorted(buf, 0.95);
    ((sum / n).exp(), p95, hits as f64 / n)
}

fn captured(gm_fixed: f64, gm: f64) -> f64 {
    if gm_fixed > 1.0 {
        (gm_fixed - gm) / (gm_fixed - 1.0)
    } else {
        f64::NAN
    }
}

/// Metrics of every policy with paired bootstrap intervals (the same resamples for all
/// policies, so captured headroom is computed against the fixed policy's resampled GM).
pub(crate) fn metrics(
    values: &[Vec<f64>],
    picks: &[Vec<usize>],
    fixed: usize,
    resamples: usize,
) -> Vec<PolicyMetrics> {
    let per: Vec<Vec<(f64, bool)>> = picks.iter().map(|p| per_request(values, p)).collect();
    let n = values.len();
    let mut buf = Vec::with_capacity(n);
    let points: Vec<(f64, f64, f64)> = per
        .iter()
        .map(|lr| point(lr, &mut (0..n), &mut buf))
        .collect();
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x000b_0075);
    let mut boots: Vec<Vec<[f64; 4]>> = vec![Vec::with_capacity(resamples); picks.len()];
    let mut idx = vec![0usize; n];
    for _ in 0..resamples {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        let pts: Vec<(f64, f64, f64)> = per
            .iter()
            .map(|lr| point(lr, &mut idx.iter().copied(), &mut buf))
            .collect();
        let gm_fixed = pts[fixed].0;
        for (b, p) in boots.iter_mut().zip(&pts) {
            b.push([p.0, p.1, p.2, captured(gm_fixed, p.0)]);
        }
    }
    let ci = |samples: &[[f64; 4]], k: usize| -> [f64; 2] {
        let mut v: Vec<f64> = samples
            .iter()
            .map(|s| s[k])
            .filter(|x| x.is_finite())
            .collect();
        [
            quantile_unsorted(&mut v, 0.025),
            quantile_unsorted(&mut v, 0.975),
        ]
    };
    let gm_fixed = points[fixed].0;
    POLICIES
        .iter()
        .zip(&points)
        .zip(&boots)
        .map(|((name, p), b)| PolicyMetrics {
            policy: (*name).to_owned(),
            geomean: Estimate {
                value: p.0,
                ci95: ci(b, 0),
            },
            p95: Estimate {
                value: p.1,
                ci95: ci(b, 1),
            },
            oracle_picks: Estimate {
                value: p.2,
                ci95: ci(b, 2),
            },
            captured_headroom: Estimate {
                value: captured(gm_fixed, p.0),
                ci95: ci(b, 3),
            },
        })
        .collect()
}

/// Writes one row per test request, strategy and policy.
pub(crate) fn write_decisions(result: &EvalResult, path: &Path) -> Result<()> {
    let data = &result.dataset_data;
    let mut cols: [Vec<String>; 7] = Default::default();
    let mut days = Vec::new();
    for s in &result.strategies {
        for (policy, picks) in POLICIES.iter().zip(&s.picks) {
            for (r, &p) in result.test.iter().zip(picks) {
                let w = &data.workloads[r.workload as usize];
                let pl = &data.placements[p];
                cols[0].push(s.strategy.clone());
                cols[1].push((*policy).to_owned());
                cols[2].push(w.test_suite.clone());
                cols[3].push(w.test_name.clone());
                cols[4].push(w.unit.clone());
                cols[5].push(pl.vm_region.clone());
                cols[6].push(pl.vm_sku.clone());
                days.push(r.day);
            }
        }
    }
    let names = [
        "strategy",
        "policy",
        "test_suite",
        "test_name",
        "unit",
        "vm_region",
        "vm_sku",
    ];
    let mut fields: Vec<Field> = names[..5]
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, false))
        .collect();
    fields.push(Field::new("day", DataType::Date32, false));
    fields.extend(
        names[5..]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false)),
    );
    let mut arrays: Vec<ArrayRef> = cols[..5]
        .iter()
        .map(|c| Arc::new(StringArray::from(c.clone())) as ArrayRef)
        .collect();
    arrays.push(Arc::new(Date32Array::from(days)));
    arrays.extend(
        cols[5..]
            .iter()
            .map(|c| Arc::new(StringArray::from(c.clone())) as ArrayRef),
    );
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    sandstorm_datasets::write_parquet(path, &[batch])
        .with_context(|| format!("writing decisions to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_months_before_clamps_the_day() {
        let d = |y, m, day| Date::from_calendar_date(y, m, day).unwrap();
        assert_eq!(
            months_before(d(2024, Month::May, 29), 6),
            d(2023, Month::November, 29)
        );
        assert_eq!(
            months_before(d(2024, Month::August, 31), 6),
            d(2024, Month::February, 29)
        );
        assert_eq!(
            date_of_day(day_of_date(d(2023, Month::June, 4))),
            d(2023, Month::June, 4)
        );
    }

    #[test]
    fn metrics_of_known_picks() {
        let values = vec![vec![1.0, 2.0], vec![4.0, 1.0]];
        let picks = vec![vec![0, 1], vec![0, 0], vec![1, 0]];
        let m = metrics(&values, &picks, 2, 50);
        assert!((m[0].geomean.value - 1.0).abs() < 1e-12);
        assert!((m[1].geomean.value - 2.0).abs() < 1e-12);
        assert!((m[2].geomean.value - 8f64.sqrt()).abs() < 1e-12);
        assert_eq!(m[0].oracle_picks.value, 1.0);
        assert!((m[0].captured_headroom.value - 1.0).abs() < 1e-12);
    }
}
