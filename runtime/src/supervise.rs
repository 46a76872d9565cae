//! The machinery both backends share: prepare the job directory, spawn the child in its own
//! session with rlimits, read stdout/stderr on threads (bounded), enforce the wall-clock limit
//! by killing the whole process group, kill the group again after the child exits so no stray
//! survives, reap with `wait4` for the exit status and peak memory, and build the
//! [`RunResult`]. A backend only says how to wrap the job's command ([`Sandbox`]). A
//! [`RunControl`] lets the caller cancel the job (the same group kill) and observe its output.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use sandstorm_features::IsolationBackend;
use time::OffsetDateTime;

use crate::RunResult;
use crate::cgroup::JobCgroup;
use crate::control::{Attached, OutputStream, RunControl};
use crate::error::RuntimeError;
use crate::job::{JobSpec, PreparedJob};
use crate::limits::Limits;
use crate::outcome;
use crate::sys::{self, ChildHardening, Termination, Usage};

/// How long output readers may keep going after the process group is dead. Readers only
/// outlive the group when a process escaped it (called `setsid` itself) and still holds the
/// pipe; the output read so far is returned and the reader is left behind.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Bytes of the end of each stream kept even past the output cap, for classifying the
/// outcome (an interpreter reports running out of memory on its last stderr line).
pub(crate) const TAIL_BYTES: usize = 8192;

/// What every backend tells the shared result building: how to read its exit status and what
/// it enforces.
pub(crate) trait Sandbox {
    fn backend(&self) -> IsolationBackend;

    /// Whether the wrapper reports a child killed by signal N as exit code 128 + N.
    fn signals_as_exit_codes(&self) -> bool {
        false
    }

    /// Whether the run failed in the wrapper itself, before the job's program started.
    fn setup_failed(&self, _outcome: &Outcome) -> bool {
        false
    }

    /// Labels of what this backend enforces beyond the shared limits.
    fn enforced(&self, job: &JobSpec) -> Vec<String>;
}

/// A backend that runs each job by spawning one wrapped command line ([`execute`]).
pub(crate) trait Wrapper: Sandbox {
    /// The program and arguments that run `prepared` (whose `argv` is the job's own command).
    fn wrap(
        &self,
        job: &JobSpec,
        prepared: &PreparedJob,
        limits: &Limits,
    ) -> Result<Wrapped, RuntimeError>;
}

/// A wrapped command line, its environment and what the child applies to itself.
#[derive(Debug)]
pub(crate) struct Wrapped {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) hardening: ChildHardening,
}

/// Captured output of one stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct Captured {
    /// The first `max_output_bytes` bytes.
    pub(crate) bytes: Vec<u8>,
    /// Whether more was written than kept.
    pub(crate) truncated: bool,
    /// The last [`TAIL_BYTES`] written (up to), whatever the cap.
    pub(crate) tail: Vec<u8>,
}

impl Captured {
    /// Keeps what fits under `cap` and returns how many bytes of `chunk` that was.
    fn push(&mut self, chunk: &[u8], cap: usize) -> usize {
        let room = cap.saturating_sub(self.bytes.len());
        let keep = room.min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..keep]);
        if keep < chunk.len() {
            self.truncated = true;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
        }
        keep
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// What happened to one supervised child.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) termination: Termination,
    /// The supervisor killed the group at the wall-clock limit.
    pub(crate) timed_out: bool,
    /// A [`RunControl::cancel`] killed the group.
    pub(crate) cancelled: bool,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    /// When the child was spawned.
    pub(crate) spawned: Instant,
    /// From spawn until the child was seen to exit.
    pub(crate) exec: Duration,
    /// The kernel killed a process of the job at its control group's memory limit.
    pub(crate) oom_killed: bool,
    pub(crate) usage: Usage,
}

/// Runs `job` in `sandbox`: the whole shared pipeline.
pub(crate) fn execute(
    sandbox: &dyn Wrapper,
    job: &JobSpec,
    control: &RunControl,
) -> Result<RunResult, RuntimeError> {
    let entry = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    job.validate()?;
    job.refuse_gpu(sandbox.backend())?;
    let limits = Limits::for_job(job);
    let prepared = PreparedJob::prepare(job)?;
    let wrapped = match sandbox.wrap(job, &prepared, &limits) {
        Ok(wrapped) => wrapped,
        Err(e) => {
            prepared.close();
            return Err(e);
        }
    };
    let mut wrapped = wrapped;
    let cgroup = job_cgroup(&prepared, &limits, &mut wrapped.hardening);
    let mut command = Command::new(&wrapped.program);
    command
        .args(&wrapped.args)
        .env_clear()
        .envs(wrapped.env.iter().map(|(k, v)| (k, v)))
        .current_dir(prepared.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::isolate_child(&mut command, &limits.rlimits(), wrapped.hardening);
    let span = tracing::debug_span!("run", backend = %sandbox.backend());
    let _enter = span.enter();
    let program = wrapped.program.display().to_string();
    let outcome = command
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            program: program.clone(),
            source,
        })
        .and_then(|child| supervise(child, Instant::now(), &program, job, control));
    prepared.close();
    let mut outcome = outcome?;
    let mut result_labels = Vec::new();
    match &cgroup {
        Ok(group) => {
            outcome.oom_killed = group.oom_killed();
            result_labels = group.labels(limits.cgroup_memory_bytes());
        }
        Err(reason) => {
            tracing::debug!(reason, "job ran without a control group");
            result_labels.push("cgroup=unavailable".to_owned());
        }
    }
    drop(cgroup);
    let mut result = finish(sandbox, job, &limits, &outcome, entry, started_at);
    result.enforced_limits.extend(result_labels);
    Ok(result)
}

