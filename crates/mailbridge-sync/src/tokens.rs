//! [`TokenService`]: a valid access token for a mailbox, refreshed before it expires, with at
//! most one refresh in flight per mailbox. A refused grant (`invalid_grant`) marks the mailbox
//! as needing a new sign-in at once; an unreachable provider is retried with backoff.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailbridge_core::{Clock, MailboxId};
use mailbridge_oauth::OAuthError;
use mailbridge_store::{Store, StoreError};
use secrecy::SecretString;

/// A token protocol code can use now.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The account the token is for: the login name for XOAUTH2.
    pub account: String,
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("mailbox {0} is not signed in; its user must sign in first")]
    NotSignedIn(MailboxId),
    #[error("mailbox {mailbox} must be signed in again: {reason}")]
    SignInRequired { mailbox: MailboxId, reason: String },
    #[error("mailbox {0}'s profile does not use OAuth")]
    NotOAuth(MailboxId),
    /// A service account's token was refused (or its key cannot sign): `hint` says where to
    /// fix it. Nobody signs in again for these.
    #[error("{reason}")]
    Delegation { reason: String, hint: String },
    #[error(transparent)]
    Provider(#[from] OAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// Whether asking again later may succeed without anyone doing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Provider(e) => e.is_transient(),
            TokenError::Store(_) => true,
            _ => false,
        }
    }
}

/// When to refresh and how hard to try.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Refresh this long before the token expires…
    pub margin: Duration,
    /// …plus a stable per-mailbox share of this, so thousands of mailboxes signed in at
    /// once do not all refresh in the same second.
    pub jitter: Duration,
    /// Attempts for a transient failure (network, 5xx), the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl RefreshPolicy {
    /// The longest one refresh can take, every attempt timing out and every backoff waited:
    /// how long a node's refresh claim holds the others off, so it never lapses while the
    /// refresh still runs (a node that dies mid-refresh holds them off no longer).
    pub fn longest_refresh(&self) -> Duration {
        let attempts = self.attempts.max(1);
        let waits: Duration = (1..attempts)
            .map(|k| self.backoff * 2u32.saturating_pow(k - 1))
            .sum();
        (mailbridge_oauth::REQUEST_TIMEOUT + Duration::from_secs(5)) * attempts + waits
    }
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(300),
            jitter: Duration::from_secs(60),
            attempts: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

pub struct TokenService {
    store: Store,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    redirect_uri: String,
    policy: RefreshPolicy,
    in_flight: Mutex<HashMap<MailboxId, Arc<tokio::sync::Mutex<()>>>>,
    /// Service-account tokens, kept in memory while they are good (each node gets its own:
    /// there is no refresh token to share or to spend).
    delegated: Mutex<HashMap<MailboxId, AccessToken>>,
}

impl TokenService {
    pub fn new(
        store: Store,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
        redirect_uri: String,
        policy: RefreshPolicy,
    ) -> Self {
        Self {
            store,
            http,
            clock,
            redirect_uri,
            policy,
            in_flight: Mutex::new(HashMap::new()),
            delegated: Mutex::new(HashMap::new()),
        }
    }

