//! [`Caller`]: the user behind a request's bearer token, and what they may touch.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use mailbridge_core::{Role, UserId};
use mailbridge_store::{Actor, UserRecord};

use crate::AppState;
use crate::error::ApiError;

/// An authenticated request's user.
pub struct Caller(pub UserRecord);

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor::user(self.0.id, self.0.email.as_str())
    }

    pub fn is_admin(&self) -> bool {
        self.0.role == Role::Admin
    }

    /// Refuses a non-admin; `what` completes "only admins can …".
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only admins can {what}; ask an admin of this Mailbridge"
            )))
        }
    }

    /// Admins reach every mailbox; a user only their own.
    pub fn require_owner_or_admin(&self, owner: UserId) -> Result<(), ApiError> {
        if self.is_admin() || self.0.id == owner {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this mailbox belongs to another user; you can see only your own mailboxes",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "no API token: send 'Authorization: Bearer <token>' (an admin issues tokens with 'mailbridge users create')",
                )
            })?
            .to_str()
            .unwrap_or_default();
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'")
            })?;
        let user = state.store.user_by_token(token).await?.ok_or_else(|| {
            ApiError::unauthenticated(
                "the API token is not valid (mistyped, or reset by an admin); ask an admin for a new one",
            )
        })?;
        Ok(Caller(user))
    }
}
