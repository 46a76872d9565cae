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
//! The contract (`policies-wasm/wit/policy.wit`) passes candidates as columns with interned
//! strings, which is fast to cross the component boundary; [`Candidates`] and [`Candidate`]
//! turn that back into ordinary accessors, and [`Verdicts`] interns reasons for you.

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
pub const ABI_VERSION: &str = "2.0.0";

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

/// The request being routed.
#[derive(Debug)]
pub struct Request {
    raw: bindings::Request,
}

impl Request {
    /// Tenant the request belongs to.
    pub fn tenant(&self) -> &str {
        &self.raw.tenant
    }

    /// Decision time in milliseconds since the Unix epoch (UTC).
    pub fn now_unix_ms(&self) -> i64 {
        self.raw.now_unix_ms
    }

    /// Per-decision random seed.
    pub fn seed(&self) -> u64 {
        self.raw.seed
    }

    /// `optimize_cost`, `optimize_latency` or `balanced`.
    pub fn strategy(&self) -> &str {
        &self.raw.strategy
    }

    /// `python`, `node`, `bash` or `shell`.
    pub fn language(&self) -> &str {
        &self.raw.language
    }

    pub fn cpu(&self) -> f64 {
        self.raw.cpu
    }

    pub fn memory_mib(&self) -> u64 {
        self.raw.memory_mib
    }

    pub fn gpu_count(&self) -> u32 {
        self.raw.gpu_count
    }

    pub fn timeout_s(&self) -> f64 {
        self.raw.timeout_s
    }

    pub fn allow_network(&self) -> bool {
        self.raw.allow_network
    }

    /// The value of label `key`, if the request has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.raw
            .labels
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.raw.labels[i].1.as_str())
    }

    /// All labels, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.raw
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Every candidate of the request.
#[derive(Debug)]
pub struct Candidates {
    raw: bindings::Candidates,
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.raw.provider.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Candidate `index` (panics when out of range, which traps the policy).
    pub fn get(&self, index: usize) -> Candidate<'_> {
        assert!(index < self.len(), "candidate index {index} out of range");
        Candidate { all: self, index }
    }

    pub fn iter(&self) -> impl Iterator<Item = Candidate<'_>> {
        (0..self.len()).map(|index| Candidate { all: self, index })
    }

    fn name(&self, id: u16) -> &str {
        let i = usize::from(id);
        let end = self.raw.names_end.get(i).map_or(0, |&e| e as usize);
        let start = match i {
            0 => 0,
            _ => self.raw.names_end.get(i - 1).map_or(end, |&e| e as usize),
        };
        self.raw.names.get(start..end).unwrap_or("")
    }
}

/// One candidate: a provider × isolation backend × region, with its predictions.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    all: &'a Candidates,
    index: usize,
}

impl<'a> Candidate<'a> {
    /// Position of the candidate, the index [`Verdicts`] takes.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Provider name, e.g. `e2b`, `modal`, `local`.
    pub fn provider(&self) -> &'a str {
        self.all.name(self.all.raw.provider[self.index])
    }

    /// Region or site, e.g. `eu-west-1`.
    pub fn region(&self) -> &'a str {
        self.all.name(self.all.raw.region[self.index])
    }

    /// Coarse geography: `us`, `eu`, `ap`, `local`, ...
    pub fn area(&self) -> &'a str {
        self.all.name(self.all.raw.area[self.index])
    }

    pub fn kind(&self) -> ProviderKind {
        ProviderKind::from_code(self.all.raw.kind[self.index])
    }

    pub fn backend(&self) -> Backend {
        Backend::from_code(self.all.raw.backend[self.index])
    }

    pub fn isolation(&self) -> Isolation {
        Isolation::from_code(self.all.raw.isolation[self.index])
    }

    /// Typical round trip from the router, ms.
    pub fn rtt_ms(&self) -> f32 {
        self.all.raw.rtt_ms[self.index]
    }

    /// Predicted cost of the run, USD.
    pub fn cost_usd(&self) -> f64 {
        self.all.raw.cost_usd[self.index]
    }

    pub fn latency_p50_ms(&self) -> f32 {
        self.all.raw.latency_p50_ms[self.index]
    }

    pub fn latency_p95_ms(&self) -> f32 {
        self.all.raw.latency_p95_ms[self.index]
    }

    pub fn failure_prob(&self) -> f32 {
        self.all.raw.failure_prob[self.index]
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

    /// Removes candidate `index` from the decision, saying why.
    pub fn reject(&mut self, index: usize, reason: &str) {
        self.raw.reject[index] = 1;
        self.raw.reason[index] = self.intern(reason);
    }

    /// Multiplies candidate `index`'s objective by `factor` (lower is better: < 1 favours it,
    /// > 1 penalises it), saying why.
    pub fn adjust(&mut self, index: usize, factor: f32, reason: &str) {
        self.raw.factor[index] *= factor;
        self.raw.reason[index] = self.intern(reason);
    }

    /// Whether candidate `index` is rejected so far.
    pub fn is_rejected(&self, index: usize) -> bool {
        self.raw.reject[index] == 1
    }

    fn intern(&mut self, reason: &str) -> u16 {
        let pos = match self.raw.reasons.iter().position(|r| r == reason) {
            Some(pos) => pos,
            None => {
                self.raw.reasons.push(reason.to_owned());
                self.raw.reasons.len() - 1
            }
        };
        u16::try_from(pos + 1).unwrap_or(u16::MAX)
    }
}

/// A routing policy: judges every candidate of one request.
pub trait Policy {
    /// Fill `out` with rejections and factors. Returning `Err` tells the router the policy
    /// could not decide; the router applies the policy's failure mode.
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String>;
}

#[doc(hidden)]
pub fn __run<P: Policy>(
    req: bindings::Request,
    cands: bindings::Candidates,
) -> Result<bindings::Verdicts, String> {
    let req = Request { raw: req };
    let cands = Candidates { raw: cands };
    let mut out = Verdicts::new(cands.len());
    P::filter_score(&req, &cands, &mut out)?;
    Ok(out.raw)
}

/// Exports `$policy` (a type implementing [`Policy`]) as the component's `filter-score`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        struct __SandstormPolicyExport;

        impl $crate::bindings::Guest for __SandstormPolicyExport {
            fn filter_score(
                req: $crate::bindings::Request,
                cands: $crate::bindings::Candidates,
            ) -> ::core::result::Result<$crate::bindings::Verdicts, ::std::string::String> {
                $crate::__run::<$policy>(req, cands)
            }
        }

        $crate::bindings::export_world!(__SandstormPolicyExport with_types_in $crate::bindings);
    };
}
