//! Turns what happened to a child ([`Outcome`]) into a [`RunStatus`] and an error class.
//!
//! What is detected, in order:
//! 0. `failed` / `cancelled`: a `RunControl::cancel` killed the group and the child did not
//!    exit 0 on its own.
//! 1. `timeout` / `wall_clock_timeout`: the supervisor killed the group at the wall-clock limit
//!    and the child died of that SIGKILL.
//! 2. `timeout` / `cpu_time_limit`: the child died of SIGXCPU, or of SIGKILL after using at
//!    least its `RLIMIT_CPU` soft limit (the kernel's hard-limit kill). A CPU-time budget is a
//!    time budget, so it is reported as a timeout with its own class.
//! 3. `unavailable` / `sandbox_setup`: the backend says its wrapper failed before the job ran.
//! 4. `oom` / `memory_limit`: the run failed and the end of stderr carries an interpreter's
//!    allocation-failure report (Python `MemoryError`, Node "heap out of memory", bash
//!    `xmalloc`, "cannot allocate memory"). Under `RLIMIT_DATA` allocations fail instead of
//!    the process being killed, so this is how a Python job over its limit ends. A program
//!    that raises `MemoryError` itself is also reported here.
//! 5. `oom` / `memory_kill`: the child died of SIGKILL, SIGSEGV or SIGBUS that the supervisor
//!    did not send, with a peak resident set of at least 90% of the requested memory (the
//!    kernel OOM killer, or a native program that did not check a failed allocation). With a
//!    lower peak the same signal is an ordinary `failed`.
//! 6. `failed` / `file_size_limit` for SIGXFSZ, `failed` / `signal:<NAME>` for other signals,
//!    `failed` / `exit_code` for any other non-zero exit, `ok` for exit 0.

use sandstorm_features::telemetry::RunStatus;

use crate::limits::Limits;
use crate::supervise::Outcome;
use crate::sys::{Termination, signal_name};

/// Status and error class of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) status: RunStatus,
    pub(crate) error_class: Option<String>,
}

impl Verdict {
    fn new(status: RunStatus, class: &str) -> Self {
        Self {
            status,
            error_class: Some(class.to_owned()),
        }
    }
}

/// Fraction of the requested memory a signal-killed child must have reached to count as
/// killed for memory.
const OOM_PEAK_FRACTION: f64 = 0.9;

/// Classifies `outcome`. `signals_as_exit_codes`: the wrapper reports a child killed by signal
/// N as exit 128 + N (bubblewrap does). `setup_failed`: the wrapper failed before the job ran.
pub(crate) fn classify(
    outcome: &Outcome,
    limits: &Limits,
    signals_as_exit_codes: bool,
    setup_failed: bool,
) -> Verdict {
    let signal = match outcome.termination {
        Termination::Signaled(s) => Some(s),
        Termination::Exited(code) if signals_as_exit_codes && (129..=192).contains(&code) => {
            Some(code - 128)
        }
        Termination::Exited(_) => None,
    };
    if outcome.cancelled && outcome.termination != Termination::Exited(0) {
        return Verdict::new(RunStatus::Failed, "cancelled");
    }
    if outcome.oom_killed && outcome.termination != Termination::Exited(0) {
        return Verdict::new(RunStatus::Oom, "memory_cgroup_oom");
    }
    if outcome.timed_out && outcome.termination == Termination::Signaled(libc::SIGKILL) {
        return Verdict::new(RunStatus::Timeout, "wall_clock_timeout");
    }
    let cpu_exhausted = outcome.usage.cpu_time.as_secs() >= limits.cpu_soft_s;
    if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && cpu_exhausted) {
        return Verdict::new(RunStatus::Timeout, "cpu_time_limit");
    }
    if outcome.termination == Termination::Exited(0) {
        return Verdict {
            status: RunStatus::Ok,
            error_class: None,
        };
    }
    if setup_failed {
        return Verdict::new(RunStatus::Unavailable, "sandbox_setup");
    }
    if reports_allocation_failure(&outcome.stderr.tail) {
        return Verdict::new(RunStatus::Oom, "memory_limit");
    }
    let peak_bytes = outcome.usage.max_rss_kib.saturating_mul(1024) as f64;
    let near_limit = peak_bytes >= OOM_PEAK_FRACTION * limits.memory_bytes as f64;
    match signal {
        Some(libc::SIGKILL | libc::SIGSEGV | libc::SIGBUS) if near_limit => {
            Verdict::new(RunStatus::Oom, "memory_kill")
        }
        Some(libc::SIGXFSZ) => Verdict::new(RunStatus::Failed, "file_size_limit"),
        Some(s) => Verdict::new(RunStatus::Failed, &format!("signal:{}", signal_name(s))),
        None => Verdict::new(RunStatus::Failed, "exit_code"),
    }
}

