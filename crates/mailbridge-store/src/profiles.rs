//! [`ProfileRecord`]: stored email server profiles, their encrypted client secrets, and the
//! mailbox-count rules (a profile never serves more mailboxes than its limit).

use chrono::{DateTime, NaiveDate, Utc};
use mailbridge_core::{
    Host, IncomingServer, OAuthSettings, OutgoingServer, Port, ProfileId, ProfileSpec,
    SecretChange, UserId,
};
use secrecy::SecretString;

use crate::audit::{self, Actor};
use crate::events::NewEvent;
use crate::{Backend, Result, Store, StoreError, is_unique_violation, time_from_ms};

#[derive(Debug, Clone)]
pub struct ProfileRecord {
    pub id: ProfileId,
    pub spec: ProfileSpec,
    /// The admin who created it: the one alerted when many of its mailboxes fail.
    pub owner_user_id: Option<UserId>,
    pub has_client_secret: bool,
    pub mailbox_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: String,
    name: String,
    owner_user_id: Option<String>,
    incoming_protocol: String,
    incoming_host: String,
    incoming_port: i64,
    incoming_security: String,
    outgoing_host: String,
    outgoing_port: i64,
    outgoing_security: String,
    outgoing_authentication: String,
    auth_method: String,
    oauth_client_id: Option<String>,
    has_client_secret: i64,
    oauth_authorization_url: Option<String>,
    oauth_token_url: Option<String>,
    oauth_revocation_url: Option<String>,
    oauth_userinfo_url: Option<String>,
    oauth_scopes: Option<String>,
    max_mailboxes: i64,
    max_connections: i64,
    poll_interval_seconds: i64,
    process_emails_received_after: Option<String>,
    daily_send_limit: i64,
    max_queued_emails: i64,
    sends_per_minute: i64,
    folders: Option<String>,
    append_sent: i64,
    mailbox_count: i64,
    created_at: i64,
    updated_at: i64,
}

const PROFILE_SELECT: &str = "SELECT p.id, p.name, p.owner_user_id, p.incoming_protocol, \
     p.incoming_host, p.incoming_port, p.incoming_security, p.outgoing_host, p.outgoing_port, \
     p.outgoing_security, p.outgoing_authentication, p.auth_method, p.oauth_client_id, \
     CASE WHEN p.oauth_client_secret IS NULL THEN 0 ELSE 1 END AS has_client_secret, \
     p.oauth_authorization_url, p.oauth_token_url, p.oauth_revocation_url, p.oauth_userinfo_url, \
     p.oauth_scopes, p.max_mailboxes, p.max_connections, p.poll_interval_seconds, p.process_emails_received_after, \
     p.daily_send_limit, p.max_queued_emails, p.sends_per_minute, p.folders, p.append_sent, \
     (SELECT COUNT(*) FROM mailboxes m WHERE m.profile_id = p.id) AS mailbox_count, \
     p.created_at, p.updated_at FROM server_profiles p";

