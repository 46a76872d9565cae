//! Exploration end to end on real decisions: off is the greedy router, ε-greedy logs exact
//! probabilities and chooses with them, Thompson sampling's estimated probabilities match its
//! choices, only feasible candidates are ever chosen, and a seed reproduces a decision.

use std::collections::BTreeMap;
use std::path::Path;

use sandstorm_features::encoding::{
    FEATURE_VERSION, FEATURES, FeatureInput, FeatureSpace, N_FEATURES,
};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelEntry, ModelMetadata, ModelRole, StoredFeatureSchema,
    TimeWindow,
};
use sandstorm_features::{Catalog, DecisionContext, RunRequest};
use sandstorm_router::{Decision, Exploration, ModelSet, Router, Verdict};
use time::macros::datetime;

/// Column of the candidate's round-trip time.
fn rtt_column() -> usize {
    FEATURES
        .iter()
        .position(|(name, _)| *name == "rtt_ms")
        .expect("rtt_ms is a feature")
}

/// A LightGBM text model: one tree; with `split_on_rtt`, rows with `rtt_ms <= 5` get
/// `near`, the others `far`; else every row gets `near`.
fn model_text(near: f64, far: f64, split_on_rtt: bool) -> String {
    let max_feature_idx = N_FEATURES - 1;
    let tree = if split_on_rtt {
        format!(
            "Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature={}\nsplit_gain=1\nthreshold=5\ndecision_type=2\nleft_child=-1\nright_child=-2\nleaf_value={near:e} {far:e}\nleaf_weight=1 1\nleaf_count=1 1\ninternal_value=0\ninternal_weight=2\ninternal_count=2\nis_linear=0\nshrinkage=1\n",
            rtt_column()
        )
    } else {
        format!(
            "Tree=0\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value={near:e}\nleaf_weight=\nleaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n"
        )
    };
    format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx={max_feature_idx}\nobjective=regression\n\n{tree}\n\nend of trees\n\nparameters:\nend of parameters\n"
    )
}

