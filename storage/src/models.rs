//! Model directories and model registries in an object store (docs/training.md,
//! docs/service.md). The layout is the local one: `<registry>/champion` (one line, the
//! champion's version), `<registry>/<version>/metadata.json`, ... A version is uploaded whole,
//! `metadata.json` last, so a version whose `metadata.json` exists is complete; the champion
//! pointer is one small object, written last (a put is atomic).
//!
//! Serving never reads model files from the store: [`fetch_models`] downloads the version into
//! a local cache directory (named by the SHA-256 of its `metadata.json`, so a new training run
//! under a reused name is never confused with the old one, and a cached version is downloaded
//! once) and the router loads it from there.

use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::{Remote, StorageError, default_cache_dir, slug};

/// The champion pointer object of a registry.
pub const CHAMPION_FILE: &str = "champion";
/// The file whose presence marks a complete model directory (uploaded last).
pub const METADATA_FILE: &str = "metadata.json";

/// Whether `version` is a valid version name (a single path segment).
pub fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The default local cache of the models at `remote`:
/// `<cache dir>/models/<slug of the URL>` ([`default_cache_dir`]).
pub fn default_models_cache(remote: &Remote) -> PathBuf {
    default_cache_dir().join("models").join(slug(&remote.url()))
}

/// The champion named by the registry's pointer object, `None` when there is no pointer (the
/// location is then a plain model directory, or an empty registry).
pub fn read_champion(remote: &Remote) -> Result<Option<String>, StorageError> {
    let Some(bytes) = remote.get(CHAMPION_FILE)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let version = text.trim();
    if version.is_empty() {
        return Ok(None);
    }
    if !valid_version(version) {
        return Err(StorageError::NotFound(format!(
            "{} does not name a version: {text:?}",
            remote.object_url(CHAMPION_FILE)
        )));
    }
    Ok(Some(version.to_owned()))
}

/// The local directory holding the models at `remote`: the champion's version when `remote`
/// is a registry (it has a `champion` object), else `remote` itself as a model directory;
/// downloaded into `cache` unless already there.
pub fn fetch_models(remote: &Remote, cache: &Path) -> Result<PathBuf, StorageError> {
    match read_champion(remote)? {
        Some(version) => fetch_model_dir(&remote.child(&version), cache),
        None => fetch_model_dir(remote, cache),
    }
}

/// Downloads the model directory at `remote` into `cache/<hash of its metadata.json>/`
/// (written under a temporary name, then renamed; reused when present) and returns it.
pub fn fetch_model_dir(remote: &Remote, cache: &Path) -> Result<PathBuf, StorageError> {
    let metadata = remote.get(METADATA_FILE)?.ok_or_else(|| {
        StorageError::NotFound(format!(
            "{} is not a model directory or registry: no {METADATA_FILE} and no {CHAMPION_FILE} \
             object",
            remote.url()
        ))
    })?;
    let hash = hex::encode(sha2::Sha256::digest(&metadata));
    let dest = cache.join(&hash[..24]);
    if dest.join(METADATA_FILE).is_file() {
        tracing::debug!(from = %remote.url(), dir = %dest.display(), "model directory cached");
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).map_err(|e| StorageError::io(cache, e))?;
    let tmp = cache.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    // The models and their schema are the top-level files; report and MLflow copies are not
    // needed to serve.
    let result = remote
        .download_dir(&tmp, |name| !name.contains('/') && name != METADATA_FILE)
        .and_then(|_| {
            let path = tmp.join(METADATA_FILE);
            std::fs::write(&path, &metadata).map_err(|e| StorageError::io(&path, e))
        });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process downloaded the same version meanwhile.
        if !dest.join(METADATA_FILE).is_file() {
            return Err(StorageError::io(&dest, e));
        }
    }
    tracing::info!(from = %remote.url(), dir = %dest.display(), "downloaded model directory");
    Ok(dest)
}
