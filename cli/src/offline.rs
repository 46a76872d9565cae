//! `sandstorm eval-offline`: how a new model set would have decided on logged decisions,
//! estimated from the logged outcomes and propensities (IPS, self-normalised IPS, doubly
//! robust), without running anything (docs/exploration.md).
//!
//! For each logged decision (the first attempt of an executed run whose `decision_scores`
//! name the candidates that were feasible), the feature rows of every feasible candidate are
//! rebuilt from the logged request fields and the candidate's catalog entry, the new models
//! predict them, and the router's ranking ([`sandstorm_router::rank_predictions`]) picks the
//! new policy's candidate. The estimators live in `sandstorm_trainer::offpolicy`; this module
//! owns the re-decision and the reward, since it combines the router, the catalog and
//! telemetry read with DataFusion (so it can live in no serving crate).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use sandstorm_features::encoding::{FeatureInput, N_FEATURES};
use sandstorm_features::history::HistoryFeatures;
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord, from_micros};
use sandstorm_features::{Candidate, Catalog, GpuRequest, Resources, Strategy};
use sandstorm_router::{ModelSet, Prediction, rank_predictions};
use sandstorm_trainer::offpolicy::{self, LoggedDecision, OffPolicyEstimates};
use serde::Serialize;

use crate::common;

/// The standard normal quantile of 0.95 (p95 = p50 · exp(Z95 · σ) for a lognormal).
const Z95: f64 = 1.644_853_626_951_472_2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct EvalOfflineArgs {
    /// Telemetry (a directory or s3:// URL) with the logged decisions (and their
    /// propensities).
    #[arg(long)]
    telemetry: PathBuf,
    /// Model directory of the policy to evaluate (written by `sandstorm train`; a path or an
    /// s3:// URL of a model directory or registry).
    #[arg(long)]
    models: PathBuf,
    /// Catalog TOML the candidates' features come from (default: the embedded catalog).
    #[arg(long, env = "SANDSTORM_CATALOG")]
    catalog: Option<PathBuf>,
    /// Decide and reward every decision under this strategy (`optimize_cost`,
    /// `optimize_latency`, `balanced` or `balanced:W`) instead of each decision's own.
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// `optimize_cost`, `optimize_latency`, `balanced` (cost weight 0.5) or `balanced:W`.
pub(crate) fn parse_strategy(text: &str) -> Result<Strategy, String> {
    let bad = || {
        format!(
            "invalid strategy `{text}` (expected optimize_cost, optimize_latency, balanced or balanced:W with W in [0, 1])"
        )
    };
    match text.trim().split_once(':') {
        None => strategy_of(text.trim(), None).ok_or_else(bad),
        Some(("balanced", w)) => {
            let w: f64 = w.trim().parse().map_err(|_| bad())?;
            if (0.0..=1.0).contains(&w) {
                Ok(Strategy::Balanced { cost_weight: w })
            } else {
                Err(bad())
            }
        }
        Some(_) => Err(bad()),
    }
}

/// The strategy a telemetry row names (`cost_weight` for `balanced`, 0.5 when absent).
fn strategy_of(kind: &str, cost_weight: Option<f64>) -> Option<Strategy> {
    match kind {
        "optimize_cost" => Some(Strategy::OptimizeCost),
        "optimize_latency" => Some(Strategy::OptimizeLatency),
        "balanced" => Some(Strategy::Balanced {
            cost_weight: cost_weight.unwrap_or(0.5),
        }),
        _ => None,
    }
}

fn strategy_name(s: Strategy) -> String {
    match s {
        Strategy::OptimizeCost => "optimize_cost".to_owned(),
        Strategy::OptimizeLatency => "optimize_latency".to_owned(),
        Strategy::Balanced { .. } => "balanced".to_owned(),
    }
}

/// The scale of rewards: the mean cost and latency of the completed first attempts of the
/// evaluated telemetry. An attempt that failed for infrastructure reasons did not deliver
/// the job, so it is also charged one average attempt (`mean_*`), the failover that the
/// router's objective counts as an expected retry; `balanced` rewards are in units of these
/// means. Both policies of a comparison are judged with the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct RewardScale {
    pub(crate) mean_cost_usd: f64,
    pub(crate) mean_latency_ms: f64,
}

