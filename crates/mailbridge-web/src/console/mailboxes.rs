//! Settings › Email configuration › Mailboxes: the list with each direction's status, the
//! mailbox page (Sign in to Gmail, Test & Enable Mailbox with each side's result and what
//! to do, disconnect, alerts, recent tracked email), and the mailbox form.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use mailbridge_core::{
    ConnectionStatus, DeliveryMethod, MailboxDraft, MailboxId, ProfileId, SignInStatus,
    TrackingRule, UserId,
};
use mailbridge_store::{FolderProgress, MailboxRecord, ProfileRecord, TestOutcome, UserRecord};

use super::form::{Choice, Field, FieldErrors, FormValues, Group, sentence};
use super::profiles::auth_label;
use super::{Done, Layout, PageError, PageQuery, PageResult, Viewer, path_id, render, see_other};
use crate::AppState;
use crate::routes::mailboxes::{create_mailbox, test_mailbox, update_mailbox, visible_mailbox};
use crate::routes::oauth::{disconnect_mailbox, start_sign_in};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/mailboxes", get(list))
        .route("/console/mailboxes/new", get(new_form).post(create))
        .route("/console/mailboxes/{id}", get(show))
        .route("/console/mailboxes/{id}/edit", get(edit_form).post(update))
        .route("/console/mailboxes/{id}/gmail-sign-in", post(sign_in))
        .route("/console/mailboxes/{id}/test-and-enable", post(test))
        .route("/console/mailboxes/{id}/disconnect", post(disconnect))
        .route("/console/mailboxes/{id}/delete", post(delete))
}

/// A status as a badge: its words and its colour class.
pub struct Badge {
    pub text: &'static str,
    pub class: &'static str,
}