impl TryFrom<ProfileRow> for ProfileRecord {
    type Error = StoreError;
    fn try_from(r: ProfileRow) -> Result<Self> {
        let what = format!("server profile {}", r.id);
        let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(what.clone(), e);
        let port = |p: i64| Port::parse(p, "port").map_err(|e| bad(&e));
        let url = |u: Option<String>| -> Result<Option<url::Url>> {
            u.map(|u| url::Url::parse(&u).map_err(|e| bad(&e)))
                .transpose()
        };
        let oauth = match (
            r.oauth_client_id,
            url(r.oauth_authorization_url)?,
            url(r.oauth_token_url)?,
        ) {
            (Some(client_id), Some(authorization_url), Some(token_url)) => Some(OAuthSettings {
                client_id,
                authorization_url,
                token_url,
                revocation_url: url(r.oauth_revocation_url)?,
                userinfo_url: url(r.oauth_userinfo_url)?,
                scopes: r
                    .oauth_scopes
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            }),
            _ => None,
        };
        let spec = ProfileSpec {
            name: r.name,
            incoming: IncomingServer {
                protocol: r.incoming_protocol.parse().map_err(|e| bad(&e))?,
                host: Host::parse(&r.incoming_host, "incoming_host").map_err(|e| bad(&e))?,
                port: port(r.incoming_port)?,
                security: r.incoming_security.parse().map_err(|e| bad(&e))?,
            },
            outgoing: OutgoingServer {
                host: Host::parse(&r.outgoing_host, "outgoing_host").map_err(|e| bad(&e))?,
                port: port(r.outgoing_port)?,
                security: r.outgoing_security.parse().map_err(|e| bad(&e))?,
                authentication: r.outgoing_authentication.parse().map_err(|e| bad(&e))?,
            },
            auth: r.auth_method.parse().map_err(|e| bad(&e))?,
            oauth,
            max_mailboxes: u32::try_from(r.max_mailboxes).map_err(|e| bad(&e))?,
            max_connections: u32::try_from(r.max_connections).map_err(|e| bad(&e))?,
            poll_interval_seconds: u32::try_from(r.poll_interval_seconds).map_err(|e| bad(&e))?,
            process_emails_received_after: r
                .process_emails_received_after
                .map(|d| d.parse::<NaiveDate>().map_err(|e| bad(&e)))
                .transpose()?,
            daily_send_limit: u32::try_from(r.daily_send_limit).map_err(|e| bad(&e))?,
            max_queued_emails: u32::try_from(r.max_queued_emails).map_err(|e| bad(&e))?,
            sends_per_minute: u32::try_from(r.sends_per_minute).map_err(|e| bad(&e))?,
            folders: match r.folders {
                Some(f) => serde_json::from_str(&f).map_err(|e| bad(&e))?,
                None => Vec::new(),
            },
            append_sent: r.append_sent != 0,
        };
        Ok(Self {
            id: r.id.parse().map_err(|e| bad(&e))?,
            spec,
            owner_user_id: r
                .owner_user_id
                .map(|u| u.parse().map_err(|e| bad(&e)))
                .transpose()?,
            has_client_secret: r.has_client_secret != 0,
            mailbox_count: r.mailbox_count,
            created_at: time_from_ms(r.created_at),
            updated_at: time_from_ms(r.updated_at),
        })
    }
}

/// What an audit entry may say about a profile: everything but the secret.
fn audit_detail(spec: &ProfileSpec, secret: &SecretChange) -> serde_json::Value {
    serde_json::json!({
        "spec": spec,
        "client_secret": match secret {
            SecretChange::Keep => "unchanged",
            SecretChange::Set(_) => "set",
            SecretChange::Clear => "cleared",
        },
    })
}

/// Binds `$1` = id and `$2`–`$26` = the spec's columns: the order both the insert and the
/// update use.
fn bind_spec<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    id: &str,
    spec: &ProfileSpec,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let oauth = spec.oauth.as_ref();
    let url = |u: Option<&url::Url>| u.map(|u| u.to_string());
    q.bind(id.to_owned())
        .bind(spec.name.clone())
        .bind(spec.incoming.protocol.as_str())
        .bind(spec.incoming.host.to_string())
        .bind(i64::from(spec.incoming.port.get()))
        .bind(spec.incoming.security.as_str())
        .bind(spec.outgoing.host.to_string())
        .bind(i64::from(spec.outgoing.port.get()))
        .bind(spec.outgoing.security.as_str())
        .bind(spec.auth.as_str())
        .bind(oauth.map(|o| o.client_id.clone()))
        .bind(url(oauth.map(|o| &o.authorization_url)))
        .bind(url(oauth.map(|o| &o.token_url)))
        .bind(url(oauth.and_then(|o| o.revocation_url.as_ref())))
        .bind(url(oauth.and_then(|o| o.userinfo_url.as_ref())))
        .bind(oauth.map(|o| o.scopes.join(" ")))
        .bind(i64::from(spec.max_mailboxes))
        .bind(i64::from(spec.poll_interval_seconds))
        .bind(spec.process_emails_received_after.map(|d| d.to_string()))
        .bind(i64::from(spec.max_connections))
        .bind(i64::from(spec.daily_send_limit))
        .bind(i64::from(spec.max_queued_emails))
        .bind(serde_json::to_string(&spec.folders).unwrap_or_else(|_| "[]".to_owned()))
        .bind(i64::from(spec.append_sent))
        .bind(spec.outgoing.authentication.as_str())
        .bind(i64::from(spec.sends_per_minute))
}

/// The alert kind raised when a mailbox's profile moved to other servers.
pub const RETEST_REQUIRED: &str = "retest_required";

