//! Parsing a run request from untrusted bytes: JSON syntax errors, truncated input, wrong
//! types, unknown fields and unknown enum values (e.g. a strategy) all become
//! [`ApiError::InvalidRequest`] naming the field (via `serde_path_to_error`), then the
//! request's own field rules run (`RunRequest::validate`). The tenant comes from the API key.

use sandstorm_features::RunRequest;
use serde_json::error::Category;

use crate::error::ApiError;

/// The tenant a request names when it names none.
const DEFAULT_TENANT: &str = "default";

/// Parses and validates a JSON run request for `tenant`. A request may omit `tenant` (it is
/// set to `tenant`) or repeat it; naming another tenant is refused.
pub(crate) fn parse_run_request(body: &[u8], tenant: &str) -> Result<RunRequest, ApiError> {
    // serde would also read a struct from a JSON array (fields by position): refuse that.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) if serde_json::from_slice::<serde_json::Value>(body).is_ok() => {
            return Err(ApiError::invalid(
                None,
                "the request body must be a JSON object (a run request)",
            ));
        }
        Some(_) => {}
    }
    let mut request: RunRequest = parse_json(body)?;
    if request.tenant == DEFAULT_TENANT {
        request.tenant = tenant.to_owned();
    } else if request.tenant != tenant {
        return Err(ApiError::Forbidden(format!(
            "the request names tenant `{}` but the api key belongs to tenant `{tenant}`",
            request.tenant
        )));
    }
    request.validate()?;
    Ok(request)
}

/// Deserializes `body` as JSON of type `T`, with errors that name the field.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty; send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let message = match inner.classify() {
            Category::Eof => format!(
                "the JSON ends early (truncated body?) at line {}, column {}",
                inner.line(),
                inner.column()
            ),
            Category::Syntax => format!("malformed JSON: {inner}"),
            Category::Data | Category::Io => strip_position(&inner.to_string()),
        };
        let field = field_of(&path, &message);
        ApiError::invalid(field.as_deref(), message)
    })?;
    de.end().map_err(|e| {
        ApiError::invalid(None, format!("unexpected data after the JSON value: {e}"))
    })?;
    Ok(value)
}

/// The dotted field path of an error: serde's path, extended by the name of an unknown field
/// (serde reports those at the enclosing object).
fn field_of(path: &str, message: &str) -> Option<String> {
    // `?` stands for a key that was not read completely (truncated input).
    let path = path.trim_end_matches('?').trim_end_matches('.');
    let parent = (path != "." && !path.is_empty()).then_some(path);
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (parent, unknown) {
        (Some(p), Some(u)) if !p.ends_with(u) => Some(format!("{p}.{u}")),
        (Some(p), _) => Some(p.to_owned()),
        (None, Some(u)) => Some(u.to_owned()),
        (None, None) => None,
    }
}

/// serde_json appends " at line L column C" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (Option<String>, String) {
        match parse_run_request(body.as_bytes(), "acme") {
            Err(ApiError::InvalidRequest { message, fields }) => {
                (fields.first().map(|f| f.field.clone()), message)
            }
            other => panic!("expected invalid request, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let (f, m) = err(r#"{"language": "python", "command": "x", "strategy": "fastest"}"#);
        assert_eq!(f.as_deref(), Some("strategy"), "{m}");
        assert!(m.contains("unknown variant `fastest`"), "{m}");
        let (f, m) = err(r#"{"language": "python", "command": "x", "timeout_s": "ten"}"#);
        assert_eq!(f.as_deref(), Some("timeout_s"), "{m}");
        let (f, m) = err(r#"{"language": "python", "command": "x", "colour": 1}"#);
        assert_eq!(f.as_deref(), Some("colour"), "{m}");
        let (f, m) = err(r#"{"language": "python", "command": "x", "resources": {"cpus": 1}}"#);
        assert_eq!(f.as_deref(), Some("resources.cpus"), "{m}");
        let (f, m) = err(r#"{"language": "python", "command": "x", "resources": {"cpu": -1}}"#);
        assert_eq!(f.as_deref(), Some("resources.cpu"), "{m}");
        let (f, m) = err(r#"{"language": "python", "comm"#);
        assert_eq!(f, None);
        assert!(m.contains("ends early"), "{m}");
        let (_, m) = err(r#"{"language": "python", "command": "x"} trailing"#);
        assert!(m.contains("after the JSON value"), "{m}");
        let (_, m) = err("  ");
        assert!(m.contains("empty"), "{m}");
    }

    #[test]
    fn tenant_comes_from_the_key() {
        let r = parse_run_request(br#"{"language": "sh", "command": "true"}"#, "acme").unwrap();
        assert_eq!(r.tenant, "acme");
        let e = parse_run_request(
            br#"{"language": "sh", "command": "true", "tenant": "evil"}"#,
            "acme",
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::Forbidden(_)), "{e:?}");
    }
}
