//! [`SignIn`]: the mailbox user's "Sign in to Gmail" — the OAuth 2.0 authorization-code flow
//! with PKCE (RFC 6749 §4.1, RFC 7636), checked the way a security reviewer expects:
//! a single-use state bound to the user and the mailbox that expires in 10 minutes, the
//! signed-in account must be the mailbox's address, a refresh token and the mail scope must
//! be granted, and nothing is stored unless every check passes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mailbridge_core::{AuthMethod, Clock, MailboxId, ProfileId, Role};
use mailbridge_oauth::{IDENTITY_SCOPES, OAuthError, Pkce, Provider, random_token};
use mailbridge_store::{
    Actor, MailboxRecord, NewOAuthState, Store, StoreError, StoredTokens, TokenSet, UserRecord,
};
use secrecy::SecretString;
use url::Url;

/// How long a consent page may stay open before its state expires.
pub const STATE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);

/// How long a hosted sign-in link works (once).
pub const LINK_LIFETIME: chrono::Duration = chrono::Duration::minutes(30);

/// Pending sign-ins kept per mailbox unless configured: enough for a few tabs or retries.
pub const DEFAULT_MAX_PENDING_SIGN_INS: u32 = 5;

/// Why a sign-in failed, in words for the person who tried.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(
        "the profile of {0} does not use OAuth, so there is nothing to sign in to; its mailboxes use passwords"
    )]
    NotOAuth(String),
    #[error(
        "the profile of {0} uses a Google service account: nobody signs in; run Test & Enable Mailbox"
    )]
    NoSignInNeeded(String),
    #[error("the sign-in answer carries no state; start again from the \"Sign in\" button")]
    MissingState,
    #[error(
        "this sign-in link is not valid (already used, or not issued by this Mailbridge); start again from the \"Sign in\" button"
    )]
    UnknownState,
    #[error(
        "this sign-in link expired (links are valid for 10 minutes); start again from the \"Sign in\" button"
    )]
    ExpiredState,
    #[error("access was not granted at the consent page ({detail}). {hint}")]
    Denied {
        /// The provider's error and description.
        detail: String,
        /// What to do, in the provider's terms.
        hint: &'static str,
    },
    #[error("the sign-in answer carries no authorization code; start again")]
    MissingCode,
    #[error("you may no longer sign in this mailbox; ask an admin")]
    NotAllowed,
    #[error(
        "you signed in as {signed_in}, but this mailbox is {expected}; sign in again and choose {expected}{}",
        claim_note(claim)
    )]
    WrongAccount {
        signed_in: String,
        expected: String,
        /// The ID token or userinfo claim that named the account signed in.
        claim: &'static str,
    },
    #[error(
        "the provider did not say which account signed in, so it cannot be checked; an admin must set the profile's userinfo_url (or ask for the 'openid email' scopes)"
    )]
    NoIdentity,
    #[error(
        "the provider says {0} is not verified; verify the address with the provider, then sign in again"
    )]
    UnverifiedAccount(String),
    #[error(
        "{provider} did not grant access to mail; sign in again and allow access (missing scope: {scope})"
    )]
    ScopeNotGranted {
        provider: &'static str,
        scope: String,
    },
    #[error("{0}")]
    NoRefreshToken(&'static str),
    #[error("signing in failed: {0}")]
    Provider(#[from] OAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct SignIn {
    store: Store,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    redirect_uri: String,
    max_pending: u32,
}

/// Names the claim compared when it is not the plain `email` (Microsoft's sign-in name).
fn claim_note(claim: &str) -> String {
    if claim == "email" {
        String::new()
    } else {
        format!(" (the provider named the account by its {claim})")
    }
}

/// The provider's name in messages to the person signing in.
fn provider_name(auth: AuthMethod) -> &'static str {
    match auth {
        AuthMethod::GmailOauth => "Google",
        AuthMethod::MicrosoftOauth => "Microsoft",
        AuthMethod::Oauth2 | AuthMethod::Password | AuthMethod::GoogleServiceAccount => {
            "The provider"
        }
    }
}

