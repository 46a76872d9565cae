//! The layout of a model directory, shared by the trainer (which writes it) and the router
//! (which reads it) so neither depends on the other.
//!
//! A model directory holds one plain LightGBM text model per [`ModelRole`] (loadable by
//! Python's `lightgbm.Booster(model_file=...)`), `feature_schema.json` (the [`FeatureSpace`]
//! with its hash) and `metadata.json` ([`ModelMetadata`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::encoding::FeatureSpace;

/// File name of the metadata document.
pub const METADATA_FILE: &str = "metadata.json";
/// File name of the feature schema document.
pub const FEATURE_SCHEMA_FILE: &str = "feature_schema.json";

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// Median end-to-end latency (regression on ln milliseconds).
    LatencyP50,
    /// 95th percentile end-to-end latency (quantile regression on ln milliseconds).
    LatencyP95,
    /// Cost of the run (regression on ln USD).
    Cost,
    /// Probability that the run fails for infrastructure reasons (binary).
    Failure,
}

impl ModelRole {
    pub const ALL: [ModelRole; 4] = [
        ModelRole::LatencyP50,
        ModelRole::LatencyP95,
        ModelRole::Cost,
        ModelRole::Failure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::LatencyP50 => "latency_p50",
            ModelRole::LatencyP95 => "latency_p95",
            ModelRole::Cost => "cost",
            ModelRole::Failure => "failure",
        }
    }

    /// The LightGBM text model's file name inside a model directory.
    pub fn file_name(self) -> String {
        format!("{}.txt", self.as_str())
    }

    /// How a model output maps back to natural units.
    pub fn target_transform(self) -> TargetTransform {
        match self {
            ModelRole::Failure => TargetTransform::Identity,
            _ => TargetTransform::Exp,
        }
    }
}

/// Inverse of the transform applied to the label at training time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetTransform {
    /// The model predicts ln(y); y = exp(output).
    Exp,
    /// The model predicts y (e.g. a probability).
    Identity,
}

impl TargetTransform {
    pub fn apply(self, raw: f64) -> f64 {
        match self {
            TargetTransform::Exp => raw.exp(),
            TargetTransform::Identity => raw,
        }
    }
}

/// A half-open time window, RFC 3339 timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    pub from: String,
    pub to: String,
    pub rows: usize,
}

/// One model of the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub file: String,
    /// Label, e.g. `ln(total_latency_ms)`.
    pub target: String,
    pub target_transform: TargetTransform,
    /// Training parameters, verbatim LightGBM names and values.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub num_trees: usize,
    /// Holdout metrics, by name (e.g. `mae_ms`, `auc`).
    pub metrics: BTreeMap<String, f64>,
}

/// `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub version: String,
    pub created_at: String,
    pub feature_version: u32,
    pub feature_schema_hash: String,
    pub training_window: TimeWindow,
    pub validation_window: TimeWindow,
    pub holdout_window: TimeWindow,
    pub models: BTreeMap<ModelRole, ModelEntry>,
}

/// `feature_schema.json`: the space plus its hash, so tampering or drift is detectable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFeatureSchema {
    pub hash: String,
    pub space: FeatureSpace,
}
