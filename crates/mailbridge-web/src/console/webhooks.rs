//! Webhooks (admins): add an endpoint (its secret is shown once), see each endpoint's
//! deliveries with every attempt, send a test event, redeliver, rotate the secret, enable,
//! disable, delete. The same operations as `/api/v1/webhooks`.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::{EventType, MailboxId, WebhookDraft};
use mailbridge_store::{DeliveryRecord, WebhookRecord};
use secrecy::{ExposeSecret, SecretString};

use super::form::{Field, FieldErrors, FormValues};
use super::{Layout, PageError, PageResult, Viewer, render, see_other};
use crate::AppState;
use crate::routes::webhooks::{create_webhook, update_webhook};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/webhooks", get(list).post(create))
        .route("/console/webhooks/{id}", get(show))
        .route("/console/webhooks/{id}/enabled", post(set_enabled))
        .route("/console/webhooks/{id}/test", post(send_test))
        .route("/console/webhooks/{id}/rotate-secret", post(rotate))
        .route("/console/webhooks/{id}/delete", post(delete))
        .route(
            "/console/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(redeliver),
        )
}

const ADMIN_ONLY: &str = "manage webhooks";

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// One event type to tick.
struct TypeChoice {
    value: &'static str,
    checked: bool,
}

/// One mailbox to pick.
struct MailboxChoice {
    id: String,
    email: String,
    selected: bool,
}

struct EndpointRow {
    id: String,
    url: String,
    description: String,
    types: String,
    enabled: bool,
    disabled_reason: Option<String>,
    pending: i64,
}

/// A secret just made, shown this once.
struct Revealed {
    title: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    title: &'static str,
    layout: Option<Layout>,
    csrf: String,
    endpoints: Vec<EndpointRow>,
    fields: Vec<Field>,
    types: Vec<TypeChoice>,
    types_error: Option<String>,
    mailboxes: Vec<MailboxChoice>,
    has_errors: bool,
    general_errors: Vec<String>,
    revealed: Option<Revealed>,
}

struct AttemptRow {
    at: String,
    outcome: String,
    good: bool,
    duration_ms: i64,
    excerpt: Option<String>,
    next: Option<String>,
    node: String,
}

struct DeliveryRow {
    id: String,
    event_type: String,
    event_id: String,
    status: String,
    badge: &'static str,
    created: String,
    attempts: Vec<AttemptRow>,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    title: &'static str,
    layout: Option<Layout>,
    csrf: String,
    id: String,
    url: String,
    description: String,
    types: String,
    mailboxes: String,
    enabled: bool,
    disabled_reason: Option<String>,
    failing_since: Option<String>,
    rotation_ends: Option<String>,
    deliveries: Vec<DeliveryRow>,
    revealed: Option<Revealed>,
}

fn type_list(types: &Option<Vec<EventType>>) -> String {
    types.as_ref().map_or_else(
        || "All events".to_owned(),
        |t| t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
    )
}

async fn list_page(
    viewer: &Viewer,
    state: &AppState,
    values: &FormValues,
    picked: (&[String], &[String]),
    mut errors: FieldErrors,
    revealed: Option<Revealed>,
) -> PageResult {
    let fields = vec![
        Field::text("url", "Endpoint URL")
            .kind("url")
            .required()
            .help(
                "Where Mailbridge POSTs each event, e.g. https://crm.example.com/hooks/mailbridge.",
            )
            .from(values, &mut errors),
        Field::text("description", "Description")
            .help("Optional: what receives these events.")
            .from(values, &mut errors),
    ];
    let types_error = errors.take("event_types");
    let types = EventType::ALL
        .iter()
        .map(|t| TypeChoice {
            value: t.as_str(),
            checked: picked.0.iter().any(|p| p == t.as_str()),
        })
        .collect();
    let mailboxes = state
        .store
        .list_mailboxes(None)
        .await?
        .into_iter()
        .map(|m| MailboxChoice {
            selected: picked.1.contains(&m.id.to_string()),
            id: m.id.to_string(),
            email: m.spec.email.to_string(),
        })
        .collect();
    let general_errors = errors.rest();
    let has_errors = !general_errors.is_empty()
        || types_error.is_some()
        || fields.iter().any(|f| f.error.is_some());
    let endpoints = state
        .store
        .list_webhooks()
        .await?
        .into_iter()
        .map(|w: WebhookRecord| EndpointRow {
            id: w.id,
            url: w.spec.url.to_string(),
            description: w.spec.description.unwrap_or_default(),
            types: type_list(&w.spec.event_types),
            enabled: w.spec.enabled,
            disabled_reason: w.disabled_reason,
            pending: w.pending,
        })
        .collect();
    let mut response = render(&WebhooksPage {
        title: "Webhooks",
        layout: Some(viewer.layout(state, "webhooks").await),
        csrf: viewer.csrf.clone(),
        endpoints,
        fields,
        types,
        types_error,
        mailboxes,
        has_errors,
        general_errors,
        revealed,
    });
    if has_errors {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

async fn list(viewer: Viewer, State(state): State<AppState>) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    list_page(
        &viewer,
        &state,
        &FormValues::default(),
        (&[], &[]),
        FieldErrors::default(),
        None,
    )
    .await
}

/// The secret is in the answer to this POST and nowhere else: it must not travel in a URL.
async fn create(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let types: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "event_types")
        .map(|(_, v)| v.clone())
        .collect();
    let mailboxes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "mailbox_ids")
        .map(|(_, v)| v.clone())
        .collect();
    let values = FormValues::from_pairs(
        pairs
            .into_iter()
            .filter(|(k, _)| k != "event_types" && k != "mailbox_ids")
            .collect(),
    );
    let mut errors = FieldErrors::default();
    let event_types = types
        .iter()
        .map(|t| t.parse::<EventType>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| errors.add("event_types", e.to_string()))
        .ok();
    let mailbox_ids = mailboxes
        .iter()
        .map(|m| m.parse::<MailboxId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| errors.add("mailbox_ids", "choose mailboxes from the list"))
        .ok();
    if errors.is_empty() {
        let draft = WebhookDraft {
            url: values.opt("url"),
            description: values.opt("description"),
            // Nothing ticked: every type (every mailbox).
            event_types: Some(event_types.filter(|t| !t.is_empty())),
            mailbox_ids: Some(mailbox_ids.filter(|m| !m.is_empty())),
            enabled: Some(true),
        };
        match create_webhook(&state, &viewer.caller, draft).await {
            Ok((webhook, secret)) => {
                let revealed = reveal(&format!("Signing secret for {}", webhook.spec.url), &secret);
                return list_page(
                    &viewer,
                    &state,
                    &FormValues::default(),
                    (&[], &[]),
                    errors,
                    Some(revealed),
                )
                .await;
            }
            Err(e) => errors.api(&e),
        }
    }
    list_page(&viewer, &state, &values, (&types, &mailboxes), errors, None).await
}

