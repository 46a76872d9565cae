//! [`Providers`]: every remote adapter of this build, built from the environment, sharing one
//! async runtime; runs a candidate on the adapter of its provider.

use std::sync::Arc;

use sandstorm_features::Candidate;
use sandstorm_runtime::{Availability, JobSpec, RunControl};

use crate::daytona::{DaytonaConfig, DaytonaProvider};
use crate::driver::Bridge;
use crate::e2b::{E2bConfig, E2bProvider};
use crate::edge::EdgeProvider;
use crate::error::AdapterError;
use crate::kubernetes::{KubernetesConfig, KubernetesProvider};
use crate::modal::{ModalConfig, ModalProvider};
use crate::morph::{MorphConfig, MorphProvider};
use crate::{RemoteProvider, RemoteRun, RunFailure};

/// The remote adapters, by provider name.
#[derive(Debug)]
pub struct Providers {
    providers: Vec<Box<dyn RemoteProvider>>,
}

/// An adapter that could not even be built (e.g. its async runtime failed to start).
#[derive(Debug)]
struct Broken {
    name: &'static str,
    reason: String,
}

impl RemoteProvider for Broken {
    fn name(&self) -> &str {
        self.name
    }

    fn availability(&self) -> Availability {
        Availability::Unavailable {
            reason: self.reason.clone(),
        }
    }

    fn run(&self, _: &Candidate, _: &JobSpec, _: &RunControl) -> Result<RemoteRun, RunFailure> {
        Err(AdapterError::NotConfigured {
            provider: self.name.into(),
            reason: self.reason.clone(),
        }
        .into())
    }
}

impl Providers {
    /// Every adapter (e2b, daytona, morph, kubernetes, modal), configured from environment
    /// variables (and Modal's `~/.modal.toml` profile; see `docs/providers.md`). Never fails:
    /// a provider without credentials is present and reports `Unavailable` with the reason.
    pub fn from_env() -> Self {
        Self::build(None)
    }

    /// [`Providers::from_env`] plus one [`EdgeProvider`] per `edge` provider of `catalog`.
    pub fn from_env_and_catalog(catalog: &sandstorm_features::Catalog) -> Self {
        Self::build(Some(catalog))
    }

    fn build(catalog: Option<&sandstorm_features::Catalog>) -> Self {
        let bridge = Bridge::new();
        let mut providers: Vec<Box<dyn RemoteProvider>> = Vec::new();
        let mut add = |name: &'static str,
                       build: &dyn Fn(
            Arc<Bridge>,
        ) -> Result<Box<dyn RemoteProvider>, AdapterError>| {
            let built = match &bridge {
                Ok(bridge) => build(Arc::clone(bridge)),
                Err(e) => Err(AdapterError::Internal(e.to_string())),
            };
            providers.push(built.unwrap_or_else(|e| {
                Box::new(Broken {
                    name,
                    reason: e.to_string(),
                })
            }));
        };
        add("e2b", &|b| {
            Ok(Box::new(E2bProvider::with_bridge(
                E2bConfig::from_env(),
                b,
            )?))
        });
        add("daytona", &|b| {
            Ok(Box::new(DaytonaProvider::with_bridge(
                DaytonaConfig::from_env(),
                b,
            )?))
        });
        add("morph", &|b| {
            Ok(Box::new(MorphProvider::with_bridge(
                MorphConfig::from_env(),
                b,
            )?))
        });
        add("kubernetes", &|b| {
            Ok(Box::new(KubernetesProvider::with_bridge(
                KubernetesConfig::from_env(),
                b,
            )?))
        });
        add("modal", &|b| {
            Ok(Box::new(ModalProvider::with_bridge(
                ModalConfig::from_env(),
                b,
            )?))
        });
        let edges = catalog
            .into_iter()
            .flat_map(|c| &c.providers)
            .filter(|p| p.kind == sandstorm_features::ProviderKind::Edge);
        for spec in edges {
            providers.push(match &bridge {
                Ok(bridge) => Box::new(EdgeProvider::from_spec(spec, Arc::clone(bridge))),
                Err(e) => Box::new(Broken {
                    name: "edge",
                    reason: e.to_string(),
                }),
            });
        }
        Self { providers }
    }

    /// A registry of the given adapters (e.g. built with explicit configs).
    pub fn new(providers: Vec<Box<dyn RemoteProvider>>) -> Self {
        Self { providers }
    }

    /// The adapter of provider `name`.
    pub fn get(&self, name: &str) -> Option<&dyn RemoteProvider> {
        self.providers
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.as_ref())
    }

    /// Every adapter's name and availability, in a stable order.
    pub fn availability(&self) -> Vec<(String, Availability)> {
        self.providers
            .iter()
            .map(|p| (p.name().to_owned(), p.availability()))
            .collect()
    }

    /// Runs `job` on `candidate` with the adapter of the candidate's provider. Blocks (see the
    /// crate docs). A provider without an adapter is `Unsupported`.
    pub fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        let provider = self
            .get(&candidate.provider)
            .ok_or_else(|| AdapterError::Unsupported {
                provider: candidate.provider.clone(),
                reason: "no remote adapter for this provider".into(),
            })?;
        provider.run(candidate, job, control)
    }
}
