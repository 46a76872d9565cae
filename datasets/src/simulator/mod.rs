//! A seeded simulator of a TEST WORLD that produces telemetry rows as if a uniformly random
//! logging policy had routed a realistic request mix to the catalog's candidates
//! ([`simulate`]), or any other [`LoggingPolicy`] ([`simulate_with`]: biased logging for
//! weighting tests, a deterministic policy to measure its true value).
//!
//! Rows are produced lazily ([`simulate`]) and written in `rows_per_file` chunks
//! ([`generate`]), so a million rows take bounded memory. Row `i` is drawn from its own
//! generator seeded by `(seed, i)`, so the same seed always gives identical rows. The model's
//! assumptions are listed in `docs/simulator.md`; its figures are not measurements.

mod requests;
mod sampling;
mod world;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sandstorm_features::telemetry::{
    self, CandidateScore, TelemetryRecord, from_micros, to_micros,
};
use sandstorm_features::{Candidate, Catalog, DecisionContext, RunRequest, static_violation};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::error::DatasetsError;
use crate::parquet_io::{first_parquet_file, write_parquet};
use requests::sample_job;
use sampling::splitmix64;
use world::World;

/// Value of the `source` column of simulated rows.
pub(crate) const SOURCE: &str = "simulator";
/// Draws of a request before falling back to the relaxed shape.
const MAX_DRAWS: usize = 32;
const MICROS_PER_DAY: f64 = 86_400.0 * 1e6;

/// Settings of one simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatorConfig {
    /// Rows to produce.
    pub rows: usize,
    /// Seed: the same seed, catalog and settings give identical rows.
    pub seed: u64,
    /// Start of the simulated period (UTC).
    pub start: OffsetDateTime,
    /// Length of the simulated period in days; requests are spread over it in order.
    pub days: u32,
    /// Rows per Parquet file written by [`generate`].
    pub rows_per_file: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            rows: 100_000,
            seed: 0,
            start: datetime!(2026-01-05 00:00 UTC),
            days: 28,
            rows_per_file: 50_000,
        }
    }
}

