//! [`AuditEntry`]: who changed what, written in the same transaction as the change.

use chrono::{DateTime, Utc};
use mailbridge_core::UserId;
use sqlx::AnyConnection;

use crate::{Result, Store, StoreError, time_from_ms};

/// Who acted: a signed-in user, or the command line on the server itself.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: Option<UserId>,
    pub label: String,
}

impl Actor {
    pub fn cli() -> Self {
        Self {
            user_id: None,
            label: "cli".to_owned(),
        }
    }

    pub fn user(id: UserId, email: &str) -> Self {
        Self {
            user_id: Some(id),
            label: email.to_owned(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_user_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub detail: serde_json::Value,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor_user_id: Option<String>,
    actor: String,
    action: String,
    target_kind: String,
    target_id: String,
    detail: String,
}

/// Appends an entry. `detail` must never carry a secret.
pub(crate) async fn record(
    tx: &mut AnyConnection,
    at_ms: i64,
    actor: &Actor,
    action: &str,
    target: (&str, &str),
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor_user_id, actor, action, target_kind, target_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at_ms)
    .bind(actor.user_id.map(|u| u.to_string()))
    .bind(&actor.label)
    .bind(action)
    .bind(target.0)
    .bind(target.1)
    .bind(detail.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store {
    /// The newest entries first; `before` pages backwards by id.
    pub async fn audit_log(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor_user_id, actor, action, target_kind, target_id, detail \
             FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(AuditEntry {
                    detail: serde_json::from_str(&r.detail)
                        .map_err(|e| StoreError::corrupt(format!("audit entry {}", r.id), e))?,
                    id: r.id,
                    at: time_from_ms(r.at),
                    actor_user_id: r.actor_user_id,
                    actor: r.actor,
                    action: r.action,
                    target_kind: r.target_kind,
                    target_id: r.target_id,
                })
            })
            .collect()
    }
}
