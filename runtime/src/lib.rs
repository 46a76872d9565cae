//! Local execution backends: run a [`JobSpec`] on this host and report a [`RunResult`].
//!
//! # Tiers
//!
//! | backend      | isolation level | what separates the job from the host                       |
//! |--------------|-----------------|-------------------------------------------------------------|
//! | `process`    | process         | rlimits, own session/process group, clean environment, user `nobody` (when the engine is root), seccomp, Landlock, control group |
//! | `bubblewrap` | namespace       | all of the above (but Landlock) inside `bwrap` namespaces    |
//! | `gvisor`     | gvisor          | a gVisor sandbox per job (`runsc`, ptrace platform) from a warm pool, user `nobody` inside, the same seccomp policy installed by gVisor |
//!
//! Every tier's promise is attacked by `tests/probes.rs` (the security probe suite) and
//! `sandstorm doctor` lists what works on this host ([`Engine::availability`], [`host_facts`]).
//! Rootless OCI and local microVMs have no runner in this engine; the engine reports them
//! unavailable with the reason.
//!
//! Hardening shared by `process` and `bubblewrap` (see `harden` and `cgroup`): a seccomp
//! filter compiled once per engine (no ptrace, `process_vm_*`, io_uring, mount, namespaces,
//! kernel-module or keyring calls; no sockets but `AF_UNIX` when the network is not allowed),
//! `no_new_privs`, and a control group per job with `pids.max` and a memory limit (cgroup v2,
//! or v1/hybrid hierarchies; an OOM kill is reported as `oom` / `memory_cgroup_oom`). The
//! process tier adds Landlock (read-only host programs and libraries, read-write job
//! directory, nothing else; signals and abstract sockets scoped to the job) and, when the
//! engine runs as root, drops to `nobody`.
//!
//! `process` and `bubblewrap` run the job in a fresh temporary directory holding the request's files (and
//! `main.<ext>` for inline code, run with the language's interpreter; a `command` runs with
//! `/bin/sh -c`), and share one supervisor (`supervise`), so the following holds for both:
//!
//! - **wall clock**: at `timeout` the supervisor SIGKILLs the whole process group; after a
//!   normal exit it SIGKILLs the group again, so background children do not outlive the run.
//! - **memory**: `RLIMIT_DATA` = `memory_mib` + 64 MiB of interpreter headroom (see
//!   `limits::DATA_HEADROOM_MIB`). Allocations beyond it fail (Python raises `MemoryError`);
//!   the run is reported `oom` from the interpreter's report or from a signal death near the
//!   limit (see `outcome` for the exact rules). Resident memory is not limited separately and
//!   page cache or tmpfs use is not counted.
//! - **CPU**: `RLIMIT_CPU` = ⌈timeout × max(cpu, 1)⌉ + 1 s, counted per process over all its
//!   threads (reported as `timeout` with error class `cpu_time_limit`). `cpu` is a budget,
//!   not a rate: no cgroup throttles a job to fractional vCPUs.
//! - **files**: `RLIMIT_FSIZE` 1 GiB per file, `RLIMIT_NOFILE` 256, `RLIMIT_CORE` 0. Total
//!   disk use of the job directory is not limited.
//! - **output**: at most `max_output_bytes` of stdout and of stderr are kept; the rest is read
//!   and discarded and `*_truncated` is set.
//! - **environment**: cleared to `PATH`, `HOME` (the job directory) and `LANG`.
//!
//! `bubblewrap` adds: new user, pid, ipc, uts, cgroup, mount and (unless `allow_network`)
//! network namespaces; all capabilities dropped (so the rlimits cannot be raised back);
//! read-only `/usr` and merged-usr links; only `ld.so.cache`, `alternatives` and `localtime`
//! from `/etc` (plus DNS files and public CA certificates when the network is allowed; never
//! `shadow`, `passwd`, `ssl/private`, `/root` or `/home`); private `/dev` and `/proc`; `/tmp`
//! a tmpfs capped at `memory_mib`; the job directory read-write at `/work`; the rest of the
//! root read-only. The pid namespace and `--die-with-parent` kill even processes that left the
//! process group. The job runs as the namespace's pid 1 (`--as-pid-1`) so its peak memory and
//! CPU time reach the supervisor. As pid 1 that first process ignores signals without a
//! handler other than kernel faults and SIGKILL: its own `kill` of itself does nothing, and
//! SIGXCPU/SIGXFSZ do not end it (the CPU limit then kills it with SIGKILL at the hard
//! limit; oversized writes fail with `EFBIG`). Its children behave normally.
//!
//! A caller that runs a job on another thread can pass a [`RunControl`] to
//! [`Backend::run_controlled`] to cancel it (the same group kill as the wall-clock limit; the
//! run reports `failed` / `cancelled`) and to observe its output while it is produced.
//!
//! Not enforced: total disk use of the job directory (only per-file size); on hosts without
//! writable control groups, the process count and the whole-job memory (the run's
//! `enforced_limits` says `cgroup=unavailable`); a `process` job's `AF_UNIX` sockets can reach
//! host daemons' sockets its user may open. The router still never offers `process` to
//! requests without network (`IsolationBackend::can_block_network`), although the seccomp
//! filter now refuses their sockets too.

