//! The service's TOML configuration ([`Config`]): where to listen, the model directory, the
//! catalog and telemetry paths, API keys (SHA-256 of each key, never the key itself) with their
//! tenant and scopes, per-tenant rate and concurrency limits, and the request body limit.
//! Relative paths are resolved against the configuration file's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ServiceError;

/// The whole configuration file. See `docs/service.md` and `examples/service.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Model directory written by `sandstorm train`, or a model registry (its champion is
    /// served); a path or an `s3://` URL (docs/service.md).
    pub models_dir: PathBuf,
    /// Where versions of an object-store `models_dir` are downloaded (default:
    /// `~/.cache/sandstorm/models/<url>`).
    #[serde(default)]
    pub models_cache_dir: Option<PathBuf>,
    /// Catalog TOML; the embedded default catalog when absent.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Telemetry location (a directory or an `s3://` URL) that receives every run's rows;
    /// none when absent.
    #[serde(default)]
    pub telemetry_dir: Option<PathBuf>,
    /// With an object-store `telemetry_dir`: the local spool of the write-ahead log (default:
    /// `~/.cache/sandstorm/telemetry-spool/<url>`).
    #[serde(default)]
    pub telemetry_spool_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger bodies get 413).
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// How long shutdown waits for in-flight runs before cancelling them, in seconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_s: f64,
    /// Finished runs kept in memory for `GET /v1/runs/{id}`; the oldest are forgotten first.
    #[serde(default = "default_retained_runs")]
    pub max_retained_runs: usize,
    /// Limits of every tenant without its own entry in `tenants`.
    #[serde(default)]
    pub limits: Limits,
    /// Per-tenant overrides of `limits`, by tenant name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLimits>,
    /// The accepted API keys.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// How the router explores: `off` (default), `epsilon:E` or `thompson[:DRAWS]`
    /// (docs/exploration.md). Telemetry logs each decision's selection probability.
    #[serde(default)]
    pub exploration: sandstorm_router::Exploration,
    /// WebAssembly routing policies; none run when absent.
    #[serde(default)]
    pub policies: Option<PoliciesConfig>,
}

/// Where the router's policies come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// The signed policy registry (a directory, as `sandstorm policy publish --registry`
    /// writes it). The newest trusted version of each policy runs; `POST /v1/policies` adds
    /// versions here.
    pub registry: PathBuf,
    /// The public keys whose signatures the router accepts, one hex key per line.
    pub trusted_keys: PathBuf,
    /// How often the registry is read again for versions published by other means, seconds.
    #[serde(default = "default_policy_sync")]
    pub sync_interval_s: f64,
}

fn default_policy_sync() -> f64 {
    5.0
}

/// Rate and concurrency limits of one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sustained authenticated requests per second.
    pub requests_per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
    /// Runs executing at the same time (`POST /v1/runs` beyond it gets 429).
    pub max_concurrent_runs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 100,
            max_concurrent_runs: 4,
        }
    }
}

/// A tenant's overrides; unset fields keep the value of `limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub max_concurrent_runs: Option<u32>,
}

/// What a key may do beyond routing and running for its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Publish policies and reload models.
    Admin,
}

/// One API key, stored as the SHA-256 of the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Lowercase hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Extra scopes, e.g. `["admin"]`.
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// A label for logs (never the key).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_body_limit() -> usize {
    // The request payload may be 8 MiB (`MAX_PAYLOAD_BYTES`); JSON escaping adds to it.
    10 * 1024 * 1024
}

fn default_shutdown_grace() -> f64 {
    30.0
}

fn default_retained_runs() -> usize {
    10_000
}

