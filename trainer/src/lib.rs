//! Offline training of Sandstorm's models from telemetry.
//!
//! [`train`] selects telemetry rows with polars (a lazy Parquet scan with the `[data]` window
//! pushed down, SQL row filters and derived columns, de-duplication: [`DataSelection`]), encodes
//! them with the shared feature encoding (`sandstorm_features::encoding`), splits them by time
//! (train, validation for early stopping, holdout for metrics), optionally cross-validates
//! (forward chaining) and searches hyper-parameters per model, trains one LightGBM model per
//! [`ModelRole`], explains it (split and gain importance, SHAP on a sample), optionally
//! weighting rows by inverse propensity ([`IpwConfig`]: rows the logging policy chose with a
//! small probability count more) and writes a model directory in the layout of
//! `sandstorm_features::model` plus `training.json` and `report.html`. [`registry`] versions
//! model directories and promotes champions. [`offpolicy`] estimates a new policy's value on
//! logged decisions (IPS, self-normalised IPS, doubly robust). [`query`] runs SQL and the named reports over
//! telemetry (`sandstorm telemetry query|report`). Serving crates never depend on this crate.

mod config;
mod data;
mod explain;
mod lgbm;
mod metrics;
pub mod offpolicy;
mod pipeline;
pub mod query;
pub mod registry;
mod report;
mod tune;
mod weighting;

pub use config::parse_duration;
pub use pipeline::{DataSelection, DataSummary, Selected, select as select_telemetry};
pub use weighting::{DEFAULT_MAX_WEIGHT, IpwConfig, WeightStats};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lightgbm3::Booster;
use sandstorm_features::encoding::{
    FeatureInput, FeatureSpace, N_FEATURES, base_margin, categorical_indices,
};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelEntry, ModelMetadata, ModelRole, StoredFeatureSchema,
    TimeWindow,
};
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord, from_micros};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The telemetry given cannot be trained on (missing, empty, wrong schema, too small,
    /// unreadable by polars).
    #[error("{0}")]
    Input(String),
    /// A telemetry query is wrong (bad SQL, unknown column, unknown report or format); holds
    /// DataFusion's message.
    #[error("invalid query: {0}")]
    Query(String),
    /// A configuration value is out of range.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// Writing the model directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// LightGBM rejected the data or parameters.
    #[error("lightgbm: {0}")]
    LightGbm(String),
    #[error("reading telemetry: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Features(#[from] sandstorm_features::FeaturesError),
    /// Drawing the training report failed.
    #[error("writing the training report: {0}")]
    Report(String),
    /// A model registry operation that cannot be done (unknown version, nothing to roll
    /// back to, ...).
    #[error("{0}")]
    Registry(String),
    /// A telemetry or registry location that cannot be parsed, or an object store that
    /// failed.
    #[error(transparent)]
    Storage(#[from] sandstorm_storage::StorageError),
    /// A bug in Sandstorm.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<lightgbm3::Error> for TrainerError {
    fn from(e: lightgbm3::Error) -> Self {
        TrainerError::LightGbm(e.to_string())
    }
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Share of the most recent rows held out for metrics (0: train on everything before the
    /// validation rows and record no holdout metrics).
    pub holdout_fraction: f64,
    /// Share of rows (just before the holdout) used for early stopping.
    pub valid_fraction: f64,
    /// Maximum boosting rounds.
    pub num_iterations: usize,
    /// Stop when the validation metric has not improved for this many rounds.
    pub early_stopping_rounds: usize,
    pub seed: u64,
    /// Smallest number of executed rows accepted.
    pub min_rows: usize,
    /// LightGBM parameters (verbatim names, aliases allowed) over the defaults of every model.
    pub params: Map<String, Value>,
    /// LightGBM parameters of one model, over `params`.
    pub model_params: BTreeMap<ModelRole, Map<String, Value>>,
    /// Forward-chaining cross-validation folds over the rows before the holdout (< 2: none).
    pub cv_folds: usize,
    /// Random-search trials per model (0: no search; trial 0 is the configured parameters).
    pub search_trials: usize,
    /// Wall-clock budget of the whole search, shared equally by the models.
    pub search_budget: Duration,
    /// Write `report.html` and its plots into the model directory.
    pub report: bool,
    /// Rows (from the holdout) whose SHAP values are computed (0: none).
    pub shap_sample: usize,
    /// Draw progress bars on stderr (only shown on a terminal).
    pub progress: bool,
    /// Weight rows by `1 / selection_probability` (clipped, normalised to mean 1) so models
    /// trained on a router's own choices are not biased toward past winners; `None`: every
    /// row weighs 1.
    pub ipw: Option<IpwConfig>,
    /// Which telemetry rows [`train`] reads (`[data]`; the default: all of them).
    pub data: DataSelection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            holdout_fraction: 0.2,
            valid_fraction: 0.1,
            num_iterations: 400,
            early_stopping_rounds: 30,
            seed: 42,
            min_rows: 200,
            params: Map::new(),
            model_params: BTreeMap::new(),
            cv_folds: 0,
            search_trials: 0,
            search_budget: Duration::from_secs(60),
            report: true,
            shap_sample: 500,
            progress: false,
            ipw: None,
            data: DataSelection::default(),
        }
    }
}

