//! A worker's warm policy instances and the call itself: one instance per policy version,
//! reused from request to request, dropped and re-instantiated (cheaply, from the pool) after
//! any trap; per-call limits on time (epochs or fuel) and memory; failures classified so the
//! router can apply each policy's failure mode and explain it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandstorm_features::{DecisionContext, RunRequest};
use serde::Serialize;
use wasmtime::{ResourceLimiter, Store, Trap};

use crate::contract::{InputBuffers, Policy, PolicyCandidate, Verdicts, validate};
use crate::engine::{CompiledPolicy, PolicyEngine};
use crate::registry::{FailureMode, PolicyKind};
use crate::store::{ActiveVersion, PolicySlot, PolicyStore};

/// Largest table a policy may grow (Rust guests use one small function table).
const MAX_TABLE_ELEMENTS: usize = 10_000;

/// Per-store state: the memory limiter, and whether it refused a growth (to tell a memory
/// bomb from an ordinary trap).
pub struct HostState {
    max_memory: usize,
    memory_refused: bool,
}

impl fmt::Debug for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostState")
            .field("max_memory", &self.max_memory)
            .finish()
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Why a policy call produced no usable verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Ran past its deadline (epoch interruption).
    Timeout,
    /// Ran out of fuel (deterministic mode).
    OutOfFuel,
    /// Tried to grow its memory past the limit.
    MemoryLimit,
    /// Any other trap (unreachable, out-of-bounds access, stack overflow, ...).
    Trap,
    /// Answered something that breaks the contract (wrong counts, NaN factors, ...).
    InvalidOutput,
    /// Returned `err` itself.
    PolicyError,
    /// Could not be instantiated (e.g. the pool is exhausted).
    Instantiation,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfFuel => "out of fuel",
            FailureKind::MemoryLimit => "memory limit",
            FailureKind::Trap => "trap",
            FailureKind::InvalidOutput => "invalid output",
            FailureKind::PolicyError => "policy error",
            FailureKind::Instantiation => "instantiation",
        }
    }
}

/// A failed policy call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for PolicyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// What one policy said about one request.
#[derive(Debug, Clone)]
pub struct PolicyOutcome {
    pub name: String,
    /// The version that ran (the last good one after a fallback).
    pub version: String,
    pub kind: PolicyKind,
    pub failure_mode: FailureMode,
    pub result: Result<Verdicts, PolicyFailure>,
    pub elapsed: Duration,
    /// Whether the policy runs its last good version because the newest kept failing.
    pub fell_back: bool,
}

struct Warm {
    store: Store<HostState>,
    policy: Policy,
}

/// One worker's view of a [`PolicyStore`]: warm instances and reused argument buffers.
/// Not shared between threads; create one per worker with [`PolicyStore::worker`].
pub struct PolicyWorker {
    store: PolicyStore,
    warm: HashMap<u64, Warm>,
    buffers: InputBuffers,
}

impl fmt::Debug for PolicyWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyWorker")
            .field("warm_instances", &self.warm.len())
            .finish_non_exhaustive()
    }
}

impl PolicyWorker {
    pub(crate) fn new(store: PolicyStore) -> Self {
        Self {
            store,
            warm: HashMap::new(),
            buffers: InputBuffers::default(),
        }
    }

    /// Whether this worker serves `store` (a worker is tied to the store that made it).
    pub fn is_for(&self, store: &PolicyStore) -> bool {
        self.store.same_as(store)
    }

