//! [`ModalConfig`]: the Modal adapter's settings, read like the `modal` SDK reads its own:
//! `MODAL_<SETTING>` from the environment, else the active profile of the SDK's config file
//! (`~/.modal.toml`), else the default.

use std::path::PathBuf;
use std::time::Duration;

use crate::env_var;

/// Configuration of the Modal adapter. [`ModalConfig::from_env`] reads it like the SDK does:
/// each setting from `MODAL_<SETTING>`, else from the active profile of the SDK's config file.
#[derive(Clone)]
pub struct ModalConfig {
    /// `MODAL_TOKEN_ID`, else `token_id` of the active profile; required.
    pub token_id: Option<String>,
    /// `MODAL_TOKEN_SECRET`, else `token_secret` of the active profile; required.
    pub token_secret: Option<String>,
    /// `MODAL_SERVER_URL`, else the profile's `server_url`, default `https://api.modal.com`
    /// (`http://` talks plaintext HTTP/2, for test doubles).
    pub server_url: String,
    /// `MODAL_ENVIRONMENT`, else the profile's `environment`; empty is the workspace's default
    /// environment.
    pub environment: String,
    /// `SANDSTORM_MODAL_APP`, default `sandstorm`: the app every sandbox belongs to (created
    /// if missing).
    pub app_name: String,
    /// `MODAL_IMAGE_BUILDER_VERSION`, else the profile's `image_builder_version`, default
    /// `2024.10`.
    pub image_builder_version: String,
    /// Registry image of Python jobs (`SANDSTORM_MODAL_IMAGE_PYTHON`), default
    /// `python:3.12-slim`.
    pub python_image: String,
    /// Registry image of Node jobs (`SANDSTORM_MODAL_IMAGE_NODE`), default `node:22-slim`.
    pub node_image: String,
    /// Registry image of shell jobs (`SANDSTORM_MODAL_IMAGE_SHELL`), default
    /// `debian:bookworm-slim`.
    pub shell_image: String,
    /// Job directory inside the sandbox, default `/tmp/sandstorm-job`.
    pub workdir: String,
    /// Added to the job's timeout for the sandbox's own lifetime (Modal ends it then, a
    /// backstop if the terminate fails), default 60 s.
    pub sandbox_timeout_margin: Duration,
    /// How long an image build may take, default 600 s.
    pub image_build_timeout: Duration,
    /// How long a sandbox may wait to be scheduled, default 300 s.
    pub start_timeout: Duration,
    /// Interval between scheduling polls, default 500 ms.
    pub poll_interval: Duration,
    /// How long output may still arrive after the sandbox exited, default 10 s.
    pub output_drain_timeout: Duration,
    /// Connect timeout, default 10 s.
    pub connect_timeout: Duration,
    /// Timeout of each call other than the job's execution and the long polls, default 60 s.
    pub request_timeout: Duration,
    /// Why the SDK's config file could not be used (unreadable, not TOML, no such profile),
    /// if so; part of the unavailability reason when no token is configured.
    pub profile_problem: Option<String>,
}

impl std::fmt::Debug for ModalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModalConfig")
            .field("token_id", &crate::redacted(&self.token_id))
            .field("token_secret", &crate::redacted(&self.token_secret))
            .field("server_url", &self.server_url)
            .field("environment", &self.environment)
            .field("app_name", &self.app_name)
            .field("image_builder_version", &self.image_builder_version)
            .field("python_image", &self.python_image)
            .field("node_image", &self.node_image)
            .field("shell_image", &self.shell_image)
            .field("workdir", &self.workdir)
            .field("profile_problem", &self.profile_problem)
            .finish_non_exhaustive()
    }
}

impl Default for ModalConfig {
    fn default() -> Self {
        Self {
            token_id: None,
            token_secret: None,
            server_url: "https://api.modal.com".into(),
            environment: String::new(),
            app_name: "sandstorm".into(),
            image_builder_version: "2024.10".into(),
            python_image: "python:3.12-slim".into(),
            node_image: "node:22-slim".into(),
            shell_image: "debian:bookworm-slim".into(),
            workdir: "/tmp/sandstorm-job".into(),
            sandbox_timeout_margin: Duration::from_secs(60),
            image_build_timeout: Duration::from_secs(600),
            start_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            output_drain_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            profile_problem: None,
        }
    }
}

