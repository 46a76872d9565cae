//! The Sandstorm policy SDK: write a routing policy as a Rust type, compile it to a WebAssembly
//! component, and the router runs it on every request.
//!
//! ```ignore
//! use sandstorm_policy_sdk::{Candidates, Isolation, Policy, Request, Verdicts};
//!
//! struct UntrustedNeedsGvisor;
//!
//! impl Policy for UntrustedNeedsGvisor {
//!     fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {
//!         if req.label("trust") == Some("untrusted") {
//!             for c in cands.iter().filter(|c| c.isolation() < Isolation::Gvisor) {
//!                 out.reject(c.index(), "untrusted code needs gVisor or a micro-VM");
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! sandstorm_policy_sdk::export_policy!(UntrustedNeedsGvisor);
//! ```
//!
//! The contract (`policies-wasm/wit/policy.wit`) passes the request and its candidates as one
//! packed byte list, which is fast to cross the component boundary; [`Request`],
//! [`Candidates`] and [`Candidate`] read it through ordinary accessors, and [`Verdicts`]
//! interns reasons for you.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "sandstorm_policy_sdk::bindings",
        export_macro_name: "export_world",
    });
}

/// ABI version of the contract this SDK speaks (the WIT package version).
pub const ABI_VERSION: &str = "3.0.0";

/// Who operates a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Local,
    Remote,
    Kubernetes,
    Edge,
}

impl ProviderKind {
    /// The contract's code (`kind` column); unknown codes read as `Remote`, the least trusted
    /// operator a newer host could add.
    fn from_code(code: u8) -> Self {
        match code {
            0 => ProviderKind::Local,
            2 => ProviderKind::Kubernetes,
            3 => ProviderKind::Edge,
            _ => ProviderKind::Remote,
        }
    }
}

/// The isolation mechanism of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Process,
    Bubblewrap,
    Gvisor,
    RootlessOci,
    Microvm,
}

impl Backend {
    /// The contract's code (`backend` column); unknown codes read as `Process`, the weakest.
    fn from_code(code: u8) -> Self {
        match code {
            1 => Backend::Bubblewrap,
            2 => Backend::Gvisor,
            3 => Backend::RootlessOci,
            4 => Backend::Microvm,
            _ => Backend::Process,
        }
    }
}

/// Isolation strength of a candidate, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isolation {
    /// A plain process with rlimits.
    Process = 1,
    /// Linux namespaces (bubblewrap, OCI containers).
    Namespace = 2,
    /// A user-space kernel (gVisor).
    Gvisor = 3,
    /// A hardware-virtualised micro-VM.
    Microvm = 4,
}

impl Isolation {
    fn from_code(code: u8) -> Self {
        match code {
            0 | 1 => Isolation::Process,
            2 => Isolation::Namespace,
            3 => Isolation::Gvisor,
            _ => Isolation::Microvm,
        }
    }
}

/// The contract's `input` bytes, checked once: every accessor below reads inside them.
#[derive(Debug)]
struct Input {
    bytes: Vec<u8>,
    n: usize,
    n_labels: usize,
    /// Where the label pairs and the string ends start.
    labels_at: usize,
    ends_at: usize,
    /// The interned strings, validated as UTF-8 once.
    strings: String,
    n_strings: usize,
    /// Byte range of each string in `strings`, worked out on the first lookup (policies
    /// that read no names never pay for it).
    spans: std::cell::OnceCell<Vec<(u32, u32)>>,
}

/// Bytes of `input` before the candidate columns.
const HEADER_BYTES: usize = 72;
/// Where the columns start, in units of `n` bytes from [`HEADER_BYTES`]: cost (8 bytes),
/// p50, p95, failure, RTT (4 bytes each), provider, region, area (2 bytes each), kind,
/// backend, isolation (1 byte each).
const COST: usize = 0;
const P50: usize = 8;
const P95: usize = 12;
const FAILURE: usize = 16;
const RTT: usize = 20;
const PROVIDER: usize = 24;
const REGION: usize = 26;
const AREA: usize = 28;
const KIND: usize = 30;
const BACKEND: usize = 31;
const ISOLATION: usize = 32;
const COLUMN_BYTES: usize = 33;

