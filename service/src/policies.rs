//! The seam for WebAssembly policies (built in `policies-wasm`, wired in later): the service
//! keeps a [`PolicyRegistry`] and lists what it holds at `GET /v1/policies`. This build loads
//! no policies ([`NoPolicies`]) and `POST /v1/policies` answers 501.

use serde::Serialize;
use utoipa::ToSchema;

/// One loaded policy, as `GET /v1/policies` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    /// SHA-256 of the policy module.
    pub sha256: String,
}

/// The policies the router applies.
pub trait PolicyRegistry: Send + Sync + std::fmt::Debug {
    /// The loaded policies, in evaluation order.
    fn list(&self) -> Vec<PolicyInfo>;
}

/// No policies: what this build has until the WASM policy host is wired in.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPolicies;

impl PolicyRegistry for NoPolicies {
    fn list(&self) -> Vec<PolicyInfo> {
        Vec::new()
    }
}

/// The message of `POST /v1/policies` in this build.
pub(crate) const PUBLISH_UNAVAILABLE: &str = "policy publishing is not available in this build (the WebAssembly policy host is not wired into the service yet)";
