//! History features: what the past outcomes of the same workload on the same candidate say.
//!
//! A request may name its `workload` (a repeated job: a CI suite, a benchmark, a nightly
//! build). For such a request, each candidate's past outcomes of that workload (the natural log
//! of end-to-end latency, in milliseconds) are summarised by an [`OutcomeHistory`] into
//! [`HistoryFeatures`]: count, recency, levels (EWMA, median, recent median, last), spread, and
//! — after [`relate`] — each level relative to the mean of the same level over the request's
//! other candidates. Only outcomes strictly before the request go in, so training rows see
//! exactly what serving would have seen.
//!
//! The fast EWMA is the candidate's *anchor*: models of latency and cost predict the deviation
//! of the outcome from it (see [`crate::encoding::base_margin`]).

use serde::{Deserialize, Serialize};

/// Weight of the newest outcome in the fast exponentially weighted mean.
pub const EWMA_FAST_ALPHA: f64 = 0.3;
/// Weight of the newest outcome in the slow exponentially weighted mean.
pub const EWMA_SLOW_ALPHA: f64 = 0.1;
/// Number of newest outcomes in the recent median.
pub const RECENT_OUTCOMES: usize = 5;

/// Summary of past outcomes of one workload on one candidate; every level is
/// `ln(total_latency_ms)`. `None` where there is no history (encoded as missing).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HistoryFeatures {
    /// Number of past outcomes.
    pub count: u32,
    /// Days between the newest past outcome and the request.
    pub days_since_last: Option<f64>,
    /// Exponentially weighted mean, weight [`EWMA_FAST_ALPHA`] (the anchor).
    pub ln_ewma_fast: Option<f64>,
    /// Exponentially weighted mean, weight [`EWMA_SLOW_ALPHA`].
    pub ln_ewma_slow: Option<f64>,
    /// Median of every past outcome.
    pub ln_median: Option<f64>,
    /// Median of the [`RECENT_OUTCOMES`] newest outcomes.
    pub ln_recent_median: Option<f64>,
    /// The newest outcome.
    pub ln_last: Option<f64>,
    /// Sample standard deviation of the past outcomes (at least two).
    pub ln_std: Option<f64>,
    /// `ln_ewma_fast` minus its mean over the request's candidates with history.
    pub rel_ewma_fast: Option<f64>,
    /// `ln_ewma_slow` minus its mean over the request's candidates with history.
    pub rel_ewma_slow: Option<f64>,
    /// `ln_median` minus its mean over the request's candidates with history.
    pub rel_median: Option<f64>,
    /// `ln_recent_median` minus its mean over the request's candidates with history.
    pub rel_recent_median: Option<f64>,
    /// `ln_last` minus its mean over the request's candidates with history.
    pub rel_last: Option<f64>,
    /// Rank (1 = fastest) of `ln_median` among the request's candidates with history.
    pub rank_median: Option<f64>,
}

/// The past outcomes of one workload on one candidate, pushed in time order.
#[derive(Debug, Clone, Default)]
pub struct OutcomeHistory {
    values: Vec<f64>,
    last_at_s: Option<i64>,
    ewma_fast: f64,
    ewma_slow: f64,
}