mod bubblewrap;
mod cgroup;
mod control;
mod engine;
mod error;
mod gvisor;
mod harden;
mod hostfs;
mod job;
mod limits;
mod oci;
mod outcome;
mod process;
mod supervise;
mod sys;

use std::fmt;

pub use control::{OutputObserver, OutputStream, RunControl};
pub use engine::{Engine, EngineConfig};
pub use error::RuntimeError;
pub use gvisor::DEFAULT_GVISOR_POOL_SIZE;
pub use job::JobSpec;
use sandstorm_features::IsolationBackend;
pub use sandstorm_features::telemetry::RunStatus;

/// One fact about this host's ability to confine jobs, for `sandstorm doctor`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostFact {
    /// What is checked, e.g. `seccomp`.
    pub name: &'static str,
    /// Whether it is enforced on this host.
    pub enforced: bool,
    /// What is enforced, or why not.
    pub detail: String,
}

/// Seccomp, Landlock and control groups on this host: what local jobs get beyond rlimits.
pub fn host_facts() -> Vec<HostFact> {
    let seccomp = harden::SeccompFilters::compile();
    let landlock = harden::landlock_label();
    let cgroups = cgroup::describe();
    vec![
        HostFact {
            name: "seccomp",
            enforced: seccomp.is_enforced(),
            detail: format!(
                "{} (process and bubblewrap tiers; gVisor installs the same policy)",
                seccomp.label()
            ),
        },
        HostFact {
            name: "landlock",
            enforced: landlock.starts_with("landlock=host"),
            detail: format!("{landlock} (process tier)"),
        },
        HostFact {
            name: "cgroups",
            enforced: !cgroups.starts_with("unavailable"),
            detail: cgroups,
        },
        HostFact {
            name: "user",
            enforced: true,
            detail: if sys::is_root() {
                "engine runs as root: process-tier jobs run as nobody, gVisor jobs as nobody inside the sandbox".to_owned()
            } else {
                "engine runs unprivileged: jobs run as the engine's user".to_owned()
            },
        },
    ]
}

/// Whether a backend works on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It ran its probe job; `detail` says what was checked.
    Available { detail: String },
    /// It cannot run jobs here; `reason` says why.
    Unavailable { reason: String },
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available { .. })
    }

    /// What was checked when available, why not otherwise.
    pub fn explanation(&self) -> &str {
        match self {
            Availability::Available { detail } => detail,
            Availability::Unavailable { reason } => reason,
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::Available { detail } => write!(f, "available: {detail}"),
            Availability::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// What happened to one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub status: RunStatus,
    /// Exit code, when the program exited (under `bubblewrap`, a program killed by signal N
    /// shows as exit code 128 + N).
    pub exit_code: Option<i32>,
    /// Signal that killed the program, when it did not exit.
    pub signal: Option<i32>,
    /// Captured stdout (lossy UTF-8), at most `max_output_bytes`.
    pub stdout: String,
    /// Captured stderr (lossy UTF-8), at most `max_output_bytes`.
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Wall-clock time when `run` was entered.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    /// From `run` entry until the child was spawned (job directory set-up and spawn).
    pub start_ms: f64,
    /// Wall time of the child, from spawn until it exited or was killed.
    pub exec_ms: f64,
    /// From `run` entry until it returned (including clean-up).
    pub total_ms: f64,
    /// Peak resident memory of the largest single process among the child and the
    /// descendants it waited for (`ru_maxrss`), in MiB.
    pub peak_memory_mib: Option<f64>,
    /// Why the run did not succeed, e.g. `exit_code`, `wall_clock_timeout`, `memory_limit`,
    /// `signal:SIGSEGV`; `None` for `ok`.
    pub error_class: Option<String>,
    /// The limits and isolation applied to this run, e.g. `rlimit_data_mib=576`,
    /// `network=blocked`.
    pub enforced_limits: Vec<String>,
}

/// One way of running jobs on this host.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> IsolationBackend;
    /// Runs a small real job to find out whether the backend works here. Bounded in time.
    fn probe(&self) -> Availability;
    /// Runs `job` to completion (or to its limits). `Err` means the job could not be run at
    /// all (invalid job, missing interpreter, spawn failure); everything that happened once
    /// it ran is in the [`RunResult`].
    fn run(&self, job: &JobSpec) -> Result<RunResult, RuntimeError>;
    /// [`Backend::run`] under `control`: cancellable from another thread, with its output
    /// observed as it is produced. A backend that cannot do either ignores `control`.
    fn run_controlled(
        &self,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RunResult, RuntimeError> {
        let _ = control;
        self.run(job)
    }
}
