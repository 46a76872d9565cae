//! The set of active policies, swapped atomically: installing a new version (by hand or from a
//! registry) never disturbs a decision in flight, a version that fails to load leaves the old
//! one in place, and a version that keeps crashing falls back to the last version that worked.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::PoliciesError;
use crate::engine::{CompiledPolicy, PolicyEngine};
use crate::registry::{Manifest, Registry, TrustedKeys};
use crate::worker::PolicyWorker;

/// Consecutive failures after which a version falls back to the last good one.
pub const CRASH_LOOP_THRESHOLD: u32 = 3;

/// One loaded version of a policy and its health.
pub(crate) struct ActiveVersion {
    /// Unique within the process: keys workers' warm instances.
    pub(crate) id: u64,
    pub(crate) policy: CompiledPolicy,
    pub(crate) successes: AtomicU64,
}

/// A policy by name: the version in use and the one to fall back to.
pub(crate) struct PolicySlot {
    pub(crate) current: Arc<ActiveVersion>,
    pub(crate) last_good: Option<Arc<ActiveVersion>>,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) fell_back: AtomicBool,
}

impl PolicySlot {
    fn new(current: Arc<ActiveVersion>, last_good: Option<Arc<ActiveVersion>>) -> Self {
        Self {
            current,
            last_good,
            consecutive_failures: AtomicU32::new(0),
            fell_back: AtomicBool::new(false),
        }
    }

    /// The version to run now.
    pub(crate) fn active(&self) -> &Arc<ActiveVersion> {
        match (&self.last_good, self.fell_back.load(Ordering::Relaxed)) {
            (Some(good), true) => good,
            _ => &self.current,
        }
    }

    pub(crate) fn record_success(&self, version: &ActiveVersion) {
        version.successes.fetch_add(1, Ordering::Relaxed);
        if version.id == self.current.id {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Returns true when this failure made the slot fall back to its last good version.
    pub(crate) fn record_failure(&self, version: &ActiveVersion) -> bool {
        if version.id != self.current.id {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= CRASH_LOOP_THRESHOLD
            && self.last_good.is_some()
            && !self.fell_back.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                policy = %self.current.policy.manifest.id(),
                failures = n,
                "policy keeps failing; falling back to its last good version"
            );
            return true;
        }
        false
    }
}

/// An immutable snapshot of the active policies, in evaluation order (by name).
pub(crate) struct PolicySet {
    pub(crate) slots: Vec<Arc<PolicySlot>>,
}

/// What a policy store holds, for listings and the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    pub name: String,
    /// The version in use now (the last good one after a fallback).
    pub active_version: String,
    /// The newest installed version.
    pub installed_version: String,
    pub kind: &'static str,
    pub failure_mode: &'static str,
    pub sha256: String,
    pub fell_back: bool,
    pub consecutive_failures: u32,
}

/// The outcome of syncing a store with a registry.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// `name@version` newly installed.
    pub installed: Vec<String>,
    /// Versions that were refused, with why; the previous version (if any) stays active.
    pub refused: Vec<(String, PoliciesError)>,
}

/// A background registry sync started by [`PolicyStore::watch`]; stops when dropped.
#[derive(Debug)]
pub struct RegistryWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The router's active policies: shared by all workers, updated atomically.
#[derive(Clone)]
pub struct PolicyStore {
    engine: PolicyEngine,
    set: Arc<ArcSwap<PolicySet>>,
    next_id: Arc<AtomicU64>,
}

