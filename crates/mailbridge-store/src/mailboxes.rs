//! [`MailboxRecord`]: stored mailboxes, and the rule that a profile serves at most
//! `max_mailboxes` of them (100 for Gmail OAuth).

use chrono::{DateTime, Utc};
use mailbridge_core::{
    AuthMethod, ConnectionStatus, EmailAddress, EventType, GMAIL_MAX_MAILBOXES, MailboxId,
    MailboxSpec, ProfileId, SecretChange, SignInStatus, UserId,
};
use secrecy::SecretString;
use sqlx::{Any, AnyConnection};

use crate::audit::{self, Actor};
use crate::events::{NewEvent, append, mailbox_event};
use crate::{Result, Store, StoreError, is_unique_violation, time_from_ms};

#[derive(Debug, Clone)]
pub struct MailboxRecord {
    pub id: MailboxId,
    pub spec: MailboxSpec,
    pub incoming: TestOutcome,
    pub outgoing: TestOutcome,
    pub enabled: bool,
    /// Whether a password is stored (password profiles).
    pub password_set: bool,
    pub sync: SyncStatus,
    pub sign_in_status: SignInStatus,
    /// The account whose tokens are stored, when signed in.
    pub signed_in_as: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The node whose lease on this mailbox was last granted, and until when it runs.
    pub lease: Option<(String, DateTime<Utc>)>,
}

/// Mailboxes per statement when recording that they are current.
const CURRENT_PER_STATEMENT: usize = 500;

impl Store {
    /// Records that these mailboxes were current (a pass ended without error at the time
    /// given): one statement per 500 mailboxes, each batch at its oldest time, so a
    /// mailbox is never shown more current than it was; a later time never goes back.
    pub async fn record_current(&self, confirmed: &[(MailboxId, DateTime<Utc>)]) -> Result<()> {
        for chunk in confirmed.chunks(CURRENT_PER_STATEMENT) {
            let Some(at) = chunk.iter().map(|(_, at)| *at).min() else {
                continue;
            };
            let ids = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let time = format!("${}", chunk.len() + 1);
            let greatest = match self.backend {
                crate::Backend::Sqlite => "MAX",
                crate::Backend::Postgres => "GREATEST",
            };
            let sql = format!(
                "UPDATE mailboxes SET current_at = {greatest}(COALESCE(current_at, 0), {time}) WHERE id IN ({ids})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, _) in chunk {
                q = q.bind(id.to_string());
            }
            let mut tx = self.begin_write().await?;
            q.bind(at.timestamp_millis()).execute(&mut *tx).await?;
            self.commit(tx).await?;
        }
        Ok(())
    }
}

/// How the mailbox's synchronization is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    pub last_sync_at: Option<DateTime<Utc>>,
    /// When a pass last ended without error, new mail or not: the mailbox was current then.
    pub current_at: Option<DateTime<Utc>>,
    /// Email records stored so far.
    pub items_processed: i64,
    /// Failed sync attempts so far.
    pub items_failed: i64,
    /// The last failure, cleared by the next successful pass.
    pub last_error: Option<String>,
    /// The provider said the account is over a limit: no sync before this time (cleared by
    /// the next successful pass).
    pub paused_until: Option<DateTime<Utc>>,
}

/// The last Test & Enable result of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub status: ConnectionStatus,
    /// What failed, in the server's words.
    pub reason: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    pub tested_at: Option<DateTime<Utc>>,
}

impl TestOutcome {
    pub fn success() -> Self {
        Self {
            status: ConnectionStatus::Success,
            reason: None,
            hint: None,
            tested_at: None,
        }
    }

