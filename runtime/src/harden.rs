//! Kernel-level hardening of local jobs: a seccomp filter compiled once per engine and
//! Landlock file-system rules built per job (best effort: kernels without Landlock run
//! without it and the run says so).
//!
//! The seccomp filter answers `EPERM` (the job sees a failed call, not a crash) to:
//! - debugging and reading other processes: `ptrace`, `process_vm_readv/writev`;
//! - io_uring (`io_uring_setup/enter/register`), which bypasses syscall filtering;
//! - kernel and system administration: modules, `kexec`, `bpf`, `perf_event_open`,
//!   `userfaultfd`, keyrings, `mount` and the new mount API, `pivot_root`, `swapon/off`,
//!   `reboot`, `syslog`, `acct`, `quotactl`, `iopl/ioperm`, `open_by_handle_at`;
//! - new namespaces: `unshare`, `setns`, `clone` with any `CLONE_NEW*` flag (`clone3` answers
//!   `ENOSYS` so that libc falls back to `clone`, whose flags the filter can read);
//! - unless the job may use the network: `socket` for every address family except
//!   `AF_UNIX` (so TCP, UDP, raw sockets, netlink and DNS lookups fail).
//!
//! Landlock (process tier only; the other tiers build their own file-system view) lets the
//! job read only the host's programs and libraries and write only its job directory, and
//! scopes its signals and abstract UNIX sockets to itself (see [`landlock`]).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::hostfs::{ETC_ALWAYS, ETC_NETWORK};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// `(name, number)` of each listed syscall.
macro_rules! syscalls {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        &[$($(#[$attr])* (stringify!($name), libc::$name as i64)),*]
    };
}

/// Syscalls no job may make (`SYS_` names as libc spells them).
const DENIED: &[(&str, i64)] = syscalls![
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_fsopen,
    SYS_fsmount,
    SYS_fspick,
    SYS_move_mount,
    SYS_open_tree,
    SYS_mount_setattr,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_syslog,
    SYS_acct,
    SYS_quotactl,
    #[cfg(target_arch = "x86_64")]
    SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    SYS_ioperm,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_unshare,
    SYS_setns,
];

/// Address families a job without network may not open sockets of.
const NETWORK_FAMILIES: [libc::c_int; 8] = [
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_PACKET,
    libc::AF_NETLINK,
    libc::AF_VSOCK,
    libc::AF_ALG,
    libc::AF_BLUETOOTH,
    libc::AF_XDP,
];

/// Every `CLONE_NEW*` flag, each refused on `clone`.
const CLONE_NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// The seccomp filters of one engine, compiled once: the main filter for jobs with and
/// without network, and `clone3`'s. When they cannot be compiled (an architecture seccompiler
/// does not know), jobs run without them and report `seccomp=unavailable`.
#[derive(Debug)]
pub(crate) struct SeccompFilters(Result<Compiled, String>);

#[derive(Debug)]
struct Compiled {
    closed: BpfProgram,
    open: BpfProgram,
    clone3: BpfProgram,
}

impl SeccompFilters {
    pub(crate) fn compile() -> Self {
        let compiled = (|| {
            Ok(Compiled {
                closed: compile(false)?,
                open: compile(true)?,
                clone3: compile_clone3()?,
            })
        })();
        if let Err(e) = &compiled {
            tracing::warn!(error = %e, "jobs run without seccomp");
        }
        Self(compiled)
    }

    pub(crate) fn is_enforced(&self) -> bool {
        self.0.is_ok()
    }

    /// The label runs report.
    pub(crate) fn label(&self) -> &'static str {
        if self.is_enforced() {
            "seccomp=sandstorm_v1"
        } else {
            "seccomp=unavailable"
        }
    }

    /// The programs to install for a job that may (or may not) use the network.
    pub(crate) fn programs(&self, allow_network: bool) -> Vec<BpfProgram> {
        match &self.0 {
            Ok(c) => {
                let main = if allow_network { &c.open } else { &c.closed };
                vec![main.clone(), c.clone3.clone()]
            }
            Err(_) => Vec::new(),
        }
    }

    /// Each program as the raw bytes `bwrap --add-seccomp-fd FD` reads (an array of
    /// `sock_filter`).
    pub(crate) fn bytes(&self, allow_network: bool) -> Vec<Vec<u8>> {
        self.programs(allow_network)
            .iter()
            .map(|program| {
                let mut out = Vec::with_capacity(program.len() * 8);
                for f in program {
                    out.extend_from_slice(&f.code.to_ne_bytes());
                    out.push(f.jt);
                    out.push(f.jf);
                    out.extend_from_slice(&f.k.to_ne_bytes());
                }
                out
            })
            .collect()
    }
}

fn compile(allow_network: bool) -> Result<BpfProgram, String> {
    let err = |e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}");
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp filter for {}: {e}", std::env::consts::ARCH))?;
    let cond =
        |arg: u8, op, value: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    // Any namespace flag in clone's first argument is refused.
    let mut clone_rules = Vec::new();
    for flag in CLONE_NAMESPACE_FLAGS {
        let flag = flag as u64;
        clone_rules.push(
            SeccompRule::new(vec![
                cond(0, SeccompCmpOp::MaskedEq(flag), flag).map_err(err)?,
            ])
            .map_err(err)?,
        );
    }
    rules.insert(libc::SYS_clone, clone_rules);
    if !allow_network {
        let mut socket_rules = Vec::new();
        for family in NETWORK_FAMILIES {
            socket_rules.push(
                SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, family as u64).map_err(err)?])
                    .map_err(err)?,
            );
        }
        rules.insert(libc::SYS_socket, socket_rules);
    }
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    to_program(SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch).map_err(err)?)
}

