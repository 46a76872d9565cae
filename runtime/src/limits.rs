//! Resource limits derived from a [`JobSpec`]: the rlimits set in the child before `exec`, the
//! size of the sandbox's `/tmp`, and the labels reported in `RunResult::enforced_limits`.
//!
//! Pure arithmetic, no system calls: `sys` turns [`Rlimit`]s into `setrlimit` calls.

use crate::job::JobSpec;

const MIB: u64 = 1024 * 1024;

/// Extra data-segment allowance on top of the requested memory, in MiB.
///
/// `RLIMIT_DATA` counts every writable private mapping, touched or not, so it sees more than
/// the resident memory the request budgets for: Node reserves ~48 MiB of writable heap space at
/// start-up that it never touches, glibc reserves per-thread malloc arenas, and every thread
/// stack counts in full. A fixed 64 MiB covers that interpreter baseline (Node starts within
/// it, measured on Node 20), so the user's own allocations get roughly `memory_mib`.
pub(crate) const DATA_HEADROOM_MIB: u64 = 64;

/// Largest file the job may write (`RLIMIT_FSIZE`), per file.
pub(crate) const FILE_SIZE_LIMIT_BYTES: u64 = 1024 * MIB;

/// Open file descriptors per process (`RLIMIT_NOFILE`).
pub(crate) const OPEN_FILES_LIMIT: u64 = 256;

/// The resources this crate limits with `setrlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// Writable private mappings (heap, anonymous memory, thread stacks).
    Data,
    /// CPU seconds; SIGXCPU at the soft limit, SIGKILL at the hard one.
    Cpu,
    /// Size of any one file written.
    FileSize,
    /// Open file descriptors.
    OpenFiles,
    /// Size of core dumps (0: none).
    Core,
}

/// One rlimit to set in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rlimit {
    pub(crate) resource: Resource,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// Every limit applied to one job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limits {
    /// `RLIMIT_DATA` in bytes: `memory_mib` plus [`DATA_HEADROOM_MIB`].
    pub(crate) data_bytes: u64,
    /// `RLIMIT_CPU` soft limit in seconds.
    pub(crate) cpu_soft_s: u64,
    /// `RLIMIT_CPU` hard limit in seconds.
    pub(crate) cpu_hard_s: u64,
    /// Size of the sandbox's RAM-backed `/tmp` (bubblewrap only): `memory_mib`.
    pub(crate) tmpfs_bytes: u64,
    /// Requested memory, for the out-of-memory heuristics.
    pub(crate) memory_bytes: u64,
}

impl Limits {
    pub(crate) fn for_job(job: &JobSpec) -> Self {
        let memory_bytes = job.memory_mib.saturating_mul(MIB);
        // CPU time: the wall-clock limit times the vCPUs granted (at least one), rounded up,
        // plus one second of slack so a single busy thread always meets the wall-clock limit
        // first. RLIMIT_CPU counts all threads of a process, so a multi-threaded process is
        // capped at its vCPU share of the wall-clock budget; each process has its own count.
        let cpu_budget = (job.timeout.as_secs_f64() * job.cpu.max(1.0)).ceil();
        let cpu_soft_s = if cpu_budget.is_finite() && cpu_budget < 1e15 {
            cpu_budget as u64 + 1
        } else {
            u64::MAX / 2
        };
        Self {
            data_bytes: memory_bytes.saturating_add(DATA_HEADROOM_MIB * MIB),
            cpu_soft_s,
            cpu_hard_s: cpu_soft_s.saturating_add(1),
            tmpfs_bytes: memory_bytes,
            memory_bytes,
        }
    }

    /// The rlimits to set in the child, all inherited by its descendants.
    pub(crate) fn rlimits(&self) -> Vec<Rlimit> {
        let both = |resource, value| Rlimit {
            resource,
            soft: value,
            hard: value,
        };
        vec![
            both(Resource::Data, self.data_bytes),
            Rlimit {
                resource: Resource::Cpu,
                soft: self.cpu_soft_s,
                hard: self.cpu_hard_s,
            },
            both(Resource::FileSize, FILE_SIZE_LIMIT_BYTES),
            both(Resource::OpenFiles, OPEN_FILES_LIMIT),
            both(Resource::Core, 0),
        ]
    }

    /// Memory limit of the job's control group: the data limit plus the same headroom again,
    /// so that allocations normally fail under `RLIMIT_DATA` first (a clean `MemoryError`)
    /// and the group's limit is the backstop for memory the data limit does not count
    /// (shared mappings, tmpfs files).
    pub(crate) fn cgroup_memory_bytes(&self) -> u64 {
        self.data_bytes.saturating_add(DATA_HEADROOM_MIB * MIB)
    }

    /// Labels for `RunResult::enforced_limits`, shared by every backend.
    pub(crate) fn describe(&self, job: &JobSpec) -> Vec<String> {
        vec![
            format!("wall_clock_s={}", job.timeout.as_secs_f64()),
            "kill_process_group".to_owned(),
            format!("rlimit_data_mib={}", self.data_bytes / MIB),
            format!("rlimit_cpu_s={}", self.cpu_soft_s),
            format!("rlimit_fsize_mib={}", FILE_SIZE_LIMIT_BYTES / MIB),
            format!("rlimit_nofile={OPEN_FILES_LIMIT}"),
            "rlimit_core=0".to_owned(),
            format!("output_bytes_per_stream={}", job.max_output_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sandstorm_features::{Language, RunRequest};

    use super::*;

    fn job(timeout_s: f64, cpu: f64, memory_mib: u64) -> JobSpec {
        let mut request = RunRequest::command(Language::Sh, "true");
        request.timeout_s = timeout_s;
        request.resources.cpu = cpu;
        request.resources.memory_mib = memory_mib;
        JobSpec::from_request(&request)
    }

    #[test]
    fn data_limit_is_memory_plus_headroom() {
        let limits = Limits::for_job(&job(10.0, 1.0, 256));
        assert_eq!(limits.data_bytes, (256 + DATA_HEADROOM_MIB) * MIB);
        assert_eq!(limits.tmpfs_bytes, 256 * MIB);
    }

    #[test]
    fn cpu_limit_never_fires_before_the_wall_clock_for_one_thread() {
        let limits = Limits::for_job(&job(1.5, 0.25, 64));
        assert_eq!(limits.cpu_soft_s, 3);
        assert_eq!(limits.cpu_hard_s, 4);
        let limits = Limits::for_job(&job(10.0, 4.0, 64));
        assert_eq!(limits.cpu_soft_s, 41);
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut spec = job(1.0, 1.0, 64);
        spec.memory_mib = u64::MAX;
        spec.timeout = Duration::MAX;
        let limits = Limits::for_job(&spec);
        assert_eq!(limits.data_bytes, u64::MAX);
        assert!(limits.cpu_hard_s > limits.cpu_soft_s);
    }

    #[test]
    fn rlimits_disable_core_dumps_and_cap_files() {
        let rlimits = Limits::for_job(&job(1.0, 1.0, 64)).rlimits();
        let find = |r| rlimits.iter().find(|l| l.resource == r).copied();
        assert_eq!(find(Resource::Core).map(|l| l.hard), Some(0));
        assert_eq!(
            find(Resource::FileSize).map(|l| l.soft),
            Some(FILE_SIZE_LIMIT_BYTES)
        );
        assert_eq!(
            find(Resource::OpenFiles).map(|l| l.soft),
            Some(OPEN_FILES_LIMIT)
        );
    }
}
