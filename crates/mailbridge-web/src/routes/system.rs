//! Probes (`/healthz`, `/readyz`), feature availability, the audit log and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/features", get(features))
        .route("/audit-log", get(audit_log))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics: messages synced, sync errors by kind, sends by outcome, connections
/// open, and this node's sync lag.
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(state.store.now()),
    )
}

/// The process can serve: its database answers.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: database");
            let reason = if e.is_database_outage() {
                "the database is not answering"
            } else {
                "database error"
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable", "reason": reason})),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "unavailable", "reason": "database did not answer within 2 s"}),
            ),
        ),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Features {
    /// Whether "Sign in to Gmail" is available on this installation.
    gmail_oauth: bool,
    /// Whether "Sign in with Microsoft" (Microsoft 365, Outlook.com) is available here.
    microsoft_oauth: bool,
    /// The redirect URI to register for the OAuth client (Google Cloud console ›
    /// Credentials › Authorized redirect URIs).
    oauth_redirect_uri: String,
}

/// Which optional features this installation offers.
#[utoipa::path(get, path = "/features", tag = "system",
    responses((status = 200, body = Features)))]
async fn features(State(state): State<AppState>) -> Json<Features> {
    Json(Features {
        gmail_oauth: state.config.gmail_oauth,
        microsoft_oauth: state.config.microsoft_oauth,
        oauth_redirect_uri: state.config.oauth_redirect_uri(),
    })
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Return entries older than this id (the previous page's last id).
    before: Option<i64>,
    /// At most this many entries (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Admin actions, newest first.
#[utoipa::path(get, path = "/audit-log", tag = "system", params(AuditQuery),
    security(("bearer" = [])),
    responses((status = 200, body = [mailbridge_store::AuditEntry]), (status = 403, body = crate::error::ErrorBody)))]
async fn audit_log(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<mailbridge_store::AuditEntry>>, ApiError> {
    caller.require_admin("read the audit log")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 500"));
    }
    Ok(Json(state.store.audit_log(q.before, limit).await?))
}
