//! [`Tester`]: "Test & Enable Mailbox". For each direction that uses server-side
//! synchronization it logs in with the mailbox's current credentials — incoming: open INBOX
//! (IMAP) or count messages (POP3); outgoing: log in to SMTP, sending nothing — and records
//! `success` or `failure` with the server's reason and what to do. The mailbox is enabled
//! when every such direction succeeded. A profile's mailboxes are tested concurrently, never
//! holding more connections than the profile allows.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mailbridge_core::{
    AuthMethod, ConnectionStatus, IncomingProtocol, MailboxId, OutgoingAuth, ProfileId,
};
use mailbridge_proto::imap::ImapSession;
use mailbridge_proto::pop3::Pop3Session;
use mailbridge_proto::smtp::SmtpSession;
use mailbridge_proto::{Credentials, ErrorKind, ProtoError, TlsSettings};
use mailbridge_store::{Actor, MailboxRecord, ProfileRecord, Store, StoreError, TestOutcome};

use crate::incoming::SyncError;
use crate::limits::ConnectionLimits;
use crate::tokens::{TokenError, TokenService};

/// Logs in to a mailbox's servers on the API's behalf: Test & Enable, and setting flags
/// (`crate::flags`).
pub struct Tester {
    pub(crate) store: Store,
    pub(crate) tokens: Arc<TokenService>,
    pub(crate) tls: TlsSettings,
    pub(crate) timeout: Duration,
    client_name: String,
    /// Shared with the engine: a test's connection counts against the profile's limit.
    pub(crate) limits: Arc<ConnectionLimits>,
}

/// A profile-wide run: how many mailboxes, how many came out enabled, and each one.
#[derive(Debug)]
pub struct ProfileTestSummary {
    pub tested: usize,
    pub enabled: usize,
    pub failed: usize,
    pub mailboxes: Vec<MailboxRecord>,
}

impl Tester {
    /// `client_name` is what SMTP EHLO says; `timeout` bounds connecting and every read.
    pub fn new(
        store: Store,
        tokens: Arc<TokenService>,
        tls: TlsSettings,
        timeout: Duration,
        client_name: String,
        limits: Arc<ConnectionLimits>,
    ) -> Self {
        Self {
            store,
            tokens,
            tls,
            timeout,
            client_name,
            limits,
        }
    }

    /// Tests one mailbox and records the outcome. Returns the mailbox as now stored.
    pub async fn test_mailbox(
        &self,
        actor: &Actor,
        mailbox: MailboxId,
    ) -> Result<MailboxRecord, StoreError> {
        let record = self.store.get_mailbox(mailbox).await?;
        let profile = self.store.get_profile(record.spec.profile_id).await?;
        // Server-side sync and Email Router groups both log in to the mail servers.
        let incoming_used = record.spec.incoming_method.is_synchronized();
        let outgoing_used = record.spec.outgoing_method.is_synchronized();
        // A relay without login needs none of the mailbox's credentials.
        let relay = profile.spec.outgoing.authentication == OutgoingAuth::None;
        // One of the profile's connections: incoming is tested, then outgoing.
        let _slot = self.limits.acquire(&profile).await;
        let credentials = if incoming_used || (outgoing_used && !relay) {
            Some(self.credentials(&record, &profile).await)
        } else {
            None
        };
        let incoming = match (incoming_used, &credentials) {
            (true, Some(Ok(credentials))) => Some(self.test_incoming(&profile, credentials).await),
            (true, Some(Err(failure))) => Some(failure.clone()),
            _ => None,
        };
        let outgoing = match (outgoing_used, &credentials) {
            (false, _) => None,
            (true, _) if relay => Some(self.test_relay(&record, &profile).await),
            (true, Some(Ok(credentials))) => Some(self.test_outgoing(&profile, credentials).await),
            (true, Some(Err(failure))) => Some(failure.clone()),
            (true, None) => None,
        };
        let ok = |o: &Option<TestOutcome>| {
            o.as_ref()
                .is_none_or(|o| o.status == ConnectionStatus::Success)
        };
        let enabled = (incoming_used || outgoing_used) && ok(&incoming) && ok(&outgoing);
        tracing::info!(%mailbox, enabled, incoming = ?incoming.as_ref().map(|o| o.status), outgoing = ?outgoing.as_ref().map(|o| o.status), "tested mailbox");
        self.store
            .record_test(
                actor,
                mailbox,
                incoming.as_ref(),
                outgoing.as_ref(),
                enabled,
            )
            .await
    }

