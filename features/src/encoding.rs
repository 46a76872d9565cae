//! The ONE feature encoding, used by training and serving alike.
//!
//! Both paths first build a [`FeatureInput`]: the router from in-memory structs
//! ([`FeatureInput::from_parts`]), the trainer from telemetry rows read out of Arrow batches
//! ([`FeatureInput::from_record`]). One function, [`FeatureSpace::encode`], then turns it into a
//! numeric row. Categorical columns are encoded as level indices whose vocabulary is recorded
//! with the model ([`FeatureSpace`]); a level the model never saw is encoded as missing (NaN),
//! which LightGBM routes down each split's default branch, and is counted so callers can
//! report it.
//!
//! [`CandidateEncoder`] is the same encoding for the router's hot path: it looks up each
//! catalog candidate's levels once instead of on every request, and otherwise goes through
//! the very code of [`FeatureSpace::encode`] (a property test proves the rows identical).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::candidate::Candidate;
use crate::error::FeaturesError;
use crate::history::HistoryFeatures;
use crate::model::ModelRole;
use crate::request::{DecisionContext, RunRequest};
use crate::telemetry::{TelemetryRecord, from_micros};

/// Version of the feature definitions below; bump it whenever [`FEATURES`] or
/// [`FeatureInput`] semantics change.
///
/// Version 2 added the workload label and the history features ([`crate::history`]).
pub const FEATURE_VERSION: u32 = 2;

/// Whether a feature is a number or a level from a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

/// Name and kind of every column of an encoded row, in order.
pub const FEATURES: [(&str, FeatureKind); 37] = [
    ("language", FeatureKind::Categorical),
    ("provider", FeatureKind::Categorical),
    ("provider_kind", FeatureKind::Categorical),
    ("backend", FeatureKind::Categorical),
    ("region", FeatureKind::Categorical),
    ("area", FeatureKind::Categorical),
    ("isolation_level", FeatureKind::Numeric),
    ("vcpu", FeatureKind::Numeric),
    ("memory_gib", FeatureKind::Numeric),
    ("gpu_count", FeatureKind::Numeric),
    ("timeout_s", FeatureKind::Numeric),
    ("payload_bytes", FeatureKind::Numeric),
    ("file_count", FeatureKind::Numeric),
    ("allow_network", FeatureKind::Numeric),
    ("rtt_ms", FeatureKind::Numeric),
    ("price_vcpu_s", FeatureKind::Numeric),
    ("price_gib_s", FeatureKind::Numeric),
    ("price_start", FeatureKind::Numeric),
    ("price_gpu_s", FeatureKind::Numeric),
    ("burn_rate_usd_s", FeatureKind::Numeric),
    ("hour_of_day", FeatureKind::Numeric),
    ("day_of_week", FeatureKind::Numeric),
    // The request's workload label ("" without one) and the history of that workload on this
    // candidate (crate::history); every level below is ln(total_latency_ms), and NaN without
    // history.
    ("workload", FeatureKind::Categorical),
    ("hist_count", FeatureKind::Numeric),
    ("hist_days_since_last", FeatureKind::Numeric),
    ("hist_anchor_ln_ms", FeatureKind::Numeric),
    ("hist_median_vs_anchor", FeatureKind::Numeric),
    ("hist_ewma_slow_vs_anchor", FeatureKind::Numeric),
    ("hist_recent_median_vs_anchor", FeatureKind::Numeric),
    ("hist_last_vs_anchor", FeatureKind::Numeric),
    ("hist_ln_std", FeatureKind::Numeric),
    ("hist_rel_ewma_fast", FeatureKind::Numeric),
    ("hist_rel_ewma_slow", FeatureKind::Numeric),
    ("hist_rel_median", FeatureKind::Numeric),
    ("hist_rel_recent_median", FeatureKind::Numeric),
    ("hist_rel_last", FeatureKind::Numeric),
    ("hist_rank_median", FeatureKind::Numeric),
];

/// Column of the history anchor (the candidate's fast EWMA of past ln latency).
pub const ANCHOR_FEATURE: usize = 25;
/// Column of the candidate's burn rate in USD per second.
const BURN_RATE_FEATURE: usize = 19;
/// Number of categorical columns.
const N_CATEGORICAL: usize = 7;
/// Categorical slot (index into [`categorical_indices`]) of the workload label.
const WORKLOAD_SLOT: usize = 6;