/// A model directory: with `split_on_rtt`, local candidates (rtt 0) are predicted at 100 ms
/// (p95 300 ms) and remote ones at 300 ms (p95 900 ms); without, every candidate alike.
fn write_models(dir: &Path, split_on_rtt: bool) {
    let space = FeatureSpace::fit(std::iter::empty::<FeatureInput<'_>>());
    let hash = space.hash();
    std::fs::write(
        dir.join(FEATURE_SCHEMA_FILE),
        serde_json::to_string(&StoredFeatureSchema {
            hash: hash.clone(),
            space,
        })
        .expect("json"),
    )
    .expect("write schema");
    let mut models = BTreeMap::new();
    for role in ModelRole::ALL {
        let (near, far) = match role {
            ModelRole::LatencyP50 => (100f64.ln(), 300f64.ln()),
            ModelRole::LatencyP95 => (300f64.ln(), 900f64.ln()),
            ModelRole::Cost => (1e-5f64.ln(), 1e-5f64.ln()),
            ModelRole::Failure => (0.02, 0.02),
        };
        std::fs::write(
            dir.join(role.file_name()),
            model_text(near, far, split_on_rtt),
        )
        .expect("write model");
        models.insert(
            role,
            ModelEntry {
                file: role.file_name(),
                target: role.as_str().to_owned(),
                target_transform: role.target_transform(),
                params: serde_json::Map::new(),
                num_trees: 1,
                metrics: BTreeMap::new(),
            },
        );
    }
    let window = TimeWindow {
        from: "2026-01-01T00:00:00Z".into(),
        to: "2026-01-02T00:00:00Z".into(),
        rows: 0,
    };
    let metadata = ModelMetadata {
        version: "exploration-test".into(),
        created_at: "2026-01-02T00:00:00Z".into(),
        feature_version: FEATURE_VERSION,
        feature_schema_hash: hash,
        training_window: window.clone(),
        validation_window: window.clone(),
        holdout_window: window,
        models,
    };
    std::fs::write(
        dir.join(METADATA_FILE),
        serde_json::to_string(&metadata).expect("json"),
    )
    .expect("write metadata");
}

fn router(split_on_rtt: bool) -> Router {
    let dir = tempfile::tempdir().expect("tempdir");
    write_models(dir.path(), split_on_rtt);
    Router::new(
        &Catalog::default_catalog(),
        ModelSet::load(dir.path()).expect("models load"),
    )
}

fn request(strategy: &str) -> RunRequest {
    RunRequest::from_yaml(&format!(
        "language: python\ncommand: python3 -c 'print(1)'\nstrategy: {strategy}\ntimeout_s: 30\n"
    ))
    .expect("valid request")
}

fn ctx(seed: u64) -> DecisionContext {
    DecisionContext::at(datetime!(2026-03-04 10:00 UTC)).with_seed(seed)
}

fn decide(router: &Router, request: &RunRequest, seed: u64) -> Decision {
    router
        .decide(request, &ctx(seed), &|_| None)
        .expect("a feasible candidate")
}

fn feasible_ids(d: &Decision) -> Vec<String> {
    d.candidates[..d.n_feasible]
        .iter()
        .map(|c| c.candidate.id.clone())
        .collect()
}

/// The decision without the fields that differ between any two decisions.
fn comparable(d: &Decision) -> serde_json::Value {
    let mut v = serde_json::to_value(d).expect("json");
    v["decision_id"] = serde_json::Value::Null;
    v
}

#[test]
fn off_is_the_greedy_router_bit_for_bit() {
    let greedy = router(true);
    let off = router(true)
        .with_exploration(Exploration::Off)
        .expect("valid");
    for strategy in ["optimize_cost", "optimize_latency", "balanced"] {
        let r = request(strategy);
        let a = decide(&greedy, &r, 1);
        let b = decide(&off, &r, 2);
        assert_eq!(comparable(&a), comparable(&b), "{strategy}");
        assert_eq!(a.selection_probability, 1.0);
        assert!(!a.explored);
        assert!(!a.explanation.contains("xplor"), "{}", a.explanation);
    }
}

#[test]
fn invalid_exploration_is_refused() {
    let e = router(false)
        .with_exploration(Exploration::EpsilonGreedy { epsilon: 1.5 })
        .expect_err("epsilon above 1");
    assert!(e.to_string().contains("epsilon must be in [0, 1]"), "{e}");
}

#[test]
fn epsilon_greedy_chooses_with_the_probabilities_it_logs() {
    let epsilon = 0.3;
    let greedy_router = router(true);
    let exploring = router(true)
        .with_exploration(Exploration::EpsilonGreedy { epsilon })
        .expect("valid");
    let r = request("optimize_latency");
    let greedy = decide(&greedy_router, &r, 0);
    let ranked = feasible_ids(&greedy);
    let n = ranked.len();
    assert!(n >= 4, "several feasible candidates: {ranked:?}");
    let trials = 4000;
    let mut wins: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..trials {
        let d = decide(&exploring, &r, seed);
        let rank = ranked
            .iter()
            .position(|id| *id == d.winner)
            .expect("winner is feasible");
        let expected = if rank == 0 {
            (1.0 - epsilon) + epsilon / n as f64
        } else {
            epsilon / n as f64
        };
        assert!((d.selection_probability - expected).abs() < 1e-12);
        assert_eq!(d.explored, rank != 0);
        // The chosen candidate first, then the others in their greedy order.
        let mut rest = ranked.clone();
        rest.remove(rank);
        assert_eq!(feasible_ids(&d)[1..], rest[..], "seed {seed}");
        assert_eq!(d.fallbacks, rest[..3.min(rest.len())]);
        assert!(matches!(d.candidates[0].verdict, Verdict::Winner));
        if d.explored {
            assert!(
                d.explanation.starts_with(&format!(
                    "Explored: chose {} with probability {:.3} instead of greedy {}",
                    d.winner, d.selection_probability, ranked[0]
                )),
                "{}",
                d.explanation
            );
            assert!(matches!(
                d.candidates[1].verdict,
                Verdict::Fallback { rank: 1, behind_by_pct } if behind_by_pct == 0.0
            ));
            for c in &d.candidates[..d.n_feasible] {
                if let Verdict::Outscored { reason, .. } = &c.verdict {
                    let reason = reason.to_string();
                    assert!(reason.contains("greedy winner's"), "{reason}");
                }
            }
        } else {
            assert!(
                d.explanation.contains("kept the greedy choice"),
                "{}",
                d.explanation
            );
        }
        *wins.entry(d.winner).or_default() += 1;
    }
    // Frequencies within 4 standard deviations of the logged probabilities.
    for (rank, id) in ranked.iter().enumerate() {
        let p = if rank == 0 {
            (1.0 - epsilon) + epsilon / n as f64
        } else {
            epsilon / n as f64
        };
        let freq = *wins.get(id).unwrap_or(&0) as f64 / trials as f64;
        let sd = (p * (1.0 - p) / trials as f64).sqrt();
        assert!((freq - p).abs() < 4.0 * sd, "{id}: frequency {freq}, p {p}");
    }
}

#[test]
fn exploration_never_chooses_a_filtered_candidate() {
    let exploring = router(true)
        .with_exploration(Exploration::EpsilonGreedy { epsilon: 1.0 })
        .expect("valid");
    let mut r = request("optimize_cost");
    r.constraints.excluded_providers = vec!["modal".into()];
    r.constraints.max_latency_ms = Some(400.0); // removes every remote candidate (p95 900)
    let unavailable = |c: &sandstorm_features::Candidate| {
        (c.backend.as_str() == "gvisor").then(|| "no runsc here".to_owned())
    };
    for seed in 0..300 {
        let d = exploring
            .decide(&r, &ctx(seed), &unavailable)
            .expect("feasible");
        let winner = d.winner();
        assert_eq!(winner.candidate.provider, "local");
        assert_ne!(winner.candidate.backend.as_str(), "gvisor");
        for c in &d.candidates[d.n_feasible..] {
            assert!(matches!(c.verdict, Verdict::Filtered { .. }));
        }
        assert!(d.selection_probability > 0.0 && d.selection_probability <= 1.0);
    }
}

#[test]
fn a_seed_reproduces_the_choice() {
    for exploration in [
        Exploration::EpsilonGreedy { epsilon: 0.5 },
        Exploration::Thompson { draws: 64 },
    ] {
        let exploring = router(true).with_exploration(exploration).expect("valid");
        let r = request("balanced");
        let mut winners = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let a = decide(&exploring, &r, seed);
            let b = decide(&exploring, &r, seed);
            assert_eq!(comparable(&a), comparable(&b), "{exploration} seed {seed}");
            winners.insert(a.winner);
        }
        assert!(winners.len() > 1, "{exploration} explores: {winners:?}");
    }
}

