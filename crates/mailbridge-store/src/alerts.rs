//! [`AlertRecord`]: something went wrong that a person must act on — what, and what to do.

use chrono::{DateTime, Utc};
use mailbridge_core::{EventType, MailboxId, ProfileId, UserId};
use sqlx::AnyConnection;

use crate::events::NewEvent;
use crate::{Result, Store, StoreError, time_from_ms};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AlertRecord {
    pub id: String,
    #[schema(value_type = Option<String>)]
    pub mailbox_id: Option<MailboxId>,
    /// Set on an alert about a whole server profile.
    #[schema(value_type = Option<String>)]
    pub profile_id: Option<ProfileId>,
    /// Who is told.
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// Stable word for the kind of problem, e.g. `sign_in_required`.
    pub kind: String,
    pub message: String,
    /// What to do about it.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub dismissed_at: Option<DateTime<Utc>>,
}

/// An alert to raise.
pub struct NewAlert<'a> {
    pub mailbox_id: Option<MailboxId>,
    pub profile_id: Option<ProfileId>,
    pub user_id: UserId,
    pub kind: &'a str,
    pub message: String,
    pub hint: &'a str,
}

#[derive(sqlx::FromRow)]
struct AlertRow {
    id: String,
    mailbox_id: Option<String>,
    profile_id: Option<String>,
    user_id: String,
    kind: String,
    message: String,
    hint: String,
    created_at: i64,
    dismissed_at: Option<i64>,
}

impl TryFrom<AlertRow> for AlertRecord {
    type Error = StoreError;
    fn try_from(r: AlertRow) -> Result<Self> {
        let bad = |e: uuid::Error| StoreError::corrupt(format!("alert {}", r.id), e);
        Ok(Self {
            mailbox_id: r
                .mailbox_id
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(bad)?,
            profile_id: r
                .profile_id
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(bad)?,
            user_id: r.user_id.parse().map_err(bad)?,
            id: r.id,
            kind: r.kind,
            message: r.message,
            hint: r.hint,
            created_at: time_from_ms(r.created_at),
            dismissed_at: r.dismissed_at.map(time_from_ms),
        })
    }
}

/// Raises an alert in the transaction of the change that caused it. An open alert of the
/// same kind about the same mailbox or profile for the same person is not repeated. Returns
/// its `alert.created` event, for the caller to append with the change's other events.
pub(crate) async fn raise(
    tx: &mut AnyConnection,
    now: i64,
    alert: NewAlert<'_>,
) -> Result<Option<NewEvent>> {
    let mailbox = alert.mailbox_id.map(|m| m.to_string());
    let profile = alert.profile_id.map(|p| p.to_string());
    let (open,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM alerts WHERE (mailbox_id = $1 OR (mailbox_id IS NULL AND $1 IS NULL)) \
         AND (profile_id = $4 OR (profile_id IS NULL AND $4 IS NULL)) \
         AND user_id = $2 AND kind = $3 AND dismissed_at IS NULL",
    )
    .bind(mailbox)
    .bind(alert.user_id.to_string())
    .bind(alert.kind)
    .bind(profile)
    .fetch_one(&mut *tx)
    .await?;
    if open > 0 {
        return Ok(None);
    }
    raise_each(tx, now, alert).await.map(Some)
}