/// The job's control group, joined by the child through `hardening`.
fn job_cgroup(
    prepared: &PreparedJob,
    limits: &Limits,
    hardening: &mut ChildHardening,
) -> Result<JobCgroup, String> {
    let name = prepared
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("job directory without a name")?;
    let group = JobCgroup::create(&name, limits.cgroup_memory_bytes())?;
    hardening.cgroup_procs = group.procs_files()?;
    Ok(group)
}

/// The [`RunResult`] of a supervised run that entered the backend at `entry`.
pub(crate) fn finish(
    sandbox: &dyn Sandbox,
    job: &JobSpec,
    limits: &Limits,
    outcome: &Outcome,
    entry: Instant,
    started_at: OffsetDateTime,
) -> RunResult {
    let verdict = outcome::classify(
        outcome,
        limits,
        sandbox.signals_as_exit_codes(),
        sandbox.setup_failed(outcome),
    );
    let mut enforced_limits = limits.describe(job);
    enforced_limits.extend(sandbox.enforced(job));
    let (exit_code, signal) = match outcome.termination {
        Termination::Exited(code) => (Some(code), None),
        Termination::Signaled(signal) => (None, Some(signal)),
    };
    let peak_memory_mib =
        (outcome.usage.max_rss_kib > 0).then(|| outcome.usage.max_rss_kib as f64 / 1024.0);
    let result = RunResult {
        status: verdict.status,
        exit_code,
        signal,
        stdout: outcome.stdout.text(),
        stderr: outcome.stderr.text(),
        stdout_truncated: outcome.stdout.truncated,
        stderr_truncated: outcome.stderr.truncated,
        started_at,
        start_ms: ms(outcome.spawned.saturating_duration_since(entry)),
        exec_ms: ms(outcome.exec),
        total_ms: ms(entry.elapsed()),
        peak_memory_mib,
        error_class: verdict.error_class,
        enforced_limits,
    };
    tracing::debug!(status = %result.status, exit_code = ?result.exit_code,
        signal = ?result.signal, exec_ms = result.exec_ms, "run finished");
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Kills the group and reaps the child if supervision ends early (error or panic), so a
/// failed run never leaves a process or a zombie behind.
struct GroupGuard {
    pid: libc::pid_t,
    reaped: bool,
}

impl GroupGuard {
    fn kill(&self) {
        if let Err(e) = sys::kill_group(self.pid) {
            tracing::error!(pgid = self.pid, error = %e, "could not kill process group");
        }
    }

    fn reap(&mut self) -> Result<(Termination, Usage), RuntimeError> {
        let reaped = sys::reap(self.pid)
            .map_err(|e| RuntimeError::Internal(format!("wait4 on pid {}: {e}", self.pid)));
        // Whatever wait4 said, the child cannot be reaped again: never kill its pid later.
        self.reaped = true;
        reaped
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            if let Err(e) = sys::reap(self.pid) {
                tracing::error!(pid = self.pid, error = %e, "could not reap child");
            }
        }
    }
}

