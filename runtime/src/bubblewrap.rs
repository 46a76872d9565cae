//! The `bubblewrap` backend: the job runs under `bwrap` in fresh user, pid, ipc, uts, cgroup
//! and (unless the job allows network) network namespaces, with all capabilities dropped, a
//! read-only view of the host's `/usr`, only the few `/etc` files interpreters need, private
//! `/dev`, `/proc` and size-capped `/tmp`, and the job directory read-write at `/work`.
//! Rlimits are set on the `bwrap` process before `exec` and inherited by everything inside;
//! the shared supervisor kills `bwrap`'s group at the wall-clock limit, and `bwrap`'s
//! `--die-with-parent` plus the pid namespace take every sandboxed process down with it.

use std::ffi::OsString;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sandstorm_features::IsolationBackend;

use crate::error::RuntimeError;
use crate::harden::SeccompFilters;
use crate::hostfs::{self, ETC_ALWAYS, ETC_NETWORK, RootEntry};
use crate::job::{JobSpec, PreparedJob, SEARCH_PATH};
use crate::limits::Limits;
use crate::process::probe_with;
use crate::supervise::{self, Outcome, Sandbox, Wrapped, Wrapper};
use crate::sys::ChildHardening;
use crate::sys::Termination;
use crate::{Availability, Backend, RunControl, RunResult};

/// Where the job directory appears inside the sandbox.
const SANDBOX_WORKDIR: &str = "/work";

/// Runs jobs under bubblewrap.
#[derive(Debug)]
pub(crate) struct BubblewrapBackend {
    seccomp: Arc<SeccompFilters>,
    /// The `bwrap` executable, if this host has one.
    bwrap: Option<PathBuf>,
    root: Vec<RootEntry>,
}

impl BubblewrapBackend {
    /// Finds `bwrap` and reads the host's top-level layout; runs nothing.
    pub(crate) fn new(seccomp: Arc<SeccompFilters>) -> Self {
        let root = hostfs::root_entries();
        Self {
            seccomp,
            bwrap: hostfs::find_program("bwrap"),
            root,
        }
    }

    fn bwrap(&self) -> Result<&Path, RuntimeError> {
        self.bwrap
            .as_deref()
            .ok_or_else(|| RuntimeError::Unavailable {
                backend: IsolationBackend::Bubblewrap,
                reason: format!("`bwrap` was not found in PATH or {SEARCH_PATH}"),
            })
    }

    /// The `bwrap` arguments that run `program args` for `job` in `job_dir`.
    fn arguments(
        &self,
        job: &JobSpec,
        job_dir: &Path,
        limits: &Limits,
        seccomp_fds: &[RawFd],
        program: &str,
        args: &[String],
    ) -> Vec<OsString> {
        let mut a = Args::default();
        a.push(["--unshare-all"]);
        if job.allow_network {
            a.push(["--share-net"]);
        }
        // `--as-pid-1`: the job's program is the namespace's pid 1 instead of a bwrap reaper,
        // so bwrap waits for it directly and its resource usage (peak memory, CPU time)
        // reaches our `wait4`; with the reaper in between it is lost. Costs: signals the job
        // sends itself without a handler are ignored (pid-1 rule; kernel faults and SIGKILL
        // still kill it), and orphans inside are not reaped until the run ends. When pid 1
        // exits, the kernel kills everything left in the namespace.
        // `--die-with-parent`: the sandbox gets SIGKILL when `bwrap` dies, which is how the
        // supervisor's kill of `bwrap`'s group reaches it (it runs in its own session).
        a.push([
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ]);
        a.push(["--hostname", "sandstorm"]);
        a.push(["--ro-bind", "/usr", "/usr"]);
        for entry in &self.root {
            match entry {
                RootEntry::Symlink { path, target } => {
                    a.push(["--symlink"]);
                    a.path(target);
                    a.path(path);
                }
                RootEntry::Dir(path) => {
                    a.push(["--ro-bind"]);
                    a.path(path);
                    a.path(path);
                }
            }
        }
        let etc = ETC_ALWAYS
            .iter()
            .chain(ETC_NETWORK.iter().filter(|_| job.allow_network));
        for file in etc {
            a.push(["--ro-bind-try", file, file]);
        }
        a.push(["--dev", "/dev", "--proc", "/proc"]);
        a.push(["--size"]);
        a.push([limits.tmpfs_bytes.to_string()]);
        a.push(["--tmpfs", "/tmp"]);
        a.push(["--bind"]);
        a.path(job_dir);
        a.push([SANDBOX_WORKDIR, "--chdir", SANDBOX_WORKDIR]);
        // The root is a tmpfs bwrap builds the mounts on; once they exist it goes read-only,
        // so only /work and /tmp are writable.
        a.push(["--remount-ro", "/"]);
        a.push(["--clearenv"]);
        for (key, value) in [
            ("PATH", SEARCH_PATH),
            ("HOME", SANDBOX_WORKDIR),
            ("LANG", "C.UTF-8"),
            ("TMPDIR", "/tmp"),
        ] {
            a.push(["--setenv", key, value]);
        }
        for fd in seccomp_fds {
            a.push(["--add-seccomp-fd".to_owned(), fd.to_string()]);
        }
        a.push(["--", program]);
        a.push(args);
        a.0
    }
}

