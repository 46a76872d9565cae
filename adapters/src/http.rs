//! The HTTP plumbing shared by the REST adapters: one `reqwest` client per provider (rustls
//! with the ring provider and the Mozilla roots of `webpki-roots`, so nothing depends on the
//! host's OpenSSL or certificate store), sending with error classification, provider error
//! bodies turned into messages, and redaction of credentials from anything that could reach a
//! log or an error.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{AdapterError, Phase};

/// Longest provider error message kept in an [`AdapterError`].
const MAX_MESSAGE_CHARS: usize = 500;

/// What every request needs to report errors: the provider's name and the secrets to redact.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) provider: &'static str,
    pub(crate) client: reqwest::Client,
    /// Bound on every request outside [`Phase::Exec`] (whose length is the job's and is
    /// bounded by its wall-clock limit instead).
    request_timeout: Duration,
    secrets: Arc<Vec<String>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("provider", &self.provider)
            .field("secrets", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A `reqwest` client builder with Sandstorm's TLS set-up: rustls with the ring provider and
/// the Mozilla roots of `webpki-roots` (nothing depends on the host's OpenSSL or certificate
/// store). For the provider adapters and for the CLI's requests to a Sandstorm service.
pub fn client_builder() -> Result<reqwest::ClientBuilder, AdapterError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AdapterError::Internal(format!("tls configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

impl Api {
    /// A client for `provider`. Requests outside [`Phase::Exec`] time out after
    /// `request_timeout`; `secrets` are redacted from every message.
    pub(crate) fn new(
        provider: &'static str,
        connect_timeout: Duration,
        request_timeout: Duration,
        secrets: Vec<String>,
    ) -> Result<Self, AdapterError> {
        let client = client_builder()?
            .connect_timeout(connect_timeout)
            .user_agent(concat!("sandstorm-adapters/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Internal(format!("http client: {e}")))?;
        Ok(Self {
            provider,
            client,
            request_timeout,
            secrets: Arc::new(secrets.into_iter().filter(|s| !s.is_empty()).collect()),
        })
    }

    /// `text` with every secret of this provider replaced.
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Sends `request`; a transport failure or an error status becomes an [`AdapterError`]
    /// of `phase` carrying the provider's message.
    pub(crate) async fn send(
        &self,
        phase: Phase,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AdapterError> {
        let request = if phase == Phase::Exec {
            request
        } else {
            request.timeout(self.request_timeout)
        };
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(phase, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = self.redact(&error_message(&body, status.canonical_reason()));
        tracing::debug!(provider = self.provider, %phase, status = status.as_u16(), message, "provider error");
        Err(AdapterError::Api {
            provider: self.provider.into(),
            phase,
            status: status.as_u16(),
            message,
        })
    }

    /// Sends a delete `request`; a 404 (already gone, e.g. after its own timeout: nothing left
    /// to pay for) counts as deleted.
    pub(crate) async fn delete(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(), AdapterError> {
        match self.send(Phase::Delete, request).await {
            Ok(_) | Err(AdapterError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `request` and decodes its JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        phase: Phase,
        request: reqwest::RequestBuilder,
    ) -> Result<T, AdapterError> {
        let response = self.send(phase, request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(phase, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| AdapterError::Protocol {
            provider: self.provider.into(),
            phase,
            message: self.redact(&format!("{e} in {}", snippet(&bytes))),
        })
    }

    /// A transport failure (no HTTP answer, or a broken body) as an error.
    pub(crate) fn transport_error(&self, phase: Phase, e: &reqwest::Error) -> AdapterError {
        // reqwest's messages name the URL, never headers; redact anyway in case a base URL
        // carries a token.
        let message = self.redact(&error_chain(e));
        if e.is_timeout() && phase != Phase::Exec {
            AdapterError::Timeout {
                provider: self.provider.into(),
                phase,
                seconds: self.request_timeout.as_secs_f64(),
            }
        } else {
            AdapterError::Connect {
                provider: self.provider.into(),
                phase,
                message,
            }
        }
    }

    pub(crate) fn protocol(&self, phase: Phase, message: impl Into<String>) -> AdapterError {
        AdapterError::Protocol {
            provider: self.provider.into(),
            phase,
            message: self.redact(&message.into()),
        }
    }
}

/// The error and its sources, joined (reqwest hides the useful part, e.g. "connection
/// refused", in the source chain).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `text` with every non-empty secret replaced by `[redacted]`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
}

/// The provider's explanation in an error body: the usual JSON fields of the providers
/// (`message` — a string or a list —, `detail`, `error`, `error.message`), else the start of
/// the body, else the status's reason phrase.
pub(crate) fn error_message(body: &str, reason: Option<&str>) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| json_message(&v));
    let message = from_json.unwrap_or_else(|| body.trim().to_owned());
    let message = if message.is_empty() {
        reason.unwrap_or("no message").to_owned()
    } else {
        message
    };
    truncate_chars(&message, MAX_MESSAGE_CHARS)
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Value::Object(_) => v.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    ["message", "detail", "error"]
        .iter()
        .find_map(|key| v.get(key).and_then(text))
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn snippet(bytes: &[u8]) -> String {
    truncate_chars(&String::from_utf8_lossy(bytes), 200)
}

/// Joins a base URL and a path without doubling or dropping the slash.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_providers_json_fields() {
        assert_eq!(
            error_message(r#"{"code":429,"message":"rate limit"}"#, None),
            "rate limit"
        );
        assert_eq!(
            error_message(
                r#"{"statusCode":400,"message":["cpu must be a number","x"]}"#,
                None
            ),
            "cpu must be a number; x"
        );
        assert_eq!(
            error_message(r#"{"detail":"not found"}"#, None),
            "not found"
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"boom"}}"#, None),
            "boom"
        );
        assert_eq!(error_message("plain text\n", None), "plain text");
        assert_eq!(error_message("", Some("Bad Gateway")), "Bad Gateway");
        assert_eq!(error_message(&"x".repeat(600), None).chars().count(), 501);
    }

    #[test]
    fn secrets_are_redacted() {
        let secrets = vec!["e2b_secret".to_owned(), String::new()];
        assert_eq!(
            redact("key e2b_secret is invalid", &secrets),
            "key [redacted] is invalid"
        );
    }

    #[test]
    fn join_handles_slashes() {
        assert_eq!(join("http://a/", "/b"), "http://a/b");
        assert_eq!(join("http://a/api", "sandbox"), "http://a/api/sandbox");
    }
}
