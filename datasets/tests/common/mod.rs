//! Helpers shared by the telemetry-writer tests (local journal and object-store publishing).

use sandstorm_datasets::{SimulatorConfig, simulate};
use sandstorm_features::Catalog;
use sandstorm_features::telemetry::TelemetryRecord;

/// `n` simulated rows with distinct run ids, spread over three days.
pub(crate) fn records(n: usize, seed: u64) -> Vec<TelemetryRecord> {
    let cfg = SimulatorConfig {
        rows: n,
        seed,
        days: 3,
        ..SimulatorConfig::default()
    };
    simulate(&Catalog::default_catalog(), &cfg).collect()
}
