//! Per-job control groups: a process-count limit (`pids.max`) and a memory limit that the
//! kernel enforces on the whole job, whatever its processes do, and that tells an OOM kill
//! apart from any other death. Works on the unified (v2) hierarchy and on v1 or hybrid
//! hosts (where the `pids` and `memory` controllers are mounted separately); where neither
//! can be written (no root, read-only `/sys/fs/cgroup`) jobs run without and the run's
//! `enforced_limits` says so.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Most processes (and threads) one job may have at once.
pub(crate) const PIDS_MAX: u64 = 256;

const ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy this host offers, found once.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// cgroup v2: one directory per job under `ROOT/sandstorm`.
    Unified(PathBuf),
    /// cgroup v1: a directory per job under `ROOT/pids/sandstorm` and `ROOT/memory/sandstorm`.
    Legacy { pids: PathBuf, memory: PathBuf },
    /// Neither can be used; why.
    Unavailable(String),
}

fn hierarchy() -> &'static Hierarchy {
    static HIERARCHY: OnceLock<Hierarchy> = OnceLock::new();
    HIERARCHY.get_or_init(|| {
        let root = Path::new(ROOT);
        let attempt = || -> Result<Hierarchy, String> {
            if root.join("cgroup.controllers").exists() {
                let parent = root.join("sandstorm");
                make_parent(&parent)?;
                // Children of `sandstorm` may use these controllers.
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+pids +memory");
                return Ok(Hierarchy::Unified(parent));
            }
            let pids = root.join("pids").join("sandstorm");
            let memory = root.join("memory").join("sandstorm");
            make_parent(&pids)?;
            make_parent(&memory)?;
            Ok(Hierarchy::Legacy { pids, memory })
        };
        attempt().unwrap_or_else(Hierarchy::Unavailable)
    })
}

/// What this host offers for per-job control groups, for `sandstorm doctor`.
pub(crate) fn describe() -> String {
    match hierarchy() {
        Hierarchy::Unified(dir) => format!(
            "cgroup v2 (unified): pids.max={PIDS_MAX} and memory.max per job under {}",
            dir.display()
        ),
        Hierarchy::Legacy { pids, memory } => format!(
            "cgroup v1 (legacy or hybrid): pids.max={PIDS_MAX} per job under {}, memory limit under {}",
            pids.display(),
            memory.display()
        ),
        Hierarchy::Unavailable(reason) => format!("unavailable: {reason}"),
    }
}

fn make_parent(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The control group(s) of one job; removed (after killing anything left) on drop.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    /// One directory per hierarchy the job is in (one on v2, two on v1).
    dirs: Vec<PathBuf>,
    /// The directory whose memory files to read.
    memory: PathBuf,
    unified: bool,
}

impl JobCgroup {
    /// Creates the job's group(s) named `name` with its limits, or says why not.
    pub(crate) fn create(name: &str, memory_bytes: u64) -> Result<Self, String> {
        let (dirs, memory, unified) = match hierarchy() {
            Hierarchy::Unavailable(reason) => return Err(reason.clone()),
            Hierarchy::Unified(parent) => {
                let dir = parent.join(name);
                (vec![dir.clone()], dir, true)
            }
            Hierarchy::Legacy { pids, memory } => (
                vec![pids.join(name), memory.join(name)],
                memory.join(name),
                false,
            ),
        };
        for dir in &dirs {
            fs::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let group = Self {
            dirs,
            memory,
            unified,
        };
        let write = |file: &Path, value: String| {
            fs::write(file, &value)
                .map_err(|e| format!("cannot write {value} to {}: {e}", file.display()))
        };
        let pids_dir = &group.dirs[0];
        write(&pids_dir.join("pids.max"), PIDS_MAX.to_string())?;
        if unified {
            write(&group.memory.join("memory.max"), memory_bytes.to_string())?;
            write(&group.memory.join("memory.swap.max"), "0".into())?;
        } else {
            write(
                &group.memory.join("memory.limit_in_bytes"),
                memory_bytes.to_string(),
            )?;
        }
        Ok(group)
    }

    /// `cgroup.procs` of every hierarchy, opened for the child to write `0` into (which moves
    /// the writer) before it `exec`s.
    pub(crate) fn procs_files(&self) -> Result<Vec<OwnedFd>, String> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))
            })
            .collect()
    }

    /// Whether the kernel killed a process of the job for exceeding its memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        let (file, key) = if self.unified {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            })
            .is_some_and(|kills| kills > 0)
    }

    /// Labels for `RunResult::enforced_limits`.
    pub(crate) fn labels(&self, memory_bytes: u64) -> Vec<String> {
        let version = if self.unified { "v2" } else { "v1" };
        vec![
            format!("cgroup_{version}_pids_max={PIDS_MAX}"),
            format!("cgroup_{version}_memory_mib={}", memory_bytes >> 20),
        ]
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Anything still inside escaped the process-group kill: kill it by pid.
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    crate::sys::kill_pid(pid);
                }
            }
            // rmdir fails while the killed processes are still exiting: retry briefly.
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}