impl ModalConfig {
    /// Defaults overridden by the environment (`MODAL_TOKEN_ID`, `MODAL_TOKEN_SECRET`,
    /// `MODAL_SERVER_URL`, `MODAL_ENVIRONMENT`, `MODAL_IMAGE_BUILDER_VERSION`,
    /// `SANDSTORM_MODAL_APP`, `SANDSTORM_MODAL_IMAGE_PYTHON` / `_NODE` / `_SHELL`) and, for the
    /// `MODAL_*` settings not in the environment, by the active profile of the SDK's config
    /// file (`MODAL_CONFIG_PATH`, default `~/.modal.toml`; profile `MODAL_PROFILE`, else the
    /// one with `active = true`, else `default`).
    pub fn from_env() -> Self {
        Self::from_lookup(&env_var)
    }

    pub(super) fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let d = Self::default();
        let (profile, profile_problem) = match read_profile(env) {
            Ok(profile) => (profile, None),
            Err(problem) => (None, Some(problem)),
        };
        let setting = |key: &str| {
            env(&format!("MODAL_{}", key.to_ascii_uppercase())).or_else(|| {
                profile
                    .as_ref()?
                    .get(key)?
                    .as_str()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
        };
        Self {
            token_id: setting("token_id"),
            token_secret: setting("token_secret"),
            server_url: setting("server_url").unwrap_or(d.server_url.clone()),
            environment: setting("environment").unwrap_or_default(),
            image_builder_version: setting("image_builder_version")
                .unwrap_or(d.image_builder_version.clone()),
            app_name: env("SANDSTORM_MODAL_APP").unwrap_or(d.app_name.clone()),
            python_image: env("SANDSTORM_MODAL_IMAGE_PYTHON").unwrap_or(d.python_image.clone()),
            node_image: env("SANDSTORM_MODAL_IMAGE_NODE").unwrap_or(d.node_image.clone()),
            shell_image: env("SANDSTORM_MODAL_IMAGE_SHELL").unwrap_or(d.shell_image.clone()),
            profile_problem,
            ..d
        }
    }
}

/// The active profile of the SDK's config file, `None` when there is no file (or it has no
/// such profile and none was asked for). Errors never quote the file: it holds secrets.
fn read_profile(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<toml::Table>, String> {
    let Some(path) = env("MODAL_CONFIG_PATH")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".modal.toml")))
    else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not read {}: {}", path.display(), e.kind())),
    };
    let mut profiles: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        format!("{} is not valid TOML (line {line})", path.display())
    })?;
    let asked = env("MODAL_PROFILE");
    let name = asked.clone().unwrap_or_else(|| {
        profiles
            .iter()
            .find(|(_, p)| p.get("active").and_then(toml::Value::as_bool) == Some(true))
            .map_or_else(|| "default".to_owned(), |(name, _)| name.clone())
    });
    match profiles.remove(&name) {
        Some(toml::Value::Table(profile)) => Ok(Some(profile)),
        _ if asked.is_some() => Err(format!(
            "{} has no profile `{name}` (MODAL_PROFILE)",
            path.display()
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
pub(super) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_the_profile_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("modal.toml");
        std::fs::write(
            &path,
            "[default]\ntoken_id = \"ak-file\"\ntoken_secret = \"as-file\"\n\n\
             [work]\nactive = true\ntoken_id = \"ak-work\"\ntoken_secret = \"as-work\"\n\
             environment = \"dev\"\nserver_url = \"http://127.0.0.1:1\"\n",
        )
        .expect("write");
        let path = path.display().to_string();
        let config = ModalConfig::from_lookup(&lookup(&[("MODAL_CONFIG_PATH", &path)]));
        assert_eq!(
            config.token_id.as_deref(),
            Some("ak-work"),
            "active profile"
        );
        assert_eq!(config.token_secret.as_deref(), Some("as-work"));
        assert_eq!(config.environment, "dev");
        assert_eq!(config.server_url, "http://127.0.0.1:1");
        assert!(config.profile_problem.is_none());

        let config = ModalConfig::from_lookup(&lookup(&[
            ("MODAL_CONFIG_PATH", &path),
            ("MODAL_PROFILE", "default"),
            ("MODAL_TOKEN_SECRET", "as-env"),
            ("SANDSTORM_MODAL_APP", "jobs"),
        ]));
        assert_eq!(config.token_id.as_deref(), Some("ak-file"));
        assert_eq!(config.token_secret.as_deref(), Some("as-env"));
        assert_eq!(config.server_url, "https://api.modal.com");
        assert_eq!(config.app_name, "jobs");

        let config = ModalConfig::from_lookup(&lookup(&[
            ("MODAL_CONFIG_PATH", &path),
            ("MODAL_PROFILE", "missing"),
        ]));
        assert!(config.token_id.is_none());
        assert!(
            config
                .profile_problem
                .as_deref()
                .is_some_and(|p| p.contains("no profile `missing`")),
            "{config:?}"
        );
    }
}
