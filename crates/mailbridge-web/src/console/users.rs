//! Users (admins): add a user (their token is shown once), set a role, reset a token.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Router};
use mailbridge_core::Role;
use mailbridge_store::{ApiToken, UserRecord};

use super::form::{Choice, Field, FieldErrors, FormValues};
use super::{Layout, PageError, PageResult, Viewer, path_id, render, see_other};
use crate::AppState;
use crate::routes::users::{create_user, reset_token_of};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/users", get(list).post(create))
        .route("/console/users/{id}/role", post(set_role))
        .route("/console/users/{id}/token", post(reset_token))
}

struct UserRow {
    id: String,
    email: String,
    admin: bool,
    is_me: bool,
}

/// A token just issued, shown this once.
struct Issued {
    email: String,
    token: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    title: &'static str,
    layout: Option<Layout>,
    csrf: String,
    users: Vec<UserRow>,
    fields: Vec<Field>,
    has_errors: bool,
    general_errors: Vec<String>,
    issued: Option<Issued>,
}

const ADMIN_ONLY: &str = "manage users";

async fn page(
    viewer: &Viewer,
    state: &AppState,
    values: &FormValues,
    mut errors: FieldErrors,
    issued: Option<(UserRecord, ApiToken)>,
    notice: Option<String>,
) -> PageResult {
    let fields = vec![
        Field::text("email", "Email address")
            .kind("email")
            .required()
            .from(values, &mut errors),
        Field::select(
            "role",
            "Role",
            vec![Choice::new("user", "User"), Choice::new("admin", "Admin")],
        )
        .from(values, &mut errors),
    ];
    let general_errors = errors.rest();
    let has_errors = !general_errors.is_empty() || fields.iter().any(|f| f.error.is_some());
    let users = state
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| UserRow {
            id: u.id.to_string(),
            admin: u.role == Role::Admin,
            is_me: u.id == viewer.caller.0.id,
            email: u.email.to_string(),
        })
        .collect();
    let mut response = render(&UsersPage {
        title: "Users",
        layout: Some(viewer.layout(state, "users").await.with_notice(notice)),
        csrf: viewer.csrf.clone(),
        users,
        fields,
        has_errors,
        general_errors,
        issued: issued.map(|(u, t)| Issued {
            email: u.email.to_string(),
            token: t.reveal().to_owned(),
        }),
    });
    if has_errors {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

async fn list(viewer: Viewer, State(state): State<AppState>) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let mut values = FormValues::default();
    values.set("role", "user");
    page(&viewer, &state, &values, FieldErrors::default(), None, None).await
}

/// The token is in the answer to this POST and nowhere else: it must not travel in a URL.
async fn create(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let role = values.word::<Role>("role", &mut errors);
    if errors.is_empty() {
        match create_user(&state, &viewer.caller, values.opt("email"), role).await {
            Ok((user, token)) => {
                let mut fresh = FormValues::default();
                fresh.set("role", "user");
                let notice = Some(format!("{} was added.", user.email));
                return page(&viewer, &state, &fresh, errors, Some((user, token)), notice).await;
            }
            Err(e) => errors.api(&e),
        }
    }
    page(&viewer, &state, &values, errors, None, None).await
}

#[derive(serde::Deserialize)]
pub struct RoleForm {
    role: String,
}

async fn set_role(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<RoleForm>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let role: Role = form.role.parse().map_err(|e| {
        PageError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("Role: {e}.")).with_viewer(&viewer)
    })?;
    let id = path_id(&id, "user")?;
    state
        .store
        .set_user_role(&viewer.caller.actor(), id, role)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other("/console/users"))
}

async fn reset_token(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let issued = reset_token_of(&state, &viewer.caller, path_id(&id, "user")?)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    let notice = Some(format!(
        "{} has a new token; the old one no longer works.",
        issued.0.email
    ));
    let mut values = FormValues::default();
    values.set("role", "user");
    page(
        &viewer,
        &state,
        &values,
        FieldErrors::default(),
        Some(issued),
        notice,
    )
    .await
}
