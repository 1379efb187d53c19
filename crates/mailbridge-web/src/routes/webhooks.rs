//! `/webhooks`: endpoints the host application receives events at (admin only), their
//! deliveries with every attempt, "Send test event" and "Redeliver". Deliveries follow
//! Standard Webhooks 1.0; the secret is shown when an endpoint is created or its secret
//! rotated, and never again.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::webhook::is_public;
use mailbridge_core::{EventType, MailboxId, WebhookDraft, WebhookSpec};
use mailbridge_store::{DeliveryRecord, StoreError, WebhookRecord};
use secrecy::ExposeSecret;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create).get(list))
        .route("/webhooks/{id}", get(show).patch(update).delete(remove))
        .route("/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/webhooks/{id}/test", post(send_test))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route("/webhooks/{id}/deliveries/{delivery_id}", get(delivery))
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

const ADMINS_ONLY: &str = "manage webhooks";

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    id: String,
    url: String,
    description: Option<String>,
    /// Only these event types (`null`: every type).
    event_types: Option<Vec<EventType>>,
    /// Only these mailboxes' events (`null`: every mailbox).
    #[schema(value_type = Option<Vec<String>>)]
    mailbox_ids: Option<Vec<MailboxId>>,
    enabled: bool,
    /// Why Mailbridge disabled it: it answered 410 Gone, or failed for days.
    disabled_reason: Option<String>,
    /// When its current run of failed attempts began.
    failing_since: Option<DateTime<Utc>>,
    /// Deliveries waiting to be made or retried.
    pending_deliveries: i64,
    /// During a rotation: until when the old secret still signs beside the new one.
    previous_secret_valid_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<WebhookRecord> for WebhookView {
    fn from(w: WebhookRecord) -> Self {
        Self {
            id: w.id,
            url: w.spec.url.to_string(),
            description: w.spec.description,
            event_types: w.spec.event_types,
            mailbox_ids: w.spec.mailbox_ids,
            enabled: w.spec.enabled,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            pending_deliveries: w.pending,
            previous_secret_valid_until: w.previous_secret_until,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NewWebhook {
    webhook: WebhookView,
    /// The signing secret (`whsec_…`), shown this once: verify each delivery's
    /// `webhook-signature` with it.
    secret: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// The new secret, shown this once.
    secret: String,
    /// The old secret signs beside it until then.
    previous_secret_valid_until: Option<DateTime<Utc>>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// The `next_before` of the previous page.
    #[param(format = Uuid)]
    before: Option<String>,
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    /// Newest first, each with its attempts.
    deliveries: Vec<DeliveryRecord>,
    /// Pass as `before` for older deliveries; absent on the last page.
    next_before: Option<String>,
}

/// Registers an endpoint. Deliveries start with the events committed from now on.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = WebhookDraft,
    security(("bearer" = [])),
    responses((status = 201, body = NewWebhook), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(draft): ApiJson<WebhookDraft>,
) -> Result<(StatusCode, Json<NewWebhook>), ApiError> {
    let (webhook, secret) = create_webhook(&state, &caller, draft).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewWebhook {
            webhook: webhook.into(),
            secret: secret.expose_secret().to_owned(),
        }),
    ))
}

/// Checks a draft and registers the endpoint: the one path for the API and the console.
pub(crate) async fn create_webhook(
    state: &AppState,
    caller: &Caller,
    draft: WebhookDraft,
) -> Result<(WebhookRecord, secrecy::SecretString), ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let spec = draft.resolve(None)?;
    check(state, &spec).await?;
    Ok(state.store.create_webhook(&caller.actor(), &spec).await?)
}

#[utoipa::path(get, path = "/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = [WebhookView]), (status = 403, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let all = state.store.list_webhooks().await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    Ok(Json(state.store.get_webhook(&id).await?.into()))
}

/// Changes the named fields. Enabling an endpoint Mailbridge disabled clears why; its
/// waiting deliveries go on.
#[utoipa::path(patch, path = "/webhooks/{id}", tag = "webhooks", request_body = WebhookDraft,
    security(("bearer" = [])), params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(draft): ApiJson<WebhookDraft>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(
        update_webhook(&state, &caller, &id, draft).await?.into(),
    ))
}

