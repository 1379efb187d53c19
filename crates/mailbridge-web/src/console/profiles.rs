//! Settings › Email configuration › Email server profiles (admins): the list with mailboxes
//! used and failing, the form (Gmail preset or any server) with what to register in the
//! Google Cloud console, edit, delete. The client secret is write-only here as in the API.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::NaiveDate;
use mailbridge_core::profile::{IncomingDraft, OAuthDraft, OutgoingDraft};
use mailbridge_core::{
    AuthMethod, ConnectionStatus, IncomingProtocol, OutgoingAuth, Preset, ProfileDraft, ProfileId,
    ProfileSpec, Security,
};
use mailbridge_store::ProfileRecord;

use super::form::{Choice, Field, FieldErrors, FormValues, Group};
use super::{Done, Layout, PageError, PageQuery, PageResult, Viewer, path_id, render, see_other};
use crate::AppState;
use crate::routes::profiles::{create_profile, update_profile};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/profiles", get(list))
        .route("/console/profiles/new", get(new_form).post(create))
        .route("/console/profiles/{id}", get(edit_form).post(update))
        .route("/console/profiles/{id}/delete", post(delete))
}

const ADMIN_ONLY: &str = "manage email server profiles";

struct ProfileRow {
    id: String,
    name: String,
    auth: &'static str,
    servers: String,
    used: i64,
    limit: u32,
    full: bool,
    failing: usize,
}

#[derive(Template)]
#[template(path = "profiles.html")]
struct ProfilesPage {
    title: &'static str,
    layout: Option<Layout>,
    profiles: Vec<ProfileRow>,
}

async fn list(
    viewer: Viewer,
    State(state): State<AppState>,
    PageQuery(q): PageQuery<Done>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let mut failing: BTreeMap<ProfileId, usize> = BTreeMap::new();
    for m in state.store.list_mailboxes(None).await? {
        if m.incoming.status == ConnectionStatus::Failure
            || m.outgoing.status == ConnectionStatus::Failure
        {
            *failing.entry(m.spec.profile_id).or_default() += 1;
        }
    }
    let profiles = state
        .store
        .list_profiles()
        .await?
        .into_iter()
        .map(|p| ProfileRow {
            id: p.id.to_string(),
            auth: auth_label(p.spec.auth),
            servers: format!(
                "{} {}:{} · SMTP {}:{}",
                p.spec.incoming.protocol.as_str().to_uppercase(),
                p.spec.incoming.host,
                p.spec.incoming.port.get(),
                p.spec.outgoing.host,
                p.spec.outgoing.port.get()
            ),
            used: p.mailbox_count,
            limit: p.spec.max_mailboxes,
            full: p.mailbox_count >= i64::from(p.spec.max_mailboxes),
            failing: failing.get(&p.id).copied().unwrap_or(0),
            name: p.spec.name,
        })
        .collect();
    let notice = match q.done.as_deref() {
        Some("deleted") => Some("The profile was deleted.".to_owned()),
        _ => None,
    };
    Ok(render(&ProfilesPage {
        title: "Email server profiles",
        layout: Some(viewer.layout(&state, "profiles").await.with_notice(notice)),
        profiles,
    }))
}

pub fn auth_label(auth: AuthMethod) -> &'static str {
    match auth {
        AuthMethod::GmailOauth => "Gmail OAuth",
        AuthMethod::MicrosoftOauth => "Microsoft OAuth",
        AuthMethod::GoogleServiceAccount => "Google service account (domain-wide delegation)",
        AuthMethod::Oauth2 => "OAuth 2.0",
        AuthMethod::Password => "Password",
    }
}

/// Which form: a new profile from a preset, a new one for any server, or an edit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NewGmail,
    NewMicrosoft,
    NewCustom,
    Edit,
}

impl Mode {
    fn preset(self) -> Option<Preset> {
        match self {
            Mode::NewGmail => Some(Preset::Gmail),
            Mode::NewMicrosoft => Some(Preset::Microsoft),
            Mode::NewCustom | Mode::Edit => None,
        }
    }
}