fn reveal(title: &str, secret: &SecretString) -> Revealed {
    Revealed {
        title: title.to_owned(),
        secret: secret.expose_secret().to_owned(),
    }
}

async fn show_page(
    viewer: &Viewer,
    state: &AppState,
    id: &str,
    notice: Option<String>,
    revealed: Option<Revealed>,
) -> PageResult {
    let webhook = state
        .store
        .get_webhook(id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(viewer))?;
    let deliveries = state
        .store
        .webhook_deliveries(id, None, 50)
        .await?
        .into_iter()
        .map(|d: DeliveryRecord| DeliveryRow {
            badge: match d.status.as_str() {
                "delivered" => "good",
                "failed" => "bad",
                _ => "warn",
            },
            id: d.id,
            event_type: d.event_type,
            event_id: d.event_id,
            status: d.status,
            created: when(Some(d.created_at)),
            attempts: d
                .attempts
                .into_iter()
                .map(|a| AttemptRow {
                    at: when(Some(a.at)),
                    good: a.status_code.is_some_and(|s| (200..300).contains(&s)),
                    outcome: match (a.status_code, a.error) {
                        (Some(s), _) => format!("HTTP {s}"),
                        (None, Some(e)) => e,
                        (None, None) => "no answer".to_owned(),
                    },
                    duration_ms: a.duration_ms,
                    excerpt: a.response_excerpt,
                    next: a.next_attempt_at.map(|t| when(Some(t))),
                    node: a.node.unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    let mailboxes = match &webhook.spec.mailbox_ids {
        None => "All mailboxes".to_owned(),
        Some(ids) => {
            let mut names = Vec::with_capacity(ids.len());
            for id in ids {
                names.push(match state.store.get_mailbox(*id).await {
                    Ok(m) => m.spec.email.to_string(),
                    Err(_) => id.to_string(),
                });
            }
            names.join(", ")
        }
    };
    Ok(render(&WebhookPage {
        title: "Webhook",
        layout: Some(viewer.layout(state, "webhooks").await.with_notice(notice)),
        csrf: viewer.csrf.clone(),
        id: webhook.id,
        url: webhook.spec.url.to_string(),
        description: webhook.spec.description.unwrap_or_default(),
        types: type_list(&webhook.spec.event_types),
        mailboxes,
        enabled: webhook.spec.enabled,
        disabled_reason: webhook.disabled_reason,
        failing_since: webhook.failing_since.map(|t| when(Some(t))),
        rotation_ends: webhook.previous_secret_until.map(|t| when(Some(t))),
        deliveries,
        revealed,
    }))
}

async fn show(viewer: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    show_page(&viewer, &state, &id, None, None).await
}

#[derive(serde::Deserialize)]
pub struct EnabledForm {
    enabled: String,
}

async fn set_enabled(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<EnabledForm>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let enabled = form.enabled == "true";
    let draft = WebhookDraft {
        enabled: Some(enabled),
        ..WebhookDraft::default()
    };
    update_webhook(&state, &viewer.caller, &id, draft)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    let notice = if enabled {
        "The webhook is enabled; waiting deliveries go out again."
    } else {
        "The webhook is disabled; its deliveries wait until it is enabled."
    };
    show_page(&viewer, &state, &id, Some(notice.to_owned()), None).await
}

async fn send_test(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    state
        .store
        .send_test_webhook(&viewer.caller.actor(), &id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    let notice = "A test event is on its way; reload to see how it went.".to_owned();
    show_page(&viewer, &state, &id, Some(notice), None).await
}

async fn rotate(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let secret = state
        .store
        .rotate_webhook_secret(&viewer.caller.actor(), &id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    let revealed = reveal("New signing secret", &secret);
    show_page(&viewer, &state, &id, None, Some(revealed)).await
}

async fn delete(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    state
        .store
        .delete_webhook(&viewer.caller.actor(), &id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other("/console/webhooks"))
}

async fn redeliver(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    state
        .store
        .redeliver_webhook(&viewer.caller.actor(), &id, &delivery)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    let notice = "The delivery is queued to be sent again.".to_owned();
    show_page(&viewer, &state, &id, Some(notice), None).await
}