    /// A token for a mailbox of a service-account profile (domain-wide delegation): the one
    /// kept while good for at least the margin, else a new one from the JWT bearer grant
    /// for the mailbox's address. Transient failures are retried like refreshes.
    pub async fn delegated_token(
        &self,
        mailbox: &mailbridge_store::MailboxRecord,
        profile: &mailbridge_store::ProfileRecord,
    ) -> Result<AccessToken, TokenError> {
        let margin = chrono::Duration::from_std(self.policy.margin).unwrap_or_default();
        let kept = self
            .delegated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&mailbox.id)
            .filter(|t| t.expires_at - margin > self.clock.now())
            .cloned();
        if let Some(token) = kept {
            return Ok(token);
        }
        let key = self
            .store
            .profile_client_secret(profile.id)
            .await?
            .ok_or_else(|| TokenError::Delegation {
                reason: "the profile has no service account key".to_owned(),
                hint: "An admin must put the service account's JSON key in the profile, then run Test & Enable Mailbox.".to_owned(),
            })?;
        let account =
            mailbridge_oauth::ServiceAccount::from_json(&key).map_err(|reason| {
                TokenError::Delegation {
                    reason,
                    hint: "Put a valid JSON key of the service account in the profile (Google Cloud console › IAM & Admin › Service accounts › Keys).".to_owned(),
                }
            })?;
        let scopes = profile.spec.oauth.as_ref().map_or_else(
            || vec![mailbridge_core::google::MAIL_SCOPE.to_owned()],
            |o| o.scopes.clone(),
        );
        let subject = mailbox.spec.email.as_str();
        let mut attempt = 1;
        let response = loop {
            match account
                .access_token(&self.http, subject, &scopes, self.clock.now())
                .await
            {
                Ok(r) => break r,
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    let wait = self.policy.backoff * 2u32.saturating_pow(attempt - 1);
                    tracing::info!(mailbox = %mailbox.id, error = %e, attempt, ?wait, "service account token request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    let (error, description) = match &e {
                        OAuthError::InvalidGrant { description, .. } => {
                            ("invalid_grant", description.as_str())
                        }
                        OAuthError::Rejected {
                            error, description, ..
                        } => (error.as_str(), description.as_str()),
                        _ => ("", ""),
                    };
                    let hint = mailbridge_core::google::service_account_hint(
                        error,
                        description,
                        account.client_id(),
                    );
                    tracing::warn!(mailbox = %mailbox.id, error = %e, "the service account's token was refused");
                    return Err(TokenError::Delegation {
                        reason: format!("Google refused a token for {subject}: {e}"),
                        hint,
                    });
                }
            }
        };
        let token = AccessToken {
            account: subject.to_owned(),
            token: response.access_token,
            expires_at: self.clock.now()
                + chrono::Duration::seconds(response.expires_in.unwrap_or(3600)),
        };
        self.delegated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(mailbox.id, token.clone());
        Ok(token)
    }

    /// A token valid for at least the margin, refreshing it first when needed.
    pub async fn access_token(&self, mailbox: MailboxId) -> Result<AccessToken, TokenError> {
        if let Some(fresh) = self.fresh(mailbox).await? {
            return Ok(fresh);
        }
        // One refresh per mailbox at a time: in this process by a lock, across nodes by a
        // claim in the database. Whoever waited finds the new token stored.
        let lock = self.lock_for(mailbox);
        let _guard = lock.lock().await;
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            if let Some(fresh) = self.fresh(mailbox).await? {
                return Ok(fresh);
            }
            if self
                .store
                .claim_token_refresh(mailbox, self.policy.longest_refresh())
                .await?
            {
                // Another node may have refreshed and let go between the look above and
                // this claim: then its token is the answer, not a second refresh.
                let refreshed = match self.fresh(mailbox).await {
                    Ok(Some(fresh)) => Ok(fresh),
                    Ok(None) => self.refresh(mailbox).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = self.store.release_token_refresh(mailbox).await {
                    tracing::warn!(%mailbox, error = %e, "cannot release the refresh claim; it lapses on its own");
                }
                return refreshed;
            }
            if !warned && started.elapsed() > self.policy.longest_refresh() {
                warned = true;
                // The other node's claim lapsed without a new token: it died mid-refresh or
                // failed; the next round claims it.
                tracing::warn!(%mailbox, "another node's token refresh did not finish");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stored token when it is still good for longer than the margin.
    async fn fresh(&self, mailbox: MailboxId) -> Result<Option<AccessToken>, TokenError> {
        let stored = self
            .store
            .mailbox_tokens(mailbox)
            .await?
            .ok_or(TokenError::NotSignedIn(mailbox))?;
        if stored.invalid {
            return Err(TokenError::SignInRequired {
                mailbox,
                reason: "the provider refused the stored sign-in".to_owned(),
            });
        }
        let refresh_at = stored.expires_at
            - chrono::Duration::from_std(self.policy.margin + self.jitter_for(mailbox))
                .unwrap_or_default();
        Ok((self.clock.now() < refresh_at).then(|| AccessToken {
            account: stored.account_email,
            token: stored.access_token,
            expires_at: stored.expires_at,
        }))
    }

    async fn refresh(&self, mailbox: MailboxId) -> Result<AccessToken, TokenError> {
        let record = self.store.get_mailbox(mailbox).await?;
        let provider = crate::provider::for_profile(
            &self.store,
            &self.http,
            record.spec.profile_id,
            &self.redirect_uri,
        )
        .await?
        .ok_or(TokenError::NotOAuth(mailbox))?;
        let stored = self
            .store
            .mailbox_tokens(mailbox)
            .await?
            .ok_or(TokenError::NotSignedIn(mailbox))?;
        let mut attempt = 1;
        let response = loop {
            match provider.refresh(&stored.refresh_token).await {
                Ok(r) => break r,
                Err(OAuthError::InvalidGrant { description, .. }) => {
                    tracing::warn!(%mailbox, reason = %description, "refresh token refused; the mailbox needs a new sign-in");
                    self.store
                        .mark_sign_in_required(mailbox, &description)
                        .await?;
                    return Err(TokenError::SignInRequired {
                        mailbox,
                        reason: description,
                    });
                }
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    let wait = self.policy.backoff * 2u32.saturating_pow(attempt - 1);
                    tracing::info!(%mailbox, error = %e, attempt, ?wait, "token refresh failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let expires_at =
            self.clock.now() + chrono::Duration::seconds(response.expires_in.unwrap_or(3600));
        self.store
            .save_refreshed_tokens(
                mailbox,
                &response.access_token,
                response.refresh_token.as_ref(),
                expires_at,
            )
            .await?;
        tracing::debug!(%mailbox, %expires_at, rotated = response.refresh_token.is_some(), "access token refreshed");
        Ok(AccessToken {
            account: stored.account_email,
            token: response.access_token,
            expires_at,
        })
    }

    fn lock_for(&self, mailbox: MailboxId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(mailbox).or_default().clone()
    }

    /// A stable share of the jitter window for this mailbox.
    fn jitter_for(&self, mailbox: MailboxId) -> Duration {
        let window = self.policy.jitter.as_millis() as u64;
        if window == 0 {
            return Duration::ZERO;
        }
        let mut h = DefaultHasher::new();
        mailbox.hash(&mut h);
        Duration::from_millis(h.finish() % window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_claim_outlasts_the_slowest_refresh() {
        let policy = RefreshPolicy::default();
        // Four attempts that each time out, and the 0.5 + 1 + 2 s waits between them.
        let slowest = mailbridge_oauth::REQUEST_TIMEOUT * 4 + Duration::from_millis(3_500);
        assert!(
            policy.longest_refresh() > slowest,
            "{:?}",
            policy.longest_refresh()
        );
        assert_eq!(policy.longest_refresh(), Duration::from_millis(143_500));
    }
}