#[derive(Template)]
#[template(path = "profile_form.html")]
struct ProfileFormPage {
    title: String,
    layout: Option<Layout>,
    csrf: String,
    action: String,
    submit: &'static str,
    /// Whose registration steps to show: `gmail`, `microsoft` or none.
    steps: &'static str,
    redirect_uri: String,
    js_origin: String,
    groups: Vec<Group>,
    has_errors: bool,
    general_errors: Vec<String>,
    /// On edit: where the delete form posts, and whether mailboxes still use the profile.
    delete_action: Option<String>,
    in_use: i64,
}

#[derive(serde::Deserialize)]
pub struct NewQuery {
    preset: Option<String>,
}

async fn new_form(
    viewer: Viewer,
    State(state): State<AppState>,
    PageQuery(q): PageQuery<NewQuery>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let mode = mode_of(&q);
    let values = match mode.preset() {
        Some(preset) => preset_defaults(preset),
        None => {
            let mut v = FormValues::default();
            v.set("auth", "password");
            v.set("incoming.protocol", "imap");
            v.set("incoming.security", "tls");
            v.set("outgoing.security", "tls");
            v
        }
    };
    form_page(
        &viewer,
        &state,
        mode,
        None,
        &values,
        FieldErrors::default(),
        None,
    )
    .await
}

/// A preset's settings as a form shows them, taken from the core's own preset so the console
/// never keeps a second copy of a provider's servers and endpoints.
fn preset_defaults(preset: Preset) -> FormValues {
    let draft = ProfileDraft {
        preset: Some(preset),
        oauth: Some(OAuthDraft {
            client_id: Some("placeholder".to_owned()),
            client_secret: Some("placeholder".to_owned().into()),
            ..OAuthDraft::default()
        }),
        ..ProfileDraft::default()
    };
    let mut values = match draft.resolve(None) {
        Ok((spec, _)) => values_of(&spec),
        Err(e) => {
            tracing::error!(error = %e, preset = preset.as_str(), "a preset does not resolve");
            FormValues::default()
        }
    };
    values.set("oauth.client_id", "");
    values
}

/// A stored profile as form values (never the secret: there is no field for it to fill).
fn values_of(spec: &ProfileSpec) -> FormValues {
    let mut v = FormValues::default();
    v.set("name", spec.name.clone());
    v.set("auth", spec.auth.as_str());
    v.set("incoming.protocol", spec.incoming.protocol.as_str());
    v.set("incoming.host", spec.incoming.host.to_string());
    v.set("incoming.port", spec.incoming.port.get().to_string());
    v.set("incoming.security", spec.incoming.security.as_str());
    v.set("outgoing.host", spec.outgoing.host.to_string());
    v.set("outgoing.port", spec.outgoing.port.get().to_string());
    v.set("outgoing.security", spec.outgoing.security.as_str());
    v.set(
        "outgoing.authentication",
        spec.outgoing.authentication.as_str(),
    );
    v.set("max_mailboxes", spec.max_mailboxes.to_string());
    v.set("max_connections", spec.max_connections.to_string());
    v.set("daily_send_limit", spec.daily_send_limit.to_string());
    v.set("max_queued_emails", spec.max_queued_emails.to_string());
    v.set("sends_per_minute", spec.sends_per_minute.to_string());
    v.set("folders", spec.folders.join(", "));
    v.set("append_sent", if spec.append_sent { "yes" } else { "no" });
    v.set(
        "poll_interval_seconds",
        spec.poll_interval_seconds.to_string(),
    );
    if let Some(d) = spec.process_emails_received_after {
        v.set(
            "process_emails_received_after",
            d.format("%Y-%m-%d").to_string(),
        );
    }
    if let Some(o) = &spec.oauth {
        v.set("oauth.client_id", o.client_id.clone());
        v.set("oauth.authorization_url", o.authorization_url.to_string());
        v.set("oauth.token_url", o.token_url.to_string());
        if let Some(u) = &o.revocation_url {
            v.set("oauth.revocation_url", u.to_string());
        }
        if let Some(u) = &o.userinfo_url {
            v.set("oauth.userinfo_url", u.to_string());
        }
        v.set("oauth.scopes", o.scopes.join(" "));
        if let Some(tenant) = o.microsoft_tenant() {
            v.set("oauth.tenant", tenant);
        }
    }
    v
}

