//! Loading a model directory and predicting a batch of encoded candidate rows.
//!
//! Serving predicts with the native evaluator ([`crate::native`]): all four models over all
//! rows of a decision, into buffers the caller reuses ([`Predictions`]), without allocating.
//! With the `lightgbm-reference` feature (tests only), [`ModelSet::load_with`] can instead
//! predict through LightGBM's C API, so tests can compare the two end to end.

use std::path::{Path, PathBuf};

use sandstorm_features::encoding::{FeatureSpace, N_FEATURES, base_margin};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole, StoredFeatureSchema,
};

use crate::RouterError;
use crate::decide::Prediction;
use crate::native::{EvalScratch, NativeModel};

/// Which implementation predicts.
#[cfg(feature = "lightgbm-reference")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    /// The native evaluator, as in serving.
    Native,
    /// LightGBM's C API through `lightgbm3` (the reference; slow: it loads the boosters on
    /// every call, because `lightgbm3::Booster` is neither `Send` nor `Sync`).
    LightGbm,
}

/// The four models of a model directory plus its feature space.
#[derive(Debug)]
pub struct ModelSet {
    dir: PathBuf,
    metadata: ModelMetadata,
    space: FeatureSpace,
    /// One model per role, in [`ModelRole::ALL`] order.
    models: [NativeModel; 4],
    /// The model texts, when predicting through LightGBM's C API.
    #[cfg(feature = "lightgbm-reference")]
    reference: Option<[String; 4]>,
}

/// Predictions for a batch, one value per row and role, in natural units. Reused across
/// decisions: predicting resizes the vectors, which allocates only while they grow.
#[derive(Debug, Clone, Default)]
pub(crate) struct Predictions {
    pub(crate) latency_p50_ms: Vec<f64>,
    pub(crate) latency_p95_ms: Vec<f64>,
    pub(crate) cost_usd: Vec<f64>,
    pub(crate) failure_prob: Vec<f64>,
    /// Per model (in `ModelRole::ALL` order): its cached row sets and remembered leaves.
    eval: [EvalScratch; 4],
    /// Per feature: whether it has the same value in every row of the batch.
    constant: Vec<bool>,
}

impl Predictions {
    fn for_role(&mut self, role: ModelRole) -> &mut Vec<f64> {
        match role {
            ModelRole::LatencyP50 => &mut self.latency_p50_ms,
            ModelRole::LatencyP95 => &mut self.latency_p95_ms,
            ModelRole::Cost => &mut self.cost_usd,
            ModelRole::Failure => &mut self.failure_prob,
        }
    }

    pub(crate) fn reserve(&mut self, rows: usize) {
        for role in ModelRole::ALL {
            let v = self.for_role(role);
            v.reserve(rows.saturating_sub(v.len()));
        }
    }
}

impl ModelSet {
    /// Loads and checks a model directory written by `sandstorm train`.
    pub fn load(dir: &Path) -> Result<Self, RouterError> {
        let (metadata, space, texts) = read_dir(dir)?;
        let err = |message: String| RouterError::ModelDir {
            path: dir.to_path_buf(),
            message,
        };
        let mut models = Vec::with_capacity(4);
        for (role, text) in ModelRole::ALL.into_iter().zip(&texts) {
            let file = role.file_name();
            let model = NativeModel::from_text(text).map_err(|e| err(format!("{file}: {e}")))?;
            if model.n_features() != N_FEATURES {
                return Err(err(format!(
                    "{file} expects {} features, the encoder produces {N_FEATURES}",
                    model.n_features()
                )));
            }
            tracing::debug!(
                role = role.as_str(),
                trees = model.num_trees(),
                "loaded model"
            );
            models.push(model);
        }
        let models: [NativeModel; 4] = models
            .try_into()
            .map_err(|_| err("expected four models".to_owned()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            metadata,
            space,
            models,
            #[cfg(feature = "lightgbm-reference")]
            reference: None,
        })
    }