impl RewardScale {
    /// From the completed rows of `rows`; `None` when there is none.
    pub(crate) fn of<'a>(rows: impl Iterator<Item = &'a TelemetryRecord>) -> Option<Self> {
        let (mut n, mut cost, mut latency) = (0usize, 0.0, 0.0);
        for r in rows.filter(|r| completed(r.status)) {
            n += 1;
            cost += r.cost_usd;
            latency += r.total_latency_ms;
        }
        (n > 0).then(|| Self {
            mean_cost_usd: (cost / n as f64).max(f64::MIN_POSITIVE),
            mean_latency_ms: (latency / n as f64).max(f64::MIN_POSITIVE),
        })
    }

    /// The reward (higher is better) of a logged outcome under `strategy`: minus its cost
    /// (USD), latency (ms) or, for `balanced`, `w · cost / mean_cost + (1 - w) · latency /
    /// mean_latency`; plus one average attempt when it failed for infrastructure reasons.
    pub(crate) fn reward(&self, strategy: Strategy, r: &TelemetryRecord) -> f64 {
        let penalty = if r.status.is_infrastructure_failure() {
            1.0
        } else {
            0.0
        };
        self.objective(
            strategy,
            r.cost_usd + penalty * self.mean_cost_usd,
            r.total_latency_ms + penalty * self.mean_latency_ms,
        )
    }

    /// The reward model (direct method) of a prediction: the lognormal mean latency
    /// `p50 · exp(σ² / 2)` with `σ = ln(p95 / p50) / 1.645`, the predicted cost, and the
    /// failure risk times one average attempt.
    pub(crate) fn predicted(&self, strategy: Strategy, p: &Prediction) -> f64 {
        let sigma = if p.latency_p50_ms > 0.0 {
            (p.latency_p95_ms / p.latency_p50_ms).ln().max(0.0) / Z95
        } else {
            0.0
        };
        let latency = p.latency_p50_ms * (sigma * sigma / 2.0).exp();
        self.objective(
            strategy,
            p.cost_usd + p.failure_prob * self.mean_cost_usd,
            latency + p.failure_prob * self.mean_latency_ms,
        )
    }

    fn objective(&self, strategy: Strategy, cost: f64, latency: f64) -> f64 {
        -match strategy {
            Strategy::OptimizeCost => cost,
            Strategy::OptimizeLatency => latency,
            Strategy::Balanced { cost_weight } => {
                cost_weight * cost / self.mean_cost_usd
                    + (1.0 - cost_weight) * latency / self.mean_latency_ms
            }
        }
    }
}

fn completed(s: RunStatus) -> bool {
    matches!(s, RunStatus::Ok | RunStatus::Failed)
}

/// The unit of a strategy's rewards.
fn unit(s: Strategy) -> &'static str {
    match s {
        Strategy::OptimizeCost => "USD",
        Strategy::OptimizeLatency => "ms",
        Strategy::Balanced { .. } => "mean attempts",
    }
}

/// Re-decides logged decisions with a model set.
pub(crate) struct Redecider<'a> {
    models: &'a ModelSet,
    by_id: HashMap<&'a str, &'a Candidate>,
}

/// The new policy's decision on one logged decision.
#[derive(Debug, Clone)]
pub(crate) struct Redecision {
    /// The candidate the new policy picks.
    pub(crate) pick: String,
    /// Every feasible candidate with the new models' prediction.
    pub(crate) predictions: Vec<(String, Prediction)>,
}

