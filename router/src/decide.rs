//! Candidate enumeration, batched prediction, strategy objective and ranking.

use std::collections::BTreeMap;
use std::sync::Arc;

use sandstorm_features::encoding::{CandidateEncoder, N_FEATURES};
use sandstorm_features::history::HistoryFeatures;
use sandstorm_features::telemetry::CandidateScore;
use sandstorm_features::{
    Candidate, Catalog, DecisionContext, RunRequest, Strategy, static_violation,
};
use sandstorm_policies_wasm::{
    FailureMode, PolicyCandidate, PolicyFailure, PolicyOutcome, PolicyStore, PolicyWorker,
};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::RouterError;
use crate::explore::{self, Exploration};
use crate::models::{ModelSet, Predictions};

/// Failure probabilities are capped here so expected values stay finite.
pub(crate) const MAX_FAILURE_PROB: f64 = 0.95;

/// What the models predict for one candidate, plus the derived expectations the strategy uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub cost_usd: f64,
    pub failure_prob: f64,
    /// Cost including the expected retries after failures: cost / (1 - failure_prob).
    pub expected_cost_usd: f64,
    /// Median latency including expected retries: p50 / (1 - failure_prob).
    pub expected_latency_ms: f64,
}

impl Prediction {
    /// The prediction of one candidate from the four models' outputs in natural units, as
    /// every decision derives it: p95 is never below p50 (independent quantile models can
    /// cross), the failure probability is capped at 0.95, and the expectations include the
    /// expected retries.
    pub fn from_outputs(
        latency_p50_ms: f64,
        latency_p95_ms: f64,
        cost_usd: f64,
        failure: f64,
    ) -> Self {
        let p95 = latency_p95_ms.max(latency_p50_ms);
        let fail = failure.clamp(0.0, MAX_FAILURE_PROB);
        Self {
            latency_p50_ms,
            latency_p95_ms: p95,
            cost_usd,
            failure_prob: fail,
            expected_cost_usd: cost_usd / (1.0 - fail),
            expected_latency_ms: latency_p50_ms / (1.0 - fail),
        }
    }
}

/// Why a candidate won, lost or was dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    Winner,
    /// Kept as a fallback, `behind_by_pct` worse than the best score under the strategy (the
    /// winner's, unless the decision explored: then the greedy winner is the first fallback,
    /// 0% behind).
    Fallback {
        rank: usize,
        behind_by_pct: f64,
    },
    /// Feasible but scored worse than the winner and the fallbacks.
    Outscored {
        rank: usize,
        behind_by_pct: f64,
        reason: LostBy,
    },
    /// Removed before ranking by `constraint` (a request field, `availability`, ...).
    Filtered {
        constraint: String,
        reason: String,
    },
}

/// Why an outscored candidate lost, in words (`Display`; serialized as that text). The
/// numbers are kept and the text is written only when it is read: most decisions are used for
/// their winner, and formatting hundreds of losers' reasons would be a large share of a
/// decision's time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LostBy {
    strategy: Strategy,
    expected_cost_usd: f64,
    expected_latency_ms: f64,
    /// The same of the candidate it lost to.
    reference_cost_usd: f64,
    reference_latency_ms: f64,
    behind_by_pct: f64,
    /// Whether the candidate it lost to is the greedy winner of a decision that explored.
    explored: bool,
}

impl LostBy {
    fn new(
        strategy: Strategy,
        p: &Prediction,
        reference: &Prediction,
        pct: f64,
        explored: bool,
    ) -> Self {
        Self {
            strategy,
            expected_cost_usd: p.expected_cost_usd,
            expected_latency_ms: p.expected_latency_ms,
            reference_cost_usd: reference.expected_cost_usd,
            reference_latency_ms: reference.expected_latency_ms,
            behind_by_pct: pct,
            explored,
        }
    }
}

impl std::fmt::Display for LostBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = if self.explored {
            "greedy winner's"
        } else {
            "winner's"
        };
        let pct = self.behind_by_pct;
        match self.strategy {
            Strategy::OptimizeCost => write!(
                f,
                "expected cost ${:.8} is {pct:.0}% above the {whose} ${:.8}",
                self.expected_cost_usd, self.reference_cost_usd
            ),
            Strategy::OptimizeLatency => write!(
                f,
                "expected latency {:.0} ms is {pct:.0}% above the {whose} {:.0} ms",
                self.expected_latency_ms, self.reference_latency_ms
            ),
            Strategy::Balanced { .. } => {
                write!(f, "balanced score is {pct:.0}% worse than the {whose}")
            }
        }
    }
}

