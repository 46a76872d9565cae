//! The `process` backend: the job runs as a plain child process of this one, in a fresh job
//! directory, in its own session and process group, with rlimits and a minimal environment.
//! It shares the host's file system view, user and network: it cannot block the network
//! (see `IsolationBackend::can_block_network`) and only suits trusted code.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use sandstorm_features::{IsolationBackend, Language};

use crate::error::RuntimeError;
use crate::harden::{self, SeccompFilters};
use crate::job::{self, JobSpec, PreparedJob, SEARCH_PATH};
use crate::limits::Limits;
use crate::supervise::{self, Sandbox, Wrapped, Wrapper};
use crate::sys::{self, ChildHardening};
use crate::{Availability, Backend, RunControl, RunResult, RunStatus};

/// The user (and group) id jobs run as when the engine runs as root: `nobody`.
const NOBODY: u32 = 65534;

/// Wall-clock limit of a probe run.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs jobs as local child processes.
#[derive(Debug)]
pub(crate) struct ProcessBackend {
    seccomp: Arc<SeccompFilters>,
}

impl ProcessBackend {
    pub(crate) fn new(seccomp: Arc<SeccompFilters>) -> Self {
        Self { seccomp }
    }
}

impl Wrapper for ProcessBackend {
    fn wrap(
        &self,
        job: &JobSpec,
        prepared: &PreparedJob,
        _limits: &Limits,
    ) -> Result<Wrapped, RuntimeError> {
        let dir = prepared.dir().display().to_string();
        // Never run a job as root: as root the engine hands the job directory to `nobody`
        // and the child becomes `nobody` before exec.
        let user = sys::is_root().then_some((NOBODY, NOBODY));
        if let Some((uid, _)) = user {
            std::os::unix::fs::chown(prepared.dir(), Some(uid), Some(uid))
                .and_then(|()| job::chown_tree(prepared.dir(), uid))
                .map_err(RuntimeError::JobDir)?;
        }
        Ok(Wrapped {
            program: prepared.program().into(),
            args: prepared.args().iter().map(OsString::from).collect(),
            env: vec![
                ("PATH".into(), SEARCH_PATH.into()),
                ("HOME".into(), dir.clone()),
                ("LANG".into(), "C.UTF-8".into()),
                // The rest of the file system is read-only under Landlock.
                ("TMPDIR".into(), dir),
            ],
            hardening: ChildHardening {
                cgroup_procs: Vec::new(),
                user,
                inherit: Vec::new(),
                landlock: harden::landlock(prepared.dir(), job.allow_network).fd,
                seccomp: self.seccomp.programs(job.allow_network),
            },
        })
    }
}

impl Sandbox for ProcessBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Process
    }

    fn enforced(&self, job: &JobSpec) -> Vec<String> {
        let mut labels = vec![
            if sys::is_root() {
                "user=nobody"
            } else {
                "user=caller"
            }
            .to_owned(),
            "no_new_privs".to_owned(),
            self.seccomp.label().to_owned(),
            harden::landlock_label().to_owned(),
        ];
        labels.push(
            if job.allow_network || !self.seccomp.is_enforced() {
                "network=host"
            } else {
                "network=blocked_by_seccomp"
            }
            .to_owned(),
        );
        labels
    }
}

impl Backend for ProcessBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Process
    }

    fn probe(&self) -> Availability {
        probe_with(self, "/bin/sh runs in a job directory with rlimits")
    }

    fn run(&self, job: &JobSpec) -> Result<RunResult, RuntimeError> {
        supervise::execute(self, job, &RunControl::new())
    }

    fn run_controlled(
        &self,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RunResult, RuntimeError> {
        supervise::execute(self, job, control)
    }
}

/// A tiny job (`/bin/sh -c /bin/true`) that must finish `ok` within [`PROBE_TIMEOUT`].
pub(crate) fn probe_job() -> JobSpec {
    JobSpec {
        language: Language::Sh,
        command: Some("/bin/true".to_owned()),
        code: None,
        files: Vec::new(),
        cpu: 1.0,
        memory_mib: 64,
        gpu: None,
        timeout: PROBE_TIMEOUT,
        allow_network: false,
        max_output_bytes: 4096,
    }
}

/// Runs [`probe_job`] on `sandbox` and reports what happened.
pub(crate) fn probe_with(sandbox: &dyn Wrapper, what: &str) -> Availability {
    match supervise::execute(sandbox, &probe_job(), &RunControl::new()) {
        Ok(r) if r.status == RunStatus::Ok => Availability::Available {
            detail: format!("{what} (probe took {:.0} ms)", r.total_ms),
        },
        Ok(r) => {
            let how = match (r.exit_code, r.signal) {
                _ if r.status == RunStatus::Timeout => {
                    format!("did not finish within {} s", PROBE_TIMEOUT.as_secs())
                }
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => format!("ended with status {}", r.status),
            };
            let stderr = r.stderr.trim();
            Availability::Unavailable {
                reason: if stderr.is_empty() {
                    format!("probe run {how}")
                } else {
                    format!("probe run {how}: {stderr}")
                },
            }
        }
        Err(e) => Availability::Unavailable {
            reason: e.to_string(),
        },
    }
}
