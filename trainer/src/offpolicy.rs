//! Off-policy evaluation: the value a new policy would have had on decisions another policy
//! logged, from the logged rewards and the logging policy's propensities
//! (`sandstorm eval-offline`, docs/exploration.md).
//!
//! For logged decision `i` with reward `r_i`, propensity `p_i` (the probability with which
//! the logging policy chose the logged candidate), the evaluated policy's probability
//! `π_i` of choosing that same candidate (1 or 0 for a deterministic policy), and the weight
//! `w_i = π_i / p_i`:
//!
//! * **IPS** (inverse propensity scoring): `mean(w_i r_i)`, unbiased when every candidate the
//!   new policy picks had a positive logging probability.
//! * **SNIPS** (self-normalised IPS): `Σ w_i r_i / Σ w_i`, slightly biased, much less variance.
//! * **DM** (direct method): `mean(q̂_i(π))`, the model's own prediction of the new policy's
//!   reward; biased by the model's errors.
//! * **DR** (doubly robust): `mean(q̂_i(π) + w_i (r_i - q̂_i(a_i)))`, unbiased when either the
//!   propensities or the reward model are right, usually with less variance than IPS.
//!
//! Confidence intervals are percentile bootstrap intervals (rows resampled with
//! replacement, a fixed seed).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::TrainerError;

/// One logged decision, as the estimators see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedDecision {
    /// Reward of the logged choice (higher is better).
    pub reward: f64,
    /// Probability with which the logging policy made the logged choice, in (0, 1].
    pub propensity: f64,
    /// Probability with which the evaluated policy makes the same choice, in [0, 1].
    pub target_probability: f64,
    /// The reward model's prediction for the logged choice, `q̂(x, a_logged)`.
    pub predicted_logged: f64,
    /// The reward model's prediction of the evaluated policy at this context,
    /// `Σ_a π(a | x) q̂(x, a)`.
    pub predicted_target: f64,
}

/// A point estimate and its bootstrap 95 % interval (NaN where undefined, e.g. SNIPS when
/// the evaluated policy never agrees with the logged choices).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub ci95: [f64; 2],
}

/// Every estimate of one evaluated policy on one set of logged decisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffPolicyEstimates {
    pub decisions: usize,
    /// Mean reward of the logged (behaviour) policy.
    pub behaviour: Estimate,
    pub ips: Estimate,
    pub snips: Estimate,
    pub dm: Estimate,
    pub dr: Estimate,
    /// Mean `π_i`: the share of decisions where the evaluated policy agrees with the log.
    pub match_rate: f64,
    /// `(Σ w)² / Σ w²`: how many decisions the weighted estimate is worth.
    pub effective_sample_size: f64,
    /// Largest weight `π_i / p_i`.
    pub max_weight: f64,
    /// Bootstrap resamples behind the intervals.
    pub bootstrap: usize,
}

/// The point estimates of one sample.
#[derive(Debug, Clone, Copy)]
struct Point {
    behaviour: f64,
    ips: f64,
    snips: f64,
    dm: f64,
    dr: f64,
}

fn point(rows: &[LoggedDecision], idx: impl Iterator<Item = usize>) -> Point {
    let (mut n, mut behaviour, mut ips, mut w_sum, mut dm, mut dr) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for i in idx {
        let r = &rows[i];
        let w = r.target_probability / r.propensity;
        n += 1.0;
        behaviour += r.reward;
        ips += w * r.reward;
        w_sum += w;
        dm += r.predicted_target;
        dr += r.predicted_target + w * (r.reward - r.predicted_logged);
    }
    Point {
        behaviour: behaviour / n,
        ips: ips / n,
        snips: if w_sum > 0.0 { ips / w_sum } else { f64::NAN },
        dm: dm / n,
        dr: dr / n,
    }
}

/// Estimates the evaluated policy's value on `rows` with `bootstrap` resamples (seeded by
/// `seed`) for the intervals. An error when `rows` is empty or holds a propensity outside
/// (0, 1], a target probability outside [0, 1] or a non-finite reward or prediction.
pub fn estimate(
    rows: &[LoggedDecision],
    bootstrap: usize,
    seed: u64,
) -> Result<OffPolicyEstimates, TrainerError> {
    if rows.is_empty() {
        return Err(TrainerError::Input(
            "no logged decision to evaluate".to_owned(),
        ));
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| {
        !is_propensity(r.propensity)
            || !(0.0..=1.0).contains(&r.target_probability)
            || !r.reward.is_finite()
            || !r.predicted_logged.is_finite()
            || !r.predicted_target.is_finite()
    }) {
        return Err(TrainerError::Input(format!(
            "logged decision {i} cannot be evaluated: {r:?} (propensity must be in (0, 1], target probability in [0, 1], rewards finite)"
        )));
    }
    let n = rows.len();
    let full = point(rows, 0..n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut samples: Vec<Point> = Vec::with_capacity(bootstrap);
    let mut idx = vec![0usize; n];
    for _ in 0..bootstrap {
        for slot in idx.iter_mut() {
            *slot = rng.random_range(0..n);
        }
        samples.push(point(rows, idx.iter().copied()));
    }
    let interval = |value: f64, get: fn(&Point) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(get).filter(|x| x.is_finite()).collect();
        Estimate {
            value,
            ci95: percentile_interval(&mut v),
        }
    };
    let weights: Vec<f64> = rows
        .iter()
        .map(|r| r.target_probability / r.propensity)
        .collect();
    let w_sum: f64 = weights.iter().sum();
    let w_sq: f64 = weights.iter().map(|w| w * w).sum();
    Ok(OffPolicyEstimates {
        decisions: n,
        behaviour: interval(full.behaviour, |p| p.behaviour),
        ips: interval(full.ips, |p| p.ips),
        snips: interval(full.snips, |p| p.snips),
        dm: interval(full.dm, |p| p.dm),
        dr: interval(full.dr, |p| p.dr),
        match_rate: rows.iter().map(|r| r.target_probability).sum::<f64>() / n as f64,
        effective_sample_size: if w_sq > 0.0 {
            w_sum * w_sum / w_sq
        } else {
            0.0
        },
        max_weight: weights.iter().copied().fold(0.0, f64::max),
        bootstrap,
    })
}

