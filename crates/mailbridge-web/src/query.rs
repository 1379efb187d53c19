//! [`ApiQuery`]: a query-string extractor whose errors name the parameter at fault.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::extract::Query`, but a parameter that does not parse becomes a 422 `invalid`
/// naming it (`limit: invalid digit found in string`) in the API's JSON shape, instead of
/// axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or_default()).map(ApiQuery)
    }
}

/// Deserializes a query string (without the `?`), naming the parameter at fault.
pub(crate) fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    // PostgreSQL stores no NUL in text: refused here, named, rather than failing there.
    if let Some((name, _)) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(ApiError::invalid(
            &name,
            format!("query parameter {name}: contains a NUL character (%00); remove it"),
        ));
    }
    let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // A repeated or missing parameter is reported at the top level; serde names it in
        // the message only.
        let field = if field == "." {
            named_in(&inner.to_string()).unwrap_or_default().to_owned()
        } else {
            field
        };
        let message = if field.is_empty() {
            format!("the query string does not fit: {inner}")
        } else {
            format!("query parameter {field}: {inner}")
        };
        ApiError::invalid(&field, message)
    })
}

/// The parameter in serde's "duplicate field `x`" and "missing field `x`" messages.
fn named_in(message: &str) -> Option<&str> {
    ["duplicate field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // only deserialized
    struct List {
        limit: Option<i64>,
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[serde(default)]
        all: bool,
    }

    #[test]
    fn a_bad_parameter_is_named() {
        let e = parse::<List>("limit=abc").unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field(), Some("limit"));
        assert!(e.message().starts_with("query parameter limit: "), "{e:?}");
        let e = parse::<List>("limit=5&since=notadate").unwrap_err();
        assert_eq!(e.field(), Some("since"));
        let e = parse::<List>("all=maybe").unwrap_err();
        assert_eq!(e.field(), Some("all"));
    }

    #[test]
    fn good_and_empty_queries_parse() {
        let q = parse::<List>("limit=5&since=2024-01-02T03:04:05Z&all=true&other=x").unwrap();
        assert_eq!(q.limit, Some(5));
        assert!(q.since.is_some() && q.all);
        let q = parse::<List>("").unwrap();
        assert!(q.limit.is_none() && q.since.is_none() && !q.all);
    }

    #[test]
    fn a_nul_character_is_refused_and_named() {
        let e = parse::<List>("limit=5&after=ab%00c").unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field(), Some("after"), "{}", e.message());
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let e = parse::<List>("limit=1&limit=2").unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field(), Some("limit"));
        assert!(e.message().contains("duplicate"), "{e:?}");
    }
}