impl fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyStore")
            .field("policies", &self.list())
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    pub fn new(engine: PolicyEngine) -> Self {
        Self {
            engine,
            set: Arc::new(ArcSwap::from_pointee(PolicySet { slots: Vec::new() })),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Whether `other` is a handle to this same store.
    pub fn same_as(&self, other: &PolicyStore) -> bool {
        Arc::ptr_eq(&self.set, &other.set)
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    pub(crate) fn snapshot(&self) -> Arc<PolicySet> {
        self.set.load_full()
    }

    /// A worker with its own warm instances; one per thread that decides.
    pub fn worker(&self) -> PolicyWorker {
        PolicyWorker::new(self.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.set.load().slots.is_empty()
    }

    /// Compiles and installs `module`. The previous version of the same name stays the
    /// fallback; on any error nothing changes.
    pub fn install_module(&self, manifest: Manifest, module: &[u8]) -> Result<(), PoliciesError> {
        let what = manifest.id();
        let compiled = self.engine.compile(&what, module, manifest)?;
        compiled
            .check_instantiation()
            .map_err(|f| PoliciesError::InvalidComponent {
                what,
                reason: format!("cannot be instantiated: {f}"),
            })?;
        self.install(compiled);
        Ok(())
    }

    /// Installs a compiled policy, atomically replacing the version of the same name.
    pub fn install(&self, policy: CompiledPolicy) {
        let version = Arc::new(ActiveVersion {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            policy,
            successes: AtomicU64::new(0),
        });
        self.set.rcu(|old| {
            let name = &version.policy.manifest.name;
            let mut slots: Vec<Arc<PolicySlot>> = old
                .slots
                .iter()
                .filter(|s| &s.current.policy.manifest.name != name)
                .cloned()
                .collect();
            let last_good = old
                .slots
                .iter()
                .find(|s| &s.current.policy.manifest.name == name)
                .and_then(|s| {
                    let active = s.active();
                    if active.successes.load(Ordering::Relaxed) > 0 {
                        Some(Arc::clone(active))
                    } else {
                        s.last_good.clone()
                    }
                });
            slots.push(Arc::new(PolicySlot::new(Arc::clone(&version), last_good)));
            slots.sort_by(|a, b| {
                a.current
                    .policy
                    .manifest
                    .name
                    .cmp(&b.current.policy.manifest.name)
            });
            PolicySet { slots }
        });
        tracing::info!(policy = %version.policy.manifest.id(), "policy installed");
    }

    /// Removes policy `name`; returns whether it was installed.
    pub fn remove(&self, name: &str) -> bool {
        let mut removed = false;
        self.set.rcu(|old| {
            let slots: Vec<_> = old
                .slots
                .iter()
                .filter(|s| s.current.policy.manifest.name != name)
                .cloned()
                .collect();
            removed = slots.len() != old.slots.len();
            PolicySet { slots }
        });
        removed
    }

    /// Installs the newest version of every policy in `registry` that verifies against
    /// `trust` and compiles, unless it is already installed. A version that fails leaves the
    /// installed one (if any) active and is reported.
    pub fn sync(
        &self,
        registry: &Registry,
        trust: &TrustedKeys,
    ) -> Result<SyncReport, PoliciesError> {
        let mut report = SyncReport::default();
        for entry in registry.latest()? {
            let id = entry.manifest.id();
            let installed = self.set.load().slots.iter().any(|s| {
                s.current.policy.manifest.name == entry.manifest.name
                    && s.current.policy.manifest.sha256 == entry.manifest.sha256
                    && s.current.policy.manifest.version == entry.manifest.version
            });
            if installed {
                continue;
            }
            let loaded = registry
                .verify(&entry, trust)
                .and_then(|v| self.install_module(v.manifest, &v.module));
            match loaded {
                Ok(()) => report.installed.push(id),
                Err(e) => {
                    tracing::warn!(policy = %id, error = %e, "policy version refused; keeping the active one");
                    report.refused.push((id, e));
                }
            }
        }
        Ok(report)
    }

    /// Syncs with `registry` now and then every `every` on a background thread, until the
    /// returned [`RegistryWatch`] is dropped: new versions are installed atomically while the
    /// router serves; refused ones are logged and leave the active version in place.
    pub fn watch(&self, registry: Registry, trust: TrustedKeys, every: Duration) -> RegistryWatch {
        let store = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Err(e) = store.sync(&registry, &trust) {
                    tracing::warn!(registry = %registry.root().display(), error = %e, "policy registry sync failed");
                }
                std::thread::park_timeout(every);
            }
        });
        RegistryWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// The active policies.
    pub fn list(&self) -> Vec<PolicySummary> {
        self.set
            .load()
            .slots
            .iter()
            .map(|s| {
                let m = &s.current.policy.manifest;
                PolicySummary {
                    name: m.name.clone(),
                    active_version: s.active().policy.manifest.version.clone(),
                    installed_version: m.version.clone(),
                    kind: m.kind.as_str(),
                    failure_mode: m.failure_mode.as_str(),
                    sha256: m.sha256.clone(),
                    fell_back: s.fell_back.load(Ordering::Relaxed),
                    consecutive_failures: s.consecutive_failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
