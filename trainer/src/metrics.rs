//! Holdout metrics: errors in natural units, quantile loss and coverage, and ranking quality of
//! the failure model.

/// Mean absolute error.
pub(crate) fn mae(pred: &[f64], actual: &[f64]) -> f64 {
    mean(pred.iter().zip(actual).map(|(p, a)| (p - a).abs()))
}

/// `q`-quantile (0..=1) of absolute percentage errors, in percent.
pub(crate) fn ape_quantile(pred: &[f64], actual: &[f64], q: f64) -> f64 {
    let mut apes: Vec<f64> = pred
        .iter()
        .zip(actual)
        .filter(|(_, a)| **a != 0.0)
        .map(|(p, a)| 100.0 * ((p - a) / a).abs())
        .collect();
    quantile(&mut apes, q)
}

/// Mean pinball loss of a `alpha`-quantile prediction.
pub(crate) fn pinball(pred: &[f64], actual: &[f64], alpha: f64) -> f64 {
    mean(pred.iter().zip(actual).map(|(p, a)| {
        let d = a - p;
        if d >= 0.0 {
            alpha * d
        } else {
            (alpha - 1.0) * d
        }
    }))
}

/// Share of actuals at or below the prediction.
pub(crate) fn coverage(pred: &[f64], actual: &[f64]) -> f64 {
    mean(
        pred.iter()
            .zip(actual)
            .map(|(p, a)| if a <= p { 1.0 } else { 0.0 }),
    )
}

/// Area under the ROC curve (ties get half credit); NaN when one class is absent.
pub(crate) fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties (Mann-Whitney U).
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = rank;
        }
        i = j + 1;
    }
    let n_pos = labels.iter().filter(|l| **l).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Mean binary log loss.
pub(crate) fn logloss(probs: &[f64], labels: &[bool]) -> f64 {
    mean(probs.iter().zip(labels).map(|(p, l)| {
        let p = p.clamp(1e-15, 1.0 - 1e-15);
        if *l { -p.ln() } else { -(1.0 - p).ln() }
    }))
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
    }

    #[test]
    fn pinball_and_coverage() {
        let actual = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(coverage(&[4.0; 4], &actual), 1.0);
        assert_eq!(coverage(&[2.0; 4], &actual), 0.5);
        // Under-prediction by 1 at alpha 0.9 costs 0.9; over-prediction by 1 costs 0.1.
        assert!((pinball(&[0.0], &[1.0], 0.9) - 0.9).abs() < 1e-12);
        assert!((pinball(&[2.0], &[1.0], 0.9) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn ape_quantiles() {
        let pred = [110.0, 90.0, 150.0, 100.0];
        let actual = [100.0; 4];
        assert!((ape_quantile(&pred, &actual, 0.5) - 10.0).abs() < 1e-9);
        assert_eq!(mae(&pred, &actual), 17.5);
    }
}