impl Input {
    fn decode(bytes: Vec<u8>) -> Result<Self, String> {
        let header = |at: usize| -> Result<usize, String> {
            let word = bytes
                .get(at..at + 4)
                .ok_or_else(|| format!("input of {} bytes has no header", bytes.len()))?;
            Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize)
        };
        let (n, n_labels, n_strings, strings_len) =
            (header(0)?, header(4)?, header(8)?, header(12)?);
        let labels_at = (HEADER_BYTES + COLUMN_BYTES * n).next_multiple_of(4);
        let ends_at = labels_at + 4 * n_labels;
        let strings_at = ends_at + 4 * n_strings;
        if bytes.len() != strings_at + strings_len || bytes.len() < HEADER_BYTES {
            return Err(format!(
                "input is {} bytes, expected {} for {n} candidates, {n_labels} labels and {n_strings} strings (host and SDK disagree on ABI {ABI_VERSION})",
                bytes.len(),
                strings_at + strings_len
            ));
        }
        let strings = std::str::from_utf8(&bytes[strings_at..])
            .map_err(|e| format!("interned strings are not UTF-8: {e}"))?
            .to_owned();
        Ok(Self {
            bytes,
            n,
            n_labels,
            labels_at,
            ends_at,
            strings,
            n_strings,
            spans: std::cell::OnceCell::new(),
        })
    }

    /// The `W` bytes at `at` (one bounds check).
    fn bytes_at<const W: usize>(&self, at: usize) -> [u8; W] {
        match self.bytes.get(at..at + W) {
            Some(b) => b.try_into().unwrap_or([0; W]),
            None => [0; W],
        }
    }

    fn u8_at(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.bytes_at(at))
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes_at(at))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes_at(at))
    }

    fn f32_at(&self, at: usize) -> f32 {
        f32::from_le_bytes(self.bytes_at(at))
    }

    fn f64_at(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.bytes_at(at))
    }

    /// Byte offset of entry `i` of the column starting `column` × n bytes after the header,
    /// whose entries are `width` bytes wide.
    fn at(&self, column: usize, width: usize, i: usize) -> usize {
        HEADER_BYTES + column * self.n + width * i
    }

    /// Interned string `id` (empty when out of range or not on character boundaries).
    fn string(&self, id: u16) -> &str {
        let spans = self.spans.get_or_init(|| {
            let ends = self
                .bytes
                .get(self.ends_at..self.ends_at + 4 * self.n_strings)
                .unwrap_or_default();
            let mut start = 0;
            ends.chunks_exact(4)
                .map(|end| {
                    let end = u32::from_le_bytes([end[0], end[1], end[2], end[3]]);
                    let span = (start, end);
                    start = end;
                    span
                })
                .collect()
        });
        match spans.get(usize::from(id)) {
            Some(&(start, end)) => self.strings.get(start as usize..end as usize).unwrap_or(""),
            None => "",
        }
    }

    fn label(&self, i: usize) -> (&str, &str) {
        let at = self.labels_at + 4 * i;
        (
            self.string(self.u16_at(at)),
            self.string(self.u16_at(at + 2)),
        )
    }
}

/// The request being routed.
#[derive(Debug)]
pub struct Request {
    input: std::rc::Rc<Input>,
}

impl Request {
    /// Tenant the request belongs to.
    pub fn tenant(&self) -> &str {
        self.input.string(self.input.u16_at(60))
    }

    /// Decision time in milliseconds since the Unix epoch (UTC).
    pub fn now_unix_ms(&self) -> i64 {
        self.input.u64_at(16) as i64
    }

    /// Per-decision random seed.
    pub fn seed(&self) -> u64 {
        self.input.u64_at(24)
    }