impl<'a> Redecider<'a> {
    pub(crate) fn new(models: &'a ModelSet, candidates: &'a [Candidate]) -> Self {
        Self {
            models,
            by_id: candidates.iter().map(|c| (c.id.as_str(), c)).collect(),
        }
    }

    /// The feature row of `candidate` for the request logged in `r` (history features are
    /// not rebuilt: telemetry records them for the chosen candidate only).
    fn feature_input<'r>(r: &'r TelemetryRecord, c: &'r Candidate) -> FeatureInput<'r> {
        // The requested GPU kinds are not logged: every candidate is priced at the cheapest
        // kind it sells (the logged candidate too, so that the new policy's choice depends
        // on the request only, not on which candidate the logging policy chose).
        let resources = Resources {
            cpu: r.vcpu,
            memory_mib: r.memory_mib as u64,
            disk_mib: r.disk_mib as u64,
            gpu: (r.gpu_count > 0).then(|| GpuRequest {
                count: r.gpu_count,
                kinds: Vec::new(),
            }),
        };
        let price_gpu_s = c.gpu_price_for(&resources).unwrap_or(0.0);
        FeatureInput {
            language: &r.language,
            provider: &c.provider,
            provider_kind: c.provider_kind.as_str(),
            backend: c.backend.as_str(),
            region: &c.region,
            area: &c.area,
            isolation_level: c.isolation_level().strength(),
            vcpu: r.vcpu,
            memory_mib: r.memory_mib,
            gpu_count: r.gpu_count,
            timeout_s: r.timeout_s,
            payload_bytes: r.payload_bytes,
            file_count: r.file_count,
            allow_network: r.allow_network,
            rtt_ms: c.rtt_ms,
            price_vcpu_s: c.prices.vcpu_second,
            price_gib_s: c.prices.gib_second,
            price_start: c.prices.start,
            price_gpu_s,
            at: from_micros(r.ts_request_us),
            workload: r.workload.as_deref().unwrap_or(""),
            history: HistoryFeatures::default(),
        }
    }

    /// The new policy's pick among `feasible` (candidate ids) for the request of `r`;
    /// `Ok(None)` when a feasible candidate is not in the catalog.
    pub(crate) fn redecide(
        &self,
        r: &TelemetryRecord,
        feasible: &[&str],
        strategy: Strategy,
    ) -> Result<Option<Redecision>> {
        let Some(candidates) = feasible
            .iter()
            .map(|id| self.by_id.get(id).copied())
            .collect::<Option<Vec<&Candidate>>>()
        else {
            return Ok(None);
        };
        let mut rows = Vec::with_capacity(candidates.len() * N_FEATURES);
        self.models.space().encode_all(
            candidates.iter().map(|c| Self::feature_input(r, c)),
            &mut rows,
        );
        let predictions = self.models.predict(&rows)?;
        let ranked: Vec<(&str, Prediction)> = feasible
            .iter()
            .copied()
            .zip(predictions.iter().cloned())
            .collect();
        let order = rank_predictions(strategy, &ranked);
        let pick = ranked[order[0]].0.to_owned();
        Ok(Some(Redecision {
            pick,
            predictions: ranked
                .into_iter()
                .map(|(id, p)| (id.to_owned(), p))
                .collect(),
        }))
    }
}

/// The feasible candidate ids of a logged decision.
fn feasible_ids(r: &TelemetryRecord) -> Vec<&str> {
    r.decision_scores
        .iter()
        .filter(|s| s.feasible)
        .map(|s| s.candidate_id.as_str())
        .collect()
}

/// Logged decisions left out, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Skipped {
    /// No `decision_scores`: the set the logging policy chose from is unknown.
    pub(crate) no_choice_set: usize,
    /// `selection_probability` 1 with several feasible candidates: a greedy decision, which
    /// says nothing about the candidates it did not choose.
    pub(crate) greedy: usize,
    /// A feasible candidate (or the logged one) is not in the catalog.
    pub(crate) unknown_candidate: usize,
    /// The logged candidate is not among the feasible ones (inconsistent row).
    pub(crate) logged_not_feasible: usize,
    /// A strategy this build does not know.
    pub(crate) unknown_strategy: usize,
}