/// Whether `p` can be a logging probability: in (0, 1].
fn is_propensity(p: f64) -> bool {
    p > 0.0 && p <= 1.0
}

/// The 2.5 % and 97.5 % percentiles of `v` (NaN when empty).
fn percentile_interval(v: &mut [f64]) -> [f64; 2] {
    if v.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decision(reward: f64, propensity: f64, target: f64) -> LoggedDecision {
        LoggedDecision {
            reward,
            propensity,
            target_probability: target,
            predicted_logged: 0.0,
            predicted_target: 0.0,
        }
    }

    #[test]
    fn bad_rows_are_refused() {
        assert!(estimate(&[], 10, 0).is_err());
        let e = estimate(&[decision(1.0, 0.0, 1.0)], 10, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("propensity"), "{e}");
        assert!(estimate(&[decision(f64::NAN, 0.5, 1.0)], 10, 0).is_err());
    }

    #[test]
    fn a_policy_that_never_agrees_has_no_snips() {
        let rows = [decision(-1.0, 0.5, 0.0), decision(-2.0, 0.5, 0.0)];
        let e = estimate(&rows, 50, 1).unwrap();
        assert_eq!(e.ips.value, 0.0);
        assert!(e.snips.value.is_nan());
        assert_eq!(e.match_rate, 0.0);
        assert_eq!(e.behaviour.value, -1.5);
    }

    /// A small bandit: contexts, actions with integer logging counts `c_a` (propensity
    /// `c_a / C`), rewards and a deterministic target choice per context.
    /// Per context: the reward of every action, the model's prediction of it, the target.
    type Context = (Vec<f64>, Vec<f64>, usize);

    fn bandit() -> impl Strategy<Value = (Vec<u32>, Vec<Context>)> {
        (2usize..6).prop_flat_map(|k| {
            (
                proptest::collection::vec(1u32..6, k),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(-100.0f64..0.0, k),
                        proptest::collection::vec(-100.0f64..0.0, k),
                        0..k,
                    ),
                    1..8,
                ),
            )
        })
    }

    proptest! {
        /// With every action of every context logged exactly in proportion to its
        /// propensity, IPS and DR equal the target policy's true value (whatever the reward
        /// model predicts), and SNIPS too.
        #[test]
        fn ips_and_dr_are_exact_on_the_propensity_weighted_population((counts, contexts) in bandit()) {
            let total: u32 = counts.iter().sum();
            let mut rows = Vec::new();
            let mut truth = 0.0;
            for (rewards, predicted, target) in &contexts {
                truth += rewards[*target];
                for (a, c) in counts.iter().enumerate() {
                    for _ in 0..*c {
                        rows.push(LoggedDecision {
                            reward: rewards[a],
                            propensity: f64::from(*c) / f64::from(total),
                            target_probability: if a == *target { 1.0 } else { 0.0 },
                            predicted_logged: predicted[a],
                            predicted_target: predicted[*target],
                        });
                    }
                }
            }
            truth /= contexts.len() as f64;
            let e = estimate(&rows, 20, 3).unwrap();
            prop_assert!((e.ips.value - truth).abs() < 1e-9 * truth.abs().max(1.0), "ips {} truth {}", e.ips.value, truth);
            prop_assert!((e.dr.value - truth).abs() < 1e-9 * truth.abs().max(1.0), "dr {} truth {}", e.dr.value, truth);
            prop_assert!((e.snips.value - truth).abs() < 1e-9 * truth.abs().max(1.0), "snips {} truth {}", e.snips.value, truth);
            prop_assert!(e.ips.ci95[0] <= e.ips.ci95[1]);
        }

        /// Evaluating the logging policy itself gives its mean reward with weight 1 everywhere.
        #[test]
        fn the_logging_policy_evaluates_to_its_mean_reward(
            rows in proptest::collection::vec((-50.0f64..0.0, 0.01f64..=1.0), 1..60),
        ) {
            let rows: Vec<LoggedDecision> = rows.into_iter().map(|(r, p)| decision(r, p, p)).collect();
            let e = estimate(&rows, 10, 0).unwrap();
            prop_assert!((e.ips.value - e.behaviour.value).abs() < 1e-9);
            prop_assert!((e.snips.value - e.behaviour.value).abs() < 1e-9);
            prop_assert!((e.effective_sample_size - rows.len() as f64).abs() < 1e-6);
            prop_assert!(e.behaviour.ci95[0] <= e.behaviour.ci95[1]);
        }

        /// With a perfect reward model for the logged choices, DR is the direct method.
        #[test]
        fn dr_is_the_direct_method_when_the_model_is_right_on_the_log(
            rows in proptest::collection::vec((-50.0f64..0.0, 0.01f64..=1.0, 0.0f64..=1.0, -50.0f64..0.0), 1..60),
        ) {
            let rows: Vec<LoggedDecision> = rows
                .into_iter()
                .map(|(r, p, t, q)| LoggedDecision { reward: r, propensity: p, target_probability: t, predicted_logged: r, predicted_target: q })
                .collect();
            let e = estimate(&rows, 0, 0).unwrap();
            prop_assert!((e.dr.value - e.dm.value).abs() < 1e-9);
        }
    }
}
