//! Telemetry data for Sandstorm: a seeded simulator of a TEST WORLD that writes telemetry
//! Parquet ([`simulate`], [`generate`]), and the Parquet I/O every other crate uses to store and
//! read telemetry ([`write_parquet`], [`read_parquet_dir`], [`append_records`]), and
//! [`TelemetryWriter`], the crash-safe writer of run telemetry (a write-ahead log of Arrow IPC
//! segments compacted into date-partitioned Parquet; docs/telemetry.md).
//!
//! [`azure_vm_noise`] imports the Azure VM Noise Dataset 2024 (real measurements) as a catalog,
//! protocol requests and telemetry.
//!
//! The simulator's figures are assumptions, not measurements; `docs/simulator.md` lists them.

pub mod azure_vm_noise;
mod error;
mod journal;
mod parquet_io;
mod simulator;

pub use error::DatasetsError;
pub use journal::{
    Ack, Recovery, TelemetryWriter, WAL_DIR, WriterOptions, WriterStats, default_spool_dir,
    telemetry_location,
};
pub use parquet_io::{append_records, read_parquet_dir, read_parquet_location, write_parquet};
pub use sandstorm_storage::{Location, Remote, StoreConfig};
pub use simulator::{
    GenerateSummary, LoggingPolicy, SimulatorConfig, UniformPolicy, generate, simulate,
    simulate_with,
};
