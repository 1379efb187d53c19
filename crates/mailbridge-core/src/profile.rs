//! [`ProfileSpec`]: an email server profile — where the incoming and outgoing servers are, how
//! mailboxes authenticate to them, and the limits that apply — and [`ProfileDraft`], the
//! partial input (create with a preset, or patch) that resolves into one.

use chrono::NaiveDate;
use secrecy::SecretString;
use url::Url;

use crate::{Host, IncomingProtocol, Port, Security, ValidationError};

/// Google allows one OAuth client to serve this many mailboxes in a Gmail OAuth profile.
pub const GMAIL_MAX_MAILBOXES: u32 = 100;
const DEFAULT_MAX_MAILBOXES: u32 = 1000;
const MAX_MAX_MAILBOXES: u32 = 100_000;
const DEFAULT_POLL_INTERVAL_SECONDS: u32 = 60;
/// Connections a profile's mailboxes hold open at once beyond one IDLE session each, by
/// default: room for syncs, sends and tests. (Gmail allows 15 IMAP connections per account;
/// Mailbridge holds one per mailbox, plus one while sending or testing.)
const CONNECTION_HEADROOM: u32 = 10;
const MAX_MAX_CONNECTIONS: i64 = 200_000;
const MIN_POLL_INTERVAL_SECONDS: i64 = 10;
/// Emails a mailbox may queue per 24 hours, by default. Gmail suspends sending for a day
/// past 500 messages (consumer accounts; Google Workspace allows 2,000: raise it there).
pub const GMAIL_DAILY_SEND_LIMIT: u32 = 500;
const DEFAULT_DAILY_SEND_LIMIT: u32 = 10_000;
const MAX_DAILY_SEND_LIMIT: i64 = 1_000_000;
const MAX_SENDS_PER_MINUTE: i64 = 10_000;
/// Emails Exchange Online takes from one mailbox per minute over SMTP AUTH.
pub const MICROSOFT_SENDS_PER_MINUTE: u32 = 30;
/// Emails one mailbox may have waiting to be sent at once, by default.
const DEFAULT_MAX_QUEUED_EMAILS: u32 = 1_000;
const MAX_MAX_QUEUED_EMAILS: i64 = 1_000_000;
const MAX_POLL_INTERVAL_SECONDS: i64 = 86_400;

crate::string_enum! {
    /// How mailboxes of a profile authenticate to its servers.
    AuthMethod {
        /// OAuth 2.0 with Google's endpoints and SASL XOAUTH2.
        GmailOauth => "gmail_oauth",
        /// OAuth 2.0 with the Microsoft identity platform (Microsoft 365, Outlook.com) and
        /// SASL XOAUTH2.
        MicrosoftOauth => "microsoft_oauth",
        /// A Google Workspace service account with domain-wide delegation: each mailbox's
        /// token comes from the JWT bearer grant with the account's key, and nobody signs in.
        GoogleServiceAccount => "google_service_account",
        /// OAuth 2.0 with any provider's endpoints.
        Oauth2 => "oauth2",
        /// A user name and password per mailbox.
        Password => "password",
    }
}

impl AuthMethod {
    /// The sign-in button, in the provider's words.
    pub fn sign_in_label(self) -> &'static str {
        match self {
            AuthMethod::GmailOauth => "Sign in to Gmail",
            AuthMethod::MicrosoftOauth => "Sign in with Microsoft",
            AuthMethod::Oauth2 | AuthMethod::Password | AuthMethod::GoogleServiceAccount => {
                "Sign in"
            }
        }
    }

    /// What to tell the owner of a mailbox whose sign-in the provider refused.
    pub fn sign_in_again_hint(self) -> &'static str {
        match self {
            AuthMethod::GmailOauth => {
                "Sign in to Gmail again for this mailbox, then run Test & Enable Mailbox."
            }
            AuthMethod::MicrosoftOauth => {
                "Sign in with Microsoft again for this mailbox, then run Test & Enable Mailbox."
            }
            AuthMethod::GoogleServiceAccount => {
                "Check the profile's service account key and its domain-wide delegation, then run Test & Enable Mailbox."
            }
            AuthMethod::Oauth2 | AuthMethod::Password => {
                "Sign in again for this mailbox, then run Test & Enable Mailbox."
            }
        }
    }

    /// What to tell the owner of a mailbox whose sign-in the provider refused with `reason`:
    /// the provider's own fix when its words name one, else to sign in again.
    pub fn refused_sign_in_hint(self, reason: &str) -> &'static str {
        match self {
            AuthMethod::MicrosoftOauth => {
                crate::microsoft::sign_in_hint(reason).unwrap_or(self.sign_in_again_hint())
            }
            _ => self.sign_in_again_hint(),
        }
    }

    /// What to tell someone testing a mailbox that was never signed in.
    pub fn sign_in_first_hint(self) -> &'static str {
        match self {
            AuthMethod::GmailOauth => "Sign in to Gmail for this mailbox first, then test again.",
            AuthMethod::MicrosoftOauth => {
                "Sign in with Microsoft for this mailbox first, then test again."
            }
            AuthMethod::Oauth2 | AuthMethod::Password | AuthMethod::GoogleServiceAccount => {
                "Sign in for this mailbox first, then test again."
            }
        }
    }

    /// Whether mailboxes log in with OAuth 2.0 tokens (rather than a password).
    pub fn is_oauth(self) -> bool {
        self != AuthMethod::Password
    }

    /// Whether each mailbox's user signs in (a service account needs nobody to).
    pub fn needs_sign_in(self) -> bool {
        self.is_oauth() && self != AuthMethod::GoogleServiceAccount
    }
}