/// Whether the end of stderr is an interpreter's report of a failed allocation.
fn reports_allocation_failure(stderr_tail: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr_tail);
    let last_line = text.lines().rev().find(|l| !l.trim().is_empty());
    let python = last_line.is_some_and(|l| {
        let l = l.trim();
        l == "MemoryError" || l.starts_with("MemoryError:")
    });
    let lower = last_line.map(str::to_ascii_lowercase).unwrap_or_default();
    let shell = lower.contains("xmalloc") || lower.contains("cannot allocate memory");
    // Node prints its fatal error, then a native stack trace: search the whole tail.
    let node = text.contains("JavaScript heap out of memory")
        || text.contains("Fatal process out of memory");
    python || shell || node
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sandstorm_features::{Language, RunRequest};

    use super::*;
    use crate::job::JobSpec;
    use crate::supervise::Captured;
    use crate::sys::Usage;

    fn limits() -> Limits {
        let mut request = RunRequest::command(Language::Sh, "true");
        request.resources.memory_mib = 100;
        request.timeout_s = 10.0;
        Limits::for_job(&JobSpec::from_request(&request))
    }

    fn outcome(termination: Termination, stderr: &str) -> Outcome {
        Outcome {
            termination,
            timed_out: false,
            cancelled: false,
            stdout: Captured::default(),
            stderr: Captured {
                bytes: stderr.as_bytes().to_vec(),
                truncated: false,
                tail: stderr.as_bytes().to_vec(),
            },
            spawned: Instant::now(),
            exec: Duration::ZERO,
            oom_killed: false,
            usage: Usage::default(),
        }
    }

    fn status(o: &Outcome, wrapped: bool) -> (RunStatus, Option<String>) {
        let v = classify(o, &limits(), wrapped, false);
        (v.status, v.error_class)
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            status(&outcome(Termination::Exited(0), ""), false),
            (RunStatus::Ok, None)
        );
        assert_eq!(
            status(&outcome(Termination::Exited(3), "boom"), false).0,
            RunStatus::Failed
        );
    }

    #[test]
    fn only_a_supervisor_kill_is_a_wall_clock_timeout() {
        let mut o = outcome(Termination::Signaled(libc::SIGKILL), "");
        assert_eq!(
            status(&o, false),
            (RunStatus::Failed, Some("signal:SIGKILL".into()))
        );
        o.timed_out = true;
        assert_eq!(
            status(&o, false),
            (RunStatus::Timeout, Some("wall_clock_timeout".into()))
        );
        // Exited on its own just as the limit passed: its own status stands.
        let mut o = outcome(Termination::Exited(0), "");
        o.timed_out = true;
        assert_eq!(status(&o, false).0, RunStatus::Ok);
    }

    #[test]
    fn cpu_limit_is_a_timeout_with_its_own_class() {
        let o = outcome(Termination::Signaled(libc::SIGXCPU), "");
        assert_eq!(
            status(&o, false),
            (RunStatus::Timeout, Some("cpu_time_limit".into()))
        );
        // bubblewrap reports the same death as exit 128 + SIGXCPU.
        let o = outcome(Termination::Exited(128 + libc::SIGXCPU), "");
        assert_eq!(status(&o, true).0, RunStatus::Timeout);
        assert_eq!(status(&o, false).0, RunStatus::Failed);
    }

    #[test]
    fn interpreter_memory_errors_are_oom() {
        let py = "Traceback (most recent call last):\n  File \"<string>\", line 1\nMemoryError\n";
        assert_eq!(
            status(&outcome(Termination::Exited(1), py), false),
            (RunStatus::Oom, Some("memory_limit".into()))
        );
        let node = "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of \
                    memory\n 1: 0xb8 node::Abort()\n";
        assert_eq!(
            status(&outcome(Termination::Signaled(libc::SIGABRT), node), false).0,
            RunStatus::Oom
        );
        // Mentioning MemoryError earlier is not enough.
        let text = "MemoryError happened once\nValueError: bad\n";
        assert_eq!(
            status(&outcome(Termination::Exited(1), text), false).0,
            RunStatus::Failed
        );
        // A successful run is ok whatever it prints.
        assert_eq!(
            status(&outcome(Termination::Exited(0), "MemoryError\n"), false).0,
            RunStatus::Ok
        );
    }

    #[test]
    fn signal_deaths_are_oom_only_near_the_memory_limit() {
        let mut o = outcome(Termination::Signaled(libc::SIGSEGV), "");
        o.usage.max_rss_kib = 10 * 1024;
        assert_eq!(
            status(&o, false),
            (RunStatus::Failed, Some("signal:SIGSEGV".into()))
        );
        o.usage.max_rss_kib = 95 * 1024;
        assert_eq!(
            status(&o, false),
            (RunStatus::Oom, Some("memory_kill".into()))
        );
    }

    #[test]
    fn a_cancelled_kill_is_cancelled_not_a_timeout() {
        let mut o = outcome(Termination::Signaled(libc::SIGKILL), "");
        o.cancelled = true;
        o.timed_out = true;
        assert_eq!(
            status(&o, false),
            (RunStatus::Failed, Some("cancelled".into()))
        );
        // Finished on its own just before the cancel: its own status stands.
        let mut o = outcome(Termination::Exited(0), "");
        o.cancelled = true;
        assert_eq!(status(&o, false).0, RunStatus::Ok);
    }

    #[test]
    fn setup_failure_is_unavailable() {
        let o = outcome(Termination::Exited(1), "bwrap: Can't mount proc\n");
        let v = classify(&o, &limits(), true, true);
        assert_eq!(v.status, RunStatus::Unavailable);
        assert_eq!(v.error_class.as_deref(), Some("sandbox_setup"));
    }
}