/// The base margin of a model's prediction for an encoded row: latency and cost models
/// predict the deviation of `ln(latency)` / `ln(cost)` from it, and serving adds it back
/// before the output transform. It is the history anchor (`hist_anchor_ln_ms`) for latency,
/// the anchor plus `ln` of the burn rate per millisecond for cost, and 0 without history or
/// for the failure model — so a request without a workload history is predicted exactly as
/// before history features existed.
pub fn base_margin(role: ModelRole, row: &[f64]) -> f64 {
    let anchor = row[ANCHOR_FEATURE];
    if !anchor.is_finite() {
        return 0.0;
    }
    match role {
        ModelRole::LatencyP50 | ModelRole::LatencyP95 => anchor,
        ModelRole::Cost => {
            let burn = row[BURN_RATE_FEATURE];
            if burn > 0.0 && burn.is_finite() {
                anchor + (burn / 1000.0).ln()
            } else {
                0.0
            }
        }
        ModelRole::Failure => 0.0,
    }
}

/// Number of columns of an encoded row.
pub const N_FEATURES: usize = FEATURES.len();

/// Column of each categorical slot, in slot order.
const CATEGORICAL_COLUMNS: [usize; N_CATEGORICAL] = [0, 1, 2, 3, 4, 5, 22];

/// Indices of the categorical columns, in order.
pub fn categorical_indices() -> Vec<usize> {
    FEATURES
        .iter()
        .enumerate()
        .filter(|(_, (_, k))| *k == FeatureKind::Categorical)
        .map(|(i, _)| i)
        .collect()
}

/// The raw, un-encoded inputs of one (request, candidate, context) triple.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureInput<'a> {
    pub language: &'a str,
    pub provider: &'a str,
    pub provider_kind: &'a str,
    pub backend: &'a str,
    pub region: &'a str,
    pub area: &'a str,
    pub isolation_level: u8,
    pub vcpu: f64,
    pub memory_mib: f64,
    pub gpu_count: u32,
    pub timeout_s: f64,
    pub payload_bytes: u64,
    pub file_count: u32,
    pub allow_network: bool,
    pub rtt_ms: f64,
    pub price_vcpu_s: f64,
    pub price_gib_s: f64,
    pub price_start: f64,
    pub price_gpu_s: f64,
    pub at: OffsetDateTime,
    /// The request's workload label, "" without one.
    pub workload: &'a str,
    /// Past outcomes of the workload on this candidate.
    pub history: HistoryFeatures,
}

impl<'a> FeatureInput<'a> {
    /// Serving path: from the request, one candidate and the decision context, without
    /// history.
    pub fn from_parts(
        request: &'a RunRequest,
        candidate: &'a Candidate,
        ctx: &DecisionContext,
    ) -> Self {
        Self::from_parts_with_history(request, candidate, ctx, HistoryFeatures::default())
    }

    /// Serving path with the history of the request's workload on `candidate`.
    pub fn from_parts_with_history(
        request: &'a RunRequest,
        candidate: &'a Candidate,
        ctx: &DecisionContext,
        history: HistoryFeatures,
    ) -> Self {
        let [provider, provider_kind, backend, region, area] = candidate_levels(candidate);
        Self {
            language: request.language.as_str(),
            provider,
            provider_kind,
            backend,
            region,
            area,
            isolation_level: candidate.isolation_level().strength(),
            vcpu: request.resources.cpu,
            memory_mib: request.resources.memory_mib as f64,
            gpu_count: request.resources.gpu_count(),
            timeout_s: request.timeout_s,
            payload_bytes: request.payload_bytes(),
            file_count: request.files.len() as u32,
            allow_network: request.allow_network,
            rtt_ms: candidate.rtt_ms,
            price_vcpu_s: candidate.prices.vcpu_second,
            price_gib_s: candidate.prices.gib_second,
            price_start: candidate.prices.start,
            price_gpu_s: candidate.gpu_price_for(&request.resources).unwrap_or(0.0),
            at: ctx.now,
            workload: request.workload.as_deref().unwrap_or(""),
            history,
        }
    }

    /// Training path: from a telemetry row (as read from an Arrow batch).
    pub fn from_record(r: &'a TelemetryRecord) -> Self {
        Self {
            language: &r.language,
            provider: &r.provider,
            provider_kind: &r.provider_kind,
            backend: &r.backend,
            region: &r.region,
            area: &r.area,
            isolation_level: r.isolation_level,
            vcpu: r.vcpu,
            memory_mib: r.memory_mib,
            gpu_count: r.gpu_count,
            timeout_s: r.timeout_s,
            payload_bytes: r.payload_bytes,
            file_count: r.file_count,
            allow_network: r.allow_network,
            rtt_ms: r.rtt_ms,
            price_vcpu_s: r.price_vcpu_s,
            price_gib_s: r.price_gib_s,
            price_start: r.price_start,
            price_gpu_s: r.price_gpu_s,
            at: from_micros(r.ts_request_us),
            workload: r.workload.as_deref().unwrap_or(""),
            history: r.history,
        }
    }

    /// The value of categorical slot `slot` (an index into [`categorical_indices`]).
    fn categorical(&self, slot: usize) -> &'a str {
        match slot {
            0 => self.language,
            1 => self.provider,
            2 => self.provider_kind,
            3 => self.backend,
            4 => self.region,
            5 => self.area,
            _ => self.workload,
        }
    }
}