crate::string_enum! {
    /// Ready-made settings for well-known providers.
    Preset {
        Gmail => "gmail",
        /// Microsoft 365 and Outlook.com.
        Microsoft => "microsoft",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct IncomingServer {
    pub protocol: IncomingProtocol,
    #[schema(value_type = String, example = "imap.gmail.com")]
    pub host: Host,
    #[schema(value_type = u16, example = 993)]
    pub port: Port,
    pub security: Security,
}

crate::string_enum! {
    /// How mailboxes log in to the outgoing (SMTP) server.
    OutgoingAuth {
        /// With the mailbox's own login, as for incoming mail (its OAuth token or password).
        Mailbox => "mailbox",
        /// No login: a relay that accepts mail from this service's network ("without
        /// credentials"). Credentials are never offered to it.
        None => "none",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OutgoingServer {
    #[schema(value_type = String, example = "smtp.gmail.com")]
    pub host: Host,
    #[schema(value_type = u16, example = 465)]
    pub port: Port,
    pub security: Security,
    pub authentication: OutgoingAuth,
}

/// The OAuth 2.0 client a profile's mailboxes sign in with. The client secret is kept apart
/// (encrypted by the store) and is never part of this value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OAuthSettings {
    pub client_id: String,
    #[schema(value_type = String)]
    pub authorization_url: Url,
    #[schema(value_type = String)]
    pub token_url: Url,
    #[schema(value_type = Option<String>)]
    pub revocation_url: Option<Url>,
    #[schema(value_type = Option<String>)]
    pub userinfo_url: Option<Url>,
    pub scopes: Vec<String>,
}

/// A complete, valid profile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProfileSpec {
    pub name: String,
    pub incoming: IncomingServer,
    pub outgoing: OutgoingServer,
    pub auth: AuthMethod,
    pub oauth: Option<OAuthSettings>,
    pub max_mailboxes: u32,
    /// How many connections the profile may hold open at once, over all its mailboxes (IDLE
    /// sessions, syncs, sends and tests alike).
    pub max_connections: u32,
    pub poll_interval_seconds: u32,
    pub process_emails_received_after: Option<NaiveDate>,
    /// Emails each mailbox may queue within 24 hours (a 429 past it).
    pub daily_send_limit: u32,
    /// Emails each mailbox may have waiting to be sent at once (a 429 past it).
    pub max_queued_emails: u32,
    /// Emails each mailbox sends per minute at most (0: no limit); past it, the rest wait
    /// for the minute to pass.
    pub sends_per_minute: u32,
    /// Folders synchronized besides INBOX and the Sent folder (IMAP).
    pub folders: Vec<String>,
    /// Whether Mailbridge files a copy of each email it sends in the Sent folder (IMAP
    /// APPEND): servers other than Gmail do not do it themselves for mail sent over SMTP.
    pub append_sent: bool,
}

/// What to do with the stored client secret after a draft is applied.
#[derive(Debug)]
pub enum SecretChange {
    Keep,
    Set(SecretString),
    Clear,
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = IncomingServerDraft)]
#[serde(deny_unknown_fields)]
pub struct IncomingDraft {
    pub protocol: Option<IncomingProtocol>,
    pub host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    pub security: Option<Security>,
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = OutgoingServerDraft)]
#[serde(deny_unknown_fields)]
pub struct OutgoingDraft {
    pub host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    pub security: Option<Security>,
    /// `mailbox` (default): log in with the mailbox's own credentials; `none`: a relay that
    /// accepts mail from this service without a login (Test & Enable then checks that it
    /// accepts the mailbox's address as sender and recipient).
    pub authentication: Option<OutgoingAuth>,
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthDraft {
    pub client_id: Option<String>,
    /// Write-only: stored encrypted, never returned.
    #[schema(value_type = Option<String>, write_only)]
    pub client_secret: Option<SecretString>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `google_service_account` profiles only, write-only: the service account's JSON key file
    /// (Google Cloud console › IAM & Admin › Service accounts › Keys › Add key › JSON), as
    /// text. Stored encrypted; its private key is never shown again.
    #[schema(value_type = Option<String>, write_only)]
    pub service_account_key: Option<SecretString>,
    /// Microsoft profiles only: the directory users sign in from — `common` (work, school and
    /// personal accounts), `organizations`, `consumers`, or one tenant's id or domain
    /// (`contoso.onmicrosoft.com`). Sets `authorization_url` and `token_url`; default `common`.
    #[schema(example = "organizations")]
    pub tenant: Option<String>,
}

/// Input for creating (`base = None`) or patching (`base = Some`) a profile: every field is
/// optional; what is missing comes from the preset, the stored profile, or a default.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileDraft {
    pub name: Option<String>,
    /// `gmail` fills Gmail's servers, Google's OAuth endpoints and scope, and the 100-mailbox
    /// limit; `microsoft` fills Microsoft 365's servers, the Microsoft identity platform's
    /// endpoints (for `oauth.tenant`) and scopes, and Microsoft's sending limits.
    pub preset: Option<Preset>,
    pub incoming: Option<IncomingDraft>,
    pub outgoing: Option<OutgoingDraft>,
    pub auth: Option<AuthMethod>,
    pub oauth: Option<OAuthDraft>,
    /// 1–100,000 (1–100 for a Gmail OAuth profile).
    #[schema(minimum = 1, maximum = 100_000)]
    pub max_mailboxes: Option<i64>,
    /// Connections open at once over all the profile's mailboxes, IDLE sessions included
    /// (default: `max_mailboxes` + 10). Mailboxes that find none free for IDLE check for mail
    /// every `poll_interval_seconds` instead.
    #[schema(minimum = 1, maximum = 200_000)]
    pub max_connections: Option<i64>,
    /// 10–86,400 (one day).
    #[schema(minimum = 10, maximum = 86_400)]
    pub poll_interval_seconds: Option<i64>,
    /// `YYYY-MM-DD`; mail received before this day is not synchronized. `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub process_emails_received_after: Option<Option<NaiveDate>>,
    /// Emails each mailbox may queue within 24 hours (default 500 with the Gmail preset —
    /// Gmail's own limit for consumer accounts; 10,000 otherwise).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub daily_send_limit: Option<i64>,
    /// Emails each mailbox may have waiting to be sent at once (default 1,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_queued_emails: Option<i64>,
    /// Emails each mailbox sends per minute at most; more wait for the next minute (they
    /// stay queued, nothing fails). 0 (the default) is no limit; the Microsoft preset sets
    /// 30, Exchange Online's limit for SMTP AUTH.
    #[schema(minimum = 0, maximum = 10_000)]
    pub sends_per_minute: Option<i64>,
    /// IMAP folders to synchronize besides INBOX and the Sent folder (found by its
    /// SPECIAL-USE `\Sent` mark), e.g. `["Archive", "Projects/2027"]`; at most 50.
    #[schema(max_items = 50)]
    pub folders: Option<Vec<String>>,
    /// File a copy of each email Mailbridge sends in the Sent folder (IMAP APPEND), so the
    /// user sees it in their mail client. Default: true, except for Gmail and Microsoft 365,
    /// which file mail sent through their SMTP servers themselves.
    pub append_sent: Option<bool>,
}

/// The profile a base may already be: what `resolve` patches.
pub struct Stored<'a> {
    pub spec: &'a ProfileSpec,
    pub has_client_secret: bool,
}

