//! The `gvisor` backend: each job runs in its own gVisor sandbox (`runsc`, ptrace platform,
//! because KVM mode hangs on nested VMs), a user-space kernel between the job and the host,
//! with no network interfaces unless the job allows the network.
//!
//! Starting a sandbox costs a few hundred milliseconds, so the backend keeps a **warm pool**:
//! sandboxes started ahead of time whose first process (`/bin/sh` as `nobody`) waits for one
//! line on its stdin. A job takes a warm sandbox, gets its files written into that sandbox's
//! job directory (bound read-write at `/work`) and its command line into the control
//! directory (read-only at `/.sandstorm`), and starts with the line `go`: it pays an `exec`,
//! not a cold start. Every sandbox serves exactly one job and is then destroyed, so nothing
//! of one job is visible to the next; a background thread refills the pool and another
//! deletes used sandboxes (`runsc delete`) and their directories.
//!
//! Limits inside the sandbox are rlimits set by the job script (`ulimit`: data segment, CPU
//! time, file size, open files, no core); the wall-clock limit, cancellation and output caps
//! are the shared supervisor's, applied to the `runsc run` process that owns the sandbox (the
//! sandbox dies with it).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Instant;

use sandstorm_features::IsolationBackend;
use time::OffsetDateTime;

use crate::cgroup::PIDS_MAX;
use crate::error::RuntimeError;
use crate::hostfs::{self, RootEntry};
use crate::job::{self, JobSpec};
use crate::limits::{FILE_SIZE_LIMIT_BYTES, Limits, OPEN_FILES_LIMIT};
use crate::oci::{self, BundleSpec};
use crate::process::probe_job;
use crate::supervise::{self, Outcome, Sandbox};
use crate::sys::{self, ChildHardening, Termination, Usage};
use crate::{Availability, Backend, RunControl, RunResult, RunStatus};

/// Warm sandboxes kept ready when the engine is not told otherwise.
pub const DEFAULT_GVISOR_POOL_SIZE: usize = 2;

/// Size of `/tmp` in every sandbox (they are started before their job is known).
const TMPFS_BYTES: u64 = 512 * 1024 * 1024;

/// Exit code of the sandbox's own scripts when setting up the job failed; they also print a
/// line starting with [`SETUP_MARK`] on stderr.
const SETUP_EXIT: i32 = 125;
const SETUP_MARK: &str = "sandstorm-setup:";

/// The first process of every sandbox: wait for `go`, then run the job script. End of input
/// without `go` (the engine went away) ends the sandbox without running anything.
const INIT_SCRIPT: &str = "read -r go && [ \"$go\" = go ] && exec /bin/sh /.sandstorm/job.sh; \
                           echo 'sandstorm-setup: no job was given' >&2; exit 125";

/// Runs jobs in gVisor sandboxes.
#[derive(Debug)]
pub(crate) struct GvisorBackend {
    runsc: Option<PathBuf>,
    pool_size: usize,
    pool: OnceLock<Result<Arc<Pool>, String>>,
}

impl GvisorBackend {
    /// Finds `runsc`; starts nothing until the first probe or run.
    pub(crate) fn new(pool_size: usize) -> Self {
        Self {
            runsc: hostfs::find_program("runsc"),
            pool_size,
            pool: OnceLock::new(),
        }
    }

    fn pool(&self) -> Result<&Arc<Pool>, RuntimeError> {
        let unavailable = |reason: String| RuntimeError::Unavailable {
            backend: IsolationBackend::Gvisor,
            reason,
        };
        let runsc = self
            .runsc
            .as_deref()
            .ok_or_else(|| unavailable("`runsc` was not found in PATH".to_owned()))?;
        self.pool
            .get_or_init(|| Pool::new(runsc, self.pool_size).map(Arc::new))
            .as_ref()
            .map_err(|reason| unavailable(reason.clone()))
    }

