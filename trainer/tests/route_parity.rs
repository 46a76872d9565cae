//! `sandstorm route` ranks identically with the native evaluator and with LightGBM.
//!
//! Trains on the quickstart's data (the simulator with its defaults: 20,000 rows, seed 7,
//! the embedded catalog, the default training configuration), then routes every example
//! request under `examples/requests` twice — once with the serving model set (native
//! evaluator) and once with `Evaluator::LightGbm` — and requires the same winner, fallbacks,
//! ranking, predictions and scores, or the same error.

use std::path::Path;

use sandstorm_features::{Candidate, Catalog, DecisionContext, ProviderKind, RunRequest};
use sandstorm_router::{Decision, Evaluator, ModelSet, Router, Scratch};
use time::macros::datetime;

/// Why a candidate is unavailable, if it is.
type Availability<'a> = &'a dyn Fn(&Candidate) -> Option<String>;

fn summary(d: &Decision) -> Vec<String> {
    d.candidates
        .iter()
        .map(|c| {
            let p = c.prediction.as_ref().map(|p| {
                [
                    p.latency_p50_ms,
                    p.latency_p95_ms,
                    p.cost_usd,
                    p.failure_prob,
                ]
                .map(f64::to_bits)
            });
            format!(
                "{} {:?} {:?} {:?}",
                c.candidate.id,
                c.score.map(f64::to_bits),
                p,
                c.verdict
            )
        })
        .collect()
}

#[test]
fn native_and_lightgbm_rank_every_example_identically() {
    let catalog = Catalog::default_catalog();
    let cfg = sandstorm_datasets::SimulatorConfig {
        rows: 20_000,
        seed: 7,
        ..Default::default()
    };
    let records: Vec<_> = sandstorm_datasets::simulate(&catalog, &cfg).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    sandstorm_trainer::train_records(
        &records,
        dir.path(),
        &sandstorm_trainer::TrainConfig::default(),
    )
    .expect("training");

    let native = Router::new(&catalog, ModelSet::load(dir.path()).expect("native models"));
    let reference = Router::new(
        &catalog,
        ModelSet::load_with(dir.path(), Evaluator::LightGbm).expect("lightgbm models"),
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/requests");
    let mut paths: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples/requests")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 8, "expected the example requests");

    let mut scratch = Scratch::new();
    let mut decided = 0;
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("request");
        let request = RunRequest::from_text(&text, &path.to_string_lossy()).expect("valid");
        for now in [
            datetime!(2026-02-02 09:30 UTC),
            datetime!(2026-02-07 23:10 UTC),
        ] {
            let ctx = DecisionContext::at(now);
            // Every candidate available, and the local ones only (as on a bare host).
            let all = |_: &Candidate| None;
            let remote_only = |c: &Candidate| {
                (c.provider_kind == ProviderKind::Local).then(|| "not on this host".to_owned())
            };
            let filters: [Availability<'_>; 2] = [&all, &remote_only];
            for unavailable in filters {
                let a = native.decide_with(&mut scratch, &request, &ctx, unavailable);
                let b = reference.decide(&request, &ctx, unavailable);
                match (a, b) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(a.winner, b.winner, "{}", path.display());
                        assert_eq!(a.fallbacks, b.fallbacks, "{}", path.display());
                        assert_eq!(a.explanation, b.explanation, "{}", path.display());
                        assert_eq!(summary(&a), summary(&b), "{}", path.display());
                        decided += 1;
                    }
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!(
                        "{}: native {:?} but lightgbm {:?}",
                        path.display(),
                        a.map(|d| d.winner),
                        b.map(|d| d.winner)
                    ),
                }
            }
        }
    }
    assert!(decided >= 16, "only {decided} decisions were compared");
}
