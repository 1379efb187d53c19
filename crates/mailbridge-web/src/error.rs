//! [`ApiError`]: every failure the API reports, as `{"error": {"code", "message", "field"}}`
//! with the right status. Database and internal errors are logged and shown as a plain 500.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mailbridge_core::ValidationError;
use mailbridge_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds to send as `Retry-After` (with 429, 503 and 507).
    retry_after: Option<u64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthenticated`, `forbidden`, `not_found`, `conflict`,
    /// `profile_full`, `idempotency_key_reused`, `invalid`, `invalid_json`,
    /// `unsupported_media_type`, `bad_request`, `method_not_allowed`, `payload_too_large`,
    /// `gone`, `request_timeout`, `too_many_requests`, `unavailable` (503: the database is not
    /// answering), `insufficient_storage` (507: its disk is full), `internal`; for
    /// `PATCH /emails/{id}`: `not_on_server`, `needs_sign_in`, `mail_server` (502).
    code: &'static str,
    /// What went wrong and what to do, in words.
    message: String,
    /// The input field at fault, as a dotted path (`incoming.port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Asks the client to try again after this many seconds (the `Retry-After` header).
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into()).filter(|f: &String| !f.is_empty());
        self
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} {id} does not exist"),
        )
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).with_field(field)
    }

    /// 429: a limit was reached; `retry_after` seconds may be enough.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            .with_retry_after(retry_after)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong and what to do, in words (for the console's pages).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The input field at fault, as a dotted path.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(&e.field, e.message)
    }
}

/// `Retry-After` while the database is down or full.
const DATABASE_RETRY_AFTER_SECS: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => Self::not_found(kind, &id),
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::ProfileFull { message } => {
                Self::new(StatusCode::CONFLICT, "profile_full", message).with_field("profile_id")
            }
            StoreError::InvalidReference { field, message } => Self::invalid(field, message),
            StoreError::Gone { message } => Self::new(StatusCode::GONE, "gone", message),
            StoreError::IdempotencyKeyReused { message } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
                    .with_field("Idempotency-Key")
            }
            StoreError::RateLimited {
                message,
                retry_after_secs,
            } => Self::too_many_requests(message, retry_after_secs),
            // The database's state, not the request's: the client may try again, and is
            // told when; the details are for the operator's log.
            StoreError::Unavailable { .. } => {
                tracing::warn!(error = %e, "request failed: the database is not answering");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is not answering; try again shortly",
                )
                .with_retry_after(DATABASE_RETRY_AFTER_SECS)
            }
            StoreError::DiskFull { .. } => {
                tracing::error!(error = %e, "request failed: the database's disk is full");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the server's storage is full, so nothing was saved; try again after its administrator frees space",
                )
                .with_retry_after(DATABASE_RETRY_AFTER_SECS)
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The API's answers are always the JSON error shape: an error response that is not JSON —
/// one of axum's own rejections (a path segment that is not UTF-8, a method the route lacks)
/// — is rewritten into it, keeping its status and headers (such as `Allow`).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Inside `nest("/api/v1", …)` the URI has lost its prefix; say the path the client sent.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.path().to_owned());
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty());
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .replace(',', ", ");
            (
                "method_not_allowed",
                format!("{method} is not allowed on {path}; it accepts {allowed}"),
            )
        }
        StatusCode::NOT_FOUND => (
            "not_found",
            "no such API endpoint; the OpenAPI document at /api/v1/openapi.json lists them"
                .to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than this server accepts; send less".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json".to_owned(),
        ),
        s if s.is_server_error() => {
            tracing::error!(%status, %method, %path, detail = ?text, "request failed");
            (
                "internal",
                "internal error; the server log has the details".to_owned(),
            )
        }
        _ => (
            "bad_request",
            format!(
                "the request is malformed: {}",
                text.as_deref().unwrap_or("no detail")
            ),
        ),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut rewritten = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        rewritten.headers_mut().insert(name.clone(), value.clone());
    }
    rewritten
}
