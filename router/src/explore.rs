//! Exploration: choosing, now and then, a candidate other than the greedy winner, and knowing
//! the probability of every choice so that the telemetry of these decisions can be used to
//! train and evaluate models without the bias of only ever seeing past winners
//! (`docs/exploration.md`).
//!
//! [`Exploration::Off`] (the default) is the greedy router: the best score wins with
//! probability 1 and no random number is drawn. [`Exploration::EpsilonGreedy`] picks,
//! with probability `epsilon`, a candidate uniformly among the feasible ones (those that
//! passed every constraint and every policy), else the greedy winner; its probabilities are
//! exact. [`Exploration::Thompson`] samples each feasible candidate's cost, latency and failure
//! risk from the distribution its predictions describe, scores the samples with the
//! strategy's objective (and the policies' factors) and picks the best sample; the
//! probability of that choice is estimated from `draws` further independent samples.
//!
//! Randomness is reproducible: one generator per decision, seeded with
//! `DecisionContext::seed` when the caller gives one, else from the decision id.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, StandardNormal};
use sandstorm_features::Strategy;

use crate::RouterError;
use crate::decide::{MAX_FAILURE_PROB, Prediction, objective_into};

/// Monte-Carlo draws with which Thompson sampling estimates the selection probability when
/// none is configured: the estimate is then clipped to `[1/256, 1 - 1/256]`.
pub const DEFAULT_THOMPSON_DRAWS: u32 = 256;
/// Largest number of Monte-Carlo draws accepted (each draws every feasible candidate).
const MAX_THOMPSON_DRAWS: u32 = 100_000;
/// The standard normal quantile of 0.95: `ln(p95 / p50) / Z95` is the log-space spread of a
/// lognormal latency with that median and 95th percentile.
const Z95: f64 = 1.644_853_626_951_472_2;
/// Log-space standard deviation of Thompson's cost samples around the predicted cost: cost
/// is mostly list price × duration, so its uncertainty is modest.
const COST_SIGMA: f64 = 0.1;
/// Pseudo-observations of the Beta distribution Thompson draws a failure risk from:
/// `Beta(k p, k (1 - p))` has mean `p` (the predicted risk) and a spread that shrinks with `k`.
const FAILURE_PSEUDO_COUNT: f64 = 20.0;
/// Smallest failure risk Thompson's Beta is centred on (`Beta` needs both shapes > 0).
const MIN_FAILURE_PROB: f64 = 1e-4;

/// How the router explores. Written `off`, `epsilon:E` or `thompson[:DRAWS]` in flags,
/// environment variables and configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Exploration {
    /// Always the greedy winner (probability 1).
    #[default]
    Off,
    /// With probability `epsilon` a uniformly random feasible candidate, else the greedy
    /// winner: the greedy winner has probability `(1 - ε) + ε / n`, every other feasible
    /// candidate `ε / n`.
    EpsilonGreedy { epsilon: f64 },
    /// The best of one sample per candidate from its predicted distribution; the selection
    /// probability is estimated from `draws` more samples.
    Thompson { draws: u32 },
}

impl Exploration {
    /// Whether decisions are greedy.
    pub fn is_off(&self) -> bool {
        matches!(self, Exploration::Off)
    }

    /// Checks the parameters (`epsilon` in [0, 1], 1 to 100000 draws).
    pub fn validate(&self) -> Result<(), RouterError> {
        self.check()
            .map_err(|why| RouterError::InvalidExploration(format!("`{self}`: {why}")))
    }

    fn check(&self) -> Result<(), String> {
        match *self {
            Exploration::Off => Ok(()),
            Exploration::EpsilonGreedy { epsilon } if (0.0..=1.0).contains(&epsilon) => Ok(()),
            Exploration::EpsilonGreedy { epsilon } => {
                Err(format!("epsilon must be in [0, 1], got {epsilon}"))
            }
            Exploration::Thompson { draws } if (1..=MAX_THOMPSON_DRAWS).contains(&draws) => Ok(()),
            Exploration::Thompson { draws } => Err(format!(
                "thompson draws must be between 1 and {MAX_THOMPSON_DRAWS}, got {draws}"
            )),
        }
    }