async fn form_page(
    viewer: &Viewer,
    state: &AppState,
    mode: Mode,
    profile: Option<&ProfileRecord>,
    values: &FormValues,
    mut errors: FieldErrors,
    notice: Option<String>,
) -> PageResult {
    let steps = match (mode, profile.map(|p| p.spec.auth)) {
        (Mode::NewGmail, _) | (_, Some(AuthMethod::GmailOauth)) => "gmail",
        (Mode::NewMicrosoft, _) | (_, Some(AuthMethod::MicrosoftOauth)) => "microsoft",
        _ => "",
    };
    let groups = groups(mode, profile, values, &mut errors);
    let general_errors = errors.rest();
    let has_errors = !general_errors.is_empty()
        || groups
            .iter()
            .any(|g| g.fields.iter().any(|f| f.error.is_some()));
    let (title, action, submit) = match (mode, profile) {
        (Mode::Edit, Some(p)) => (
            format!("Edit {}", p.spec.name),
            format!("/console/profiles/{}", p.id),
            "Save changes",
        ),
        (Mode::NewCustom, _) => (
            "New email server profile".to_owned(),
            "/console/profiles/new?preset=custom".to_owned(),
            "Create profile",
        ),
        (Mode::NewMicrosoft, _) => (
            "New Microsoft 365 profile".to_owned(),
            "/console/profiles/new?preset=microsoft".to_owned(),
            "Create profile",
        ),
        _ => (
            "New Gmail profile".to_owned(),
            "/console/profiles/new?preset=gmail".to_owned(),
            "Create profile",
        ),
    };
    let base = state.config.public_base_url.clone();
    let mut response = render(&ProfileFormPage {
        title,
        layout: Some(viewer.layout(state, "profiles").await.with_notice(notice)),
        csrf: viewer.csrf.clone(),
        action,
        submit,
        steps,
        redirect_uri: state.config.oauth_redirect_uri(),
        js_origin: base.origin().ascii_serialization(),
        groups,
        has_errors,
        general_errors,
        delete_action: profile.map(|p| format!("/console/profiles/{}/delete", p.id)),
        in_use: profile.map_or(0, |p| p.mailbox_count),
    });
    if has_errors {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

fn words<T: Copy + std::fmt::Display>(all: &[T], label: fn(T) -> &'static str) -> Vec<Choice> {
    all.iter()
        .map(|w| Choice::new(w.to_string(), label(*w)))
        .collect()
}

fn security_label(s: Security) -> &'static str {
    match s {
        Security::Tls => "TLS from the start (SSL)",
        Security::Starttls => "STARTTLS",
        Security::None => "None (plain text: only this machine or hosts an operator allowed)",
    }
}

fn outgoing_auth_label(a: OutgoingAuth) -> &'static str {
    match a {
        OutgoingAuth::Mailbox => "The mailbox's own login (as for incoming mail)",
        OutgoingAuth::None => "None: a relay that accepts mail from this server",
    }
}