fn status_badge(method: DeliveryMethod, outcome: &TestOutcome) -> Badge {
    match (method, outcome.status) {
        (DeliveryMethod::None, _) => Badge {
            text: "Off",
            class: "muted",
        },
        (_, ConnectionStatus::Success) => Badge {
            text: "Success",
            class: "good",
        },
        (_, ConnectionStatus::Failure) => Badge {
            text: "Failure",
            class: "bad",
        },
        (_, ConnectionStatus::NotRun) => Badge {
            text: "Not tested",
            class: "muted",
        },
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// The mailbox if the viewer may see it; else a page saying why.
async fn visible(viewer: &Viewer, state: &AppState, raw: &str) -> Result<MailboxRecord, PageError> {
    visible_mailbox(state, &viewer.caller, path_id(raw, "mailbox")?)
        .await
        .map_err(|e| PageError::from(e).with_viewer(viewer))
}

struct MailboxRow {
    id: String,
    email: String,
    owner: String,
    profile: String,
    incoming: Badge,
    outgoing: Badge,
    enabled: bool,
    last_sync: String,
    alerts: usize,
}

#[derive(Template)]
#[template(path = "mailboxes.html")]
struct MailboxesPage {
    title: &'static str,
    layout: Option<Layout>,
    admin: bool,
    mailboxes: Vec<MailboxRow>,
}

async fn list(
    viewer: Viewer,
    State(state): State<AppState>,
    PageQuery(q): PageQuery<Done>,
) -> PageResult {
    let admin = viewer.is_admin();
    let owner = (!admin).then_some(viewer.caller.0.id);
    let mailboxes = state.store.list_mailboxes(owner).await?;
    let profiles: BTreeMap<ProfileId, String> = state
        .store
        .list_profiles()
        .await?
        .into_iter()
        .map(|p| (p.id, p.spec.name))
        .collect();
    let owners: BTreeMap<UserId, String> = if admin {
        state
            .store
            .list_users()
            .await?
            .into_iter()
            .map(|u| (u.id, u.email.to_string()))
            .collect()
    } else {
        BTreeMap::new()
    };
    // One query for every row's alert count, not one per mailbox.
    let alert_counts = state.store.open_alert_counts().await?;
    let mut rows = Vec::with_capacity(mailboxes.len());
    for m in mailboxes {
        let alerts = alert_counts.get(&m.id).copied().unwrap_or(0);
        rows.push(MailboxRow {
            id: m.id.to_string(),
            owner: owners
                .get(&m.spec.owner_user_id)
                .cloned()
                .unwrap_or_default(),
            profile: profiles
                .get(&m.spec.profile_id)
                .cloned()
                .unwrap_or_default(),
            incoming: status_badge(m.spec.incoming_method, &m.incoming),
            outgoing: status_badge(m.spec.outgoing_method, &m.outgoing),
            enabled: m.enabled,
            last_sync: when(m.sync.last_sync_at),
            alerts,
            email: m.spec.email.to_string(),
        });
    }
    let notice = match q.done.as_deref() {
        Some("deleted") => Some("The mailbox was deleted.".to_owned()),
        _ => None,
    };
    Ok(render(&MailboxesPage {
        title: if admin { "Mailboxes" } else { "My mailboxes" },
        layout: Some(viewer.layout(&state, "mailboxes").await.with_notice(notice)),
        admin,
        mailboxes: rows,
    }))
}

struct Side {
    key: &'static str,
    title: &'static str,
    method: &'static str,
    badge: Badge,
    reason: Option<String>,
    hint: Option<String>,
    tested_at: String,
}

fn side(
    key: &'static str,
    title: &'static str,
    method: DeliveryMethod,
    outcome: &TestOutcome,
) -> Side {
    Side {
        key,
        title,
        method: match method {
            DeliveryMethod::ServerSideSync => "Server-side synchronization",
            DeliveryMethod::EmailRouter => "Email Router (a node group inside the network)",
            DeliveryMethod::None => "Not synchronized",
        },
        badge: status_badge(method, outcome),
        reason: outcome.reason.clone(),
        hint: outcome.hint.clone(),
        tested_at: when(outcome.tested_at),
    }
}

struct AlertRow {
    id: String,
    message: String,
    hint: String,
    when: String,
}

/// A synced folder's last pass, in words, with a bar while it runs.
struct FolderRow {
    name: String,
    summary: String,
    /// While the pass runs: (read, to read).
    running: Option<(u32, u32)>,
}

impl From<FolderProgress> for FolderRow {
    fn from(f: FolderProgress) -> Self {
        let summary = match (f.pass, f.seconds_left()) {
            _ if f.error.is_some() => format!(
                "failing since {}: {} — skipped until it works again; the other folders go on",
                when(f.failing_since),
                f.error.as_deref().unwrap_or_default()
            ),
            (None, _) => format!("synced {}", when(Some(f.updated_at))),
            (Some(p), Some(left)) => format!(
                "{} of {} new messages read, about {} left ({} on the server)",
                p.done,
                p.total,
                duration_words(left),
                p.messages
            ),
            (Some(p), None) if p.done < p.total => format!(
                "{} of {} new messages read ({} on the server)",
                p.done, p.total, p.messages
            ),
            (Some(p), None) => format!(
                "up to date: {} message{} on the server, synced {}",
                p.messages,
                if p.messages == 1 { "" } else { "s" },
                when(Some(f.updated_at))
            ),
        };
        Self {
            running: f
                .pass
                .filter(|p| p.done < p.total)
                .map(|p| (p.done, p.total)),
            name: f.folder,
            summary,
        }
    }
}

/// "40 seconds", "3 minutes", "2 hours".
fn duration_words(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} seconds"),
        s if s < 90 * 60 => format!("{} minutes", s.div_ceil(60)),
        s => format!("{} hours", s.div_ceil(3600)),
    }
}

struct EmailRow {
    subject: String,
    party: String,
    direction: &'static str,
    when: String,
    status: String,
    /// On the server: "unread", "read", "read · flagged", "deleted on the server"; empty
    /// when not known.
    state: String,
}