impl Config {
    /// A configuration with defaults everywhere, for `models_dir`.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: default_listen(),
            models_dir: models_dir.into(),
            models_cache_dir: None,
            catalog: None,
            telemetry_dir: None,
            telemetry_spool_dir: None,
            body_limit_bytes: default_body_limit(),
            shutdown_grace_s: default_shutdown_grace(),
            max_retained_runs: default_retained_runs(),
            limits: Limits::default(),
            tenants: BTreeMap::new(),
            api_keys: Vec::new(),
            exploration: sandstorm_router::Exploration::Off,
            policies: None,
        }
    }

    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ServiceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServiceError::Config(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base)
            .map_err(|e| ServiceError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses and checks configuration text; relative paths are taken relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ServiceError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ServiceError::Config(e.to_string()))?;
        let resolve = |p: &mut PathBuf| {
            // URLs (s3://...) are not paths.
            if p.is_relative() && !sandstorm_storage::is_url(&p.to_string_lossy()) {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.models_dir);
        if let Some(p) = &mut config.catalog {
            resolve(p);
        }
        if let Some(p) = &mut config.telemetry_dir {
            resolve(p);
        }
        for p in [
            &mut config.models_cache_dir,
            &mut config.telemetry_spool_dir,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        if let Some(p) = &mut config.policies {
            resolve(&mut p.registry);
            resolve(&mut p.trusted_keys);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules the service relies on.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let err = |m: String| Err(ServiceError::Config(m));
        let mut seen = BTreeSet::new();
        for (i, key) in self.api_keys.iter().enumerate() {
            if key.sha256.len() != 64 || hex::decode(&key.sha256).is_err() {
                return err(format!(
                    "api_keys[{i}].sha256 must be 64 hex digits (the SHA-256 of the key)"
                ));
            }
            if key.tenant.trim().is_empty() || key.tenant.len() > 128 {
                return err(format!("api_keys[{i}].tenant must be 1 to 128 characters"));
            }
            if !seen.insert(key.sha256.to_ascii_lowercase()) {
                return err(format!("api_keys[{i}].sha256 is listed twice"));
            }
        }
        for (name, limits) in std::iter::once(("limits".to_owned(), self.limits)).chain(
            self.tenants
                .keys()
                .map(|t| (format!("tenants.{t}"), self.limits_for(t))),
        ) {
            if limits.requests_per_second == 0 || limits.burst == 0 {
                return err(format!(
                    "{name}: requests_per_second and burst must be positive"
                ));
            }
        }
        for (field, location) in std::iter::once(("models_dir", Some(&self.models_dir))).chain(
            std::iter::once(("telemetry_dir", self.telemetry_dir.as_ref())),
        ) {
            if let Some(location) = location {
                sandstorm_storage::Location::parse(field, &location.to_string_lossy())
                    .map_err(|e| ServiceError::Config(e.to_string()))?;
            }
        }
        if self.body_limit_bytes < 1024 {
            return err("body_limit_bytes must be at least 1024".to_owned());
        }
        if !(self.shutdown_grace_s.is_finite() && self.shutdown_grace_s >= 0.0) {
            return err("shutdown_grace_s must be a non-negative number of seconds".to_owned());
        }
        if let Some(p) = &self.policies
            && !(p.sync_interval_s.is_finite() && p.sync_interval_s >= 0.1)
        {
            return err("policies.sync_interval_s must be at least 0.1 seconds".to_owned());
        }
        Ok(())
    }

    /// The limits of `tenant`: its overrides on top of `limits`.
    pub fn limits_for(&self, tenant: &str) -> Limits {
        let base = self.limits;
        match self.tenants.get(tenant) {
            None => base,
            Some(t) => Limits {
                requests_per_second: t.requests_per_second.unwrap_or(base.requests_per_second),
                burst: t.burst.unwrap_or(base.burst),
                max_concurrent_runs: t.max_concurrent_runs.unwrap_or(base.max_concurrent_runs),
            },
        }
    }
}

/// Lowercase hex SHA-256 of an API key, as the configuration stores it.
pub fn hash_api_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_urls_are_kept_and_bad_ones_name_the_field() {
        let c = Config::from_toml(
            "models_dir = 's3://lake/registry'\ntelemetry_dir = 's3://lake/t'\n\
             telemetry_spool_dir = 'spool'",
            Path::new("/etc/sandstorm"),
        )
        .unwrap();
        assert_eq!(c.models_dir, Path::new("s3://lake/registry"));
        assert_eq!(c.telemetry_dir.as_deref(), Some(Path::new("s3://lake/t")));
        assert_eq!(
            c.telemetry_spool_dir.as_deref(),
            Some(Path::new("/etc/sandstorm/spool"))
        );
        let e = Config::from_toml("models_dir = 'gs://b/m'", Path::new(".")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("models_dir") && e.contains("scheme `gs`"), "{e}");
        let e = Config::from_toml(
            "models_dir = 'm'\ntelemetry_dir = 's3://B/t'",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("telemetry_dir") && e.contains("bucket name"),
            "{e}"
        );
    }

    #[test]
    fn parses_resolves_paths_and_applies_overrides() {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
models_dir = "models"
telemetry_dir = "/var/telemetry"
[limits]
requests_per_second = 10
[tenants.acme]
max_concurrent_runs = 1
[[api_keys]]
sha256 = "{}"
tenant = "acme"
scopes = ["admin"]
"#,
            hash_api_key("k")
        );
        let c = Config::from_toml(&text, Path::new("/etc/sandstorm")).unwrap();
        assert_eq!(c.models_dir, Path::new("/etc/sandstorm/models"));
        assert_eq!(
            c.telemetry_dir.as_deref(),
            Some(Path::new("/var/telemetry"))
        );
        let acme = c.limits_for("acme");
        assert_eq!(acme.max_concurrent_runs, 1);
        assert_eq!(acme.requests_per_second, 10);
        assert_eq!(c.limits_for("other").max_concurrent_runs, 4);
        assert_eq!(c.api_keys[0].scopes, vec![Scope::Admin]);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = Config::from_toml("models_dir = 'm'\nport = 1", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("unknown field `port`"), "{e}");
        let e = Config::from_toml(
            "models_dir = 'm'\n[[api_keys]]\nsha256 = 'abc'\ntenant = 't'",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("api_keys[0].sha256"), "{e}");
        let e = Config::from_toml(
            "models_dir = 'm'\n[limits]\nrequests_per_second = 0",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("requests_per_second"), "{e}");
    }

    #[test]
    fn exploration_is_read_and_bad_values_name_the_field() {
        let c = Config::from_toml("models_dir = 'm'", Path::new(".")).unwrap();
        assert_eq!(c.exploration, sandstorm_router::Exploration::Off);
        let c = Config::from_toml(
            "models_dir = 'm'\nexploration = 'epsilon:0.05'",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            c.exploration,
            sandstorm_router::Exploration::EpsilonGreedy { epsilon: 0.05 }
        );
        let c = Config::from_toml("models_dir = 'm'\nexploration = 'thompson'", Path::new("."))
            .unwrap();
        assert!(matches!(
            c.exploration,
            sandstorm_router::Exploration::Thompson { .. }
        ));
        for bad in ["epsilon:2", "softmax"] {
            let e = Config::from_toml(
                &format!("models_dir = 'm'\nexploration = '{bad}'"),
                Path::new("."),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("exploration") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../examples/service.toml");
        let c = Config::from_toml(text, Path::new("/repo/examples")).unwrap();
        assert_eq!(c.api_keys.len(), 2);
        assert_eq!(c.api_keys[0].sha256, hash_api_key("example-key-change-me"));
        assert_eq!(c.limits_for("acme").max_concurrent_runs, 16);
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
