//! Routing policies compiled to WebAssembly: the contract, the sandboxed host, the signed
//! registry and the authoring tools.
//!
//! A policy is a pure function, written by a *policy author* with the guest SDK
//! (`policies-wasm/guest/sdk`) and compiled to a WebAssembly component against the WIT world
//! in `policies-wasm/wit/policy.wit`. The router calls it once per request with the request and
//! every candidate (with predictions) and gets one verdict per candidate: reject with a reason,
//! or multiply the candidate's objective by a factor.
//!
//! The pieces:
//! - [`PolicyEngine`]: wasmtime configured for hostile guests (pooling allocator, memory
//!   limit, epoch deadline or fuel, stack limit) and [`PolicyEngine::compile`], which refuses
//!   oversized modules, core modules, imports of any kind and wrong exports.
//! - [`PolicyStore`]: the active policies, hot-swapped atomically, with crash-loop fallback to
//!   the last good version, and [`PolicyWorker`]: per-thread warm instances that run a request.
//! - [`Registry`]: signed, versioned policy components in a directory ([`TrustedKeys`],
//!   [`PolicyKey`], [`Manifest`]).
//! - [`author`]: scaffold, build and componentize a policy crate.

pub mod author;
mod contract;
mod engine;
mod error;
mod registry;
mod store;
mod worker;

pub use contract::{ABI_VERSION, FACTOR_RANGE, PolicyCandidate, Verdicts};
pub use engine::{CompiledPolicy, PolicyEngine, PolicyLimits};
pub use error::PoliciesError;
pub use registry::{
    FailureMode, Manifest, PolicyKey, PolicyKind, Registry, RegistryEntry, SignedFiles,
    TrustedKeys, VerifiedPolicy, check_name, parse_version, sha256_hex, verify_bytes, verify_dir,
};
pub use store::{CRASH_LOOP_THRESHOLD, PolicyStore, PolicySummary, RegistryWatch, SyncReport};
pub use worker::{FailureKind, HostState, PolicyFailure, PolicyOutcome, PolicyWorker};
