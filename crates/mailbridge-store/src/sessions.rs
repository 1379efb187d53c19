//! [`SessionToken`]: a console sign-in. The browser holds the token in a cookie; the
//! `console_sessions` table holds only its SHA-256, the user and when it expires.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use mailbridge_core::UserId;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::{Result, Store, UserRecord};

const SESSION_PREFIX: &str = "mbs_";

/// A freshly opened session: its token goes into the cookie and nowhere else.
pub struct SessionToken(SecretString);

impl SessionToken {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(SecretString::from(format!(
            "{SESSION_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The token, for the `Set-Cookie` header.
    pub fn reveal(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

/// 256 random bits need no slow hash: the API tokens' SHA-256 keeps the lookup an index probe.
use crate::users::token_hash as id_hash;

impl Store {
    /// Opens a session for `user` until `expires_at`, and forgets sessions that have expired.
    pub async fn create_session(
        &self,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<SessionToken> {
        let now = self.now_ms();
        let token = SessionToken::generate();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash(token.reveal()))
        .bind(user.to_string())
        .bind(now)
        .bind(expires_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The user a session token belongs to, unless it is unknown or expired.
    pub async fn session_user(&self, token: &str) -> Result<Option<UserRecord>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM console_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash(token))
        .bind(self.now_ms())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((user,)) => {
                let id = user
                    .parse()
                    .map_err(|e| crate::StoreError::corrupt("console session", e))?;
                Ok(Some(self.get_user(id).await?))
            }
            None => Ok(None),
        }
    }

    /// Ends one session (signing out). Unknown tokens are ignored.
    pub async fn delete_session(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