/// An argument vector under construction.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<S: AsRef<str>>(&mut self, items: impl IntoIterator<Item = S>) {
        self.0
            .extend(items.into_iter().map(|s| OsString::from(s.as_ref())));
    }

    fn path(&mut self, path: &Path) {
        self.0.push(path.as_os_str().to_owned());
    }
}

/// An unlinked file holding `bytes`, positioned at its start.
fn filter_file(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let mut file = tempfile::tempfile()?;
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file.into())
}

impl Wrapper for BubblewrapBackend {
    fn wrap(
        &self,
        job: &JobSpec,
        prepared: &PreparedJob,
        limits: &Limits,
    ) -> Result<Wrapped, RuntimeError> {
        let program = self.bwrap()?.to_path_buf();
        // bwrap reads each seccomp program from a descriptor it inherits and installs it
        // right before exec'ing the job, after its own namespace and mount set-up.
        let mut inherit = Vec::new();
        for bytes in self.seccomp.bytes(job.allow_network) {
            inherit.push(filter_file(&bytes).map_err(RuntimeError::JobDir)?);
        }
        let fds: Vec<RawFd> = inherit.iter().map(AsRawFd::as_raw_fd).collect();
        Ok(Wrapped {
            program,
            args: self.arguments(
                job,
                prepared.dir(),
                limits,
                &fds,
                prepared.program(),
                prepared.args(),
            ),
            // Only for `bwrap` itself; the sandbox gets `--clearenv` and its own variables.
            env: vec![("PATH".into(), SEARCH_PATH.into())],
            hardening: ChildHardening {
                cgroup_procs: Vec::new(),
                user: None,
                inherit,
                landlock: None,
                seccomp: Vec::new(),
            },
        })
    }
}

impl Sandbox for BubblewrapBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Bubblewrap
    }

    /// bwrap exits 128 + N when the sandboxed program dies of signal N.
    fn signals_as_exit_codes(&self) -> bool {
        true
    }

    /// bwrap reports its own failures (mounts, namespaces, exec) as one `bwrap: ...` line on
    /// stderr and exit code 1, before the job printed anything.
    fn setup_failed(&self, outcome: &Outcome) -> bool {
        let stderr = String::from_utf8_lossy(&outcome.stderr.bytes);
        outcome.termination == Termination::Exited(1)
            && outcome.stdout.bytes.is_empty()
            && !outcome.stderr.truncated
            && stderr.starts_with("bwrap: ")
            && stderr.trim_end().lines().count() == 1
    }

    fn enforced(&self, job: &JobSpec) -> Vec<String> {
        let (namespaces, network) = if job.allow_network {
            ("user,pid,ipc,uts,cgroup,mount", "network=host")
        } else {
            ("user,pid,ipc,uts,cgroup,mount,net", "network=blocked")
        };
        vec![
            format!("namespaces={namespaces}"),
            network.to_owned(),
            "capabilities=none".to_owned(),
            "filesystem=read_only_root,job_dir_rw,tmp_rw".to_owned(),
            format!("tmpfs_tmp_mib={}", job.memory_mib),
            "die_with_parent".to_owned(),
            "pid_namespace_kill".to_owned(),
            "no_new_privs".to_owned(),
            self.seccomp.label().to_owned(),
        ]
    }
}