/// Disables every mailbox of a profile whose servers changed, resets its test results and
/// alerts its owner: the credentials were proven against the old servers only. Returns how
/// many mailboxes it touched.
async fn require_retest(
    tx: &mut sqlx::AnyConnection,
    profile: &str,
    name: &str,
    now: i64,
    events: &mut Vec<NewEvent>,
) -> Result<usize> {
    let mailboxes: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT id, owner_user_id, email, enabled FROM mailboxes WHERE profile_id = $1",
    )
    .bind(profile)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE mailboxes SET enabled = 0, incoming_status = 'not_run', incoming_status_reason = NULL, \
         incoming_status_hint = NULL, incoming_tested_at = NULL, outgoing_status = 'not_run', \
         outgoing_status_reason = NULL, outgoing_status_hint = NULL, outgoing_tested_at = NULL, \
         updated_at = $1 WHERE profile_id = $2",
    )
    .bind(now)
    .bind(profile)
    .execute(&mut *tx)
    .await?;
    for (id, owner, email, was_enabled) in &mailboxes {
        let bad = |e: uuid::Error| StoreError::corrupt(format!("mailbox {id}"), e);
        if *was_enabled != 0 {
            events.extend(
                crate::mailboxes::disabled_event(
                    tx,
                    id,
                    &format!("server profile '{name}' now uses other servers: run Test & Enable"),
                )
                .await?,
            );
        }
        let alert = crate::alerts::raise(
            tx,
            now,
            crate::alerts::NewAlert {
                mailbox_id: Some(id.parse().map_err(bad)?),
                profile_id: None,
                user_id: owner.parse().map_err(bad)?,
                kind: RETEST_REQUIRED,
                message: format!(
                    "server profile '{name}' now uses other servers, so {email} is paused until it passes Test & Enable against them"
                ),
                hint: "Run Test & Enable Mailbox (an admin can test every mailbox of the profile at once).",
            },
        )
        .await?;
        events.extend(alert);
    }
    Ok(mailboxes.len())
}

fn name_taken(e: sqlx::Error, name: &str) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "a server profile named '{name}' already exists; choose another name"
        ))
    } else {
        e.into()
    }
}