    fn run_job(&self, job: &JobSpec, control: &RunControl) -> Result<RunResult, RuntimeError> {
        let entry = Instant::now();
        let started_at = OffsetDateTime::now_utc();
        job.validate()?;
        job.refuse_gpu(IsolationBackend::Gvisor)?;
        let pool = self.pool()?;
        let limits = Limits::for_job(job);
        let command_line = job::command_line(job)?;
        let script = job_script(&limits, &command_line.0, &command_line.1);
        let result = pool.with_sandbox(job.allow_network, |sandbox| {
            job::write_files(job, &sandbox.work())?;
            sandbox.hand_over(&script)
        });
        Pool::refill(pool);
        let (child, sandbox) = result?;
        let span = tracing::debug_span!("run", backend = "gvisor", sandbox = %sandbox.id);
        let _enter = span.enter();
        let outcome = supervise::supervise(child, Instant::now(), "runsc", job, control);
        pool.retire(sandbox);
        let mut outcome = outcome?;
        // wait4 measured `runsc run`, not the job: no peak memory or CPU time to report.
        outcome.usage = Usage::default();
        let mut result = supervise::finish(self, job, &limits, &outcome, entry, started_at);
        result
            .enforced_limits
            .retain(|l| !l.starts_with("rlimit_data_mib="));
        Ok(result)
    }
}

/// The job script: rlimits, then `exec` of the job's command line in `/work`.
fn job_script(limits: &Limits, program: &str, args: &[String]) -> String {
    let mut s = String::from("cd /work || exit 125\n");
    let kib = |bytes: u64| bytes / 1024;
    for (flags, value) in [
        ("-c", 0),
        ("-n", OPEN_FILES_LIMIT),
        ("-p", PIDS_MAX),
        // dash counts file sizes in 512-byte blocks and data sizes in KiB.
        ("-f", FILE_SIZE_LIMIT_BYTES / 512),
        ("-d", kib(limits.data_bytes)),
        // gVisor does not enforce RLIMIT_DATA; RLIMIT_AS is what stops allocations.
        ("-v", kib(address_space_bytes(limits))),
        // Soft first: a hard limit below the current (unlimited) soft one is refused.
        ("-S -t", limits.cpu_soft_s),
        ("-H -t", limits.cpu_hard_s),
    ] {
        let _ = writeln!(
            s,
            "ulimit {flags} {value} || {{ echo '{SETUP_MARK} ulimit {flags} failed' >&2; exit {SETUP_EXIT}; }}"
        );
    }
    s.push_str("exec");
    for word in std::iter::once(program).chain(args.iter().map(String::as_str)) {
        s.push(' ');
        s.push_str(&shell_quote(word));
    }
    s.push('\n');
    s
}

/// Address space allowed inside the sandbox: the data limit plus room for the interpreter's
/// code, libraries and reserved-but-untouched mappings.
fn address_space_bytes(limits: &Limits) -> u64 {
    limits.data_bytes.saturating_add(AS_HEADROOM_BYTES)
}

/// See [`address_space_bytes`].
const AS_HEADROOM_BYTES: u64 = 256 * 1024 * 1024;

/// `word` in single quotes, for `/bin/sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Sandbox for GvisorBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Gvisor
    }

    /// `runsc run` exits 128 + N when the container's process dies of signal N.
    fn signals_as_exit_codes(&self) -> bool {
        true
    }

    fn setup_failed(&self, outcome: &Outcome) -> bool {
        outcome.termination == Termination::Exited(SETUP_EXIT)
            && outcome.stdout.bytes.is_empty()
            && String::from_utf8_lossy(&outcome.stderr.bytes).contains(SETUP_MARK)
    }

    fn enforced(&self, job: &JobSpec) -> Vec<String> {
        vec![
            format!(
                "rlimit_as_mib={}",
                address_space_bytes(&Limits::for_job(job)) >> 20
            ),
            "kernel=gvisor_ptrace".to_owned(),
            if job.allow_network {
                "network=host".to_owned()
            } else {
                "network=blocked".to_owned()
            },
            "user=nobody".to_owned(),
            "capabilities=none".to_owned(),
            "no_new_privs".to_owned(),
            "seccomp=sandstorm_v1".to_owned(),
            format!("rlimit_nproc={PIDS_MAX}"),
            "filesystem=read_only_root,job_dir_rw,tmp_rw".to_owned(),
            format!("tmpfs_tmp_mib={}", TMPFS_BYTES >> 20),
            "one_sandbox_per_job".to_owned(),
        ]
    }
}