    pub fn failure(reason: String, hint: &str) -> Self {
        Self {
            status: ConnectionStatus::Failure,
            reason: Some(reason),
            hint: Some(hint.to_owned()),
            tested_at: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MailboxRow {
    id: String,
    owner_user_id: String,
    email: String,
    profile_id: String,
    incoming_method: String,
    outgoing_method: String,
    tracking_rule: String,
    login_name: Option<String>,
    router_group: Option<String>,
    folders: Option<String>,
    password_set: i64,
    incoming_status: String,
    incoming_status_reason: Option<String>,
    incoming_status_hint: Option<String>,
    incoming_tested_at: Option<i64>,
    outgoing_status: String,
    outgoing_status_reason: Option<String>,
    outgoing_status_hint: Option<String>,
    outgoing_tested_at: Option<i64>,
    enabled: i64,
    last_sync_at: Option<i64>,
    current_at: Option<i64>,
    items_processed: i64,
    items_failed: i64,
    last_sync_error: Option<String>,
    paused_until: Option<i64>,
    sign_in_status: String,
    signed_in_as: Option<String>,
    created_at: i64,
    updated_at: i64,
    lease_node: Option<String>,
    lease_expires_at: Option<i64>,
}

const MAILBOX_SELECT: &str = "SELECT m.id, m.owner_user_id, m.email, m.profile_id, \
     m.incoming_method, m.outgoing_method, m.tracking_rule, m.login_name, m.router_group, m.folders, \
     CASE WHEN m.password IS NULL THEN 0 ELSE 1 END AS password_set, \
     m.incoming_status, m.incoming_status_reason, m.incoming_status_hint, m.incoming_tested_at, \
     m.outgoing_status, m.outgoing_status_reason, m.outgoing_status_hint, m.outgoing_tested_at, \
     m.enabled, m.last_sync_at, m.current_at, m.items_processed, m.items_failed, m.last_sync_error, m.paused_until, \
     CASE WHEN t.mailbox_id IS NULL THEN 'not_signed_in' \
     WHEN t.invalid_since IS NOT NULL THEN 'needs_sign_in' ELSE 'signed_in' END AS sign_in_status, \
     t.account_email AS signed_in_as, m.created_at, m.updated_at, \
     n.name AS lease_node, CASE WHEN l.expires_at > 0 THEN n.leases_until END AS lease_expires_at \
     FROM mailboxes m LEFT JOIN mailbox_tokens t ON t.mailbox_id = m.id \
     LEFT JOIN mailbox_leases l ON l.mailbox_id = m.id LEFT JOIN nodes n ON n.id = l.node_id";

impl TryFrom<MailboxRow> for MailboxRecord {
    type Error = StoreError;
    fn try_from(r: MailboxRow) -> Result<Self> {
        let what = format!("mailbox {}", r.id);
        let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(what.clone(), e);
        Ok(Self {
            id: r.id.parse().map_err(|e| bad(&e))?,
            spec: MailboxSpec {
                owner_user_id: r.owner_user_id.parse().map_err(|e| bad(&e))?,
                email: EmailAddress::parse(&r.email, "email").map_err(|e| bad(&e))?,
                profile_id: r.profile_id.parse().map_err(|e| bad(&e))?,
                incoming_method: r.incoming_method.parse().map_err(|e| bad(&e))?,
                outgoing_method: r.outgoing_method.parse().map_err(|e| bad(&e))?,
                tracking_rule: r.tracking_rule.parse().map_err(|e| bad(&e))?,
                login_name: r.login_name,
                router_group: r.router_group,
                extra_folders: match &r.folders {
                    Some(f) => serde_json::from_str(f).map_err(|e| bad(&e))?,
                    None => Vec::new(),
                },
            },
            incoming: TestOutcome {
                status: r.incoming_status.parse().map_err(|e| bad(&e))?,
                reason: r.incoming_status_reason,
                hint: r.incoming_status_hint,
                tested_at: r.incoming_tested_at.map(time_from_ms),
            },
            outgoing: TestOutcome {
                status: r.outgoing_status.parse().map_err(|e| bad(&e))?,
                reason: r.outgoing_status_reason,
                hint: r.outgoing_status_hint,
                tested_at: r.outgoing_tested_at.map(time_from_ms),
            },
            enabled: r.enabled != 0,
            password_set: r.password_set != 0,
            sync: SyncStatus {
                last_sync_at: r.last_sync_at.map(time_from_ms),
                current_at: r.current_at.map(time_from_ms),
                items_processed: r.items_processed,
                items_failed: r.items_failed,
                last_error: r.last_sync_error,
                paused_until: r.paused_until.map(time_from_ms),
            },
            sign_in_status: r.sign_in_status.parse().map_err(|e| bad(&e))?,
            signed_in_as: r.signed_in_as,
            created_at: time_from_ms(r.created_at),
            updated_at: time_from_ms(r.updated_at),
            lease: r
                .lease_node
                .zip(r.lease_expires_at.filter(|t| *t > 0))
                .map(|(node, until)| (node, time_from_ms(until))),
        })
    }
}

fn audit_detail(spec: &MailboxSpec) -> serde_json::Value {
    serde_json::json!({
        "owner_user_id": spec.owner_user_id,
        "email": spec.email,
        "profile_id": spec.profile_id,
        "incoming_method": spec.incoming_method,
        "outgoing_method": spec.outgoing_method,
        "tracking_rule": spec.tracking_rule,
        "router_group": spec.router_group,
        "extra_folders": spec.extra_folders,
    })
}

/// Binds `$1` = id, `$2`–`$8` = the spec's columns, `$9` = now, `$10` = the router group,
/// `$11` = the folders: the order both the insert and the update use.
fn bind_spec<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    id: &str,
    spec: &MailboxSpec,
    now: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    q.bind(id.to_owned())
        .bind(spec.owner_user_id.to_string())
        .bind(spec.email.to_string())
        .bind(spec.profile_id.to_string())
        .bind(spec.incoming_method.as_str())
        .bind(spec.outgoing_method.as_str())
        .bind(spec.tracking_rule.as_str())
        .bind(spec.login_name.clone())
        .bind(now)
        .bind(spec.router_group.clone())
        .bind(serde_json::to_string(&spec.extra_folders).unwrap_or_else(|_| "[]".to_owned()))
}

fn address_taken(e: sqlx::Error, email: &EmailAddress) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(format!("a mailbox for {email} already exists"))
    } else {
        e.into()
    }
}

