//! [`Engine`]: the execution backends of this host, and their availability, probed once on
//! first use and cached.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::thread;

use sandstorm_features::IsolationBackend;

use crate::bubblewrap::BubblewrapBackend;
use crate::gvisor::{DEFAULT_GVISOR_POOL_SIZE, GvisorBackend};
use crate::harden::SeccompFilters;
use crate::process::ProcessBackend;
use crate::{Availability, Backend};

/// How an [`Engine`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// gVisor sandboxes kept started ahead of jobs (0: every job pays a cold start).
    pub gvisor_pool_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            gvisor_pool_size: DEFAULT_GVISOR_POOL_SIZE,
        }
    }
}

/// The local backends: `process`, `bubblewrap` and `gvisor`.
#[derive(Debug)]
pub struct Engine {
    process: ProcessBackend,
    bubblewrap: BubblewrapBackend,
    gvisor: GvisorBackend,
    availability: OnceLock<BTreeMap<IsolationBackend, Availability>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// Locates the backends' programs; runs nothing until [`Engine::availability`] or a run.
    pub fn new() -> Self {
        Self::with_config(&EngineConfig::default())
    }

    /// [`Engine::new`] with `config`.
    pub fn with_config(config: &EngineConfig) -> Self {
        let seccomp = Arc::new(SeccompFilters::compile());
        Self {
            process: ProcessBackend::new(Arc::clone(&seccomp)),
            bubblewrap: BubblewrapBackend::new(seccomp),
            gvisor: GvisorBackend::new(config.gvisor_pool_size),
            availability: OnceLock::new(),
        }
    }

    /// The backend of that kind, if this engine has one (whether or not it works here: see
    /// [`Engine::availability`]).
    pub fn backend(&self, b: IsolationBackend) -> Option<&dyn Backend> {
        match b {
            IsolationBackend::Process => Some(&self.process),
            IsolationBackend::Bubblewrap => Some(&self.bubblewrap),
            IsolationBackend::Gvisor => Some(&self.gvisor),
            IsolationBackend::RootlessOci | IsolationBackend::Microvm => None,
        }
    }

    /// Whether each backend of this engine works on this host. The first call probes every
    /// backend (in parallel, each probe a real run bounded by its own wall-clock limit);
    /// later calls return the cached answer.
    pub fn availability(&self) -> &BTreeMap<IsolationBackend, Availability> {
        self.availability.get_or_init(|| {
            let backends: Vec<&dyn Backend> = IsolationBackend::ALL
                .into_iter()
                .filter_map(|b| self.backend(b))
                .collect();
            thread::scope(|scope| {
                let probes: Vec<_> = backends
                    .iter()
                    .map(|backend| (backend.backend(), scope.spawn(|| backend.probe())))
                    .collect();
                let mut map: BTreeMap<IsolationBackend, Availability> = probes
                    .into_iter()
                    .map(|(kind, probe)| {
                        let availability =
                            probe.join().unwrap_or_else(|_| Availability::Unavailable {
                                reason: "the probe panicked (a bug in sandstorm)".to_owned(),
                            });
                        tracing::debug!(backend = %kind, ?availability, "probed");
                        (kind, availability)
                    })
                    .collect();
                for kind in IsolationBackend::ALL {
                    if let Some(reason) = not_in_this_engine(kind) {
                        map.insert(kind, Availability::Unavailable { reason });
                    }
                }
                map
            })
        })
    }
}

/// Why this engine has no runner for `kind` on this host, for the tiers it lacks.
fn not_in_this_engine(kind: IsolationBackend) -> Option<String> {
    match kind {
        IsolationBackend::RootlessOci => {
            let runner = ["crun", "podman"]
                .into_iter()
                .find(|p| crate::hostfs::find_program(p).is_some());
            let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
            Some(match (runner, unified) {
                (None, _) => "neither crun nor podman is installed".to_owned(),
                (Some(r), false) => format!(
                    "{r} is installed, but rootless containers need the unified cgroup v2 \
                     hierarchy with delegation and this host has cgroup v1 or a hybrid hierarchy"
                ),
                (Some(r), true) => {
                    format!("{r} is installed, but this engine has no rootless OCI runner yet")
                }
            })
        }
        IsolationBackend::Microvm => Some(
            "this engine has no local microVM runner (microVMs run on remote providers)".to_owned(),
        ),
        IsolationBackend::Process | IsolationBackend::Bubblewrap | IsolationBackend::Gvisor => None,
    }
}
