//! Sign in to Gmail: `GET /mailboxes/{id}/oauth/start` (302 to the consent page),
//! `GET /oauth/callback` (the registered redirect URI; a page telling the person what
//! happened), `DELETE /mailboxes/{id}/oauth` (disconnect: revoke and delete).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use mailbridge_core::{AuthMethod, MailboxId};
use mailbridge_sync::{Callback, Disconnected, SignInError};

use super::mailboxes::visible_mailbox;
use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::query::ApiQuery;
use url::Url;

pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/mailboxes/{id}/oauth/start", get(start))
        .route("/mailboxes/{id}/oauth", axum::routing::delete(disconnect))
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/oauth/callback", get(callback))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StartView {
    /// The provider's consent page; send the user's browser there.
    authorization_url: String,
}

/// Starts "Sign in to Gmail" for a mailbox (its owner or an admin): answers 302 to the
/// provider's consent page, or the URL as JSON when asked with `Accept: application/json`.
#[utoipa::path(get, path = "/mailboxes/{id}/oauth/start", tag = "sign-in",
    security(("bearer" = [])), params(("id" = String, Path, description = "mailbox id")),
    responses((status = 302, description = "to the consent page"), (status = 200, body = StartView),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the profile does not use OAuth, or Gmail sign-in is turned off")))]
async fn start(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let url = start_sign_in(&state, &caller, path_id(&id, "mailbox")?).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    Ok(if wants_json {
        Json(StartView {
            authorization_url: url.to_string(),
        })
        .into_response()
    } else {
        Redirect::to(url.as_str()).into_response()
    })
}

/// Begins a sign-in for a mailbox the caller may see, when the feature is on: the consent
/// page to send the browser to. The one path for the API and the console.
pub(crate) async fn start_sign_in(
    state: &AppState,
    caller: &Caller,
    id: MailboxId,
) -> Result<Url, ApiError> {
    let mailbox = visible_mailbox(state, caller, id).await?;
    let profile = state.store.get_profile(mailbox.spec.profile_id).await?;
    if profile.spec.auth == AuthMethod::GmailOauth && !state.config.gmail_oauth {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "feature_disabled",
            "Sign in to Gmail is turned off on this installation (gmail_oauth = false); ask an admin",
        ));
    }
    state
        .signin
        .start(&caller.0, &mailbox)
        .await
        .map_err(api_error)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DisconnectView {
    /// `revoked`, `not_revocable` (the profile has no revocation endpoint),
    /// `revocation_failed`, or `was_not_signed_in`.
    outcome: &'static str,
    pub(crate) message: String,
}

/// Removes a mailbox's sign-in: the tokens are deleted here and revoked at the provider.
/// The mailbox is disabled until it is signed in and tested again.
#[utoipa::path(delete, path = "/mailboxes/{id}/oauth", tag = "sign-in",
    security(("bearer" = [])), params(("id" = String, Path, description = "mailbox id")),
    responses((status = 200, body = DisconnectView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn disconnect(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DisconnectView>, ApiError> {
    Ok(Json(
        disconnect_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?,
    ))
}

/// Signs a mailbox the caller may see out: the one path for the API and the console.
pub(crate) async fn disconnect_mailbox(
    state: &AppState,
    caller: &Caller,
    id: MailboxId,
) -> Result<DisconnectView, ApiError> {
    let mailbox = visible_mailbox(state, caller, id).await?;
    let outcome = state
        .signin
        .disconnect(&caller.actor(), mailbox.id)
        .await
        .map_err(api_error)?;
    let (outcome, message) = match outcome {
        Disconnected::Revoked => ("revoked", "signed out: the tokens were revoked at the provider and deleted here".to_owned()),
        Disconnected::NoRevocationEndpoint => ("not_revocable", "signed out: the tokens were deleted here; the profile has no revocation endpoint, so remove the app's access in the account's settings if you want it gone there too".to_owned()),
        Disconnected::RevocationFailed(e) => ("revocation_failed", format!("signed out: the tokens were deleted here, but the provider could not be told ({e}); remove the app's access in the account's settings")),
        Disconnected::WasNotSignedIn => ("was_not_signed_in", "the mailbox was not signed in".to_owned()),
    };
    Ok(DisconnectView { outcome, message })
}

/// The redirect URI: finishes the sign-in and tells the person what happened, in a page.
async fn callback(
    State(state): State<AppState>,
    answer: Result<ApiQuery<Callback>, ApiError>,
) -> Response {
    let answer = match answer {
        Ok(ApiQuery(answer)) => answer,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in did not complete",
                &format!(
                    "The sign-in answer is malformed ({}); start again from the \"Sign in\" button.",
                    e.message()
                ),
                ("/console/mailboxes", "Back to your mailboxes"),
            );
        }
    };
    match state.signin.finish(answer).await {
        Ok(mailbox) => page(
            StatusCode::OK,
            "Mailbox connected",
            &format!(
                "{} is signed in. Next, run Test & Enable Mailbox to check that mail flows both ways.",
                mailbox.spec.email
            ),
            (
                &format!("/console/mailboxes/{}", mailbox.id),
                "Back to the mailbox",
            ),
        ),
        Err(e) => {
            let status = callback_status(&e);
            if status.is_server_error() {
                tracing::error!(error = %e, "sign-in failed");
            } else {
                tracing::info!(error = %e, "sign-in refused");
            }
            page(
                status,
                "Sign-in did not complete",
                &e.to_string(),
                ("/console/mailboxes", "Back to your mailboxes"),
            )
        }
    }
}

fn callback_status(e: &SignInError) -> StatusCode {
    match e {
        SignInError::Provider(p) if p.is_transient() => StatusCode::BAD_GATEWAY,
        SignInError::Provider(_) => StatusCode::BAD_GATEWAY,
        SignInError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        SignInError::WrongAccount { .. } | SignInError::NotAllowed => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn api_error(e: SignInError) -> ApiError {
    match e {
        SignInError::Store(s) => s.into(),
        SignInError::NotOAuth(_) => ApiError::new(StatusCode::CONFLICT, "not_oauth", e.to_string()),
        SignInError::Provider(_) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "sign_in_failed", other.to_string()),
    }
}

/// A small page for the browser that came back, in the console's look (its stylesheet is
/// served by this binary), with a link back into the console.
fn page(status: StatusCode, title: &str, message: &str, back: (&str, &str)) -> Response {
    let class = if status.is_success() {
        "notice"
    } else {
        "panel problem"
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Mailbridge</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body>\
         <header class=\"top\"><a class=\"brand\" href=\"/console\">Mailbridge</a></header>\
         <main><div class=\"narrow\"><h1>{title}</h1><div class=\"{class}\" role=\"status\">\
         <p>{message}</p></div><p><a class=\"button primary\" href=\"{href}\">{label}</a></p>\
         </div></main></body></html>",
        title = escape(title),
        message = escape(message),
        href = escape(back.0),
        label = escape(back.1),
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
