//! Sign-in state: pending authorization requests ([`OAuthState`]), each mailbox's tokens
//! ([`StoredTokens`]), and what happens when a provider refuses a grant.

use chrono::{DateTime, Utc};
use mailbridge_core::{AuthMethod, EventType, MailboxId, UserId};
use secrecy::{ExposeSecret, SecretString};

use crate::alerts::{self, NewAlert};
use crate::audit::{self, Actor};
use crate::events::{NewEvent, append, mailbox_event};
use crate::{Result, Store, StoreError, time_from_ms};

/// The alert kind raised when a mailbox must be signed in again.
pub const SIGN_IN_REQUIRED: &str = "sign_in_required";

/// A pending authorization request, taken (and so deleted) when its callback arrives.
#[derive(Debug)]
pub struct OAuthState {
    pub mailbox_id: MailboxId,
    pub user_id: UserId,
    pub pkce_verifier: SecretString,
    pub expires_at: DateTime<Utc>,
    /// A hosted sign-in: where to send the user back to.
    pub return_url: Option<String>,
}

/// A pending authorization request to record.
#[derive(Debug, Clone, Copy)]
pub struct NewOAuthState<'a> {
    pub state: &'a str,
    pub mailbox: MailboxId,
    pub user: UserId,
    pub pkce_verifier: &'a str,
    pub expires_at: DateTime<Utc>,
    /// A hosted sign-in: where to send the user back to.
    pub return_url: Option<&'a str>,
}

/// A hosted sign-in link, as taken by the person who opened it.
#[derive(Debug)]
pub struct SignInLink {
    pub mailbox_id: MailboxId,
    /// Who made it: the sign-in runs as them.
    pub user_id: UserId,
    pub return_url: String,
    pub expires_at: DateTime<Utc>,
    /// It was opened before: a link works once.
    pub used: bool,
}

/// Tokens to store after a code exchange or a refresh.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub scopes: String,
}

/// A mailbox's stored tokens, decrypted.
#[derive(Debug)]
pub struct StoredTokens {
    pub account_email: String,
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub scopes: String,
    /// The provider refused the refresh token; only a new sign-in helps.
    pub invalid: bool,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    account_email: String,
    access_token: Vec<u8>,
    refresh_token: Vec<u8>,
    expires_at: i64,
    scopes: String,
    invalid_since: Option<i64>,
}

fn state_hash(state: &str) -> String {
    crate::sha256_hex(state.as_bytes())
}