impl TrainConfig {
    /// Reads a `train.toml` (or LightGBM `key = value` `.conf`) over this configuration;
    /// unknown LightGBM parameters are an error naming the key. See `docs/training.md`.
    pub fn with_file(self, path: &Path) -> Result<Self, TrainerError> {
        config::load(path, self)
    }
}

/// What [`train`] produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub out_dir: PathBuf,
    pub metadata: ModelMetadata,
    /// `report.html` in the model directory, when written.
    pub report_html: Option<PathBuf>,
    /// The inverse-propensity weights of the training rows, when weighted.
    pub weighting: Option<WeightStats>,
    /// What the `[data]` selection read and kept ([`train`]; `None` for [`train_records`]).
    pub data: Option<DataSummary>,
}

/// `training.json`: how each model was tuned and what it relies on.
pub const TRAINING_FILE: &str = "training.json";
/// The HTML training report.
pub const REPORT_FILE: &str = "report.html";

/// Reads the telemetry under `telemetry_dir` selected by `cfg.data` and writes a model
/// directory to `out_dir`.
pub fn train(
    telemetry_dir: &Path,
    out_dir: &Path,
    cfg: &TrainConfig,
) -> Result<TrainReport, TrainerError> {
    let selected = pipeline::select(telemetry_dir, &cfg.data)?;
    train_selected(&selected.records, out_dir, cfg, Some(&selected.summary))
}

/// Reads every `*.parquet` telemetry file under `dir` (polars), ordered by request time.
pub fn load_telemetry(dir: &Path) -> Result<Vec<TelemetryRecord>, TrainerError> {
    pipeline::select(dir, &DataSelection::default()).map(|s| s.records)
}

/// Reads the telemetry at `location` (a local directory or an object-store prefix), ordered
/// by request time.
pub fn load_telemetry_at(
    location: &sandstorm_storage::Location,
) -> Result<Vec<TelemetryRecord>, TrainerError> {
    select_at(location, &DataSelection::default()).map(|s| s.records)
}

/// Reads the telemetry at `location` through `selection` (polars). An object-store prefix is
/// first downloaded into a temporary directory (polars reads local files here; its object-store
/// support is not compiled in).
pub fn select_at(
    location: &sandstorm_storage::Location,
    selection: &DataSelection,
) -> Result<Selected, TrainerError> {
    data::check_location(location, "")?;
    match location {
        sandstorm_storage::Location::Local(dir) => pipeline::select(dir, selection),
        sandstorm_storage::Location::Remote(remote) => {
            let tmp = tempfile::tempdir()
                .map_err(|e| TrainerError::Internal(format!("temporary directory: {e}")))?;
            remote.download_dir(tmp.path(), |name| {
                name.ends_with(".parquet") && !name.split('/').any(|part| part.starts_with('.'))
            })?;
            pipeline::select(tmp.path(), selection)
        }
    }
}

