//! `/emails`: the email records synchronized from mailboxes. A user sees the emails of their
//! own mailboxes; an admin sees all.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::message::{MessageFlags, Party};
use mailbridge_core::{MailboxId, OutgoingDraft};
use mailbridge_store::{AttachmentInfo, EmailFilter, EmailRecord, StoreError};
use mailbridge_sync::outgoing::compose;

use super::mailboxes::visible_mailbox;
use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/emails", get(list).post(send))
        .route("/emails/{id}", get(show).patch(set_flags))
        .route("/emails/{id}/raw", get(raw))
        .route("/emails/{id}/attachments/{attachment_id}", get(attachment))
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
    /// Outgoing: the blind copies (never written into the message).
    bcc: Vec<PartyView>,
    /// The Date header.
    sent_at: Option<DateTime<Utc>>,
    /// The plain-text body; for mail that has only HTML, a text rendering of it.
    text_body: Option<String>,
    /// The HTML body as sent; absent for plain-text mail.
    html_body: Option<String>,
    attachments: Vec<AttachmentInfo>,
    /// Size of the message in bytes: of the raw message (`GET /emails/{id}/raw`), or, when
    /// `truncated`, of the whole message on the server.
    size: i64,
    /// Only the message's header was stored (bodies and attachments are absent): it is
    /// larger than the service's `max_message_bytes`.
    truncated: bool,
    /// Set when the message could not be parsed; the raw bytes are kept.
    parse_error: Option<String>,
    /// The folder the message is in on the server (for Gmail, where it was first seen; its
    /// labels say where else it is).
    folder: Option<String>,
    /// Its flags on the server, kept in step with it (`null`: not known — POP3 mail, or sent
    /// from here and not yet seen in the Sent folder). Change `seen` and `flagged` with
    /// `PATCH /emails/{id}`.
    flags: Option<MessageFlags>,
    /// When the server stopped having the message (expunged; on Gmail, in no synchronized
    /// folder any more). The record stays.
    deleted_on_server_at: Option<DateTime<Utc>>,
    gmail_labels: Vec<String>,
    /// Gmail's conversation id (X-GM-THRID), as a decimal string.
    gmail_thread_id: Option<String>,
    /// Outgoing: the token at the end of its subject that replies carry back.
    tracking_token: Option<String>,
    /// Incoming: the id of the node that stored it (see `mailbridge nodes list`).
    stored_by_node: Option<String>,
    /// When Mailbridge stored it.
    created_at: DateTime<Utc>,
    /// Outgoing: `pending_send`, `sending`, `sent` or `failed`.
    status: Option<String>,
    send_attempts: i64,
    /// Outgoing: the server's words (the queue id when sent, the refusal when failed).
    send_reply: Option<String>,
    /// Outgoing: when the server accepted it.
    delivered_at: Option<DateTime<Utc>>,
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
            bcc: e.bcc.into_iter().map(Into::into).collect(),
            sent_at: e.sent_at,
            text_body: e.text_body,
            html_body: e.html_body,
            attachments: e.attachments,
            size: e.size,
            truncated: e.truncated,
            parse_error: e.parse_error,
            folder: e.folder,
            flags: e.flags,
            deleted_on_server_at: e.deleted_on_server_at,
            gmail_labels: e.gmail_labels,
            gmail_thread_id: e.gmail_thread_id,
            tracking_token: e.tracking_token,
            stored_by_node: e.stored_by,
            created_at: e.created_at,
            status: e.status,
            send_attempts: e.send_attempts,
            send_reply: e.send_reply,
            delivered_at: e.delivered_at,
        }
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(format = Uuid)]
    mailbox_id: Option<String>,
    /// `incoming` or `outgoing`.
    #[param(pattern = "^(incoming|outgoing)$")]
    direction: Option<String>,
    conversation_id: Option<String>,
    /// Stored at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EmailPage {
    emails: Vec<EmailView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Emails, oldest first, a page at a time: for browsing what is stored. To follow new and
/// changed email as it commits, read the change feed (`GET /events?types=email.received`):
/// its cursor never skips a record, while this one (record ids, made before commit) can pass
/// a record that commits late on PostgreSQL, and ends on the last page.
#[utoipa::path(get, path = "/emails", tag = "emails", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = EmailPage), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
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
            visible_mailbox(&state, &caller, id).await?;
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

/// What `PATCH /emails/{id}` changes; a field left out stays as it is.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagsInput {
    /// Mark the message read (`true`) or unread.
    seen: Option<bool>,
    /// Flag (star, in Gmail) the message, or remove the flag.
    flagged: Option<bool>,
}

/// Sets `seen` and `flagged` on the mail server (IMAP `STORE`, with the mailbox's own
/// credentials); once the server has taken it, the record follows and `email.updated` is
/// appended to the event log.
#[utoipa::path(patch, path = "/emails/{id}", tag = "emails", request_body = FlagsInput, security(("bearer" = [])),
    params(("id" = String, Path, description = "email id")),
    responses((status = 200, body = EmailView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the email has no message on an IMAP server to change, or the mailbox must sign in again"),
        (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "the mail server refused or could not be reached; the record is unchanged")))]