impl Serialize for LostBy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One enumerated candidate in a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateVerdict {
    /// Shared with the router (serializes as the candidate itself).
    pub candidate: Arc<Candidate>,
    pub prediction: Option<Prediction>,
    /// Objective value under the strategy (after policy factors); lower is better.
    pub score: Option<f64>,
    pub verdict: Verdict,
    /// Factors policies applied to this candidate's objective, with their reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_adjustments: Vec<PolicyAdjustment>,
}

/// A policy's factor on one candidate's objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyAdjustment {
    pub policy: String,
    pub factor: f64,
    pub reason: String,
}

/// What one policy did in a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    /// The version that ran.
    pub version: String,
    /// Candidates it rejected (all of them when it failed closed).
    pub rejected: usize,
    /// Candidates whose objective it changed.
    pub adjusted: usize,
    /// Why it produced no verdicts, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<PolicyFailure>,
    /// `fail_closed` or `fail_open`: what its failure did.
    pub failure_mode: &'static str,
    /// Whether it runs its last good version because the newest kept failing.
    pub fell_back: bool,
    pub elapsed_us: f64,
}

/// How many candidates one constraint removed, for "no feasible candidate" errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BindingConstraint {
    pub constraint: String,
    pub removed: usize,
    /// e.g. the best predicted p95 among candidates removed by `max_latency_ms`.
    pub detail: Option<String>,
}

/// A ranked, explained decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub decision_id: String,
    pub decided_at: String,
    pub strategy: Strategy,
    pub model_version: String,
    /// Id of the chosen candidate.
    pub winner: String,
    /// Ids of the next best candidates, in order.
    pub fallbacks: Vec<String>,
    /// One paragraph a person can read.
    pub explanation: String,
    /// Categorical values the models never saw (encoded as missing).
    pub unseen_levels: u32,
    pub n_candidates: usize,
    pub n_feasible: usize,
    /// Every policy that ran, in order, with what it did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyReport>,
    /// Every enumerated candidate: ranked feasible ones first, then the filtered ones.
    pub candidates: Vec<CandidateVerdict>,
    /// Probability with which the winner was chosen among the feasible candidates: 1 without
    /// exploration; with exploration, exact for ε-greedy and a Monte-Carlo estimate for
    /// Thompson sampling (docs/exploration.md). Telemetry logs it as `selection_probability`.
    pub selection_probability: f64,
    /// Whether exploration chose a candidate other than the greedy winner (which is then the
    /// first fallback).
    pub explored: bool,
}

impl Decision {
    /// The winning candidate's entry.
    pub fn winner(&self) -> &CandidateVerdict {
        // Invariant: a Decision is only built with a winner at index 0.
        &self.candidates[0]
    }

    /// The entry of candidate `id`.
    pub fn candidate(&self, id: &str) -> Option<&CandidateVerdict> {
        self.candidates.iter().find(|c| c.candidate.id == id)
    }

    /// Every candidate's scores, in the form telemetry stores them.
    pub fn telemetry_scores(&self) -> Vec<CandidateScore> {
        self.candidates
            .iter()
            .map(|c| CandidateScore {
                candidate_id: c.candidate.id.clone(),
                feasible: !matches!(c.verdict, Verdict::Filtered { .. }),
                pred_latency_p50_ms: c.prediction.as_ref().map(|p| p.latency_p50_ms),
                pred_latency_p95_ms: c.prediction.as_ref().map(|p| p.latency_p95_ms),
                pred_cost_usd: c.prediction.as_ref().map(|p| p.cost_usd),
                pred_failure_prob: c.prediction.as_ref().map(|p| p.failure_prob),
                score: c.score,
            })
            .collect()
    }
}

