//! The router's WebAssembly policies as the service runs them ([`Policies`]): the signed
//! registry named by the configuration's `[policies]`, the store the router evaluates on every
//! decision (kept in step with the registry by a background sync, hot-swapped atomically), the
//! listing of `GET /v1/policies` and the publishing of `POST /v1/policies`: verify the upload's
//! signature against the trusted keys, compile and instantiate it, store it in the registry,
//! install it. A version that fails any step changes nothing.

use std::time::Duration;

use base64::Engine as _;
use sandstorm_policies_wasm::{
    PoliciesError, PolicyEngine, PolicyLimits, PolicyStore, PolicySummary, Registry, RegistryWatch,
    TrustedKeys, verify_bytes,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ServiceError;
use crate::config::PoliciesConfig;
use crate::error::ApiError;

/// One loaded policy, as `GET /v1/policies` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    /// The version that runs now (the last good one after a crash-loop fallback).
    pub active_version: String,
    /// The newest installed version.
    pub installed_version: String,
    /// `filter` or `scorer`.
    pub kind: String,
    /// `fail_closed` or `fail_open`.
    pub failure_mode: String,
    /// SHA-256 of the installed version's module.
    pub sha256: String,
    /// Whether the policy fell back to its last good version after repeated failures.
    pub fell_back: bool,
    pub consecutive_failures: u32,
}

impl From<PolicySummary> for PolicyInfo {
    fn from(s: PolicySummary) -> Self {
        Self {
            name: s.name,
            active_version: s.active_version,
            installed_version: s.installed_version,
            kind: s.kind.to_owned(),
            failure_mode: s.failure_mode.to_owned(),
            sha256: s.sha256,
            fell_back: s.fell_back,
            consecutive_failures: s.consecutive_failures,
        }
    }
}

/// The body of `POST /v1/policies`: one signed version, as `sandstorm policy publish` writes it
/// into a registry directory.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishPolicy {
    /// The exact text of `manifest.json` (the signed bytes).
    manifest: String,
    /// The text of `signature.json`: the signer's public key and its ed25519 signature of the
    /// manifest.
    signature: String,
    /// `policy.wasm`, base64 (standard alphabet, padded).
    module_base64: String,
}

/// The policies of a service with a `[policies]` configuration.
#[derive(Debug)]
pub(crate) struct Policies {
    store: PolicyStore,
    registry: Registry,
    trust: TrustedKeys,
    /// Re-reads the registry in the background; stops when dropped.
    _watch: RegistryWatch,
}

impl Policies {
    /// Loads the newest trusted version of every policy in the registry and starts the
    /// background sync. Versions that fail to verify or compile are logged and skipped.
    pub(crate) fn open(config: &PoliciesConfig) -> Result<Self, ServiceError> {
        let trust = TrustedKeys::from_file(&config.trusted_keys)
            .map_err(|e| ServiceError::Config(format!("policies.trusted_keys: {e}")))?;
        if trust.is_empty() {
            return Err(ServiceError::Config(format!(
                "policies.trusted_keys: {} lists no key; the router only runs policies signed by a trusted key",
                config.trusted_keys.display()
            )));
        }
        let engine = PolicyEngine::new(PolicyLimits::default())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let store = PolicyStore::new(engine);
        let registry = Registry::open(&config.registry);
        let report = store
            .sync(&registry, &trust)
            .map_err(|e| ServiceError::Config(format!("policies.registry: {e}")))?;
        for id in &report.installed {
            tracing::info!(policy = %id, "policy loaded");
        }
        for (id, e) in &report.refused {
            tracing::warn!(policy = %id, error = %e, "policy not loaded");
        }
        let watch = store.watch(
            registry.clone(),
            trust.clone(),
            Duration::from_secs_f64(config.sync_interval_s),
        );
        Ok(Self {
            store,
            registry,
            trust,
            _watch: watch,
        })
    }

    /// The store the router evaluates.
    pub(crate) fn store(&self) -> &PolicyStore {
        &self.store
    }

    pub(crate) fn list(&self) -> Vec<PolicyInfo> {
        self.store
            .list()
            .into_iter()
            .map(PolicyInfo::from)
            .collect()
    }

    /// Verifies, compiles, stores and installs an uploaded version (blocking: compiles).
    pub(crate) fn publish(&self, upload: PublishPolicy) -> Result<PolicyInfo, ApiError> {
        let module = base64::engine::general_purpose::STANDARD
            .decode(upload.module_base64.trim())
            .map_err(|e| ApiError::invalid(Some("module_base64"), format!("not base64: {e}")))?;
        let verified = verify_bytes(
            upload.manifest.into_bytes(),
            module,
            upload.signature.into_bytes(),
            &self.trust,
        )
        .map_err(publish_error)?;
        let manifest = &verified.manifest;
        if self.registry.contains(&manifest.name, &manifest.version) {
            return Err(ApiError::Conflict(format!(
                "policy {} is already published; versions are immutable, bump the version",
                manifest.id()
            )));
        }
        let id = manifest.id();
        let compiled = self
            .store
            .engine()
            .compile(&id, &verified.module, manifest.clone())
            .map_err(publish_error)?;
        compiled.check_instantiation().map_err(|f| {
            ApiError::invalid(
                Some("module_base64"),
                format!("policy {id} cannot be instantiated: {f}"),
            )
        })?;
        self.registry.add(&verified).map_err(publish_error)?;
        self.store.install(compiled);
        tracing::info!(policy = %id, signer = %verified.signer, "policy published");
        self.list()
            .into_iter()
            .find(|p| p.name == verified.manifest.name)
            .ok_or_else(|| ApiError::Internal(format!("{id} was installed but is not listed")))
    }
}

/// Maps a refused upload to the field at fault; only host problems are internal.
fn publish_error(e: PoliciesError) -> ApiError {
    let field = match &e {
        PoliciesError::Untrusted { .. } => "signature",
        PoliciesError::Invalid(_) | PoliciesError::AbiMismatch { .. } => "manifest",
        PoliciesError::BadFile { path, .. } if path.ends_with("signature.json") => "signature",
        PoliciesError::BadFile { .. } => "manifest",
        PoliciesError::DigestMismatch { .. }
        | PoliciesError::TooLarge { .. }
        | PoliciesError::InvalidComponent { .. }
        | PoliciesError::ForbiddenImports { .. }
        | PoliciesError::WrongExports { .. } => "module_base64",
        PoliciesError::AlreadyPublished { id, .. } => {
            return ApiError::Conflict(format!(
                "policy {id} is already published; versions are immutable, bump the version"
            ));
        }
        PoliciesError::Build { .. } | PoliciesError::Io { .. } | PoliciesError::Internal(_) => {
            return ApiError::Internal(e.to_string());
        }
    };
    ApiError::invalid(Some(field), e.to_string())
}
