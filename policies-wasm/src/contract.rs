//! The host side of the WIT contract (`wit/policy.wit`): the generated bindings, the
//! conversion of a request and its candidates into the contract's column layout (into buffers
//! reused across calls), and the validation of what a policy answers.

use std::collections::HashMap;
use std::sync::Arc;

use sandstorm_features::{Candidate, DecisionContext, IsolationBackend, ProviderKind, RunRequest};

/// Bindings generated from `wit/policy.wit`.
mod wit {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "wit",
    });
}

pub(crate) use wit::{
    Candidates as WitCandidates, Policy, PolicyPre, Request as WitRequest, Verdicts as WitVerdicts,
};

/// ABI version of the contract (the WIT package version).
pub const ABI_VERSION: &str = "2.0.0";

/// Factors are clamped into this range so that no policy can make a candidate free or
/// infinitely expensive.
pub const FACTOR_RANGE: (f64, f64) = (0.1, 10.0);
/// At most this many distinct reason strings per answer…
const MAX_REASONS: usize = 256;
/// …each at most this long (longer ones are cut at a character boundary).
const MAX_REASON_BYTES: usize = 512;
/// The interned string table is rebuilt when it grows past this (it holds catalog names).
const MAX_NAMES: usize = 4096;

/// One candidate as a policy sees it: the catalog entry and its predictions.
#[derive(Debug, Clone, Copy)]
pub struct PolicyCandidate<'a> {
    /// Shared, so a worker can keep the columns of the last candidate set it saw and reuse
    /// them while the set stays the same (the usual case from one request to the next).
    pub candidate: &'a Arc<Candidate>,
    pub cost_usd: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub failure_prob: f64,
}

/// The validated answer of one policy for one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdicts {
    /// Distinct reasons; the per-candidate entries index into it.
    reasons: Vec<String>,
    /// Per candidate: `Some(reason)` when rejected.
    rejected: Vec<Option<u16>>,
    /// Per candidate: the clamped factor and its reason, `None` when it is 1 (or rejected).
    adjusted: Vec<Option<(f64, u16)>>,
}

impl Verdicts {
    /// Number of candidates judged.
    pub fn len(&self) -> usize {
        self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rejected.is_empty()
    }

    /// Why candidate `i` was rejected, if it was.
    pub fn rejection(&self, i: usize) -> Option<&str> {
        self.rejected[i].map(|r| self.reason(r))
    }

    /// Candidate `i`'s factor and why, unless it is 1.
    pub fn adjustment(&self, i: usize) -> Option<(f64, &str)> {
        self.adjusted[i].map(|(f, r)| (f, self.reason(r)))
    }

    pub fn n_rejected(&self) -> usize {
        self.rejected.iter().filter(|r| r.is_some()).count()
    }

    pub fn n_adjusted(&self) -> usize {
        self.adjusted.iter().filter(|a| a.is_some()).count()
    }

    fn reason(&self, r: u16) -> &str {
        match r {
            0 => "no reason given",
            k => self
                .reasons
                .get(usize::from(k) - 1)
                .map_or("", String::as_str),
        }
    }
}

/// Argument buffers of the contract, reused from call to call by one worker.
#[derive(Debug)]
pub(crate) struct InputBuffers {
    pub(crate) request: WitRequest,
    pub(crate) candidates: WitCandidates,
    interned: HashMap<String, u16>,
    /// The candidates the static columns were last filled from (kept alive, so a pointer
    /// match means the very same candidate).
    last: Vec<Arc<Candidate>>,
}

impl Default for InputBuffers {
    fn default() -> Self {
        Self {
            request: WitRequest {
                tenant: String::new(),
                now_unix_ms: 0,
                seed: 0,
                strategy: String::new(),
                language: String::new(),
                cpu: 0.0,
                memory_mib: 0,
                gpu_count: 0,
                timeout_s: 0.0,
                allow_network: false,
                labels: Vec::new(),
            },
            candidates: WitCandidates {
                names: String::new(),
                names_end: Vec::new(),
                provider: Vec::new(),
                region: Vec::new(),
                area: Vec::new(),
                kind: Vec::new(),
                backend: Vec::new(),
                isolation: Vec::new(),
                rtt_ms: Vec::new(),
                cost_usd: Vec::new(),
                latency_p50_ms: Vec::new(),
                latency_p95_ms: Vec::new(),
                failure_prob: Vec::new(),
            },
            interned: HashMap::new(),
            last: Vec::new(),
        }
    }
}