    /// Runs every active policy once on `candidates` (each with its predictions), in name
    /// order. Never fails: a failing policy yields a failed outcome.
    pub fn evaluate(
        &mut self,
        request: &RunRequest,
        ctx: &DecisionContext,
        seed: u64,
        candidates: &[PolicyCandidate<'_>],
    ) -> Vec<PolicyOutcome> {
        let set = self.store.snapshot();
        if set.slots.is_empty() {
            return Vec::new();
        }
        // Drop instances of versions no longer active.
        if self.warm.len() > set.slots.len() {
            let live: Vec<u64> = set.slots.iter().map(|s| s.active().id).collect();
            self.warm.retain(|id, _| live.contains(id));
        }
        self.buffers.fill(request, ctx, seed, candidates);
        let mut outcomes = Vec::with_capacity(set.slots.len());
        for slot in &set.slots {
            let version = Arc::clone(slot.active());
            let start = Instant::now();
            let result = self.call(&version, candidates.len());
            let elapsed = start.elapsed();
            match &result {
                Ok(_) => slot.record_success(&version),
                Err(failure) => {
                    tracing::debug!(policy = %version.policy.manifest.id(), %failure, "policy failed");
                    slot.record_failure(&version);
                }
            }
            outcomes.push(outcome(slot, &version, result, elapsed));
        }
        outcomes
    }

    /// Makes sure every active policy has a warm instance (e.g. before serving traffic).
    pub fn warm_up(&mut self) -> Vec<(String, PolicyFailure)> {
        let set = self.store.snapshot();
        let mut failures = Vec::new();
        for slot in &set.slots {
            let version = slot.active();
            if let Err(f) = instance(&mut self.warm, version) {
                failures.push((version.policy.manifest.id(), f));
            }
        }
        failures
    }

    fn call(&mut self, version: &ActiveVersion, n: usize) -> Result<Verdicts, PolicyFailure> {
        let engine = version.policy.engine.clone();
        let warm = instance(&mut self.warm, version)?;
        warm.store.data_mut().memory_refused = false;
        warm.store.set_epoch_deadline(engine.deadline_ticks());
        if let Some(fuel) = engine.limits().fuel {
            warm.store
                .set_fuel(fuel)
                .map_err(|e| classify(&warm.store, &e, FailureKind::Trap))?;
        }
        let answer = warm
            .policy
            .call_filter_score(&mut warm.store, &self.buffers.bytes);
        match answer {
            Ok(Ok(raw)) => validate(raw, n).map_err(|message| PolicyFailure {
                kind: FailureKind::InvalidOutput,
                message,
            }),
            Ok(Err(message)) => Err(PolicyFailure {
                kind: FailureKind::PolicyError,
                message,
            }),
            Err(e) => {
                let failure = classify(&warm.store, &e, FailureKind::Trap);
                // A trapped instance is poisoned: start from a fresh one next time.
                self.warm.remove(&version.id);
                Err(failure)
            }
        }
    }
}

impl CompiledPolicy {
    /// Instantiates the policy once in a fresh store and drops it: what a worker pays for a
    /// cold instance (from the pool), and a load-time check that instantiation works.
    pub fn check_instantiation(&self) -> Result<(), PolicyFailure> {
        let mut store = new_store(&self.engine);
        self.pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| classify(&store, &e, FailureKind::Instantiation))
    }
}

fn new_store(engine: &PolicyEngine) -> Store<HostState> {
    let mut store = Store::new(
        engine.engine(),
        HostState {
            max_memory: engine.limits().memory_bytes,
            memory_refused: false,
        },
    );
    store.limiter(|s| s);
    store.epoch_deadline_trap();
    store
}

/// The warm instance of `version`, instantiated from the pool when there is none.
fn instance<'w>(
    warm: &'w mut HashMap<u64, Warm>,
    version: &ActiveVersion,
) -> Result<&'w mut Warm, PolicyFailure> {
    match warm.entry(version.id) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(slot) => {
            let mut store = new_store(&version.policy.engine);
            let policy = version
                .policy
                .pre
                .instantiate(&mut store)
                .map_err(|e| classify(&store, &e, FailureKind::Instantiation))?;
            Ok(slot.insert(Warm { store, policy }))
        }
    }
}

fn classify(store: &Store<HostState>, e: &wasmtime::Error, default: FailureKind) -> PolicyFailure {
    let kind = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
        _ if store.data().memory_refused => FailureKind::MemoryLimit,
        _ => default,
    };
    let message = match kind {
        FailureKind::Timeout => "ran past its deadline and was interrupted".to_owned(),
        FailureKind::OutOfFuel => "ran out of fuel".to_owned(),
        FailureKind::MemoryLimit => format!(
            "tried to grow its memory past the limit of {} MiB",
            store.data().max_memory >> 20
        ),
        _ => format!("{e:#}"),
    };
    PolicyFailure { kind, message }
}

fn outcome(
    slot: &PolicySlot,
    version: &ActiveVersion,
    result: Result<Verdicts, PolicyFailure>,
    elapsed: Duration,
) -> PolicyOutcome {
    let m = &version.policy.manifest;
    PolicyOutcome {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.kind,
        failure_mode: m.failure_mode,
        result,
        elapsed,
        fell_back: version.id != slot.current.id,
    }
}
