//! Contract tests of the remote adapters against test doubles of each provider's API
//! (`doubles/`): requests checked field by field, answers, streams and error bodies as the
//! providers document them.

mod daytona;
mod doubles;
mod e2b;
mod kubernetes;
mod modal;
mod morph;
mod registry;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandstorm_adapters::{AdapterError, RunFailure};
use sandstorm_features::{Candidate, Catalog, GpuRequest, IsolationBackend, Language, RunRequest};
use sandstorm_runtime::{JobSpec, OutputStream, RunControl};

/// The default catalog's first candidate of `provider` (with `backend`, if given).
pub(crate) fn candidate(provider: &str, backend: Option<IsolationBackend>) -> Candidate {
    Catalog::default_catalog()
        .candidates()
        .into_iter()
        .find(|c| c.provider == provider && backend.is_none_or(|b| c.backend == b))
        .expect("candidate in the default catalog")
}

/// A shell-command job with 1 vCPU, 512 MiB and a 10 s timeout.
pub(crate) fn command_job(command: &str) -> JobSpec {
    let mut request = RunRequest::command(Language::Sh, command);
    request.timeout_s = 10.0;
    JobSpec::from_request(&request)
}

/// A shell-command job that asks for 2 GPUs of any kind.
pub(crate) fn gpu_job() -> JobSpec {
    let mut job = command_job("nvidia-smi");
    job.gpu = Some(GpuRequest {
        count: 2,
        kinds: Vec::new(),
    });
    job
}

/// Checks that `failure` is `provider`'s refusal of [`gpu_job`] before anything was created,
/// saying `why` it has no GPU.
pub(crate) fn assert_gpu_refused(failure: &RunFailure, provider: &str, why: &str) {
    assert!(
        matches!(failure.error, AdapterError::Unsupported { .. }),
        "{failure:?}"
    );
    assert!(!failure.retryable() && !failure.error.is_user_error());
    assert!(failure.usage.is_none(), "nothing was created");
    assert_eq!(
        failure.to_string(),
        format!(
            "provider `{provider}` cannot run this: the job asks for 2 GPUs (any kind), but {why}"
        )
    );
}

/// An inline Python job.
pub(crate) fn code_job(code: &str) -> JobSpec {
    let mut job = command_job("unused");
    job.language = Language::Python;
    job.command = None;
    job.code = Some(code.to_owned());
    job
}

/// One observed chunk of output.
pub(crate) type Chunk = (OutputStream, Vec<u8>);

/// Output chunks a control's observer saw.
#[derive(Clone, Default)]
pub(crate) struct Observed(Arc<Mutex<Vec<Chunk>>>);

impl Observed {
    pub(crate) fn control(&self) -> RunControl {
        let sink = Arc::clone(&self.0);
        RunControl::with_output_observer(move |stream, chunk| {
            doubles::lock(&sink).push((stream, chunk.to_vec()));
        })
    }

    pub(crate) fn chunks(&self) -> Vec<Chunk> {
        doubles::lock(&self.0).clone()
    }

    /// Everything observed on `stream`, concatenated.
    pub(crate) fn text(&self, stream: OutputStream) -> String {
        let bytes: Vec<u8> = self
            .chunks()
            .into_iter()
            .filter(|(s, _)| *s == stream)
            .flat_map(|(_, c)| c)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Cancels `control` as soon as `observed` saw `marker` on stdout (or after 10 s).
pub(crate) fn cancel_when_seen(observed: &Observed, control: &RunControl, marker: &'static str) {
    let observed = observed.clone();
    let control = control.clone();
    std::thread::spawn(move || {
        for _ in 0..1000 {
            if observed.text(OutputStream::Stdout).contains(marker) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        control.cancel();
    });
}