/// The query a provider sends back to the redirect URI (RFC 6749 §4.1.2).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Callback {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl SignIn {
    pub fn new(
        store: Store,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        redirect_uri: String,
    ) -> Self {
        Self {
            store,
            http,
            clock,
            redirect_uri,
            max_pending: DEFAULT_MAX_PENDING_SIGN_INS,
        }
    }

    /// Keeps at most `max` pending sign-ins per mailbox: starting one more drops the oldest
    /// (its link stops working), so repeated starts cannot pile up state rows.
    #[must_use]
    pub fn with_max_pending(mut self, max: u32) -> Self {
        self.max_pending = max.max(1);
        self
    }

    async fn provider(&self, mailbox: &MailboxRecord) -> Result<Provider, SignInError> {
        let provider = crate::provider::for_profile(
            &self.store,
            &self.http,
            mailbox.spec.profile_id,
            &self.redirect_uri,
        )
        .await?
        .ok_or_else(|| SignInError::NotOAuth(mailbox.spec.email.to_string()))?;
        if provider.auth() == AuthMethod::GoogleServiceAccount {
            return Err(SignInError::NoSignInNeeded(mailbox.spec.email.to_string()));
        }
        Ok(provider)
    }

    /// Begins a sign-in by `user` for `mailbox` (the caller checked they may): records a
    /// state and a PKCE verifier, and returns the consent page to send the browser to.
    pub async fn start(
        &self,
        user: &UserRecord,
        mailbox: &MailboxRecord,
    ) -> Result<Url, SignInError> {
        self.start_returning(user, mailbox, None).await
    }

    /// [`SignIn::start`] for a hosted sign-in: the person is sent back to `return_url` when
    /// it completes or fails (see [`SignIn::finish_returning`]).
    pub async fn start_returning(
        &self,
        user: &UserRecord,
        mailbox: &MailboxRecord,
        return_url: Option<&Url>,
    ) -> Result<Url, SignInError> {
        let provider = self.provider(mailbox).await?;
        let state = random_token();
        let pkce = Pkce::generate();
        self.store
            .create_oauth_state(
                &NewOAuthState {
                    state: &state,
                    mailbox: mailbox.id,
                    user: user.id,
                    pkce_verifier: &pkce.verifier,
                    expires_at: self.clock.now() + STATE_LIFETIME,
                    return_url: return_url.map(Url::as_str),
                },
                self.max_pending,
            )
            .await?;
        Ok(provider.authorization_url(&state, &pkce.challenge, mailbox.spec.email.as_str()))
    }

    /// A hosted sign-in link for `mailbox`, made by `user` (the caller checked they may):
    /// the token to put in the link, and until when it works. The mailbox's profile must
    /// sign in with OAuth.
    pub async fn create_link(
        &self,
        user: &UserRecord,
        mailbox: &MailboxRecord,
        return_url: &Url,
    ) -> Result<(String, DateTime<Utc>), SignInError> {
        self.provider(mailbox).await?;
        let token = random_token();
        let expires_at = self.clock.now() + LINK_LIFETIME;
        self.store
            .create_sign_in_link(&token, mailbox.id, user.id, return_url.as_str(), expires_at)
            .await?;
        Ok((token, expires_at))
    }

    /// Opens a hosted sign-in link (once): the consent page to send the browser to.
    pub async fn open_link(&self, token: &str) -> Result<Url, LinkRefused> {
        let link = match self.store.take_sign_in_link(token).await {
            Ok(Some(link)) => link,
            Ok(None) => return Err(LinkRefused::Unknown),
            Err(e) => return Err(LinkRefused::Failed(e.into())),
        };
        let back = ReturnTo {
            url: Url::parse(&link.return_url).map_err(|e| {
                LinkRefused::Failed(
                    StoreError::Corrupt {
                        what: "sign-in link".to_owned(),
                        why: e.to_string(),
                    }
                    .into(),
                )
            })?,
            mailbox: link.mailbox_id,
        };
        let refuse = |code: &'static str, message: String| LinkRefused::Back {
            to: back.clone(),
            code,
            message,
        };
        if link.used {
            return Err(refuse(
                "link_used",
                "this sign-in link was opened already (a link works once); ask for a new one"
                    .to_owned(),
            ));
        }
        if link.expires_at < self.clock.now() {
            return Err(refuse(
                "link_expired",
                "this sign-in link expired (links work for 30 minutes); ask for a new one"
                    .to_owned(),
            ));
        }
        let started = async {
            let mailbox = self.store.get_mailbox(link.mailbox_id).await?;
            let user = self
                .store
                .get_user(link.user_id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => SignInError::NotAllowed,
                    other => other.into(),
                })?;
            if user.role != Role::Admin && user.id != mailbox.spec.owner_user_id {
                return Err(SignInError::NotAllowed);
            }
            self.start_returning(&user, &mailbox, Some(&back.url)).await
        }
        .await;
        started.map_err(|e| refuse(e.code(), e.to_string()))
    }

    /// Completes a sign-in from the provider's answer. Stores the tokens only when every
    /// check passes; returns the mailbox that is now signed in.
    pub async fn finish(&self, answer: Callback) -> Result<MailboxRecord, SignInError> {
        self.finish_returning(answer).await.0
    }

    /// [`SignIn::finish`], and, for a hosted sign-in, where to send the person back to
    /// (with the mailbox it was for), whatever the outcome.
    pub async fn finish_returning(
        &self,
        answer: Callback,
    ) -> (Result<MailboxRecord, SignInError>, Option<ReturnTo>) {
        let state = match answer.state.clone().filter(|s| !s.is_empty()) {
            Some(s) => s,
            None => return (Err(SignInError::MissingState), None),
        };
        // Taken (deleted) before anything else: a state works once, whatever happens next.
        let pending = match self.store.take_oauth_state(&state).await {
            Ok(Some(p)) => p,
            Ok(None) => return (Err(SignInError::UnknownState), None),
            Err(e) => return (Err(e.into()), None),
        };
        let return_to = pending
            .return_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .map(|url| ReturnTo {
                url,
                mailbox: pending.mailbox_id,
            });
        (self.complete(pending, answer).await, return_to)
    }

    /// Everything after the state was taken.
    async fn complete(
        &self,
        pending: mailbridge_store::OAuthState,
        answer: Callback,
    ) -> Result<MailboxRecord, SignInError> {
        if pending.expires_at < self.clock.now() {
            return Err(SignInError::ExpiredState);
        }
        if let Some(error) = answer.error {
            let detail = match answer.error_description {
                Some(d) if !d.is_empty() => format!("{error}: {d}"),
                _ => error,
            };
            return Err(SignInError::Denied {
                hint: mailbridge_core::microsoft::sign_in_hint(&detail)
                    .unwrap_or("To connect the mailbox, sign in again and allow access."),
                detail,
            });
        }
        let code = answer
            .code
            .filter(|c| !c.is_empty())
            .ok_or(SignInError::MissingCode)?;
        let mailbox = self.store.get_mailbox(pending.mailbox_id).await?;
        let user = self
            .store
            .get_user(pending.user_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => SignInError::NotAllowed,
                other => other.into(),
            })?;
        if user.role != Role::Admin && user.id != mailbox.spec.owner_user_id {
            return Err(SignInError::NotAllowed);
        }
        let provider = self.provider(&mailbox).await?;
        let tokens = provider
            .exchange_code(
                &code,
                secrecy::ExposeSecret::expose_secret(&pending.pkce_verifier),
            )
            .await?;

        let checked = self.check(&provider, &mailbox, &tokens).await;
        let (account, refresh_token, scopes) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                // Tokens we refuse to keep are given back, so no grant lingers unused.
                if let Err(revoke) = provider.revoke(&tokens.access_token).await {
                    tracing::info!(error = %revoke, "could not revoke refused tokens");
                }
                return Err(e);
            }
        };
        let expires_at: DateTime<Utc> =
            self.clock.now() + chrono::Duration::seconds(tokens.expires_in.unwrap_or(3600));
        self.store
            .save_sign_in(
                &Actor::user(user.id, user.email.as_str()),
                mailbox.id,
                &account,
                &TokenSet {
                    access_token: tokens.access_token,
                    refresh_token,
                    expires_at,
                    scopes,
                },
            )
            .await?;
        tracing::info!(mailbox = %mailbox.id, account = %account, "mailbox signed in");
        Ok(self.store.get_mailbox(mailbox.id).await?)
    }

    /// The checks a grant must pass before it is stored: a refresh token, the mail scopes,
    /// and the mailbox's own account. Returns (account, refresh token, granted scopes).
    async fn check(
        &self,
        provider: &Provider,
        mailbox: &MailboxRecord,
        tokens: &mailbridge_oauth::TokenResponse,
    ) -> Result<(String, SecretString, String), SignInError> {
        let requested = &provider.settings().scopes;
        let granted: Vec<String> = match &tokens.scope {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            None => requested.clone(),
        };
        if let Some(missing) = requested
            .iter()
            .filter(|s| !IDENTITY_SCOPES.contains(&s.as_str()))
            .find(|s| !granted.contains(s))
        {
            return Err(SignInError::ScopeNotGranted {
                provider: provider_name(provider.auth()),
                scope: missing.clone(),
            });
        }
        let identity = provider
            .identity(tokens)
            .await?
            .ok_or(SignInError::NoIdentity)?;
        let expected = mailbox.spec.email.as_str();
        if !identity.email.eq_ignore_ascii_case(expected) {
            return Err(SignInError::WrongAccount {
                signed_in: identity.email,
                expected: expected.to_owned(),
                claim: identity.claim,
            });
        }
        if !identity.email_verified {
            return Err(SignInError::UnverifiedAccount(identity.email));
        }
        let refresh = tokens.refresh_token.clone().ok_or(SignInError::NoRefreshToken(
            match provider.auth() {
                AuthMethod::GmailOauth => "Google did not return a refresh token, so the mailbox could not stay connected; remove this app's access in your Google account's security settings, then sign in again",
                AuthMethod::MicrosoftOauth => "Microsoft did not return a refresh token, so the mailbox could not stay connected; the profile's scopes must include offline_access",
                AuthMethod::Oauth2 | AuthMethod::Password | AuthMethod::GoogleServiceAccount => "the provider did not return a refresh token, so the mailbox could not stay connected; check that the profile asks for offline access, then sign in again",
            },
        ))?;
        Ok((identity.email, refresh, granted.join(" ")))
    }

    /// Removes a mailbox's sign-in: deletes the tokens here (always, even when the provider
    /// cannot be reached) and revokes the grant at the provider when the profile has a
    /// revocation endpoint.
    pub async fn disconnect(
        &self,
        actor: &Actor,
        mailbox: MailboxId,
    ) -> Result<Disconnected, SignInError> {
        let record = self.store.get_mailbox(mailbox).await?;
        let Some(tokens) = self.store.remove_sign_in(actor, mailbox).await? else {
            return Ok(Disconnected::WasNotSignedIn);
        };
        self.revoke(record.spec.profile_id, &tokens).await
    }

    /// Revokes tokens already removed here at the provider of `profile` (the profile that
    /// issued them: after a mailbox moved, its old one).
    pub async fn revoke(
        &self,
        profile: ProfileId,
        tokens: &StoredTokens,
    ) -> Result<Disconnected, SignInError> {
        let Some(provider) =
            crate::provider::for_profile(&self.store, &self.http, profile, &self.redirect_uri)
                .await?
        else {
            return Ok(Disconnected::NoRevocationEndpoint);
        };
        if provider.settings().revocation_url.is_none() {
            return Ok(Disconnected::NoRevocationEndpoint);
        }
        // Revoking the refresh token ends the whole grant (RFC 7009 §2.1).
        Ok(match provider.revoke(&tokens.refresh_token).await {
            Ok(()) => Disconnected::Revoked,
            Err(e) => Disconnected::RevocationFailed(e),
        })
    }
}