#[derive(Template)]
#[template(path = "mailbox.html")]
struct MailboxPage {
    title: String,
    layout: Option<Layout>,
    csrf: String,
    id: String,
    email: String,
    owner: String,
    profile: String,
    auth: &'static str,
    /// The sign-in button, in the provider's words.
    sign_in_label: &'static str,
    /// Whether a service account gets the tokens (nobody signs in).
    delegated: bool,
    enabled: bool,
    is_oauth: bool,
    sign_in: &'static str,
    signed_in_as: Option<String>,
    /// Why the sign-in button is not there, when it is not.
    sign_in_note: Option<String>,
    can_sign_in: bool,
    can_disconnect: bool,
    admin: bool,
    /// Incoming, then outgoing.
    sides: Vec<Side>,
    last_sync: String,
    items_processed: i64,
    items_failed: i64,
    last_error: Option<String>,
    paused_until: Option<String>,
    folders: Vec<FolderRow>,
    alerts: Vec<AlertRow>,
    emails: Vec<EmailRow>,
}

async fn show(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    PageQuery(q): PageQuery<Done>,
) -> PageResult {
    let m = visible(&viewer, &state, &id).await?;
    let profile = state.store.get_profile(m.spec.profile_id).await?;
    let owner = state.store.get_user(m.spec.owner_user_id).await?;
    let is_owner = owner.id == viewer.caller.0.id;
    let is_oauth = profile.spec.auth.needs_sign_in();
    let turned_off = state.config.sign_in_turned_off(profile.spec.auth);
    let feature_on = turned_off.is_none();
    let sign_in_note = if !is_oauth {
        None
    } else if let Some(off) = turned_off {
        Some(format!("{off}."))
    } else if !is_owner {
        Some(format!(
            "Only the mailbox's owner, {}, can sign in: the account that signs in must be {}.",
            owner.email, m.spec.email
        ))
    } else {
        None
    };
    let alerts = state
        .store
        .mailbox_alerts(m.id, false)
        .await?
        .into_iter()
        .map(|a| AlertRow {
            id: a.id,
            message: sentence(&a.message),
            hint: sentence(&a.hint),
            when: when(Some(a.created_at)),
        })
        .collect();
    let notice = match q.done.as_deref() {
        Some("created") => {
            Some("The mailbox was created. Its owner can now sign in and test it.".to_owned())
        }
        Some("saved") => Some("Your changes were saved.".to_owned()),
        Some("tested") => Some(if m.enabled {
            "Test & Enable finished: the mailbox is enabled.".to_owned()
        } else {
            "Test & Enable finished: the mailbox is not enabled. See each side's result below."
                .to_owned()
        }),
        Some("disconnected") => Some(
            "The mailbox was signed out; it stays disabled until it is signed in and tested again."
                .to_owned(),
        ),
        Some("dismissed") => Some("The alert was dismissed.".to_owned()),
        _ => None,
    };
    let page = MailboxPage {
        title: m.spec.email.to_string(),
        layout: Some(viewer.layout(&state, "mailboxes").await.with_notice(notice)),
        csrf: viewer.csrf.clone(),
        id: m.id.to_string(),
        email: m.spec.email.to_string(),
        owner: owner.email.to_string(),
        auth: auth_label(profile.spec.auth),
        sign_in_label: profile.spec.auth.sign_in_label(),
        delegated: profile.spec.auth == mailbridge_core::AuthMethod::GoogleServiceAccount,
        profile: profile.spec.name.clone(),
        enabled: m.enabled,
        is_oauth,
        sign_in: match m.sign_in_status {
            SignInStatus::NotSignedIn => "Not signed in",
            SignInStatus::SignedIn => "Signed in",
            SignInStatus::NeedsSignIn => "Needs a new sign-in",
        },
        can_sign_in: is_oauth && feature_on && is_owner,
        can_disconnect: is_oauth && m.sign_in_status != SignInStatus::NotSignedIn,
        signed_in_as: m.signed_in_as.clone(),
        sign_in_note,
        admin: viewer.is_admin(),
        sides: vec![
            side(
                "incoming",
                "Incoming email",
                m.spec.incoming_method,
                &m.incoming,
            ),
            side(
                "outgoing",
                "Outgoing email",
                m.spec.outgoing_method,
                &m.outgoing,
            ),
        ],
        last_sync: when(m.sync.last_sync_at),
        items_processed: m.sync.items_processed,
        items_failed: m.sync.items_failed,
        last_error: m.sync.last_error.clone(),
        paused_until: m.sync.paused_until.map(|t| when(Some(t))),
        folders: state
            .store
            .folder_progress(&[m.id])
            .await?
            .remove(&m.id)
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect(),
        alerts,
        emails: recent_emails(&state, m.id).await?,
    };
    Ok(render(&page))
}

