//! The router: turns a request into a ranked, explained decision.
//!
//! [`Router::decide`] enumerates every candidate of the catalog, removes those that break a hard
//! constraint (or are not available on this host), predicts latency (p50, p95), cost and failure
//! risk of all remaining candidates in one batch with the model set ([`ModelSet`]), removes those
//! whose predictions break `max_latency_ms` / `max_cost_usd`, and ranks the rest under the
//! request's strategy. Every enumerated candidate appears in the [`Decision`] with its
//! predictions or the reason it was dropped.
//!
//! [`Router::with_exploration`] makes it explore ([`Exploration`]: ε-greedy or Thompson
//! sampling among the candidates that pass every constraint and policy) and record the
//! probability of each choice in the [`Decision`], so its telemetry can train and evaluate
//! models without the bias of only seeing past winners.
//!
//! Models are evaluated natively ([`NativeModel`]: LightGBM's text format, evaluated in pure
//! Rust with LightGBM's exact semantics), so serving does not link LightGBM. A worker keeps a
//! [`Scratch`] and calls [`Router::decide_with`] so scoring reuses its buffers.

mod decide;
mod explore;
mod models;
mod native;

pub use decide::{
    BindingConstraint, CandidateVerdict, Decision, LostBy, PolicyAdjustment, PolicyReport,
    Prediction, Router, Scratch, Verdict, rank_predictions,
};
pub use explore::{DEFAULT_THOMPSON_DRAWS, Exploration};
#[cfg(feature = "lightgbm-reference")]
pub use models::Evaluator;
pub use models::ModelSet;
pub use native::{EvalScratch, NativeModel, OutputTransform};

use std::path::PathBuf;

/// Everything that can go wrong while routing.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The model directory is missing, incomplete or incompatible.
    #[error("model directory {}: {message}", path.display())]
    ModelDir { path: PathBuf, message: String },
    /// Every candidate was removed; `summary` names the binding constraints.
    #[error("no candidate meets the request: {summary}")]
    NoFeasibleCandidate {
        binding: Vec<BindingConstraint>,
        summary: String,
    },
    /// An exploration setting is invalid (`epsilon:1.5`, `thompson:0`, an unknown kind).
    #[error("invalid exploration {0}")]
    InvalidExploration(String),
    /// Prediction failed (rows of the wrong shape); a bug, not a user error.
    #[error("prediction failed: {0}")]
    Prediction(String),
    /// A LightGBM text model is malformed or uses something the native evaluator does not
    /// support (e.g. a multiclass or ranking objective).
    #[error("invalid lightgbm model: {0}")]
    ModelText(String),
    #[error(transparent)]
    Features(#[from] sandstorm_features::FeaturesError),
}