    /// Tests every mailbox of a profile, at most `max_connections` at a time.
    pub async fn test_profile(
        &self,
        actor: &Actor,
        profile: ProfileId,
    ) -> Result<ProfileTestSummary, StoreError> {
        let record = self.store.get_profile(profile).await?;
        let mailboxes = self.store.profile_mailboxes(profile).await?;
        // Each mailbox test holds one of the profile's connections (incoming, then outgoing),
        // shared with the engine's sessions, so the profile's limit holds over both.
        let mut results: Vec<MailboxRecord> = futures::stream::iter(mailboxes)
            .map(|m| self.test_mailbox(actor, m.id))
            .buffer_unordered(record.spec.max_connections as usize)
            .try_collect()
            .await?;
        results.sort_by_key(|m| m.id);
        let enabled = results.iter().filter(|m| m.enabled).count();
        Ok(ProfileTestSummary {
            tested: results.len(),
            enabled,
            failed: results.len() - enabled,
            mailboxes: results,
        })
    }

    /// The mailbox's login (a fresh access token, or its password), or why there is none
    /// and what to do.
    async fn credentials(
        &self,
        mailbox: &MailboxRecord,
        profile: &ProfileRecord,
    ) -> Result<Credentials, TestOutcome> {
        let auth = profile.spec.auth;
        let e = match crate::login::credentials(&self.store, &self.tokens, mailbox, profile).await {
            Ok((credentials, _)) => return Ok(credentials),
            Err(e) => e,
        };
        Err(match e {
            SyncError::NoPassword => TestOutcome::failure(
                "no password is stored for this mailbox".to_owned(),
                "Set the mailbox's password (and login name if it is not the address), then test again.",
            ),
            SyncError::Token(TokenError::NotSignedIn(_)) => TestOutcome::failure(
                "the mailbox is not signed in".to_owned(),
                auth.sign_in_first_hint(),
            ),
            SyncError::Token(TokenError::Delegation { reason, hint }) => {
                TestOutcome::failure(reason, &hint)
            }
            SyncError::Token(ref e @ TokenError::SignInRequired { ref reason, .. }) => {
                TestOutcome::failure(e.to_string(), auth.refused_sign_in_hint(reason))
            }
            SyncError::Token(e) if e.is_transient() => TestOutcome::failure(
                e.to_string(),
                "The sign-in provider could not be reached; try again in a few minutes.",
            ),
            SyncError::Token(e) => TestOutcome::failure(
                e.to_string(),
                "Check the profile's OAuth client id, secret and endpoints.",
            ),
            e => TestOutcome::failure(
                e.to_string(),
                "Try again; if it persists, an admin should read the server log.",
            ),
        })
    }

    async fn test_incoming(
        &self,
        profile: &ProfileRecord,
        credentials: &Credentials,
    ) -> TestOutcome {
        let server = &profile.spec.incoming;
        let endpoint = crate::login::incoming(profile, self.timeout);
        let result = match server.protocol {
            IncomingProtocol::Imap => {
                async {
                    let mut s = ImapSession::login(&endpoint, &self.tls, credentials).await?;
                    s.examine("INBOX").await?;
                    s.logout().await;
                    Ok::<_, ProtoError>(())
                }
                .await
            }
            IncomingProtocol::Pop3 => {
                async {
                    let mut s = Pop3Session::login(&endpoint, &self.tls, credentials).await?;
                    s.stat().await?;
                    s.quit().await
                }
                .await
            }
        };
        outcome(result, profile, Direction::Incoming(server.protocol))
    }

    async fn test_outgoing(
        &self,
        profile: &ProfileRecord,
        credentials: &Credentials,
    ) -> TestOutcome {
        let endpoint = crate::login::outgoing(profile, self.timeout);
        let result = async {
            let s =
                SmtpSession::login(&endpoint, &self.tls, credentials, &self.client_name).await?;
            s.quit().await
        }
        .await;
        outcome(result, profile, Direction::Outgoing)
    }

