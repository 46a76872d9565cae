//! The router's native evaluator against LightGBM itself (through `lightgbm3`).
//!
//! A property test trains small LightGBM models on random data with numerical and
//! categorical features and missing values (regression, quantile at 0.95 and binary; missing
//! types None, Zero and NaN; sometimes linear leaves), then predicts random rows plus rows
//! sitting exactly on, just below and just above every threshold of the model, and rows with
//! NaN, ±0, tiny values, infinities and odd category codes. Raw scores must agree bit for bit;
//! transformed outputs bit for bit or, failing that, within 1e-12 relative. A second test
//! does the same for the four models `train_records` writes from simulated telemetry.

use std::collections::BTreeSet;

use lightgbm3::Booster;
use proptest::prelude::*;
use sandstorm_features::Catalog;
use sandstorm_features::encoding::{FeatureInput, N_FEATURES};
use sandstorm_features::model::ModelRole;
use sandstorm_router::{EvalScratch, ModelSet, NativeModel};
use serde_json::{Map, Value, json};

/// A small deterministic generator (splitmix64), so a failing case is reproducible from its
/// seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Objective {
    Regression,
    Quantile,
    Binary,
}

#[derive(Debug, Clone)]
struct Case {
    objective: Objective,
    seed: u64,
    n_rows: usize,
    n_numeric: usize,
    /// Levels of each categorical feature.
    cardinalities: Vec<usize>,
    nan_rate: f64,
    zero_rate: f64,
    zero_as_missing: bool,
    use_missing: bool,
    linear_tree: bool,
    num_leaves: usize,
    num_iterations: usize,
}

impl Case {
    fn n_features(&self) -> usize {
        self.n_numeric + self.cardinalities.len()
    }

    fn is_categorical(&self, f: usize) -> bool {
        f >= self.n_numeric
    }

    /// One feature value as the training data has them.
    fn value(&self, rng: &mut Rng, f: usize) -> f64 {
        if rng.chance(self.nan_rate) {
            return f64::NAN;
        }
        if self.is_categorical(f) {
            return rng.below(self.cardinalities[f - self.n_numeric]) as f64;
        }
        if rng.chance(self.zero_rate) {
            return 0.0;
        }
        match rng.below(10) {
            0 => 1e-36 * (rng.unit() - 0.5),
            1 => (rng.below(7) as f64) - 3.0,
            _ => (rng.unit() - 0.5) * 10.0,
        }
    }

