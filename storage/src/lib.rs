//! Where Sandstorm keeps telemetry and model registries: a local directory (a path or a
//! `file://` URL, the embedded default) or an object store (`s3://bucket/prefix`, any
//! S3-compatible service configured from the standard `AWS_*` environment variables).
//!
//! * [`Location::parse`] turns what a user typed (`--telemetry`, `--registry`, `models_dir`)
//!   into a [`Location`]; errors name the flag or field and the supported schemes.
//! * [`Remote`] is a prefix of an object store with the few blocking operations Sandstorm
//!   needs (get, atomic put of a whole object, list, delete, upload and download of a
//!   directory). Blocking calls run on this crate's own small tokio runtime, so they work from
//!   plain threads, `spawn_blocking` and from inside another runtime alike.
//! * [`models`]: a model registry or model directory in an object store, downloaded version by
//!   version into a local cache and loaded from there (the router never reads the store).
//!
//! This crate sits below `datasets` (telemetry), `trainer` (registry) and `service` (model
//! loading, hot reload); it depends on no other Sandstorm crate, and pulls no DataFusion.

mod error;
mod location;
pub mod models;
mod remote;
#[cfg(feature = "test-s3")]
pub mod test_s3;

pub use error::StorageError;
pub use location::{Location, SUPPORTED_SCHEMES, StoreConfig, default_cache_dir, is_url, slug};
pub use remote::{ObjectInfo, Remote};
