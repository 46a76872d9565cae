//! Prefers edge targets within 30 ms of the router.
//!
//! Self-hosted edge agents and this host are close to the users the router serves; when one of
//! them is within 30 ms round trip, it is favoured (objective × 0.8). Far targets (over 150 ms)
//! are penalised for latency-sensitive requests. A scorer: it never rejects, and if it fails the
//! router simply ignores it.

use sandstorm_policy_sdk::{Candidates, Policy, ProviderKind, Request, Verdicts};

struct EdgeRtt;

const NEAR_MS: f32 = 30.0;
const FAR_MS: f32 = 150.0;

impl Policy for EdgeRtt {
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {
        let latency_sensitive = req.strategy() != "optimize_cost";
        for c in cands.iter() {
            let near_edge = matches!(c.kind(), ProviderKind::Edge | ProviderKind::Local);
            if near_edge && c.rtt_ms() <= NEAR_MS {
                out.adjust(c.index(), 0.8, "edge target within 30 ms of the router");
            } else if latency_sensitive && c.rtt_ms() > FAR_MS {
                out.adjust(c.index(), 1.2, "more than 150 ms from the router");
            }
        }
        Ok(())
    }
}

sandstorm_policy_sdk::export_policy!(EdgeRtt);
