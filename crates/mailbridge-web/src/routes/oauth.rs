//! Sign in to Gmail: `GET /mailboxes/{id}/oauth/start` (302 to the consent page),
//! `GET /oauth/callback` (the registered redirect URI; a page telling the person what
//! happened, or, for a hosted sign-in, back to the host application with the outcome),
//! `DELETE /mailboxes/{id}/oauth` (disconnect: revoke and delete), and hosted sign-in:
//! `POST /mailboxes/{id}/sign-in-link` and the link itself, `GET /sign-in/{token}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use mailbridge_core::MailboxId;
use mailbridge_sync::{Callback, Disconnected, LinkRefused, SignInError};

use super::mailboxes::visible_mailbox;
use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::query::ApiQuery;
use url::Url;

pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/mailboxes/{id}/oauth/start", get(start))
        .route("/mailboxes/{id}/oauth", axum::routing::delete(disconnect))
        .route(
            "/mailboxes/{id}/sign-in-link",
            axum::routing::post(create_link),
        )
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/callback", get(callback))
        .route("/sign-in/{token}", get(open_link))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Where to send the user when the sign-in is over, with `mailbox_id`, `outcome`
    /// (`signed_in` or `error`) and, on error, `error` (a code) and `message` added to its
    /// query. Must start with one of the `allowed_return_urls`.
    /// Required (read as optional only to say so in words when it is missing).
    #[schema(example = "https://crm.example.com/mailbridge/signed-in", value_type = String, required = true)]
    return_url: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LinkView {
    /// Send the user's browser here; it works once.
    url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// A hosted sign-in link (the mailbox's owner or an admin): the host application sends its
/// own user to it; the user consents at the provider and lands on `return_url` with the
/// outcome. Single-use, valid for 30 minutes.
#[utoipa::path(post, path = "/mailboxes/{id}/sign-in-link", tag = "sign-in", request_body = LinkRequest,
    security(("bearer" = [])), params(("id" = String, Path, description = "mailbox id")),
    responses((status = 201, body = LinkView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the profile does not use OAuth, or Gmail sign-in is turned off"),
        (status = 422, body = ErrorBody, description = "return_url is missing or not among the allowed_return_urls")))]
async fn create_link(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<LinkView>), ApiError> {
    let mailbox = visible_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?;
    require_sign_in_offered(&state, &mailbox).await?;
    let raw = request.return_url.ok_or_else(|| {
        ApiError::invalid(
            "return_url",
            "return_url is required: where to send the user when the sign-in is over",
        )
    })?;
    let return_url = allowed_return_url(&state, &raw)?;
    let (token, expires_at) = state
        .signin
        .create_link(&caller.0, &mailbox, &return_url)
        .await
        .map_err(api_error)?;
    let url = format!(
        "{}/sign-in/{token}",
        state.config.public_base_url.as_str().trim_end_matches('/')
    );
    Ok((StatusCode::CREATED, Json(LinkView { url, expires_at })))
}

/// `raw` as a return URL, if it starts with one of the allowed ones: the same scheme, host
/// and port, and a path at or under the allowed one's — so a link can never send a user to
/// a site the operator did not list (no open redirect).
fn allowed_return_url(state: &AppState, raw: &str) -> Result<Url, ApiError> {
    let allowed = &state.config.allowed_return_urls;
    if allowed.is_empty() {
        return Err(ApiError::invalid(
            "return_url",
            "no return URL is allowed on this installation; an operator lists the host application's addresses in the allowed_return_urls setting",
        ));
    }
    let url = Url::parse(raw.trim())
        .map_err(|e| ApiError::invalid("return_url", format!("'{raw}' is not a URL ({e})")))?;
    let fits = |a: &Url| {
        a.scheme() == url.scheme()
            && a.host() == url.host()
            && a.port_or_known_default() == url.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && (url.path() == a.path().trim_end_matches('/')
                || url
                    .path()
                    .starts_with(&format!("{}/", a.path().trim_end_matches('/'))))
    };
    if allowed.iter().any(fits) {
        Ok(url)
    } else {
        Err(ApiError::invalid(
            "return_url",
            format!(
                "'{raw}' is not among the allowed return URLs ({}); use one of them, or ask an operator to add it to allowed_return_urls",
                allowed
                    .iter()
                    .map(Url::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// Opens a hosted sign-in link: on to the provider's consent page, or back to the host
/// application with why not; a link nobody made gets a page saying so.
async fn open_link(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.signin.open_link(&token).await {
        Ok(consent) => Redirect::to(consent.as_str()).into_response(),
        Err(LinkRefused::Back { to, code, message }) => {
            Redirect::to(to.with_outcome(Err((code, &message))).as_str()).into_response()
        }
        Err(LinkRefused::Unknown) => page(
            StatusCode::NOT_FOUND,
            "This sign-in link is not valid",
            "The link is not one Mailbridge made (mistyped, or cut short). Go back to the application that sent you and start again.",
            ("/console", "Mailbridge"),
        ),
        Err(LinkRefused::Failed(e)) => {
            tracing::error!(error = %e, "cannot open a sign-in link");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in did not start",
                "Something went wrong here; go back to the application that sent you and try again.",
                ("/console", "Mailbridge"),
            )
        }
    }
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
    require_sign_in_offered(state, &mailbox).await?;
    state
        .signin
        .start(&caller.0, &mailbox)
        .await
        .map_err(api_error)
}

/// Sign-in with Gmail or Microsoft may be turned off on an installation.
async fn require_sign_in_offered(
    state: &AppState,
    mailbox: &mailbridge_store::MailboxRecord,
) -> Result<(), ApiError> {
    let profile = state.store.get_profile(mailbox.spec.profile_id).await?;
    if let Some(off) = state.config.sign_in_turned_off(profile.spec.auth) {
        return Err(ApiError::new(StatusCode::CONFLICT, "feature_disabled", off));
    }
    Ok(())
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
    let (result, back) = state.signin.finish_returning(answer).await;
    if let Some(back) = back {
        let to = match &result {
            Ok(_) => back.with_outcome(Ok(())),
            Err(e) => {
                tracing::info!(error = %e, "hosted sign-in refused");
                back.with_outcome(Err((e.code(), &e.to_string())))
            }
        };
        return Redirect::to(to.as_str()).into_response();
    }
    match result {
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
        SignInError::NoSignInNeeded(_) => {
            ApiError::new(StatusCode::CONFLICT, "no_sign_in_needed", e.to_string())
        }
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