/// Trains on telemetry selected by [`select_at`] (its row counts go to `training.json` and
/// the report) and writes a model directory to `out_dir`.
pub fn train_selection(
    selected: &Selected,
    out_dir: &Path,
    cfg: &TrainConfig,
) -> Result<TrainReport, TrainerError> {
    train_selected(&selected.records, out_dir, cfg, Some(&selected.summary))
}

/// Executed rows of `records` in time order.
fn executed(records: &[TelemetryRecord]) -> Vec<&TelemetryRecord> {
    let mut rows: Vec<&TelemetryRecord> = records
        .iter()
        .filter(|r| r.status != RunStatus::NotExecuted)
        .collect();
    rows.sort_by_key(|r| (r.ts_request_us, r.attempt));
    rows
}

/// Trains on rows already in memory (sorted by request time or not); `cfg.data` is not
/// applied (it selects rows while reading telemetry).
pub fn train_records(
    records: &[TelemetryRecord],
    out_dir: &Path,
    cfg: &TrainConfig,
) -> Result<TrainReport, TrainerError> {
    train_selected(records, out_dir, cfg, None)
}

fn train_selected(
    records: &[TelemetryRecord],
    out_dir: &Path,
    cfg: &TrainConfig,
    data: Option<&DataSummary>,
) -> Result<TrainReport, TrainerError> {
    if !(0.0..0.5).contains(&cfg.holdout_fraction) || !(0.0..0.5).contains(&cfg.valid_fraction) {
        return Err(TrainerError::Config(
            "holdout and validation fractions must be in [0, 0.5)".to_owned(),
        ));
    }
    for key in cfg
        .params
        .keys()
        .chain(cfg.model_params.values().flat_map(|m| m.keys()))
    {
        config::check_param_name(key)?;
    }
    let rows = executed(records);
    if rows.len() < cfg.min_rows {
        let selection = match data {
            Some(d) if !cfg.data.is_everything() => format!(
                "; the [data] selection kept {} of {} rows ({} in the window, {} after the filter, {} after dedupe)",
                d.rows, d.rows_scanned, d.rows_in_window, d.rows_after_filter, d.rows_after_dedupe
            ),
            _ => String::new(),
        };
        return Err(TrainerError::Input(format!(
            "need at least {} executed telemetry rows to train, found {} (of {} rows{selection})",
            cfg.min_rows,
            rows.len(),
            records.len()
        )));
    }
    let n = rows.len();
    let n_hold = ((n as f64) * cfg.holdout_fraction).ceil() as usize;
    let n_valid = ((n as f64) * cfg.valid_fraction).ceil() as usize;
    let n_train = n - n_hold - n_valid;
    let (pre_rows, hold_rows) = rows.split_at(n - n_hold);
    let (train_rows, valid_rows) = pre_rows.split_at(n_train);
    // Inverse-propensity weights of the rows before the holdout (holdout metrics stay
    // unweighted).
    let pre_weights = match &cfg.ipw {
        Some(ipw) => {
            ipw.validate()?;
            Some(weighting::clipped_weights(&rows, ipw)?[..n - n_hold].to_vec())
        }
        None => None,
    };
    let (train_weights, valid_weights) = match &pre_weights {
        Some(w) => (Some(&w[..n_train]), Some(&w[n_train..])),
        None => (None, None),
    };
    let weight_stats = cfg
        .ipw
        .as_ref()
        .zip(train_weights)
        .map(|(ipw, w)| weighting::stats(train_rows, w, ipw));
    if let Some(s) = &weight_stats {
        tracing::info!(
            min = s.min,
            max = s.max,
            mean = s.mean,
            clipped_share = s.clipped_share,
            "inverse-propensity weights"
        );
    }

    let space = FeatureSpace::fit(train_rows.iter().map(|r| FeatureInput::from_record(r)));
    let encode = |set: &[&TelemetryRecord]| {
        let mut m = Vec::with_capacity(set.len() * N_FEATURES);
        space.encode_all(set.iter().map(|r| FeatureInput::from_record(r)), &mut m);
        m
    };
    let (x_train, x_valid, x_hold) = (encode(train_rows), encode(valid_rows), encode(hold_rows));
    let x_pre = [x_train.as_slice(), x_valid.as_slice()].concat();

    std::fs::create_dir_all(out_dir).map_err(|source| TrainerError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let rounds = tune::Rounds {
        num_iterations: cfg.num_iterations,
        early_stopping_rounds: cfg.early_stopping_rounds,
    };
    let search_steps = if cfg.search_trials > 0 {
        cfg.search_trials as u64 * ModelRole::ALL.len() as u64
    } else {
        0
    };
    let bar = progress_bar(
        cfg.progress,
        search_steps + ModelRole::ALL.len() as u64,
        "training",
    );
    let mut models = BTreeMap::new();
    let mut details = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let mut hasher = Sha256::new();
    for (role_index, role) in ModelRole::ALL.into_iter().enumerate() {
        let split = |set: &[&TelemetryRecord], x: &[f64]| select(role, set, x);
        // The weights of the rows `select` kept.
        let pick = |w: Option<&[f64]>, idx: &[usize]| {
            w.map(|w| idx.iter().map(|&i| w[i]).collect::<Vec<f64>>())
        };
        let (tx, ty, tidx) = split(train_rows, &x_train);
        let (vx, vy, vidx) = split(valid_rows, &x_valid);
        let (tw, vw) = (pick(train_weights, &tidx), pick(valid_weights, &vidx));
        let (hx, hy, hidx) = split(hold_rows, &x_hold);
        if ty.len() < 20 || vy.is_empty() || (hy.is_empty() && !hold_rows.is_empty()) {
            return Err(TrainerError::Input(format!(
                "too few rows with a usable {} label (train {}, validation {}, holdout {})",
                role.as_str(),
                ty.len(),
                vy.len(),
                hy.len()
            )));
        }
        let mut params = params_for(role, cfg);
        config::merge_params(&mut params, &cfg.params)?;
        let role_params = cfg.model_params.get(&role).cloned().unwrap_or_default();
        config::merge_params(&mut params, &role_params)?;
        let metric = tune::metric_name(&params);
        let higher = tune::higher_is_better(&metric);

        // Tuning sees only the rows before the holdout, in time order.
        let (px, py, pidx) = split(pre_rows, &x_pre);
        let pw = pick(pre_weights.as_deref(), &pidx);
        let bounds = tune::fold_bounds(py.len(), cfg.cv_folds, cfg.valid_fraction);
        let mut search = None;
        let mut cv = None;
        if cfg.search_trials > 0 {
            bar.set_message(format!("searching {}", role.as_str()));
            let user_set: Vec<String> = cfg
                .params
                .keys()
                .chain(role_params.keys())
                .filter_map(|k| config::canonical_name(k).ok().flatten())
                .collect();
            let free: Vec<&str> = tune::SEARCHED
                .into_iter()
                .filter(|k| !user_set.iter().any(|u| u.as_str() == *k))
                .collect();
            let result = tune::search(
                &px,
                &py,
                pw.as_deref(),
                N_FEATURES,
                &bounds,
                &params,
                &free,
                cfg.search_trials,
                cfg.search_budget / ModelRole::ALL.len() as u32,
                rounds,
                cfg.seed.wrapping_add(role_index as u64),
                &mut || bar.inc(1),
            )?;
            // Trials cut by the budget still count as steps of the bar.
            bar.inc((cfg.search_trials - result.trials.len()) as u64);
            let best = &result.trials[result.best];
            config::merge_params(&mut params, &best.params)?;
            if cfg.cv_folds >= 2 {
                cv = Some(best.cv.clone());
            }
            search = Some(result);
        } else if cfg.cv_folds >= 2 {
            bar.set_message(format!("cross-validating {}", role.as_str()));
            cv = Some(tune::cross_validate(
                &px,
                &py,
                pw.as_deref(),
                N_FEATURES,
                &bounds,
                &params,
                rounds,
            )?);
        }

        bar.set_message(format!("training {}", role.as_str()));
        let (tw, vw) = (
            tw.as_deref().map(weighting::normalised),
            vw.as_deref().map(weighting::normalised),
        );
        let train_set =
            lgbm::Dataset::new(&tx, N_FEATURES, &to_f32(&ty), tw.as_deref(), &params, None)?;
        let valid_set = lgbm::Dataset::new(
            &vx,
            N_FEATURES,
            &to_f32(&vy),
            vw.as_deref(),
            &params,
            Some(&train_set),
        )?;
        let trained = lgbm::train(
            &train_set,
            Some(lgbm::EarlyStopping {
                valid: &valid_set,
                rounds: cfg.early_stopping_rounds,
                higher_is_better: higher,
            }),
            &params,
            cfg.num_iterations,
        )?;
        bar.inc(1);
        let booster = Booster::from_string(&trained.model_text)?;
        let mut metrics = if hy.is_empty() {
            BTreeMap::new()
        } else {
            let pred = predict(&booster, role, &hx)?;
            let actual = actual_values(role, &hx, &hy);
            let m = holdout_metrics(role, &pred, &actual);
            outcomes.insert(
                role,
                report::Outcome {
                    pred,
                    actual,
                    provider: hidx
                        .iter()
                        .map(|i| hold_rows[*i].provider.clone())
                        .collect(),
                },
            );
            m
        };
        metrics.insert(
            "best_valid_metric".to_owned(),
            trained.best_valid_metric(higher),
        );
        if let Some(cv) = &cv {
            metrics.insert("cv_metric".to_owned(), cv.mean);
        }

        // JSON has no NaN: a metric that is undefined here (e.g. the AUC of a model whose
        // labels are all one class) is left out.
        metrics.retain(|_, v| v.is_finite());
        let file = role.file_name();
        write_file(&out_dir.join(&file), trained.model_text.as_bytes())?;
        hasher.update(trained.model_text.as_bytes());

        let (shap_x, shap_rows) = if hy.is_empty() {
            (&vx, vy.len())
        } else {
            (&hx, hy.len())
        };
        let explain = explain::explain(&booster, shap_x, shap_rows, cfg.shap_sample)?;
        details.insert(
            role.as_str().to_owned(),
            RoleDetails {
                params: params.clone(),
                metric,
                best_iteration: trained.num_trees,
                valid_curve: trained.valid_curve.clone(),
                cv,
                search,
                explain,
            },
        );
        models.insert(
            role,
            ModelEntry {
                file,
                target: target_name(role).to_owned(),
                target_transform: role.target_transform(),
                params,
                num_trees: trained.num_trees,
                metrics,
            },
        );
    }
    bar.finish_and_clear();

    let schema = StoredFeatureSchema {
        hash: space.hash(),
        space,
    };
    let created = OffsetDateTime::now_utc();
    let metadata = ModelMetadata {
        version: format!(
            "m{}-{}",
            created.unix_timestamp(),
            &hex::encode(hasher.finalize())[..8]
        ),
        created_at: rfc3339(created),
        feature_version: schema.space.feature_version,
        feature_schema_hash: schema.hash.clone(),
        training_window: window(train_rows),
        validation_window: window(valid_rows),
        holdout_window: window(hold_rows),
        models,
    };
    let training = TrainingDetails {
        version: metadata.version.clone(),
        seed: cfg.seed,
        cv_folds: cfg.cv_folds,
        search_trials: cfg.search_trials,
        search_budget_s: cfg.search_budget.as_secs_f64(),
        config_params: cfg.params.clone(),
        config_model_params: cfg
            .model_params
            .iter()
            .map(|(r, m)| (r.as_str().to_owned(), m.clone()))
            .collect(),
        weighting: weight_stats.clone(),
        data: data.cloned(),
        models: details,
    };
    write_json(&out_dir.join(FEATURE_SCHEMA_FILE), &schema)?;
    write_json(&out_dir.join(TRAINING_FILE), &training)?;
    write_json(&out_dir.join(METADATA_FILE), &metadata)?;
    let report_html = if cfg.report {
        Some(report::write(out_dir, &metadata, &training, &outcomes)?)
    } else {
        None
    };
    tracing::info!(version = %metadata.version, dir = %out_dir.display(), "trained model set");
    Ok(TrainReport {
        out_dir: out_dir.to_path_buf(),
        metadata,
        report_html,
        weighting: weight_stats,
        data: data.cloned(),
    })
}

/// `training.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TrainingDetails {
    pub(crate) version: String,
    pub(crate) seed: u64,
    pub(crate) cv_folds: usize,
    pub(crate) search_trials: usize,
    pub(crate) search_budget_s: f64,
    /// The `[params]` of the configuration, verbatim.
    pub(crate) config_params: Map<String, Value>,
    /// The `[models.<name>]` parameters of the configuration, verbatim.
    pub(crate) config_model_params: BTreeMap<String, Map<String, Value>>,
    /// Inverse-propensity weighting of the training rows (`null`: unweighted).
    pub(crate) weighting: Option<WeightStats>,
    /// The `[data]` selection and its row counts (`null`: rows given in memory).
    pub(crate) data: Option<DataSummary>,
    pub(crate) models: BTreeMap<String, RoleDetails>,
}