/// Applies a draft over the stored endpoint: the one path for the API and the console.
pub(crate) async fn update_webhook(
    state: &AppState,
    caller: &Caller,
    id: &str,
    draft: WebhookDraft,
) -> Result<WebhookRecord, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let current = state.store.get_webhook(id).await?;
    let spec = draft.resolve(Some(&current.spec))?;
    check(state, &spec).await?;
    Ok(state
        .store
        .update_webhook(&caller.actor(), id, &spec)
        .await?)
}

/// Deletes an endpoint with its deliveries.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    state.store.delete_webhook(&caller.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret, shown once; the old one keeps signing beside it for 24 hours, so
/// the receiver can switch without missing a delivery.
#[utoipa::path(post, path = "/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = RotatedSecret), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RotatedSecret>, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let secret = state
        .store
        .rotate_webhook_secret(&caller.actor(), &id)
        .await?;
    let webhook = state.store.get_webhook(&id).await?;
    Ok(Json(RotatedSecret {
        secret: secret.expose_secret().to_owned(),
        previous_secret_valid_until: webhook.previous_secret_until,
    }))
}

/// Sends a `webhook.test` event to the endpoint now (whatever its filters).
#[utoipa::path(post, path = "/webhooks/{id}/test", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 202, body = DeliveryRecord), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn send_test(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryRecord>), ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let delivery = state.store.send_test_webhook(&caller.actor(), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

/// The endpoint's deliveries, newest first, with every attempt (time, status, the start of
/// the answer, the next try).
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id"), DeliveriesQuery),
    responses((status = 200, body = DeliveryPage), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn deliveries(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 200"));
    }
    if let Some(before) = &q.before
        && uuid::Uuid::parse_str(before).is_err()
    {
        return Err(ApiError::invalid(
            "before",
            format!("'{before}' is not a delivery id: pass the next_before of the previous page"),
        ));
    }
    let deliveries = state
        .store
        .webhook_deliveries(&id, q.before.as_deref(), limit)
        .await?;
    let next_before = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeliveryPage {
        deliveries,
        next_before,
    }))
}

#[utoipa::path(get, path = "/webhooks/{id}/deliveries/{delivery_id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id"), ("delivery_id" = String, Path, description = "delivery id")),
    responses((status = 200, body = DeliveryRecord), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delivery(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Json<DeliveryRecord>, ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    Ok(Json(state.store.webhook_delivery(&id, &delivery).await?))
}

/// Sends a delivery again as soon as possible — the same `webhook-id` and body, so a
/// receiver that already has it can tell.
#[utoipa::path(post, path = "/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "webhook id"), ("delivery_id" = String, Path, description = "delivery id")),
    responses((status = 202, body = DeliveryRecord), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn redeliver(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryRecord>), ApiError> {
    caller.require_admin(ADMINS_ONLY)?;
    let record = state
        .store
        .redeliver_webhook(&caller.actor(), &id, &delivery)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// What the URL reaches and the mailboxes it names: an address written into the URL (or
/// `localhost`) must be public unless private ones are allowed — names are checked again,
/// resolved, where each delivery connects — and the mailboxes must exist.
async fn check(state: &AppState, spec: &WebhookSpec) -> Result<(), ApiError> {
    if !state.config.webhook_allow_private {
        let local = match spec.url.host() {
            Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
            None => false,
        };
        if local {
            return Err(ApiError::invalid(
                "url",
                format!(
                    "{} is a private or local address; webhooks reach only public addresses unless an operator sets webhook_allow_private_addresses",
                    spec.url.host_str().unwrap_or_default()
                ),
            ));
        }
    }
    for (i, mailbox) in spec.mailbox_ids.iter().flatten().enumerate() {
        match state.store.get_mailbox(*mailbox).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::invalid(
                    &format!("mailbox_ids[{i}]"),
                    format!(
                        "mailbox {mailbox} does not exist; list mailboxes with GET /api/v1/mailboxes"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