    /// `optimize_cost`, `optimize_latency` or `balanced`.
    pub fn strategy(&self) -> &str {
        self.input.string(self.input.u16_at(62))
    }

    /// `python`, `node`, `bash` or `shell`.
    pub fn language(&self) -> &str {
        self.input.string(self.input.u16_at(64))
    }

    pub fn cpu(&self) -> f64 {
        self.input.f64_at(32)
    }

    pub fn memory_mib(&self) -> u64 {
        self.input.u64_at(48)
    }

    pub fn gpu_count(&self) -> u32 {
        self.input.u32_at(56)
    }

    pub fn timeout_s(&self) -> f64 {
        self.input.f64_at(40)
    }

    pub fn allow_network(&self) -> bool {
        self.input.u8_at(66) != 0
    }

    /// The value of label `key`, if the request has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.input.n_labels);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (k, v) = self.input.label(mid);
            match k.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(v),
            }
        }
        None
    }

    /// All labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        (0..self.input.n_labels).map(|i| self.input.label(i))
    }
}

/// Every candidate of the request.
#[derive(Debug)]
pub struct Candidates {
    input: std::rc::Rc<Input>,
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.input.n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate `index` (panics when out of range, which traps the policy).
    pub fn get(&self, index: usize) -> Candidate<'_> {
        assert!(index < self.len(), "candidate index {index} out of range");
        Candidate {
            input: &self.input,
            index,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Candidate<'_>> {
        (0..self.len()).map(|index| Candidate {
            input: &self.input,
            index,
        })
    }
}

/// One candidate: a provider × isolation backend × region, with its predictions.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    input: &'a Input,
    index: usize,
}

impl<'a> Candidate<'a> {
    /// Position of the candidate, the index [`Verdicts`] takes.
    pub fn index(&self) -> usize {
        self.index
    }

    fn name(&self, column: usize) -> &'a str {
        let input = self.input;
        input.string(input.u16_at(input.at(column, 2, self.index)))
    }

    fn code(&self, column: usize) -> u8 {
        self.input.u8_at(self.input.at(column, 1, self.index))
    }

    fn f32(&self, column: usize) -> f32 {
        self.input.f32_at(self.input.at(column, 4, self.index))
    }

    /// Provider name, e.g. `e2b`, `modal`, `local`.
    pub fn provider(&self) -> &'a str {
        self.name(PROVIDER)
    }

    /// Region or site, e.g. `eu-west-1`.
    pub fn region(&self) -> &'a str {
        self.name(REGION)
    }

    /// Coarse geography: `us`, `eu`, `ap`, `local`, ...
    pub fn area(&self) -> &'a str {
        self.name(AREA)
    }

    pub fn kind(&self) -> ProviderKind {
        ProviderKind::from_code(self.code(KIND))
    }

    pub fn backend(&self) -> Backend {
        Backend::from_code(self.code(BACKEND))
    }

    pub fn isolation(&self) -> Isolation {
        Isolation::from_code(self.code(ISOLATION))
    }

    /// Typical round trip from the router, ms.
    pub fn rtt_ms(&self) -> f32 {
        self.f32(RTT)
    }

    /// Predicted cost of the run, USD.
    pub fn cost_usd(&self) -> f64 {
        self.input.f64_at(self.input.at(COST, 8, self.index))
    }

    pub fn latency_p50_ms(&self) -> f32 {
        self.f32(P50)
    }

    pub fn latency_p95_ms(&self) -> f32 {
        self.f32(P95)
    }

    pub fn failure_prob(&self) -> f32 {
        self.f32(FAILURE)
    }
}

/// The policy's verdicts, one per candidate; every candidate starts kept with factor 1.
#[derive(Debug)]
pub struct Verdicts {
    raw: bindings::Verdicts,
}

impl Verdicts {
    fn new(n: usize) -> Self {
        Self {
            raw: bindings::Verdicts {
                reject: vec![0; n],
                factor: vec![1.0; n],
                reason: vec![0; n],
                reasons: Vec::new(),
            },
        }
    }