    /// Words for explanations: `epsilon-greedy (ε = 0.1)`, `Thompson sampling`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Exploration::Off => "no exploration".to_owned(),
            Exploration::EpsilonGreedy { epsilon } => format!("epsilon-greedy, ε = {epsilon}"),
            Exploration::Thompson { draws } => {
                format!("Thompson sampling, probability from {draws} draws")
            }
        }
    }
}

impl fmt::Display for Exploration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exploration::Off => f.write_str("off"),
            Exploration::EpsilonGreedy { epsilon } => write!(f, "epsilon:{epsilon}"),
            Exploration::Thompson { draws } if *draws == DEFAULT_THOMPSON_DRAWS => {
                f.write_str("thompson")
            }
            Exploration::Thompson { draws } => write!(f, "thompson:{draws}"),
        }
    }
}

impl FromStr for Exploration {
    type Err = RouterError;

    /// `off`, `epsilon:0.1` (also `epsilon-greedy:0.1`), `thompson` or `thompson:512`.
    fn from_str(text: &str) -> Result<Self, RouterError> {
        let t = text.trim();
        let bad = |why: &str| {
            RouterError::InvalidExploration(format!(
                "`{text}`: {why} (expected off, epsilon:E with E in [0, 1], or thompson[:DRAWS])"
            ))
        };
        let (kind, arg) = match t.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (t, None),
        };
        let parsed = match (kind.to_ascii_lowercase().as_str(), arg) {
            ("off" | "none" | "greedy", None) => Exploration::Off,
            ("epsilon" | "epsilon-greedy" | "epsilon_greedy", Some(a)) => {
                let epsilon = a
                    .parse::<f64>()
                    .map_err(|_| bad("epsilon is not a number"))?;
                Exploration::EpsilonGreedy { epsilon }
            }
            ("epsilon" | "epsilon-greedy" | "epsilon_greedy", None) => {
                return Err(bad("epsilon needs a value, e.g. epsilon:0.1"));
            }
            ("thompson", None) => Exploration::Thompson {
                draws: DEFAULT_THOMPSON_DRAWS,
            },
            ("thompson", Some(a)) => Exploration::Thompson {
                draws: a
                    .parse::<u32>()
                    .map_err(|_| bad("draws is not a positive integer"))?,
            },
            _ => return Err(bad("unknown exploration")),
        };
        parsed.check().map_err(|why| bad(&why))?;
        Ok(parsed)
    }
}

impl serde::Serialize for Exploration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Exploration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What exploration chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    /// Position of the chosen candidate in the greedy ranking (0: the greedy winner).
    pub(crate) rank: usize,
    /// Probability with which it was chosen, in (0, 1].
    pub(crate) probability: f64,
}

/// The generator of one decision: `splitmix64` of the seed, so nearby seeds give unrelated
/// streams.
fn rng_for(seed: u64) -> StdRng {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// The ε-greedy probability of choosing the candidate at greedy `rank` among `n`.
pub(crate) fn epsilon_probability(epsilon: f64, n: usize, rank: usize) -> f64 {
    let uniform = epsilon / n as f64;
    if rank == 0 {
        (1.0 - epsilon) + uniform
    } else {
        uniform
    }
}

/// Chooses among the `order`-ranked feasible candidates. `predictions[i]` and `factors[i]`
/// (empty: all 1) belong to candidate `i`; `order` lists candidate indices best first.
/// Must not be called with [`Exploration::Off`] (it returns the greedy winner then).
pub(crate) fn choose(
    exploration: Exploration,
    seed: u64,
    strategy: Strategy,
    predictions: &[&Prediction],
    factors: &[f64],
    order: &[usize],
) -> Choice {
    let n = order.len();
    let greedy = Choice {
        rank: 0,
        probability: 1.0,
    };
    if n <= 1 {
        return greedy;
    }
    let mut rng = rng_for(seed);
    match exploration {
        Exploration::Off => greedy,
        Exploration::EpsilonGreedy { epsilon } => {
            let rank = if rng.random::<f64>() < epsilon {
                rng.random_range(0..n)
            } else {
                0
            };
            Choice {
                rank,
                probability: epsilon_probability(epsilon, n, rank),
            }
        }
        Exploration::Thompson { draws } => {
            let mut sampler = Sampler::new(strategy, predictions, factors);
            let chosen = sampler.draw(&mut rng);
            let draws = draws.max(1);
            let wins = (0..draws)
                .filter(|_| sampler.draw(&mut rng) == chosen)
                .count();
            let d = f64::from(draws);
            let floor = 1.0 / d;
            let probability = (wins as f64 / d).clamp(floor, (1.0 - floor).max(floor));
            Choice {
                rank: order.iter().position(|&i| i == chosen).unwrap_or(0),
                probability,
            }
        }
    }
}

/// Draws one sample of every candidate's objective and returns the index of the best.
struct Sampler<'a> {
    strategy: Strategy,
    predictions: &'a [&'a Prediction],
    factors: &'a [f64],
    /// Per candidate: (ln p50, latency log-sd, failure Beta).
    dists: Vec<(f64, f64, Option<Beta<f64>>)>,
    sampled: Vec<(f64, f64)>,
    scores: Vec<f64>,
}

