//! Webhooks: [`WebhookRecord`]s (endpoints the admins register, each with a `whsec_` secret
//! kept encrypted), and the durable queue that delivers the event log to them:
//!
//! - a dispatcher ([`dispatch`]) follows the log with a cursor per endpoint and makes one
//!   delivery per (endpoint, matching event), in one transaction with the cursor's move —
//!   so the sync path only appends events, and nothing is lost or doubled;
//! - a worker claims due deliveries ([`claim`]), one node at a time for a bounded time (a
//!   node that dies mid-delivery leaves it to another once that time passes), and records
//!   the attempts ([`record_attempts`]) with their verdicts.
//!
//! The worker does all three in one transaction a round ([`Store::webhook_round`]).
//!
//! Claims run on the database's clock (see `nodes::lease_now`).

use base64::Engine;
use chrono::{DateTime, Utc};
use mailbridge_core::WebhookSpec;
use secrecy::{ExposeSecret, SecretString};

use crate::alerts::{self, NewAlert};
use crate::audit::{self, Actor};
use crate::emails::{in_list_size, padded_keys};
use crate::events::{Event, NewEvent, append};
use crate::inserts::BatchInsert;
use crate::nodes::lease_now;
use crate::{Backend, Result, Store, StoreError, time_from_ms};

/// How long an endpoint may fail without a single success before it is disabled.
pub const FAILING_LIMIT: chrono::Duration = chrono::Duration::days(5);
/// How long the secret before a rotation keeps signing beside the new one.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// The alert kind raised to admins when Mailbridge disables an endpoint.
pub const WEBHOOK_DISABLED: &str = "webhook_disabled";
/// Events looked at per endpoint per round: about what a worker claims a round (128), so a
/// round holds SQLite's write lock for milliseconds, not the tens of milliseconds 500 took —
/// in which a sync's batch waited. The event log, not the delivery table, holds a backlog.
const DISPATCH_PAGE: i64 = 128;
/// An endpoint's deliveries of a round's events (due at once: `created_at` is also the first
/// `next_attempt_at`); one already there is left alone.
static INSERT_DELIVERIES: BatchInsert = BatchInsert::new(
    "webhook_deliveries (id, endpoint_id, event_id, event_type, payload, created_at, \
     next_attempt_at, status, attempts)",
    " ON CONFLICT DO NOTHING",
);
/// A round's attempts.
static INSERT_ATTEMPTS: BatchInsert = BatchInsert::new(
    "webhook_attempts (id, delivery_id, node, attempted_at, duration_ms, status_code, error, \
     response_excerpt, next_attempt_at)",
    "",
);

/// A registered endpoint.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: String,
    pub spec: WebhookSpec,
    /// Why Mailbridge disabled it (410 Gone, failing for days).
    pub disabled_reason: Option<String>,
    /// While a rotation is under way: when the old secret stops signing.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// When its current run of failed attempts began.
    pub failing_since: Option<DateTime<Utc>>,
    /// Deliveries waiting to be made or retried.
    pub pending: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A delivery to make now, claimed by this node.
#[derive(Debug)]
pub struct DeliveryJob {
    pub id: String,
    pub endpoint_id: String,
    pub url: String,
    /// `webhook-id`.
    pub event_id: String,
    /// The body, exactly as it is signed and sent.
    pub payload: String,
    /// This attempt's number (1 for the first).
    pub attempt: i64,
    /// Every secret that signs it: the current one, and the one before a rotation.
    pub secrets: Vec<SecretString>,
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub duration_ms: i64,
    /// The answer's status; `None` when there was no answer (`error` says why).
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The start of the answer's body.
    pub excerpt: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// No more tries (the retry schedule is spent).
    Failed,
    /// The endpoint answered 410 Gone: it is disabled.
    Gone,
}

/// What a round of the webhook worker did ([`Store::webhook_round`]).
#[derive(Debug, Default)]
pub struct WebhookRound {
    /// Attempts of the round before that were written (those whose claim `node` still held).
    pub recorded: usize,
    /// The deliveries claimed for this round.
    pub jobs: Vec<DeliveryJob>,
}