    fn params(&self) -> Map<String, Value> {
        let cats: Vec<String> = (self.n_numeric..self.n_features())
            .map(|i| i.to_string())
            .collect();
        let mut p = json!({
            "num_leaves": self.num_leaves,
            "learning_rate": 0.3,
            "min_data_in_leaf": 3,
            "min_data_in_bin": 1,
            "min_data_per_group": 3,
            "cat_smooth": 1.0,
            "cat_l2": 1.0,
            "max_cat_threshold": 64,
            "max_bin": 63,
            // LightGBM refuses zero_as_missing with linear trees.
            "zero_as_missing": self.zero_as_missing && !self.linear_tree,
            "use_missing": self.use_missing,
            "linear_tree": self.linear_tree,
            "seed": self.seed % 1000,
            "deterministic": true,
            "force_row_wise": true,
            "num_threads": 1,
            "verbosity": -1,
        });
        if let Value::Object(m) = &mut p {
            if !cats.is_empty() {
                m.insert("categorical_feature".to_owned(), json!(cats.join(",")));
            }
            let objective = match self.objective {
                Objective::Regression => "regression",
                Objective::Quantile => {
                    m.insert("alpha".to_owned(), json!(0.95));
                    "quantile"
                }
                Objective::Binary => "binary",
            };
            m.insert("objective".to_owned(), json!(objective));
        }
        match p {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            Just(Objective::Regression),
            Just(Objective::Quantile),
            Just(Objective::Binary)
        ],
        any::<u64>(),
        60usize..300,
        1usize..4,
        prop::collection::vec(2usize..80, 0..3),
        prop_oneof![Just(0.0), Just(0.05), Just(0.3)],
        prop_oneof![Just(0.0), Just(0.2)],
        any::<bool>(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop_oneof![4 => Just(false), 1 => Just(true)],
        2usize..32,
        1usize..16,
    )
        .prop_map(
            |(
                objective,
                seed,
                n_rows,
                n_numeric,
                cardinalities,
                nan_rate,
                zero_rate,
                zero_as_missing,
                use_missing,
                linear_tree,
                num_leaves,
                num_iterations,
            )| Case {
                objective,
                seed,
                n_rows,
                n_numeric,
                cardinalities,
                nan_rate,
                zero_rate,
                zero_as_missing,
                use_missing,
                linear_tree,
                num_leaves,
                num_iterations,
            },
        )
}

/// Training rows and labels for `case`.
fn training_data(case: &Case, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let nf = case.n_features();
    let mut rows = Vec::with_capacity(case.n_rows * nf);
    let mut labels = Vec::with_capacity(case.n_rows);
    // Per-level effects of the categorical features.
    let effects: Vec<Vec<f64>> = case
        .cardinalities
        .iter()
        .map(|&n| (0..n).map(|_| rng.unit() * 4.0 - 2.0).collect())
        .collect();
    for _ in 0..case.n_rows {
        let mut y = 0.0;
        for f in 0..nf {
            let v = case.value(rng, f);
            rows.push(v);
            if v.is_nan() {
                y += 0.7;
            } else if case.is_categorical(f) {
                y += effects[f - case.n_numeric][v as usize];
            } else {
                y += if f % 2 == 0 { v } else { (v * 1.3).sin() * 2.0 };
            }
        }
        y += (rng.unit() - 0.5) * 0.5;
        labels.push(y);
    }
    if case.objective == Objective::Binary {
        let mut sorted = labels.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        for y in &mut labels {
            *y = if *y > median { 1.0 } else { 0.0 };
        }
    }
    (rows, labels)
}

/// Every (feature, threshold) of the numerical nodes of a model text.
fn numerical_thresholds(text: &str) -> Vec<(usize, f64)> {
    let mut out = BTreeSet::new();
    let mut features: Vec<usize> = Vec::new();
    let mut thresholds: Vec<f64> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("split_feature=") {
            features = v
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("threshold=") {
            thresholds = v
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("decision_type=") {
            for ((f, t), dt) in features
                .iter()
                .zip(&thresholds)
                .zip(v.split_whitespace().filter_map(|t| t.parse::<u8>().ok()))
            {
                if dt & 1 == 0 {
                    out.insert((*f, t.to_bits()));
                }
            }
        }
    }
    out.into_iter()
        .map(|(f, bits)| (f, f64::from_bits(bits)))
        .collect()
}

/// Rows to predict: fresh random rows, rows on and around every threshold, and odd values.
fn prediction_rows(case: &Case, rng: &mut Rng, text: &str) -> Vec<f64> {
    let nf = case.n_features();
    let mut rows = Vec::new();
    let random_row = |rng: &mut Rng, rows: &mut Vec<f64>| {
        for f in 0..nf {
            let v = case.value(rng, f);
            rows.push(v);
        }
    };
    for _ in 0..64 {
        random_row(rng, &mut rows);
    }
    for (f, t) in numerical_thresholds(text).into_iter().take(150) {
        for v in [t, t.next_down(), t.next_up()] {
            random_row(rng, &mut rows);
            let at = rows.len() - nf + f;
            rows[at] = v;
        }
    }
    let odd_numeric = [
        f64::NAN,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        1e-35,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
    ];
    let odd_categorical = [
        f64::NAN,
        -1.0,
        -0.5,
        0.5,
        2.5,
        31.0,
        32.0,
        63.0,
        64.0,
        1000.0,
        1e5,
        3e9,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for i in 0..odd_numeric.len().max(odd_categorical.len()) {
        for f in 0..nf {
            let pool: &[f64] = if case.is_categorical(f) {
                &odd_categorical
            } else {
                &odd_numeric
            };
            rows.push(pool[(i + f) % pool.len()]);
        }
    }
    rows
}

fn close(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// `rows` with the columns in `constant` set to their value in row `source` in every row, as
/// when the rows are the candidates of one request.
fn with_constant_columns(rows: &[f64], nf: usize, constant: &[bool], source: usize) -> Vec<f64> {
    let from = rows[source * nf..(source + 1) * nf].to_vec();
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(nf) {
        for f in 0..nf {
            if constant[f] {
                row[f] = from[f];
            }
        }
    }
    out
}

/// [`compare`] on `rows` and on variants of it where some columns are constant, which the
/// native batch path folds.
fn compare_all(text: &str, rows: &[f64], nf: usize, rng: &mut Rng) -> Result<(), String> {
    compare(text, rows, nf)?;
    let n = rows.len() / nf;
    for variant in 0..4 {
        let constant: Vec<bool> = (0..nf)
            .map(|f| match variant {
                0 => rng.chance(0.5),
                1 => f != rng.below(nf),
                2 => f % 2 == 0,
                _ => true,
            })
            .collect();
        let variant_rows = with_constant_columns(rows, nf, &constant, rng.below(n));
        compare(text, &variant_rows, nf)
            .map_err(|m| format!("with constant columns {constant:?}: {m}"))?;
    }
    // One scratch over a sequence of batches of one block (what the router does): repeats,
    // which it caches, interleaved with a changed value, a row fewer, other constant columns
    // and other values of them, small batches, and returns to earlier contents.
    let native = NativeModel::from_text(text).map_err(|e| format!("native load: {e}"))?;
    let base = rows[..n.min(200) * nf].to_vec();
    let nb = base.len() / nf;
    let mut changed = base.clone();
    let (r, f) = (rng.below(nb), rng.below(nf));
    changed[r * nf + f] = base[rng.below(nb) * nf + f];
    let shorter = base[..(nb - 1) * nf].to_vec();
    let constant: Vec<bool> = (0..nf).map(|_| rng.chance(0.5)).collect();
    let variant = with_constant_columns(&base, nf, &constant, rng.below(nb));
    // The same constant columns with other values (another request): remembered leaves
    // hold where the constant nodes passed still go the same way.
    let other_values = with_constant_columns(&base, nf, &constant, rng.below(nb));
    // Small batches are walked row by row, with the same remembered leaves.
    let small = base[..nb.min(20) * nf].to_vec();
    let small_variant = variant[..nb.min(20) * nf].to_vec();
    let sequence = [
        &base,
        &base,
        &base,
        &changed,
        &changed,
        &changed,
        &base,
        &base,
        &shorter,
        &shorter,
        &shorter,
        &variant,
        &variant,
        &variant,
        &other_values,
        &variant,
        &other_values,
        &other_values,
        &base,
        &base,
        &small,
        &small,
        &small_variant,
        &small,
        &changed,
        &base,
    ];
    let mut shared = EvalScratch::default();
    for (b, batch) in sequence.into_iter().enumerate() {
        let n = batch.len() / nf;
        let mut want = vec![0.0; n];
        native
            .predict_batch_into(&mut EvalScratch::default(), batch, &mut want)
            .map_err(|e| e.to_string())?;
        let mut got = vec![0.0; n];
        native
            .predict_batch_into(&mut shared, batch, &mut got)
            .map_err(|e| e.to_string())?;
        if let Some(r) = (0..n).find(|&r| got[r].to_bits() != want[r].to_bits()) {
            return Err(format!(
                "batch {b} of the reused-scratch sequence, row {r}: reused {:e}, fresh {:e}",
                got[r], want[r]
            ));
        }
    }
    Ok(())
}

/// Compares native and LightGBM predictions of `text` on `rows`; `Err` describes a mismatch.
fn compare(text: &str, rows: &[f64], n_features: usize) -> Result<usize, String> {
    let booster = Booster::from_string(text).map_err(|e| format!("lightgbm load: {e}"))?;
    let native = NativeModel::from_text(text).map_err(|e| format!("native load: {e}"))?;
    let n = rows.len() / n_features;
    let nf = n_features as i32;
    let want_raw = booster
        .raw_scores_with_params(rows, nf, true, "num_threads=1")
        .map_err(|e| format!("lightgbm raw: {e}"))?;
    let want = booster
        .predict_with_params(rows, nf, true, "num_threads=1")
        .map_err(|e| format!("lightgbm predict: {e}"))?;
    let mut raw = vec![0.0; n];
    native
        .raw_scores_into(rows, &mut raw)
        .map_err(|e| e.to_string())?;
    let got = native.predict(rows).map_err(|e| e.to_string())?;
    let mut folded = vec![0.0; n];
    native
        .predict_batch_into(&mut EvalScratch::default(), rows, &mut folded)
        .map_err(|e| e.to_string())?;
    for r in 0..n {
        let row = &rows[r * n_features..(r + 1) * n_features];
        if raw[r].to_bits() != want_raw[r].to_bits() {
            return Err(format!(
                "raw score of row {r} {row:?}: native {:e}, lightgbm {:e}",
                raw[r], want_raw[r]
            ));
        }
        if !close(got[r], want[r]) {
            return Err(format!(
                "prediction of row {r} {row:?}: native {:e}, lightgbm {:e}",
                got[r], want[r]
            ));
        }
        if folded[r].to_bits() != got[r].to_bits() {
            return Err(format!(
                "batch prediction of row {r} {row:?}: folded {:e}, plain {:e}",
                folded[r], got[r]
            ));
        }
    }
    // Single rows, small batches (walked row by row) and large ones (row-set blocks) agree.
    let mut scratch = EvalScratch::default();
    for len in [1, 2, 7, 32, 33, 300] {
        for start in [0, n.saturating_sub(len) / 2, n.saturating_sub(len)] {
            let end = (start + len).min(n);
            let mut part = vec![0.0; end - start];
            native
                .predict_batch_into(
                    &mut scratch,
                    &rows[start * n_features..end * n_features],
                    &mut part,
                )
                .map_err(|e| e.to_string())?;
            for (k, p) in part.iter().enumerate() {
                if p.to_bits() != got[start + k].to_bits() {
                    return Err(format!(
                        "row {} in a batch of rows {start}..{end} differs from the whole batch",
                        start + k
                    ));
                }
            }
        }
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn native_predictions_equal_lightgbm(case in case_strategy()) {
        let mut rng = Rng(case.seed);
        let (rows, labels) = training_data(&case, &mut rng);
        let text = sandstorm_trainer::train_matrix(
            &rows,
            case.n_features(),
            &labels,
            &case.params(),
            case.num_iterations,
        );
        let text = text.map_err(|e| TestCaseError::fail(format!("training failed: {e}")))?;
        let pred_rows = prediction_rows(&case, &mut rng, &text);
        compare_all(&text, &pred_rows, case.n_features(), &mut rng)
            .map_err(|m| TestCaseError::fail(format!("{m}\nmodel:\n{text}")))?;
    }
}

/// The shapes the property test must cover at least once, whatever the random draws.
#[test]
fn fixed_cases_cover_every_split_kind() {
    let base = Case {
        objective: Objective::Regression,
        seed: 11,
        n_rows: 400,
        n_numeric: 3,
        cardinalities: vec![5, 70],
        nan_rate: 0.1,
        zero_rate: 0.2,
        zero_as_missing: false,
        use_missing: true,
        linear_tree: false,
        num_leaves: 31,
        num_iterations: 12,
    };
    let variants = [
        base.clone(),
        Case {
            objective: Objective::Quantile,
            zero_as_missing: true,
            ..base.clone()
        },
        Case {
            objective: Objective::Binary,
            use_missing: false,
            ..base.clone()
        },
        Case {
            nan_rate: 0.0,
            ..base.clone()
        },
        Case {
            linear_tree: true,
            ..base.clone()
        },
    ];
    let mut kinds = BTreeSet::new();
    for case in variants {
        let mut rng = Rng(case.seed);
        let (rows, labels) = training_data(&case, &mut rng);
        let text = sandstorm_trainer::train_matrix(
            &rows,
            case.n_features(),
            &labels,
            &case.params(),
            case.num_iterations,
        )
        .unwrap_or_else(|e| panic!("{case:?}: {e}"));
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("decision_type=") {
                kinds.extend(v.split_whitespace().filter_map(|t| t.parse::<u8>().ok()));
            }
            if line == "is_linear=1" {
                kinds.insert(100);
            }
            if let Some(v) = line.strip_prefix("cat_boundaries=") {
                // A bitset of more than one word (categories >= 32).
                let b: Vec<usize> = v
                    .split_whitespace()
                    .filter_map(|t| t.parse().ok())
                    .collect();
                if b.windows(2).any(|w| w[1] - w[0] > 1) {
                    kinds.insert(101);
                }
            }
        }
        let pred_rows = prediction_rows(&case, &mut rng, &text);
        if let Err(m) = compare_all(&text, &pred_rows, case.n_features(), &mut rng) {
            panic!("{case:?}: {m}");
        }
    }
    // Categorical, numerical missing None / Zero / NaN, linear leaves, multi-word bitsets.
    assert!(
        kinds.iter().any(|k| k & 1 == 1),
        "no categorical split: {kinds:?}"
    );
    for missing in 0..3u8 {
        assert!(
            kinds.iter().any(|k| k & 1 == 0 && (k >> 2) & 3 == missing),
            "no numerical split with missing type {missing}: {kinds:?}"
        );
    }
    assert!(kinds.contains(&100), "no linear tree: {kinds:?}");
    assert!(
        kinds.contains(&101),
        "no multi-word category bitset: {kinds:?}"
    );
}

/// The four models `train_records` writes, native against LightGBM on encoded telemetry rows
/// (including rows with unseen categorical levels, which encode as NaN).
#[test]
fn trained_model_set_predicts_like_lightgbm() {
    let catalog = Catalog::default_catalog();
    let cfg = sandstorm_datasets::SimulatorConfig {
        rows: 4000,
        seed: 3,
        ..Default::default()
    };
    let records: Vec<_> = sandstorm_datasets::simulate(&catalog, &cfg).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let train_cfg = sandstorm_trainer::TrainConfig {
        num_iterations: 60,
        ..Default::default()
    };
    sandstorm_trainer::train_records(&records, dir.path(), &train_cfg).expect("training");
    let set = ModelSet::load(dir.path()).expect("model set");

    let mut rows = Vec::new();
    set.space().encode_all(
        records.iter().take(1500).map(FeatureInput::from_record),
        &mut rows,
    );
    // Unseen levels and odd values.
    for (i, chunk) in rows.chunks_exact_mut(N_FEATURES).enumerate().take(200) {
        chunk[i % 6] = f64::NAN;
        chunk[6 + i % 16] = [0.0, -0.0, 1e-40, f64::NAN][i % 4];
    }
    for role in ModelRole::ALL {
        let text = std::fs::read_to_string(dir.path().join(role.file_name())).expect("model");
        assert_eq!(
            set.model(role).num_trees(),
            set.metadata().models[&role].num_trees
        );
        if let Err(m) = compare_all(&text, &rows, N_FEATURES, &mut Rng(5)) {
            panic!("{}: {m}", role.as_str());
        }
    }
}
