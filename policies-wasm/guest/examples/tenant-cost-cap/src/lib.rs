//! Caps the predicted cost of one request by the tenant's tier.
//!
//! The tier comes from the request label `tier` (`free`, `team`, `enterprise`; `team` when
//! absent). Candidates whose predicted cost is above the tier's cap are rejected; those within
//! 20 % of the cap are penalised, so that routing keeps headroom for retries.

use sandstorm_policy_sdk::{Candidates, Policy, Request, Verdicts};

struct TenantCostCap;

/// Maximum predicted cost of one request, USD, per tier.
fn cap_usd(tier: &str) -> Option<f64> {
    match tier {
        "free" => Some(0.0005),
        "team" => Some(0.01),
        "enterprise" => Some(0.25),
        _ => None,
    }
}

impl Policy for TenantCostCap {
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {
        let tier = req.label("tier").unwrap_or("team");
        let cap = cap_usd(tier)
            .ok_or_else(|| format!("unknown tier {tier:?}: expected free, team or enterprise"))?;
        for c in cands.iter() {
            let cost = c.cost_usd();
            if !(cost <= cap) {
                out.reject(
                    c.index(),
                    "predicted cost above the tenant tier's cap per request",
                );
            } else if cost > 0.8 * cap {
                out.adjust(
                    c.index(),
                    1.25,
                    "predicted cost within 20% of the tier's cap",
                );
            }
        }
        Ok(())
    }
}

sandstorm_policy_sdk::export_policy!(TenantCostCap);
