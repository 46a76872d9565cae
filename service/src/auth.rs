//! API keys: the configuration stores the SHA-256 of each key with its tenant and scopes; a
//! request sends the key as `Authorization: Bearer <key>` (or `X-Api-Key: <key>`), and the
//! [`Principal`] extractor hashes it, looks the hash up, and charges the tenant's rate limit.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::config::{ApiKey, Scope};
use crate::error::ApiError;

/// Who is calling: the tenant of the key and what else it may do.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub(crate) tenant: String,
    pub(crate) admin: bool,
    /// The key's label from the configuration, for logs.
    pub(crate) key_name: Option<String>,
}

impl Principal {
    /// Refuses unless the key has the admin scope.
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{what} needs an api key with the `admin` scope"
            )))
        }
    }
}

/// The accepted keys, by SHA-256.
#[derive(Debug, Default)]
pub(crate) struct KeyStore {
    keys: HashMap<[u8; 32], Principal>,
}

impl KeyStore {
    pub(crate) fn new(keys: &[ApiKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                // `Config::validate` checked the hex; a bad entry is skipped, never accepted.
                let hash: [u8; 32] = hex::decode(&k.sha256).ok()?.try_into().ok()?;
                Some((
                    hash,
                    Principal {
                        tenant: k.tenant.clone(),
                        admin: k.scopes.contains(&Scope::Admin),
                        key_name: k.name.clone(),
                    },
                ))
            })
            .collect();
        Self { keys }
    }

    /// The principal of the key in `headers`.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let key = presented_key(headers)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys
            .get(&hash)
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("invalid api key".to_owned()))
    }
}

fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header".to_owned()))?;
        return match text.split_once(' ') {
            Some((scheme, key))
                if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() =>
            {
                Ok(key.trim())
            }
            _ => Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <api key>`".to_owned(),
            )),
        };
    }
    if let Some(value) = headers.get("x-api-key") {
        return value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("malformed X-Api-Key header".to_owned()));
    }
    Err(ApiError::Unauthorized(
        "missing api key: send `Authorization: Bearer <api key>`".to_owned(),
    ))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = state.keys.authenticate(&parts.headers)?;
        tracing::Span::current().record("tenant", principal.tenant.as_str());
        state.limits.check_rate(&principal.tenant)?;
        Ok(principal)
    }
}