/// How one model was tuned and what it relies on.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RoleDetails {
    /// Final LightGBM parameters.
    pub(crate) params: Map<String, Value>,
    /// The LightGBM validation metric of early stopping, cross-validation and search.
    pub(crate) metric: String,
    pub(crate) best_iteration: usize,
    /// Validation metric after each boosting round of the final model.
    pub(crate) valid_curve: Vec<f64>,
    pub(crate) cv: Option<tune::CvResult>,
    pub(crate) search: Option<tune::SearchResult>,
    pub(crate) explain: explain::Explanation,
}

fn progress_bar(show: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg:28} [{bar:30}] {pos}/{len} {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_owned());
    bar
}

/// Predictions of `role` in natural units (ms, USD, probability) for encoded rows `x`.
pub(crate) fn predict(
    booster: &Booster,
    role: ModelRole,
    x: &[f64],
) -> Result<Vec<f64>, TrainerError> {
    let raw = booster.predict_with_params(x, N_FEATURES as i32, true, "num_threads=1")?;
    Ok(raw
        .iter()
        .zip(x.chunks_exact(N_FEATURES))
        .map(|(v, row)| role.target_transform().apply(*v + base_margin(role, row)))
        .collect())
}

/// Labels from [`select`] back in natural units.
pub(crate) fn actual_values(role: ModelRole, x: &[f64], y: &[f64]) -> Vec<f64> {
    y.iter()
        .zip(x.chunks_exact(N_FEATURES))
        .map(|(v, row)| role.target_transform().apply(*v + base_margin(role, row)))
        .collect()
}

