//! `/mailboxes`: admins create and delete mailboxes for users; a user sees and tunes only
//! their own.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::{
    AuthMethod, ConnectionStatus, DeliveryMethod, MailboxDraft, MailboxId, MailboxSpec, ProfileId,
    SecretChange, SignInStatus, TrackingRule, UserId,
};
use mailbridge_store::{AlertRecord, FolderProgress, MailboxRecord, StoreError};

use super::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::query::ApiQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/mailboxes", post(create).get(list))
        .route("/mailboxes/{id}", get(show).patch(update).delete(remove))
        .route("/mailboxes/{id}/alerts", get(alerts))
        .route("/alerts", get(my_alerts))
        .route("/alerts/{alert_id}/dismiss", post(dismiss_my_alert))
        .route("/mailboxes/{id}/test-and-enable", post(test_and_enable))
        .route(
            "/mailboxes/{id}/alerts/{alert_id}/dismiss",
            post(dismiss_alert),
        )
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct MailboxView {
    id: MailboxId,
    owner_user_id: UserId,
    email: String,
    profile_id: ProfileId,
    incoming_method: DeliveryMethod,
    outgoing_method: DeliveryMethod,
    tracking_rule: TrackingRule,
    /// Result of the last incoming test: `not_run`, `success` or `failure`.
    incoming_status: ConnectionStatus,
    /// Why the last incoming test failed, in the server's words.
    incoming_status_reason: Option<String>,
    /// What to do about it.
    incoming_status_hint: Option<String>,
    incoming_tested_at: Option<DateTime<Utc>>,
    /// Result of the last outgoing test: `not_run`, `success` or `failure`.
    outgoing_status: ConnectionStatus,
    outgoing_status_reason: Option<String>,
    outgoing_status_hint: Option<String>,
    outgoing_tested_at: Option<DateTime<Utc>>,
    /// With `email_router`: the node group that works this mailbox.
    router_group: Option<String>,
    /// IMAP folders synchronized for this mailbox besides INBOX, Sent and its profile's
    /// `folders`.
    extra_folders: Vec<String>,
    /// The node last granted this mailbox's lease: it works the mailbox while
    /// `lease_expires_at` is in the future.
    worked_by: Option<String>,
    /// When that lease ends unless renewed.
    lease_expires_at: Option<DateTime<Utc>>,
    /// Password profiles: the login, when it is not the address.
    login_name: Option<String>,
    /// Password profiles: whether a password is stored (it is never returned).
    password_set: bool,
    /// When the engine last finished a pass over this mailbox that stored something or failed.
    last_sync_at: Option<DateTime<Utc>>,
    /// When the mailbox was last known current: a pass that ended without error, new mail
    /// or not (written every 15 s by the node that works it).
    current_at: Option<DateTime<Utc>>,
    /// Seconds since `current_at`: how far behind the server the mailbox may be.
    lag_seconds: Option<i64>,
    /// Email records stored so far.
    items_processed: i64,
    /// Failed sync attempts so far.
    items_failed: i64,
    /// The last sync failure, cleared by the next successful pass.
    last_sync_error: Option<String>,
    /// The provider said the account is over one of its limits (Gmail's daily download
    /// allowance): sync waits until then, resumes on its own, and is not counted as failing.
    paused_until: Option<DateTime<Utc>>,
    /// Synchronized only when enabled (after a successful Test & Enable).
    enabled: bool,
    /// The folders synced, each with how far its last pass is (a first sync of a large
    /// mailbox takes minutes: this is its progress).
    folders: Vec<FolderView>,
    /// `not_signed_in`, `signed_in`, or `needs_sign_in` (the provider refused the grant).
    sign_in_status: SignInStatus,
    /// The account whose tokens are stored.
    signed_in_as: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A synced folder and its last pass.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FolderView {
    folder: String,
    /// Messages in the folder on the server when the last pass began.
    messages_on_server: Option<u32>,
    /// Messages the last pass set out to read (new since the pass before).
    pass_total: Option<u32>,
    /// Of them, read so far; equal to `pass_total` once the pass is done.
    pass_done: Option<u32>,
    /// While a pass is under way: the seconds it should still take, at its rate so far.
    seconds_left: Option<u64>,
    /// When the pass began.
    pass_started_at: Option<DateTime<Utc>>,
    /// When it last stored a batch, or ended.
    updated_at: DateTime<Utc>,
    /// Why the folder's last pass failed (deleted, renamed, refused by the server); it is
    /// skipped until it works again, and the other folders go on.
    error: Option<String>,
    /// Since when it fails.
    failing_since: Option<DateTime<Utc>>,
}

impl From<FolderProgress> for FolderView {
    fn from(f: FolderProgress) -> Self {
        let seconds_left = f.seconds_left();
        Self {
            folder: f.folder,
            messages_on_server: f.pass.map(|p| p.messages),
            pass_total: f.pass.map(|p| p.total),
            pass_done: f.pass.map(|p| p.done),
            seconds_left,
            pass_started_at: f.pass.map(|p| p.started_at),
            updated_at: f.updated_at,
            error: f.error,
            failing_since: f.failing_since,
        }
    }
}

/// The views of `mailboxes`, each with its folders (read in one query).
pub(crate) async fn views(
    state: &AppState,
    mailboxes: Vec<MailboxRecord>,
) -> Result<Vec<MailboxView>, ApiError> {
    let ids: Vec<MailboxId> = mailboxes.iter().map(|m| m.id).collect();
    let mut folders = state.store.folder_progress(&ids).await?;
    Ok(mailboxes
        .into_iter()
        .map(|m| {
            let f = folders.remove(&m.id).unwrap_or_default();
            MailboxView::new(m, f, state.store.now())
        })
        .collect())
}

/// The view of one mailbox, with its folders.
async fn view(state: &AppState, mailbox: MailboxRecord) -> Result<MailboxView, ApiError> {
    let folders = state
        .store
        .folder_progress(&[mailbox.id])
        .await?
        .remove(&mailbox.id)
        .unwrap_or_default();
    Ok(MailboxView::new(mailbox, folders, state.store.now()))
}

impl MailboxView {
    fn new(m: MailboxRecord, folders: Vec<FolderProgress>, now: DateTime<Utc>) -> Self {
        Self {
            id: m.id,
            owner_user_id: m.spec.owner_user_id,
            email: m.spec.email.to_string(),
            profile_id: m.spec.profile_id,
            incoming_method: m.spec.incoming_method,
            outgoing_method: m.spec.outgoing_method,
            tracking_rule: m.spec.tracking_rule,
            incoming_status: m.incoming.status,
            incoming_status_reason: m.incoming.reason,
            incoming_status_hint: m.incoming.hint,
            incoming_tested_at: m.incoming.tested_at,
            outgoing_status: m.outgoing.status,
            outgoing_status_reason: m.outgoing.reason,
            outgoing_status_hint: m.outgoing.hint,
            outgoing_tested_at: m.outgoing.tested_at,
            router_group: m.spec.router_group,
            extra_folders: m.spec.extra_folders,
            worked_by: m.lease.clone().map(|(node, _)| node),
            lease_expires_at: m.lease.map(|(_, until)| until),
            login_name: m.spec.login_name,
            password_set: m.password_set,
            last_sync_at: m.sync.last_sync_at,
            current_at: m.sync.current_at,
            lag_seconds: m.sync.current_at.map(|t| (now - t).num_seconds().max(0)),
            items_processed: m.sync.items_processed,
            items_failed: m.sync.items_failed,
            last_sync_error: m.sync.last_error,
            paused_until: m.sync.paused_until,
            enabled: m.enabled,
            folders: folders.into_iter().map(Into::into).collect(),
            sign_in_status: m.sign_in_status,
            signed_in_as: m.signed_in_as,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Admins only: the mailboxes of this user.
    #[param(format = Uuid)]
    owner_user_id: Option<String>,
}

/// Creates a mailbox (admin). It starts disabled with both statuses `not_run`.
#[utoipa::path(post, path = "/mailboxes", tag = "mailboxes", request_body = MailboxDraft,
    security(("bearer" = [])),
    responses((status = 201, body = MailboxView),
        (status = 409, body = ErrorBody, description = "the profile is full, or the address has a mailbox"),
        (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(draft): ApiJson<MailboxDraft>,
) -> Result<(StatusCode, Json<MailboxView>), ApiError> {
    let mailbox = create_mailbox(&state, &caller, &draft).await?;
    Ok((StatusCode::CREATED, Json(view(&state, mailbox).await?)))
}

/// Validates a draft and creates the mailbox: the one path for the API and the console.
pub(crate) async fn create_mailbox(
    state: &AppState,
    caller: &Caller,
    draft: &MailboxDraft,
) -> Result<MailboxRecord, ApiError> {
    caller.require_admin("create mailboxes")?;
    let spec = draft.resolve(None, caller.0.id)?;
    let password = password_for(state, draft, &spec).await?;
    Ok(state
        .store
        .create_mailbox(&caller.actor(), &spec, password)
        .await?)
}

/// A mailbox the caller may see (its owner, or an admin).
pub(crate) async fn visible_mailbox(
    state: &AppState,
    caller: &Caller,
    id: MailboxId,
) -> Result<MailboxRecord, ApiError> {
    let mailbox = state.store.get_mailbox(id).await?;
    caller.require_owner_or_admin(mailbox.spec.owner_user_id)?;
    Ok(mailbox)
}

/// Admins see every mailbox (or one user's); a user sees their own.
#[utoipa::path(get, path = "/mailboxes", tag = "mailboxes", params(ListQuery),
    security(("bearer" = [])), responses((status = 200, body = [MailboxView])))]
async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<MailboxView>>, ApiError> {
    let owner =
        match (caller.is_admin(), q.owner_user_id) {
            (true, Some(o)) => Some(o.parse::<UserId>().map_err(|_| {
                ApiError::invalid("owner_user_id", format!("'{o}' is not a user id"))
            })?),
            (true, None) => None,
            (false, Some(o)) if o != caller.0.id.to_string() => {
                return Err(ApiError::forbidden(
                    "you can list only your own mailboxes; leave out owner_user_id",
                ));
            }
            (false, _) => Some(caller.0.id),
        };
    let mailboxes = state.store.list_mailboxes(owner).await?;
    Ok(Json(views(&state, mailboxes).await?))
}

#[utoipa::path(get, path = "/mailboxes/{id}", tag = "mailboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "mailbox id")),
    responses((status = 200, body = MailboxView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn show(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MailboxView>, ApiError> {
    let mailbox = visible_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?;
    Ok(Json(view(&state, mailbox).await?))
}

/// Changes the named fields. A user may change delivery methods and the tracking rule of
/// their own mailbox; owner, address and profile are for admins. A new address or profile
/// disables the mailbox until it is tested again, and ends its sign-in (the grant is revoked
/// at the provider that issued it): the new account must sign in.
#[utoipa::path(patch, path = "/mailboxes/{id}", tag = "mailboxes", request_body = MailboxDraft,
    security(("bearer" = [])), params(("id" = String, Path, description = "mailbox id")),
    responses((status = 200, body = MailboxView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(draft): ApiJson<MailboxDraft>,
) -> Result<Json<MailboxView>, ApiError> {
    let mailbox = update_mailbox(&state, &caller, path_id(&id, "mailbox")?, &draft).await?;
    Ok(Json(view(&state, mailbox).await?))
}

/// Applies a draft over the stored mailbox, keeping owner, address and profile for admins:
/// the one path for the API and the console.
pub(crate) async fn update_mailbox(
    state: &AppState,
    caller: &Caller,
    id: MailboxId,
    draft: &MailboxDraft,
) -> Result<MailboxRecord, ApiError> {
    let current = visible_mailbox(state, caller, id).await?;
    if !caller.is_admin()
        && let Some(field) = draft.admin_only_field()
    {
        return Err(ApiError::forbidden(format!(
            "only admins can change {field}; you can change incoming_method, outgoing_method and tracking_rule"
        ))
        .with_field(field));
    }
    let spec = draft.resolve(Some(&current.spec), caller.0.id)?;
    let password = password_for(state, draft, &spec).await?;
    let (updated, dropped) = state
        .store
        .update_mailbox(&caller.actor(), id, &spec, password)
        .await?;
    if let Some(tokens) = dropped {
        // The grant was for the old address or the old profile's client: give it back there.
        match state.signin.revoke(current.spec.profile_id, &tokens).await {
            Ok(outcome) => {
                tracing::info!(mailbox = %id, ?outcome, "address or profile changed; sign-in removed")
            }
            Err(e) => {
                tracing::warn!(mailbox = %id, error = %e, "address or profile changed; sign-in removed here, but not revoked at the provider")
            }
        }
    }
    Ok(updated)
}

/// Deletes a mailbox (admin).
#[utoipa::path(delete, path = "/mailboxes/{id}", tag = "mailboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "mailbox id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("delete mailboxes")?;
    state
        .store
        .delete_mailbox(&caller.actor(), path_id(&id, "mailbox")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A password is only for mailboxes on password profiles.
async fn password_for(
    state: &AppState,
    draft: &MailboxDraft,
    spec: &MailboxSpec,
) -> Result<SecretChange, ApiError> {
    let change = draft.password_change()?;
    if matches!(change, SecretChange::Set(_)) {
        let profile = state
            .store
            .get_profile(spec.profile_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => ApiError::invalid(
                    "profile_id",
                    format!("server profile {} does not exist", spec.profile_id),
                ),
                other => other.into(),
            })?;
        if profile.spec.auth != AuthMethod::Password {
            return Err(ApiError::invalid(
                "password",
                format!(
                    "server profile '{}' signs in with OAuth, so its mailboxes have no password; use Sign in instead",
                    profile.spec.name
                ),
            ));
        }
    }
    Ok(change)
}

/// Tests both directions of a mailbox (its owner or an admin) and enables it when every
/// direction that uses server-side synchronization succeeded. The answer is the mailbox
/// with each direction's status, the server's reason, and what to do.
#[utoipa::path(post, path = "/mailboxes/{id}/test-and-enable", tag = "mailboxes",
    security(("bearer" = [])), params(("id" = String, Path, description = "mailbox id")),
    responses((status = 200, body = MailboxView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many Test & Enable runs at once; see Retry-After")))]
async fn test_and_enable(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MailboxView>, ApiError> {
    let tested = test_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?;
    Ok(Json(view(&state, tested).await?))
}

/// Test & Enable for one mailbox the caller may see: the one path for the API and the console.
pub(crate) async fn test_mailbox(
    state: &AppState,
    caller: &Caller,
    id: MailboxId,
) -> Result<MailboxRecord, ApiError> {
    let mailbox = visible_mailbox(state, caller, id).await?;
    let _run = state.test_runs.try_start()?;
    Ok(state
        .tester
        .test_mailbox(&caller.actor(), mailbox.id)
        .await?)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Also list dismissed alerts.
    #[serde(default)]
    all: bool,
}

/// What went wrong with a mailbox and what to do, newest first (open ones unless `all`).
#[utoipa::path(get, path = "/mailboxes/{id}/alerts", tag = "mailboxes", security(("bearer" = [])),
    params(("id" = String, Path, description = "mailbox id"), AlertsQuery),
    responses((status = 200, body = [AlertRecord]), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn alerts(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<Json<Vec<AlertRecord>>, ApiError> {
    let mailbox = visible_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?;
    Ok(Json(state.store.mailbox_alerts(mailbox.id, q.all).await?))
}

/// The caller's own alerts: about their mailboxes, and about the profiles they own (e.g. most
/// of a profile's mailboxes failing within an hour).
#[utoipa::path(get, path = "/alerts", tag = "mailboxes", security(("bearer" = [])), params(AlertsQuery),
    responses((status = 200, body = [AlertRecord])))]
async fn my_alerts(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<Json<Vec<AlertRecord>>, ApiError> {
    Ok(Json(state.store.user_alerts(caller.0.id, q.all).await?))
}

/// Dismisses one of the caller's own alerts (about a mailbox or a whole profile).
#[utoipa::path(post, path = "/alerts/{alert_id}/dismiss", tag = "mailboxes",
    security(("bearer" = [])),
    params(("alert_id" = String, Path, description = "alert id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn dismiss_my_alert(
    caller: Caller,
    State(state): State<AppState>,
    Path(alert_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .dismiss_user_alert(caller.0.id, &alert_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Dismisses an alert of a mailbox (its owner or an admin).
#[utoipa::path(post, path = "/mailboxes/{id}/alerts/{alert_id}/dismiss", tag = "mailboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "mailbox id"), ("alert_id" = String, Path, description = "alert id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn dismiss_alert(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, alert_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let mailbox = visible_mailbox(&state, &caller, path_id(&id, "mailbox")?).await?;
    state.store.dismiss_alert(mailbox.id, &alert_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