impl ProfileDraft {
    /// Resolves the draft into a complete profile. `base` is the stored profile when patching.
    pub fn resolve(
        self,
        base: Option<Stored<'_>>,
    ) -> Result<(ProfileSpec, SecretChange), ValidationError> {
        if base.is_some() && self.preset.is_some() {
            return Err(ValidationError::new(
                "preset",
                "a preset applies only when creating a profile; set the fields you want to change instead",
            ));
        }
        let preset = match self.preset {
            Some(Preset::Gmail) => Some(gmail_preset(&self)),
            Some(Preset::Microsoft) => Some(microsoft_preset(&self)?),
            None => None,
        };
        let base_spec = base.as_ref().map(|b| b.spec).or(preset.as_ref());

        let name = match self.name.as_deref().map(str::trim) {
            Some(n) if n.is_empty() || n.chars().count() > 100 => {
                return Err(ValidationError::new(
                    "name",
                    "name must have 1 to 100 characters",
                ));
            }
            Some(n) => n.to_owned(),
            None => base_spec.map(|b| b.name.clone()).ok_or_else(|| {
                ValidationError::new("name", "name is required, e.g. \"Sales team Gmail\"")
            })?,
        };
        let incoming = resolve_incoming(
            self.incoming.unwrap_or_default(),
            base_spec.map(|b| &b.incoming),
        )
        .map_err(|e| e.under("incoming"))?;
        let outgoing = resolve_outgoing(
            self.outgoing.unwrap_or_default(),
            base_spec.map(|b| &b.outgoing),
        )
        .map_err(|e| e.under("outgoing"))?;
        let auth = self.auth.or(base_spec.map(|b| b.auth)).ok_or_else(|| {
            ValidationError::new(
                "auth",
                "auth is required: gmail_oauth, microsoft_oauth, oauth2 or password (or use \"preset\": \"gmail\" or \"microsoft\")",
            )
        })?;

        let had_secret = base.as_ref().is_some_and(|b| b.has_client_secret);
        if auth != AuthMethod::GoogleServiceAccount
            && self
                .oauth
                .as_ref()
                .is_some_and(|o| o.service_account_key.is_some())
        {
            return Err(ValidationError::new(
                "oauth.service_account_key",
                "service_account_key applies only to google_service_account profiles; remove it or set auth",
            ));
        }
        let (oauth, secret) = match auth {
            AuthMethod::GoogleServiceAccount => {
                let draft = self.oauth.unwrap_or_default();
                let kept = base
                    .as_ref()
                    .filter(|b| b.spec.auth == AuthMethod::GoogleServiceAccount && had_secret)
                    .and_then(|b| b.spec.oauth.clone());
                match (draft.service_account_key, kept) {
                    (Some(key), _) => {
                        let settings =
                            service_account_settings(&key).map_err(|e| e.under("oauth"))?;
                        (Some(settings), SecretChange::Set(key))
                    }
                    (None, Some(settings)) => (Some(settings), SecretChange::Keep),
                    (None, None) => {
                        return Err(ValidationError::new(
                            "oauth.service_account_key",
                            "service_account_key is required: the service account's JSON key file (Google Cloud console › IAM & Admin › Service accounts › Keys › Add key › JSON)",
                        ));
                    }
                }
            }
            AuthMethod::Password => {
                if self.oauth.is_some() {
                    return Err(ValidationError::new(
                        "oauth",
                        "oauth settings apply only to gmail_oauth and oauth2 profiles; remove them or change auth",
                    ));
                }
                (
                    None,
                    if had_secret {
                        SecretChange::Clear
                    } else {
                        SecretChange::Keep
                    },
                )
            }
            AuthMethod::GmailOauth | AuthMethod::MicrosoftOauth | AuthMethod::Oauth2 => {
                let mut draft = self.oauth.unwrap_or_default();
                if let Some(tenant) = draft.tenant.take() {
                    if auth != AuthMethod::MicrosoftOauth {
                        return Err(ValidationError::new(
                            "oauth.tenant",
                            "tenant applies only to microsoft_oauth profiles; remove it",
                        ));
                    }
                    let (authorize, token) =
                        microsoft_endpoints(&tenant).map_err(|e| e.under("oauth"))?;
                    // The tenant picks the Microsoft endpoints; other endpoints given beside it
                    // win (a national cloud's login server, a test provider).
                    for (given, tenants) in [
                        (&mut draft.authorization_url, authorize),
                        (&mut draft.token_url, token),
                    ] {
                        if given.as_deref().is_none_or(is_microsoft_login) {
                            *given = Some(tenants);
                        }
                    }
                }
                let secret = match draft.client_secret.clone() {
                    Some(s) if secrecy::ExposeSecret::expose_secret(&s).trim().is_empty() => {
                        return Err(ValidationError::new(
                            "oauth.client_secret",
                            "client_secret is empty; paste the secret from your OAuth client",
                        ));
                    }
                    Some(s) => SecretChange::Set(s),
                    None if auth == AuthMethod::GmailOauth && !had_secret => {
                        return Err(ValidationError::new(
                            "oauth.client_secret",
                            "client_secret is required for Gmail OAuth; copy it from the OAuth client in the Google Cloud console",
                        ));
                    }
                    None if auth == AuthMethod::MicrosoftOauth && !had_secret => {
                        return Err(ValidationError::new(
                            "oauth.client_secret",
                            "client_secret is required for Microsoft OAuth; create one under the app registration's Certificates & secrets in the Microsoft Entra admin center and copy its Value",
                        ));
                    }
                    None => SecretChange::Keep,
                };
                let oauth = resolve_oauth(draft, base_spec.and_then(|b| b.oauth.as_ref()))
                    .map_err(|e| e.under("oauth"))?;
                if let (SecretChange::Keep, Some(old)) =
                    (&secret, base.as_ref().and_then(|b| b.spec.oauth.as_ref()))
                    && let Some(moved) = moved_endpoint(old, &oauth)
                {
                    // The stored secret (and every mailbox's tokens after it) would go to a
                    // server it was never given to: whoever moves it must know the secret.
                    return Err(ValidationError::new(
                        "oauth.client_secret",
                        format!(
                            "{moved} now points to another server; enter the client secret again to confirm it may be sent there"
                        ),
                    ));
                }
                (Some(oauth), secret)
            }
        };

        let max_mailboxes = match self.max_mailboxes {
            Some(n) => {
                let ceiling = if auth == AuthMethod::GmailOauth {
                    GMAIL_MAX_MAILBOXES
                } else {
                    MAX_MAX_MAILBOXES
                };
                match u32::try_from(n) {
                    Ok(n) if (1..=ceiling).contains(&n) => n,
                    _ if auth == AuthMethod::GmailOauth => {
                        return Err(ValidationError::new(
                            "max_mailboxes",
                            format!(
                                "a Gmail OAuth profile serves at most {GMAIL_MAX_MAILBOXES} mailboxes; use 1 to {GMAIL_MAX_MAILBOXES}, and create another profile for more"
                            ),
                        ));
                    }
                    _ => {
                        return Err(ValidationError::new(
                            "max_mailboxes",
                            format!("max_mailboxes must be from 1 to {ceiling}"),
                        ));
                    }
                }
            }
            None => match (auth, base_spec) {
                (AuthMethod::GmailOauth, Some(b)) => b.max_mailboxes.min(GMAIL_MAX_MAILBOXES),
                (AuthMethod::GmailOauth, None) => GMAIL_MAX_MAILBOXES,
                // Gmail's 100 is per OAuth client of per-user sign-ins; a service account of a
                // whole domain has the general default.
                (AuthMethod::GoogleServiceAccount, Some(b))
                    if b.auth != AuthMethod::GoogleServiceAccount =>
                {
                    DEFAULT_MAX_MAILBOXES
                }
                (_, Some(b)) => b.max_mailboxes,
                (_, None) => DEFAULT_MAX_MAILBOXES,
            },
        };
        let poll_interval_seconds = match self.poll_interval_seconds {
            Some(n) if (MIN_POLL_INTERVAL_SECONDS..=MAX_POLL_INTERVAL_SECONDS).contains(&n) => {
                u32::try_from(n).unwrap_or(DEFAULT_POLL_INTERVAL_SECONDS)
            }
            Some(_) => {
                return Err(ValidationError::new(
                    "poll_interval_seconds",
                    format!(
                        "poll_interval_seconds must be from {MIN_POLL_INTERVAL_SECONDS} to {MAX_POLL_INTERVAL_SECONDS} (one day)"
                    ),
                ));
            }
            None => base_spec.map_or(DEFAULT_POLL_INTERVAL_SECONDS, |b| b.poll_interval_seconds),
        };
        let max_connections = match self.max_connections {
            Some(n) if (1..=MAX_MAX_CONNECTIONS).contains(&n) => {
                u32::try_from(n).unwrap_or(max_mailboxes + CONNECTION_HEADROOM)
            }
            Some(_) => {
                return Err(ValidationError::new(
                    "max_connections",
                    format!("max_connections must be from 1 to {MAX_MAX_CONNECTIONS}"),
                ));
            }
            // Every mailbox can wait in IDLE on a connection of its own, and a few more are
            // left for syncing, sending and testing.
            None => base_spec.map_or(max_mailboxes + CONNECTION_HEADROOM, |b| b.max_connections),
        };
        let daily_send_limit = bounded(
            self.daily_send_limit,
            "daily_send_limit",
            MAX_DAILY_SEND_LIMIT,
            base_spec.map_or(DEFAULT_DAILY_SEND_LIMIT, |b| b.daily_send_limit),
        )?;
        let max_queued_emails = bounded(
            self.max_queued_emails,
            "max_queued_emails",
            MAX_MAX_QUEUED_EMAILS,
            base_spec.map_or(DEFAULT_MAX_QUEUED_EMAILS, |b| b.max_queued_emails),
        )?;
        let sends_per_minute = match self.sends_per_minute {
            None => base_spec.map_or(0, |b| b.sends_per_minute),
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| i64::from(*n) <= MAX_SENDS_PER_MINUTE)
                .ok_or_else(|| {
                    ValidationError::new(
                        "sends_per_minute",
                        format!(
                            "sends_per_minute must be from 0 (no limit) to {MAX_SENDS_PER_MINUTE}"
                        ),
                    )
                })?,
        };
        let folders = match self.folders {
            Some(f) => crate::validation::folder_names(f, "folders")?,
            None => base_spec.map(|b| b.folders.clone()).unwrap_or_default(),
        };
        // Gmail and Exchange Online file what their SMTP servers send in Sent themselves;
        // others do not.
        let append_sent = self.append_sent.unwrap_or_else(|| {
            base_spec.map_or_else(
                || !incoming.host.files_sent_mail_itself(),
                |b| b.append_sent,
            )
        });
        let process_emails_received_after = match self.process_emails_received_after {
            Some(v) => v,
            None => base_spec.and_then(|b| b.process_emails_received_after),
        };