    /// Loads a model directory that predicts with `evaluator` (tests only).
    #[cfg(feature = "lightgbm-reference")]
    pub fn load_with(dir: &Path, evaluator: Evaluator) -> Result<Self, RouterError> {
        let mut set = Self::load(dir)?;
        if evaluator == Evaluator::LightGbm {
            let (_, _, texts) = read_dir(dir)?;
            set.reference = Some(texts);
        }
        Ok(set)
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    pub fn version(&self) -> &str {
        &self.metadata.version
    }

    pub fn space(&self) -> &FeatureSpace {
        &self.space
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The native model of `role`.
    pub fn model(&self, role: ModelRole) -> &NativeModel {
        let i = ModelRole::ALL
            .iter()
            .position(|r| *r == role)
            .unwrap_or_default();
        &self.models[i]
    }

    /// The prediction of every row of a row-major matrix of encoded rows (`N_FEATURES` per
    /// row), derived exactly as a decision derives it ([`Prediction::from_outputs`]).
    /// Allocates; offline tools use it, serving goes through [`crate::Router::decide_with`].
    pub fn predict(&self, rows: &[f64]) -> Result<Vec<Prediction>, RouterError> {
        if !rows.len().is_multiple_of(N_FEATURES) {
            return Err(RouterError::Prediction(format!(
                "{} values are not rows of {N_FEATURES} features",
                rows.len()
            )));
        }
        let mut out = Predictions::default();
        self.predict_into(rows, &mut out)?;
        Ok((0..rows.len() / N_FEATURES)
            .map(|i| {
                Prediction::from_outputs(
                    out.latency_p50_ms[i],
                    out.latency_p95_ms[i],
                    out.cost_usd[i],
                    out.failure_prob[i],
                )
            })
            .collect())
    }

    /// Predicts every role for a row-major matrix of encoded rows into `out`.
    pub(crate) fn predict_into(
        &self,
        rows: &[f64],
        out: &mut Predictions,
    ) -> Result<(), RouterError> {
        let n = rows.len() / N_FEATURES;
        #[cfg(feature = "lightgbm-reference")]
        if let Some(texts) = &self.reference {
            return predict_lightgbm(texts, rows, out);
        }
        let Predictions {
            latency_p50_ms,
            latency_p95_ms,
            cost_usd,
            failure_prob,
            eval,
            constant,
        } = out;
        crate::native::constant_features(rows, N_FEATURES, constant);
        // In ModelRole::ALL order, like `self.models`.
        let slots = [latency_p50_ms, latency_p95_ms, cost_usd, failure_prob];
        for (((role, model), values), eval) in ModelRole::ALL
            .into_iter()
            .zip(&self.models)
            .zip(slots)
            .zip(eval)
        {
            values.clear();
            values.resize(n, 0.0);
            model
                .predict_batch_with_constant(eval, rows, constant, values)
                .map_err(|e| RouterError::Prediction(format!("{}: {e}", role.as_str())))?;
            let transform = role.target_transform();
            for (v, row) in values.iter_mut().zip(rows.chunks_exact(N_FEATURES)) {
                *v = transform.apply(*v + base_margin(role, row));
            }
        }
        Ok(())
    }
}

/// Reads and checks metadata, feature schema and the four model texts.
fn read_dir(dir: &Path) -> Result<(ModelMetadata, FeatureSpace, [String; 4]), RouterError> {
    let err = |message: String| RouterError::ModelDir {
        path: dir.to_path_buf(),
        message,
    };
    if !dir.is_dir() {
        return Err(err(
            "does not exist or is not a directory (train one with `sandstorm train`)".to_owned(),
        ));
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| err(format!("cannot read {name}: {e}")))
    };
    let metadata: ModelMetadata = serde_json::from_str(&read(METADATA_FILE)?)
        .map_err(|e| err(format!("{METADATA_FILE} is invalid: {e}")))?;
    let schema: StoredFeatureSchema = serde_json::from_str(&read(FEATURE_SCHEMA_FILE)?)
        .map_err(|e| err(format!("{FEATURE_SCHEMA_FILE} is invalid: {e}")))?;
    schema
        .space
        .check_compatible()
        .map_err(|e| err(e.to_string()))?;
    if schema.space.hash() != schema.hash || schema.hash != metadata.feature_schema_hash {
        return Err(err(
            "feature schema hash does not match its content or metadata.json".to_owned(),
        ));
    }
    let mut texts: [String; 4] = Default::default();
    for (role, text) in ModelRole::ALL.into_iter().zip(texts.iter_mut()) {
        let entry = metadata
            .models
            .get(&role)
            .ok_or_else(|| err(format!("metadata.json has no `{}` model", role.as_str())))?;
        *text = read(&entry.file)?;
    }
    Ok((metadata, schema.space, texts))
}

#[cfg(feature = "lightgbm-reference")]
fn predict_lightgbm(
    texts: &[String; 4],
    rows: &[f64],
    out: &mut Predictions,
) -> Result<(), RouterError> {
    for (role, text) in ModelRole::ALL.into_iter().zip(texts) {
        let values = out.for_role(role);
        values.clear();
        if rows.is_empty() {
            continue;
        }
        let fail = |e: lightgbm3::Error| RouterError::Prediction(format!("{}: {e}", role.as_str()));
        let booster = lightgbm3::Booster::from_string(text).map_err(fail)?;
        let raw = booster
            .predict_with_params(rows, N_FEATURES as i32, true, "num_threads=1")
            .map_err(fail)?;
        values.extend(
            raw.into_iter()
                .zip(rows.chunks_exact(N_FEATURES))
                .map(|(v, row)| role.target_transform().apply(v + base_margin(role, row))),
        );
    }
    Ok(())
}
