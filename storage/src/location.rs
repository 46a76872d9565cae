//! [`Location`]: a local directory or a prefix of an object store, parsed from what the user
//! typed, with errors that name the flag or field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, RetryConfig};
use sha2::Digest as _;

use crate::StorageError;
use crate::remote::Remote;

/// The URL schemes a location may have (a plain path is a local directory too).
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "s3"];

/// A directory: local, or a prefix of an object store.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local directory (a path or a `file://` URL).
    Local(PathBuf),
    /// A prefix of an object store (`s3://bucket/prefix`).
    Remote(Remote),
}

/// Settings of the S3 client beyond the environment: `aws_*` configuration keys of
/// `object_store` (e.g. `aws_endpoint`, `aws_allow_http`, `aws_access_key_id`), applied after
/// the `AWS_*` environment variables. Empty by default; tests use it to reach their own server
/// without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    pub options: Vec<(String, String)>,
}

/// Whether `s` looks like a URL (`scheme://...`) rather than a path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

impl Location {
    /// Parses `location`, given for `what` (a flag such as `--telemetry` or a configuration
    /// field such as `models_dir`, named in errors), with the S3 client configured from the
    /// environment.
    pub fn parse(what: &str, location: &str) -> Result<Self, StorageError> {
        Self::parse_with(what, location, &StoreConfig::default())
    }

    /// [`Location::parse`] with extra S3 client settings.
    pub fn parse_with(
        what: &str,
        location: &str,
        config: &StoreConfig,
    ) -> Result<Self, StorageError> {
        let invalid = |message: String| StorageError::InvalidLocation {
            what: what.to_owned(),
            location: location.to_owned(),
            message,
        };
        if location.trim().is_empty() {
            return Err(invalid("the location is empty".to_owned()));
        }
        if !is_url(location) {
            return Ok(Location::Local(PathBuf::from(location)));
        }
        let (scheme, rest) = location.split_once("://").unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(invalid(
                        "a file:// url needs an absolute path, e.g. file:///var/telemetry"
                            .to_owned(),
                    ));
                }
                if path.contains('%') {
                    return Err(invalid(
                        "percent-encoded file:// urls are not supported; give the path instead"
                            .to_owned(),
                    ));
                }
                Ok(Location::Local(PathBuf::from(path)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                check_bucket(bucket).map_err(invalid)?;
                let prefix = prefix.trim_matches('/');
                if prefix
                    .split('/')
                    .any(|p| (p.is_empty() && !prefix.is_empty()) || p == "." || p == "..")
                {
                    return Err(invalid(
                        "the key prefix must not hold empty, `.` or `..` segments".to_owned(),
                    ));
                }
                let store = s3_store(bucket, config).map_err(invalid)?;
                Ok(Location::Remote(Remote::new(
                    format!("s3://{bucket}"),
                    prefix.to_owned(),
                    store,
                )))
            }
            other => Err(StorageError::UnsupportedScheme {
                what: what.to_owned(),
                location: location.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }

    /// The local directory, if this location is one.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Remote(_) => None,
        }
    }

    /// The object-store prefix, if this location is one.
    pub fn as_remote(&self) -> Option<&Remote> {
        match self {
            Location::Local(_) => None,
            Location::Remote(r) => Some(r),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(r) => f.write_str(&r.url()),
        }
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{bucket}` is not an s3 bucket name (3 to 63 lowercase letters, digits, dots and \
             hyphens), expected s3://BUCKET/PREFIX"
        ))
    }
}

/// An S3 client for `bucket`: timeouts and a short retry budget first (so an unreachable
/// endpoint is an error within seconds, not minutes), then the `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`, ...), then `config`.
fn s3_store(
    bucket: &str,
    config: &StoreConfig,
) -> Result<Arc<dyn object_store::ObjectStore>, String> {
    let mut builder = AmazonS3Builder::new()
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(20),
        })
        .with_config(
            AmazonS3ConfigKey::Client(object_store::ClientConfigKey::ConnectTimeout),
            "5s",
        )
        .with_config(
            AmazonS3ConfigKey::Client(object_store::ClientConfigKey::Timeout),
            "120s",
        );
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let env: Vec<(String, String)> = env
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    for (key, value) in env {
        // Unknown AWS_* variables (e.g. AWS_PROFILE) are not the client's business.
        if let Ok(key) = key.parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    for (key, value) in &config.options {
        let parsed = key
            .to_ascii_lowercase()
            .parse::<AmazonS3ConfigKey>()
            .map_err(|e| format!("unknown s3 setting `{key}`: {e}"))?;
        builder = builder.with_config(parsed, value);
    }
    let store = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| format!("cannot configure the s3 client: {e}"))?;
    Ok(Arc::new(store))
}

/// Sandstorm's cache directory: `$SANDSTORM_CACHE_DIR`, else `$XDG_CACHE_HOME/sandstorm`, else
/// `~/.cache/sandstorm`. Object-store locations keep their local state below it (the telemetry
/// spool, downloaded model versions).
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("SANDSTORM_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("sandstorm");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("sandstorm"),
        None => std::env::temp_dir().join("sandstorm-cache"),
    }
}

/// A file-name-safe, unique name for a URL: its letters and digits, then a short hash.
pub fn slug(url: &str) -> String {
    let readable: String = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect();
    let hash = hex::encode(sha2::Sha256::digest(url.as_bytes()));
    format!("{}-{}", readable.trim_matches('-'), &hash[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        Location::parse("--telemetry", s).expect_err(s).to_string()
    }

    #[test]
    fn paths_and_file_urls_are_local() {
        let local = |s: &str| {
            Location::parse("--telemetry", s)
                .expect(s)
                .as_local()
                .map(Path::to_path_buf)
        };
        assert_eq!(
            local("runs/telemetry"),
            Some(PathBuf::from("runs/telemetry"))
        );
        assert_eq!(
            local("file:///var/telemetry"),
            Some(PathBuf::from("/var/telemetry"))
        );
        assert_eq!(
            local("file://localhost/var/t"),
            Some(PathBuf::from("/var/t"))
        );
        assert!(err("file://relative/x").contains("absolute path"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn s3_urls_are_remote_and_other_schemes_are_named() {
        let loc = Location::parse("--telemetry", "s3://my-bucket/a/b/").expect("s3");
        let remote = loc.as_remote().expect("remote");
        assert_eq!(remote.url(), "s3://my-bucket/a/b");
        assert_eq!(remote.store_url(), "s3://my-bucket");
        let e = err("gs://bucket/t");
        assert!(
            e.contains("--telemetry") && e.contains("scheme `gs`") && e.contains("s3://"),
            "{e}"
        );
        let e = err("s3://Bad_Bucket/t");
        assert!(
            e.contains("--telemetry") && e.contains("bucket name"),
            "{e}"
        );
        assert!(err("s3://bucket/a//b").contains("segments"));
        assert!(err("s3://bucket/../b").contains("segments"));
        let e = Location::parse_with(
            "models_dir",
            "s3://bucket/m",
            &StoreConfig {
                options: vec![("aws_nonsense".into(), "1".into())],
            },
        )
        .expect_err("bad setting")
        .to_string();
        assert!(
            e.contains("models_dir") && e.contains("aws_nonsense"),
            "{e}"
        );
    }

    #[test]
    fn slugs_are_safe_and_distinct() {
        let a = slug("s3://bucket/a");
        assert!(a.starts_with("bucket-a-"), "{a}");
        assert_ne!(a, slug("s3://bucket/a/"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
