//! What of the host's file system sandboxes show their jobs: the top-level `/usr` links or
//! directories, the few harmless `/etc` files, and where host programs (`bwrap`, `runsc`)
//! are found. Shared by the `bubblewrap`, `gvisor` and OCI backends so all of them expose the
//! same read-only view.

use std::fs;
use std::path::{Path, PathBuf};

use crate::job::SEARCH_PATH;

/// Top-level entries that merged-usr systems make symlinks into `/usr` (mirrored as the same
/// symlinks) and older systems keep as directories (bound read-only).
pub(crate) const ROOT_ENTRIES: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The `/etc` files every job gets, read-only. Nothing here is secret:
/// - `ld.so.cache`: the dynamic loader's library index (without it every library lookup walks
///   the default directories, and libraries outside them are not found);
/// - `alternatives`: Debian's symlink farm that `/usr/bin` names like `awk` or `editor` point
///   through;
/// - `localtime`: the host time zone, for interpreters that format local times.
///
/// Deliberately absent: `shadow`/`gshadow` (password hashes), `passwd`/`group` (host account
/// names), `ssl/private` (host TLS keys), and everything else under `/etc`.
pub(crate) const ETC_ALWAYS: [&str; 3] =
    ["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"];

/// Extra `/etc` files for jobs that may use the network: name resolution (`resolv.conf`,
/// `hosts`, `nsswitch.conf`, `host.conf`, `gai.conf`) and the public CA certificates TLS
/// clients verify servers with (`ssl/certs`, `ssl/openssl.cnf`; never `ssl/private`).
pub(crate) const ETC_NETWORK: [&str; 7] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
];

/// How a top-level directory of the host appears in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootEntry {
    /// `/name` is a symlink (merged usr) with this target.
    Symlink { path: PathBuf, target: PathBuf },
    /// `/name` is a real directory, bound read-only.
    Dir(PathBuf),
}

/// The host's top-level [`ROOT_ENTRIES`] that exist, as symlinks or directories.
pub(crate) fn root_entries() -> Vec<RootEntry> {
    ROOT_ENTRIES
        .iter()
        .filter_map(|name| {
            let path = Path::new("/").join(name);
            let meta = fs::symlink_metadata(&path).ok()?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).ok()?;
                Some(RootEntry::Symlink { path, target })
            } else if meta.is_dir() {
                Some(RootEntry::Dir(path))
            } else {
                None
            }
        })
        .collect()
}

/// `name` from the caller's `PATH`, else from [`SEARCH_PATH`].
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let caller_path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&caller_path)
        .chain(std::env::split_paths(SEARCH_PATH))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
