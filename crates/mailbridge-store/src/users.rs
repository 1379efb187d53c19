//! [`UserRecord`]: people who use the API and console, with hashed API tokens.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use mailbridge_core::{EmailAddress, Role, UserId};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::{self, Actor};
use crate::{Result, Store, StoreError, is_unique_violation, time_from_ms};

const TOKEN_PREFIX: &str = "mbt_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub email: EmailAddress,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// A freshly issued API token: shown to its user once, stored only as a hash.
pub struct ApiToken(SecretString);

impl ApiToken {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(SecretString::from(format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The token itself, to hand to its user once.
    pub fn reveal(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Tokens carry 256 random bits, so a plain SHA-256 is a sound one-way store: there is
/// nothing to brute-force, and lookups stay an index probe.
pub(crate) fn token_hash(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    role: String,
    created_at: i64,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<Self> {
        let what = || format!("user {}", r.id);
        Ok(Self {
            id: r.id.parse().map_err(|e| StoreError::corrupt(what(), e))?,
            email: EmailAddress::parse(&r.email, "email")
                .map_err(|e| StoreError::corrupt(what(), e))?,
            role: r.role.parse().map_err(|e| StoreError::corrupt(what(), e))?,
            created_at: time_from_ms(r.created_at),
        })
    }
}

const USER_COLUMNS: &str = "id, email, role, created_at";

impl Store {
    pub async fn create_user(
        &self,
        actor: &Actor,
        email: &EmailAddress,
        role: Role,
    ) -> Result<(UserRecord, ApiToken)> {
        let now = self.now_ms();
        let id = UserId::new();
        let token = ApiToken::generate();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, role, token_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id.to_string())
        .bind(email.as_str())
        .bind(role.as_str())
        .bind(token_hash(token.reveal()))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a user with email {email} already exists"))
            } else {
                e.into()
            }
        })?;
        audit::record(
            &mut tx,
            now,
            actor,
            "user.create",
            ("user", &id.to_string()),
            serde_json::json!({"email": email, "role": role}),
        )
        .await?;
        tx.commit().await?;
        let user = UserRecord {
            id,
            email: email.clone(),
            role,
            created_at: time_from_ms(now),
        };
        Ok((user, token))
    }

    /// The user a bearer token belongs to, if any.
    pub async fn user_by_token(&self, token: &str) -> Result<Option<UserRecord>> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE token_hash = $1"
        )))
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        row.map(UserRecord::try_from).transpose()
    }

    pub async fn get_user(&self, id: UserId) -> Result<UserRecord> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(UserRecord::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                id: id.to_string(),
            })
    }

    pub async fn find_user_by_email(&self, email: &EmailAddress) -> Result<Option<UserRecord>> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        )))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(UserRecord::try_from).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(UserRecord::try_from).collect()
    }

    pub async fn count_users(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Changes a user's role; the last admin cannot be demoted.
    pub async fn set_user_role(&self, actor: &Actor, id: UserId, role: Role) -> Result<UserRecord> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let user = self.get_user(id).await?;
        if user.role == Role::Admin && role != Role::Admin {
            self.refuse_last_admin(&mut tx, id, "demoted").await?;
        }
        sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
            .bind(role.as_str())
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "user.update",
            ("user", &id.to_string()),
            serde_json::json!({"role": role}),
        )
        .await?;
        tx.commit().await?;
        Ok(UserRecord { role, ..user })
    }

    /// Issues a new API token for a user (the old one stops working at once) and ends the
    /// user's console sessions.
    pub async fn reset_user_token(&self, actor: &Actor, id: UserId) -> Result<ApiToken> {
        let now = self.now_ms();
        let token = ApiToken::generate();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE users SET token_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(token_hash(token.reveal()))
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: id.to_string(),
            });
        }
        // Whoever had the old token must not stay signed in to the console with it, whichever
        // way (API, console, command line) the token was reset.
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "user.reset_token",
            ("user", &id.to_string()),
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Deletes a user who owns no mailbox; the last admin cannot be deleted.
    pub async fn delete_user(&self, actor: &Actor, id: UserId) -> Result<()> {
        let now = self.now_ms();
        let user = self.get_user(id).await?;
        let mut tx = self.begin_write().await?;
        if user.role == Role::Admin {
            self.refuse_last_admin(&mut tx, id, "deleted").await?;
        }
        let (owned,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM mailboxes WHERE owner_user_id = $1")
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
        if owned > 0 {
            return Err(StoreError::Conflict(format!(
                "user {} owns {owned} mailbox(es); delete them or give them another owner first",
                user.email
            )));
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "user.delete",
            ("user", &id.to_string()),
            serde_json::json!({"email": user.email}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refuses to demote or delete the last admin. On PostgreSQL the admins' rows are locked
    /// first: under READ COMMITTED two transactions demoting the last two admins would each
    /// count the other and both go ahead, leaving none. SQLite's write transaction already
    /// excludes every other writer.
    async fn refuse_last_admin(
        &self,
        tx: &mut sqlx::AnyConnection,
        id: UserId,
        verb: &str,
    ) -> Result<()> {
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR UPDATE",
            crate::Backend::Sqlite => "",
        };
        let admins: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM users WHERE role = 'admin'{lock}"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let others = admins.iter().filter(|(a,)| *a != id.to_string()).count();
        if others == 0 {
            return Err(StoreError::Conflict(format!(
                "this is the only admin and cannot be {verb}; make another user admin first"
            )));
        }
        Ok(())
    }
}