async fn set_flags(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<FlagsInput>,
) -> Result<Json<EmailView>, ApiError> {
    let email = load(&caller, &state, &id).await?;
    if input.seen.is_none() && input.flagged.is_none() {
        return Err(ApiError::invalid(
            "seen",
            "give seen or flagged (true or false), e.g. {\"seen\": true}",
        ));
    }
    let change = mailbridge_sync::FlagChange {
        seen: input.seen,
        flagged: input.flagged,
    };
    state
        .tester
        .set_flags(&email, change)
        .await
        .map_err(|e| match e {
            mailbridge_sync::FlagError::NotOnServer(why) => {
                ApiError::new(StatusCode::CONFLICT, "not_on_server", why)
            }
            mailbridge_sync::FlagError::Sync(mailbridge_sync::incoming::SyncError::Store(e)) => {
                e.into()
            }
            mailbridge_sync::FlagError::Sync(mailbridge_sync::incoming::SyncError::Token(e))
                if !e.is_transient() =>
            {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "needs_sign_in",
                    format!("{e}; the mailbox's owner must sign in again"),
                )
            }
            mailbridge_sync::FlagError::Sync(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "mail_server",
                format!("the flags could not be set on the mail server: {e}"),
            ),
        })?;
    Ok(Json(state.store.get_email(&email.id).await?.into()))
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

/// An attachment's decoded bytes, as a download: its own content type, its file name in
/// `Content-Disposition`, and nothing a browser would render in the API's origin.
#[utoipa::path(get, path = "/emails/{id}/attachments/{attachment_id}", tag = "emails", security(("bearer" = [])),
    params(("id" = String, Path, description = "email id"), ("attachment_id" = String, Path, description = "an id from the email's `attachments`")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn attachment(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, attachment_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let email = load(&caller, &state, &id).await?;
    let attachment_id: uuid::Uuid = path_id(&attachment_id, "attachment")?;
    let (info, bytes) = state
        .store
        .attachment_content(&email.id, &attachment_id.to_string())
        .await?;
    let content_type = header::HeaderValue::from_str(&info.content_type)
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    let disposition = content_disposition(info.filename.as_deref().unwrap_or("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static("sandbox"),
            ),
        ],
        bytes,
    ))
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): an ASCII stand-in for old
/// clients, the exact name percent-encoded for the others.
fn content_disposition(name: &str) -> header::HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    header::HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or(header::HeaderValue::from_static("attachment"))
}

/// Queues an email to send from a mailbox; the engine sends it over SMTP. With an
/// `Idempotency-Key` header already used for this mailbox, nothing new is queued: the earlier
/// email is returned with 200.
#[utoipa::path(post, path = "/emails", tag = "emails", request_body = OutgoingDraft, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries of this request safe")),
    responses((status = 201, body = EmailView), (status = 200, body = EmailView, description = "the email created earlier with this Idempotency-Key"),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the mailbox does not send, or the Idempotency-Key was used for a different email"),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the mailbox's queue or daily send limit is reached; see Retry-After")))]
async fn send(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<OutgoingDraft>,
) -> Result<(StatusCode, Json<EmailView>), ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255);
            Some(
                k.ok_or_else(|| {
                    ApiError::invalid(
                        "Idempotency-Key",
                        "the Idempotency-Key header must be 1 to 255 visible characters",
                    )
                })?
                .to_owned(),
            )
        }
        None => None,
    };
    let (mailbox_id, message) = input.resolve()?;
    let mailbox = state
        .store
        .get_mailbox(mailbox_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                ApiError::invalid("mailbox_id", format!("mailbox {mailbox_id} does not exist"))
            }
            other => other.into(),
        })?;
    caller.require_owner_or_admin(mailbox.spec.owner_user_id)?;
    if !mailbox.spec.outgoing_method.is_synchronized() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_sending",
            "this mailbox's outgoing email is not synchronized (outgoing_method none); change it, then run Test & Enable",
        ));
    }
    let email = compose(&mailbox.spec.email, &message, state.clock.now()).map_err(|e| {
        tracing::error!(error = %e, "cannot compose an email");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the email could not be composed",
        )
    })?;
    let (record, created) = state
        .store
        .queue_outgoing(mailbox.id, &email, key.as_deref())
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(record.into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachment_name_is_given_to_every_client_and_cannot_break_the_header() {
        assert_eq!(
            content_disposition("Angebot März \"final\".pdf"),
            "attachment; filename=\"Angebot M_rz _final_.pdf\"; filename*=UTF-8''Angebot%20M%C3%A4rz%20%22final%22.pdf"
        );
        let sneaky = content_disposition("a.pdf\r\nSet-Cookie: x=1");
        let sneaky = sneaky.to_str().unwrap_or_default();
        assert!(!sneaky.contains('\r') && !sneaky.contains('\n'), "{sneaky}");
    }
}