impl<'a> Sampler<'a> {
    fn new(strategy: Strategy, predictions: &'a [&'a Prediction], factors: &'a [f64]) -> Self {
        let dists = predictions
            .iter()
            .map(|p| {
                let sigma = if p.latency_p50_ms > 0.0 {
                    ((p.latency_p95_ms / p.latency_p50_ms).ln() / Z95).max(0.0)
                } else {
                    0.0
                };
                let f = p.failure_prob.clamp(MIN_FAILURE_PROB, MAX_FAILURE_PROB);
                let beta =
                    Beta::new(FAILURE_PSEUDO_COUNT * f, FAILURE_PSEUDO_COUNT * (1.0 - f)).ok();
                (p.latency_p50_ms.max(f64::MIN_POSITIVE).ln(), sigma, beta)
            })
            .collect();
        Self {
            strategy,
            predictions,
            factors,
            dists,
            sampled: Vec::with_capacity(predictions.len()),
            scores: Vec::with_capacity(predictions.len()),
        }
    }

    fn draw(&mut self, rng: &mut StdRng) -> usize {
        self.sampled.clear();
        for (p, (ln_p50, sigma, beta)) in self.predictions.iter().zip(&self.dists) {
            let z_lat: f64 = rng.sample(StandardNormal);
            let z_cost: f64 = rng.sample(StandardNormal);
            let latency = (ln_p50 + sigma * z_lat).exp();
            let cost = p.cost_usd * (COST_SIGMA * z_cost).exp();
            let fail = beta
                .as_ref()
                .map_or(p.failure_prob, |b| b.sample(rng))
                .clamp(0.0, MAX_FAILURE_PROB);
            self.sampled
                .push((cost / (1.0 - fail), latency / (1.0 - fail)));
        }
        objective_into(
            self.strategy,
            &self.sampled,
            |s| s.0,
            |s| s.1,
            &mut self.scores,
        );
        for (score, factor) in self.scores.iter_mut().zip(self.factors) {
            *score *= factor;
        }
        let mut best = 0;
        for (i, score) in self.scores.iter().enumerate() {
            if *score < self.scores[best] {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn pred(p50: f64, p95: f64, cost: f64, fail: f64) -> Prediction {
        Prediction {
            latency_p50_ms: p50,
            latency_p95_ms: p95,
            cost_usd: cost,
            failure_prob: fail,
            expected_cost_usd: cost / (1.0 - fail),
            expected_latency_ms: p50 / (1.0 - fail),
        }
    }

    #[test]
    fn parses_and_prints_every_form() {
        assert_eq!("off".parse::<Exploration>().unwrap(), Exploration::Off);
        assert_eq!(
            "epsilon:0.1".parse::<Exploration>().unwrap(),
            Exploration::EpsilonGreedy { epsilon: 0.1 }
        );
        assert_eq!(
            "thompson".parse::<Exploration>().unwrap(),
            Exploration::Thompson {
                draws: DEFAULT_THOMPSON_DRAWS
            }
        );
        assert_eq!(
            "thompson:64".parse::<Exploration>().unwrap(),
            Exploration::Thompson { draws: 64 }
        );
        for text in ["off", "epsilon:0.25", "thompson", "thompson:64"] {
            let e: Exploration = text.parse().unwrap();
            assert_eq!(e.to_string(), text);
        }
        for (bad, why) in [
            ("epsilon:1.5", "epsilon must be in [0, 1]"),
            ("epsilon:x", "epsilon is not a number"),
            ("epsilon", "needs a value"),
            ("thompson:0", "draws must be between"),
            ("ucb", "unknown exploration"),
        ] {
            let e = bad.parse::<Exploration>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn same_seed_same_choice() {
        let ps = [
            pred(100.0, 300.0, 1e-4, 0.01),
            pred(120.0, 200.0, 2e-4, 0.05),
            pred(90.0, 900.0, 5e-5, 0.2),
        ];
        let refs: Vec<&Prediction> = ps.iter().collect();
        for e in [
            Exploration::EpsilonGreedy { epsilon: 0.5 },
            Exploration::Thompson { draws: 64 },
        ] {
            for seed in 0..20 {
                let a = choose(e, seed, Strategy::OptimizeLatency, &refs, &[], &[2, 0, 1]);
                let b = choose(e, seed, Strategy::OptimizeLatency, &refs, &[], &[2, 0, 1]);
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn thompson_frequencies_match_its_estimated_probabilities() {
        // Two close candidates and a clearly worse one: the estimated probability of each
        // choice must agree with how often it is chosen over many seeds.
        let ps = [
            pred(100.0, 250.0, 1e-4, 0.01),
            pred(105.0, 260.0, 1e-4, 0.01),
            pred(400.0, 600.0, 1e-4, 0.01),
        ];
        let refs: Vec<&Prediction> = ps.iter().collect();
        let order = [0, 1, 2];
        let e = Exploration::Thompson { draws: 400 };
        let mut counts = [0usize; 3];
        let mut mean_p = [0.0f64; 3];
        let n = 2000;
        for seed in 0..n {
            let c = choose(e, seed, Strategy::OptimizeLatency, &refs, &[], &order);
            counts[c.rank] += 1;
            mean_p[c.rank] += c.probability;
        }
        for r in 0..2 {
            let freq = counts[r] as f64 / n as f64;
            let p = mean_p[r] / counts[r].max(1) as f64;
            assert!((freq - p).abs() < 0.05, "rank {r}: frequency {freq}, p̂ {p}");
        }
        assert!(
            counts[2] < n as usize / 50,
            "the slow one is rarely chosen: {counts:?}"
        );
    }

    proptest! {
        #[test]
        fn epsilon_probabilities_sum_to_one(epsilon in 0.0f64..=1.0, n in 1usize..40) {
            let total: f64 = (0..n).map(|r| epsilon_probability(epsilon, n, r)).sum();
            prop_assert!((total - 1.0).abs() < 1e-12);
            for r in 0..n {
                let p = epsilon_probability(epsilon, n, r);
                prop_assert!((0.0..=1.0).contains(&p));
            }
        }

        #[test]
        fn chosen_probability_is_in_zero_one(
            seed in any::<u64>(),
            epsilon in 0.001f64..=1.0,
            draws in 1u32..200,
            lat in proptest::collection::vec((1.0f64..5000.0, 1.0f64..4.0, 1e-7f64..1e-2, 0.0f64..0.95), 1..12),
            balanced in any::<bool>(),
        ) {
            let ps: Vec<Prediction> = lat.iter().map(|&(p50, k, c, f)| pred(p50, p50 * k, c, f)).collect();
            let refs: Vec<&Prediction> = ps.iter().collect();
            let order: Vec<usize> = (0..ps.len()).collect();
            let strategy = if balanced { Strategy::Balanced { cost_weight: 0.3 } } else { Strategy::OptimizeCost };
            for e in [Exploration::EpsilonGreedy { epsilon }, Exploration::Thompson { draws }] {
                let c = choose(e, seed, strategy, &refs, &[], &order);
                prop_assert!(c.rank < ps.len());
                prop_assert!(c.probability > 0.0 && c.probability <= 1.0, "{:?}", c);
                if ps.len() == 1 {
                    prop_assert_eq!(c.probability, 1.0);
                }
            }
        }
    }
}