/// The newest tracked emails of a mailbox, newest first.
async fn recent_emails(state: &AppState, mailbox: MailboxId) -> Result<Vec<EmailRow>, PageError> {
    let emails = state.store.recent_emails(mailbox, 10).await?;
    Ok(emails
        .into_iter()
        .map(|e| {
            let incoming = e.direction == "incoming";
            let party = if incoming {
                e.from.map(|p| p.name.unwrap_or(p.address))
            } else {
                e.to.into_iter().next().map(|p| p.name.unwrap_or(p.address))
            };
            EmailRow {
                subject: e.subject.unwrap_or_else(|| "(no subject)".to_owned()),
                party: party.unwrap_or_default(),
                direction: if incoming { "Received" } else { "Sent" },
                when: when(e.sent_at.or(Some(e.created_at))),
                status: e.status.unwrap_or_default().replace('_', " "),
                state: match (e.deleted_on_server_at, e.flags) {
                    (Some(at), _) => format!("deleted on the server {}", when(Some(at))),
                    (None, Some(f)) => {
                        let mut words = vec![if f.seen { "read" } else { "unread" }];
                        if f.flagged {
                            words.push("flagged");
                        }
                        if f.answered {
                            words.push("answered");
                        }
                        words.join(" · ")
                    }
                    (None, None) => String::new(),
                },
            }
        })
        .collect())
}

async fn sign_in(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    let id = path_id(&id, "mailbox")?;
    let url = start_sign_in(&state, &viewer.caller, id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other(url.as_str()))
}

async fn test(viewer: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = path_id(&id, "mailbox")?;
    test_mailbox(&state, &viewer.caller, id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other(&format!("/console/mailboxes/{id}?done=tested")))
}

async fn disconnect(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    let id = path_id(&id, "mailbox")?;
    disconnect_mailbox(&state, &viewer.caller, id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other(&format!(
        "/console/mailboxes/{id}?done=disconnected"
    )))
}

async fn delete(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin("delete mailboxes")?;
    state
        .store
        .delete_mailbox(&viewer.caller.actor(), path_id(&id, "mailbox")?)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other("/console/mailboxes?done=deleted"))
}

#[derive(Template)]
#[template(path = "mailbox_form.html")]
struct MailboxFormPage {
    title: String,
    layout: Option<Layout>,
    csrf: String,
    action: String,
    cancel: String,
    submit: &'static str,
    groups: Vec<Group>,
    has_errors: bool,
    general_errors: Vec<String>,
    no_profiles: bool,
}

fn method_choices() -> Vec<Choice> {
    vec![
        Choice::new("server_side_sync", "Server-side synchronization"),
        Choice::new("email_router", "Email Router"),
        Choice::new("none", "None"),
    ]
}

fn tracking_label(t: TrackingRule) -> &'static str {
    match t {
        TrackingRule::All => "All email messages",
        TrackingRule::Responses => "Replies to email sent from the application",
        TrackingRule::KnownContacts => "Email from or to known contacts",
        TrackingRule::None => "No email messages",
    }
}

fn profile_choice(p: &ProfileRecord) -> Choice {
    Choice::new(
        p.id.to_string(),
        format!(
            "{} ({}, {} of {} used)",
            p.spec.name,
            auth_label(p.spec.auth),
            p.mailbox_count,
            p.spec.max_mailboxes
        ),
    )
}