/// A delivery with its attempts, for the API and the console.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempt_count: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// The node sending it right now (its name), if any.
    pub sending_node: Option<String>,
    /// Oldest first.
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// When the next try was set for, after this one.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The node that made it (its name).
    pub node: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    url: String,
    description: Option<String>,
    event_types: Option<String>,
    mailbox_ids: Option<String>,
    enabled: i64,
    disabled_reason: Option<String>,
    previous_secret_until: Option<i64>,
    failing_since: Option<i64>,
    pending: i64,
    created_at: i64,
    updated_at: i64,
}

const ENDPOINT_SELECT: &str = "SELECT w.id, w.url, w.description, w.event_types, w.mailbox_ids, \
     w.enabled, w.disabled_reason, w.previous_secret_until, w.failing_since, \
     (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending') AS pending, \
     w.created_at, w.updated_at FROM webhook_endpoints w";

impl TryFrom<EndpointRow> for WebhookRecord {
    type Error = StoreError;
    fn try_from(r: EndpointRow) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(format!("webhook {}", r.id), e);
        let list = |json: &Option<String>| -> Result<Option<Vec<String>>> {
            json.as_deref()
                .map(serde_json::from_str::<Vec<String>>)
                .transpose()
                .map_err(|e| bad(&e))
        };
        Ok(Self {
            spec: WebhookSpec {
                url: r.url.parse().map_err(|e| bad(&e))?,
                description: r.description,
                event_types: list(&r.event_types)?
                    .map(|v| v.iter().map(|t| t.parse()).collect::<Result<_, _>>())
                    .transpose()
                    .map_err(|e| bad(&e))?,
                mailbox_ids: list(&r.mailbox_ids)?
                    .map(|v| v.iter().map(|m| m.parse()).collect::<Result<_, _>>())
                    .transpose()
                    .map_err(|e| bad(&e))?,
                enabled: r.enabled != 0,
            },
            id: r.id,
            disabled_reason: r.disabled_reason,
            previous_secret_until: r.previous_secret_until.map(time_from_ms),
            failing_since: r.failing_since.map(time_from_ms),
            pending: r.pending,
            created_at: time_from_ms(r.created_at),
            updated_at: time_from_ms(r.updated_at),
        })
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64 (Standard Webhooks §4).
fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    SecretString::from(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn json_list<T: ToString>(list: &Option<Vec<T>>) -> Option<String> {
    list.as_ref().map(|l| {
        serde_json::Value::from(l.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string()
    })
}

impl Store {
    /// Registers an endpoint; deliveries start with the events committed from now on.
    /// Returns it and its secret (shown this once).
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        spec: &WebhookSpec,
    ) -> Result<(WebhookRecord, SecretString)> {
        let now = self.now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let secret = new_secret();
        let mut tx = self.begin_write().await?;
        let (head,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, description, event_types, mailbox_ids, enabled, \
             secret, cursor, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&id)
        .bind(spec.url.to_string())
        .bind(spec.description.clone())
        .bind(json_list(&spec.event_types))
        .bind(json_list(&spec.mailbox_ids))
        .bind(i64::from(spec.enabled))
        .bind(self.seal("webhook_endpoints", "secret", &id, secret.expose_secret()))
        .bind(head.unwrap_or(0))
        .bind(actor.user_id.map(|u| u.to_string()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.create",
            ("webhook", &id),
            serde_json::json!({"url": spec.url, "event_types": spec.event_types, "mailbox_ids": spec.mailbox_ids}),
        )
        .await?;
        tx.commit().await?;
        Ok((self.get_webhook(&id).await?, secret))
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        let rows: Vec<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENDPOINT_SELECT} ORDER BY w.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(WebhookRecord::try_from).collect()
    }

    pub async fn get_webhook(&self, id: &str) -> Result<WebhookRecord> {
        let row: Option<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ENDPOINT_SELECT} WHERE w.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(WebhookRecord::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "webhook",
                id: id.to_owned(),
            })
    }