impl Store {
    /// Records a pending authorization request; only the state's hash is kept, the PKCE
    /// verifier encrypted. Expired requests are purged on the way, and the mailbox keeps at
    /// most `max_pending` (at least this one): the oldest beyond that are dropped.
    pub async fn create_oauth_state(
        &self,
        pending: &NewOAuthState<'_>,
        max_pending: u32,
    ) -> Result<()> {
        let NewOAuthState {
            state,
            mailbox,
            user,
            pkce_verifier,
            expires_at,
            return_url,
        } = *pending;
        let now = self.now_ms();
        let hash = state_hash(state);
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Room for the new one: keep the newest `max_pending - 1` of the others.
        sqlx::query(
            "DELETE FROM oauth_states WHERE mailbox_id = $1 AND state_hash NOT IN \
             (SELECT state_hash FROM oauth_states WHERE mailbox_id = $1 \
              ORDER BY created_at DESC, state_hash DESC LIMIT $2)",
        )
        .bind(mailbox.to_string())
        .bind(i64::from(max_pending.max(1)) - 1)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO oauth_states (state_hash, mailbox_id, user_id, pkce_verifier, expires_at, created_at, return_url) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&hash)
        .bind(mailbox.to_string())
        .bind(user.to_string())
        .bind(self.seal("oauth_states", "pkce_verifier", &hash, pkce_verifier))
        .bind(expires_at.timestamp_millis())
        .bind(now)
        .bind(return_url)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a pending request by its state: it can be taken once. `None` when no request
    /// has this state (forged, or already used). An expired one is returned for the caller
    /// to refuse with the right words.
    pub async fn take_oauth_state(&self, state: &str) -> Result<Option<OAuthState>> {
        let hash = state_hash(state);
        #[derive(sqlx::FromRow)]
        struct Row {
            mailbox_id: String,
            user_id: String,
            pkce_verifier: Vec<u8>,
            expires_at: i64,
            return_url: Option<String>,
        }
        let row: Option<Row> = sqlx::query_as(
            "DELETE FROM oauth_states WHERE state_hash = $1 \
             RETURNING mailbox_id, user_id, pkce_verifier, expires_at, return_url",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(Row {
            mailbox_id: mailbox,
            user_id: user,
            pkce_verifier: verifier,
            expires_at,
            return_url,
        }) = row
        else {
            return Ok(None);
        };
        let bad = |e: uuid::Error| StoreError::corrupt("oauth state", e);
        Ok(Some(OAuthState {
            mailbox_id: mailbox.parse().map_err(bad)?,
            user_id: user.parse().map_err(bad)?,
            pkce_verifier: self.open_secret("oauth_states", "pkce_verifier", &hash, &verifier)?,
            expires_at: time_from_ms(expires_at),
            return_url,
        }))
    }

    /// Records a hosted sign-in link (only its token's hash is kept); expired links are
    /// purged on the way.
    pub async fn create_sign_in_link(
        &self,
        token: &str,
        mailbox: MailboxId,
        user: UserId,
        return_url: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM sign_in_links WHERE expires_at < $1")
            .bind(now - 24 * 3_600_000)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sign_in_links (token_hash, mailbox_id, user_id, return_url, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(state_hash(token))
        .bind(mailbox.to_string())
        .bind(user.to_string())
        .bind(return_url)
        .bind(expires_at.timestamp_millis())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a hosted sign-in link by its token: the first taker gets it with `used: false`,
    /// every later one with `used: true`. `None` for a token no link has.
    pub async fn take_sign_in_link(&self, token: &str) -> Result<Option<SignInLink>> {
        let hash = state_hash(token);
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT mailbox_id, user_id, return_url, expires_at, used_at FROM sign_in_links WHERE token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((mailbox, user, return_url, expires_at, used_at)) = row else {
            return Ok(None);
        };
        if used_at.is_none() {
            sqlx::query("UPDATE sign_in_links SET used_at = $1 WHERE token_hash = $2")
                .bind(self.now_ms())
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let bad = |e: uuid::Error| StoreError::corrupt("sign-in link", e);
        Ok(Some(SignInLink {
            mailbox_id: mailbox.parse().map_err(bad)?,
            user_id: user.parse().map_err(bad)?,
            return_url,
            expires_at: time_from_ms(expires_at),
            used: used_at.is_some(),
        }))
    }

    /// Stores the tokens of a fresh sign-in (replacing any before) and clears the
    /// "sign in again" alerts.
    pub async fn save_sign_in(
        &self,
        actor: &Actor,
        mailbox: MailboxId,
        account_email: &str,
        tokens: &TokenSet,
    ) -> Result<()> {
        let now = self.now_ms();
        let id = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mailbox_tokens WHERE mailbox_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO mailbox_tokens (mailbox_id, account_email, access_token, refresh_token, \
             expires_at, scopes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(account_email)
        .bind(self.seal(
            "mailbox_tokens",
            "access_token",
            &id,
            tokens.access_token.expose_secret(),
        ))
        .bind(self.seal(
            "mailbox_tokens",
            "refresh_token",
            &id,
            tokens.refresh_token.expose_secret(),
        ))
        .bind(tokens.expires_at.timestamp_millis())
        .bind(&tokens.scopes)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        alerts::resolve(&mut tx, now, mailbox, SIGN_IN_REQUIRED).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.sign_in",
            ("mailbox", &id),
            serde_json::json!({"account": account_email, "scopes": tokens.scopes}),
        )
        .await?;
        let event = mailbox_event(
            &mut tx,
            EventType::MailboxSignedIn,
            &id,
            serde_json::json!({"account": account_email}),
        )
        .await?;
        append(&mut tx, self.backend, now, event.as_slice()).await?;
        self.commit(tx).await
    }

    /// A mailbox's tokens, if it is signed in.
    pub async fn mailbox_tokens(&self, mailbox: MailboxId) -> Result<Option<StoredTokens>> {
        let id = mailbox.to_string();
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT account_email, access_token, refresh_token, expires_at, scopes, invalid_since \
             FROM mailbox_tokens WHERE mailbox_id = $1",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredTokens {
                account_email: r.account_email,
                access_token: self.open_secret(
                    "mailbox_tokens",
                    "access_token",
                    &id,
                    &r.access_token,
                )?,
                refresh_token: self.open_secret(
                    "mailbox_tokens",
                    "refresh_token",
                    &id,
                    &r.refresh_token,
                )?,
                expires_at: time_from_ms(r.expires_at),
                scopes: r.scopes,
                invalid: r.invalid_since.is_some(),
            })
        })
        .transpose()
    }