/// Trains one LightGBM booster on a row-major matrix (`labels.len()` rows of `n_features`
/// values; NaN is a missing value) for exactly `num_iterations` rounds, without early
/// stopping, and returns it in LightGBM's text format. `params` are LightGBM parameters by
/// name, including dataset parameters such as `categorical_feature`, `zero_as_missing` or
/// `linear_tree`. Used by tests and benchmarks that need a model of a given shape.
pub fn train_matrix(
    rows: &[f64],
    n_features: usize,
    labels: &[f64],
    params: &Map<String, Value>,
    num_iterations: usize,
) -> Result<String, TrainerError> {
    if n_features == 0 || rows.len() != labels.len() * n_features {
        return Err(TrainerError::Input(format!(
            "{} values are not {} rows of {n_features} features",
            rows.len(),
            labels.len()
        )));
    }
    let train_set = lgbm::Dataset::new(rows, n_features, &to_f32(labels), None, params, None)?;
    Ok(lgbm::train(&train_set, None, params, num_iterations)?.model_text)
}

/// Rows usable for `role` and their labels in the model's training space: the transformed
/// outcome minus the row's base margin ([`base_margin`], 0 without history), so models of
/// requests with a workload history learn the deviation from the candidate's past level.
/// Also returns the index in `set` of each row kept.
pub(crate) fn select(
    role: ModelRole,
    set: &[&TelemetryRecord],
    x: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut idx = Vec::new();
    for (i, r) in set.iter().enumerate() {
        // Latency and cost are only observed in full when the program ran to its end.
        let completed = matches!(r.status, RunStatus::Ok | RunStatus::Failed);
        let label = match role {
            ModelRole::LatencyP50 | ModelRole::LatencyP95 if completed => {
                Some(r.total_latency_ms.max(1e-3).ln())
            }
            ModelRole::Cost if completed => Some(r.cost_usd.max(1e-12).ln()),
            ModelRole::Failure => Some(if r.status.is_infrastructure_failure() {
                1.0
            } else {
                0.0
            }),
            _ => None,
        };
        if let Some(y) = label {
            let row = &x[i * N_FEATURES..(i + 1) * N_FEATURES];
            xs.extend_from_slice(row);
            ys.push(y - base_margin(role, row));
            idx.push(i);
        }
    }
    (xs, ys, idx)
}