    /// Replaces an endpoint's settings. Enabling it again clears why it was disabled and its
    /// run of failures; its deliveries go on from where they were.
    pub async fn update_webhook(
        &self,
        actor: &Actor,
        id: &str,
        spec: &WebhookSpec,
    ) -> Result<WebhookRecord> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, mailbox_ids = $4, \
             disabled_reason = CASE WHEN $5 = 1 THEN NULL ELSE disabled_reason END, \
             failing_since = CASE WHEN $5 = 1 AND enabled = 0 THEN NULL ELSE failing_since END, \
             enabled = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(spec.url.to_string())
        .bind(spec.description.clone())
        .bind(json_list(&spec.event_types))
        .bind(json_list(&spec.mailbox_ids))
        .bind(i64::from(spec.enabled))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        endpoint_touched(done.rows_affected(), id)?;
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.update",
            ("webhook", id),
            serde_json::json!({"url": spec.url, "enabled": spec.enabled, "event_types": spec.event_types, "mailbox_ids": spec.mailbox_ids}),
        )
        .await?;
        tx.commit().await?;
        self.get_webhook(id).await
    }

    /// Deletes an endpoint with its deliveries and their attempts.
    pub async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        endpoint_touched(done.rows_affected(), id)?;
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.delete",
            ("webhook", id),
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new secret for an endpoint (returned this once); the old one goes on signing beside
    /// it for [`ROTATION_OVERLAP`], so the receiver can switch without losing a delivery.
    pub async fn rotate_webhook_secret(&self, actor: &Actor, id: &str) -> Result<SecretString> {
        let now = self.now_ms();
        let current =
            self.webhook_secret(id, "secret")
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "webhook",
                    id: id.to_owned(),
                })?;
        let secret = new_secret();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET secret = $1, previous_secret = $2, previous_secret_until = $3, \
             updated_at = $4 WHERE id = $5",
        )
        .bind(self.seal("webhook_endpoints", "secret", id, secret.expose_secret()))
        .bind(self.seal("webhook_endpoints", "previous_secret", id, current.expose_secret()))
        .bind(now + ROTATION_OVERLAP.num_milliseconds())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.rotate_secret",
            ("webhook", id),
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// One of an endpoint's sealed secrets (`secret` or `previous_secret`), opened.
    async fn webhook_secret(&self, id: &str, column: &str) -> Result<Option<SecretString>> {
        let row: Option<(Option<Vec<u8>>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM webhook_endpoints WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.and_then(|(blob,)| blob)
            .map(|b| self.open_secret("webhook_endpoints", column, id, &b))
            .transpose()
    }

    /// One round of the webhook worker, in one write transaction: records the attempts of
    /// the round before (`results`), makes the deliveries for events committed since each
    /// enabled endpoint's cursor, and claims up to `limit` due deliveries for `node`. One
    /// write per round, not three: each write waits its turn behind a sync's batch, and the
    /// batch behind it. With nothing to record, a read first says whether anything is
    /// waiting at all, so an idle worker never takes SQLite's write lock.
    pub async fn webhook_round(
        &self,
        node: &str,
        results: &[(DeliveryJob, Attempt, Verdict)],
        limit: i64,
        hold: std::time::Duration,
    ) -> Result<WebhookRound> {
        let now = self.now_ms();
        if results.is_empty() && !self.webhook_work_waiting(now).await? {
            return Ok(WebhookRound::default());
        }
        let mut tx = self.begin_background_write().await?;
        let (recorded, events) = record_attempts(&mut tx, self.backend, node, now, results).await?;
        append(&mut tx, self.backend, now, &events).await?;
        dispatch(&mut tx, self.backend, now).await?;
        let claimed = claim(&mut tx, self.backend, node, limit, hold, now).await?;
        if events.is_empty() {
            tx.commit().await?;
        } else {
            self.commit(tx).await?;
        }
        Ok(WebhookRound {
            recorded,
            jobs: self.delivery_jobs(claimed, now).await?,
        })
    }

    /// Whether an endpoint is behind the event log or a delivery is due (on this node's
    /// clock; the claim checks again on the database's).
    async fn webhook_work_waiting(&self, now: i64) -> Result<bool> {
        let (behind, due): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM webhook_endpoints WHERE enabled = 1 \
             AND cursor < (SELECT COALESCE(MAX(seq), 0) FROM events)), \
             (SELECT COUNT(*) FROM (SELECT 1 FROM webhook_deliveries WHERE status = 'pending' \
             AND next_attempt_at <= $1 LIMIT 1) AS due)",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(behind > 0 || due > 0)
    }

    /// The claimed deliveries with each endpoint's URL and secrets, read and opened once.
    async fn delivery_jobs(&self, claimed: Vec<Claimed>, now: i64) -> Result<Vec<DeliveryJob>> {
        let mut endpoints: std::collections::HashMap<String, (String, Vec<SecretString>)> =
            std::collections::HashMap::new();
        let mut jobs = Vec::with_capacity(claimed.len());
        for (id, endpoint_id, event_id, payload, attempt) in claimed {
            if !endpoints.contains_key(&endpoint_id) {
                let (url, previous_until): (String, Option<i64>) = sqlx::query_as(
                    "SELECT url, previous_secret_until FROM webhook_endpoints WHERE id = $1",
                )
                .bind(&endpoint_id)
                .fetch_one(&self.pool)
                .await?;
                let mut secrets: Vec<SecretString> = self
                    .webhook_secret(&endpoint_id, "secret")
                    .await?
                    .into_iter()
                    .collect();
                if previous_until.is_some_and(|until| until > now) {
                    secrets.extend(self.webhook_secret(&endpoint_id, "previous_secret").await?);
                }
                endpoints.insert(endpoint_id.clone(), (url, secrets));
            }
            let (url, secrets) = endpoints.get(&endpoint_id).cloned().unwrap_or_default();
            jobs.push(DeliveryJob {
                id,
                endpoint_id,
                url,
                event_id,
                payload,
                attempt,
                secrets,
            });
        }
        Ok(jobs)
    }

    /// An endpoint's deliveries, newest first, each with its attempts; `before` pages on
    /// (a delivery id from the previous page).
    pub async fn webhook_deliveries(
        &self,
        endpoint: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>> {
        self.get_webhook(endpoint).await?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{DELIVERY_SELECT} WHERE endpoint_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        )))
        .bind(endpoint)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.with_attempts(rows).await
    }

    /// One delivery of an endpoint, with its attempts.
    pub async fn webhook_delivery(&self, endpoint: &str, delivery: &str) -> Result<DeliveryRecord> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{DELIVERY_SELECT} WHERE endpoint_id = $1 AND id = $2"
        )))
        .bind(endpoint)
        .bind(delivery)
        .fetch_all(&self.pool)
        .await?;
        self.with_attempts(rows)
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound {
                kind: "delivery",
                id: delivery.to_owned(),
            })
    }

    /// Sends a delivery again as soon as possible, with the same `webhook-id` and body.
    pub async fn redeliver_webhook(
        &self,
        actor: &Actor,
        endpoint: &str,
        delivery: &str,
    ) -> Result<DeliveryRecord> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1 \
             WHERE id = $2 AND endpoint_id = $3 AND (claimed_until IS NULL OR status <> 'pending')",
        )
        .bind(now)
        .bind(delivery)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            self.webhook_delivery(endpoint, delivery).await?;
            return Err(StoreError::Conflict(
                "this delivery is being sent right now; look again in a moment".to_owned(),
            ));
        }
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.redeliver",
            ("webhook", endpoint),
            serde_json::json!({"delivery": delivery}),
        )
        .await?;
        tx.commit().await?;
        self.webhook_delivery(endpoint, delivery).await
    }

    /// Queues a `webhook.test` delivery to an endpoint (not in the event log; its filters do
    /// not apply), to check that it receives and verifies deliveries.
    pub async fn send_test_webhook(&self, actor: &Actor, endpoint: &str) -> Result<DeliveryRecord> {
        let now = self.now_ms();
        self.get_webhook(endpoint).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let event_id = uuid::Uuid::now_v7().to_string();
        let payload = serde_json::json!({
            "id": event_id,
            "type": "webhook.test",
            "timestamp": time_from_ms(now),
            "cursor": null,
            "mailbox_id": null,
            "owner_user_id": actor.user_id,
            "data": {"message": "a test delivery from Mailbridge: this endpoint receives and can verify deliveries"},
        });
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, status, \
             attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, 'webhook.test', $4, 'pending', 0, $5, $5)",
        )
        .bind(&id)
        .bind(endpoint)
        .bind(&event_id)
        .bind(payload.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            actor,
            "webhook.test",
            ("webhook", endpoint),
            serde_json::json!({}),
        )
        .await?;
        self.commit(tx).await?;
        self.webhook_delivery(endpoint, &id).await
    }

    /// Deletes settled deliveries (and their attempts) created before `before`.
    pub async fn prune_webhook_deliveries(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE created_at < $1 AND status <> 'pending'",
        )
        .bind(before.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn with_attempts(&self, rows: Vec<DeliveryRow>) -> Result<Vec<DeliveryRecord>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let attempts: Vec<AttemptRow> = sqlx::query_as(
                "SELECT a.attempted_at, a.duration_ms, a.status_code, a.error, a.response_excerpt, \
                 a.next_attempt_at, COALESCE(n.name, a.node) AS node \
                 FROM webhook_attempts a LEFT JOIN nodes n ON n.id = a.node \
                 WHERE a.delivery_id = $1 ORDER BY a.attempted_at, a.id",
            )
            .bind(&r.id)
            .fetch_all(&self.pool)
            .await?;
            out.push(DeliveryRecord {
                id: r.id,
                event_id: r.event_id,
                event_type: r.event_type,
                status: r.status,
                attempt_count: r.attempts,
                next_attempt_at: r.next_attempt_at.map(time_from_ms),
                created_at: time_from_ms(r.created_at),
                delivered_at: r.delivered_at.map(time_from_ms),
                last_status: r.last_status,
                last_error: r.last_error,
                sending_node: r.sending_node,
                attempts: attempts
                    .into_iter()
                    .map(|a| AttemptRecord {
                        at: time_from_ms(a.attempted_at),
                        duration_ms: a.duration_ms,
                        status_code: a.status_code,
                        error: a.error,
                        response_excerpt: a.response_excerpt,
                        next_attempt_at: a.next_attempt_at.map(time_from_ms),
                        node: a.node,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    event_type: String,
    status: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    created_at: i64,
    delivered_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    sending_node: Option<String>,
}

const DELIVERY_SELECT: &str = "SELECT id, event_id, event_type, status, attempts, next_attempt_at, \
     created_at, delivered_at, last_status, last_error, \
     (SELECT name FROM nodes WHERE id = claimed_by) AS sending_node FROM webhook_deliveries";

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempted_at: i64,
    duration_ms: i64,
    status_code: Option<i64>,
    error: Option<String>,
    response_excerpt: Option<String>,
    next_attempt_at: Option<i64>,
    node: Option<String>,
}

/// `NotFound` when a statement on endpoint `id` touched no row.
fn endpoint_touched(rows: u64, id: &str) -> Result<()> {
    if rows == 0 {
        return Err(StoreError::NotFound {
            kind: "webhook",
            id: id.to_owned(),
        });
    }
    Ok(())
}

/// A claimed delivery's row: id, endpoint, event id, payload, attempt number.
type Claimed = (String, String, String, String, i64);

/// Makes the deliveries for events committed since each enabled endpoint's cursor, and
/// moves the cursors — so the sync path only appends events, and nothing is lost or
/// doubled. On PostgreSQL an endpoint another node is dispatching is skipped (`SKIP
/// LOCKED`).
async fn dispatch(tx: &mut sqlx::AnyConnection, backend: Backend, now: i64) -> Result<()> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let endpoints: Vec<(String, i64, Option<String>, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, cursor, event_types, mailbox_ids FROM webhook_endpoints WHERE enabled = 1{lock}"
        )))
        .fetch_all(&mut *tx)
        .await?;
    if endpoints.is_empty() {
        return Ok(());
    }
    // Every event up to `head` is committed and visible (see `events`).
    let (head, pruned): (Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT MAX(seq) FROM events), pruned_through FROM event_log WHERE id = 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    let head = head.unwrap_or(pruned);
    for (id, cursor, types, mailboxes) in endpoints {
        if cursor >= head {
            continue;
        }
        if cursor < pruned {
            tracing::warn!(webhook = %id, cursor, pruned, "events for this webhook were pruned before they were dispatched");
        }
        let types: Option<Vec<String>> = types.and_then(|t| serde_json::from_str(&t).ok());
        let mailboxes: Option<Vec<String>> = mailboxes.and_then(|m| serde_json::from_str(&m).ok());
        let events: Vec<Event> =
            crate::events::page(tx, cursor.max(pruned), head, DISPATCH_PAGE).await?;
        let next = match events.last() {
            Some(last) if events.len() as i64 >= DISPATCH_PAGE => last.seq,
            _ => head,
        };
        let wanted: Vec<&Event> = events
            .iter()
            .filter(|e| types.as_ref().is_none_or(|t| t.contains(&e.kind)))
            .filter(|e| {
                mailboxes
                    .as_ref()
                    .is_none_or(|m| e.mailbox_id.as_ref().is_some_and(|id| m.contains(id)))
            })
            .collect();
        INSERT_DELIVERIES
            .run(tx, backend, &wanted, |q, e| {
                q.bind(e.map(|_| uuid::Uuid::now_v7().to_string()))
                    .bind(e.map(|_| id.clone()))
                    .bind(e.map(|e| e.id.clone()))
                    .bind(e.map(|e| e.kind.clone()))
                    .bind(e.map(|e| e.to_json().to_string()))
                    .bind(e.map(|_| now))
                    .bind(e.map(|_| now))
                    .bind(e.map(|_| "pending"))
                    .bind(e.map(|_| 0_i64))
            })
            .await?;
        sqlx::query("UPDATE webhook_endpoints SET cursor = $1 WHERE id = $2")
            .bind(next)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Claims up to `limit` due deliveries of enabled endpoints for `node`, for `hold`: each
/// counts an attempt now. A delivery claimed by a node that died is free again once the
/// hold has passed.
async fn claim(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    node: &str,
    limit: i64,
    hold: std::time::Duration,
    now: i64,
) -> Result<Vec<Claimed>> {
    let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let claim_now = lease_now(tx, backend, now).await?;
    let due: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND w.enabled = 1 \
         AND (d.claimed_until IS NULL OR d.claimed_until <= $2) \
         ORDER BY d.next_attempt_at LIMIT $3{lock}"
    )))
    .bind(now)
    .bind(claim_now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&String> = due.iter().map(|(id,)| id).collect();
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_deliveries SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1 \
         WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until <= $3) \
         AND id IN ({}) RETURNING id, endpoint_id, event_id, payload, attempts",
        placeholders(4, in_list_size(ids.len()))
    )))
    .bind(node)
    .bind(claim_now + hold_ms)
    .bind(claim_now);
    for id in padded_keys(&ids) {
        q = q.bind(id);
    }
    Ok(q.fetch_all(&mut *tx).await?)
}