/// `clone3` passes its flags in memory a filter cannot read: answer `ENOSYS` so that libc
/// falls back to `clone`, which the main filter checks. A filter has one match action, so
/// this is a second program, installed with the main one.
fn compile_clone3() -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp filter for {}: {e}", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("cannot compile the clone3 filter: {e}"))?;
    to_program(filter)
}

fn to_program(filter: SeccompFilter) -> Result<BpfProgram, String> {
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}"))
}

/// A Landlock ruleset for one job, ready to be enforced in the child.
#[derive(Debug)]
pub(crate) struct Landlock {
    /// `None` when the kernel has no Landlock.
    pub(crate) fd: Option<OwnedFd>,
    /// What the run reports, e.g. `landlock=abi6` or `landlock=unsupported`.
    pub(crate) label: String,
}

/// Paths a process-tier job may read (and execute) besides its job directory: the host's
/// programs and libraries, the harmless `/etc` files, `/proc` (its own entries; other
/// processes' memory and environment stay out of reach because Landlock also scopes ptrace
/// access) and the random and null devices.
const READABLE: [&str; 8] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/proc",
    "/dev/urandom",
    "/dev/zero",
];

/// Read-only the host's programs and libraries, read-write `job_dir` and `/dev/null`,
/// nothing else; signals and abstract UNIX sockets scoped to the job. Best effort: what the
/// kernel's Landlock ABI lacks is left out, and `label` says what is enforced.
pub(crate) fn landlock(job_dir: &Path, allow_network: bool) -> Landlock {
    let abi = ABI::V6;
    let existing = |paths: &[&'static str]| -> Vec<&'static str> {
        paths
            .iter()
            .copied()
            .filter(|p| Path::new(p).exists())
            .collect()
    };
    let mut readable = existing(&READABLE);
    readable.extend(existing(&ETC_ALWAYS));
    if allow_network {
        readable.extend(existing(&ETC_NETWORK));
    }
    let built = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| {
            r.add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))?
                .add_rules(path_beneath_rules(
                    [job_dir],
                    AccessFs::from_all(abi) & !(AccessFs::MakeChar | AccessFs::MakeBlock),
                ))?
                .add_rules(path_beneath_rules(
                    ["/dev/null"],
                    AccessFs::from_read(abi) | AccessFs::WriteFile,
                ))
        });
    match built {
        Ok(created) => {
            let fd: Option<OwnedFd> = created.into();
            let label = if fd.is_some() {
                "landlock=host_programs_ro,job_dir_rw,scoped_signals".to_owned()
            } else {
                "landlock=unsupported_by_kernel".to_owned()
            };
            Landlock { fd, label }
        }
        Err(e) => {
            tracing::warn!(error = %e, "landlock ruleset could not be built");
            Landlock {
                fd: None,
                label: "landlock=unavailable".to_owned(),
            }
        }
    }
}

/// What the process tier reports about Landlock on this kernel (checked once).
pub(crate) fn landlock_label() -> &'static str {
    static LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| landlock(&std::env::temp_dir(), false).label)
}

/// The same policy as the compiled filters, in the OCI runtime spec's `linux.seccomp` form,
/// for runtimes that install it inside their sandbox (`runsc --oci-seccomp`).
pub(crate) fn oci_seccomp(allow_network: bool) -> serde_json::Value {
    use serde_json::json;
    let names: Vec<&str> = DENIED
        .iter()
        .map(|(name, _)| name.trim_start_matches("SYS_"))
        .collect();
    let mut rules = vec![
        json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
    ];
    for flag in CLONE_NAMESPACE_FLAGS {
        rules.push(
            json!({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}),
        );
    }
    if !allow_network {
        for family in NETWORK_FAMILIES {
            rules.push(
                json!({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]}),
            );
        }
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
}
