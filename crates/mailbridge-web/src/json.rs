//! [`ApiJson`]: a JSON body extractor whose errors name the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::body::{self, BodyLimits};
use crate::error::ApiError;

/// Like `axum::Json`, but a body that does not fit becomes a 422 naming the field
/// (`incoming.security: unknown variant ...`) instead of a bare string.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let limits = req.extensions().get::<BodyLimits>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                body::too_large(limits)
            } else if body::is_timeout(&e) {
                body::timed_out(limits)
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // PostgreSQL stores no NUL in text: a string holding one (JSON can carry it only as
    // `\u0000`) is refused here, named, rather than failing there.
    if bytes.windows(6).any(|w| w == b"\\u0000")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(field) = nul_at(&value, String::new())
    {
        return Err(ApiError::invalid(
            &field,
            format!("{field}: contains a NUL character (\\u0000); remove it"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if field == "." { String::new() } else { field };
                let message = strip_position(&inner.to_string());
                let message = if field.is_empty() {
                    message
                } else {
                    format!("{field}: {message}")
                };
                ApiError::invalid(&field, message)
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })
}

/// Where in `value` a string (or an object key) holds a NUL character, as a field path
/// (`contacts[3].name`); `.` for the body itself.
fn nul_at(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => {
            Some(if path.is_empty() { ".".into() } else { path })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(here)
            } else {
                nul_at(v, here)
            }
        }),
        _ => None,
    }
}

/// serde_json appends " at line 1 column 42", which means nothing to a person reading a form.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only deserialized
    struct Outer {
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: Option<u16>,
        security: Option<mailbridge_core::Security>,
    }

    #[test]
    fn data_errors_name_the_nested_field() {
        let e = parse::<Outer>(br#"{"inner": {"security": "ssl"}}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = format!("{e:?}");
        assert!(body.contains("inner.security"), "{body}");
        assert!(body.contains("starttls"), "{body}");
        assert!(!body.contains("line 1"), "{body}");
    }

    #[test]
    fn a_nul_character_anywhere_is_refused_and_named() {
        let e = parse::<serde_json::Value>(
            br#"{"contacts": [{"email": "a@b.c"}, {"name": "x\u0000y"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field(), Some("contacts[1].name"), "{}", e.message());
        // An escaped backslash before "u0000" is no NUL.
        assert!(parse::<serde_json::Value>(br#"{"name": "x\\u0000"}"#).is_ok());
    }

    #[test]
    fn syntax_errors_are_400() {
        let e = parse::<Outer>(b"{\"inner\": ").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