/// Records attempts and their verdicts with a handful of statements (a round's deliveries
/// are mostly successes to one endpoint): each only if `node` still holds the delivery's
/// claim (a node whose claim ran out and was taken over writes nothing for it). A success
/// ends the endpoint's run of failures; after a 410, or failing for [`FAILING_LIMIT`] with
/// no success, the endpoint is disabled and every admin alerted. Returns how many it wrote,
/// and the events to append.
async fn record_attempts(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    node: &str,
    now: i64,
    results: &[(DeliveryJob, Attempt, Verdict)],
) -> Result<(usize, Vec<NewEvent>)> {
    if results.is_empty() {
        return Ok((0, Vec::new()));
    }
    let held: std::collections::HashSet<String> = {
        let ids: Vec<&String> = results.iter().map(|(job, _, _)| &job.id).collect();
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM webhook_deliveries WHERE claimed_by = $1 AND id IN ({})",
            placeholders(2, in_list_size(ids.len()))
        )))
        .bind(node);
        for id in padded_keys(&ids) {
            q = q.bind(id);
        }
        let rows: Vec<(String,)> = q.fetch_all(&mut *tx).await?;
        rows.into_iter().map(|(id,)| id).collect()
    };
    let results: Vec<&(DeliveryJob, Attempt, Verdict)> = results
        .iter()
        .filter(|(job, _, _)| held.contains(&job.id))
        .collect();
    INSERT_ATTEMPTS
        .run(tx, backend, &results, |q, result| {
            let next = result.and_then(|(_, _, verdict)| match verdict {
                Verdict::Retry(at) => Some(at.timestamp_millis()),
                _ => None,
            });
            q.bind(result.map(|_| uuid::Uuid::now_v7().to_string()))
                .bind(result.map(|(job, ..)| job.id.clone()))
                .bind(result.map(|_| node.to_owned()))
                .bind(result.map(|(_, attempt, _)| attempt.at.timestamp_millis()))
                .bind(result.map(|(_, attempt, _)| attempt.duration_ms))
                .bind(result.and_then(|(_, attempt, _)| attempt.status_code.map(i64::from)))
                .bind(result.and_then(|(_, attempt, _)| attempt.error.clone()))
                .bind(result.and_then(|(_, attempt, _)| attempt.excerpt.clone()))
                .bind(next)
        })
        .await?;
    // Successes: one UPDATE per answer status (usually one), and each endpoint's run of
    // failures ends.
    let mut delivered: std::collections::BTreeMap<Option<u16>, Vec<&str>> =
        std::collections::BTreeMap::new();
    let mut succeeded = std::collections::BTreeSet::new();
    for (job, attempt, verdict) in &results {
        if *verdict == Verdict::Delivered {
            delivered
                .entry(attempt.status_code)
                .or_default()
                .push(&job.id);
            succeeded.insert(job.endpoint_id.as_str());
        }
    }
    for (status, ids) in &delivered {
        let list = placeholders(3, in_list_size(ids.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_deliveries SET status = 'delivered', next_attempt_at = NULL, \
             claimed_by = NULL, claimed_until = NULL, last_status = $1, last_error = NULL, \
             delivered_at = $2 WHERE id IN ({list})"
        )))
        .bind(status.map(i64::from))
        .bind(now);
        for id in padded_keys(ids) {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    for endpoint in &succeeded {
        // Only a run that is on: a healthy endpoint's row is not written (or, on
        // PostgreSQL, locked) every round.
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(*endpoint)
        .execute(&mut *tx)
        .await?;
    }
    let mut events = Vec::new();
    for (job, attempt, verdict) in &results {
        if *verdict != Verdict::Delivered {
            let ok_since = succeeded.contains(job.endpoint_id.as_str());
            events.extend(record_failure(tx, now, job, attempt, *verdict, ok_since).await?);
        }
    }
    Ok((results.len(), events))
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records a failed attempt's verdict: the delivery waits for its retry or has failed, and
/// the endpoint's run of failures goes on (unless it also succeeded this round,
/// `ok_since`) — disabling it after a 410 or [`FAILING_LIMIT`] of failures. The events that
/// makes.
async fn record_failure(
    tx: &mut sqlx::AnyConnection,
    now: i64,
    job: &DeliveryJob,
    attempt: &Attempt,
    verdict: Verdict,
    ok_since: bool,
) -> Result<Vec<NewEvent>> {
    let (status, next) = match verdict {
        Verdict::Retry(at) => ("pending", Some(at.timestamp_millis())),
        _ => ("failed", None),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, next_attempt_at = $2, claimed_by = NULL, \
         claimed_until = NULL, last_status = $3, last_error = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(next)
    .bind(attempt.status_code.map(i64::from))
    .bind(attempt.error.clone())
    .bind(&job.id)
    .execute(&mut *tx)
    .await?;
    let reason = if verdict == Verdict::Gone {
        Some("it answered 410 Gone, which says it will never take deliveries again".to_owned())
    } else if ok_since {
        None
    } else {
        let (since,): (i64,) = sqlx::query_as(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 \
             RETURNING failing_since",
        )
        .bind(attempt.at.timestamp_millis())
        .bind(&job.endpoint_id)
        .fetch_one(&mut *tx)
        .await?;
        (now - since >= FAILING_LIMIT.num_milliseconds()).then(|| {
            format!(
                "no delivery to it succeeded for {} days",
                FAILING_LIMIT.num_days()
            )
        })
    };
    match reason {
        Some(reason) => disable_endpoint(tx, &job.endpoint_id, &job.url, &reason, now).await,
        None => Ok(Vec::new()),
    }
}

/// Disables an endpoint Mailbridge gave up on, saying why, and alerts every admin (each
/// endpoint's alert apart). Returns the alerts' events.
async fn disable_endpoint(
    tx: &mut sqlx::AnyConnection,
    endpoint: &str,
    url: &str,
    reason: &str,
    now: i64,
) -> Result<Vec<NewEvent>> {
    sqlx::query(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(reason)
    .bind(now)
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    let admins: Vec<(String,)> = sqlx::query_as("SELECT id FROM users WHERE role = 'admin'")
        .fetch_all(&mut *tx)
        .await?;
    let mut events = Vec::with_capacity(admins.len());
    for (admin,) in admins {
        events.push(
            alerts::raise_each(
                tx,
                now,
                NewAlert {
                    mailbox_id: None,
                    profile_id: None,
                    user_id: admin
                        .parse()
                        .map_err(|e| StoreError::corrupt("admin id", e))?,
                    kind: WEBHOOK_DISABLED,
                    message: format!("the webhook to {url} was disabled: {reason}"),
                    hint: "Check the receiving application, then enable the webhook again (Webhooks page or PATCH /api/v1/webhooks/{id}); deliveries that failed meanwhile can be sent again with Redeliver.",
                },
            )
            .await?,
        );
    }
    Ok(events)
}