impl Backend for BubblewrapBackend {
    fn backend(&self) -> IsolationBackend {
        IsolationBackend::Bubblewrap
    }

    fn probe(&self) -> Availability {
        match self.bwrap() {
            Ok(bwrap) => probe_with(
                self,
                &format!("{} runs /bin/sh in fresh namespaces", bwrap.display()),
            ),
            Err(e) => Availability::Unavailable {
                reason: e.to_string(),
            },
        }
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

#[cfg(test)]
mod tests {
    use sandstorm_features::{Language, RunRequest};

    use super::*;

    fn args_for(allow_network: bool) -> Vec<String> {
        let backend = BubblewrapBackend {
            seccomp: Arc::new(SeccompFilters::compile()),
            bwrap: Some("/usr/bin/bwrap".into()),
            root: vec![
                RootEntry::Symlink {
                    path: "/bin".into(),
                    target: "usr/bin".into(),
                },
                RootEntry::Dir("/lib64".into()),
            ],
        };
        let mut request = RunRequest::command(Language::Sh, "true");
        request.allow_network = allow_network;
        request.resources.memory_mib = 100;
        let job = JobSpec::from_request(&request);
        let limits = Limits::for_job(&job);
        backend
            .arguments(
                &job,
                Path::new("/tmp/job"),
                &limits,
                &[7],
                "/bin/sh",
                &["-c".into(), "true".into()],
            )
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn has_window(args: &[String], window: &[&str]) -> bool {
        args.windows(window.len()).any(|w| w == window)
    }

    #[test]
    fn network_is_shared_only_when_allowed() {
        let closed = args_for(false);
        assert!(closed.contains(&"--unshare-all".to_owned()));
        assert!(!closed.contains(&"--share-net".to_owned()));
        assert!(!closed.iter().any(|a| a == "/etc/resolv.conf"));
        let open = args_for(true);
        assert!(open.contains(&"--share-net".to_owned()));
        assert!(has_window(
            &open,
            &["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
        ));
    }

    #[test]
    fn secrets_are_never_mounted() {
        for args in [args_for(false), args_for(true)] {
            for secret in [
                "/etc",
                "/etc/shadow",
                "/etc/ssl",
                "/etc/ssl/private",
                "/root",
            ] {
                assert!(!args.iter().any(|a| a == secret), "{secret} in {args:?}");
            }
            assert!(!args.iter().any(|a| a.starts_with("/home")));
        }
    }

    #[test]
    fn layout_workdir_and_command() {
        let args = args_for(false);
        assert!(has_window(&args, &["--ro-bind", "/usr", "/usr"]));
        assert!(has_window(&args, &["--symlink", "usr/bin", "/bin"]));
        assert!(has_window(&args, &["--ro-bind", "/lib64", "/lib64"]));
        assert!(has_window(&args, &["--bind", "/tmp/job", "/work"]));
        assert!(has_window(&args, &["--chdir", "/work"]));
        assert!(has_window(
            &args,
            &[
                "--size",
                &(100 * 1024 * 1024).to_string(),
                "--tmpfs",
                "/tmp"
            ]
        ));
        assert!(has_window(&args, &["--cap-drop", "ALL"]));
        assert!(has_window(&args, &["--remount-ro", "/"]));
        assert!(args.contains(&"--as-pid-1".to_owned()));
        assert!(has_window(
            &args,
            &["--add-seccomp-fd", "7", "--", "/bin/sh"]
        ));
        assert!(args.ends_with(&["--".into(), "/bin/sh".into(), "-c".into(), "true".into()]));
        // The environment is cleared before the job's own variables are set.
        let clear = args.iter().position(|a| a == "--clearenv");
        let first_set = args.iter().position(|a| a == "--setenv");
        assert!(clear.is_some() && clear < first_set);
    }
}