/// The form's fields: admins set everything; a mailbox's user tunes delivery and tracking.
async fn groups(
    state: &AppState,
    admin: bool,
    v: &FormValues,
    e: &mut FieldErrors,
) -> Result<(Vec<Group>, bool), PageError> {
    let mut groups = Vec::new();
    let mut no_profiles = false;
    if admin {
        let users: Vec<UserRecord> = state.store.list_users().await?;
        let profiles = state.store.list_profiles().await?;
        no_profiles = profiles.is_empty();
        let mut profile_choices = vec![Choice::new("", "Choose a profile…")];
        profile_choices.extend(profiles.iter().map(profile_choice));
        let mut owner_choices = vec![Choice::new("", "Choose a user…")];
        owner_choices.extend(
            users
                .iter()
                .map(|u| Choice::new(u.id.to_string(), u.email.to_string())),
        );
        groups.push(Group::new(
            "Mailbox",
            vec![
                Field::select("owner_user_id", "Owner", owner_choices)
                    .required()
                    .help("The user who signs in to this mailbox and sees its mail.")
                    .from(v, e),
                Field::text("email", "Email address")
                    .kind("email")
                    .required()
                    .help("The address of the mailbox, e.g. ann@example.com.")
                    .from(v, e),
                Field::select("profile_id", "Email server profile", profile_choices)
                    .required()
                    .from(v, e),
            ],
        ));
    }
    groups.push(Group::new(
        "Synchronization",
        vec![
            Field::select("incoming_method", "Incoming email", method_choices()).from(v, e),
            Field::select("outgoing_method", "Outgoing email", method_choices()).from(v, e),
            Field::text("router_group", "Router group")
                .help("With Email Router: the node group (nodes started with MAILBRIDGE_NODE_GROUP set to it) that can reach this mail server, e.g. office-berlin.")
                .from(v, e),
            Field::text("extra_folders", "Other folders to synchronize")
                .help("Besides INBOX, the Sent folder and the profile's folders. Separate names with commas, e.g. Clients/Acme, Projects.")
                .from(v, e),
            Field::select(
                "tracking_rule",
                "Track",
                TrackingRule::ALL
                    .iter()
                    .map(|t| Choice::new(t.as_str(), tracking_label(*t)))
                    .collect(),
            )
            .help("Which incoming messages become email records in the application.")
            .from(v, e),
        ],
    ));
    if admin {
        groups.push(
            Group::new(
                "Password sign-in (password profiles only)",
                vec![
                    Field::text("login_name", "Login name")
                        .help("Only when the login is not the email address.")
                        .from(v, e),
                    Field::text("password", "Password")
                        .kind("password")
                        .autocomplete("new-password")
                        .help("Stored encrypted and never shown. Leave blank to keep the stored password.")
                        .from(v, e),
                ],
            )
            .collapsed(),
        );
    }
    Ok((groups, no_profiles))
}