impl Skipped {
    fn summary(&self) -> String {
        let parts: Vec<String> = [
            (
                self.greedy,
                "greedy (selection_probability 1: the router did not explore)",
            ),
            (self.no_choice_set, "without decision_scores"),
            (
                self.unknown_candidate,
                "with a candidate not in the catalog",
            ),
            (
                self.logged_not_feasible,
                "whose chosen candidate is not feasible",
            ),
            (self.unknown_strategy, "with an unknown strategy"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Estimates of one strategy group.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupResult {
    pub(crate) strategy: String,
    /// Unit of the rewards (USD, ms, mean attempts); rewards are minus the objective.
    pub(crate) unit: &'static str,
    #[serde(flatten)]
    pub(crate) estimates: OffPolicyEstimates,
}

/// What `eval-offline` prints.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OfflineReport {
    pub(crate) models_dir: PathBuf,
    pub(crate) model_version: String,
    pub(crate) telemetry: PathBuf,
    /// Rows read, and executed first attempts among them.
    pub(crate) rows: usize,
    pub(crate) first_attempts: usize,
    pub(crate) evaluated: usize,
    pub(crate) skipped: Skipped,
    pub(crate) reward_scale: RewardScale,
    /// `logged` (each decision's own strategy) or the `--strategy` given.
    pub(crate) strategy: String,
    pub(crate) groups: Vec<GroupResult>,
}

/// A logged decision with the strategy it is judged under and the new policy's decision.
struct Evaluated<'a> {
    row: &'a TelemetryRecord,
    strategy: Strategy,
    decision: Redecision,
}

/// The decisions of one strategy (the first one's strategy names the unit).
struct Group<'a> {
    strategy: Strategy,
    rows: Vec<Evaluated<'a>>,
}

/// Options of one offline evaluation.
#[derive(Debug, Clone)]
pub(crate) struct OfflineOptions {
    pub(crate) strategy: Option<Strategy>,
    pub(crate) bootstrap: usize,
    pub(crate) seed: u64,
}

/// Evaluates `models` on the logged decisions of `records`.
pub(crate) fn evaluate(
    records: &[TelemetryRecord],
    models: &ModelSet,
    catalog: &Catalog,
    options: &OfflineOptions,
) -> Result<(Vec<GroupResult>, Skipped, usize, RewardScale)> {
    let first: Vec<&TelemetryRecord> = records
        .iter()
        .filter(|r| r.attempt == 0 && r.status != RunStatus::NotExecuted)
        .collect();
    if first.is_empty() {
        bail!(
            "no executed first attempt among the {} telemetry rows",
            records.len()
        );
    }
    let unusable = first
        .iter()
        .filter(|r| {
            let p = r.selection_probability;
            !(p.is_finite() && p > 0.0 && p <= 1.0)
        })
        .count();
    if unusable > 0 {
        bail!(
            "telemetry without propensities: {unusable} of {} logged decisions have no usable value in column `selection_probability` (0, NaN or outside (0, 1]); offline evaluation needs the probability with which each logged candidate was chosen",
            first.len()
        );
    }
    let candidates = catalog.candidates();
    let redecider = Redecider::new(models, &candidates);
    let mut skipped = Skipped::default();
    let mut groups: BTreeMap<String, Group<'_>> = BTreeMap::new();
    for r in &first {
        let feasible = feasible_ids(r);
        if r.decision_scores.is_empty() || feasible.is_empty() {
            skipped.no_choice_set += 1;
            continue;
        }
        if !feasible.contains(&r.candidate_id.as_str()) {
            skipped.logged_not_feasible += 1;
            continue;
        }
        if r.selection_probability >= 1.0 && feasible.len() > 1 {
            skipped.greedy += 1;
            continue;
        }
        let Some(strategy) = options
            .strategy
            .or_else(|| strategy_of(&r.strategy, r.cost_weight))
        else {
            skipped.unknown_strategy += 1;
            continue;
        };
        let Some(decision) = redecider.redecide(r, &feasible, strategy)? else {
            skipped.unknown_candidate += 1;
            continue;
        };
        groups
            .entry(strategy_name(strategy))
            .or_insert_with(|| Group {
                strategy,
                rows: Vec::new(),
            })
            .rows
            .push(Evaluated {
                row: r,
                strategy,
                decision,
            });
    }
    let evaluated: usize = groups.values().map(|g| g.rows.len()).sum();
    // Decisions with a single feasible candidate tell no policy from another.
    let with_a_choice = groups
        .values()
        .flat_map(|g| &g.rows)
        .filter(|e| e.decision.predictions.len() > 1)
        .count();
    if with_a_choice == 0 {
        bail!(
            "telemetry without propensities: none of the {} logged decisions can be evaluated ({}{}); log with an exploring router (`--explore`, `exploration` in the service configuration) or the simulator",
            first.len(),
            skipped.summary(),
            if evaluated > 0 {
                format!(", {evaluated} with a single feasible candidate")
            } else {
                String::new()
            }
        );
    }
    let scale = RewardScale::of(groups.values().flat_map(|g| g.rows.iter().map(|e| e.row)))
        .context("no evaluated decision completed (ok or failed): rewards have no scale")?;
    let mut results = Vec::new();
    for (name, group) in groups {
        let logged: Vec<LoggedDecision> = group
            .rows
            .iter()
            .map(
                |Evaluated {
                     row: r,
                     strategy,
                     decision: d,
                 }| {
                    let predicted = |id: &str| {
                        d.predictions
                            .iter()
                            .find(|(c, _)| c == id)
                            .map_or(0.0, |(_, p)| scale.predicted(*strategy, p))
                    };
                    LoggedDecision {
                        reward: scale.reward(*strategy, r),
                        propensity: r.selection_probability,
                        target_probability: if d.pick == r.candidate_id { 1.0 } else { 0.0 },
                        predicted_logged: predicted(&r.candidate_id),
                        predicted_target: predicted(&d.pick),
                    }
                },
            )
            .collect();
        let estimates = offpolicy::estimate(&logged, options.bootstrap, options.seed)?;
        results.push(GroupResult {
            strategy: name,
            unit: unit(group.strategy),
            estimates,
        });
    }
    Ok((results, skipped, evaluated, scale))
}

pub(crate) fn run(args: &EvalOfflineArgs) -> Result<ExitCode> {
    let report = report(
        &args.telemetry,
        &args.models,
        args.catalog.as_deref(),
        &OfflineOptions {
            strategy: args.strategy,
            bootstrap: args.bootstrap,
            seed: args.seed,
        },
    )?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn report(
    telemetry: &Path,
    models_dir: &Path,
    catalog: Option<&Path>,
    options: &OfflineOptions,
) -> Result<OfflineReport> {
    let local_models = crate::common::model_dir("--models", models_dir)?;
    let models = ModelSet::load(&local_models).with_context(|| {
        format!(
            "cannot evaluate the model directory {}",
            models_dir.display()
        )
    })?;
    let catalog = common::load_catalog(catalog)?;
    let records = crate::common::load_telemetry("--telemetry", telemetry)?;
    let first_attempts = records
        .iter()
        .filter(|r| r.attempt == 0 && r.status != RunStatus::NotExecuted)
        .count();
    let (groups, skipped, evaluated, reward_scale) =
        evaluate(&records, &models, &catalog, options)?;
    Ok(OfflineReport {
        models_dir: models_dir.to_path_buf(),
        model_version: models.version().to_owned(),
        telemetry: telemetry.to_path_buf(),
        rows: records.len(),
        first_attempts,
        evaluated,
        skipped,
        reward_scale,
        strategy: options.strategy.map_or("logged".to_owned(), |s| match s {
            Strategy::Balanced { cost_weight } => format!("balanced:{cost_weight}"),
            other => strategy_name(other),
        }),
        groups,
    })
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.3e}")
    }
}