fn groups(
    mode: Mode,
    profile: Option<&ProfileRecord>,
    v: &FormValues,
    e: &mut FieldErrors,
) -> Vec<Group> {
    let mut general = vec![
        Field::text("name", "Profile name")
            .required()
            .help("How admins pick this profile for a mailbox, e.g. “Sales team Gmail”.")
            .from(v, e),
    ];
    if mode.preset().is_none() {
        general.push(
            Field::select(
                "auth",
                "How mailboxes sign in",
                words(AuthMethod::ALL, auth_label),
            )
            .from(v, e),
        );
    }
    general.extend([
        Field::text("max_mailboxes", "Mailbox limit")
            .numeric()
            .help("Gmail OAuth profiles serve at most 100 mailboxes; create another profile for more.")
            .from(v, e),
        Field::text("max_connections", "Connections at once")
            .numeric()
            .help("Over all mailboxes of this profile, each one waiting for new mail included; past it, mailboxes check for mail every interval instead. Leave blank for the mailbox limit plus 10.")
            .from(v, e),
        Field::text("poll_interval_seconds", "Check for new mail every (seconds)")
            .numeric()
            .help("Leave blank for 60.")
            .from(v, e),
        Field::text("process_emails_received_after", "Only mail received after")
            .kind("date")
            .help("Leave blank to take all mail.")
            .from(v, e),
        Field::text("daily_send_limit", "Emails each mailbox may send per day")
            .numeric()
            .help("Sending stops for the day past it. Gmail allows 500 (Google Workspace 2,000); Microsoft 365 10,000 recipients. Leave blank for 500 with Gmail, 10,000 otherwise.")
            .from(v, e),
        Field::text("sends_per_minute", "Emails each mailbox may send per minute")
            .numeric()
            .help("More wait for the next minute. 0 or blank: no limit (Microsoft 365 takes 30 a minute).")
            .from(v, e),
        Field::text("max_queued_emails", "Emails each mailbox may have waiting")
            .numeric()
            .help("Leave blank for 1,000.")
            .from(v, e),
        Field::text("folders", "Other folders to synchronize")
            .help("INBOX and the Sent folder always are. Separate names with commas, e.g. Archive, Projects/2027.")
            .from(v, e),
        Field::select(
            "append_sent",
            "File a copy of sent email in the Sent folder",
            vec![
                Choice::new("", "Default (yes, except with Gmail and Microsoft 365)"),
                Choice::new("yes", "Yes"),
                Choice::new("no", "No"),
            ],
        )
        .help("Gmail and Microsoft 365 file mail sent through them by themselves; most other servers do not.")
        .from(v, e),
    ]);

    let secret_help = match profile {
        Some(p) if p.has_client_secret => {
            "A secret is stored. Leave this blank to keep the stored secret; it is never shown."
        }
        _ => "From the same OAuth client. Stored encrypted and never shown again.",
    };
    let microsoft = mode == Mode::NewMicrosoft
        || profile.is_some_and(|p| p.spec.auth == AuthMethod::MicrosoftOauth);
    let mut client = vec![
        Field::text("oauth.client_id", "Client ID")
            .help(if microsoft {
                "Microsoft Entra admin center › App registrations › your app › Overview › Application (client) ID, e.g. 6731de76-14a6-49ae-97bc-6eba6914391e"
            } else {
                "Google Cloud console › APIs & Services › Credentials › your OAuth client, e.g. 1234-abc.apps.googleusercontent.com"
            })
            .from(v, e),
        Field::text("oauth.client_secret", "Client secret")
            .kind("password")
            .autocomplete("new-password")
            .help(secret_help)
            .from(v, e),
    ];
    if mode == Mode::NewCustom
        || profile.is_some_and(|p| p.spec.auth == AuthMethod::GoogleServiceAccount)
    {
        client.push(
            Field::text("oauth.service_account_key", "Service account key (JSON)")
                .kind("secret-text")
                .help(match profile {
                    Some(p) if p.has_client_secret => "A key is stored. Leave this blank to keep it; it is never shown. To replace it, paste the whole new .json file.",
                    _ => "Google service account profiles only: paste the whole .json key file (Google Cloud console › IAM & Admin › Service accounts › Keys › Add key). Stored encrypted, never shown again.",
                })
                .from(v, e),
        );
    }
    if microsoft {
        client.push(
            Field::text("oauth.tenant", "Tenant")
                .help("common (work, school and personal accounts), organizations, consumers, or your organization's Directory (tenant) ID or domain, e.g. contoso.onmicrosoft.com.")
                .from(v, e),
        );
    }
    let endpoints = vec![
        Field::text("oauth.authorization_url", "Authorization URL")
            .kind("url")
            .from(v, e),
        Field::text("oauth.token_url", "Token URL")
            .kind("url")
            .from(v, e),
        Field::text("oauth.revocation_url", "Revocation URL")
            .kind("url")
            .help("Optional: lets “Disconnect” revoke the tokens at the provider.")
            .from(v, e),
        Field::text("oauth.userinfo_url", "Userinfo URL")
            .kind("url")
            .help("Optional: how Mailbridge learns which account signed in.")
            .from(v, e),
        Field::text("oauth.scopes", "Scopes")
            .help("Separated by spaces.")
            .from(v, e),
    ];
    let incoming = vec![
        Field::select(
            "incoming.protocol",
            "Protocol",
            vec![Choice::new("imap", "IMAP"), Choice::new("pop3", "POP3")],
        )
        .from(v, e),
        Field::text("incoming.host", "Server").required().from(v, e),
        Field::text("incoming.port", "Port").numeric().from(v, e),
        Field::select(
            "incoming.security",
            "Security",
            words(Security::ALL, security_label),
        )
        .from(v, e),
    ];
    let outgoing = vec![
        Field::text("outgoing.host", "Server").required().from(v, e),
        Field::text("outgoing.port", "Port").numeric().from(v, e),
        Field::select(
            "outgoing.security",
            "Security",
            words(Security::ALL, security_label),
        )
        .from(v, e),
        Field::select(
            "outgoing.authentication",
            "Login",
            words(OutgoingAuth::ALL, outgoing_auth_label),
        )
        .help("A company relay that trusts this server's address needs none: Test & Enable then checks that it accepts the mailbox's address, and no credentials are ever sent to it.")
        .from(v, e),
    ];
    // A preset's servers and endpoints are folded away: most admins never change them.
    let (client_legend, endpoints_legend, incoming_legend, outgoing_legend) = match mode {
        Mode::NewGmail => (
            "OAuth client from the Google Cloud console",
            "OAuth endpoints and scopes (prefilled for Google)",
            "Incoming server (prefilled for Gmail)",
            "Outgoing server, SMTP (prefilled for Gmail)",
        ),
        Mode::NewMicrosoft => (
            "App registration from the Microsoft Entra admin center",
            "OAuth endpoints and scopes (prefilled for Microsoft)",
            "Incoming server (prefilled for Microsoft 365)",
            "Outgoing server, SMTP (prefilled for Microsoft 365)",
        ),
        Mode::NewCustom | Mode::Edit => (
            "OAuth client (OAuth profiles only)",
            "OAuth endpoints and scopes",
            "Incoming server",
            "Outgoing server, SMTP",
        ),
    };
    let fold = |g: Group| {
        if mode.preset().is_some() {
            g.collapsed()
        } else {
            g
        }
    };
    vec![
        Group::new("Profile", general),
        Group::new(client_legend, client),
        fold(Group::new(endpoints_legend, endpoints)),
        fold(Group::new(incoming_legend, incoming)),
        fold(Group::new(outgoing_legend, outgoing)),
    ]
}

