//! `/server-profiles`: email server profiles (admin only). The client secret is write-only:
//! responses say whether one is set, never what it is.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use mailbridge_core::{
    AuthMethod, IncomingServer, OutgoingServer, ProfileDraft, ProfileId, ProfileSpec, SecretChange,
    Security, Stored, UserId, ValidationError,
};
use mailbridge_store::ProfileRecord;

use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/server-profiles", post(create).get(list))
        .route(
            "/server-profiles/{id}",
            get(show).patch(update).delete(remove),
        )
        .route(
            "/server-profiles/{id}/test-and-enable",
            post(test_and_enable),
        )
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OAuthView {
    client_id: String,
    /// Whether a client secret is stored (the secret itself is never returned).
    client_secret_set: bool,
    authorization_url: String,
    token_url: String,
    revocation_url: Option<String>,
    userinfo_url: Option<String>,
    scopes: Vec<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileView {
    id: ProfileId,
    name: String,
    incoming: IncomingServer,
    outgoing: OutgoingServer,
    auth: AuthMethod,
    oauth: Option<OAuthView>,
    max_mailboxes: u32,
    /// Connections open at once over all the profile's mailboxes.
    max_connections: u32,
    /// How many mailboxes use this profile now.
    mailbox_count: i64,
    poll_interval_seconds: u32,
    process_emails_received_after: Option<NaiveDate>,
    /// Emails each mailbox may queue within 24 hours.
    daily_send_limit: u32,
    /// Emails each mailbox may have waiting to be sent at once.
    max_queued_emails: u32,
    /// Emails each mailbox sends per minute at most (0: no limit).
    sends_per_minute: u32,
    /// IMAP folders synchronized besides INBOX and the Sent folder.
    folders: Vec<String>,
    /// Whether a copy of each email sent is filed in the Sent folder (IMAP APPEND).
    append_sent: bool,
    owner_user_id: Option<UserId>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ProfileRecord> for ProfileView {
    fn from(p: ProfileRecord) -> Self {
        let has_secret = p.has_client_secret;
        Self {
            id: p.id,
            name: p.spec.name,
            incoming: p.spec.incoming,
            outgoing: p.spec.outgoing,
            auth: p.spec.auth,
            oauth: p.spec.oauth.map(|o| OAuthView {
                client_id: o.client_id,
                client_secret_set: has_secret,
                authorization_url: o.authorization_url.to_string(),
                token_url: o.token_url.to_string(),
                revocation_url: o.revocation_url.map(|u| u.to_string()),
                userinfo_url: o.userinfo_url.map(|u| u.to_string()),
                scopes: o.scopes,
            }),
            max_mailboxes: p.spec.max_mailboxes,
            max_connections: p.spec.max_connections,
            mailbox_count: p.mailbox_count,
            poll_interval_seconds: p.spec.poll_interval_seconds,
            process_emails_received_after: p.spec.process_emails_received_after,
            daily_send_limit: p.spec.daily_send_limit,
            max_queued_emails: p.spec.max_queued_emails,
            sends_per_minute: p.spec.sends_per_minute,
            folders: p.spec.folders,
            append_sent: p.spec.append_sent,
            owner_user_id: p.owner_user_id,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Creates a profile. `"preset": "gmail"` fills Gmail's servers, Google's OAuth endpoints,
/// the `https://mail.google.com/` scope and the 100-mailbox limit; give `name` and `oauth`
/// `client_id` / `client_secret`.
#[utoipa::path(post, path = "/server-profiles", tag = "server profiles",
    request_body = ProfileDraft, security(("bearer" = [])),
    responses((status = 201, body = ProfileView), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(draft): ApiJson<ProfileDraft>,
) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    let profile = create_profile(&state, &caller, draft).await?;
    Ok((StatusCode::CREATED, Json(profile.into())))
}

/// Validates a draft and creates the profile: the one path for the API and the console.
pub(crate) async fn create_profile(
    state: &AppState,
    caller: &Caller,
    draft: ProfileDraft,
) -> Result<ProfileRecord, ApiError> {
    caller.require_admin("manage email server profiles")?;
    let (spec, secret) = draft.resolve(None)?;
    refuse_plaintext(state, &spec)?;
    refuse_unusable_key(&spec, &secret)?;
    Ok(state
        .store
        .create_profile(&caller.actor(), &spec, secret)
        .await?)
}

#[utoipa::path(get, path = "/server-profiles", tag = "server profiles",
    security(("bearer" = [])),
    responses((status = 200, body = [ProfileView]), (status = 403, body = ErrorBody)))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<ProfileView>>, ApiError> {
    caller.require_admin("manage email server profiles")?;
    let profiles = state.store.list_profiles().await?;
    Ok(Json(profiles.into_iter().map(ProfileView::from).collect()))
}

#[utoipa::path(get, path = "/server-profiles/{id}", tag = "server profiles",
    security(("bearer" = [])), params(("id" = String, Path, description = "profile id")),
    responses((status = 200, body = ProfileView), (status = 404, body = ErrorBody)))]
async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProfileView>, ApiError> {
    caller.require_admin("manage email server profiles")?;
    let profile = state
        .store
        .get_profile(path_id(&id, "server profile")?)
        .await?;
    Ok(Json(profile.into()))
}

/// Changes the named fields; everything else stays. A new `client_secret` replaces the old.
#[utoipa::path(patch, path = "/server-profiles/{id}", tag = "server profiles",
    request_body = ProfileDraft, security(("bearer" = [])),
    params(("id" = String, Path, description = "profile id")),
    responses((status = 200, body = ProfileView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(draft): ApiJson<ProfileDraft>,
) -> Result<Json<ProfileView>, ApiError> {
    let profile = update_profile(&state, &caller, path_id(&id, "server profile")?, draft).await?;
    Ok(Json(profile.into()))
}

/// Applies a draft over the stored profile: the one path for the API and the console.
pub(crate) async fn update_profile(
    state: &AppState,
    caller: &Caller,
    id: ProfileId,
    draft: ProfileDraft,
) -> Result<ProfileRecord, ApiError> {
    caller.require_admin("manage email server profiles")?;
    let current = state.store.get_profile(id).await?;
    let (spec, secret) = draft.resolve(Some(Stored {
        spec: &current.spec,
        has_client_secret: current.has_client_secret,
    }))?;
    refuse_plaintext(state, &spec)?;
    refuse_unusable_key(&spec, &secret)?;
    Ok(state
        .store
        .update_profile(&caller.actor(), id, &spec, secret)
        .await?)
}

/// A service account's key must be one this service can sign with: checked when it is given,
/// not at the first Test & Enable.
fn refuse_unusable_key(spec: &ProfileSpec, secret: &SecretChange) -> Result<(), ApiError> {
    match (spec.auth, secret) {
        (AuthMethod::GoogleServiceAccount, SecretChange::Set(key)) => {
            mailbridge_sync::ServiceAccount::from_json(key)
                .map(drop)
                .map_err(|why| ValidationError::new("oauth.service_account_key", why).into())
        }
        _ => Ok(()),
    }
}

/// `security: none` sends passwords and tokens in clear: only to this machine, or to hosts
/// the operator listed in `plaintext_mail_hosts`.
fn refuse_plaintext(state: &AppState, spec: &ProfileSpec) -> Result<(), ApiError> {
    for (side, host, security) in [
        ("incoming", &spec.incoming.host, spec.incoming.security),
        ("outgoing", &spec.outgoing.host, spec.outgoing.security),
    ] {
        if security == Security::None && !state.mail_tls.plaintext_allowed(host.as_str()) {
            return Err(ApiError::invalid(
                &format!("{side}.security"),
                format!(
                    "security none would send passwords and tokens to {host} in clear; use tls or starttls (none is allowed only for this machine, or for hosts an operator lists in the plaintext_mail_hosts setting)"
                ),
            ));
        }
    }
    Ok(())
}

/// Deletes a profile that serves no mailbox.
#[utoipa::path(delete, path = "/server-profiles/{id}", tag = "server profiles",
    security(("bearer" = [])), params(("id" = String, Path, description = "profile id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("manage email server profiles")?;
    state
        .store
        .delete_profile(&caller.actor(), path_id(&id, "server profile")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileTestView {
    tested: usize,
    enabled: usize,
    failed: usize,
    mailboxes: Vec<crate::routes::mailboxes::MailboxView>,
}

/// Runs Test & Enable for every mailbox of the profile, concurrently within the profile's
/// `max_connections`, and reports a summary.
#[utoipa::path(post, path = "/server-profiles/{id}/test-and-enable", tag = "server profiles",
    security(("bearer" = [])), params(("id" = String, Path, description = "profile id")),
    responses((status = 200, body = ProfileTestView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many Test & Enable runs at once; see Retry-After")))]
async fn test_and_enable(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProfileTestView>, ApiError> {
    caller.require_admin("test every mailbox of a profile")?;
    let _run = state.test_runs.try_start()?;
    let summary = state
        .tester
        .test_profile(&caller.actor(), path_id(&id, "server profile")?)
        .await?;
    Ok(Json(ProfileTestView {
        tested: summary.tested,
        enabled: summary.enabled,
        failed: summary.failed,
        mailboxes: crate::routes::mailboxes::views(&state, summary.mailboxes).await?,
    }))
}
