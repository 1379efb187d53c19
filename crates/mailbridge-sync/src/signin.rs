//! [`SignIn`]: the mailbox user's "Sign in to Gmail" — the OAuth 2.0 authorization-code flow
//! with PKCE (RFC 6749 §4.1, RFC 7636), checked the way a security reviewer expects:
//! a single-use state bound to the user and the mailbox that expires in 10 minutes, the
//! signed-in account must be the mailbox's address, a refresh token and the mail scope must
//! be granted, and nothing is stored unless every check passes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mailbridge_core::{Clock, MailboxId, ProfileId, Role};
use mailbridge_oauth::{IDENTITY_SCOPES, OAuthError, Pkce, Provider, random_token};
use mailbridge_store::{
    Actor, MailboxRecord, Store, StoreError, StoredTokens, TokenSet, UserRecord,
};
use secrecy::SecretString;
use url::Url;

/// How long a consent page may stay open before its state expires.
pub const STATE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);

/// Pending sign-ins kept per mailbox unless configured: enough for a few tabs or retries.
pub const DEFAULT_MAX_PENDING_SIGN_INS: u32 = 5;

/// Why a sign-in failed, in words for the person who tried.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(
        "the profile of {0} does not use OAuth, so there is nothing to sign in to; its mailboxes use passwords"
    )]
    NotOAuth(String),
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
    #[error(
        "access was not granted at the consent page ({0}); to connect the mailbox, sign in again and allow access"
    )]
    Denied(String),
    #[error("the sign-in answer carries no authorization code; start again")]
    MissingCode,
    #[error("you may no longer sign in this mailbox; ask an admin")]
    NotAllowed,
    #[error(
        "you signed in as {signed_in}, but this mailbox is {expected}; sign in again and choose {expected}"
    )]
    WrongAccount { signed_in: String, expected: String },
    #[error(
        "the provider did not say which account signed in, so it cannot be checked; an admin must set the profile's userinfo_url (or ask for the 'openid email' scopes)"
    )]
    NoIdentity,
    #[error(
        "the provider says {0} is not verified; verify the address with the provider, then sign in again"
    )]
    UnverifiedAccount(String),
    #[error(
        "Google did not grant access to mail; sign in again and allow access (missing scope: {0})"
    )]
    ScopeNotGranted(String),
    #[error(
        "Google did not return a refresh token, so the mailbox could not stay connected; remove this app's access in your Google account's security settings, then sign in again"
    )]
    NoRefreshToken,
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
        crate::provider::for_profile(
            &self.store,
            &self.http,
            mailbox.spec.profile_id,
            &self.redirect_uri,
        )
        .await?
        .ok_or_else(|| SignInError::NotOAuth(mailbox.spec.email.to_string()))
    }

    /// Begins a sign-in by `user` for `mailbox` (the caller checked they may): records a
    /// state and a PKCE verifier, and returns the consent page to send the browser to.
    pub async fn start(
        &self,
        user: &UserRecord,
        mailbox: &MailboxRecord,
    ) -> Result<Url, SignInError> {
        let provider = self.provider(mailbox).await?;
        let state = random_token();
        let pkce = Pkce::generate();
        self.store
            .create_oauth_state(
                &state,
                mailbox.id,
                user.id,
                &pkce.verifier,
                self.clock.now() + STATE_LIFETIME,
                self.max_pending,
            )
            .await?;
        Ok(provider.authorization_url(&state, &pkce.challenge, mailbox.spec.email.as_str()))
    }

    /// Completes a sign-in from the provider's answer. Stores the tokens only when every
    /// check passes; returns the mailbox that is now signed in.
    pub async fn finish(&self, answer: Callback) -> Result<MailboxRecord, SignInError> {
        let state = answer
            .state
            .filter(|s| !s.is_empty())
            .ok_or(SignInError::MissingState)?;
        // Taken (deleted) before anything else: a state works once, whatever happens next.
        let pending = self
            .store
            .take_oauth_state(&state)
            .await?
            .ok_or(SignInError::UnknownState)?;
        if pending.expires_at < self.clock.now() {
            return Err(SignInError::ExpiredState);
        }
        if let Some(error) = answer.error {
            let detail = match answer.error_description {
                Some(d) if !d.is_empty() => format!("{error}: {d}"),
                _ => error,
            };
            return Err(SignInError::Denied(detail));
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
            return Err(SignInError::ScopeNotGranted(missing.clone()));
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
            });
        }
        if !identity.email_verified {
            return Err(SignInError::UnverifiedAccount(identity.email));
        }
        let refresh = tokens
            .refresh_token
            .clone()
            .ok_or(SignInError::NoRefreshToken)?;
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
