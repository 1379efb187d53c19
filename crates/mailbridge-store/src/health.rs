//! Sync health: each mailbox's run of failed passes (`failing_since`), and profile outages —
//! most of a profile's mailboxes failing at once means its server is down, not the
//! mailboxes, so none is disabled for it; its owner is told instead, and told again when it
//! is over.

use chrono::{DateTime, Utc};
use mailbridge_core::MailboxId;

use crate::alerts::{self, NewAlert};
use crate::nodes::{Fence, check_fence};
use crate::sql::{SqlConn, Stmt};
use crate::{Result, Store, StoreError};

/// The alert kind raised to a profile's owner while its server is down.
pub const PROFILE_OUTAGE: &str = "profile_outage";

/// Mailboxes of a profile that must be failing together before it counts as an outage (with
/// one mailbox there is no telling the server from the mailbox).
const MIN_OUTAGE_MAILBOXES: i64 = 2;

impl Store {
    /// Records a failed sync attempt on the mailbox's status (and when its run of failures
    /// began).
    pub async fn record_sync_error(
        &self,
        mailbox: MailboxId,
        error: &str,
        fence: Option<&Fence>,
    ) -> Result<()> {
        self.record_sync_state(
            mailbox,
            fence,
            "items_failed = items_failed + 1, failing_since = COALESCE(failing_since, $2)",
            error,
            None,
        )
        .await
    }

    /// The provider says the account is over a limit (`why`, its words): the mailbox waits
    /// until `until` — shown on its status — without counting as failing.
    pub async fn record_sync_pause(
        &self,
        mailbox: MailboxId,
        until: DateTime<Utc>,
        why: &str,
        fence: Option<&Fence>,
    ) -> Result<()> {
        self.record_sync_state(mailbox, fence, "paused_until = $4", why, Some(until))
            .await
    }

    /// Sets the mailbox's last sync error (`$1`) and time (`$2`) and what `set` says
    /// (`$4`: `until`), while `fence` holds.
    async fn record_sync_state(
        &self,
        mailbox: MailboxId,
        fence: Option<&Fence>,
        set: &'static str,
        error: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let now = self.now_ms();
        let mid = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence {
            check_fence(&mut tx, self.backend, &mid, fence, now).await?;
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE mailboxes SET last_sync_error = $1, last_sync_at = $2, {set} WHERE id = $3"
        )))
        .bind(error)
        .bind(now)
        .bind(&mid);
        if let Some(until) = until {
            q = q.bind(until.timestamp_millis());
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Called when a mailbox reached its failure limit with a temporary error. When most of
    /// its profile's enabled mailboxes (at least two) are failing now, the server is down:
    /// the profile's owner is alerted (once while it lasts) and `true` says to keep retrying
    /// instead of disabling the mailbox.
    pub async fn hold_for_outage(
        &self,
        mailbox: MailboxId,
        error: &str,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let now = self.now_ms();
        let mid = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence {
            check_fence(&mut tx, self.backend, &mid, fence, now).await?;
        }
        let Some(outage) = outage_of(&mut tx, &mid).await? else {
            return Ok(false);
        };
        if !outage.is_outage() {
            return Ok(false);
        }
        let bad = |e: uuid::Error| StoreError::corrupt(format!("profile {}", outage.profile), e);
        let profile = outage.profile.parse().map_err(bad)?;
        let owners: Vec<String> = match &outage.owner {
            Some(o) => vec![o.clone()],
            // A profile made from the command line has no owner: every admin is told.
            None => sqlx::query_as::<_, (String,)>("SELECT id FROM users WHERE role = 'admin'")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect(),
        };
        let mut events = Vec::new();
        for owner in owners {
            let alert = alerts::raise(
                &mut tx,
                now,
                NewAlert {
                    mailbox_id: None,
                    profile_id: Some(profile),
                    user_id: owner.parse().map_err(bad)?,
                    kind: PROFILE_OUTAGE,
                    message: format!(
                        "{} of the {} mailboxes of server profile '{}' cannot sync (the last error: {error}); they keep retrying and none is disabled",
                        outage.failing, outage.total, outage.name
                    ),
                    hint: "The mail server or the provider is likely down (a maintenance window?). Nothing needs doing here: the mailboxes resume on their own when it answers again.",
                },
            )
            .await?;
            events.extend(alert);
        }
        crate::events::append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await?;
        Ok(true)
    }
}

/// How a profile's enabled, incoming-synced mailboxes are doing.
struct Outage {
    profile: String,
    name: String,
    owner: Option<String>,
    total: i64,
    failing: i64,
}

impl Outage {
    fn is_outage(&self) -> bool {
        self.total >= MIN_OUTAGE_MAILBOXES && self.failing * 2 > self.total
    }
}

/// The health of the profile of `mailbox`.
async fn outage_of(tx: &mut impl SqlConn, mailbox: &str) -> Result<Option<Outage>> {
    let row: Option<(String, String, Option<String>, i64, i64)> = tx.fetch_optional(Stmt::new(
        "SELECT p.id, p.name, p.owner_user_id, \
         (SELECT COUNT(*) FROM mailboxes WHERE profile_id = p.id AND enabled = 1 AND incoming_method <> 'none'), \
         (SELECT COUNT(*) FROM mailboxes WHERE profile_id = p.id AND enabled = 1 AND incoming_method <> 'none' \
          AND failing_since IS NOT NULL) \
         FROM server_profiles p JOIN mailboxes m ON m.profile_id = p.id WHERE m.id = $1",
    )
    .bind(mailbox))
    .await?;
    Ok(row.map(|(profile, name, owner, total, failing)| Outage {
        profile,
        name,
        owner,
        total,
        failing,
    }))
}

/// After a mailbox of a profile synced again: when the profile is no longer in an outage,
/// its outage alert is settled.
pub(crate) async fn resolve_outage_if_over(
    tx: &mut impl SqlConn,
    mailbox: &str,
    now: i64,
) -> Result<()> {
    let Some(outage) = outage_of(tx, mailbox).await? else {
        return Ok(());
    };
    if outage.is_outage() {
        return Ok(());
    }
    tx.execute(
        Stmt::new(
            "UPDATE alerts SET dismissed_at = $1 WHERE profile_id = $2 AND kind = $3 \
             AND dismissed_at IS NULL",
        )
        .bind(now)
        .bind(&outage.profile)
        .bind(PROFILE_OUTAGE),
    )
    .await?;
    Ok(())
}