impl Backend for GvisorBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Gvisor
    }

    fn probe(&self) -> Availability {
        if let Err(e) = self.pool() {
            return Availability::Unavailable {
                reason: e.to_string(),
            };
        }
        match self.run_job(&probe_job(), &RunControl::new()) {
            Ok(r) if r.status == RunStatus::Ok => Availability::Available {
                detail: format!(
                    "runsc (ptrace platform) runs /bin/sh in a fresh sandbox; warm pool of {} (probe took {:.0} ms)",
                    self.pool_size, r.total_ms
                ),
            },
            Ok(r) => Availability::Unavailable {
                reason: format!(
                    "probe run ended {} (exit code {:?}): {}",
                    r.status,
                    r.exit_code,
                    r.stderr.trim()
                ),
            },
            Err(e) => Availability::Unavailable {
                reason: e.to_string(),
            },
        }
    }

    fn run(&self, job: &JobSpec) -> Result<RunResult, RuntimeError> {
        self.run_job(job, &RunControl::new())
    }

    fn run_controlled(
        &self,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RunResult, RuntimeError> {
        self.run_job(job, control)
    }
}

/// Warm sandboxes and the threads that start and delete them.
#[derive(Debug)]
struct Pool {
    runsc: PathBuf,
    root: Vec<RootEntry>,
    /// `runsc --root`: the state of this pool's containers.
    state: tempfile::TempDir,
    size: usize,
    idle: Mutex<VecDeque<WarmSandbox>>,
    filling: AtomicBool,
    next_id: AtomicU64,
    retired: Mutex<mpsc::Sender<SandboxDir>>,
}

/// A started sandbox waiting for its job.
#[derive(Debug)]
struct WarmSandbox {
    /// `runsc run`, leader of its own session, its stdin the sandbox's first process's.
    child: Child,
    dir: SandboxDir,
}

/// A sandbox's container id and host directory (bundle, `work/`, `ctl/`).
#[derive(Debug)]
struct SandboxDir {
    id: String,
    dir: tempfile::TempDir,
    runsc: PathBuf,
    state: PathBuf,
}

impl Pool {
    fn new(runsc: &Path, size: usize) -> Result<Self, String> {
        if !sys::is_root() {
            return Err(
                "runsc needs root here (rootless gVisor is not supported by this engine)".into(),
            );
        }
        let state = tempfile::Builder::new()
            .prefix("sandstorm-runsc-")
            .tempdir()
            .map_err(|e| format!("cannot create runsc's state directory: {e}"))?;
        let (tx, rx) = mpsc::channel::<SandboxDir>();
        thread::Builder::new()
            .name("sandstorm-gvisor-cleaner".into())
            .spawn(move || {
                for dir in rx {
                    dir.delete();
                }
            })
            .map_err(|e| format!("cannot start the sandbox cleaner thread: {e}"))?;
        Ok(Self {
            runsc: runsc.to_owned(),
            root: hostfs::root_entries(),
            state,
            size,
            idle: Mutex::new(VecDeque::new()),
            filling: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            retired: Mutex::new(tx),
        })
    }