        Ok((
            ProfileSpec {
                name,
                incoming,
                outgoing,
                auth,
                oauth,
                max_mailboxes,
                max_connections,
                poll_interval_seconds,
                process_emails_received_after,
                daily_send_limit,
                max_queued_emails,
                sends_per_minute,
                folders,
                append_sent,
            },
            secret,
        ))
    }
}

/// Gmail's servers, Google's OAuth 2.0 endpoints and the full-mail scope. `openid email`
/// are asked too, so that sign-in can prove which account consented.
fn gmail_preset(draft: &ProfileDraft) -> ProfileSpec {
    let pop3 = draft
        .incoming
        .as_ref()
        .and_then(|i| i.protocol)
        .is_some_and(|p| p == IncomingProtocol::Pop3);
    let (protocol, host, port) = if pop3 {
        (IncomingProtocol::Pop3, "pop.gmail.com", 995)
    } else {
        (IncomingProtocol::Imap, "imap.gmail.com", 993)
    };
    let url = |s: &str| Url::parse(s).unwrap_or_else(|e| unreachable!("constant URL {s}: {e}"));
    ProfileSpec {
        name: "Gmail".to_owned(),
        incoming: IncomingServer {
            protocol,
            host: Host::known(host),
            port: Port::new_const(port),
            security: Security::Tls,
        },
        outgoing: OutgoingServer {
            host: Host::known("smtp.gmail.com"),
            port: Port::new_const(465),
            security: Security::Tls,
            authentication: OutgoingAuth::Mailbox,
        },
        auth: AuthMethod::GmailOauth,
        oauth: Some(OAuthSettings {
            client_id: String::new(),
            authorization_url: url("https://accounts.google.com/o/oauth2/v2/auth"),
            token_url: url("https://oauth2.googleapis.com/token"),
            revocation_url: Some(url("https://oauth2.googleapis.com/revoke")),
            userinfo_url: Some(url("https://openidconnect.googleapis.com/v1/userinfo")),
            scopes: vec![
                "https://mail.google.com/".to_owned(),
                "openid".to_owned(),
                "email".to_owned(),
            ],
        }),
        max_mailboxes: GMAIL_MAX_MAILBOXES,
        max_connections: GMAIL_MAX_MAILBOXES + CONNECTION_HEADROOM,
        poll_interval_seconds: DEFAULT_POLL_INTERVAL_SECONDS,
        process_emails_received_after: None,
        daily_send_limit: GMAIL_DAILY_SEND_LIMIT,
        max_queued_emails: DEFAULT_MAX_QUEUED_EMAILS,
        sends_per_minute: 0,
        folders: Vec::new(),
        append_sent: false,
    }
}

/// What a service account's JSON key file says about where its tokens come from, checked
/// for shape (the key itself is checked where it is used to sign).
fn service_account_settings(key: &SecretString) -> Result<OAuthSettings, ValidationError> {
    let field = "service_account_key";
    let bad = |why: String| ValidationError::new(field, why);
    let file: serde_json::Value = serde_json::from_str(secrecy::ExposeSecret::expose_secret(key))
        .map_err(|e| bad(format!("not a service account's JSON key file ({e}); paste the whole .json file the Google Cloud console downloaded")))?;
    let text = |name: &str| file.get(name).and_then(serde_json::Value::as_str);
    match text("type") {
        Some("service_account") => {}
        other => {
            return Err(bad(format!(
                "the key file is of type '{}', not 'service_account'; create a key for a service account (IAM & Admin › Service accounts › Keys)",
                other.unwrap_or("none")
            )));
        }
    }
    let client_email = text("client_email")
        .filter(|e| e.contains('@'))
        .ok_or_else(|| {
            bad("the key file has no client_email; download a new JSON key".to_owned())
        })?;
    if !text("private_key").is_some_and(|k| k.contains("PRIVATE KEY")) {
        return Err(bad(
            "the key file has no private_key; download a new JSON key (a key's private part is shown only once, in that file)".to_owned(),
        ));
    }
    let token_url = endpoint_url(
        text("token_uri").unwrap_or("https://oauth2.googleapis.com/token"),
        field,
    )?;
    let authorization_url = endpoint_url(
        text("auth_uri").unwrap_or("https://accounts.google.com/o/oauth2/auth"),
        field,
    )?;
    Ok(OAuthSettings {
        client_id: client_email.to_owned(),
        authorization_url,
        token_url,
        revocation_url: None,
        userinfo_url: None,
        scopes: vec![crate::google::MAIL_SCOPE.to_owned()],
    })
}

