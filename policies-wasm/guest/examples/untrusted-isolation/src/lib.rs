//! Untrusted code needs isolation of at least gVisor.
//!
//! Code labelled `trust = untrusted` (for example written by an AI agent from a user prompt)
//! may only run behind a user-space kernel or a micro-VM. Code with network access and no
//! trust label must at least get its own namespaces. A filter, failing closed.

use sandstorm_policy_sdk::{Candidates, Isolation, Policy, Request, Verdicts};

struct UntrustedIsolation;

impl Policy for UntrustedIsolation {
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {
        let (floor, reason) = match req.label("trust") {
            Some("untrusted") => (
                Isolation::Gvisor,
                "untrusted code needs gVisor or a micro-VM",
            ),
            Some("trusted") => return Ok(()),
            Some(other) => {
                return Err(format!(
                    "unknown trust label {other:?}: expected trusted or untrusted"
                ));
            }
            None if req.allow_network() => (
                Isolation::Namespace,
                "code with network access and no trust label needs its own namespaces",
            ),
            None => return Ok(()),
        };
        for c in cands.iter().filter(|c| c.isolation() < floor) {
            out.reject(c.index(), reason);
        }
        Ok(())
    }
}

sandstorm_policy_sdk::export_policy!(UntrustedIsolation);