impl OutcomeHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an outcome `ln_latency_ms` observed at `at_s` (Unix seconds). Non-finite values
    /// are ignored.
    pub fn push(&mut self, at_s: i64, ln_latency_ms: f64) {
        if !ln_latency_ms.is_finite() {
            return;
        }
        if self.values.is_empty() {
            self.ewma_fast = ln_latency_ms;
            self.ewma_slow = ln_latency_ms;
        } else {
            self.ewma_fast += EWMA_FAST_ALPHA * (ln_latency_ms - self.ewma_fast);
            self.ewma_slow += EWMA_SLOW_ALPHA * (ln_latency_ms - self.ewma_slow);
        }
        self.values.push(ln_latency_ms);
        self.last_at_s = Some(self.last_at_s.map_or(at_s, |t| t.max(at_s)));
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The candidate's own features for a request at `at_s` (the relative ones stay `None`
    /// until [`relate`]).
    pub fn features(&self, at_s: i64) -> HistoryFeatures {
        let Some(&last) = self.values.last() else {
            return HistoryFeatures::default();
        };
        let n = self.values.len();
        let std = (n >= 2).then(|| {
            let mean = self.values.iter().sum::<f64>() / n as f64;
            let ss: f64 = self.values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        HistoryFeatures {
            count: n as u32,
            days_since_last: self.last_at_s.map(|t| (at_s - t) as f64 / 86_400.0),
            ln_ewma_fast: Some(self.ewma_fast),
            ln_ewma_slow: Some(self.ewma_slow),
            ln_median: Some(median(&self.values)),
            ln_recent_median: Some(median(&self.values[n.saturating_sub(RECENT_OUTCOMES)..])),
            ln_last: Some(last),
            ln_std: std,
            ..HistoryFeatures::default()
        }
    }
}

/// Median of a non-empty slice (mean of the two middle values for an even length).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Fills the relative features of the candidates of one request: each level minus its mean
/// over the candidates that have it, and the rank of the median level.
pub fn relate(features: &mut [HistoryFeatures]) {
    type Get = fn(&HistoryFeatures) -> Option<f64>;
    type Set = fn(&mut HistoryFeatures, Option<f64>);
    let pairs: [(Get, Set); 5] = [
        (|f| f.ln_ewma_fast, |f, v| f.rel_ewma_fast = v),
        (|f| f.ln_ewma_slow, |f, v| f.rel_ewma_slow = v),
        (|f| f.ln_median, |f, v| f.rel_median = v),
        (|f| f.ln_recent_median, |f, v| f.rel_recent_median = v),
        (|f| f.ln_last, |f, v| f.rel_last = v),
    ];
    for (get, set) in pairs {
        let present: Vec<f64> = features.iter().filter_map(get).collect();
        if present.is_empty() {
            continue;
        }
        let mean = present.iter().sum::<f64>() / present.len() as f64;
        for f in features.iter_mut() {
            let v = get(f).map(|x| x - mean);
            set(f, v);
        }
    }
    let medians: Vec<Option<f64>> = features.iter().map(|f| f.ln_median).collect();
    for (f, own) in features.iter_mut().zip(&medians) {
        f.rank_median =
            own.map(|m| 1.0 + medians.iter().flatten().filter(|other| **other < m).count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_summarise_only_what_was_pushed() {
        let mut h = OutcomeHistory::new();
        assert_eq!(h.features(0), HistoryFeatures::default());
        for (day, v) in [(0, 1.0), (1, 3.0), (2, 2.0)] {
            h.push(day * 86_400, v);
        }
        let f = h.features(5 * 86_400);
        assert_eq!(f.count, 3);
        assert_eq!(f.days_since_last, Some(3.0));
        assert_eq!(f.ln_median, Some(2.0));
        assert_eq!(f.ln_last, Some(2.0));
        assert_eq!(f.ln_std, Some(1.0));
        let fast = 1.0 + 0.3 * (3.0 - 1.0);
        let fast = fast + 0.3 * (2.0 - fast);
        assert!((f.ln_ewma_fast.unwrap() - fast).abs() < 1e-12);
    }

    #[test]
    fn relate_centres_levels_and_ranks_medians() {
        let mut a = OutcomeHistory::new();
        a.push(0, 1.0);
        let mut b = OutcomeHistory::new();
        b.push(0, 3.0);
        let mut fs = vec![a.features(1), b.features(1), HistoryFeatures::default()];
        relate(&mut fs);
        assert_eq!(fs[0].rel_median, Some(-1.0));
        assert_eq!(fs[1].rel_last, Some(1.0));
        assert_eq!(fs[0].rank_median, Some(1.0));
        assert_eq!(fs[1].rank_median, Some(2.0));
        assert_eq!(fs[2].rel_median, None);
    }
}