    /// A relay that takes mail without a login: it must accept the mailbox's address as the
    /// sender and as a recipient (MAIL FROM, RCPT TO, then RSET: nothing is sent), and is never
    /// offered credentials.
    async fn test_relay(&self, mailbox: &MailboxRecord, profile: &ProfileRecord) -> TestOutcome {
        let endpoint = crate::login::outgoing(profile, self.timeout);
        let address = mailbox.spec.email.as_str();
        let result = async {
            let mut s = SmtpSession::connect(&endpoint, &self.tls, &self.client_name).await?;
            s.check_relay(address, address).await?;
            s.quit().await
        }
        .await;
        match result {
            Ok(()) => TestOutcome::success(),
            Err(e) => {
                let hint = match &e.kind {
                    ErrorKind::Rejected { .. } => {
                        "The relay refused mail from this mailbox without a login: allow this server's address on the relay (its trusted networks or connectors), or set the profile's outgoing authentication to the mailbox's login."
                    }
                    _ => hint(&e, profile, Direction::Outgoing),
                };
                TestOutcome::failure(e.to_string(), hint)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Incoming(IncomingProtocol),
    Outgoing,
}

fn outcome(
    result: Result<(), ProtoError>,
    profile: &ProfileRecord,
    direction: Direction,
) -> TestOutcome {
    match result {
        Ok(()) => TestOutcome::success(),
        Err(e) => {
            let hint = hint(&e, profile, direction);
            TestOutcome::failure(e.to_string(), hint)
        }
    }
}

/// What a person can do about a failure, in the words of the product they use.
fn hint(e: &ProtoError, profile: &ProfileRecord, direction: Direction) -> &'static str {
    let gmail = profile.spec.auth == AuthMethod::GmailOauth;
    let microsoft = profile.spec.auth == AuthMethod::MicrosoftOauth;
    let oauth = profile.spec.auth.is_oauth();
    match &e.kind {
        ErrorKind::AuthRefused { words, .. } | ErrorKind::Rejected { words, .. }
            if microsoft && mailbridge_core::microsoft::smtp_hint(words).is_some() =>
        {
            mailbridge_core::microsoft::SMTP_AUTH_DISABLED_HINT
        }
        ErrorKind::AuthRefused { words, .. }
        | ErrorKind::Rejected { words, .. }
        | ErrorKind::Unsupported(words)
            if gmail
                && (words.contains("not enabled for IMAP")
                    || words.contains("IMAP access is disabled")) =>
        {
            "Enable IMAP in Gmail settings (Settings › See all settings › Forwarding and POP/IMAP), or ask your Google Workspace admin to allow it."
        }
        ErrorKind::AuthRefused { words, .. } | ErrorKind::Rejected { words, .. }
            if gmail && words.contains("not enabled for POP") =>
        {
            "Enable POP in Gmail settings (Settings › See all settings › Forwarding and POP/IMAP)."
        }
        ErrorKind::AuthRefused { .. } if gmail => {
            "Sign in to Gmail again for this mailbox, then test again."
        }
        ErrorKind::AuthRefused { .. } if microsoft => match direction {
            Direction::Incoming(_) => {
                "Check that IMAP (or POP) is allowed for the mailbox (Microsoft 365 admin center › Users › Active users › the user › Mail › Manage email apps) and that the app registration has the IMAP.AccessAsUser.All (or POP.AccessAsUser.All) permission; then sign in with Microsoft again and test again."
            }
            Direction::Outgoing => {
                "Check that Authenticated SMTP is allowed for the mailbox (Microsoft 365 admin center › Users › Active users › the user › Mail › Manage email apps) and that the app registration has the SMTP.Send permission; then sign in with Microsoft again and test again."
            }
        },
        ErrorKind::AuthRefused { .. } if oauth => {
            "Sign in again for this mailbox; if it keeps failing, check that the server accepts OAuth logins for this account."
        }
        ErrorKind::AuthRefused { .. } => "Check the mailbox's login name and password.",
        ErrorKind::Connect(_) => {
            "Check the server name and port in the email server profile, and that this server can reach it."
        }
        ErrorKind::Timeout(_) => {
            "The server did not answer: check the server name, the port and the security setting, or try again later."
        }
        ErrorKind::Tls(_) => {
            "Check the security setting (tls for ports 993, 995, 465; starttls for 143, 110, 587) and that the server's certificate is valid."
        }
        ErrorKind::Unsupported(_) => match direction {
            Direction::Incoming(IncomingProtocol::Imap) if gmail => {
                "Enable IMAP in Gmail settings (Settings › See all settings › Forwarding and POP/IMAP)."
            }
            _ => {
                "Check the security setting and the port: the server does not offer what this profile needs on this connection."
            }
        },
        ErrorKind::Rejected {
            transient: true, ..
        }
        | ErrorKind::Io(_)
        | ErrorKind::Unconfirmed(_) => {
            "The server had a temporary problem; try again in a few minutes."
        }
        ErrorKind::UnsafeValue(_) => {
            "Correct the value the message names (set the password or login name again, without a line break), then test again."
        }
        ErrorKind::TooLarge(_) => {
            "The server sent more than Mailbridge accepts: if it is a message, move or delete it in the provider's own web mail; otherwise ask the server's administrator."
        }
        ErrorKind::Rejected { .. } | ErrorKind::Protocol(_) => match direction {
            Direction::Incoming(IncomingProtocol::Imap) => {
                "The INBOX could not be opened; check that the account has a mailbox on this server."
            }
            Direction::Incoming(IncomingProtocol::Pop3) => {
                "The maildrop could not be opened; check that the account has a mailbox on this server."
            }
            Direction::Outgoing => {
                "Check the outgoing server settings in the email server profile."
            }
        },
    }
}
