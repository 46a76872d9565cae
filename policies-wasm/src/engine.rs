//! The wasmtime engine policies run in: its configuration (pooling allocator, epoch
//! interruption or fuel, stack limit), the clock thread that advances epochs, and loading a
//! component into a [`CompiledPolicy`] after checking its size, imports and exports.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::PoliciesError;
use crate::contract::{ABI_VERSION, PolicyPre};
use crate::registry::Manifest;

/// Resource limits applied to every policy call.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyLimits {
    /// Largest linear memory a policy may grow to.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call (enforced with epochs, at `epoch_tick` granularity).
    pub deadline: Duration,
    /// Largest module accepted at load time.
    pub max_module_bytes: usize,
    /// Largest native stack wasm code may use.
    pub max_wasm_stack: usize,
    /// Deterministic mode (tests, replay): a fuel budget per call instead of a wall clock,
    /// so that the same input always runs the same instructions and stops at the same place.
    pub fuel: Option<u64>,
    /// How many policy instances may be live at once in the pool (all workers, all policies).
    pub max_instances: u32,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            deadline: Duration::from_millis(5),
            max_module_bytes: 8 << 20,
            max_wasm_stack: 512 << 10,
            fuel: None,
            max_instances: 256,
        }
    }
}

impl PolicyLimits {
    /// Limits for replay and tests: a fuel budget decides when a policy has run too long, so
    /// a loaded machine cannot change the outcome; the wall clock stays as a generous backstop.
    pub fn deterministic() -> Self {
        Self {
            fuel: Some(200_000_000),
            deadline: Duration::from_secs(2),
            ..Self::default()
        }
    }
}

/// How long one epoch lasts: the resolution of the per-call deadline.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A wasmtime engine configured for policies, with the clock that enforces deadlines.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<crate::worker::HostState>,
    limits: PolicyLimits,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl PolicyEngine {
    pub fn new(limits: PolicyLimits) -> Result<Self, PoliciesError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances)
            .total_memories(limits.max_instances)
            .total_tables(limits.max_instances)
            .max_memory_size(limits.memory_bytes)
            .max_memories_per_module(1)
            .max_tables_per_module(1);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(limits.max_wasm_stack)
            .epoch_interruption(true)
            .consume_fuel(limits.fuel.is_some())
            .wasm_component_model(true);
        // For policy authors and us profiling guest code with `perf`: name the compiled
        // functions in /tmp/perf-PID.map (docs/policies.md).
        if std::env::var_os("SANDSTORM_POLICY_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(|e| PoliciesError::Internal(format!("configuring wasmtime: {e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("policy-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PoliciesError::Internal(format!("starting the epoch thread: {e}")))?
        };
        // The policy world imports nothing, so the linker stays empty: any import a component
        // declares is refused at load time.
        let linker = Linker::new(&engine);
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                limits,
                stop,
                ticker: Some(ticker),
            }),
        })
    }

    pub fn limits(&self) -> &PolicyLimits {
        &self.inner.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Deadline of one call, in epochs.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.inner.limits.deadline.as_nanos() / EPOCH_TICK.as_nanos();
        // One extra tick: the current epoch may end right after the call starts.
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Compiles `bytes` (a component) and checks it against the contract. `what` names it in
    /// errors (a file or `name@version`).
    pub fn compile(
        &self,
        what: &str,
        bytes: &[u8],
        manifest: Manifest,
    ) -> Result<CompiledPolicy, PoliciesError> {
        let limit = self.inner.limits.max_module_bytes;
        if bytes.len() > limit {
            return Err(PoliciesError::TooLarge {
                what: what.to_owned(),
                size: bytes.len(),
                limit,
            });
        }
        if manifest.abi_major() != abi_major(ABI_VERSION) {
            return Err(PoliciesError::AbiMismatch {
                name: manifest.name.clone(),
                found: manifest.abi_version.clone(),
                expected: ABI_VERSION,
            });
        }
        if wasmparser_is_core_module(bytes) {
            return Err(PoliciesError::InvalidComponent {
                what: what.to_owned(),
                reason: "this is a core WebAssembly module, not a component; build it with `sandstorm policy build`".into(),
            });
        }
        let component = Component::new(&self.inner.engine, bytes).map_err(|e| {
            PoliciesError::InvalidComponent {
                what: what.to_owned(),
                reason: format!("{e:#}"),
            }
        })?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.inner.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if !imports.is_empty() {
            return Err(PoliciesError::ForbiddenImports {
                what: what.to_owned(),
                imports: imports.join(", "),
            });
        }
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            PoliciesError::InvalidComponent {
                what: what.to_owned(),
                reason: format!("{e:#}"),
            }
        })?;
        let pre = PolicyPre::new(instance_pre).map_err(|e| PoliciesError::WrongExports {
            what: what.to_owned(),
            abi: ABI_VERSION,
            reason: format!("{e:#}"),
        })?;
        Ok(CompiledPolicy {
            manifest,
            pre,
            engine: self.clone(),
        })
    }
}

fn abi_major(v: &str) -> &str {
    v.split('.').next().unwrap_or(v)
}

/// A core module starts with the magic and version 1; a component with layer 1.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A policy compiled and checked against the contract, ready to instantiate.
pub struct CompiledPolicy {
    pub manifest: Manifest,
    pub(crate) pre: PolicyPre<crate::worker::HostState>,
    pub(crate) engine: PolicyEngine,
}

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl Manifest {
    fn abi_major(&self) -> &str {
        abi_major(&self.abi_version)
    }
}