fn target_name(role: ModelRole) -> &'static str {
    match role {
        ModelRole::LatencyP50 | ModelRole::LatencyP95 => "ln(total_latency_ms) - base_margin",
        ModelRole::Cost => "ln(cost_usd) - base_margin",
        ModelRole::Failure => "status in (timeout, oom, quota, unavailable)",
    }
}

/// LightGBM parameters of each model, by their LightGBM names.
fn params_for(role: ModelRole, cfg: &TrainConfig) -> Map<String, Value> {
    let cats = categorical_indices()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut p = json!({
        "boosting": "gbdt",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "max_bin": 255,
        "categorical_feature": cats,
        "num_iterations": cfg.num_iterations,
        "early_stopping_round": cfg.early_stopping_rounds,
        "seed": cfg.seed,
        "deterministic": true,
        "force_row_wise": true,
        "num_threads": 2,
        "verbosity": -1,
    });
    let specific = match role {
        ModelRole::LatencyP50 | ModelRole::Cost => {
            json!({"objective": "regression", "metric": "l2"})
        }
        ModelRole::LatencyP95 => {
            json!({"objective": "quantile", "alpha": 0.95, "metric": "quantile"})
        }
        ModelRole::Failure => json!({"objective": "binary", "metric": "binary_logloss"}),
    };
    if let (Value::Object(p), Value::Object(s)) = (&mut p, specific) {
        p.extend(s);
    }
    match p {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub(crate) fn holdout_metrics(
    role: ModelRole,
    pred: &[f64],
    actual: &[f64],
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    m.insert("holdout_rows".to_owned(), pred.len() as f64);
    match role {
        ModelRole::LatencyP50 => point_error_metrics(&mut m, "mae_ms", pred, actual),
        ModelRole::LatencyP95 => {
            m.insert(
                "pinball_loss_ms".to_owned(),
                metrics::pinball(pred, actual, 0.95),
            );
            m.insert("coverage".to_owned(), metrics::coverage(pred, actual));
        }
        ModelRole::Cost => point_error_metrics(&mut m, "mae_usd", pred, actual),
        ModelRole::Failure => {
            let labels: Vec<bool> = actual.iter().map(|a| *a > 0.5).collect();
            m.insert("auc".to_owned(), metrics::auc(pred, &labels));
            m.insert("logloss".to_owned(), metrics::logloss(pred, &labels));
            m.insert(
                "base_rate".to_owned(),
                labels.iter().filter(|l| **l).count() as f64 / labels.len().max(1) as f64,
            );
        }
    }
    m
}

/// Absolute and relative errors of a point prediction, `mae_name` carrying the unit.
fn point_error_metrics(
    m: &mut BTreeMap<String, f64>,
    mae_name: &str,
    pred: &[f64],
    actual: &[f64],
) {
    m.insert(mae_name.to_owned(), metrics::mae(pred, actual));
    m.insert(
        "median_ape_pct".to_owned(),
        metrics::ape_quantile(pred, actual, 0.5),
    );
    m.insert(
        "p90_ape_pct".to_owned(),
        metrics::ape_quantile(pred, actual, 0.9),
    );
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|x| *x as f32).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn window(rows: &[&TelemetryRecord]) -> TimeWindow {
    let from = rows.first().map_or(0, |r| r.ts_request_us);
    let to = rows.last().map_or(0, |r| r.ts_request_us);
    TimeWindow {
        from: rfc3339(from_micros(from)),
        to: rfc3339(from_micros(to)),
        rows: rows.len(),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainerError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TrainerError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), TrainerError> {
    let text =
        serde_json::to_vec_pretty(value).map_err(|e| TrainerError::Internal(e.to_string()))?;
    write_file(path, &text)
}