/// Raises an alert even when one of its kind is open: for problems that each need their own
/// decision (one per email that may not have been delivered).
pub(crate) async fn raise_each(
    tx: &mut AnyConnection,
    now: i64,
    alert: NewAlert<'_>,
) -> Result<NewEvent> {
    let mailbox = alert.mailbox_id.map(|m| m.to_string());
    let profile = alert.profile_id.map(|p| p.to_string());
    let id = uuid::Uuid::now_v7().to_string();
    let event = NewEvent {
        kind: EventType::AlertCreated,
        mailbox_id: alert.mailbox_id,
        owner: Some(alert.user_id),
        data: serde_json::json!({
            "alert": {
                "id": id, "kind": alert.kind, "message": alert.message, "hint": alert.hint,
                "mailbox_id": mailbox, "profile_id": profile,
            },
        })
        .to_string(),
    };
    sqlx::query(
        "INSERT INTO alerts (id, mailbox_id, user_id, kind, message, hint, created_at, profile_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(mailbox)
    .bind(alert.user_id.to_string())
    .bind(alert.kind)
    .bind(alert.message)
    .bind(alert.hint)
    .bind(now)
    .bind(profile)
    .execute(&mut *tx)
    .await?;
    Ok(event)
}

/// Dismisses the open alerts of a kind for a mailbox (the problem was fixed).
pub(crate) async fn resolve(
    tx: &mut AnyConnection,
    now: i64,
    mailbox: MailboxId,
    kind: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE alerts SET dismissed_at = $1 WHERE mailbox_id = $2 AND kind = $3 AND dismissed_at IS NULL",
    )
    .bind(now)
    .bind(mailbox.to_string())
    .bind(kind)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

const ALERT_COLUMNS: &str =
    "id, mailbox_id, profile_id, user_id, kind, message, hint, created_at, dismissed_at";

impl Store {
    /// A user's own alerts (about their mailboxes, and about profiles they own), newest first;
    /// dismissed ones only when asked.
    pub async fn user_alerts(
        &self,
        user: UserId,
        include_dismissed: bool,
    ) -> Result<Vec<AlertRecord>> {
        self.alerts_where("user_id", &user.to_string(), include_dismissed)
            .await
    }

    /// How many open alerts a person has (the console's badge).
    pub async fn open_alert_count(&self, user: UserId) -> Result<usize> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM alerts WHERE user_id = $1 AND dismissed_at IS NULL",
        )
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// How many open alerts each mailbox has (mailboxes without any are absent).
    pub async fn open_alert_counts(&self) -> Result<std::collections::HashMap<MailboxId, usize>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT mailbox_id, COUNT(*) FROM alerts WHERE mailbox_id IS NOT NULL \
             AND dismissed_at IS NULL GROUP BY mailbox_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(m, n)| {
                Ok((
                    m.parse()
                        .map_err(|e| StoreError::corrupt("alert mailbox", e))?,
                    usize::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// A mailbox's alerts, newest first; dismissed ones only when asked.
    pub async fn mailbox_alerts(
        &self,
        mailbox: MailboxId,
        include_dismissed: bool,
    ) -> Result<Vec<AlertRecord>> {
        self.alerts_where("mailbox_id", &mailbox.to_string(), include_dismissed)
            .await
    }

    /// `column` is one of this module's own constants, never input.
    async fn alerts_where(
        &self,
        column: &'static str,
        value: &str,
        include_dismissed: bool,
    ) -> Result<Vec<AlertRecord>> {
        let rows: Vec<AlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE {column} = $1 \
             AND ($2 = 1 OR dismissed_at IS NULL) ORDER BY created_at DESC, id DESC"
        )))
        .bind(value)
        .bind(i64::from(include_dismissed))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AlertRecord::try_from).collect()
    }

    /// Dismisses one of the person's own open alerts (a mailbox's or a profile's).
    pub async fn dismiss_user_alert(&self, user: UserId, alert_id: &str) -> Result<()> {
        self.dismiss_where("user_id", &user.to_string(), alert_id)
            .await
    }

    /// Dismisses one alert of a mailbox.
    pub async fn dismiss_alert(&self, mailbox: MailboxId, alert_id: &str) -> Result<()> {
        self.dismiss_where("mailbox_id", &mailbox.to_string(), alert_id)
            .await
    }

    /// Dismisses the open alert `alert_id` if its `column` is `value`; `column` is one of
    /// this module's own constants, never input.
    async fn dismiss_where(&self, column: &'static str, value: &str, alert_id: &str) -> Result<()> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE alerts SET dismissed_at = $1 WHERE id = $2 AND {column} = $3 AND dismissed_at IS NULL"
        )))
        .bind(self.now_ms())
        .bind(alert_id)
        .bind(value)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "open alert",
                id: alert_id.to_owned(),
            });
        }
        Ok(())
    }
}
