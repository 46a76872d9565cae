//! EU tenants stay in EU regions.
//!
//! A request is an EU tenant's when its tenant id ends in `-eu` or it carries the label
//! `residency = eu`. Such requests may only run in the `eu` area: every other candidate,
//! including this host (whose location the policy cannot know), is rejected. A filter: if this
//! policy fails, the router rejects every candidate rather than risk moving EU data out.

use sandstorm_policy_sdk::{Candidates, Policy, Request, Verdicts};

struct EuResidency;

fn is_eu_tenant(req: &Request) -> bool {
    req.tenant().ends_with("-eu") || req.label("residency") == Some("eu")
}

impl Policy for EuResidency {
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {
        if !is_eu_tenant(req) {
            return Ok(());
        }
        let why = out.reason("EU tenant: data must stay in EU regions");
        for c in cands.iter().filter(|c| c.area() != "eu") {
            out.reject(c.index(), why);
        }
        Ok(())
    }
}

sandstorm_policy_sdk::export_policy!(EuResidency);
