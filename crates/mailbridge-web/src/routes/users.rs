//! `/users`: people who use Mailbridge (admin only). Creating a user or resetting a token
//! returns the API token once; only its hash is kept.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::{EmailAddress, Role, UserId};
use mailbridge_store::{ApiToken, UserRecord};

use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", post(create).get(list))
        .route("/users/{id}", get(show).patch(update).delete(remove))
        .route("/users/{id}/token", post(reset_token))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UserView {
    id: UserId,
    email: String,
    role: Role,
    created_at: DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email.to_string(),
            role: u.role,
            created_at: u.created_at,
        }
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Required (read as optional only to say so in words when it is missing).
    #[schema(example = "ann@example.com", value_type = String, required = true, format = Email)]
    email: Option<String>,
    /// Defaults to `user`.
    role: Option<Role>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    role: Option<Role>,
}

/// A user and their API token, shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UserWithToken {
    user: UserView,
    /// Shown only in this response; store it now.
    token: String,
}

/// Creates a user and returns their API token once.
#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser,
    security(("bearer" = [])),
    responses((status = 201, body = UserWithToken), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserWithToken>), ApiError> {
    let (user, token) = create_user(&state, &caller, input.email, input.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserWithToken {
            user: user.into(),
            token: token.reveal().to_owned(),
        }),
    ))
}

#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [UserView]), (status = 403, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.require_admin("list users")?;
    let users = state.store.list_users().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin("see other users")?;
    let user = state.store.get_user(path_id(&id, "user")?).await?;
    Ok(Json(user.into()))
}

/// Changes a user's role. The last admin cannot be demoted.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", request_body = UserPatch,
    security(("bearer" = [])), params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin("change users")?;
    let id = path_id(&id, "user")?;
    let user = match patch.role {
        Some(role) => state.store.set_user_role(&caller.actor(), id, role).await?,
        None => state.store.get_user(id).await?,
    };
    Ok(Json(user.into()))
}

/// Deletes a user who owns no mailbox. The last admin cannot be deleted.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("delete users")?;
    state
        .store
        .delete_user(&caller.actor(), path_id(&id, "user")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new API token for a user; the old one stops working at once.
#[utoipa::path(post, path = "/users/{id}/token", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserWithToken), (status = 404, body = ErrorBody)))]
async fn reset_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UserWithToken>, ApiError> {
    let (user, token) = reset_token_of(&state, &caller, path_id(&id, "user")?).await?;
    Ok(Json(UserWithToken {
        user: user.into(),
        token: token.reveal().to_owned(),
    }))
}

/// Creates a user (admin) and returns their API token: the one path for the API and the console.
pub(crate) async fn create_user(
    state: &AppState,
    caller: &Caller,
    email: Option<String>,
    role: Option<Role>,
) -> Result<(UserRecord, ApiToken), ApiError> {
    caller.require_admin("create users")?;
    let email = email
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("email", "email is required, e.g. \"ann@example.com\""))?;
    let email = EmailAddress::parse(&email, "email")?;
    Ok(state
        .store
        .create_user(&caller.actor(), &email, role.unwrap_or(Role::User))
        .await?)
}

/// Issues a user a new API token (admin). Their console sessions end too: whoever had the old
/// token must not stay signed in with it.
pub(crate) async fn reset_token_of(
    state: &AppState,
    caller: &Caller,
    id: UserId,
) -> Result<(UserRecord, ApiToken), ApiError> {
    caller.require_admin("reset API tokens")?;
    let token = state.store.reset_user_token(&caller.actor(), id).await?;
    let user = state.store.get_user(id).await?;
    Ok((user, token))
}