    /// Claims the right to refresh a mailbox's token for `hold` (one refresh at a time over
    /// all nodes): true when this caller should refresh, false when another one is already
    /// refreshing and its result should be waited for.
    pub async fn claim_token_refresh(
        &self,
        mailbox: MailboxId,
        hold: std::time::Duration,
    ) -> Result<bool> {
        let now = self.now_ms();
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "UPDATE mailbox_tokens SET refreshing_until = $1 WHERE mailbox_id = $2 \
             AND (refreshing_until IS NULL OR refreshing_until <= $3)",
        )
        .bind(now.saturating_add(hold_ms))
        .bind(mailbox.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a refresh claimed with [`Store::claim_token_refresh`].
    pub async fn release_token_refresh(&self, mailbox: MailboxId) -> Result<()> {
        sqlx::query("UPDATE mailbox_tokens SET refreshing_until = NULL WHERE mailbox_id = $1")
            .bind(mailbox.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a refreshed access token, and the refresh token when the provider rotated it
    /// (`None` keeps the one stored). Does nothing if the sign-in was replaced or removed
    /// meanwhile.
    pub async fn save_refreshed_tokens(
        &self,
        mailbox: MailboxId,
        access_token: &SecretString,
        rotated_refresh_token: Option<&SecretString>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let id = mailbox.to_string();
        let access = self.seal(
            "mailbox_tokens",
            "access_token",
            &id,
            access_token.expose_secret(),
        );
        let refresh = rotated_refresh_token
            .map(|t| self.seal("mailbox_tokens", "refresh_token", &id, t.expose_secret()));
        sqlx::query(
            "UPDATE mailbox_tokens SET access_token = $1, \
             refresh_token = COALESCE($2, refresh_token), expires_at = $3, updated_at = $4 \
             WHERE mailbox_id = $5 AND invalid_since IS NULL",
        )
        .bind(access)
        .bind(refresh)
        .bind(expires_at.timestamp_millis())
        .bind(self.now_ms())
        .bind(&id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The provider refused the mailbox's grant: mark it as needing a new sign-in, stop its
    /// sync (disable it), and tell its owner — in one transaction.
    pub async fn mark_sign_in_required(&self, mailbox: MailboxId, reason: &str) -> Result<()> {
        let now = self.now_ms();
        let id = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        let owner: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT m.owner_user_id, m.email, p.auth_method, m.enabled FROM mailboxes m \
             JOIN server_profiles p ON p.id = m.profile_id WHERE m.id = $1",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, email, auth, was_enabled)) = owner else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE mailbox_tokens SET invalid_since = $1, invalid_reason = $2, updated_at = $1 \
             WHERE mailbox_id = $3",
        )
        .bind(now)
        .bind(reason)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE mailboxes SET enabled = 0, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let mut events: Vec<NewEvent> = mailbox_event(
            &mut tx,
            EventType::MailboxNeedsSignIn,
            &id,
            serde_json::json!({"reason": reason}),
        )
        .await?
        .into_iter()
        .collect();
        if was_enabled != 0 {
            events.extend(
                crate::mailboxes::disabled_event(
                    &mut tx,
                    &id,
                    &format!("the provider refused the sign-in ({reason})"),
                )
                .await?,
            );
        }
        events.extend(
            alerts::raise(
                &mut tx,
                now,
                NewAlert {
                    mailbox_id: Some(mailbox),
                    profile_id: None,
                    user_id: owner.parse().map_err(|e| StoreError::corrupt("mailbox owner", e))?,
                    kind: SIGN_IN_REQUIRED,
                    message: format!("{email} can no longer be synchronized: the provider refused its sign-in ({reason})"),
                    hint: auth
                        .parse::<AuthMethod>()
                        .map_err(|e| StoreError::corrupt("profile auth method", e))?
                        .refused_sign_in_hint(reason),
                },
            )
            .await?,
        );
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await
    }

    /// Removes a mailbox's sign-in and disables it. Returns the tokens that were stored, so
    /// the caller can revoke them at the provider.
    pub async fn remove_sign_in(
        &self,
        actor: &Actor,
        mailbox: MailboxId,
    ) -> Result<Option<StoredTokens>> {
        let tokens = self.mailbox_tokens(mailbox).await?;
        let now = self.now_ms();
        let id = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mailbox_tokens WHERE mailbox_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let disabled: Option<(String,)> = sqlx::query_as(
            "UPDATE mailboxes SET enabled = 0, updated_at = $1 WHERE id = $2 AND enabled = 1 RETURNING id",
        )
        .bind(now)
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        alerts::resolve(&mut tx, now, mailbox, SIGN_IN_REQUIRED).await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.sign_out",
            ("mailbox", &id),
            serde_json::json!({}),
        )
        .await?;
        let event = match disabled {
            Some(_) => {
                crate::mailboxes::disabled_event(
                    &mut tx,
                    &id,
                    "signed out: sign in again, then run Test & Enable",
                )
                .await?
            }
            None => None,
        };
        append(&mut tx, self.backend, now, event.as_slice()).await?;
        self.commit(tx).await?;
        Ok(tokens)
    }
}