fn fmt_estimate(e: &offpolicy::Estimate) -> String {
    format!(
        "{} [{}, {}]",
        fmt_value(e.value),
        fmt_value(e.ci95[0]),
        fmt_value(e.ci95[1])
    )
}

fn print_table(report: &OfflineReport) {
    println!(
        "model {} on {}: {} of {} logged decisions evaluated (skipped: {})",
        report.model_version,
        report.telemetry.display(),
        report.evaluated,
        report.first_attempts,
        report.skipped.summary()
    );
    let mut t = common::table();
    t.set_header(vec![
        "strategy",
        "unit",
        "decisions",
        "match",
        "ESS",
        "logged policy",
        "IPS",
        "SNIPS",
        "DR",
        "DM",
    ]);
    for g in &report.groups {
        let e = &g.estimates;
        t.add_row(vec![
            g.strategy.clone(),
            g.unit.to_owned(),
            e.decisions.to_string(),
            format!("{:.1}%", 100.0 * e.match_rate),
            format!("{:.0}", e.effective_sample_size),
            fmt_estimate(&e.behaviour),
            fmt_estimate(&e.ips),
            fmt_estimate(&e.snips),
            fmt_estimate(&e.dr),
            fmt_estimate(&e.dm),
        ]);
    }
    println!("{t}");
    println!(
        "reward = minus the objective (higher is better): cost in USD, latency in ms, balanced in mean attempts (mean cost {} and latency {} of completed runs); infrastructure failures are charged one mean attempt more. Intervals: bootstrap 95 %.",
        common::usd(report.reward_scale.mean_cost_usd),
        common::ms(report.reward_scale.mean_latency_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_datasets::{SimulatorConfig, simulate, simulate_with};
    use sandstorm_features::{DecisionContext, RunRequest};

    /// Logged decisions of the simulator's uniform policy (known propensities 1 / n_feasible),
    /// a model set trained on another simulation as the new policy, and its true value
    /// measured by letting it route fresh requests of the same simulated world: IPS and DR
    /// must cover the truth with their 95 % intervals, and tell it from the logging policy.
    #[test]
    fn ips_and_dr_recover_the_true_value_of_a_new_policy_on_simulated_logs() {
        let catalog = Catalog::default_catalog();
        let tmp = tempfile::tempdir().expect("tempdir");
        let models_dir = tmp.path().join("models");
        let training: Vec<TelemetryRecord> = simulate(
            &catalog,
            &SimulatorConfig {
                rows: 6000,
                seed: 11,
                ..SimulatorConfig::default()
            },
        )
        .collect();
        sandstorm_trainer::train_records(
            &training,
            &models_dir,
            &sandstorm_trainer::TrainConfig {
                num_iterations: 100,
                report: false,
                shap_sample: 0,
                ..sandstorm_trainer::TrainConfig::default()
            },
        )
        .expect("train the new policy's models");
        let models = ModelSet::load(&models_dir).expect("models");

        let n = 8000;
        let world_seed = 23;
        let logged: Vec<TelemetryRecord> = simulate(
            &catalog,
            &SimulatorConfig {
                rows: n,
                seed: world_seed,
                ..SimulatorConfig::default()
            },
        )
        .collect();
        for strategy in [Strategy::OptimizeCost, Strategy::OptimizeLatency] {
            check_against_truth(&catalog, &models, &logged, world_seed, strategy);
        }
    }

    fn check_against_truth(
        catalog: &Catalog,
        models: &ModelSet,
        logged: &[TelemetryRecord],
        world_seed: u64,
        strategy: Strategy,
    ) {
        let n = logged.len();
        let options = OfflineOptions {
            strategy: Some(strategy),
            bootstrap: 400,
            seed: 1,
        };
        let (groups, skipped, evaluated, scale) =
            evaluate(logged, models, catalog, &options).expect("evaluate");
        assert_eq!(evaluated, n, "{skipped:?}");
        assert_eq!(groups.len(), 1);
        let e = &groups[0].estimates;

        // Ground truth: fresh requests of the same world (the seed draws tenants and their
        // hidden traits; rows after the first n are new requests), each routed by the new
        // policy with the very re-decision eval-offline uses, and rewarded alike.
        let candidates = catalog.candidates();
        let redecider = Redecider::new(models, &candidates);
        let policy = |request: &RunRequest,
                      ctx: &DecisionContext,
                      feasible: &[&Candidate],
                      _: &mut dyn rand::RngCore| {
            let row = TelemetryRecord::for_choice(request, feasible[0], ctx);
            let ids: Vec<&str> = feasible.iter().map(|c| c.id.as_str()).collect();
            let d = redecider
                .redecide(&row, &ids, strategy)
                .expect("predict")
                .expect("catalog candidates");
            let pick = ids.iter().position(|id| *id == d.pick).expect("feasible");
            (pick, 1.0)
        };
        let truth_rows: Vec<TelemetryRecord> = simulate_with(
            catalog,
            &SimulatorConfig {
                rows: 4 * n,
                seed: world_seed,
                ..SimulatorConfig::default()
            },
            policy,
        )
        .skip(n)
        .collect();
        let rewards: Vec<f64> = truth_rows
            .iter()
            .map(|r| scale.reward(strategy, r))
            .collect();
        let truth = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let sd = (rewards.iter().map(|r| (r - truth).powi(2)).sum::<f64>() / rewards.len() as f64)
            .sqrt();
        let truth_se = sd / (rewards.len() as f64).sqrt();
        let show = |e: &offpolicy::Estimate| {
            format!("{:.4e} [{:.4e}, {:.4e}]", e.value, e.ci95[0], e.ci95[1])
        };
        eprintln!(
            "{}: truth {truth:.4e} ± {truth_se:.2e} (n = {}); logged policy {}; IPS {}; SNIPS {}; DR {}; DM {:.4e}; match {:.3}, ESS {:.0}",
            strategy_name(strategy),
            rewards.len(),
            show(&e.behaviour),
            show(&e.ips),
            show(&e.snips),
            show(&e.dr),
            e.dm.value,
            e.match_rate,
            e.effective_sample_size
        );
        // The truth is itself a Monte-Carlo mean: it must lie in the interval widened by
        // twice its own standard error.
        let covers = |est: &offpolicy::Estimate| {
            est.ci95[0] - 2.0 * truth_se <= truth && truth <= est.ci95[1] + 2.0 * truth_se
        };
        assert!(covers(&e.ips), "IPS {:?} misses the truth {truth}", e.ips);
        assert!(covers(&e.dr), "DR {:?} misses the truth {truth}", e.dr);
        assert!(
            covers(&e.snips),
            "SNIPS {:?} misses the truth {truth}",
            e.snips
        );
        // The estimates are sharp enough to tell the new policy from the logging one.
        assert!(
            e.behaviour.value < e.ips.ci95[0] && e.behaviour.value < e.dr.ci95[0],
            "logged policy {} inside the new policy's intervals",
            e.behaviour.value
        );
    }

    #[test]
    fn strategies_parse() {
        assert_eq!(parse_strategy("optimize_cost"), Ok(Strategy::OptimizeCost));
        assert_eq!(
            parse_strategy("balanced:0.25"),
            Ok(Strategy::Balanced { cost_weight: 0.25 })
        );
        assert_eq!(
            parse_strategy("balanced"),
            Ok(Strategy::Balanced { cost_weight: 0.5 })
        );
        for bad in ["cheapest", "balanced:2", "optimize_cost:1"] {
            let e = parse_strategy(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