impl Store {
    pub async fn create_profile(
        &self,
        actor: &Actor,
        spec: &ProfileSpec,
        secret: SecretChange,
    ) -> Result<ProfileRecord> {
        let now = self.now_ms();
        let id = ProfileId::new();
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        bind_spec(
            sqlx::query(
                "INSERT INTO server_profiles (id, name, incoming_protocol, incoming_host, \
                 incoming_port, incoming_security, outgoing_host, outgoing_port, outgoing_security, \
                 auth_method, oauth_client_id, oauth_authorization_url, oauth_token_url, \
                 oauth_revocation_url, oauth_userinfo_url, oauth_scopes, max_mailboxes, \
                 poll_interval_seconds, process_emails_received_after, max_connections, \
                 daily_send_limit, max_queued_emails, folders, append_sent, outgoing_authentication, \
                 sends_per_minute, owner_user_id, oauth_client_secret, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $29)",
            ),
            &sid,
            spec,
        )
        .bind(actor.user_id.map(|u| u.to_string()))
        .bind(self.sealed_secret(&secret, &sid))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, &spec.name))?;
        audit::record(
            &mut tx,
            now,
            actor,
            "profile.create",
            ("server_profile", &sid),
            audit_detail(spec, &secret),
        )
        .await?;
        tx.commit().await?;
        self.get_profile(id).await
    }

    pub async fn get_profile(&self, id: ProfileId) -> Result<ProfileRecord> {
        let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{PROFILE_SELECT} WHERE p.id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(ProfileRecord::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "server profile",
                id: id.to_string(),
            })
    }

    pub async fn find_profile_by_name(&self, name: &str) -> Result<Option<ProfileRecord>> {
        let row: Option<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{PROFILE_SELECT} WHERE p.name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ProfileRecord::try_from).transpose()
    }

    pub async fn list_profiles(&self) -> Result<Vec<ProfileRecord>> {
        let rows: Vec<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{PROFILE_SELECT} ORDER BY p.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ProfileRecord::try_from).collect()
    }

    /// The decrypted OAuth client secret of a profile, if it has one.
    pub async fn profile_client_secret(&self, id: ProfileId) -> Result<Option<SecretString>> {
        let sid = id.to_string();
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT oauth_client_secret FROM server_profiles WHERE id = $1")
                .bind(&sid)
                .fetch_optional(&self.pool)
                .await?;
        let (blob,) = row.ok_or_else(|| StoreError::NotFound {
            kind: "server profile",
            id: sid.clone(),
        })?;
        blob.map(|b| self.open_secret("server_profiles", "oauth_client_secret", &sid, &b))
            .transpose()
    }

    /// Replaces a profile's settings. Refuses a `max_mailboxes` below the mailboxes it serves.
    /// New servers (host, port, security or protocol) undo every mailbox's last test: each
    /// is disabled until it passes Test & Enable against them, and its owner is told.
    pub async fn update_profile(
        &self,
        actor: &Actor,
        id: ProfileId,
        spec: &ProfileSpec,
        secret: SecretChange,
    ) -> Result<ProfileRecord> {
        let now = self.now_ms();
        let sid = id.to_string();
        let old = self.get_profile(id).await?;
        let servers_changed =
            old.spec.incoming != spec.incoming || old.spec.outgoing != spec.outgoing;
        let mut tx = self.begin_write().await?;
        self.lock_profile(&mut tx, &sid).await?;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM mailboxes WHERE profile_id = $1")
                .bind(&sid)
                .fetch_one(&mut *tx)
                .await?;
        if count > i64::from(spec.max_mailboxes) {
            return Err(StoreError::Conflict(format!(
                "server profile '{}' serves {count} mailboxes, so max_mailboxes cannot be {}; move or delete mailboxes first",
                spec.name, spec.max_mailboxes
            )));
        }
        let secret_sql = match secret {
            SecretChange::Keep => "",
            SecretChange::Set(_) | SecretChange::Clear => ", oauth_client_secret = $27",
        };
        let done = bind_spec(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE server_profiles SET name = $2, incoming_protocol = $3, incoming_host = $4, \
                 incoming_port = $5, incoming_security = $6, outgoing_host = $7, outgoing_port = $8, \
                 outgoing_security = $9, auth_method = $10, oauth_client_id = $11, \
                 oauth_authorization_url = $12, oauth_token_url = $13, oauth_revocation_url = $14, \
                 oauth_userinfo_url = $15, oauth_scopes = $16, max_mailboxes = $17, \
                 poll_interval_seconds = $18, process_emails_received_after = $19, \
                 max_connections = $20, daily_send_limit = $21, max_queued_emails = $22, \
                 folders = $23, append_sent = $24, outgoing_authentication = $25, \
                 sends_per_minute = $26{secret_sql}, updated_at = $28 WHERE id = $1"
            ))),
            &sid,
            spec,
        )
        .bind(self.sealed_secret(&secret, &sid))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, &spec.name))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "server profile",
                id: sid,
            });
        }
        let mut detail = audit_detail(spec, &secret);
        let mut events = Vec::new();
        if servers_changed {
            let retest = require_retest(&mut tx, &sid, &spec.name, now, &mut events).await?;
            detail["mailboxes_to_retest"] = serde_json::json!(retest);
        }
        audit::record(
            &mut tx,
            now,
            actor,
            "profile.update",
            ("server_profile", &sid),
            detail,
        )
        .await?;
        crate::events::append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await?;
        self.get_profile(id).await
    }

    /// Deletes a profile that serves no mailbox.
    pub async fn delete_profile(&self, actor: &Actor, id: ProfileId) -> Result<()> {
        let now = self.now_ms();
        let profile = self.get_profile(id).await?;
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        self.lock_profile(&mut tx, &sid).await?;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM mailboxes WHERE profile_id = $1")
                .bind(&sid)
                .fetch_one(&mut *tx)
                .await?;
        if count > 0 {
            return Err(StoreError::Conflict(format!(
                "server profile '{}' still serves {count} mailbox(es); move them to another profile or delete them first",
                profile.spec.name
            )));
        }
        sqlx::query("DELETE FROM server_profiles WHERE id = $1")
            .bind(&sid)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "profile.delete",
            ("server_profile", &sid),
            serde_json::json!({"name": profile.spec.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The ciphertext a secret change stores (`None` keeps no secret).
    fn sealed_secret(&self, secret: &SecretChange, id: &str) -> Option<Vec<u8>> {
        self.seal_change("server_profiles", "oauth_client_secret", id, secret)
    }

    /// Serializes changes to one profile's mailbox set, so a count read in `tx` stays true
    /// until it commits. PostgreSQL locks the profile's row; on SQLite the write transaction
    /// (`BEGIN IMMEDIATE`) already excludes every other writer.
    pub(crate) async fn lock_profile(&self, tx: &mut sqlx::AnyConnection, id: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM server_profiles WHERE id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}