async fn form_page(
    viewer: &Viewer,
    state: &AppState,
    mailbox: Option<&MailboxRecord>,
    values: &FormValues,
    mut errors: FieldErrors,
) -> PageResult {
    let (groups, no_profiles) = groups(state, viewer.is_admin(), values, &mut errors).await?;
    let general_errors = errors.rest();
    let has_errors = !general_errors.is_empty()
        || groups
            .iter()
            .any(|g| g.fields.iter().any(|f| f.error.is_some()));
    let (title, action, cancel, submit) = match mailbox {
        Some(m) => (
            format!("Edit {}", m.spec.email),
            format!("/console/mailboxes/{}/edit", m.id),
            format!("/console/mailboxes/{}", m.id),
            "Save changes",
        ),
        None => (
            "New mailbox".to_owned(),
            "/console/mailboxes/new".to_owned(),
            "/console/mailboxes".to_owned(),
            "Create mailbox",
        ),
    };
    let mut response = render(&MailboxFormPage {
        title,
        layout: Some(viewer.layout(state, "mailboxes").await),
        csrf: viewer.csrf.clone(),
        action,
        cancel,
        submit,
        groups,
        has_errors,
        general_errors,
        no_profiles,
    });
    if has_errors {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

fn values_of(m: &MailboxRecord) -> FormValues {
    let mut v = FormValues::default();
    v.set("owner_user_id", m.spec.owner_user_id.to_string());
    v.set("email", m.spec.email.to_string());
    v.set("profile_id", m.spec.profile_id.to_string());
    v.set("incoming_method", m.spec.incoming_method.as_str());
    v.set("outgoing_method", m.spec.outgoing_method.as_str());
    v.set("tracking_rule", m.spec.tracking_rule.as_str());
    v.set(
        "router_group",
        m.spec.router_group.clone().unwrap_or_default(),
    );
    v.set("login_name", m.spec.login_name.clone().unwrap_or_default());
    v.set("extra_folders", m.spec.extra_folders.join(", "));
    v
}

/// What the form sent as the API's draft; ids that do not parse are errors on their field.
fn draft_of(v: &FormValues, admin: bool, editing: bool, errors: &mut FieldErrors) -> MailboxDraft {
    let owner_user_id = if admin {
        v.pick::<UserId>("owner_user_id", "an owner", errors)
    } else {
        None
    };
    let profile_id = if admin {
        v.pick::<ProfileId>("profile_id", "a profile", errors)
    } else {
        None
    };
    if admin && owner_user_id.is_none() && !editing {
        errors.add("owner_user_id", "choose the user who owns this mailbox");
    }
    MailboxDraft {
        owner_user_id,
        email: admin.then(|| v.opt("email")).flatten(),
        profile_id,
        incoming_method: v.word("incoming_method", errors),
        outgoing_method: v.word("outgoing_method", errors),
        tracking_rule: v.word("tracking_rule", errors),
        router_group: Some(v.get("router_group").to_owned()),
        extra_folders: (editing || v.opt("extra_folders").is_some())
            .then(|| v.list("extra_folders")),
        login_name: if admin && editing {
            Some(v.get("login_name").to_owned())
        } else if admin {
            v.opt("login_name")
        } else {
            None
        },
        password: if admin {
            v.opt("password").map(Into::into)
        } else {
            None
        },
    }
}

async fn new_form(viewer: Viewer, State(state): State<AppState>) -> PageResult {
    viewer.require_admin("create mailboxes")?;
    let mut v = FormValues::default();
    v.set("incoming_method", "server_side_sync");
    v.set("outgoing_method", "server_side_sync");
    v.set("tracking_rule", "all");
    form_page(&viewer, &state, None, &v, FieldErrors::default()).await
}

async fn create(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    viewer.require_admin("create mailboxes")?;
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let draft = draft_of(&values, true, false, &mut errors);
    if errors.is_empty() {
        match create_mailbox(&state, &viewer.caller, &draft).await {
            Ok(m) => {
                return Ok(see_other(&format!(
                    "/console/mailboxes/{}?done=created",
                    m.id
                )));
            }
            Err(e) => errors.api(&e),
        }
    }
    form_page(&viewer, &state, None, &values, errors).await
}

async fn edit_form(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    let m = visible(&viewer, &state, &id).await?;
    form_page(
        &viewer,
        &state,
        Some(&m),
        &values_of(&m),
        FieldErrors::default(),
    )
    .await
}

async fn update(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let m = visible(&viewer, &state, &id).await?;
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let draft = draft_of(&values, viewer.is_admin(), true, &mut errors);
    if errors.is_empty() {
        match update_mailbox(&state, &viewer.caller, m.id, &draft).await {
            Ok(m) => {
                return Ok(see_other(&format!(
                    "/console/mailboxes/{}?done=saved",
                    m.id
                )));
            }
            Err(e) => errors.api(&e),
        }
    }
    form_page(&viewer, &state, Some(&m), &values, errors).await
}