/// Reusable per-worker buffers for [`Router::decide_with`]: the indices of the candidates
/// that pass the static constraints, their encoded feature rows and the predictions of every
/// model. Not shared between threads; each worker owns one.
#[derive(Debug, Default)]
pub struct Scratch {
    live: Vec<usize>,
    rows: Vec<f64>,
    predictions: Predictions,
    /// This worker's warm policy instances, created on first use.
    policies: Option<PolicyWorker>,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers already sized for `candidates` candidates.
    pub fn with_capacity(candidates: usize) -> Self {
        let mut s = Self {
            live: Vec::with_capacity(candidates),
            rows: Vec::with_capacity(candidates * N_FEATURES),
            predictions: Predictions::default(),
            policies: None,
        };
        s.predictions.reserve(candidates);
        s
    }
}

/// Routes requests over a catalog with a model set.
#[derive(Debug)]
pub struct Router {
    candidates: Vec<Arc<Candidate>>,
    /// Each candidate's position in id order, the last tie-breaker of the ranking.
    id_rank: Vec<u32>,
    /// The feature encoding with every candidate's levels looked up once.
    encoder: CandidateEncoder,
    models: ModelSet,
    max_fallbacks: usize,
    policies: Option<PolicyStore>,
    exploration: Exploration,
}

impl Router {
    pub fn new(catalog: &Catalog, models: ModelSet) -> Self {
        let candidates: Vec<Arc<Candidate>> =
            catalog.candidates().into_iter().map(Arc::new).collect();
        let id_rank = id_ranks(candidates.iter().map(|c| c.id.as_str()));
        let encoder = CandidateEncoder::new(models.space(), candidates.iter().map(|c| &**c));
        Self {
            candidates,
            id_rank,
            encoder,
            models,
            max_fallbacks: 3,
            policies: None,
            exploration: Exploration::Off,
        }
    }

    /// Explores with `exploration` (validated) among the candidates that pass every
    /// constraint and every policy; [`Exploration::Off`] (the default) decides greedily.
    pub fn with_exploration(mut self, exploration: Exploration) -> Result<Self, RouterError> {
        exploration.validate()?;
        self.exploration = exploration;
        Ok(self)
    }

    pub fn exploration(&self) -> Exploration {
        self.exploration
    }

    /// Runs `store`'s policies on every decision, after prediction: each sees the request and
    /// all candidates still feasible, with their predictions, and may reject candidates or
    /// scale their objective. The store may change (hot swap) while the router serves.
    pub fn with_policies(mut self, store: PolicyStore) -> Self {
        self.policies = Some(store);
        self
    }

    pub fn policies(&self) -> Option<&PolicyStore> {
        self.policies.as_ref()
    }

    pub fn models(&self) -> &ModelSet {
        &self.models
    }

    pub fn candidates(&self) -> &[Arc<Candidate>] {
        &self.candidates
    }

    /// Decides where `request` runs. `unavailable` names why a candidate cannot run right now
    /// (e.g. a local backend this host lacks), or `None` when it can.
    ///
    /// Allocates fresh scoring buffers; a worker deciding many requests should keep a
    /// [`Scratch`] and call [`Router::decide_with`].
    pub fn decide(
        &self,
        request: &RunRequest,
        ctx: &DecisionContext,
        unavailable: &dyn Fn(&Candidate) -> Option<String>,
    ) -> Result<Decision, RouterError> {
        self.decide_with(&mut Scratch::new(), request, ctx, unavailable)
    }

    /// [`Router::decide`] with the caller's reusable buffers: the feature rows of all
    /// candidates and the predictions of all four models go into `scratch`, so once it has
    /// grown to the catalog's size, scoring allocates nothing.
    pub fn decide_with(
        &self,
        scratch: &mut Scratch,
        request: &RunRequest,
        ctx: &DecisionContext,
        unavailable: &dyn Fn(&Candidate) -> Option<String>,
    ) -> Result<Decision, RouterError> {
        self.decide_with_history(scratch, request, ctx, unavailable, &|_| {
            HistoryFeatures::default()
        })
    }