    /// Removes candidate `index` from the decision, saying why: a text, or a [`Reason`]
    /// interned once with [`Verdicts::reason`] (faster when many candidates share it).
    pub fn reject(&mut self, index: usize, reason: impl IntoReason) {
        self.raw.reject[index] = 1;
        self.raw.reason[index] = reason.into_reason(self).0;
    }

    /// Multiplies candidate `index`'s objective by `factor` (lower is better: < 1 favours it,
    /// > 1 penalises it), saying why (a text or a [`Reason`]).
    pub fn adjust(&mut self, index: usize, factor: f32, reason: impl IntoReason) {
        self.raw.factor[index] *= factor;
        self.raw.reason[index] = reason.into_reason(self).0;
    }

    /// Whether candidate `index` is rejected so far.
    pub fn is_rejected(&self, index: usize) -> bool {
        self.raw.reject[index] == 1
    }

    /// Interns `text` once, for [`Verdicts::reject`] and [`Verdicts::adjust`] calls that
    /// share it: passing the same `&str` to each call compares it with the reasons so far
    /// every time.
    pub fn reason(&mut self, text: &str) -> Reason {
        let pos = match self.raw.reasons.iter().position(|r| r == text) {
            Some(pos) => pos,
            None => {
                self.raw.reasons.push(text.to_owned());
                self.raw.reasons.len() - 1
            }
        };
        Reason(u16::try_from(pos + 1).unwrap_or(u16::MAX))
    }
}

/// A reason interned in one [`Verdicts`] by [`Verdicts::reason`]: only meaningful there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(u16);

/// What [`Verdicts::reject`] and [`Verdicts::adjust`] take as the reason: a `&str` (or
/// `String`), or a [`Reason`] interned beforehand.
pub trait IntoReason {
    fn into_reason(self, verdicts: &mut Verdicts) -> Reason;
}

impl IntoReason for Reason {
    fn into_reason(self, _: &mut Verdicts) -> Reason {
        self
    }
}

impl IntoReason for &str {
    fn into_reason(self, verdicts: &mut Verdicts) -> Reason {
        verdicts.reason(self)
    }
}

impl IntoReason for &String {
    fn into_reason(self, verdicts: &mut Verdicts) -> Reason {
        verdicts.reason(self)
    }
}

impl IntoReason for String {
    fn into_reason(self, verdicts: &mut Verdicts) -> Reason {
        verdicts.reason(&self)
    }
}

/// A routing policy: judges every candidate of one request.
pub trait Policy {
    /// Fill `out` with rejections and factors. Returning `Err` tells the router the policy
    /// could not decide; the router applies the policy's failure mode.
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String>;
}

#[doc(hidden)]
pub fn __run<P: Policy>(input: Vec<u8>) -> Result<bindings::Verdicts, String> {
    let (req, cands) = decode(input)?;
    let mut out = Verdicts::new(cands.len());
    P::filter_score(&req, &cands, &mut out)?;
    Ok(out.raw)
}

/// Decodes the contract's `input` bytes (for test policies that bypass [`Verdicts`]).
#[doc(hidden)]
pub fn decode(input: Vec<u8>) -> Result<(Request, Candidates), String> {
    let input = std::rc::Rc::new(Input::decode(input)?);
    Ok((
        Request {
            input: std::rc::Rc::clone(&input),
        },
        Candidates { input },
    ))
}

/// Exports `$policy` (a type implementing [`Policy`]) as the component's `filter-score`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        struct __SandstormPolicyExport;

        impl $crate::bindings::Guest for __SandstormPolicyExport {
            fn filter_score(
                input: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<$crate::bindings::Verdicts, ::std::string::String> {
                $crate::__run::<$policy>(input)
            }
        }

        $crate::bindings::export_world!(__SandstormPolicyExport with_types_in $crate::bindings);
    };
}
