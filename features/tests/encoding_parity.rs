//! Training/serving parity: encoding a (request, candidate, context) from in-memory structs must
//! give exactly the row the trainer gets after the same decision went through a telemetry Arrow
//! batch.

use proptest::prelude::*;
use sandstorm_features::encoding::{CandidateEncoder, FeatureInput, FeatureSpace, N_FEATURES};
use sandstorm_features::history::{HistoryFeatures, OutcomeHistory, relate};
use sandstorm_features::telemetry::{TelemetryRecord, from_record_batch, to_record_batch};
use sandstorm_features::{Catalog, DecisionContext, GpuRequest, InputFile, Language, RunRequest};
use time::OffsetDateTime;

fn arb_request() -> impl Strategy<Value = RunRequest> {
    (
        prop::sample::select(Language::ALL.to_vec()),
        "[a-z0-9 ]{1,80}",
        0.1f64..64.0,
        16u64..65_536,
        prop::option::of((
            1u32..4,
            prop::sample::select(vec!["t4", "a10g", "h100", "unknown-gpu"]),
        )),
        0.5f64..3600.0,
        any::<bool>(),
        prop::collection::vec(("[a-z]{1,8}", "[ -~]{0,200}"), 0..4),
        prop::option::of(prop::sample::select(vec![
            "ci/unit",
            "bench/pgbench",
            "nightly",
        ])),
    )
        .prop_map(
            |(language, command, cpu, memory_mib, gpu, timeout_s, net, files, workload)| {
                let mut r = RunRequest::command(language, command);
                r.resources.cpu = cpu;
                r.resources.memory_mib = memory_mib;
                r.resources.gpu = gpu.map(|(count, kind)| GpuRequest {
                    count,
                    kinds: vec![kind.to_owned()],
                });
                r.timeout_s = timeout_s;
                r.allow_network = net;
                r.files = files
                    .into_iter()
                    .map(|(path, content)| InputFile { path, content })
                    .collect();
                r.workload = workload.map(str::to_owned);
                r
            },
        )
}

fn arb_time() -> impl Strategy<Value = OffsetDateTime> {
    // 2020-01-01 .. 2035-01-01, microsecond resolution (what telemetry stores).
    (1_577_836_800_000_000i64..2_051_222_400_000_000)
        .prop_map(sandstorm_features::telemetry::from_micros)
}

/// History features of a few candidates built from random past outcomes (some without any).
fn arb_histories() -> impl Strategy<Value = Vec<HistoryFeatures>> {
    prop::collection::vec(
        prop::collection::vec((0i64..400, -5.0f64..15.0), 0..12),
        1..5,
    )
    .prop_map(|per_candidate| {
        let mut fs: Vec<HistoryFeatures> = per_candidate
            .iter()
            .map(|outcomes| {
                let mut h = OutcomeHistory::new();
                for (day, v) in outcomes {
                    h.push(day * 86_400, *v);
                }
                h.features(401 * 86_400)
            })
            .collect();
        relate(&mut fs);
        fs
    })
}

fn rows_equal(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

proptest! {
    #[test]
    fn struct_path_and_arrow_path_encode_identically(
        requests in prop::collection::vec((arb_request(), any::<prop::sample::Index>(), arb_time(), arb_histories(), any::<prop::sample::Index>()), 1..20),
        fit_on_half in any::<bool>(),
    ) {
        let catalog = Catalog::default_catalog();
        let candidates = catalog.candidates();
        let triples: Vec<_> = requests
            .iter()
            .map(|(r, idx, at, hs, hi)| (r, &candidates[idx.index(candidates.len())], DecisionContext::at(*at), hs[hi.index(hs.len())]))
            .collect();
        // Fit the vocabulary on part of the data so unseen levels are exercised too.
        let fit_n = if fit_on_half { triples.len().div_ceil(2) } else { triples.len() };
        let space = FeatureSpace::fit(triples[..fit_n].iter().map(|(r, c, ctx, h)| FeatureInput::from_parts_with_history(r, c, ctx, *h)));

        let records: Vec<TelemetryRecord> = triples
            .iter()
            .map(|(r, c, ctx, h)| {
                let mut rec = TelemetryRecord::for_choice(r, c, ctx);
                rec.history = *h;
                rec
            })
            .collect();
        let batch = to_record_batch(&records).unwrap();
        let back = from_record_batch(&batch).unwrap();
        prop_assert_eq!(&back, &records);

        for ((r, c, ctx, h), rec) in triples.iter().zip(&back) {
            let mut serving = [0.0; N_FEATURES];
            let mut training = [0.0; N_FEATURES];
            let s1 = space.encode(&FeatureInput::from_parts_with_history(r, c, ctx, *h), &mut serving);
            let s2 = space.encode(&FeatureInput::from_record(rec), &mut training);
            prop_assert!(rows_equal(&serving, &training), "serving {:?}\ntraining {:?}", serving, training);
            prop_assert_eq!(s1, s2);
        }
    }
}

proptest! {
    /// The router's `CandidateEncoder` gives exactly the rows (and unseen-level counts) of
    /// `FeatureSpace::encode` on `FeatureInput::from_parts`.
    #[test]
    fn candidate_encoder_encodes_like_encode(
        requests in prop::collection::vec((arb_request(), arb_time(), arb_histories()), 1..6),
        fit in prop::collection::vec((arb_request(), any::<prop::sample::Index>(), arb_time()), 1..12),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let catalog = Catalog::default_catalog();
        let candidates = catalog.candidates();
        // A vocabulary fitted on a few decisions, so unseen levels occur too.
        let space = FeatureSpace::fit(fit.iter().map(|(r, idx, at)| {
            let c = &candidates[idx.index(candidates.len())];
            FeatureInput::from_parts(r, c, &DecisionContext::at(*at))
        }));
        let encoder = CandidateEncoder::new(&space, &candidates);
        for (request, at, hs) in &requests {
            let ctx = DecisionContext::at(*at);
            let chosen: Vec<usize> = picks.iter().map(|p| p.index(candidates.len())).collect();
            let history = |k: usize| hs[k % hs.len()];
            let mut fast = Vec::new();
            let fast_stats = encoder.encode_all_with_history(
                request,
                &ctx,
                chosen.iter().enumerate().map(|(k, &i)| (i, &candidates[i], history(k))),
                &mut fast,
            );
            let mut reference = Vec::new();
            let ref_stats = space.encode_all(
                chosen.iter().enumerate().map(|(k, &i)| FeatureInput::from_parts_with_history(request, &candidates[i], &ctx, history(k))),
                &mut reference,
            );
            prop_assert_eq!(fast.len(), chosen.len() * N_FEATURES);
            prop_assert!(fast.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()),
                "encoder {:?}\nencode {:?}", fast, reference);
            prop_assert_eq!(fast_stats, ref_stats);
        }
    }
}