    /// [`Router::decide_with`] for a request whose workload has a history: `history` gives
    /// the history features of the workload on each candidate (relative features already
    /// related across the candidates, see `sandstorm_features::history::relate`).
    pub fn decide_with_history(
        &self,
        scratch: &mut Scratch,
        request: &RunRequest,
        ctx: &DecisionContext,
        unavailable: &dyn Fn(&Candidate) -> Option<String>,
        history: &dyn Fn(&Candidate) -> HistoryFeatures,
    ) -> Result<Decision, RouterError> {
        request.validate()?;
        let mut filtered: Vec<CandidateVerdict> = Vec::new();
        let live = &mut scratch.live;
        live.clear();
        for (i, c) in self.candidates.iter().enumerate() {
            let drop = static_violation(request, c)
                .map(|v| (v.constraint().to_owned(), v.to_string()))
                .or_else(|| unavailable(c).map(|why| ("availability".to_owned(), why)));
            match drop {
                Some((constraint, reason)) => filtered.push(CandidateVerdict {
                    candidate: Arc::clone(c),
                    prediction: None,
                    score: None,
                    verdict: Verdict::Filtered { constraint, reason },
                    policy_adjustments: Vec::new(),
                }),
                None => live.push(i),
            }
        }

        let stats = self.encoder.encode_all_with_history(
            request,
            ctx,
            live.iter().map(|&i| {
                let c = &*self.candidates[i];
                (i, c, history(c))
            }),
            &mut scratch.rows,
        );
        self.models
            .predict_into(&scratch.rows, &mut scratch.predictions)?;
        let batch = &scratch.predictions;

        let c = &request.constraints;
        // (candidate index, prediction) of the candidates that stay in the ranking.
        let mut scored: Vec<(usize, Prediction)> = Vec::with_capacity(scratch.live.len());
        for (i, &k) in scratch.live.iter().enumerate() {
            let prediction = Prediction::from_outputs(
                batch.latency_p50_ms[i],
                batch.latency_p95_ms[i],
                batch.cost_usd[i],
                batch.failure_prob[i],
            );
            let (p95, cost) = (prediction.latency_p95_ms, prediction.cost_usd);
            let breach = match (c.max_latency_ms, c.max_cost_usd) {
                (Some(max), _) if p95 > max => Some((
                    "constraints.max_latency_ms",
                    format!("predicted p95 latency {p95:.0} ms > {max} ms"),
                )),
                (_, Some(max)) if cost > max => Some((
                    "constraints.max_cost_usd",
                    format!("predicted cost ${cost:.8} > ${max}"),
                )),
                _ => None,
            };
            match breach {
                Some((constraint, reason)) => filtered.push(CandidateVerdict {
                    candidate: Arc::clone(&self.candidates[k]),
                    prediction: Some(prediction),
                    score: None,
                    verdict: Verdict::Filtered {
                        constraint: constraint.to_owned(),
                        reason,
                    },
                    policy_adjustments: Vec::new(),
                }),
                None => scored.push((k, prediction)),
            }
        }

        let decision_id = uuid::Uuid::new_v4();
        // Policies see every candidate still feasible, with its predictions.
        let mut policy = AppliedPolicies::default();
        if let Some(store) = self.policies.as_ref().filter(|s| !s.is_empty())
            && !scored.is_empty()
        {
            let worker = match &mut scratch.policies {
                Some(w) if w.is_for(store) => w,
                slot => slot.insert(store.worker()),
            };
            let inputs: Vec<PolicyCandidate<'_>> = scored
                .iter()
                .map(|(k, p)| PolicyCandidate {
                    candidate: &self.candidates[*k],
                    cost_usd: p.cost_usd,
                    latency_p50_ms: p.latency_p50_ms,
                    latency_p95_ms: p.latency_p95_ms,
                    failure_prob: p.failure_prob,
                })
                .collect();
            let (hi, lo) = decision_id.as_u64_pair();
            let outcomes = worker.evaluate(request, ctx, hi ^ lo, &inputs);
            policy = AppliedPolicies::apply(&outcomes, scored.len());
            // Move the candidates policies rejected to the filtered ones.
            let mut kept = Vec::with_capacity(scored.len());
            let mut kept_factors = Vec::with_capacity(scored.len());
            let mut kept_adjustments = Vec::with_capacity(scored.len());
            for (i, (k, prediction)) in scored.drain(..).enumerate() {
                match policy.rejected[i].take() {
                    Some((constraint, reason)) => filtered.push(CandidateVerdict {
                        candidate: Arc::clone(&self.candidates[k]),
                        prediction: Some(prediction),
                        score: None,
                        verdict: Verdict::Filtered { constraint, reason },
                        policy_adjustments: std::mem::take(&mut policy.adjustments[i]),
                    }),
                    None => {
                        kept.push((k, prediction));
                        kept_factors.push(policy.factors[i]);
                        kept_adjustments.push(std::mem::take(&mut policy.adjustments[i]));
                    }
                }
            }
            scored = kept;
            policy.factors = kept_factors;
            policy.adjustments = kept_adjustments;
        }

        if scored.is_empty() {
            let binding = binding_constraints(&filtered);
            let summary = binding
                .iter()
                .map(|b| match &b.detail {
                    Some(d) => format!("{} removed {} ({d})", b.constraint, b.removed),
                    None => format!("{} removed {}", b.constraint, b.removed),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RouterError::NoFeasibleCandidate {
                summary: format!(
                    "all {} candidates were removed: {summary}",
                    self.candidates.len()
                ),
                binding,
            });
        }

        let strategy = request.strategy();
        let mut scores = Vec::with_capacity(scored.len());
        objective_into(
            strategy,
            &scored,
            |s| s.1.expected_cost_usd,
            |s| s.1.expected_latency_ms,
            &mut scores,
        );
        if !policy.factors.is_empty() {
            for (score, factor) in scores.iter_mut().zip(&policy.factors) {
                *score *= factor;
            }
        }
        let mut order: Vec<usize> = (0..scored.len()).collect();
        sort_ranked(
            &mut order,
            &scores,
            |i| scored[i].1.expected_latency_ms,
            |i| self.id_rank[scored[i].0],
        );
        let best = scores[order[0]];
        let greedy = order[0];
        // Exploration (when on) may put another feasible candidate first; the others keep
        // their ranked order behind it.
        let choice = if self.exploration.is_off() {
            None
        } else {
            let (hi, lo) = decision_id.as_u64_pair();
            let predictions: Vec<&Prediction> = scored.iter().map(|(_, p)| p).collect();
            let choice = explore::choose(
                self.exploration,
                ctx.seed.unwrap_or(hi ^ lo),
                strategy,
                &predictions,
                &policy.factors,
                &order,
            );
            if choice.rank > 0 {
                let chosen = order.remove(choice.rank);
                order.insert(0, chosen);
            }
            Some(choice)
        };
        let explored = choice.is_some_and(|c| c.rank > 0);
        let winner = &scored[order[0]];
        // Outscored candidates are compared with the best-scoring one.
        let reference = &scored[greedy];
        let mut candidates = Vec::with_capacity(self.candidates.len());
        for (rank, &i) in order.iter().enumerate() {
            let behind_by_pct = if best > 0.0 {
                100.0 * (scores[i] - best) / best
            } else {
                0.0
            };
            let verdict = match rank {
                0 => Verdict::Winner,
                r if r <= self.max_fallbacks => Verdict::Fallback {
                    rank: r,
                    behind_by_pct,
                },
                r => Verdict::Outscored {
                    rank: r,
                    behind_by_pct,
                    reason: LostBy::new(
                        strategy,
                        &scored[i].1,
                        &reference.1,
                        behind_by_pct,
                        explored,
                    ),
                },
            };
            candidates.push(CandidateVerdict {
                candidate: Arc::clone(&self.candidates[scored[i].0]),
                prediction: Some(scored[i].1.clone()),
                score: Some(scores[i]),
                verdict,
                policy_adjustments: policy
                    .adjustments
                    .get_mut(i)
                    .map(std::mem::take)
                    .unwrap_or_default(),
            });
        }
        let n_feasible = candidates.len();
        candidates.extend(filtered);

        let decision_id = decision_id.to_string();
        let selection_probability = choice.map_or(1.0, |c| c.probability);
        let mut explanation = if explored {
            explain_explored(
                strategy,
                &candidates,
                n_feasible,
                self.exploration,
                selection_probability,
            )
        } else {
            explain(strategy, &candidates, n_feasible)
        };
        if choice.is_some() && !explored {
            explanation.push_str(&format!(
                " Exploration ({}) kept the greedy choice (probability {selection_probability:.3}).",
                self.exploration.describe()
            ));
        }
        explain_policies(&policy.reports, &mut explanation);
        let winner_id = &self.candidates[winner.0].id;
        tracing::debug!(%decision_id, winner = %winner_id, n_feasible, explored, selection_probability, "decided");
        Ok(Decision {
            decision_id,
            decided_at: ctx.now.format(&Rfc3339).unwrap_or_default(),
            strategy,
            model_version: self.models.version().to_owned(),
            winner: winner_id.clone(),
            fallbacks: candidates[1..n_feasible.min(self.max_fallbacks + 1)]
                .iter()
                .map(|c| c.candidate.id.clone())
                .collect(),
            explanation,
            unseen_levels: stats.unseen_levels,
            n_candidates: self.candidates.len(),
            n_feasible,
            policies: policy.reports,
            candidates,
            selection_probability,
            explored,
        })
    }
}

/// The policies' verdicts folded into per-candidate rejections and factors.
#[derive(Debug, Default)]
struct AppliedPolicies {
    /// Per candidate: `(policy:NAME, reason)` of the first policy that rejected it.
    rejected: Vec<Option<(String, String)>>,
    /// Per candidate: product of all factors.
    factors: Vec<f64>,
    adjustments: Vec<Vec<PolicyAdjustment>>,
    reports: Vec<PolicyReport>,
}

impl AppliedPolicies {
    fn apply(outcomes: &[PolicyOutcome], n: usize) -> Self {
        let mut out = Self {
            rejected: vec![None; n],
            factors: vec![1.0; n],
            adjustments: vec![Vec::new(); n],
            reports: Vec::with_capacity(outcomes.len()),
        };
        for o in outcomes {
            let constraint = format!("policy:{}", o.name);
            let mut report = PolicyReport {
                name: o.name.clone(),
                version: o.version.clone(),
                rejected: 0,
                adjusted: 0,
                failure: None,
                failure_mode: o.failure_mode.as_str(),
                fell_back: o.fell_back,
                elapsed_us: o.elapsed.as_secs_f64() * 1e6,
            };
            match &o.result {
                Ok(v) => {
                    for i in 0..n.min(v.len()) {
                        if let Some(reason) = v.rejection(i) {
                            report.rejected += 1;
                            out.rejected[i]
                                .get_or_insert_with(|| (constraint.clone(), reason.to_owned()));
                        }
                        if let Some((factor, reason)) = v.adjustment(i) {
                            report.adjusted += 1;
                            out.factors[i] *= factor;
                            out.adjustments[i].push(PolicyAdjustment {
                                policy: o.name.clone(),
                                factor,
                                reason: reason.to_owned(),
                            });
                        }
                    }
                }
                Err(failure) => {
                    tracing::warn!(
                        policy = %o.name,
                        version = %o.version,
                        failure_mode = o.failure_mode.as_str(),
                        %failure,
                        "policy failed"
                    );
                    if o.failure_mode == FailureMode::FailClosed {
                        report.rejected = n;
                        let reason = format!("policy failed and fails closed ({failure})");
                        for r in &mut out.rejected {
                            r.get_or_insert_with(|| (constraint.clone(), reason.clone()));
                        }
                    }
                    report.failure = Some(failure.clone());
                }
            }
            out.reports.push(report);
        }
        out
    }
}

/// Appends what each policy did to a decision's explanation.
fn explain_policies(reports: &[PolicyReport], text: &mut String) {
    for r in reports {
        let what = match (&r.failure, r.rejected, r.adjusted) {
            (Some(f), _, _) if r.failure_mode == FailureMode::FailClosed.as_str() => {
                format!("failed ({f}) and, failing closed, rejected every candidate")
            }
            (Some(f), _, _) => format!("failed ({f}) and was ignored (fails open)"),
            (None, 0, 0) => "changed nothing".to_owned(),
            (None, rej, 0) => format!("rejected {rej}"),
            (None, 0, adj) => format!("re-weighted {adj}"),
            (None, rej, adj) => format!("rejected {rej} and re-weighted {adj}"),
        };
        let fallback = if r.fell_back {
            " (running its last good version)"
        } else {
            ""
        };
        text.push_str(&format!(
            " Policy {}@{}{fallback} {what}.",
            r.name, r.version
        ));
    }
}

/// Objective values (lower is better) of feasible candidates under `strategy`, into `out`:
/// `cost(item)` and `latency(item)` are each candidate's expected cost and latency.
pub(crate) fn objective_into<T>(
    strategy: Strategy,
    items: &[T],
    cost: impl Fn(&T) -> f64,
    latency: impl Fn(&T) -> f64,
    out: &mut Vec<f64>,
) {
    out.clear();
    match strategy {
        Strategy::OptimizeCost => out.extend(items.iter().map(cost)),
        Strategy::OptimizeLatency => out.extend(items.iter().map(latency)),
        Strategy::Balanced { cost_weight } => {
            // Each term is a ratio to the best feasible value, so 1.0 means "as good as the best".
            let min_cost = items
                .iter()
                .map(&cost)
                .fold(f64::INFINITY, f64::min)
                .max(f64::MIN_POSITIVE);
            let min_lat = items
                .iter()
                .map(&latency)
                .fold(f64::INFINITY, f64::min)
                .max(f64::MIN_POSITIVE);
            out.extend(items.iter().map(|t| {
                cost_weight * cost(t) / min_cost + (1.0 - cost_weight) * latency(t) / min_lat
            }));
        }
    }
}

/// Sorts candidate indices best first: lower score, then lower expected latency, then lower
/// `tie_rank` (the candidate's position in id order, as a stable sort by id would keep
/// equal ids), comparing floats by their total order.
fn sort_ranked(
    order: &mut [usize],
    scores: &[f64],
    expected_latency: impl Fn(usize) -> f64,
    tie_rank: impl Fn(usize) -> u32,
) {
    // Integer keys with the order of `f64::total_cmp` (the same bit trick): sorting plain
    // tuples is several times faster than comparing through the closures.
    let total = |x: f64| {
        let bits = x.to_bits() as i64;
        bits ^ (((bits >> 63) as u64) >> 1) as i64
    };
    let mut keys: Vec<(i64, i64, u32, usize)> = order
        .iter()
        .map(|&i| (total(scores[i]), total(expected_latency(i)), tie_rank(i), i))
        .collect();
    keys.sort_unstable();
    for (o, key) in order.iter_mut().zip(keys) {
        *o = key.3;
    }
}

/// Each id's position in id order; equal ids keep their order (a stable sort).
fn id_ranks<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let ids: Vec<&str> = ids.collect();
    let mut by_id: Vec<usize> = (0..ids.len()).collect();
    by_id.sort_by_key(|&i| ids[i]);
    let mut rank = vec![0u32; ids.len()];
    for (r, &i) in by_id.iter().enumerate() {
        rank[i] = r as u32;
    }
    rank
}

