//! `/emails`: the email records synchronized from mailboxes. A user sees the emails of their
//! own mailboxes; an admin sees all.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::MailboxId;
use mailbridge_core::message::Party;
use mailbridge_store::{AttachmentInfo, EmailFilter, EmailRecord};

use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/emails", get(list))
        .route("/emails/{id}", get(show))
        .route("/emails/{id}/raw", get(raw))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PartyView {
    address: String,
    name: Option<String>,
}

impl From<Party> for PartyView {
    fn from(p: Party) -> Self {
        Self {
            address: p.address,
            name: p.name,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EmailView {
    id: String,
    #[schema(value_type = String)]
    mailbox_id: MailboxId,
    /// `incoming` or `outgoing`.
    direction: String,
    message_id: Option<String>,
    in_reply_to: Vec<String>,
    references: Vec<String>,
    conversation_id: String,
    subject: Option<String>,
    from: Option<PartyView>,
    to: Vec<PartyView>,
    cc: Vec<PartyView>,
    /// The Date header.
    sent_at: Option<DateTime<Utc>>,
    text_body: Option<String>,
    html_body: Option<String>,
    attachments: Vec<AttachmentInfo>,
    /// Size of the raw message in bytes (`GET /emails/{id}/raw`).
    size: i64,
    /// Set when the message could not be parsed; the raw bytes are kept.
    parse_error: Option<String>,
    folder: Option<String>,
    gmail_labels: Vec<String>,
    /// When Mailbridge stored it.
    created_at: DateTime<Utc>,
}

impl From<EmailRecord> for EmailView {
    fn from(e: EmailRecord) -> Self {
        Self {
            id: e.id,
            mailbox_id: e.mailbox_id,
            direction: e.direction,
            message_id: e.message_id,
            in_reply_to: e.in_reply_to,
            references: e.references,
            conversation_id: e.conversation_id,
            subject: e.subject,
            from: e.from.map(Into::into),
            to: e.to.into_iter().map(Into::into).collect(),
            cc: e.cc.into_iter().map(Into::into).collect(),
            sent_at: e.sent_at,
            text_body: e.text_body,
            html_body: e.html_body,
            attachments: e.attachments,
            size: e.size,
            parse_error: e.parse_error,
            folder: e.folder,
            gmail_labels: e.gmail_labels,
            created_at: e.created_at,
        }
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    mailbox_id: Option<String>,
    /// `incoming` or `outgoing`.
    direction: Option<String>,
    conversation_id: Option<String>,
    /// Stored at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1–200, default 50.
    limit: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EmailPage {
    emails: Vec<EmailView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Emails, oldest first, a page at a time.
#[utoipa::path(get, path = "/emails", tag = "emails", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = EmailPage), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<EmailPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 200"));
    }
    let mailbox = match &q.mailbox_id {
        Some(raw) => {
            let id: MailboxId = raw.parse().map_err(|_| {
                ApiError::invalid("mailbox_id", format!("'{raw}' is not a mailbox id"))
            })?;
            let m = state.store.get_mailbox(id).await?;
            caller.require_owner_or_admin(m.spec.owner_user_id)?;
            Some(id)
        }
        None => None,
    };
    if let Some(d) = &q.direction
        && d != "incoming"
        && d != "outgoing"
    {
        return Err(ApiError::invalid(
            "direction",
            "direction must be incoming or outgoing",
        ));
    }
    let filter = EmailFilter {
        owner: (!caller.is_admin()).then_some(caller.0.id),
        mailbox,
        direction: q.direction,
        conversation: q.conversation_id,
        since: q.since,
    };
    let emails = state
        .store
        .list_emails(&filter, q.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (emails.len() as i64 == limit)
        .then(|| emails.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(EmailPage {
        emails: emails.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

async fn load(caller: &Caller, state: &AppState, id: &str) -> Result<EmailRecord, ApiError> {
    let id: uuid::Uuid = path_id(id, "email")?;
    let email = state.store.get_email(&id.to_string()).await?;
    caller.require_owner_or_admin(email.mailbox_owner)?;
    Ok(email)
}

#[utoipa::path(get, path = "/emails/{id}", tag = "emails", security(("bearer" = [])),
    params(("id" = String, Path, description = "email id")),
    responses((status = 200, body = EmailView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EmailView>, ApiError> {
    Ok(Json(load(&caller, &state, &id).await?.into()))
}

/// The original RFC 5322 bytes, as `message/rfc822`.
#[utoipa::path(get, path = "/emails/{id}/raw", tag = "emails", security(("bearer" = [])),
    params(("id" = String, Path, description = "email id")),
    responses((status = 200, content_type = "message/rfc822", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn raw(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let email = load(&caller, &state, &id).await?;
    let bytes = state.store.email_raw(&email.id).await?;
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], bytes))
}
