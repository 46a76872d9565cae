//! Modal: its sandbox API is gRPC only (`modal_proto/api.proto`, shipped in the `modal` Python
//! wheel), and this build has no gRPC client for it. The provider is always reported
//! unavailable with that reason, so the router and `sandstorm doctor` can say why.

use sandstorm_features::Candidate;
use sandstorm_runtime::{Availability, JobSpec, RunControl};

use crate::error::AdapterError;
use crate::{RemoteProvider, RemoteRun, RunFailure};

const PROVIDER: &str = "modal";

/// Why Modal cannot be used.
const REASON: &str = "modal's gRPC client is not implemented in this build";

/// The Modal placeholder: never available, every run refused with the reason.
#[derive(Debug, Default)]
pub struct ModalProvider;

impl RemoteProvider for ModalProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn availability(&self) -> Availability {
        Availability::Unavailable {
            reason: REASON.into(),
        }
    }

    fn run(
        &self,
        _candidate: &Candidate,
        _job: &JobSpec,
        _control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        Err(AdapterError::NotConfigured {
            provider: PROVIDER.into(),
            reason: REASON.into(),
        }
        .into())
    }
}
