//! [`Engine`]: the execution backends of this host, and their availability, probed once on
//! first use and cached.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::thread;

use sandstorm_features::IsolationBackend;

use crate::bubblewrap::BubblewrapBackend;
use crate::process::ProcessBackend;
use crate::{Availability, Backend};

/// The local backends: `process` and `bubblewrap`.
#[derive(Debug)]
pub struct Engine {
    process: ProcessBackend,
    bubblewrap: BubblewrapBackend,
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
        Self {
            process: ProcessBackend,
            bubblewrap: BubblewrapBackend::new(),
            availability: OnceLock::new(),
        }
    }

    /// The backend of that kind, if this engine has one (whether or not it works here: see
    /// [`Engine::availability`]).
    pub fn backend(&self, b: IsolationBackend) -> Option<&dyn Backend> {
        match b {
            IsolationBackend::Process => Some(&self.process),
            IsolationBackend::Bubblewrap => Some(&self.bubblewrap),
            IsolationBackend::Gvisor
            | IsolationBackend::RootlessOci
            | IsolationBackend::Microvm => None,
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
                probes
                    .into_iter()
                    .map(|(kind, probe)| {
                        let availability =
                            probe.join().unwrap_or_else(|_| Availability::Unavailable {
                                reason: "the probe panicked (a bug in sandstorm)".to_owned(),
                            });
                        tracing::debug!(backend = %kind, ?availability, "probed");
                        (kind, availability)
                    })
                    .collect()
            })
        })
    }
}