/// Turns what the form sent into the API's draft; what cannot even be read (a port that
/// is not a number) is reported on its field.
fn draft_of(v: &FormValues, mode: Mode, errors: &mut FieldErrors) -> ProfileDraft {
    let auth = match mode.preset() {
        Some(_) => None,
        None => v.word::<AuthMethod>("auth", errors),
    };
    let is_oauth = mode.preset().is_some() || auth.is_some_and(AuthMethod::is_oauth);
    let editing = mode == Mode::Edit;
    // On an edit every field is sent, so an emptied optional URL means "none".
    let url = |name: &str| {
        if editing {
            Some(v.get(name).trim().to_owned())
        } else {
            v.opt(name)
        }
    };
    let oauth = is_oauth.then(|| OAuthDraft {
        client_id: if editing {
            Some(v.get("oauth.client_id").to_owned())
        } else {
            v.opt("oauth.client_id")
        },
        // Blank keeps the stored secret.
        client_secret: v.opt("oauth.client_secret").map(Into::into),
        authorization_url: url("oauth.authorization_url"),
        token_url: url("oauth.token_url"),
        revocation_url: url("oauth.revocation_url"),
        userinfo_url: url("oauth.userinfo_url"),
        scopes: v
            .opt("oauth.scopes")
            .map(|s| s.split_whitespace().map(str::to_owned).collect()),
        tenant: v.opt("oauth.tenant"),
        service_account_key: (auth == Some(AuthMethod::GoogleServiceAccount))
            .then(|| v.opt("oauth.service_account_key").map(Into::into))
            .flatten(),
    });
    let date = match v.opt("process_emails_received_after") {
        Some(raw) => match NaiveDate::parse_from_str(&raw, "%Y-%m-%d") {
            Ok(d) => Some(Some(d)),
            Err(_) => {
                errors.add(
                    "process_emails_received_after",
                    format!("'{raw}' is not a date; write it as YYYY-MM-DD, e.g. 2026-01-31"),
                );
                None
            }
        },
        None if editing => Some(None),
        None => None,
    };
    if !editing && v.opt("name").is_none() {
        errors.add(
            "name",
            "Give the profile a name people will recognise, e.g. Sales Gmail",
        );
    }
    ProfileDraft {
        name: if editing {
            Some(v.get("name").to_owned())
        } else {
            v.opt("name")
        },
        preset: mode.preset(),
        incoming: Some(IncomingDraft {
            protocol: v.word::<IncomingProtocol>("incoming.protocol", errors),
            host: v.opt("incoming.host"),
            port: v.number("incoming.port", "The port", errors),
            security: v.word::<Security>("incoming.security", errors),
        }),
        outgoing: Some(OutgoingDraft {
            host: v.opt("outgoing.host"),
            port: v.number("outgoing.port", "The port", errors),
            security: v.word::<Security>("outgoing.security", errors),
            authentication: v.word::<OutgoingAuth>("outgoing.authentication", errors),
        }),
        auth,
        oauth,
        max_mailboxes: v.number("max_mailboxes", "The mailbox limit", errors),
        max_connections: v.number("max_connections", "Connections at once", errors),
        poll_interval_seconds: v.number("poll_interval_seconds", "The interval", errors),
        process_emails_received_after: date,
        daily_send_limit: v.number("daily_send_limit", "The daily limit", errors),
        max_queued_emails: v.number("max_queued_emails", "The queue limit", errors),
        sends_per_minute: v.number("sends_per_minute", "The per-minute limit", errors),
        // The edit form shows the stored folders: what it sends back is the new list.
        folders: (editing || v.opt("folders").is_some()).then(|| v.list("folders")),
        append_sent: match v.get("append_sent") {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        },
    }
}