/// A candidate's values of the categorical features 1..=5 (provider, provider kind, backend,
/// region, area), as [`FeatureInput::from_parts`] takes them.
fn candidate_levels(candidate: &Candidate) -> [&str; 5] {
    [
        &candidate.provider,
        candidate.provider_kind.as_str(),
        candidate.backend.as_str(),
        &candidate.region,
        &candidate.area,
    ]
}

/// The vocabulary of every categorical feature, recorded with a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpace {
    pub feature_version: u32,
    /// `(name, kind)` of every column, as at training time.
    pub features: Vec<(String, FeatureKind)>,
    /// For each categorical feature (in column order): its levels; a level's index is its code.
    pub levels: Vec<Vec<String>>,
}

/// Result of encoding one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Categorical values the model has never seen (encoded as missing).
    pub unseen_levels: u32,
}

impl FeatureSpace {
    /// Builds the vocabulary from training inputs (levels sorted, so the space is deterministic).
    pub fn fit<'a>(inputs: impl IntoIterator<Item = FeatureInput<'a>>) -> Self {
        let mut sets = vec![BTreeSet::<String>::new(); N_CATEGORICAL];
        for input in inputs {
            for (slot, set) in sets.iter_mut().enumerate() {
                let value = input.categorical(slot);
                if !set.contains(value) {
                    set.insert(value.to_owned());
                }
            }
        }
        Self {
            feature_version: FEATURE_VERSION,
            features: FEATURES
                .iter()
                .map(|(n, k)| ((*n).to_owned(), *k))
                .collect(),
            levels: sets.into_iter().map(|s| s.into_iter().collect()).collect(),
        }
    }

    /// Checks that a stored space matches this build's feature definitions.
    pub fn check_compatible(&self) -> Result<(), FeaturesError> {
        let ours: Vec<(String, FeatureKind)> = FEATURES
            .iter()
            .map(|(n, k)| ((*n).to_owned(), *k))
            .collect();
        if self.feature_version != FEATURE_VERSION || self.features != ours {
            return Err(FeaturesError::FeatureSchema(format!(
                "model uses feature version {} with {} columns, this build encodes version {FEATURE_VERSION} with {N_FEATURES}; retrain the model",
                self.feature_version,
                self.features.len()
            )));
        }
        if self.levels.len() != categorical_indices().len() {
            return Err(FeaturesError::FeatureSchema(
                "wrong number of categorical vocabularies".to_owned(),
            ));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON of this space: names, kinds and every level.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    /// The code of `value` in the vocabulary of categorical slot `slot`, `None` if unseen.
    fn level_code(&self, slot: usize, value: &str) -> Option<u32> {
        self.levels[slot]
            .binary_search_by(|level| level.as_str().cmp(value))
            .ok()
            .map(|code| code as u32)
    }

    /// Encodes one input into `row` (length [`N_FEATURES`]).
    pub fn encode(&self, input: &FeatureInput<'_>, row: &mut [f64]) -> EncodeStats {
        let mut codes = [None; N_CATEGORICAL];
        for (slot, code) in codes.iter_mut().enumerate() {
            *code = self.level_code(slot, input.categorical(slot));
        }
        self.encode_with_codes(input, &codes, row)
    }

    /// [`FeatureSpace::encode`] with the level codes of the categorical features already
    /// looked up (`codes[slot]`, `None` for an unseen level).
    fn encode_with_codes(
        &self,
        input: &FeatureInput<'_>,
        codes: &[Option<u32>; N_CATEGORICAL],
        row: &mut [f64],
    ) -> EncodeStats {
        debug_assert_eq!(row.len(), N_FEATURES);
        let mut stats = EncodeStats::default();
        for (&feature, code) in CATEGORICAL_COLUMNS.iter().zip(codes) {
            row[feature] = match code {
                Some(code) => f64::from(*code),
                None => {
                    stats.unseen_levels += 1;
                    f64::NAN
                }
            };
        }
        let memory_gib = input.memory_mib / 1024.0;
        row[6] = f64::from(input.isolation_level);
        row[7] = input.vcpu;
        row[8] = memory_gib;
        row[9] = f64::from(input.gpu_count);
        row[10] = input.timeout_s;
        row[11] = input.payload_bytes as f64;
        row[12] = f64::from(input.file_count);
        row[13] = if input.allow_network { 1.0 } else { 0.0 };
        row[14] = input.rtt_ms;
        row[15] = input.price_vcpu_s;
        row[16] = input.price_gib_s;
        row[17] = input.price_start;
        row[18] = input.price_gpu_s;
        row[19] = input.vcpu * input.price_vcpu_s
            + memory_gib * input.price_gib_s
            + f64::from(input.gpu_count) * input.price_gpu_s;
        row[20] = f64::from(input.at.hour());
        row[21] = f64::from(input.at.weekday().number_days_from_monday());
        let h = &input.history;
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let anchor = nan(h.ln_ewma_fast);
        let vs_anchor = |v: Option<f64>| nan(v) - anchor;
        row[23] = f64::from(h.count);
        row[24] = nan(h.days_since_last);
        row[25] = anchor;
        row[26] = vs_anchor(h.ln_median);
        row[27] = vs_anchor(h.ln_ewma_slow);
        row[28] = vs_anchor(h.ln_recent_median);
        row[29] = vs_anchor(h.ln_last);
        row[30] = nan(h.ln_std);
        row[31] = nan(h.rel_ewma_fast);
        row[32] = nan(h.rel_ewma_slow);
        row[33] = nan(h.rel_median);
        row[34] = nan(h.rel_recent_median);
        row[35] = nan(h.rel_last);
        row[36] = nan(h.rank_median);
        stats
    }

    /// Encodes many inputs into a row-major matrix, reusing `out`'s allocation.
    pub fn encode_all<'a>(
        &self,
        inputs: impl IntoIterator<Item = FeatureInput<'a>>,
        out: &mut Vec<f64>,
    ) -> EncodeStats {
        out.clear();
        let mut total = EncodeStats::default();
        for input in inputs {
            let start = out.len();
            out.resize(start + N_FEATURES, 0.0);
            total.unseen_levels += self.encode(&input, &mut out[start..]).unseen_levels;
        }
        total
    }
}