impl SimulatorConfig {
    fn validate(&self) -> Result<(), DatasetsError> {
        if self.rows_per_file == 0 {
            return Err(DatasetsError::InvalidConfig(
                "rows_per_file must be at least 1".to_owned(),
            ));
        }
        if self.days == 0 {
            return Err(DatasetsError::InvalidConfig(
                "days must be at least 1".to_owned(),
            ));
        }
        let end = self
            .start
            .checked_add(time::Duration::days(i64::from(self.days)));
        if self.start.year() < 1970 || end.is_none_or(|end| end.year() > 9999) {
            return Err(DatasetsError::InvalidConfig(
                "the simulated period must lie between 1970 and 9999".to_owned(),
            ));
        }
        Ok(())
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSummary {
    /// Rows written.
    pub rows: usize,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Rows per status (`ok`, `timeout`, ...).
    pub status_counts: BTreeMap<String, usize>,
}

/// Who decides where a simulated request runs: given the request, the moment, and the
/// candidates that pass its static constraints (in catalog order), the index of the chosen
/// one in `feasible` and the probability with which it was chosen (logged as
/// `selection_probability`). `rng` is the row's generator; a policy that draws from it keeps
/// the simulation reproducible.
///
/// Any `FnMut(&RunRequest, &DecisionContext, &[&Candidate], &mut dyn RngCore) -> (usize, f64)`
/// is a logging policy. An index out of range panics (a bug of the policy).
pub trait LoggingPolicy {
    fn choose(
        &mut self,
        request: &RunRequest,
        ctx: &DecisionContext,
        feasible: &[&Candidate],
        rng: &mut dyn RngCore,
    ) -> (usize, f64);
}

impl<F> LoggingPolicy for F
where
    F: FnMut(&RunRequest, &DecisionContext, &[&Candidate], &mut dyn RngCore) -> (usize, f64),
{
    fn choose(
        &mut self,
        request: &RunRequest,
        ctx: &DecisionContext,
        feasible: &[&Candidate],
        rng: &mut dyn RngCore,
    ) -> (usize, f64) {
        self(request, ctx, feasible, rng)
    }
}

/// The simulator's default logging policy: uniform among the feasible candidates
/// (probability `1 / n_feasible`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UniformPolicy;

impl LoggingPolicy for UniformPolicy {
    fn choose(
        &mut self,
        _: &RunRequest,
        _: &DecisionContext,
        feasible: &[&Candidate],
        rng: &mut dyn RngCore,
    ) -> (usize, f64) {
        (
            rng.random_range(0..feasible.len()),
            1.0 / feasible.len() as f64,
        )
    }
}

/// The simulated telemetry rows for `cfg`, produced lazily. Deterministic: the same catalog and
/// config always yield the same rows.
///
/// Yields no rows when no candidate of the catalog can serve even the smallest request
/// ([`generate`] reports that as an error); otherwise yields exactly `cfg.rows` rows.
pub fn simulate(
    catalog: &Catalog,
    cfg: &SimulatorConfig,
) -> impl Iterator<Item = TelemetryRecord> + use<> {
    simulate_with(catalog, cfg, UniformPolicy)
}

/// [`simulate`] with another logging policy. Row `i` draws the same request (and arrival
/// time) whatever the policy; the outcome is drawn after the choice, so a policy that draws
/// a different number of random values sees different outcome noise.
pub fn simulate_with<P: LoggingPolicy>(
    catalog: &Catalog,
    cfg: &SimulatorConfig,
    mut policy: P,
) -> impl Iterator<Item = TelemetryRecord> + use<P> {
    let world = World::new(catalog, cfg.seed);
    let rows = match world.unusable_reason() {
        None => cfg.rows,
        Some(reason) => {
            tracing::warn!(%reason, "catalog unusable for simulation; no rows produced");
            0
        }
    };
    let cfg = *cfg;
    (0..rows).map_while(move |i| simulate_row(&world, &cfg, i, &mut policy))
}

/// Row `i`: `None` only when no request draw is feasible, which
/// [`World::unusable_reason`] rules out.
fn simulate_row(
    world: &World,
    cfg: &SimulatorConfig,
    i: usize,
    policy: &mut dyn LoggingPolicy,
) -> Option<TelemetryRecord> {
    let mut rng = StdRng::seed_from_u64(splitmix64(cfg.seed ^ splitmix64(i as u64)));
    // Requests arrive in order, row i uniformly within the i-th slice of the period.
    let span_us = f64::from(cfg.days) * MICROS_PER_DAY;
    let offset = (i as f64 + rng.random::<f64>()) / cfg.rows.max(1) as f64 * span_us;
    let ts_request_us = to_micros(cfg.start) + offset as i64;
    let now = from_micros(ts_request_us);
    let decision_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let run_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();

    let mut feasible = Vec::with_capacity(world.candidates.len());
    let mut job = None;
    for draw in 0..=MAX_DRAWS {
        let candidate_job = sample_job(world, &mut rng, draw == MAX_DRAWS);
        feasible.clear();
        feasible.extend(
            world
                .candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| static_violation(&candidate_job.request, c).is_none())
                .map(|(k, _)| k),
        );
        if !feasible.is_empty() {
            job = Some(candidate_job);
            break;
        }
    }
    let job = job?;
    let ctx = DecisionContext::at(now);
    let options: Vec<&Candidate> = feasible.iter().map(|&k| &world.candidates[k]).collect();
    let (pick, probability) = policy.choose(&job.request, &ctx, &options, &mut rng);
    let chosen = feasible[pick];
    let outcome = world.run(&job, chosen, now, &mut rng);
    let candidate = &world.candidates[chosen];

    let mut rec = TelemetryRecord::for_choice(&job.request, candidate, &ctx);
    rec.decision_id = decision_id.to_string();
    rec.run_id = run_id.to_string();
    rec.source = SOURCE.to_owned();
    rec.n_candidates = world.candidates.len() as u32;
    rec.n_feasible = feasible.len() as u32;
    rec.selection_probability = probability;
    rec.model_version = None;
    // The set the policy chose from: every candidate, feasible or not, without predictions.
    rec.decision_scores = world
        .candidates
        .iter()
        .enumerate()
        .map(|(k, c)| CandidateScore {
            candidate_id: c.id.clone(),
            feasible: feasible.contains(&k),
            pred_latency_p50_ms: None,
            pred_latency_p95_ms: None,
            pred_cost_usd: None,
            pred_failure_prob: None,
            score: None,
        })
        .collect();

    let network_ms = outcome.net_pre_ms + outcome.net_post_ms;
    let total_ms = outcome.queue_ms + outcome.start_ms + outcome.exec_ms + network_ms;
    let us = |ms: f64| (ms * 1000.0).round() as i64;
    rec.ts_start_us = outcome
        .started
        .then(|| ts_request_us + us(outcome.queue_ms + outcome.net_pre_ms));
    rec.ts_end_us = Some(ts_request_us + us(total_ms));
    rec.status = outcome.status;
    rec.error_class = outcome.error_class.map(str::to_owned);
    rec.exit_code = outcome.exit_code;
    rec.queue_ms = outcome.queue_ms;
    rec.start_ms = outcome.start_ms;
    rec.exec_ms = outcome.exec_ms;
    rec.total_latency_ms = total_ms;
    rec.cost_usd = outcome.cost_usd;
    rec.peak_memory_mib = outcome.peak_memory_mib;
    Some(rec)
}

/// Simulates `cfg.rows` rows and writes them to `out_dir` as `part-NNNNN.parquet` files of
/// `cfg.rows_per_file` rows each, calling `progress` with the rows simulated so far.
///
/// `out_dir` is created when missing and must not already hold Parquet files.
pub fn generate(
    catalog: &Catalog,
    cfg: &SimulatorConfig,
    out_dir: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<GenerateSummary, DatasetsError> {
    cfg.validate()?;
    if let Some(reason) = World::new(catalog, cfg.seed).unusable_reason() {
        return Err(DatasetsError::CatalogUnusable(reason));
    }
    if let Some(example) = first_parquet_file(out_dir)? {
        return Err(DatasetsError::OutputNotEmpty {
            dir: out_dir.to_owned(),
            example,
        });
    }
    fs::create_dir_all(out_dir).map_err(|e| DatasetsError::io(out_dir, e))?;
    tracing::info!(
        rows = cfg.rows,
        seed = cfg.seed,
        out_dir = %out_dir.display(),
        "simulating telemetry"
    );
    let n_files = cfg.rows.div_ceil(cfg.rows_per_file);
    let width = n_files.saturating_sub(1).to_string().len().max(5);
    let mut summary = GenerateSummary {
        rows: 0,
        files: Vec::with_capacity(n_files),
        status_counts: BTreeMap::new(),
    };
    let mut rows = simulate(catalog, cfg);
    let mut chunk = Vec::with_capacity(cfg.rows_per_file.min(cfg.rows));
    for file_index in 0..n_files {
        chunk.clear();
        for rec in rows.by_ref().take(cfg.rows_per_file) {
            chunk.push(rec);
            if chunk.len() % 1024 == 0 {
                progress(summary.rows + chunk.len());
            }
        }
        if chunk.is_empty() {
            break;
        }
        for rec in &chunk {
            *summary
                .status_counts
                .entry(rec.status.as_str().to_owned())
                .or_default() += 1;
        }
        let batch = telemetry::to_record_batch(&chunk)?;
        let path = out_dir.join(format!("part-{file_index:0width$}.parquet"));
        write_parquet(&path, &[batch])?;
        summary.rows += chunk.len();
        summary.files.push(path);
        progress(summary.rows);
    }
    tracing::info!(
        rows = summary.rows,
        files = summary.files.len(),
        "simulation written"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn two_thousand_rows_reach_every_provider() {
        let catalog = Catalog::default_catalog();
        let cfg = SimulatorConfig {
            rows: 2_000,
            seed: 11,
            ..SimulatorConfig::default()
        };
        let seen: BTreeSet<String> = simulate(&catalog, &cfg).map(|r| r.provider).collect();
        let expected: BTreeSet<String> = catalog
            .candidates()
            .into_iter()
            .map(|c| c.provider)
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn rows_record_a_valid_request_and_a_consistent_decision() {
        let catalog = Catalog::default_catalog();
        let world = World::new(&catalog, 5);
        let mut rng = StdRng::seed_from_u64(5);
        for draw in 0..500 {
            let job = sample_job(&world, &mut rng, draw % 10 == 0);
            job.request
                .validate()
                .unwrap_or_else(|e| panic!("draw {draw}: {e}"));
        }
        let cfg = SimulatorConfig {
            rows: 300,
            seed: 5,
            ..SimulatorConfig::default()
        };
        let mut last = i64::MIN;
        for rec in simulate(&catalog, &cfg) {
            assert!(rec.n_feasible >= 1 && rec.n_feasible <= rec.n_candidates);
            assert!((rec.selection_probability * f64::from(rec.n_feasible) - 1.0).abs() < 1e-12);
            assert!(rec.ts_request_us >= last, "requests out of order");
            last = rec.ts_request_us;
            let end = rec.ts_end_us.unwrap_or(i64::MIN);
            let total_us = (rec.total_latency_ms * 1000.0).round() as i64;
            assert_eq!(end - rec.ts_request_us, total_us);
            if let Some(start) = rec.ts_start_us {
                assert!(start >= rec.ts_request_us && start <= end);
            }
        }
    }

    #[test]
    fn unusable_catalog_is_a_clear_error() {
        let mut catalog = Catalog::default_catalog();
        for p in &mut catalog.providers {
            p.quotas.max_vcpu = 0.25;
        }
        let dir = std::env::temp_dir().join(format!("sandstorm-unusable-{}", std::process::id()));
        let err = generate(&catalog, &SimulatorConfig::default(), &dir, &mut |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("catalog unusable"), "{err}");
        assert_eq!(simulate(&catalog, &SimulatorConfig::default()).count(), 0);
    }
}
