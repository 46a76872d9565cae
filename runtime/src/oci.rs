//! OCI runtime bundles (`config.json` plus an empty read-only `rootfs/`) for the runtimes that
//! take one (`runsc` for the `gvisor` tier): the host's `/usr` read-only, the harmless `/etc`
//! files, private `/proc`, `/dev` and size-capped `/tmp`, the job directory read-write at
//! `/work` and a read-only control directory at `/.sandstorm`. The container's first process
//! is given by the caller; nothing else of the host is visible.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::hostfs::{ETC_ALWAYS, ETC_NETWORK, RootEntry};
use crate::job::SEARCH_PATH;

/// Where the job directory appears inside the container.
pub(crate) const WORKDIR: &str = "/work";
/// Where the control directory appears inside the container (read-only).
pub(crate) const CONTROL_DIR: &str = "/.sandstorm";
/// The unprivileged user jobs run as inside the container (`nobody`).
pub(crate) const JOB_UID: u32 = 65534;

/// What one bundle contains.
#[derive(Debug, Clone)]
pub(crate) struct BundleSpec<'a> {
    /// The container's first process.
    pub(crate) args: Vec<String>,
    /// Host directory bound read-write at [`WORKDIR`].
    pub(crate) work: &'a Path,
    /// Host directory bound read-only at [`CONTROL_DIR`].
    pub(crate) control: &'a Path,
    /// Size of the RAM-backed `/tmp`, in bytes.
    pub(crate) tmpfs_bytes: u64,
    /// Whether name-resolution and CA files are mounted for a job that may use the network.
    pub(crate) network: bool,
    pub(crate) root: &'a [RootEntry],
}

/// Writes `dir/config.json` and `dir/rootfs/` (mount points and merged-usr symlinks only).
pub(crate) fn write_bundle(dir: &Path, spec: &BundleSpec<'_>) -> std::io::Result<()> {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", format!("size={}", spec.tmpfs_bytes.max(4096))]}),
        bind("/usr", Path::new("/usr"), true),
    ];
    for dir_name in ["proc", "dev", "tmp", "usr", "etc", "work", ".sandstorm"] {
        fs::create_dir_all(rootfs.join(dir_name))?;
    }
    for entry in spec.root {
        match entry {
            RootEntry::Symlink { path, target } => {
                let link = rootfs.join(relative(path));
                if !link.exists() {
                    std::os::unix::fs::symlink(target, link)?;
                }
            }
            RootEntry::Dir(path) => {
                fs::create_dir_all(rootfs.join(relative(path)))?;
                mounts.push(bind(&path.to_string_lossy(), path, true));
            }
        }
    }
    let etc = ETC_ALWAYS
        .iter()
        .chain(ETC_NETWORK.iter().filter(|_| spec.network));
    for file in etc {
        let host = Path::new(file);
        let Ok(meta) = fs::metadata(host) else {
            continue;
        };
        let point = rootfs.join(relative(host));
        if let Some(parent) = point.parent() {
            fs::create_dir_all(parent)?;
        }
        if meta.is_dir() {
            fs::create_dir_all(&point)?;
        } else if !point.exists() {
            fs::write(&point, b"")?;
        }
        mounts.push(bind(file, host, true));
    }
    mounts.push(bind(WORKDIR, spec.work, false));
    mounts.push(bind(CONTROL_DIR, spec.control, true));

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if !spec.network {
        namespaces.push(json!({"type": "network"}));
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": JOB_UID, "gid": JOB_UID},
            "args": spec.args,
            "env": [
                format!("PATH={SEARCH_PATH}"),
                format!("HOME={WORKDIR}"),
                "LANG=C.UTF-8",
                "TMPDIR=/tmp",
            ],
            "cwd": WORKDIR,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "sandstorm",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "seccomp": crate::harden::oci_seccomp(spec.network),
        },
    });
    let text = serde_json::to_vec_pretty(&config).map_err(std::io::Error::other)?;
    fs::write(dir.join("config.json"), text)
}

fn bind(destination: &str, source: &Path, read_only: bool) -> Value {
    let mode = if read_only { "ro" } else { "rw" };
    json!({"destination": destination, "type": "bind", "source": source,
           "options": ["rbind", mode, "nosuid", "nodev"]})
}

/// `/a/b` as `a/b`, for joining under the rootfs.
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(network: bool) -> Value {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = [
            RootEntry::Symlink {
                path: "/bin".into(),
                target: "usr/bin".into(),
            },
            RootEntry::Dir("/lib64".into()),
        ];
        let spec = BundleSpec {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            work: Path::new("/tmp/job/work"),
            control: Path::new("/tmp/job/ctl"),
            tmpfs_bytes: 1 << 20,
            network,
            root: &root,
        };
        write_bundle(dir.path(), &spec).expect("bundle");
        assert!(
            fs::symlink_metadata(dir.path().join("rootfs/bin"))
                .expect("bin link")
                .file_type()
                .is_symlink()
        );
        let text = fs::read_to_string(dir.path().join("config.json")).expect("config");
        serde_json::from_str(&text).expect("json")
    }

    fn mount<'v>(config: &'v Value, destination: &str) -> Option<&'v Value> {
        config["mounts"]
            .as_array()?
            .iter()
            .find(|m| m["destination"] == destination)
    }

    #[test]
    fn only_work_is_writable_and_secrets_are_absent() {
        let c = config(false);
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["user"]["uid"], JOB_UID);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        for m in c["mounts"].as_array().expect("mounts") {
            let dest = m["destination"].as_str().expect("destination");
            assert!(!dest.starts_with("/etc/ssl/private") && dest != "/etc/shadow");
            if m["type"] == "bind" {
                let rw = m["options"]
                    .as_array()
                    .expect("options")
                    .contains(&json!("rw"));
                assert_eq!(rw, dest == WORKDIR, "{dest}");
            }
        }
        assert!(mount(&c, "/lib64").is_some());
        assert_eq!(mount(&c, WORKDIR).expect("work")["source"], "/tmp/job/work");
    }

    #[test]
    fn network_namespace_and_dns_files_follow_the_job() {
        let closed = config(false);
        let has_net = |c: &Value| {
            c["linux"]["namespaces"]
                .as_array()
                .expect("namespaces")
                .contains(&json!({"type": "network"}))
        };
        assert!(has_net(&closed));
        assert!(mount(&closed, "/etc/resolv.conf").is_none());
        let open = config(true);
        assert!(!has_net(&open));
    }
}