impl InputBuffers {
    /// Fills the buffers with `request` and `candidates`.
    pub(crate) fn fill(
        &mut self,
        request: &RunRequest,
        ctx: &DecisionContext,
        seed: u64,
        candidates: &[PolicyCandidate<'_>],
    ) {
        let r = &mut self.request;
        r.tenant.clear();
        r.tenant.push_str(&request.tenant);
        r.now_unix_ms = i64::try_from(ctx.now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        r.seed = seed;
        r.strategy.clear();
        r.strategy.push_str(request.strategy.as_str());
        r.language.clear();
        r.language.push_str(request.language.as_str());
        r.cpu = request.resources.cpu;
        r.memory_mib = request.resources.memory_mib;
        r.gpu_count = request.resources.gpu_count();
        r.timeout_s = request.timeout_s;
        r.allow_network = request.allow_network;
        // BTreeMap iteration is sorted by key, as the contract promises.
        if r.labels.len() != request.labels.len()
            || r.labels
                .iter()
                .zip(&request.labels)
                .any(|((k, v), (k2, v2))| k != k2 || v != v2)
        {
            r.labels.clear();
            r.labels
                .extend(request.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }

        let same = self.last.len() == candidates.len()
            && self
                .last
                .iter()
                .zip(candidates)
                .all(|(a, b)| Arc::ptr_eq(a, b.candidate));
        if !same {
            self.fill_static(candidates);
        }
        let c = &mut self.candidates;
        c.cost_usd.clear();
        c.latency_p50_ms.clear();
        c.latency_p95_ms.clear();
        c.failure_prob.clear();
        for pc in candidates {
            c.cost_usd.push(pc.cost_usd);
            c.latency_p50_ms.push(pc.latency_p50_ms as f32);
            c.latency_p95_ms.push(pc.latency_p95_ms as f32);
            c.failure_prob.push(pc.failure_prob as f32);
        }
    }

    /// The columns that depend only on the candidates, not on the predictions.
    fn fill_static(&mut self, candidates: &[PolicyCandidate<'_>]) {
        if self.interned.len() > MAX_NAMES {
            self.interned.clear();
            self.candidates.names.clear();
            self.candidates.names_end.clear();
        }
        let c = &mut self.candidates;
        c.provider.clear();
        c.region.clear();
        c.area.clear();
        c.kind.clear();
        c.backend.clear();
        c.isolation.clear();
        c.rtt_ms.clear();
        self.last.clear();
        for pc in candidates {
            let cand = &**pc.candidate;
            self.last.push(Arc::clone(pc.candidate));
            let provider = intern(
                &mut self.interned,
                &mut c.names,
                &mut c.names_end,
                &cand.provider,
            );
            let region = intern(
                &mut self.interned,
                &mut c.names,
                &mut c.names_end,
                &cand.region,
            );
            let area = intern(
                &mut self.interned,
                &mut c.names,
                &mut c.names_end,
                &cand.area,
            );
            c.provider.push(provider);
            c.region.push(region);
            c.area.push(area);
            // The codes of the contract (policy.wit).
            c.kind.push(match cand.provider_kind {
                ProviderKind::Local => 0,
                ProviderKind::Remote => 1,
                ProviderKind::Kubernetes => 2,
                ProviderKind::Edge => 3,
            });
            c.backend.push(match cand.backend {
                IsolationBackend::Process => 0,
                IsolationBackend::Bubblewrap => 1,
                IsolationBackend::Gvisor => 2,
                IsolationBackend::RootlessOci => 3,
                IsolationBackend::Microvm => 4,
            });
            c.isolation.push(cand.isolation_level().strength());
            c.rtt_ms.push(cand.rtt_ms as f32);
        }
    }
}

fn intern(
    map: &mut HashMap<String, u16>,
    names: &mut String,
    names_end: &mut Vec<u32>,
    s: &str,
) -> u16 {
    if let Some(&i) = map.get(s) {
        return i;
    }
    // MAX_NAMES keeps the table far below u16::MAX (three names per candidate at most), and
    // catalog names keep it far below u32::MAX bytes.
    let i = u16::try_from(names_end.len()).unwrap_or(u16::MAX);
    names.push_str(s);
    names_end.push(u32::try_from(names.len()).unwrap_or(u32::MAX));
    map.insert(s.to_owned(), i);
    i
}

/// Checks a policy's raw answer against the contract for `n` candidates.
pub(crate) fn validate(raw: WitVerdicts, n: usize) -> Result<Verdicts, String> {
    let lens = [raw.reject.len(), raw.factor.len(), raw.reason.len()];
    if lens.iter().any(|&l| l != n) {
        return Err(format!(
            "returned {} rejections, {} factors and {} reasons for {n} candidates (each must have exactly one entry per candidate)",
            lens[0], lens[1], lens[2]
        ));
    }
    if raw.reasons.len() > MAX_REASONS {
        return Err(format!(
            "returned {} distinct reasons, more than the limit of {MAX_REASONS}",
            raw.reasons.len()
        ));
    }
    let mut reasons = raw.reasons;
    for r in &mut reasons {
        cut_reason(r);
    }
    let mut rejected = Vec::with_capacity(n);
    let mut adjusted = Vec::with_capacity(n);
    for i in 0..n {
        let reason = raw.reason[i];
        if usize::from(reason) > reasons.len() {
            return Err(format!(
                "candidate {i}: reason index {reason} is past the end of its {} reasons",
                reasons.len()
            ));
        }
        let factor = f64::from(raw.factor[i]);
        if factor.is_nan() {
            return Err(format!("candidate {i}: factor is NaN"));
        }
        let reject = match raw.reject[i] {
            0 => false,
            1 => true,
            other => {
                return Err(format!(
                    "candidate {i}: reject is {other}, expected 0 (keep) or 1 (reject)"
                ));
            }
        };
        rejected.push(reject.then_some(reason));
        adjusted.push(if factor == 1.0 || reject {
            None
        } else {
            Some((factor.clamp(FACTOR_RANGE.0, FACTOR_RANGE.1), reason))
        });
    }
    Ok(Verdicts {
        reasons,
        rejected,
        adjusted,
    })
}

fn cut_reason(s: &mut String) {
    if s.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: usize) -> WitVerdicts {
        WitVerdicts {
            reject: vec![0; n],
            factor: vec![1.0; n],
            reason: vec![0; n],
            reasons: Vec::new(),
        }
    }

    #[test]
    fn wrong_lengths_are_refused_with_the_counts() {
        let mut v = raw(3);
        v.factor.pop();
        let err = validate(v, 3).unwrap_err();
        assert!(
            err.contains("3 rejections, 2 factors and 3 reasons for 3 candidates"),
            "{err}"
        );
    }

    #[test]
    fn factors_are_clamped_and_nan_refused() {
        let mut v = raw(2);
        v.factor = vec![1e30, 0.0];
        v.reason = vec![1, 1];
        v.reasons = vec!["x".into()];
        let ok = validate(v, 2).unwrap();
        assert_eq!(ok.adjustment(0), Some((10.0, "x")));
        assert_eq!(ok.adjustment(1), Some((0.1, "x")));
        let mut v = raw(1);
        v.factor = vec![f32::NAN];
        assert!(validate(v, 1).unwrap_err().contains("NaN"));
    }

    #[test]
    fn reason_index_out_of_range_is_refused() {
        let mut v = raw(1);
        v.reject = vec![1];
        v.reason = vec![2];
        v.reasons = vec!["only".into()];
        let err = validate(v, 1).unwrap_err();
        assert!(err.contains("reason index 2"), "{err}");
    }

    #[test]
    fn reject_codes_other_than_0_and_1_are_refused() {
        let mut v = raw(2);
        v.reject = vec![1, 7];
        let err = validate(v, 2).unwrap_err();
        assert!(err.contains("candidate 1: reject is 7"), "{err}");
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let mut s = "é".repeat(400);
        cut_reason(&mut s);
        assert!(s.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