/// The greedy ranking a decision makes of candidates with these predictions under
/// `strategy`, without policies: indices into `candidates` (id, prediction), best first, with
/// the decision's objective and tie-breaks. Offline evaluation re-decides logged requests
/// with it.
pub fn rank_predictions(strategy: Strategy, candidates: &[(&str, Prediction)]) -> Vec<usize> {
    let mut scores = Vec::with_capacity(candidates.len());
    objective_into(
        strategy,
        candidates,
        |c| c.1.expected_cost_usd,
        |c| c.1.expected_latency_ms,
        &mut scores,
    );
    let id_rank = id_ranks(candidates.iter().map(|c| c.0));
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    sort_ranked(
        &mut order,
        &scores,
        |i| candidates[i].1.expected_latency_ms,
        |i| id_rank[i],
    );
    order
}

/// Why a candidate with prediction `p` lost to the best-scoring one, `w` (`whose`: the
/// winner's, or the greedy winner's when exploration chose another winner).
/// Distinct reasons quoted per non-numeric binding constraint (availability, policies).
const QUOTED_REASONS: usize = 3;

fn binding_constraints(filtered: &[CandidateVerdict]) -> Vec<BindingConstraint> {
    let mut by: BTreeMap<String, (usize, Option<f64>)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in filtered {
        if let Verdict::Filtered { constraint, reason } = &f.verdict {
            let entry = by.entry(constraint.clone()).or_insert((0, None));
            entry.0 += 1;
            if constraint == "availability" || constraint.starts_with("policy:") {
                let quoted = reasons.entry(constraint.clone()).or_default();
                if quoted.len() < QUOTED_REASONS && !quoted.contains(reason) {
                    quoted.push(reason.clone());
                }
            }
            let value = f
                .prediction
                .as_ref()
                .and_then(|p| match constraint.as_str() {
                    "constraints.max_latency_ms" => Some(p.latency_p95_ms),
                    "constraints.max_cost_usd" => Some(p.cost_usd),
                    _ => None,
                });
            if let Some(v) = value {
                entry.1 = Some(entry.1.map_or(v, |b: f64| b.min(v)));
            }
        }
    }
    let mut out: Vec<BindingConstraint> = by
        .into_iter()
        .map(|(constraint, (removed, best))| {
            let detail = best
                .map(|b| match constraint.as_str() {
                    "constraints.max_latency_ms" => format!("best predicted p95 is {b:.0} ms"),
                    _ => format!("cheapest predicted cost is ${b:.8}"),
                })
                .or_else(|| reasons.get(&constraint).map(|r| r.join("; ")));
            BindingConstraint {
                constraint,
                removed,
                detail,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.removed
            .cmp(&a.removed)
            .then(a.constraint.cmp(&b.constraint))
    });
    out
}

/// The explanation of a decision whose winner exploration chose instead of the greedy winner
/// (`ranked[1]`).
fn explain_explored(
    strategy: Strategy,
    ranked: &[CandidateVerdict],
    n_feasible: usize,
    exploration: Exploration,
    probability: f64,
) -> String {
    let (w, greedy) = (&ranked[0], &ranked[1]);
    let mut text = format!(
        "Explored: chose {} with probability {probability:.3} instead of greedy {} ({}).",
        w.candidate.id,
        greedy.candidate.id,
        exploration.describe()
    );
    if let Some(p) = &w.prediction {
        text.push_str(&format!(
            " {} predicts cost ${:.8}, p50 {:.0} ms, p95 {:.0} ms, failure risk {:.1}%.",
            w.candidate.id,
            p.cost_usd,
            p.latency_p50_ms,
            p.latency_p95_ms,
            100.0 * p.failure_prob
        ));
    }
    let goal = match strategy {
        Strategy::OptimizeCost => "lowest expected cost".to_owned(),
        Strategy::OptimizeLatency => "lowest expected latency".to_owned(),
        Strategy::Balanced { cost_weight } => {
            format!("best balance of cost (weight {cost_weight}) and latency")
        }
    };
    text.push_str(&format!(
        " {} has the {goal} of {n_feasible} feasible candidates (of {}) and is the first fallback.",
        greedy.candidate.id,
        ranked.len()
    ));
    text
}

fn explain(strategy: Strategy, ranked: &[CandidateVerdict], n_feasible: usize) -> String {
    let w = &ranked[0];
    let Some(p) = &w.prediction else {
        return String::new();
    };
    let goal = match strategy {
        Strategy::OptimizeCost => "lowest expected cost".to_owned(),
        Strategy::OptimizeLatency => "lowest expected latency".to_owned(),
        Strategy::Balanced { cost_weight } => {
            format!("best balance of cost (weight {cost_weight}) and latency")
        }
    };
    let mut text = format!(
        "{} has the {goal} of {n_feasible} feasible candidates (of {}): predicted cost ${:.8}, p50 {:.0} ms, p95 {:.0} ms, failure risk {:.1}%.",
        w.candidate.id,
        ranked.len(),
        p.cost_usd,
        p.latency_p50_ms,
        p.latency_p95_ms,
        100.0 * p.failure_prob
    );
    if let Some(second) = ranked.get(1).filter(|_| n_feasible > 1)
        && let Verdict::Fallback { behind_by_pct, .. } = second.verdict
    {
        text.push_str(&format!(
            " Runner-up {} scores {behind_by_pct:.0}% worse.",
            second.candidate.id
        ));
    }
    let binding = binding_constraints(&ranked[n_feasible..]);
    if !binding.is_empty() {
        let parts: Vec<String> = binding
            .iter()
            .map(|b| format!("{} by {}", b.removed, b.constraint))
            .collect();
        text.push_str(&format!(" Removed: {}.", parts.join(", ")));
    }
    text
}