/// Where the Microsoft identity platform (v2.0) signs users of `tenant` in.
const MICROSOFT_LOGIN: &str = "https://login.microsoftonline.com";
/// Recipients a Microsoft 365 mailbox may send to per day (Exchange Online's recipient rate
/// limit). Mailbridge counts emails, so a profile sending to several recipients per email
/// should lower it.
pub const MICROSOFT_DAILY_SEND_LIMIT: u32 = 10_000;

/// Microsoft 365's servers, the Microsoft identity platform's endpoints for the tenant
/// (`common` unless given) and the scopes IMAP (or POP) and SMTP need with OAuth.
/// `offline_access` is what makes Microsoft issue a refresh token; `profile` puts
/// `preferred_username` in the ID token, which names the account when `email` is absent.
fn microsoft_preset(draft: &ProfileDraft) -> Result<ProfileSpec, ValidationError> {
    let pop3 = draft
        .incoming
        .as_ref()
        .and_then(|i| i.protocol)
        .is_some_and(|p| p == IncomingProtocol::Pop3);
    let (protocol, port, mail_scope) = if pop3 {
        (IncomingProtocol::Pop3, 995, "POP.AccessAsUser.All")
    } else {
        (IncomingProtocol::Imap, 993, "IMAP.AccessAsUser.All")
    };
    let tenant = draft
        .oauth
        .as_ref()
        .and_then(|o| o.tenant.as_deref())
        .unwrap_or("common");
    let (authorize, token) = microsoft_endpoints(tenant).map_err(|e| e.under("oauth"))?;
    let url = |s: &str| Url::parse(s).unwrap_or_else(|e| unreachable!("checked URL {s}: {e}"));
    Ok(ProfileSpec {
        name: "Microsoft 365".to_owned(),
        incoming: IncomingServer {
            protocol,
            host: Host::known("outlook.office365.com"),
            port: Port::new_const(port),
            security: Security::Tls,
        },
        outgoing: OutgoingServer {
            host: Host::known("smtp.office365.com"),
            port: Port::new_const(587),
            security: Security::Starttls,
            authentication: OutgoingAuth::Mailbox,
        },
        auth: AuthMethod::MicrosoftOauth,
        oauth: Some(OAuthSettings {
            client_id: String::new(),
            authorization_url: url(&authorize),
            token_url: url(&token),
            // Microsoft has no revocation endpoint (RFC 7009) for these tokens, and its
            // userinfo endpoint wants a Microsoft Graph token: the ID token names the account.
            revocation_url: None,
            userinfo_url: None,
            scopes: [
                &format!("https://outlook.office.com/{mail_scope}"),
                "https://outlook.office.com/SMTP.Send",
                "offline_access",
                "openid",
                "email",
                "profile",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        }),
        max_mailboxes: DEFAULT_MAX_MAILBOXES,
        max_connections: DEFAULT_MAX_MAILBOXES + CONNECTION_HEADROOM,
        poll_interval_seconds: DEFAULT_POLL_INTERVAL_SECONDS,
        process_emails_received_after: None,
        daily_send_limit: MICROSOFT_DAILY_SEND_LIMIT,
        max_queued_emails: DEFAULT_MAX_QUEUED_EMAILS,
        sends_per_minute: MICROSOFT_SENDS_PER_MINUTE,
        folders: Vec::new(),
        // Exchange Online files mail sent with SMTP AUTH in Sent Items itself.
        append_sent: false,
    })
}

/// The authorization and token endpoints for a Microsoft tenant: `common`, `organizations`,
/// `consumers`, a tenant id (a GUID) or one of the tenant's domain names.
fn microsoft_endpoints(tenant: &str) -> Result<(String, String), ValidationError> {
    let tenant = tenant.trim().to_ascii_lowercase();
    let guid = tenant.len() == 36
        && tenant.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    let known = ["common", "organizations", "consumers"].contains(&tenant.as_str());
    if !(known || guid || (tenant.contains('.') && crate::server::check_domain(&tenant).is_ok())) {
        return Err(ValidationError::new(
            "tenant",
            format!(
                "'{tenant}' is not a Microsoft tenant; use common, organizations, consumers, the tenant id (Microsoft Entra admin center › Overview › Tenant ID) or a domain of the tenant such as contoso.onmicrosoft.com"
            ),
        ));
    }
    let base = format!("{MICROSOFT_LOGIN}/{tenant}/oauth2/v2.0");
    Ok((format!("{base}/authorize"), format!("{base}/token")))
}

/// Whether `url` is on the Microsoft identity platform's login server.
fn is_microsoft_login(url: &str) -> bool {
    match (Url::parse(url.trim()), Url::parse(MICROSOFT_LOGIN)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

impl OAuthSettings {
    /// The Microsoft tenant these endpoints sign in from, when they are the Microsoft
    /// identity platform's.
    pub fn microsoft_tenant(&self) -> Option<&str> {
        let url = &self.authorization_url;
        if !is_microsoft_login(url.as_str()) {
            return None;
        }
        url.path_segments()?.next().filter(|t| !t.is_empty())
    }
}

/// A count setting from 1 to `max`, or `default` when not given.
fn bounded(
    value: Option<i64>,
    field: &str,
    max: i64,
    default: u32,
) -> Result<u32, ValidationError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(u32::try_from(n).unwrap_or(default)),
        Some(_) => Err(ValidationError::new(
            field,
            format!("{field} must be from 1 to {max}"),
        )),
    }
}

/// The port a client would expect for a protocol and a security mode.
fn default_port(protocol: Option<IncomingProtocol>, security: Security) -> u16 {
    match (protocol, security) {
        (Some(IncomingProtocol::Imap), Security::Tls) => 993,
        (Some(IncomingProtocol::Imap), _) => 143,
        (Some(IncomingProtocol::Pop3), Security::Tls) => 995,
        (Some(IncomingProtocol::Pop3), _) => 110,
        (None, Security::Tls) => 465,
        (None, _) => 587,
    }
}

/// The common part of both sides: host, port and security, each from the draft, the base,
/// or (port only) the protocol's default.
fn resolve_endpoint(
    host: Option<String>,
    port: Option<i64>,
    security: Option<Security>,
    protocol: Option<IncomingProtocol>,
    base: Option<(&Host, Option<Port>, Security)>,
    example: &str,
) -> Result<(Host, Port, Security), ValidationError> {
    let host = match host {
        Some(h) => Host::parse(&h, "host")?,
        None => base.map(|b| b.0.clone()).ok_or_else(|| {
            ValidationError::new("host", format!("host is required, e.g. \"{example}\""))
        })?,
    };
    let security = security.or(base.map(|b| b.2)).unwrap_or(Security::Tls);
    let port = match port {
        Some(p) => Port::parse(p, "port")?,
        // A changed security mode with no port given moves to that mode's usual port.
        None => match base {
            Some((_, Some(p), s)) if s == security => p,
            _ => Port::new_const(default_port(protocol, security)),
        },
    };
    Ok((host, port, security))
}

fn resolve_incoming(
    d: IncomingDraft,
    base: Option<&IncomingServer>,
) -> Result<IncomingServer, ValidationError> {
    let protocol = d
        .protocol
        .or(base.map(|b| b.protocol))
        .ok_or_else(|| ValidationError::new("protocol", "protocol is required: imap or pop3"))?;
    // A switched protocol (IMAP → POP3) with no port given moves to the new protocol's port.
    let same_protocol = base.is_some_and(|b| b.protocol == protocol);
    let (host, port, security) = resolve_endpoint(
        d.host,
        d.port,
        d.security,
        Some(protocol),
        base.map(|b| (&b.host, same_protocol.then_some(b.port), b.security)),
        "imap.example.com",
    )?;
    Ok(IncomingServer {
        protocol,
        host,
        port,
        security,
    })
}

fn resolve_outgoing(
    d: OutgoingDraft,
    base: Option<&OutgoingServer>,
) -> Result<OutgoingServer, ValidationError> {
    let (host, port, security) = resolve_endpoint(
        d.host,
        d.port,
        d.security,
        None,
        base.map(|b| (&b.host, Some(b.port), b.security)),
        "smtp.example.com",
    )?;
    Ok(OutgoingServer {
        host,
        port,
        security,
        authentication: d
            .authentication
            .or(base.map(|b| b.authentication))
            .unwrap_or(OutgoingAuth::Mailbox),
    })
}

fn resolve_oauth(
    d: OAuthDraft,
    base: Option<&OAuthSettings>,
) -> Result<OAuthSettings, ValidationError> {
    let client_id = match d.client_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        Some(_) => String::new(),
        None => base.map(|b| b.client_id.clone()).unwrap_or_default(),
    };
    if client_id.is_empty() {
        return Err(ValidationError::new(
            "client_id",
            "client_id is required; copy it from your OAuth client (Google Cloud console › APIs & Services › Credentials)",
        ));
    }
    let required = |raw: Option<String>, old: Option<&Url>, field: &str| match raw {
        Some(s) => endpoint_url(&s, field),
        None => old.cloned().ok_or_else(|| {
            ValidationError::new(field, format!("{field} is required for an oauth2 profile"))
        }),
    };
    let optional = |raw: Option<String>, old: Option<&Url>, field: &str| match raw {
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => endpoint_url(&s, field).map(Some),
        None => Ok(old.cloned()),
    };
    let authorization_url = required(
        d.authorization_url,
        base.map(|b| &b.authorization_url),
        "authorization_url",
    )?;
    let token_url = required(d.token_url, base.map(|b| &b.token_url), "token_url")?;
    let revocation_url = optional(
        d.revocation_url,
        base.and_then(|b| b.revocation_url.as_ref()),
        "revocation_url",
    )?;
    let userinfo_url = optional(
        d.userinfo_url,
        base.and_then(|b| b.userinfo_url.as_ref()),
        "userinfo_url",
    )?;
    let scopes = match d.scopes {
        Some(s) => s.into_iter().map(|s| s.trim().to_owned()).collect(),
        None => base.map(|b| b.scopes.clone()).unwrap_or_default(),
    };
    if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return Err(ValidationError::new(
            "scopes",
            "scopes must be a non-empty list of scope names without spaces, e.g. [\"https://mail.google.com/\"]",
        ));
    }
    Ok(OAuthSettings {
        client_id,
        authorization_url,
        token_url,
        revocation_url,
        userinfo_url,
        scopes,
    })
}