#[test]
fn thompson_estimates_match_how_often_it_chooses() {
    // Local candidates are predicted at 100 ms, remote ones at 300 ms: under optimize_latency
    // Thompson mostly picks a local one, sometimes a remote one.
    let exploring = router(true)
        .with_exploration(Exploration::Thompson { draws: 256 })
        .expect("valid");
    let r = request("optimize_latency");
    let trials = 1500;
    let mut local = 0usize;
    let mut p_local = 0.0;
    for seed in 0..trials {
        let d = decide(&exploring, &r, seed);
        assert!((1.0 / 256.0..1.0).contains(&d.selection_probability));
        if d.winner().candidate.provider == "local" {
            local += 1;
            p_local += d.selection_probability;
        }
    }
    let first = decide(&exploring, &r, 0);
    let n_feasible = first.n_feasible;
    let local_share = local as f64 / trials as f64;
    assert!(
        local_share > 0.5 && local_share < 0.999,
        "local share {local_share}"
    );
    // Each local candidate (identical predictions) is chosen about equally often; the mean
    // estimated probability of the chosen local one times their number is the local share.
    let n_local = first.candidates[..n_feasible]
        .iter()
        .filter(|c| c.candidate.provider == "local")
        .count() as f64;
    let estimated_local_share = p_local / local as f64 * n_local;
    assert!(
        (estimated_local_share - local_share).abs() < 0.05,
        "estimated {estimated_local_share}, observed {local_share} ({n_feasible} feasible)"
    );
}
