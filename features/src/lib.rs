//! The vocabulary every other Sandstorm crate speaks.
//!
//! This crate owns the request a user sends ([`RunRequest`]), the catalog of places code can run
//! ([`Catalog`], expanded into [`Candidate`]s), the Arrow schema of a telemetry row
//! ([`telemetry`]), and the ONE feature encoding ([`encoding`]) shared by the trainer (from Arrow
//! batches) and the router (from in-memory structs). It never does I/O beyond parsing text handed
//! to it, and it never depends on a training or serving framework.

mod candidate;
mod catalog;
mod constraints;
pub mod encoding;
mod error;
pub mod history;
pub mod model;
mod request;
pub mod telemetry;

pub use candidate::{Candidate, IsolationBackend, IsolationLevel, ProviderKind};
pub use catalog::{Catalog, DEFAULT_CATALOG_TOML, PriceSheet, ProviderSpec, Quotas, RegionSpec};
pub use constraints::{Violation, static_violation};
pub use error::{FeaturesError, FieldError};
pub use request::{
    Constraints, DecisionContext, GpuRequest, InputFile, Language, MAX_PAYLOAD_BYTES, Resources,
    RunRequest, Strategy, StrategyKind,
};
