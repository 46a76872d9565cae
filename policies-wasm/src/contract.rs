//! The host side of the WIT contract (`wit/policy.wit`): the generated bindings, the packing
//! of a request and its candidates into the contract's `input` bytes (into buffers reused
//! across calls), and the validation of what a policy answers.

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

pub(crate) use wit::{Policy, PolicyPre, Verdicts as WitVerdicts};

/// ABI version of the contract (the WIT package version).
pub const ABI_VERSION: &str = "3.0.0";

/// Bytes of `input` before the candidate columns (see `wit/policy.wit`).
const HEADER_BYTES: usize = 72;
/// Bytes per candidate of the columns that change with the predictions (cost, p50, p95,
/// failure)…
const DYNAMIC_COLUMN_BYTES: usize = 8 + 3 * 4;
/// …and of those that depend on the candidate alone (RTT, provider, region, area, kind,
/// backend, isolation).
const STATIC_COLUMN_BYTES: usize = 4 + 3 * 2 + 3;

/// Factors are clamped into this range so that no policy can make a candidate free or
/// infinitely expensive.
pub const FACTOR_RANGE: (f64, f64) = (0.1, 10.0);
/// At most this many distinct reason strings per answer…
const MAX_REASONS: usize = 256;
/// …each at most this long (longer ones are cut at a character boundary).
const MAX_REASON_BYTES: usize = 512;
/// The interned catalog names are rebuilt when they grow past this many.
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

/// The validated answer of one policy for one request: the policy's own columns, checked
/// against the contract (one entry per candidate, `reject` 0 or 1, no NaN factor, reason
/// indices in range) and read through accessors that clamp factors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdicts {
    /// Distinct reasons; `reason` entries index into it (from 1).
    reasons: Vec<String>,
    reject: Vec<u8>,
    factor: Vec<f32>,
    reason: Vec<u16>,
}

impl Verdicts {
    /// Number of candidates judged.
    pub fn len(&self) -> usize {
        self.reject.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reject.is_empty()
    }

    /// Why candidate `i` was rejected, if it was.
    pub fn rejection(&self, i: usize) -> Option<&str> {
        (self.reject[i] == 1).then(|| self.reason(self.reason[i]))
    }

    /// Candidate `i`'s factor (clamped to [`FACTOR_RANGE`]) and why, unless it is 1 or the
    /// candidate is rejected.
    pub fn adjustment(&self, i: usize) -> Option<(f64, &str)> {
        let factor = f64::from(self.factor[i]);
        (self.reject[i] == 0 && factor != 1.0).then(|| {
            (
                factor.clamp(FACTOR_RANGE.0, FACTOR_RANGE.1),
                self.reason(self.reason[i]),
            )
        })
    }

    pub fn n_rejected(&self) -> usize {
        self.reject.iter().filter(|r| **r == 1).count()
    }

