//! [`Remote`]: a prefix of an object store and the blocking operations Sandstorm needs on it.
//! Every object is written with one `put`, which object stores apply atomically (readers see
//! the old object or the new one, never a part), so a re-put of the same name after a crash
//! replaces the object instead of adding one.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use crate::StorageError;

/// A prefix (a "directory") of an object store.
#[derive(Clone)]
pub struct Remote {
    /// `s3://bucket`: what DataFusion registers the store under.
    store_url: String,
    /// Key prefix without leading or trailing `/` (empty: the bucket's root).
    prefix: String,
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.url()).finish()
    }
}

/// An object under a [`Remote`]: its name relative to the prefix, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

/// The runtime blocking calls run on: one worker thread, alive for the process, so the
/// connection pools of the stores (which spawn tasks on it) keep working between calls.
fn runtime() -> Result<&'static tokio::runtime::Runtime, StorageError> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sandstorm-storage")
                .enable_all()
                .build()
                .map_err(|e| tracing::error!(error = %e, "cannot start the storage runtime"))
                .ok()
        })
        .as_ref()
        .ok_or_else(|| StorageError::Internal("cannot start the storage runtime".to_owned()))
}

/// Runs `f` to completion from synchronous code, also when the caller is itself on a tokio
/// runtime's thread (then on a helper thread, since a runtime cannot block inside another).
fn block_on<F>(f: F) -> Result<F::Output, StorageError>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .map_err(|_| StorageError::Internal("storage helper thread panicked".to_owned()))
    })
}

impl Remote {
    pub(crate) fn new(store_url: String, prefix: String, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store_url,
            prefix,
            store,
        }
    }

    /// The location as a URL, e.g. `s3://bucket/telemetry` (no trailing `/`).
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            self.store_url.clone()
        } else {
            format!("{}/{}", self.store_url, self.prefix)
        }
    }

    /// The URL of the whole store, e.g. `s3://bucket`.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The key prefix (no leading or trailing `/`; empty at the bucket's root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store, to register with an engine that reads it directly (DataFusion).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The location `name` below this one (same store).
    pub fn child(&self, name: &str) -> Remote {
        Remote {
            store_url: self.store_url.clone(),
            prefix: self.key_str(name),
            store: Arc::clone(&self.store),
        }
    }

    /// The URL of object `name` below this location.
    pub fn object_url(&self, name: &str) -> String {
        format!("{}/{}", self.store_url, self.key_str(name))
    }

    fn key_str(&self, name: &str) -> String {
        let name = name.trim_matches('/');
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{name}", self.prefix),
        }
    }

    fn key(&self, name: &str) -> ObjectPath {
        ObjectPath::from(self.key_str(name))
    }

    fn store_err(&self, name: &str) -> impl Fn(object_store::Error) -> StorageError + '_ {
        let url = self.object_url(name);
        move |source| StorageError::Store {
            url: url.clone(),
            source,
        }
    }

    /// The contents of object `name`, `None` when it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        let key = self.key(name);
        let store = Arc::clone(&self.store);
        let got = block_on(async move {
            match store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        got.map_err(self.store_err(name))
    }

    /// Writes object `name` in one put (atomic: readers see the old or the new object).
    pub fn put(&self, name: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        let key = self.key(name);
        let store = Arc::clone(&self.store);
        let payload = PutPayload::from(bytes.into());
        block_on(async move { store.put(&key, payload).await })?
            .map(|_| ())
            .map_err(self.store_err(name))?;
        tracing::debug!(object = %self.object_url(name), "put object");
        Ok(())
    }

    /// Uploads local file `path` as object `name`.
    pub fn put_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let bytes = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        self.put(name, bytes)
    }

    /// Deletes object `name` (no error when it does not exist).
    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        let key = self.key(name);
        let store = Arc::clone(&self.store);
        match block_on(async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(name)(e)),
        }
    }

    /// Every object below this location (recursively), sorted by name; names are relative to
    /// this location.
    pub fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let store = Arc::clone(&self.store);
        let metas = block_on(async move {
            store
                .list(prefix.as_ref())
                .try_collect::<Vec<object_store::ObjectMeta>>()
                .await
        })?
        .map_err(self.store_err(""))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.to_string();
                let name = key.strip_prefix(&strip)?.to_owned();
                Some(ObjectInfo { name, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the "directories" directly below this location, sorted.
    pub fn list_dirs(&self) -> Result<Vec<String>, StorageError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let store = Arc::clone(&self.store);
        let listed = block_on(async move { store.list_with_delimiter(prefix.as_ref()).await })?
            .map_err(self.store_err(""))?;
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Uploads every file under local directory `dir` below this location (same relative
    /// names), the file named `last` (relative name) after all others: readers that wait for
    /// `last` then see a complete directory. Returns the number of files.
    pub fn upload_dir(&self, dir: &Path, last: &str) -> Result<usize, StorageError> {
        let mut files = local_files(dir)?;
        files.sort_by_key(|(name, _)| name == last);
        for (name, path) in &files {
            self.put_file(name, path)?;
        }
        tracing::info!(dir = %dir.display(), to = %self.url(), files = files.len(), "uploaded directory");
        Ok(files.len())
    }

    /// Downloads the objects below this location into local directory `dest` (created),
    /// keeping their relative names; `keep` selects objects by relative name.
    pub fn download_dir(
        &self,
        dest: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        for object in self.list()? {
            if !keep(&object.name) || object.name.split('/').any(|p| p == ".." || p.is_empty()) {
                continue;
            }
            let bytes = self.get(&object.name)?.ok_or_else(|| {
                StorageError::NotFound(format!(
                    "{} disappeared while downloading",
                    self.object_url(&object.name)
                ))
            })?;
            let path = dest.join(&object.name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;
            }
            std::fs::write(&path, &bytes).map_err(|e| StorageError::io(&path, e))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Every regular file under `dir` (recursively) with its `/`-separated relative name.
fn local_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(|e| StorageError::io(&current, e))? {
            let entry = entry.map_err(|e| StorageError::io(&current, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| StorageError::io(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let Ok(rel) = path.strip_prefix(dir)
            {
                let name: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((name.join("/"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}
