//! The API's resources, one module each.

pub mod contacts;
pub mod emails;
pub mod events;
pub mod mailboxes;
pub mod oauth;
pub mod profiles;
pub mod system;
pub mod users;
pub mod webhooks;

use std::str::FromStr;

use axum::Router;

use crate::AppState;
use crate::error::ApiError;

pub fn api() -> Router<AppState> {
    Router::new()
        .merge(users::routes())
        .merge(profiles::routes())
        .merge(mailboxes::routes())
        .merge(emails::routes())
        .merge(events::routes())
        .merge(contacts::routes())
        .merge(webhooks::routes())
        .merge(oauth::api_routes())
        .merge(system::api_routes())
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such API endpoint; the OpenAPI document at /api/v1/openapi.json lists them",
            )
        })
        .layer(axum::middleware::from_fn(crate::error::json_errors))
}

/// A path id that does not parse names nothing that exists: 404, like an unknown id.
fn path_id<T: FromStr>(raw: &str, kind: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(kind, raw))
}