/// Supervises `child` (which leads its own session, its job started at `started`) to the
/// end: output, the job's wall-clock limit, cancellation, group kill, reaping.
pub(crate) fn supervise(
    mut child: Child,
    spawned: Instant,
    program: &str,
    job: &JobSpec,
    control: &RunControl,
) -> Result<Outcome, RuntimeError> {
    let (timeout, max_output_bytes) = (job.timeout, job.max_output_bytes);
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| RuntimeError::Internal(format!("pid {} out of range", child.id())))?;
    // From here on the guard owns the child: std's `Child` is never waited on (that would
    // reap it behind our back) and dropping it neither waits nor kills.
    let mut guard = GroupGuard { pid, reaped: false };
    tracing::debug!(pid, program, "spawned");
    // Declared after `guard`, so dropped (detached) before the guard reaps on early returns.
    let attached = Attached(control);
    if !control.attach(pid) {
        tracing::debug!(pid, "cancelled before it started, killing process group");
        guard.kill();
    }

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let stdout = Arc::new(Mutex::new(Captured::default()));
    let stderr = Arc::new(Mutex::new(Captured::default()));
    let mut readers = 0;
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(
            OutputStream::Stdout,
            pipe,
            Arc::clone(&stdout),
            max_output_bytes,
            control,
            &done_tx,
        )?;
        readers += 1;
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(
            OutputStream::Stderr,
            pipe,
            Arc::clone(&stderr),
            max_output_bytes,
            control,
            &done_tx,
        )?;
        readers += 1;
    }
    drop(done_tx);
    drop(child);

    let (exit_tx, exit_rx) = mpsc::channel();
    thread::Builder::new()
        .name(format!("sandstorm-wait-{pid}"))
        .spawn(move || {
            // The receiver may be gone if supervision failed; nothing to report then.
            let _ = exit_tx.send(sys::wait_exited_keep_zombie(pid));
        })
        .map_err(|e| RuntimeError::Internal(format!("could not start waiter thread: {e}")))?;

    let waited = match exit_rx.recv_timeout(timeout) {
        Ok(waited) => Some(waited),
        Err(mpsc::RecvTimeoutError::Timeout) => None,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(RuntimeError::Internal("waiter thread vanished".into()));
        }
    };
    let timed_out = waited.is_none();
    let waited = match waited {
        Some(waited) => waited,
        None => {
            tracing::debug!(
                pid,
                ?timeout,
                "wall-clock limit reached, killing process group"
            );
            guard.kill();
            exit_rx
                .recv()
                .map_err(|_| RuntimeError::Internal("waiter thread vanished".into()))?
        }
    };
    let exec = spawned.elapsed();
    waited.map_err(|e| RuntimeError::Internal(format!("waitid on pid {pid}: {e}")))?;
    // The leader is a zombie now, so its group id is still ours: kill whatever it left
    // behind (background jobs, daemons that did not leave the group), then reap it.
    match sys::kill_group(pid) {
        Ok(true) => tracing::debug!(pid, "killed processes left in the group"),
        Ok(false) => {}
        Err(e) => tracing::error!(pgid = pid, error = %e, "could not kill process group"),
    }
    // No cancel may signal the group once its leader is reaped (the id could be reused).
    drop(attached);
    let cancelled = control.killed();
    let (termination, usage) = guard.reap()?;

    let deadline = Instant::now() + OUTPUT_GRACE;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            tracing::warn!(
                pid,
                "output pipe still open after the process group died (a process escaped it)"
            );
            break;
        }
    }
    let take = |c: &Arc<Mutex<Captured>>| {
        std::mem::take(&mut *c.lock().unwrap_or_else(PoisonError::into_inner))
    };
    Ok(Outcome {
        termination,
        timed_out,
        cancelled,
        stdout: take(&stdout),
        stderr: take(&stderr),
        spawned,
        exec,
        oom_killed: false,
        usage,
    })
}

/// Reads `pipe` to its end on a thread, keeping at most `cap` bytes (which it also hands to
/// the control's observer), and signals `done`.
fn spawn_reader(
    stream: OutputStream,
    mut pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<Captured>>,
    cap: usize,
    control: &RunControl,
    done: &mpsc::Sender<()>,
) -> Result<(), RuntimeError> {
    let done = done.clone();
    let control = control.clone();
    thread::Builder::new()
        .name(format!("sandstorm-{}", stream.as_str()))
        .spawn(move || {
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let kept = sink
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(&buf[..n], cap);
                        control.observe(stream, &buf[..kept]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading child output failed");
                        break;
                    }
                }
            }
            let _ = done.send(());
        })
        .map(drop)
        .map_err(|e| RuntimeError::Internal(format!("could not start output reader: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_head_flags_truncation_and_keeps_the_tail() {
        let mut c = Captured::default();
        c.push(b"hello ", 8);
        assert!(!c.truncated);
        c.push(b"world", 8);
        assert_eq!(c.bytes, b"hello wo");
        assert!(c.truncated);
        assert_eq!(c.tail, b"hello world");
        let big = vec![b'x'; TAIL_BYTES];
        c.push(&big, 8);
        c.push(b"END", 8);
        assert_eq!(c.tail.len(), TAIL_BYTES);
        assert!(c.tail.ends_with(b"xEND"));
        assert_eq!(c.bytes.len(), 8);
    }

    #[test]
    fn zero_cap_keeps_nothing_but_still_flags() {
        let mut c = Captured::default();
        c.push(b"", 0);
        assert!(!c.truncated);
        c.push(b"x", 0);
        assert!(c.bytes.is_empty());
        assert!(c.truncated);
    }
}
