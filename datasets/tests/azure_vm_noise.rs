//! The Azure VM Noise importer on a tiny fixture in the public dataset's raw CSV layout.

use std::path::Path;

use sandstorm_datasets::DatasetsError;
use sandstorm_datasets::azure_vm_noise::{ImportOptions, WORK_UNITS_PER_REQUEST, load};

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/azure-vm-noise-csv"
    ))
}

#[test]
fn raw_csv_layout_imports_day_medians_requests_history_and_catalog() {
    let data = load(fixture(), &ImportOptions::default()).unwrap();
    // The long-lived VM's file is filtered out; 4 placements × 3 days, one day missing.
    assert_eq!(data.workloads.len(), 1);
    assert_eq!(data.placements.len(), 4);
    assert_eq!(data.outcomes.len(), 11);
    assert_eq!(data.measurements, 22);
    let requests = data.requests();
    assert_eq!(requests.len(), 2, "the third day lacks westus2/B8ms");
    // Placements are sorted by (region, sku): eastus/B8ms first. Events per second are
    // higher-is-better: time = 1000 / value ms per unit, times the work units per request.
    let ms = |v: f64| 1000.0 / v * WORK_UNITS_PER_REQUEST;
    assert!((requests[0].time_ms[0] - ms(100.0)).abs() < 1e-9);
    assert!((requests[1].time_ms[1] - ms(210.0)).abs() < 1e-9);
    // History only from earlier days.
    assert_eq!(requests[0].history[0].count, 0);
    assert_eq!(requests[1].history[0].count, 1);
    assert_eq!(requests[1].history[0].ln_last, Some(ms(100.0).ln()));
    assert_eq!(requests[1].history[0].days_since_last, Some(1.0));

    let catalog = data.catalog().unwrap();
    let candidates = catalog.candidates();
    assert_eq!(candidates.len(), 4);
    for p in &data.placements {
        assert!(
            candidates.iter().any(|c| c.id == p.candidate_id),
            "{}",
            p.candidate_id
        );
    }
    let rows = data.telemetry(&candidates, &requests).unwrap();
    assert_eq!(rows.len(), 8);
    // Cost = list price per hour × time: B8ms in eastus is 0.333 USD/h.
    let r = &rows[0];
    assert_eq!(
        r.workload.as_deref(),
        Some("Sysbench/Test:_CPU/Events Per Second")
    );
    let expected = 0.333 / 3600.0 * ms(100.0) / 1000.0;
    assert!(
        (r.cost_usd - expected).abs() < 1e-12 * expected.max(1.0),
        "{}",
        r.cost_usd
    );
}

#[test]
fn missing_files_and_filters_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load(tmp.path(), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("units.csv"), "{err}");

    let options = ImportOptions {
        test_suites: vec!["Redis".to_owned()],
        ..ImportOptions::default()
    };
    let err = load(fixture(), &options).unwrap_err();
    assert!(matches!(err, DatasetsError::InvalidDataset { .. }), "{err}");
    assert!(err.to_string().contains("Redis"), "{err}");
}