/// Encodes the candidates of a fixed list for one request at a time. Each candidate's levels
/// are looked up when the encoder is built; per request, only the request's own level is.
/// The rows are exactly those of [`FeatureSpace::encode`] on [`FeatureInput::from_parts`].
#[derive(Debug, Clone)]
pub struct CandidateEncoder {
    space: FeatureSpace,
    /// Per candidate: the codes of categorical features 1..=5 (`None`: unseen).
    codes: Vec<[Option<u32>; 5]>,
}

impl CandidateEncoder {
    /// Looks up the levels of `candidates` (kept in this order) in `space`.
    pub fn new<'c>(
        space: &FeatureSpace,
        candidates: impl IntoIterator<Item = &'c Candidate>,
    ) -> Self {
        let codes = candidates
            .into_iter()
            .map(|c| {
                let levels = candidate_levels(c);
                std::array::from_fn(|i| space.level_code(i + 1, levels[i]))
            })
            .collect();
        Self {
            space: space.clone(),
            codes,
        }
    }

    pub fn space(&self) -> &FeatureSpace {
        &self.space
    }

    /// Encodes `request` with each of `candidates` — `(index given to [`CandidateEncoder::new`],
    /// candidate)` pairs — into a row-major matrix, reusing `out`'s allocation.
    pub fn encode_all<'c>(
        &self,
        request: &RunRequest,
        ctx: &DecisionContext,
        candidates: impl IntoIterator<Item = (usize, &'c Candidate)>,
        out: &mut Vec<f64>,
    ) -> EncodeStats {
        self.encode_all_with_history(
            request,
            ctx,
            candidates
                .into_iter()
                .map(|(i, c)| (i, c, HistoryFeatures::default())),
            out,
        )
    }

    /// [`CandidateEncoder::encode_all`] with the history of the request's workload on each
    /// candidate: `(index, candidate, history)` triples.
    pub fn encode_all_with_history<'c>(
        &self,
        request: &RunRequest,
        ctx: &DecisionContext,
        candidates: impl IntoIterator<Item = (usize, &'c Candidate, HistoryFeatures)>,
        out: &mut Vec<f64>,
    ) -> EncodeStats {
        out.clear();
        let language = self.space.level_code(0, request.language.as_str());
        let workload = self
            .space
            .level_code(WORKLOAD_SLOT, request.workload.as_deref().unwrap_or(""));
        let mut total = EncodeStats::default();
        for (i, candidate, history) in candidates {
            let input = FeatureInput::from_parts_with_history(request, candidate, ctx, history);
            let [a, b, c, d, e] = self.codes[i];
            let start = out.len();
            out.resize(start + N_FEATURES, 0.0);
            total.unseen_levels += self
                .space
                .encode_with_codes(
                    &input,
                    &[language, a, b, c, d, e, workload],
                    &mut out[start..],
                )
                .unseen_levels;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_slots_match_the_feature_table() {
        assert_eq!(categorical_indices(), CATEGORICAL_COLUMNS.to_vec());
        assert_eq!(FEATURES[ANCHOR_FEATURE].0, "hist_anchor_ln_ms");
        assert_eq!(FEATURES[BURN_RATE_FEATURE].0, "burn_rate_usd_s");
    }
}
