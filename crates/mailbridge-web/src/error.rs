//! [`ApiError`]: every failure the API reports, as `{"error": {"code", "message", "field"}}`
//! with the right status. Database and internal errors are logged and shown as a plain 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mailbridge_core::ValidationError;
use mailbridge_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds to wait before trying again (sent as `Retry-After`).
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
    /// `unsupported_media_type`, `too_many_requests`, `internal`.
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
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message);
        e.retry_after = Some(retry_after);
        e
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => Self::not_found(kind, &id),
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::ProfileFull { message } => {
                Self::new(StatusCode::CONFLICT, "profile_full", message).with_field("profile_id")
            }
            StoreError::InvalidReference { field, message } => Self::invalid(field, message),
            StoreError::IdempotencyKeyReused { message } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
                    .with_field("Idempotency-Key")
            }
            StoreError::RateLimited {
                message,
                retry_after_secs,
            } => Self::too_many_requests(message, retry_after_secs),
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
        let retry_after = self.retry_after;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