impl Store {
    pub async fn create_mailbox(
        &self,
        actor: &Actor,
        spec: &MailboxSpec,
        password: SecretChange,
    ) -> Result<MailboxRecord> {
        let now = self.now_ms();
        let id = MailboxId::new();
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        self.check_references(&mut tx, spec).await?;
        self.check_capacity(&mut tx, spec.profile_id).await?;
        bind_spec(
            sqlx::query(
                "INSERT INTO mailboxes (id, owner_user_id, email, profile_id, incoming_method, \
             outgoing_method, tracking_rule, login_name, router_group, folders, password, incoming_status, \
             outgoing_status, enabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12, 'not_run', 'not_run', 0, $9, $9)",
            ),
            &sid,
            spec,
            now,
        )
        .bind(self.sealed_password(&password, &sid))
        .execute(&mut *tx)
        .await
        .map_err(|e| address_taken(e, &spec.email))?;
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.create",
            ("mailbox", &sid),
            audit_detail(spec),
        )
        .await?;
        tx.commit().await?;
        self.get_mailbox(id).await
    }

    /// How many mailboxes are enabled (all nodes together).
    pub async fn count_enabled_mailboxes(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mailboxes WHERE enabled = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    pub async fn get_mailbox(&self, id: MailboxId) -> Result<MailboxRecord> {
        let row: Option<MailboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{MAILBOX_SELECT} WHERE m.id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(MailboxRecord::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "mailbox",
                id: id.to_string(),
            })
    }

    /// All mailboxes, or only those of `owner`.
    pub async fn list_mailboxes(&self, owner: Option<UserId>) -> Result<Vec<MailboxRecord>> {
        let rows: Vec<MailboxRow> = match owner {
            Some(o) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{MAILBOX_SELECT} WHERE m.owner_user_id = $1 ORDER BY m.id"
                )))
                .bind(o.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{MAILBOX_SELECT} ORDER BY m.id"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.into_iter().map(MailboxRecord::try_from).collect()
    }

    /// Replaces a mailbox's configuration. A new address or profile invalidates the last
    /// test, so the statuses go back to `not_run` and the mailbox is disabled until tested;
    /// and it ends the sign-in: the tokens belong to the old account and the old profile's
    /// OAuth client, so they are deleted (and returned, for the caller to revoke) and the
    /// mailbox must be signed in again. Pending sign-ins of the old address are dropped too.
    pub async fn update_mailbox(
        &self,
        actor: &Actor,
        id: MailboxId,
        spec: &MailboxSpec,
        password: SecretChange,
    ) -> Result<(MailboxRecord, Option<crate::StoredTokens>)> {
        let now = self.now_ms();
        let sid = id.to_string();
        let old = self.get_mailbox(id).await?;
        let retest = old.spec.email != spec.email || old.spec.profile_id != spec.profile_id;
        let dropped = if retest {
            self.mailbox_tokens(id).await?
        } else {
            None
        };
        let mut tx = self.begin_write().await?;
        self.check_references(&mut tx, spec).await?;
        if old.spec.profile_id != spec.profile_id {
            self.check_capacity(&mut tx, spec.profile_id).await?;
        }
        let reset = if retest {
            ", incoming_status = 'not_run', incoming_status_reason = NULL, \
             incoming_status_hint = NULL, incoming_tested_at = NULL, outgoing_status = 'not_run', \
             outgoing_status_reason = NULL, outgoing_status_hint = NULL, outgoing_tested_at = NULL, \
             enabled = 0"
        } else {
            ""
        };
        bind_spec(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE mailboxes SET owner_user_id = $2, email = $3, profile_id = $4, \
             incoming_method = $5, outgoing_method = $6, tracking_rule = $7, login_name = $8, \
             router_group = $10, folders = $11, password = COALESCE($12, password), updated_at = $9{reset} WHERE id = $1"
            ))),
            &sid,
            spec,
            now,
        )
        .bind(self.sealed_password(&password, &sid))
        .execute(&mut *tx)
        .await
        .map_err(|e| address_taken(e, &spec.email))?;
        if old.spec.owner_user_id != spec.owner_user_id {
            // The mailbox's open alerts go to its new owner, who can act on them.
            sqlx::query(
                "UPDATE alerts SET user_id = $1 WHERE mailbox_id = $2 AND dismissed_at IS NULL",
            )
            .bind(spec.owner_user_id.to_string())
            .bind(&sid)
            .execute(&mut *tx)
            .await?;
        }
        if retest {
            for table in ["mailbox_tokens", "oauth_states"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE mailbox_id = $1"
                )))
                .bind(&sid)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut detail = audit_detail(spec);
        if dropped.is_some() {
            detail["sign_in"] = serde_json::json!("removed: the address or profile changed");
        }
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.update",
            ("mailbox", &sid),
            detail,
        )
        .await?;
        let events = if retest && old.enabled {
            disabled_event(
                &mut tx,
                &sid,
                "the address or profile changed: sign in (OAuth) and run Test & Enable again",
            )
            .await?
        } else {
            None
        };
        append(&mut tx, self.backend, now, events.as_slice()).await?;
        self.commit(tx).await?;
        Ok((self.get_mailbox(id).await?, dropped))
    }

    pub async fn delete_mailbox(&self, actor: &Actor, id: MailboxId) -> Result<()> {
        let now = self.now_ms();
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        if self.backend == crate::Backend::Postgres {
            // The emails go by a trigger (migration 0030) that needs a snapshot of its own,
            // whatever the server's default. The lease's row before the mailbox's: a sync batch locks them in that order (its
            // fence, then its pass's counters), so a deletion waits for a batch instead of
            // deadlocking with it.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM mailbox_leases WHERE mailbox_id = $1")
                .bind(&sid)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM mailboxes WHERE id = $1")
            .bind(&sid)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "mailbox",
                id: sid,
            });
        }
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.delete",
            ("mailbox", &sid),
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    fn sealed_password(&self, password: &SecretChange, id: &str) -> Option<Vec<u8>> {
        self.seal_change("mailboxes", "password", id, password)
    }

    /// The stored password of a mailbox (password profiles), decrypted.
    pub async fn mailbox_password(&self, id: MailboxId) -> Result<Option<SecretString>> {
        let sid = id.to_string();
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT password FROM mailboxes WHERE id = $1")
                .bind(&sid)
                .fetch_optional(&self.pool)
                .await?;
        let (blob,) = row.ok_or_else(|| StoreError::NotFound {
            kind: "mailbox",
            id: sid.clone(),
        })?;
        blob.map(|b| self.open_secret("mailboxes", "password", &sid, &b))
            .transpose()
    }

    /// Records a Test & Enable: each tested direction's outcome (untested ones stay as they
    /// were) and whether the mailbox is now enabled.
    pub async fn record_test(
        &self,
        actor: &Actor,
        id: MailboxId,
        incoming: Option<&TestOutcome>,
        outgoing: Option<&TestOutcome>,
        enabled: bool,
    ) -> Result<MailboxRecord> {
        let now = self.now_ms();
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        let was_enabled: Option<(i64,)> =
            sqlx::query_as("SELECT enabled FROM mailboxes WHERE id = $1")
                .bind(&sid)
                .fetch_optional(&mut *tx)
                .await?;
        let was_enabled = was_enabled.is_some_and(|(e,)| e != 0);
        for (side, outcome) in [("incoming", incoming), ("outgoing", outgoing)] {
            let Some(o) = outcome else { continue };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE mailboxes SET {side}_status = $1, {side}_status_reason = $2, \
                 {side}_status_hint = $3, {side}_tested_at = $4 WHERE id = $5"
            )))
            .bind(o.status.as_str())
            .bind(o.reason.clone())
            .bind(o.hint.clone())
            .bind(now)
            .bind(&sid)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query("UPDATE mailboxes SET enabled = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(enabled))
            .bind(now)
            .bind(&sid)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "mailbox",
                id: sid,
            });
        }
        if enabled {
            crate::alerts::resolve(&mut tx, now, id, crate::profiles::RETEST_REQUIRED).await?;
        }
        audit::record(
            &mut tx,
            now,
            actor,
            "mailbox.test_and_enable",
            ("mailbox", &sid),
            serde_json::json!({
                "incoming": incoming.map(|o| o.status),
                "outgoing": outgoing.map(|o| o.status),
                "enabled": enabled,
            }),
        )
        .await?;
        let outcome = |o: Option<&TestOutcome>| {
            o.map(|o| serde_json::json!({"status": o.status, "reason": o.reason, "hint": o.hint}))
        };
        let mut events: Vec<NewEvent> = mailbox_event(
            &mut tx,
            EventType::MailboxTested,
            &sid,
            serde_json::json!({"incoming": outcome(incoming), "outgoing": outcome(outgoing)}),
        )
        .await?
        .into_iter()
        .collect();
        if enabled != was_enabled {
            let kind = if enabled {
                EventType::MailboxEnabled
            } else {
                EventType::MailboxDisabled
            };
            let reason = if enabled {
                "Test & Enable passed"
            } else {
                "Test & Enable failed"
            };
            events.extend(
                mailbox_event(&mut tx, kind, &sid, serde_json::json!({"reason": reason})).await?,
            );
        }
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await?;
        self.get_mailbox(id).await
    }

    /// Stops a mailbox's sync after a failure retrying cannot fix: the incoming status becomes
    /// `failure` with the reason and hint, the mailbox is disabled, and its owner is alerted —
    /// in one transaction.
    pub async fn disable_with_alert(
        &self,
        id: MailboxId,
        kind: &str,
        reason: &str,
        hint: &str,
        fence: Option<&crate::Fence>,
    ) -> Result<()> {
        let now = self.now_ms();
        let sid = id.to_string();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence {
            crate::nodes::check_fence(&mut tx, self.backend, &sid, fence, now).await?;
        }
        let owner: Option<(String, String, i64)> =
            sqlx::query_as("SELECT owner_user_id, email, enabled FROM mailboxes WHERE id = $1")
                .bind(&sid)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((owner, email, was_enabled)) = owner else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE mailboxes SET enabled = 0, incoming_status = 'failure', incoming_status_reason = $1, \
             incoming_status_hint = $2, incoming_tested_at = $3, updated_at = $3 WHERE id = $4",
        )
        .bind(reason)
        .bind(hint)
        .bind(now)
        .bind(&sid)
        .execute(&mut *tx)
        .await?;
        let mut events = Vec::new();
        if was_enabled != 0 {
            events.extend(disabled_event(&mut tx, &sid, reason).await?);
        }
        events.extend(
            crate::alerts::raise(
                &mut tx,
                now,
                crate::alerts::NewAlert {
                    mailbox_id: Some(id),
                    profile_id: None,
                    user_id: owner
                        .parse()
                        .map_err(|e| StoreError::corrupt("mailbox owner", e))?,
                    kind,
                    message: format!("synchronization of {email} stopped: {reason}"),
                    hint,
                },
            )
            .await?,
        );
        events.extend(
            self.alert_profile_owner_if_failing(&mut tx, &sid, now)
                .await?,
        );
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await
    }

    /// When more than half of a profile's mailboxes failed within the last hour, its owner is
    /// told: the cause is likely the profile (its server, its OAuth client), not the mailboxes.
    async fn alert_profile_owner_if_failing(
        &self,
        tx: &mut AnyConnection,
        mailbox: &str,
        now: i64,
    ) -> Result<Option<NewEvent>> {
        let hour_ago = now - 3_600_000;
        let row: Option<(String, String, Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT p.id, p.name, p.owner_user_id, \
             (SELECT COUNT(*) FROM mailboxes WHERE profile_id = p.id), \
             (SELECT COUNT(*) FROM mailboxes WHERE profile_id = p.id AND incoming_status = 'failure' \
              AND incoming_tested_at >= $2) \
             FROM server_profiles p JOIN mailboxes m ON m.profile_id = p.id WHERE m.id = $1",
        )
        .bind(mailbox)
        .bind(hour_ago)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((profile, name, Some(owner), total, failing)) = row else {
            return Ok(None);
        };
        if failing * 2 <= total {
            return Ok(None);
        }
        crate::alerts::raise(
                tx,
                now,
                crate::alerts::NewAlert {
                    mailbox_id: None,
                    profile_id: Some(
                        profile
                            .parse()
                            .map_err(|e| StoreError::corrupt("profile id", e))?,
                    ),
                    user_id: owner.parse().map_err(|e| StoreError::corrupt("profile owner", e))?,
                    kind: "profile_failing",
                    message: format!(
                        "{failing} of the {total} mailboxes of server profile '{name}' failed within the last hour"
                    ),
                    hint: "Check the profile's servers and OAuth client (or whether the provider is down); then run Test & Enable for the profile.",
                },
            )
            .await
    }

    /// The mailboxes a profile serves.
    pub async fn profile_mailboxes(&self, profile: ProfileId) -> Result<Vec<MailboxRecord>> {
        let rows: Vec<MailboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{MAILBOX_SELECT} WHERE m.profile_id = $1 ORDER BY m.id"
        )))
        .bind(profile.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(MailboxRecord::try_from).collect()
    }

    /// The owner and the profile a mailbox names must exist.
    async fn check_references(&self, tx: &mut AnyConnection, spec: &MailboxSpec) -> Result<()> {
        let (owner,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE id = $1")
            .bind(spec.owner_user_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        if owner == 0 {
            return Err(StoreError::InvalidReference {
                field: "owner_user_id",
                message: format!(
                    "user {} does not exist; list users with GET /api/v1/users",
                    spec.owner_user_id
                ),
            });
        }
        let (profile,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM server_profiles WHERE id = $1")
                .bind(spec.profile_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
        if profile == 0 {
            return Err(StoreError::InvalidReference {
                field: "profile_id",
                message: format!(
                    "server profile {} does not exist; list profiles with GET /api/v1/server-profiles",
                    spec.profile_id
                ),
            });
        }
        Ok(())
    }

    /// Refuses one more mailbox on a profile already serving its limit.
    async fn check_capacity(&self, tx: &mut AnyConnection, profile: ProfileId) -> Result<()> {
        let pid = profile.to_string();
        self.lock_profile(tx, &pid).await?;
        let (name, auth, max, count): (String, String, i64, i64) = sqlx::query_as(
            "SELECT p.name, p.auth_method, p.max_mailboxes, \
             (SELECT COUNT(*) FROM mailboxes m WHERE m.profile_id = p.id) \
             FROM server_profiles p WHERE p.id = $1",
        )
        .bind(&pid)
        .fetch_one(&mut *tx)
        .await?;
        if count >= max {
            let gmail = auth == AuthMethod::GmailOauth.as_str();
            return Err(StoreError::ProfileFull {
                message: if gmail && max == i64::from(GMAIL_MAX_MAILBOXES) {
                    format!(
                        "server profile '{name}' already serves {count} mailboxes, the most a Gmail OAuth profile can serve ({GMAIL_MAX_MAILBOXES}); create a second Gmail OAuth profile and add this mailbox there"
                    )
                } else {
                    format!(
                        "server profile '{name}' already serves {count} mailboxes, its limit (max_mailboxes = {max}); raise the limit or use another profile"
                    )
                },
            });
        }
        Ok(())
    }
}

/// A `mailbox.disabled` event for a mailbox just disabled, saying why.
pub(crate) async fn disabled_event(
    tx: &mut AnyConnection,
    mailbox: &str,
    reason: &str,
) -> Result<Option<NewEvent>> {
    mailbox_event(
        tx,
        EventType::MailboxDisabled,
        mailbox,
        serde_json::json!({ "reason": reason }),
    )
    .await
}
