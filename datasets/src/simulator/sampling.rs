//! Small, infallible sampling helpers over any `rand` generator: normal, log-normal,
//! exponential and Poisson draws and weighted picks from constant tables. They avoid the
//! fallible constructors of `rand_distr` for parameters that are constants of the model.

use rand::Rng;
use rand_distr::{Exp1, StandardNormal};

/// A standard normal draw.
pub(crate) fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.sample(StandardNormal)
}

/// A log-normal draw with the given median and log-space standard deviation.
pub(crate) fn lognormal<R: Rng + ?Sized>(rng: &mut R, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// An exponential draw with the given mean.
pub(crate) fn exponential<R: Rng + ?Sized>(rng: &mut R, mean: f64) -> f64 {
    let e: f64 = rng.sample(Exp1);
    mean * e
}

/// A Poisson draw (Knuth's method; the model only uses small means).
pub(crate) fn poisson<R: Rng + ?Sized>(rng: &mut R, mean: f64) -> u32 {
    let limit = (-mean.max(0.0)).exp();
    let mut product: f64 = rng.random();
    let mut k = 0;
    while product > limit && k < 1_000 {
        product *= rng.random::<f64>();
        k += 1;
    }
    k
}

/// A value from `table`, with probability proportional to its weight. `table` must not be
/// empty; the last entry absorbs rounding.
pub(crate) fn pick<R: Rng + ?Sized, T: Copy>(rng: &mut R, table: &[(T, f64)]) -> T {
    let total: f64 = table.iter().map(|(_, w)| w).sum();
    let mut u = rng.random::<f64>() * total;
    for (value, weight) in table {
        if u < *weight {
            return *value;
        }
        u -= weight;
    }
    table[table.len() - 1].0
}

/// An index drawn from cumulative weights `cdf` (non-decreasing, last entry the total).
pub(crate) fn pick_cdf<R: Rng + ?Sized>(rng: &mut R, cdf: &[f64]) -> usize {
    let total = cdf.last().copied().unwrap_or(0.0);
    let u = rng.random::<f64>() * total;
    cdf.partition_point(|c| *c <= u)
        .min(cdf.len().saturating_sub(1))
}

/// SplitMix64: a fast, well-mixed 64-bit hash used to derive independent seeds.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn pick_follows_weights() {
        let mut rng = StdRng::seed_from_u64(1);
        let table = [("a", 1.0), ("b", 3.0)];
        let b = (0..20_000)
            .filter(|_| pick(&mut rng, &table) == "b")
            .count();
        let share = b as f64 / 20_000.0;
        assert!((0.72..0.78).contains(&share), "{share}");
    }

    #[test]
    fn poisson_and_lognormal_have_the_right_centre() {
        let mut rng = StdRng::seed_from_u64(2);
        let mean = (0..20_000)
            .map(|_| f64::from(poisson(&mut rng, 2.5)))
            .sum::<f64>()
            / 20_000.0;
        assert!((2.4..2.6).contains(&mean), "{mean}");
        let mut draws: Vec<f64> = (0..20_001)
            .map(|_| lognormal(&mut rng, 100.0, 0.8))
            .collect();
        draws.sort_by(f64::total_cmp);
        let median = draws[10_000];
        assert!((95.0..105.0).contains(&median), "{median}");
    }

    #[test]
    fn pick_cdf_covers_every_index() {
        let mut rng = StdRng::seed_from_u64(3);
        let cdf = [1.0, 2.0, 3.0];
        let mut seen = [0; 3];
        for _ in 0..3_000 {
            seen[pick_cdf(&mut rng, &cdf)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }
}
