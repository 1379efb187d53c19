//! `/contacts`: the application's email-enabled records (admin writes, anyone reads), which
//! the `known_contacts` tracking rule matches incoming mail against.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use mailbridge_core::EmailAddress;
use mailbridge_store::Contact;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/contacts", get(list).put(upsert))
        .route("/contacts/{email}", delete(remove))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    #[schema(format = Email, example = "bob@example.com")]
    email: String,
    name: Option<String>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsInput {
    /// Up to 1,000 contacts per call; an address already known is updated.
    contacts: Vec<ContactInput>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Upserted {
    upserted: usize,
}

/// Inserts or updates contacts (admin).
#[utoipa::path(put, path = "/contacts", tag = "contacts", request_body = ContactsInput, security(("bearer" = [])),
    responses((status = 200, body = Upserted), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upsert(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ContactsInput>,
) -> Result<Json<Upserted>, ApiError> {
    caller.require_admin("change contacts")?;
    if input.contacts.len() > 1000 {
        return Err(ApiError::invalid(
            "contacts",
            "send at most 1,000 contacts per call",
        ));
    }
    let contacts = input
        .contacts
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok((
                EmailAddress::parse(&c.email, &format!("contacts[{i}].email"))?,
                c.name,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Upserted {
        upserted: state.store.upsert_contacts(&contacts).await?,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The last address of the previous page.
    after: Option<String>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/contacts", tag = "contacts", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = [Contact])))]
async fn list(
    _caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Contact>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 1000"));
    }
    Ok(Json(
        state.store.list_contacts(q.after.as_deref(), limit).await?,
    ))
}

#[utoipa::path(delete, path = "/contacts/{email}", tag = "contacts", security(("bearer" = [])),
    params(("email" = String, Path, description = "the contact's address")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("change contacts")?;
    let email =
        EmailAddress::parse(&email, "email").map_err(|_| ApiError::not_found("contact", &email))?;
    state.store.delete_contact(&email).await?;
    Ok(StatusCode::NO_CONTENT)
}