    pub fn n_adjusted(&self) -> usize {
        (0..self.len())
            .filter(|&i| self.reject[i] == 0 && self.factor[i] != 1.0)
            .count()
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

/// The packed `input` argument of the contract, reused from call to call by one worker.
#[derive(Debug, Default)]
pub(crate) struct InputBuffers {
    /// The bytes handed to the policy.
    pub(crate) bytes: Vec<u8>,
    /// Interned catalog names (providers, regions, areas) and their indices, and the string
    /// table as the contract lays it out (the request's strings are appended per call).
    interned: HashMap<String, u16>,
    names: String,
    names_end: Vec<u32>,
    /// The candidates whose static columns `bytes` holds (kept alive, so a pointer match means the
    /// very same candidate: the usual case from one request to the next).
    last: Vec<Arc<Candidate>>,
    labels: Vec<(u16, u16)>,
}

impl InputBuffers {
    /// Packs `request` and `candidates` into `bytes`. The buffer keeps its length from call
    /// to call, so only what changed is written: the columns that depend on the candidates
    /// alone are rewritten only when the candidates change.
    pub(crate) fn fill(
        &mut self,
        request: &RunRequest,
        ctx: &DecisionContext,
        seed: u64,
        candidates: &[PolicyCandidate<'_>],
    ) {
        if self.interned.len() > MAX_NAMES {
            self.interned.clear();
            self.names.clear();
            self.names_end.clear();
            self.last.clear();
        }
        let n = candidates.len();
        let statics_at = HEADER_BYTES + DYNAMIC_COLUMN_BYTES * n;
        let labels_at = (statics_at + STATIC_COLUMN_BYTES * n).next_multiple_of(4);
        let same = self.last.len() == n
            && self
                .last
                .iter()
                .zip(candidates)
                .all(|(a, b)| Arc::ptr_eq(a, b.candidate));
        if !same {
            self.fill_static(candidates, statics_at, labels_at);
        }
        // The request's strings go after the catalog names for this call only, so that
        // tenants and labels never accumulate in the table.
        let (names_len, names_count) = (self.names.len(), self.names_end.len());
        let tenant = self.push_name(&request.tenant);
        let strategy = self.push_name(request.strategy.as_str());
        let language = self.push_name(request.language.as_str());
        // BTreeMap iteration is sorted by key, as the contract promises.
        self.labels.clear();
        for (k, v) in &request.labels {
            let pair = (self.push_name(k), self.push_name(v));
            self.labels.push(pair);
        }
        let total = labels_at + 4 * self.labels.len() + 4 * self.names_end.len() + self.names.len();
        self.bytes.resize(total, 0);

        let mut w = Cursor::new(&mut self.bytes[..statics_at]);
        for n in [n, self.labels.len(), self.names_end.len(), self.names.len()] {
            w.put(count(n).to_le_bytes());
        }
        let now_ms = i64::try_from(ctx.now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        w.put(now_ms.to_le_bytes());
        w.put(seed.to_le_bytes());
        w.put(request.resources.cpu.to_le_bytes());
        w.put(request.timeout_s.to_le_bytes());
        w.put(request.resources.memory_mib.to_le_bytes());
        w.put(request.resources.gpu_count().to_le_bytes());
        for s in [tenant, strategy, language] {
            w.put(s.to_le_bytes());
        }
        w.put([u8::from(request.allow_network), 0, 0, 0, 0, 0]);
        w.column(candidates.iter().map(|c| c.cost_usd.to_le_bytes()));
        w.column(
            candidates
                .iter()
                .map(|c| (c.latency_p50_ms as f32).to_le_bytes()),
        );
        w.column(
            candidates
                .iter()
                .map(|c| (c.latency_p95_ms as f32).to_le_bytes()),
        );
        w.column(
            candidates
                .iter()
                .map(|c| (c.failure_prob as f32).to_le_bytes()),
        );

        let mut w = Cursor::new(&mut self.bytes[labels_at..]);
        w.column(self.labels.iter().map(|(k, v)| {
            let [k0, k1] = k.to_le_bytes();
            let [v0, v1] = v.to_le_bytes();
            [k0, k1, v0, v1]
        }));
        w.column(self.names_end.iter().map(|e| e.to_le_bytes()));
        w.rest().copy_from_slice(self.names.as_bytes());
        self.names.truncate(names_len);
        self.names_end.truncate(names_count);
    }

    /// Writes the columns that depend only on the candidates, not on the predictions, at
    /// `at`, and zeroes the padding up to `end`.
    fn fill_static(&mut self, candidates: &[PolicyCandidate<'_>], at: usize, end: usize) {
        self.last.clear();
        self.last
            .extend(candidates.iter().map(|c| Arc::clone(c.candidate)));
        let mut ids = Vec::with_capacity(candidates.len() * 3);
        for c in candidates {
            let c = &**c.candidate;
            for name in [&c.provider, &c.region, &c.area] {
                ids.push(self.intern(name));
            }
        }
        self.bytes.resize(end, 0);
        let mut w = Cursor::new(&mut self.bytes[at..end]);
        w.column(
            candidates
                .iter()
                .map(|c| (c.candidate.rtt_ms as f32).to_le_bytes()),
        );
        for column in 0..3 {
            w.column(
                ids.iter()
                    .skip(column)
                    .step_by(3)
                    .map(|id| id.to_le_bytes()),
            );
        }
        // The codes of the contract (policy.wit).
        w.column(candidates.iter().map(|c| {
            [match c.candidate.provider_kind {
                ProviderKind::Local => 0,
                ProviderKind::Remote => 1,
                ProviderKind::Kubernetes => 2,
                ProviderKind::Edge => 3,
            }]
        }));
        w.column(candidates.iter().map(|c| {
            [match c.candidate.backend {
                IsolationBackend::Process => 0,
                IsolationBackend::Bubblewrap => 1,
                IsolationBackend::Gvisor => 2,
                IsolationBackend::RootlessOci => 3,
                IsolationBackend::Microvm => 4,
            }]
        }));
        w.column(
            candidates
                .iter()
                .map(|c| [c.candidate.isolation_level().strength()]),
        );
        w.rest().fill(0);
    }

    /// The index of catalog name `s`, added to the table if it is new.
    fn intern(&mut self, s: &str) -> u16 {
        if let Some(&i) = self.interned.get(s) {
            return i;
        }
        let i = self.push_name(s);
        self.interned.insert(s.to_owned(), i);
        i
    }

    /// Appends `s` to the string table and returns its index. MAX_NAMES keeps the table far
    /// below u16::MAX (three names per candidate at most, plus one request's strings), and
    /// catalog names keep it far below u32::MAX bytes.
    fn push_name(&mut self, s: &str) -> u16 {
        let i = u16::try_from(self.names_end.len()).unwrap_or(u16::MAX);
        self.names.push_str(s);
        self.names_end.push(count(self.names.len()));
        i
    }
}

/// A count or offset as the contract's `u32` (the host never builds inputs near 4 GiB).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Writes fixed-size little-endian values one after the other into a slice sized for them.
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn put<const W: usize>(&mut self, value: [u8; W]) {
        self.buf[self.at..self.at + W].copy_from_slice(&value);
        self.at += W;
    }

    /// One value per item, in one pass.
    fn column<const W: usize>(&mut self, items: impl ExactSizeIterator<Item = [u8; W]>) {
        let end = self.at + W * items.len();
        for (chunk, item) in self.buf[self.at..end].chunks_exact_mut(W).zip(items) {
            chunk.copy_from_slice(&item);
        }
        self.at = end;
    }

    /// The rest of the slice.
    fn rest(self) -> &'a mut [u8] {
        &mut self.buf[self.at..]
    }
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
    // One pass per column that the compiler can vectorize; the position only on failure.
    if raw.reject.iter().fold(0, |acc, r| acc | (r & !1)) != 0 {
        let i = raw.reject.iter().position(|r| *r > 1).unwrap_or_default();
        return Err(format!(
            "candidate {i}: reject is {}, expected 0 (keep) or 1 (reject)",
            raw.reject[i]
        ));
    }
    if raw.factor.iter().fold(false, |acc, f| acc | f.is_nan()) {
        let i = raw
            .factor
            .iter()
            .position(|f| f.is_nan())
            .unwrap_or_default();
        return Err(format!("candidate {i}: factor is NaN"));
    }
    let max_reason = raw.reason.iter().fold(0, |acc, r| acc.max(*r));
    if usize::from(max_reason) > raw.reasons.len() {
        let i = raw
            .reason
            .iter()
            .position(|r| *r == max_reason)
            .unwrap_or_default();
        return Err(format!(
            "candidate {i}: reason index {max_reason} is past the end of its {} reasons",
            raw.reasons.len()
        ));
    }
    let mut reasons = raw.reasons;
    for r in &mut reasons {
        cut_reason(r);
    }
    Ok(Verdicts {
        reasons,
        reject: raw.reject,
        factor: raw.factor,
        reason: raw.reason,
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