    /// Takes a warm sandbox (or starts one: when the pool is empty or the job needs the
    /// network) and lets `hand_over` give it its job; a warm sandbox that died while idle is
    /// replaced once by a fresh one.
    fn with_sandbox(
        &self,
        network: bool,
        hand_over: impl Fn(&mut WarmSandbox) -> Result<(), RuntimeError>,
    ) -> Result<(Child, SandboxDir), RuntimeError> {
        let warm = if network {
            None
        } else {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
        };
        let fresh = warm.is_none();
        let mut sandbox = match warm {
            Some(s) => s,
            None => self.start(network)?,
        };
        match hand_over(&mut sandbox) {
            Ok(()) => Ok((sandbox.child, sandbox.dir)),
            Err(e) => {
                self.discard(sandbox);
                if fresh {
                    return Err(e);
                }
                tracing::warn!(error = %e, "warm gVisor sandbox unusable, starting a fresh one");
                let mut sandbox = self.start(network)?;
                match hand_over(&mut sandbox) {
                    Ok(()) => Ok((sandbox.child, sandbox.dir)),
                    Err(e) => {
                        self.discard(sandbox);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Starts one sandbox whose first process waits for its job.
    fn start(&self, network: bool) -> Result<WarmSandbox, RuntimeError> {
        let dir = tempfile::Builder::new()
            .prefix("sandstorm-gvisor-")
            .tempdir()
            .map_err(RuntimeError::JobDir)?;
        // Unique on the host (runsc's control sockets are named after it): the directory
        // name is unique, the counter keeps it readable.
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let unique = dir.path().file_name().map_or_else(String::new, |n| {
            n.to_string_lossy()
                .trim_start_matches("sandstorm-gvisor-")
                .to_owned()
        });
        let id = format!("sandstorm-{unique}-{n}");
        let sandbox_dir = SandboxDir {
            id: id.clone(),
            dir,
            runsc: self.runsc.clone(),
            state: self.state.path().to_owned(),
        };
        let (work, ctl, bundle) = (sandbox_dir.work(), sandbox_dir.ctl(), sandbox_dir.bundle());
        for d in [&work, &ctl, &bundle] {
            std::fs::create_dir_all(d).map_err(RuntimeError::JobDir)?;
        }
        std::os::unix::fs::chown(&work, Some(oci::JOB_UID), Some(oci::JOB_UID))
            .map_err(RuntimeError::JobDir)?;
        let spec = BundleSpec {
            args: vec!["/bin/sh".into(), "-c".into(), INIT_SCRIPT.into()],
            work: &work,
            control: &ctl,
            tmpfs_bytes: TMPFS_BYTES,
            network,
            root: &self.root,
        };
        oci::write_bundle(&bundle, &spec).map_err(RuntimeError::JobDir)?;
        let mut command = Command::new(&self.runsc);
        command
            .arg("--root")
            .arg(self.state.path())
            .arg(if network {
                "--network=host"
            } else {
                "--network=none"
            })
            // The job's seccomp filter, installed by gVisor's kernel; no FUSE device.
            .args([
                "--platform=ptrace",
                "--oci-seccomp",
                "--fuse=false",
                "run",
                "--bundle",
            ])
            .arg(&bundle)
            .arg(&id)
            .env_clear()
            .env("PATH", crate::job::SEARCH_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::isolate_child(&mut command, &[], ChildHardening::default());
        let child = command.spawn().map_err(|source| RuntimeError::Spawn {
            program: self.runsc.display().to_string(),
            source,
        })?;
        tracing::debug!(id, network, "started gVisor sandbox");
        Ok(WarmSandbox {
            child,
            dir: sandbox_dir,
        })
    }

    /// Starts sandboxes in the background until `size` are idle (one filler at a time).
    fn refill(pool: &Arc<Self>) {
        if pool.size == 0 || pool.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(pool);
        let spawned = thread::Builder::new()
            .name("sandstorm-gvisor-pool".into())
            .spawn(move || {
                while let Some(pool) = weak.upgrade() {
                    let idle = pool
                        .idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .len();
                    if idle >= pool.size {
                        pool.filling.store(false, Ordering::Release);
                        return;
                    }
                    match pool.start(false) {
                        Ok(s) => pool
                            .idle
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push_back(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not start a warm gVisor sandbox");
                            pool.filling.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the gVisor pool thread");
            pool.filling.store(false, Ordering::Release);
        }
    }

    /// Kills a sandbox that will not run a job and hands its remains to the cleaner.
    fn discard(&self, mut sandbox: WarmSandbox) {
        drop(sandbox.child.stdin.take());
        stop(&mut sandbox.child);
        self.retire(sandbox.dir);
    }

    /// Hands a used sandbox to the cleaner thread (`runsc delete`, directory removal).
    fn retire(&self, dir: SandboxDir) {
        let sent = self
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(dir);
        if let Err(mpsc::SendError(dir)) = sent {
            dir.delete();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for mut sandbox in idle {
            drop(sandbox.child.stdin.take());
            stop(&mut sandbox.child);
            sandbox.dir.delete();
        }
    }
}

/// Kills `runsc run`'s whole group (the sandbox, started `--attached`, dies with it) and reaps
/// it.
fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id())
        && let Err(e) = sys::kill_group(pid)
    {
        tracing::warn!(pid, error = %e, "could not kill a gVisor sandbox");
    }
    let _ = child.wait();
}

impl WarmSandbox {
    fn work(&self) -> PathBuf {
        self.dir.work()
    }

    /// Gives the sandbox its job: the files are already in `work/`; makes them the job
    /// user's, writes the script and says `go`.
    fn hand_over(&mut self, script: &str) -> Result<(), RuntimeError> {
        job::chown_tree(&self.work(), oci::JOB_UID).map_err(RuntimeError::JobDir)?;
        std::fs::write(self.dir.ctl().join("job.sh"), script).map_err(RuntimeError::JobDir)?;
        let mut stdin = self
            .child
            .stdin
            .take()
            .ok_or_else(|| RuntimeError::Internal("warm sandbox without stdin".into()))?;
        stdin
            .write_all(b"go\n")
            .map_err(|e| RuntimeError::Unavailable {
                backend: IsolationBackend::Gvisor,
                reason: format!("the sandbox is gone before its job started: {e}"),
            })
    }
}

impl SandboxDir {
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn ctl(&self) -> PathBuf {
        self.dir.path().join("ctl")
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    /// Deletes the container's state (killing anything left of it) and the directory.
    fn delete(self) {
        let deleted = Command::new(&self.runsc)
            .arg("--root")
            .arg(&self.state)
            .args(["delete", "-force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match deleted {
            Ok(out) if !out.status.success() => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // A sandbox that never got as far as creating its state has nothing to delete.
                if !stderr.contains("does not exist") && !stderr.contains("not found") {
                    tracing::debug!(id = self.id, stderr = %stderr.trim(), "runsc delete failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(id = self.id, error = %e, "could not run runsc delete"),
        }
        let path = self.dir.path().to_owned();
        if let Err(e) = self.dir.close() {
            tracing::warn!(dir = %path.display(), error = %e, "could not remove sandbox directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use sandstorm_features::{Language, RunRequest};

    use super::*;

    #[test]
    fn job_script_sets_limits_then_execs_the_quoted_command() {
        let mut request = RunRequest::command(Language::Sh, "true");
        request.resources.memory_mib = 100;
        let limits = Limits::for_job(&JobSpec::from_request(&request));
        let script = job_script(&limits, "/bin/sh", &["-c".into(), "echo 'it''s'".into()]);
        assert!(script.starts_with("cd /work || exit 125\n"));
        assert!(script.contains(&format!("ulimit -d {} ||", limits.data_bytes / 1024)));
        assert!(script.contains("ulimit -c 0 ||"));
        assert!(script.ends_with("exec '/bin/sh' '-c' 'echo '\\''it'\\'''\\''s'\\'''\n"));
    }
}
