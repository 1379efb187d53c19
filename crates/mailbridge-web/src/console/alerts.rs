//! Alerts: what failed, when, and what to do — the viewer's own (their mailboxes', and the
//! profiles' they own) — and dismissing one.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use mailbridge_store::AlertRecord;

use super::form::sentence;
use super::{Layout, PageError, PageResult, Viewer, path_id, render, see_other};
use crate::AppState;
use crate::routes::mailboxes::visible_mailbox;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/alerts", get(list))
        .route(
            "/console/mailboxes/{id}/alerts/{alert_id}/dismiss",
            post(dismiss),
        )
        .route("/console/alerts/{alert_id}/dismiss", post(dismiss_own))
}

struct AlertRow {
    id: String,
    mailbox_id: Option<String>,
    message: String,
    hint: String,
    when: String,
}

impl From<AlertRecord> for AlertRow {
    fn from(a: AlertRecord) -> Self {
        Self {
            id: a.id,
            mailbox_id: a.mailbox_id.map(|m| m.to_string()),
            message: sentence(&a.message),
            hint: sentence(&a.hint),
            when: a.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    title: &'static str,
    layout: Option<Layout>,
    csrf: String,
    alerts: Vec<AlertRow>,
}

async fn list(viewer: Viewer, State(state): State<AppState>) -> PageResult {
    let alerts = state.store.user_alerts(viewer.caller.0.id, false).await?;
    Ok(render(&AlertsPage {
        title: "Alerts",
        layout: Some(viewer.layout(&state, "alerts").await),
        csrf: viewer.csrf.clone(),
        alerts: alerts.into_iter().map(AlertRow::from).collect(),
    }))
}

/// Dismisses one of the viewer's own alerts, e.g. about a profile they own.
async fn dismiss_own(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(alert_id): Path<String>,
) -> PageResult {
    state
        .store
        .dismiss_user_alert(viewer.caller.0.id, &alert_id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other("/console/alerts"))
}

async fn dismiss(
    viewer: Viewer,
    State(state): State<AppState>,
    Path((id, alert_id)): Path<(String, String)>,
) -> PageResult {
    let mailbox = visible_mailbox(&state, &viewer.caller, path_id(&id, "mailbox")?)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    state
        .store
        .dismiss_alert(mailbox.id, &alert_id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    // Only the mailbox's page dismisses through here (the alerts page uses `dismiss_own`).
    Ok(see_other(&format!(
        "/console/mailboxes/{}?done=dismissed",
        mailbox.id
    )))
}
