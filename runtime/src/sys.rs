//! The only module with `unsafe`: thin wrappers over the system calls the supervisor needs
//! (`setsid`, `setrlimit`, Landlock and seccomp in the child before `exec`, `waitid`, `wait4`,
//! `killpg`).
//! Each wrapper returns `io::Result` and does nothing beyond the call itself.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::limits::{Resource, Rlimit};

/// How a process ended, as reported by `wait4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Termination {
    Exited(i32),
    Signaled(i32),
}

/// Resource usage of a reaped child and the descendants it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Usage {
    /// Largest resident set of the child or any waited-for descendant, in KiB.
    pub(crate) max_rss_kib: u64,
    /// User plus system CPU time of the child and its waited-for descendants.
    pub(crate) cpu_time: Duration,
}

fn resource_id(resource: Resource) -> libc::__rlimit_resource_t {
    match resource {
        Resource::Data => libc::RLIMIT_DATA,
        Resource::Cpu => libc::RLIMIT_CPU,
        Resource::FileSize => libc::RLIMIT_FSIZE,
        Resource::OpenFiles => libc::RLIMIT_NOFILE,
        Resource::Core => libc::RLIMIT_CORE,
    }
}

/// What a child applies to itself after its rlimits, before `exec`.
#[derive(Debug, Default)]
pub(crate) struct ChildHardening {
    /// `cgroup.procs` files the child writes `0` into, joining the job's control groups.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// Files the child inherits (their close-on-exec flag is cleared in the child).
    pub(crate) inherit: Vec<OwnedFd>,
    /// The unprivileged user and group to become (only when running as root).
    pub(crate) user: Option<(u32, u32)>,
    /// A Landlock ruleset to enforce (with `no_new_privs`).
    pub(crate) landlock: Option<OwnedFd>,
    /// Seccomp programs to install, in order (each sets `no_new_privs`).
    pub(crate) seccomp: Vec<seccompiler::BpfProgram>,
}

/// Makes the child a session and process-group leader (so its pid is the group id every
/// descendant inherits), applies `limits`, then `hardening`, between `fork` and `exec`.
pub(crate) fn isolate_child(command: &mut Command, limits: &[Rlimit], hardening: ChildHardening) {
    // Converted before the fork: the closure below must not allocate.
    let raw: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = limits
        .iter()
        .map(|l| {
            (
                resource_id(l.resource),
                libc::rlimit {
                    rlim_cur: l.soft,
                    rlim_max: l.hard,
                },
            )
        })
        .collect();
    let hook = move || -> io::Result<()> {
        // SAFETY: setsid takes no arguments and is async-signal-safe; it only fails when the
        // caller already leads a group, which a freshly forked child never does.
        if unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        for (resource, limit) in &raw {
            // SAFETY: setrlimit is async-signal-safe and reads a valid `rlimit` that lives in
            // the closure for the whole call.
            if unsafe { libc::setrlimit(*resource, limit) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        for fd in &hardening.cgroup_procs {
            // SAFETY: write of a static buffer to a descriptor this closure owns;
            // async-signal-safe. Writing "0" moves the calling process into the group.
            if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        for fd in &hardening.inherit {
            // SAFETY: fcntl on a descriptor this closure owns; async-signal-safe.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid)) = hardening.user {
            // SAFETY: setgroups with an empty list, setgid and setuid take plain integers and
            // are async-signal-safe; after them the child has no capabilities left.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) == -1
                    || libc::setgid(gid) == -1
                    || libc::setuid(uid) == -1
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some(ruleset) = &hardening.landlock {
            // SAFETY: prctl with integer arguments; async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: landlock_restrict_self takes a ruleset descriptor this closure owns and
            // a flags integer; a raw system call, async-signal-safe.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) }
                == -1
            {
                return Err(io::Error::last_os_error());
            }
        }
        for program in &hardening.seccomp {
            // prctl + seccomp(2) on a program this closure owns; no allocation on success.
            seccompiler::apply_filter(program).map_err(io::Error::other)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes the
    // async-signal-safe calls above, without allocating, locking or touching shared state.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Blocks until child `pid` has exited, WITHOUT reaping it: while it stays a zombie its pid
/// (and so its process-group id) cannot be reused, which makes a later `killpg` safe.
pub(crate) fn wait_exited_keep_zombie(pid: libc::pid_t) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::other("negative pid"))?;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reaps child `pid` (blocking until it exits) and returns its status and resource usage.
pub(crate) fn reap(pid: libc::pid_t) -> io::Result<(Termination, Usage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and outlive the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if rc != -1 || err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let termination = if libc::WIFSIGNALED(status) {
        Termination::Signaled(libc::WTERMSIG(status))
    } else {
        Termination::Exited(libc::WEXITSTATUS(status))
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok((
        termination,
        Usage {
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            cpu_time: time(usage.ru_utime) + time(usage.ru_stime),
        },
    ))
}

/// Sends SIGKILL to every process of group `pgid`. Returns `Ok(false)` when the group is
/// already empty.
pub(crate) fn kill_group(pgid: libc::pid_t) -> io::Result<bool> {
    if pgid <= 1 {
        // killpg(0) or killpg(1) would hit our own group or init: never a job's group.
        return Err(io::Error::other(format!(
            "refusing to kill process group {pgid}"
        )));
    }
    // SAFETY: killpg only takes integers; `pgid` is the group our own child leads and, since
    // the child is not reaped before the last kill, cannot have been reused.
    if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether this process runs as root (and so must drop to an unprivileged user for jobs).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends SIGKILL to process `pid`, ignoring a process that is already gone.
pub(crate) fn kill_pid(pid: libc::pid_t) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill only takes integers; the caller read `pid` from a job's own control group,
    // which only ever holds that job's processes.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Conventional name of a signal number, for error classes (`SIGKILL`, ...).
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        other => return format!("SIG{other}"),
    };
    name.to_owned()
}