fn mode_of(q: &NewQuery) -> Mode {
    match q.preset.as_deref() {
        Some("custom") => Mode::NewCustom,
        Some("microsoft") => Mode::NewMicrosoft,
        _ => Mode::NewGmail,
    }
}

async fn create(
    viewer: Viewer,
    State(state): State<AppState>,
    PageQuery(q): PageQuery<NewQuery>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let mode = mode_of(&q);
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let draft = draft_of(&values, mode, &mut errors);
    if errors.is_empty() {
        match create_profile(&state, &viewer.caller, draft).await {
            Ok(p) => {
                return Ok(see_other(&format!(
                    "/console/profiles/{}?done=created",
                    p.id
                )));
            }
            Err(e) => errors.api(&e),
        }
    }
    form_page(&viewer, &state, mode, None, &values, errors, None).await
}

async fn edit_form(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    PageQuery(q): PageQuery<Done>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let profile = state
        .store
        .get_profile(path_id(&id, "server profile")?)
        .await?;
    let notice = match q.done.as_deref() {
        Some("created") => Some(format!("Profile “{}” was created.", profile.spec.name)),
        Some("saved") => Some("Your changes were saved.".to_owned()),
        _ => None,
    };
    form_page(
        &viewer,
        &state,
        Mode::Edit,
        Some(&profile),
        &values_of(&profile.spec),
        FieldErrors::default(),
        notice,
    )
    .await
}

async fn update(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let id = path_id(&id, "server profile")?;
    let profile = state.store.get_profile(id).await?;
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let draft = draft_of(&values, Mode::Edit, &mut errors);
    if errors.is_empty() {
        match update_profile(&state, &viewer.caller, id, draft).await {
            Ok(p) => return Ok(see_other(&format!("/console/profiles/{}?done=saved", p.id))),
            Err(e) => errors.api(&e),
        }
    }
    form_page(
        &viewer,
        &state,
        Mode::Edit,
        Some(&profile),
        &values,
        errors,
        None,
    )
    .await
}

async fn delete(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> PageResult {
    viewer.require_admin(ADMIN_ONLY)?;
    let id = path_id(&id, "server profile")?;
    state
        .store
        .delete_profile(&viewer.caller.actor(), id)
        .await
        .map_err(|e| PageError::from(e).with_viewer(&viewer))?;
    Ok(see_other("/console/profiles?done=deleted"))
}