/// Why a hosted sign-in link did not start a sign-in.
#[derive(Debug)]
pub enum LinkRefused {
    /// No link has this token: there is nowhere to send the person back to.
    Unknown,
    /// Send the person back to the host application with this error.
    Back {
        to: ReturnTo,
        code: &'static str,
        message: String,
    },
    /// The link could not be read.
    Failed(SignInError),
}

/// Where a hosted sign-in sends the person back to, and for which mailbox.
#[derive(Debug, Clone)]
pub struct ReturnTo {
    pub url: Url,
    pub mailbox: MailboxId,
}

impl ReturnTo {
    /// The return URL with the outcome in its query: `mailbox_id` and `outcome=signed_in`,
    /// or `outcome=error` with `error` (a stable code) and `message` (in words).
    pub fn with_outcome(&self, outcome: Result<(), (&str, &str)>) -> Url {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("mailbox_id", &self.mailbox.to_string());
            match outcome {
                Ok(()) => {
                    q.append_pair("outcome", "signed_in");
                }
                Err((code, message)) => {
                    q.append_pair("outcome", "error");
                    q.append_pair("error", code);
                    q.append_pair("message", message);
                }
            }
        }
        url
    }
}

impl SignInError {
    /// A stable code for the error, for a host application to act on.
    pub fn code(&self) -> &'static str {
        match self {
            SignInError::NotOAuth(_) => "not_oauth",
            SignInError::NoSignInNeeded(_) => "no_sign_in_needed",
            SignInError::MissingState | SignInError::UnknownState => "invalid_state",
            SignInError::ExpiredState => "expired",
            SignInError::Denied { .. } => "access_denied",
            SignInError::MissingCode => "invalid_response",
            SignInError::NotAllowed => "not_allowed",
            SignInError::WrongAccount { .. } => "wrong_account",
            SignInError::NoIdentity => "no_identity",
            SignInError::UnverifiedAccount(_) => "unverified_account",
            SignInError::ScopeNotGranted { .. } => "scope_not_granted",
            SignInError::NoRefreshToken(_) => "no_refresh_token",
            SignInError::Provider(_) => "provider_error",
            SignInError::Store(_) => "internal",
        }
    }
}

/// What a disconnect did besides deleting the stored tokens.
#[derive(Debug)]
pub enum Disconnected {
    WasNotSignedIn,
    Revoked,
    NoRevocationEndpoint,
    /// Deleted here, but the provider could not be told; the user may remove the app's
    /// access in their account settings.
    RevocationFailed(OAuthError),
}