/// The first OAuth endpoint (by field name) whose origin — scheme, host and port — differs
/// between `old` and `new`: the secret and tokens go to these servers.
fn moved_endpoint(old: &OAuthSettings, new: &OAuthSettings) -> Option<&'static str> {
    let origin = |u: Option<&Url>| u.map(Url::origin);
    [
        (
            "authorization_url",
            Some(&old.authorization_url),
            Some(&new.authorization_url),
        ),
        ("token_url", Some(&old.token_url), Some(&new.token_url)),
        (
            "revocation_url",
            old.revocation_url.as_ref(),
            new.revocation_url.as_ref(),
        ),
        (
            "userinfo_url",
            old.userinfo_url.as_ref(),
            new.userinfo_url.as_ref(),
        ),
    ]
    .into_iter()
    .find(|(_, a, b)| b.is_some() && origin(*a) != origin(*b))
    .map(|(field, ..)| field)
}

/// An OAuth endpoint must be HTTPS; plain HTTP only to this machine (a local provider).
fn endpoint_url(raw: &str, field: &str) -> Result<Url, ValidationError> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        ValidationError::new(
            field,
            format!("'{raw}' is not a URL ({e}); write a full address such as https://provider.example/oauth2/token"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(ValidationError::new(
            field,
            format!("'{raw}' must use https (plain http is accepted only for localhost)"),
        )),
    }
}

fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(json: serde_json::Value) -> ProfileDraft {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn gmail_preset_fills_servers_endpoints_scope_and_limit() {
        let (spec, secret) = draft(serde_json::json!({
            "name": "Sales", "preset": "gmail",
            "oauth": {"client_id": "123.apps.googleusercontent.com", "client_secret": "s3cret"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.incoming.host.as_str(), "imap.gmail.com");
        assert_eq!(spec.incoming.port.get(), 993);
        assert_eq!(spec.outgoing.host.as_str(), "smtp.gmail.com");
        assert_eq!(spec.outgoing.port.get(), 465);
        assert_eq!(spec.auth, AuthMethod::GmailOauth);
        assert_eq!(spec.max_mailboxes, 100);
        let oauth = spec.oauth.unwrap();
        assert_eq!(
            oauth.token_url.as_str(),
            "https://oauth2.googleapis.com/token"
        );
        assert!(
            oauth
                .scopes
                .contains(&"https://mail.google.com/".to_owned())
        );
        assert!(matches!(secret, SecretChange::Set(_)));
    }

    #[test]
    fn gmail_preset_with_pop3_uses_pop_gmail_com() {
        let (spec, _) = draft(serde_json::json!({
            "name": "Pop", "preset": "gmail", "incoming": {"protocol": "pop3"},
            "oauth": {"client_id": "c", "client_secret": "s"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.incoming.host.as_str(), "pop.gmail.com");
        assert_eq!(spec.incoming.port.get(), 995);
    }

    #[test]
    fn microsoft_preset_fills_servers_tenant_endpoints_scopes_and_limits() {
        let (spec, secret) = draft(serde_json::json!({
            "name": "Contoso", "preset": "microsoft",
            "oauth": {"client_id": "6731de76-14a6-49ae-97bc-6eba6914391e", "client_secret": "s", "tenant": "Contoso.onmicrosoft.com"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.auth, AuthMethod::MicrosoftOauth);
        assert_eq!(spec.incoming.host.as_str(), "outlook.office365.com");
        assert_eq!(
            (spec.incoming.port.get(), spec.incoming.security),
            (993, Security::Tls)
        );
        assert_eq!(spec.outgoing.host.as_str(), "smtp.office365.com");
        assert_eq!(
            (spec.outgoing.port.get(), spec.outgoing.security),
            (587, Security::Starttls)
        );
        assert_eq!(spec.daily_send_limit, 10_000);
        assert_eq!(spec.sends_per_minute, 30);
        assert_eq!(spec.max_mailboxes, DEFAULT_MAX_MAILBOXES);
        assert!(
            !spec.append_sent,
            "Exchange Online files SMTP mail in Sent Items"
        );
        let oauth = spec.oauth.unwrap();
        assert_eq!(
            oauth.authorization_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
        );
        assert_eq!(
            oauth.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(oauth.microsoft_tenant(), Some("contoso.onmicrosoft.com"));
        for scope in [
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
        ] {
            assert!(oauth.scopes.iter().any(|s| s == scope), "{scope}");
        }
        assert!(matches!(secret, SecretChange::Set(_)));

        // POP3 asks for POP's scope; no tenant means `common`.
        let (spec, _) = draft(serde_json::json!({
            "name": "M", "preset": "microsoft", "incoming": {"protocol": "pop3"},
            "oauth": {"client_id": "c", "client_secret": "s"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.incoming.port.get(), 995);
        let oauth = spec.oauth.unwrap();
        assert_eq!(oauth.microsoft_tenant(), Some("common"));
        assert!(
            oauth
                .scopes
                .contains(&"https://outlook.office.com/POP.AccessAsUser.All".to_owned())
        );
    }

    #[test]
    fn a_tenant_is_checked_moves_the_endpoints_and_belongs_to_microsoft_only() {
        let microsoft = |tenant: &str| {
            draft(serde_json::json!({
                "name": "M", "preset": "microsoft",
                "oauth": {"client_id": "c", "client_secret": "s", "tenant": tenant}
            }))
            .resolve(None)
        };
        for good in [
            "organizations",
            "consumers",
            "9188040D-6C67-4C5B-B112-36A304B66DAD",
        ] {
            assert!(microsoft(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "contoso",
            "x/../../evil.example",
            "9188040d-6c67-4c5b-b112",
        ] {
            let e = microsoft(bad).unwrap_err();
            assert_eq!(e.field, "oauth.tenant", "{bad}");
            assert!(e.message.contains("Tenant ID"), "{e}");
        }
        let e = draft(serde_json::json!({
            "name": "G", "preset": "gmail",
            "oauth": {"client_id": "c", "client_secret": "s", "tenant": "common"}
        }))
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "oauth.tenant");
        let e = draft(
            serde_json::json!({"name": "M", "preset": "microsoft", "oauth": {"client_id": "c"}}),
        )
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "oauth.client_secret");
        assert!(e.message.contains("Certificates & secrets"), "{e}");

        // Patching the tenant moves both endpoints on the same server: no secret needed.
        let (base, _) = microsoft("common").unwrap();
        let stored = Stored {
            spec: &base,
            has_client_secret: true,
        };
        let (patched, secret) = draft(serde_json::json!({"oauth": {"tenant": "organizations"}}))
            .resolve(Some(stored))
            .unwrap();
        let oauth = patched.oauth.unwrap();
        assert_eq!(oauth.microsoft_tenant(), Some("organizations"));
        assert!(
            oauth
                .token_url
                .as_str()
                .ends_with("/organizations/oauth2/v2.0/token")
        );
        assert!(matches!(secret, SecretChange::Keep));
        // As the console's edit form sends it: the tenant beside the stored Microsoft URLs.
        let stored = Stored {
            spec: &base,
            has_client_secret: true,
        };
        let old = base.oauth.as_ref().unwrap();
        let (patched, _) = draft(serde_json::json!({"oauth": {"tenant": "consumers",
            "authorization_url": old.authorization_url.as_str(), "token_url": old.token_url.as_str()}}))
        .resolve(Some(stored))
        .unwrap();
        assert_eq!(patched.oauth.unwrap().microsoft_tenant(), Some("consumers"));
        // Another login server beside a tenant is kept (a test provider, a national cloud).
        let (spec, _) = draft(serde_json::json!({"name": "M", "preset": "microsoft",
            "oauth": {"client_id": "c", "client_secret": "s", "tenant": "common",
                      "token_url": "http://127.0.0.1:9/token"}}))
        .resolve(None)
        .unwrap();
        let oauth = spec.oauth.unwrap();
        assert_eq!(oauth.token_url.as_str(), "http://127.0.0.1:9/token");
        assert_eq!(oauth.microsoft_tenant(), Some("common"));
    }

    #[test]
    fn a_service_account_profile_takes_its_endpoints_from_the_key_and_keeps_it_on_patch() {
        let key = serde_json::json!({
            "type": "service_account", "client_email": "sync@acme.iam.gserviceaccount.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
            "token_uri": "https://oauth2.googleapis.com/token", "client_id": "1178"
        })
        .to_string();
        let (spec, secret) = draft(serde_json::json!({
            "name": "Acme", "preset": "gmail", "auth": "google_service_account",
            "oauth": {"service_account_key": key}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.auth, AuthMethod::GoogleServiceAccount);
        assert_eq!(spec.max_mailboxes, DEFAULT_MAX_MAILBOXES, "not Gmail's 100");
        let oauth = spec.oauth.clone().unwrap();
        assert_eq!(oauth.client_id, "sync@acme.iam.gserviceaccount.com");
        assert_eq!(oauth.scopes, vec!["https://mail.google.com/".to_owned()]);
        assert!(matches!(secret, SecretChange::Set(_)));
        let stored = Stored {
            spec: &spec,
            has_client_secret: true,
        };
        let (patched, secret) = draft(serde_json::json!({"max_mailboxes": 5000}))
            .resolve(Some(stored))
            .unwrap();
        assert_eq!(patched.max_mailboxes, 5000);
        assert_eq!(patched.oauth, spec.oauth);
        assert!(matches!(secret, SecretChange::Keep));

        let e = draft(
            serde_json::json!({"name": "A", "preset": "gmail", "auth": "google_service_account"}),
        )
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "oauth.service_account_key");
        let e = draft(serde_json::json!({"name": "A", "preset": "gmail",
            "oauth": {"client_id": "c", "client_secret": "s", "service_account_key": "{}"}}))
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "oauth.service_account_key");
        assert!(e.message.contains("only to google_service_account"), "{e}");
        let e = draft(serde_json::json!({"name": "A", "preset": "gmail", "auth": "google_service_account",
            "oauth": {"service_account_key": "{\"type\": \"service_account\", \"client_email\": \"x@y\"}"}}))
        .resolve(None)
        .unwrap_err();
        assert!(e.message.contains("no private_key"), "{e}");
    }

    #[test]
    fn gmail_oauth_refuses_more_than_100_mailboxes_and_a_missing_secret() {
        let e = draft(serde_json::json!({
            "name": "G", "preset": "gmail", "max_mailboxes": 101,
            "oauth": {"client_id": "c", "client_secret": "s"}
        }))
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "max_mailboxes");
        assert!(e.message.contains("at most 100"), "{e}");
        let e =
            draft(serde_json::json!({"name": "G", "preset": "gmail", "oauth": {"client_id": "c"}}))
                .resolve(None)
                .unwrap_err();
        assert_eq!(e.field, "oauth.client_secret");
    }

    #[test]
    fn a_password_profile_needs_both_servers_and_defaults_ports() {
        let e = draft(
            serde_json::json!({"name": "P", "auth": "password", "incoming": {"protocol": "imap"}}),
        )
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.field, "incoming.host");
        let (spec, _) = draft(serde_json::json!({
            "name": "P", "auth": "password",
            "incoming": {"protocol": "pop3", "host": "mail.example.com", "security": "starttls"},
            "outgoing": {"host": "mail.example.com", "security": "starttls"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.incoming.port.get(), 110);
        assert_eq!(spec.outgoing.port.get(), 587);
        assert_eq!(spec.max_mailboxes, DEFAULT_MAX_MAILBOXES);
    }

    #[test]
    fn patching_keeps_what_is_not_named_and_the_stored_secret() {
        let (base, _) = draft(serde_json::json!({
            "name": "G", "preset": "gmail", "oauth": {"client_id": "c", "client_secret": "s"}
        }))
        .resolve(None)
        .unwrap();
        let stored = Stored {
            spec: &base,
            has_client_secret: true,
        };
        let (patched, secret) = draft(serde_json::json!({"name": "Renamed", "max_mailboxes": 20}))
            .resolve(Some(stored))
            .unwrap();
        assert_eq!(patched.name, "Renamed");
        assert_eq!(patched.max_mailboxes, 20);
        assert_eq!(patched.incoming, base.incoming);
        assert_eq!(patched.oauth, base.oauth);
        assert!(matches!(secret, SecretChange::Keep));

        let stored = Stored {
            spec: &base,
            has_client_secret: true,
        };
        let e = draft(serde_json::json!({"preset": "gmail"}))
            .resolve(Some(stored))
            .unwrap_err();
        assert_eq!(e.field, "preset");
    }

    #[test]
    fn the_outgoing_login_defaults_to_the_mailboxs_own_and_a_relay_keeps_none() {
        let (spec, _) = draft(serde_json::json!({
            "name": "P", "auth": "password",
            "incoming": {"protocol": "imap", "host": "mail.example.com"},
            "outgoing": {"host": "mail.example.com"}
        }))
        .resolve(None)
        .unwrap();
        assert_eq!(spec.outgoing.authentication, OutgoingAuth::Mailbox);
        let stored = Stored {
            spec: &spec,
            has_client_secret: false,
        };
        let (relay, _) = draft(serde_json::json!({"outgoing": {"host": "relay.example.com", "port": 25, "security": "starttls", "authentication": "none"}}))
            .resolve(Some(stored))
            .unwrap();
        assert_eq!(relay.outgoing.authentication, OutgoingAuth::None);
        let stored = Stored {
            spec: &relay,
            has_client_secret: false,
        };
        let (moved, _) = draft(serde_json::json!({"outgoing": {"port": 587}}))
            .resolve(Some(stored))
            .unwrap();
        assert_eq!(moved.outgoing.authentication, OutgoingAuth::None, "kept");
        let bad: Result<ProfileDraft, _> = serde_json::from_value(
            serde_json::json!({"outgoing": {"authentication": "anonymous"}}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn moving_an_oauth_endpoint_elsewhere_needs_the_secret_again() {
        let (base, _) = draft(serde_json::json!({
            "name": "G", "preset": "gmail", "oauth": {"client_id": "c", "client_secret": "s"}
        }))
        .resolve(None)
        .unwrap();
        let stored = || Stored {
            spec: &base,
            has_client_secret: true,
        };
        for field in [
            "authorization_url",
            "token_url",
            "revocation_url",
            "userinfo_url",
        ] {
            let moved = serde_json::json!({"oauth": {field: "https://idp.attacker.example/x"}});
            let e = draft(moved).resolve(Some(stored())).unwrap_err();
            assert_eq!(e.field, "oauth.client_secret", "{field}");
            assert!(e.message.contains(field), "{e}");
            let with_secret = serde_json::json!({"oauth": {field: "https://idp.attacker.example/x", "client_secret": "s2"}});
            assert!(
                draft(with_secret).resolve(Some(stored())).is_ok(),
                "{field}"
            );
        }
        // Another path on the same server, or removing an optional endpoint, sends nothing
        // anywhere new.
        let same_host = serde_json::json!({"oauth": {"token_url": "https://oauth2.googleapis.com/v2/token", "revocation_url": ""}});
        assert!(draft(same_host).resolve(Some(stored())).is_ok());
    }

    #[test]
    fn oauth_endpoints_must_be_https_except_on_loopback() {
        let base = serde_json::json!({
            "name": "O", "auth": "oauth2",
            "incoming": {"protocol": "imap", "host": "127.0.0.1"},
            "outgoing": {"host": "127.0.0.1"},
        });
        let with = |oauth: serde_json::Value| {
            let mut v = base.clone();
            v["oauth"] = oauth;
            draft(v).resolve(None)
        };
        assert!(with(serde_json::json!({"client_id": "c", "authorization_url": "http://127.0.0.1:9/a", "token_url": "http://localhost:9/t", "scopes": ["mail"]})).is_ok());
        let e = with(serde_json::json!({"client_id": "c", "authorization_url": "http://idp.example/a", "token_url": "https://idp.example/t", "scopes": ["mail"]})).unwrap_err();
        assert_eq!(e.field, "oauth.authorization_url");
        let e = with(serde_json::json!({"client_id": "c", "authorization_url": "https://idp.example/a", "scopes": ["mail"]})).unwrap_err();
        assert_eq!(e.field, "oauth.token_url");
        let e = with(serde_json::json!({"client_id": "c", "authorization_url": "https://idp.example/a", "token_url": "https://idp.example/t", "scopes": []})).unwrap_err();
        assert_eq!(e.field, "oauth.scopes");
    }
}
