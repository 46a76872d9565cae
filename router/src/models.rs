//! Loading a model directory and predicting a batch of encoded candidate rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lightgbm3::Booster;
use sandstorm_features::encoding::{FeatureSpace, N_FEATURES};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole, StoredFeatureSchema,
};

use crate::RouterError;

/// The four models of a model directory plus its feature space.
pub struct ModelSet {
    dir: PathBuf,
    metadata: ModelMetadata,
    space: FeatureSpace,
    boosters: BTreeMap<ModelRole, Booster>,
}

impl std::fmt::Debug for ModelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSet")
            .field("dir", &self.dir)
            .field("version", &self.metadata.version)
            .finish_non_exhaustive()
    }
}

/// Predictions for a batch, one value per row and role, in natural units.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchPrediction {
    pub(crate) latency_p50_ms: Vec<f64>,
    pub(crate) latency_p95_ms: Vec<f64>,
    pub(crate) cost_usd: Vec<f64>,
    pub(crate) failure_prob: Vec<f64>,
}

impl ModelSet {
    /// Loads and checks a model directory written by `sandstorm train`.
    pub fn load(dir: &Path) -> Result<Self, RouterError> {
        let err = |message: String| RouterError::ModelDir {
            path: dir.to_path_buf(),
            message,
        };
        if !dir.is_dir() {
            return Err(err(
                "does not exist or is not a directory (train one with `sandstorm train`)"
                    .to_owned(),
            ));
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| err(format!("cannot read {name}: {e}")))
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
        let mut boosters = BTreeMap::new();
        for role in ModelRole::ALL {
            let entry = metadata
                .models
                .get(&role)
                .ok_or_else(|| err(format!("metadata.json has no `{}` model", role.as_str())))?;
            let path = dir.join(&entry.file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("cannot read {}: {e}", entry.file)))?;
            let booster = Booster::from_string(&text)
                .map_err(|e| err(format!("{} is not a LightGBM model: {e}", entry.file)))?;
            if booster.num_features() as usize != N_FEATURES {
                return Err(err(format!(
                    "{} expects {} features, the encoder produces {N_FEATURES}",
                    entry.file,
                    booster.num_features()
                )));
            }
            boosters.insert(role, booster);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            metadata,
            space: schema.space,
            boosters,
        })
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

    /// Predicts every role for a row-major matrix of encoded rows.
    pub(crate) fn predict(&self, rows: &[f64]) -> Result<BatchPrediction, RouterError> {
        let mut out = BatchPrediction::default();
        if rows.is_empty() {
            return Ok(out);
        }
        for (role, booster) in &self.boosters {
            let raw = booster
                .predict_with_params(rows, N_FEATURES as i32, true, "num_threads=1")
                .map_err(|e| RouterError::Prediction(format!("{}: {e}", role.as_str())))?;
            let values: Vec<f64> = raw
                .into_iter()
                .map(|v| role.target_transform().apply(v))
                .collect();
            match role {
                ModelRole::LatencyP50 => out.latency_p50_ms = values,
                ModelRole::LatencyP95 => out.latency_p95_ms = values,
                ModelRole::Cost => out.cost_usd = values,
                ModelRole::Failure => out.failure_prob = values,
            }
        }
        Ok(out)
    }
}
