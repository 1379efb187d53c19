//! Nodes and mailbox leases: how several `mailbridge serve` processes on one database share
//! the mailboxes without a cluster protocol of their own. The database is the coordination
//! point:
//!
//! - each node registers a row in `nodes` and heartbeats it;
//! - a node works a mailbox only while it holds the mailbox's lease. A node's leases run out
//!   together, a lease time after its last heartbeat (`nodes.leases_until`): the heartbeat
//!   renews them all by writing that one row, however many mailboxes the node holds. A lease
//!   row says only who holds it ([`HELD`]) or that it was released (0); once its node's
//!   `leases_until` has passed, any node of the mailbox's group may take it;
//! - every node aims at its fair share (the group's eligible mailboxes over its live nodes),
//!   releasing the excess when another node joins and taking up what a dead one left;
//! - on PostgreSQL each node also holds a session lock while its process runs, and a node
//!   that has gone silent with its session gone died (a killed process's connections close
//!   with it): its leases end then, well before its lease time, while one that is only late
//!   (paused, or slow to reach the database) keeps its mailboxes until its leases run out;
//! - each new holder raises the lease's `epoch`, and a sync write commits only while the
//!   writer's epoch is still the lease's and the lease has not expired ([`Fence`]), so a node
//!   that was paused or cut off past its lease cannot write over its successor's work.
//!
//! On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`; on SQLite (one node) `BEGIN IMMEDIATE`
//! serializes them.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailbridge_core::{DEFAULT_NODE_GROUP, MailboxId};
use sqlx::AnyConnection;

use crate::sql::{SqlConn, Stmt};
use crate::{Backend, Result, Store, StoreError, time_from_ms};

/// A node's right to write for a mailbox: its id and the lease epoch it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub epoch: i64,
}

/// A lease held by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mailbox: MailboxId,
    pub epoch: i64,
}

/// What [`Store::balance_leases`] leaves this node with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// The leases this node holds now.
    pub leases: Vec<Lease>,
    /// How soon the leases of another node of the group run out if it does not renew them
    /// (on PostgreSQL with session locks, the soonest another node holding one goes silent,
    /// when its leases end early if its session is gone): a node that died is noticed then,
    /// not a whole renewal period later.
    /// `None` when no other node holds a live heartbeat.
    pub others_expire_in: Option<Duration>,
}

/// A node as `mailbridge nodes` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub group: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub draining: bool,
    pub stopped_at: Option<DateTime<Utc>>,
    /// It did not stop, and its leases ran out (it died, or lost the database for a lease
    /// time): its mailboxes have moved on.
    pub lost: bool,
    /// Mailboxes whose live lease it holds.
    pub mailboxes: i64,
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    id: String,
    name: String,
    node_group: String,
    started_at: i64,
    heartbeat_at: i64,
    draining: i64,
    stopped_at: Option<i64>,
    lost: i64,
    mailboxes: i64,
}

/// The time leases and heartbeats are written and compared in, in Unix milliseconds: the
/// database's clock on PostgreSQL, so nodes whose own clocks disagree still agree on when a
/// lease runs out (a node 20 s behind would otherwise write leases that others already see
/// as expired, and take leases others still hold). SQLite serves one node on one machine,
/// whose clock is the database's: there the store's clock is used.
pub(crate) async fn lease_now(
    tx: &mut AnyConnection,
    backend: Backend,
    local_now: i64,
) -> Result<i64> {
    match backend {
        Backend::Sqlite => Ok(local_now),
        Backend::Postgres => {
            let (ms,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {POSTGRES_CLOCK_MS}")))
                    .fetch_one(&mut *tx)
                    .await?;
            Ok(ms)
        }
    }
}

/// PostgreSQL's clock in milliseconds since the epoch, as SQL: what [`lease_now`] reads.
const POSTGRES_CLOCK_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// `mailbox_leases.expires_at` of a held lease: it lasts as long as its node's
/// `leases_until`. A released lease has 0.
const HELD: i64 = i64::MAX;

/// SQL: the lease row `l` is held and its node's leases have not run out at `now` (an SQL
/// expression).
pub(crate) fn live_lease(l: &str, now: &str) -> String {
    format!(
        "{l}.expires_at > {now} AND EXISTS (SELECT 1 FROM nodes ln WHERE ln.id = {l}.node_id \
         AND ln.leases_until > {now})"
    )
}

/// A lease time in the milliseconds lease times are kept in.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// How long a node may go without a heartbeat before it counts as dead if its session is gone
/// too (PostgreSQL): a third of the lease time. A node must beat more often than this (the
/// engine: at least twice within it), or a late heartbeat could be taken for a death.
pub fn silence_limit(ttl: Duration) -> Duration {
    ttl / 3
}

fn silence_limit_ms(ttl: Duration) -> i64 {
    ttl_ms(silence_limit(ttl))
}

/// The leases `node` holds at `now` (mailbox id and epoch), in the order of their mailboxes'
/// ids: a node over its share releases from the end of it.
async fn held_leases(tx: &mut AnyConnection, node: &str, now: i64) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT mailbox_id, epoch FROM mailbox_leases WHERE node_id = $1 AND expires_at > $2 \
         ORDER BY mailbox_id",
    )
    .bind(node)
    .bind(now)
    .fetch_all(tx)
    .await?)
}

/// Closes node sessions (and so frees their locks at once); a session already broken is gone
/// anyway.
async fn close_sessions(sessions: impl IntoIterator<Item = (AnyConnection, i64)>) {
    for (session, _) in sessions {
        let _ = sqlx::Connection::close(session).await;
    }
}

/// PostgreSQL: the first key of the session-level advisory lock a node holds, on a connection
/// of its own, for as long as its process runs; the second is `hashtext` of the node's id (two
/// ids that hash alike only make each look alive while the other is). The server drops a
/// session's locks when its connection ends, and a process that dies takes its connections
/// with it (the kernel closes its sockets), so a missing lock tells a dead node from a late
/// one. Behind a pooler in transaction mode the lock stays with a server connection the pooler
/// keeps: the node then looks alive until its leases run out, as without the lock.
const SESSION_LOCK: i32 = 0x6D62_6E64; // "mbnd"

/// SQL (PostgreSQL): a session of this database (or the one with backend `pid`, an SQL
/// expression) holds the session lock of the node whose id is the SQL expression `id`.
fn session_lock(id: &str, pid: Option<&str>) -> String {
    let pid = pid.map_or(String::new(), |p| format!(" AND k.pid = {p}"));
    format!(
        "EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted \
         AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND k.classid = {SESSION_LOCK} AND k.objid = hashtext({id})::oid AND k.objsubid = 2{pid})"
    )
}

/// SQL: enabled mailboxes with a synchronized direction, of the node group bound at
/// parameter `$g` (a mailbox without a router group belongs to the default group).
fn eligible(g: usize) -> String {
    format!(
        "m.enabled = 1 AND (m.incoming_method <> 'none' OR m.outgoing_method <> 'none') \
         AND (m.router_group = ${g} OR (m.router_group IS NULL AND ${g} = '{DEFAULT_NODE_GROUP}'))"
    )
}

impl Store {
    /// Registers this process as a node of `group`; returns its id. It counts for the
    /// others' shares from now, for a lease time `ttl` before its first heartbeat, so nodes
    /// starting together split the mailboxes at once rather than the first taking them all.
    /// SQLite is embedded in one process, so there a new node takes over from any earlier
    /// one at once (after a crash its leases would otherwise hold the mailboxes until they
    /// expire).
    pub async fn register_node(&self, name: &str, group: &str, ttl: Duration) -> Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.begin_write().await?;
        let now = lease_now(&mut tx, self.backend, self.now_ms()).await?;
        if self.backend == Backend::Sqlite {
            // Their leases end with their lease time.
            sqlx::query(
                "UPDATE nodes SET stopped_at = $1, leases_until = 0 WHERE stopped_at IS NULL",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Nodes that stopped more than a week ago are only history.
        sqlx::query("DELETE FROM nodes WHERE stopped_at < $1 AND id NOT IN (SELECT node_id FROM mailbox_leases)")
            .bind(now - 7 * 24 * 3600 * 1000)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO nodes (id, name, node_group, started_at, heartbeat_at, leases_until, \
             session_lock) VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(group)
        .bind(now)
        .bind(now.saturating_add(ttl_ms(ttl)))
        .bind(i64::from(self.node_session_locks))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Heartbeats, which renews all this node's leases at once, then brings them to its fair
    /// share: releases those of mailboxes it should no longer work (disabled, another group,
    /// more than its share), and claims free or expired ones up to its share. A draining
    /// node's share is zero.
    ///
    /// On PostgreSQL it first checks that this node's own session answers ([`SESSION_LOCK`]),
    /// then ends the leases of nodes found dead: silent for a third of the lease time with
    /// their session gone (unless [`Store::without_node_session_locks`]).
    ///
    /// The statements are the same few whatever the number of mailboxes (six at most on
    /// SQLite: the heartbeat, the release of mailboxes it should not work, the leases held, the
    /// nodes, the mailboxes, then a release of the excess or a claim, each returning what it
    /// moved; a node holding exactly its share skips the last. PostgreSQL adds the session
    /// lock's check on the session's own connection — two more when it opens the session
    /// anew — the dead nodes' end, and the clock): a node starting beside 10,000 free
    /// mailboxes takes them in one `INSERT … SELECT`, not one statement per mailbox, and a
    /// round that changes nothing writes only the node's own row.
    pub async fn balance_leases(&self, node: &str, group: &str, ttl: Duration) -> Result<Balance> {
        if self.backend == Backend::Postgres
            && self.node_session_locks
            && let Some(since) = self.hold_session(node, ttl).await
        {
            self.end_dead_nodes(node, ttl, since).await?;
        }
        let mut tx = self.begin_write().await?;
        let now = lease_now(&mut tx, self.backend, self.now_ms()).await?;
        let until = now.saturating_add(ttl_ms(ttl));
        let draining: Option<(i64,)> = sqlx::query_as(
            "UPDATE nodes SET heartbeat_at = $1, leases_until = $2 WHERE id = $3 AND stopped_at IS NULL \
             RETURNING draining",
        )
        .bind(now)
        .bind(until)
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((draining,)) = draining else {
            return Err(StoreError::NotFound {
                kind: "node",
                id: node.to_owned(),
            });
        };
        let silent_since = now.saturating_sub(silence_limit_ms(ttl));
        // Leases of mailboxes this node should no longer work expire now. (The node's own
        // leases are live from here on: its heartbeat just renewed them.)
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE mailbox_leases SET expires_at = 0 WHERE node_id = $1 AND expires_at > 0 \
             AND mailbox_id NOT IN \
             (SELECT m.id FROM mailboxes m WHERE {})",
            eligible(2)
        )))
        .bind(node)
        .bind(group)
        .execute(&mut *tx)
        .await?;
        let mut leases = held_leases(&mut tx, node, now).await?;
        let held = i64::try_from(leases.len()).unwrap_or(i64::MAX);
        // Other live nodes of the group, the soonest their leases run out, and the oldest
        // heartbeat not yet silent past the limit of those that hold a session lock.
        let (others, soonest, oldest_beat): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(leases_until), \
             MIN(CASE WHEN heartbeat_at > $4 AND session_lock = 1 THEN heartbeat_at END) \
             FROM nodes WHERE node_group = $1 AND id <> $2 \
             AND draining = 0 AND stopped_at IS NULL AND leases_until > $3",
        )
        .bind(group)
        .bind(node)
        .bind(now)
        .bind(silent_since)
        .fetch_one(&mut *tx)
        .await?;
        // Only a node that judges others by their sessions has a use for the moment one goes
        // silent.
        let soonest = if self.backend == Backend::Postgres && self.node_session_locks {
            let silent_at = oldest_beat.map(|beat| beat + silence_limit_ms(ttl));
            soonest.into_iter().chain(silent_at).min()
        } else {
            soonest
        };
        let share = if draining != 0 {
            0
        } else {
            let (mailboxes,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM mailboxes m WHERE {}",
                eligible(1)
            )))
            .bind(group)
            .fetch_one(&mut *tx)
            .await?;
            let live = others + 1;
            (mailboxes + live - 1) / live
        };
        if held > share {
            // The excess, from the end of the order in which they are listed, ends now.
            let released: HashSet<String> = sqlx::query_scalar(
                "UPDATE mailbox_leases SET expires_at = 0 WHERE node_id = $1 AND mailbox_id IN \
                 (SELECT mailbox_id FROM mailbox_leases WHERE node_id = $1 AND expires_at > $2 \
                 ORDER BY mailbox_id DESC LIMIT $3) RETURNING mailbox_id",
            )
            .bind(node)
            .bind(now)
            .bind(held - share)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            leases.retain(|(mailbox, _)| !released.contains(mailbox));
        } else if held < share {
            leases.extend(claim(&mut tx, self.backend, node, group, now, share - held).await?);
            leases.sort();
        }
        tx.commit().await?;
        let leases = leases
            .into_iter()
            .map(|(m, epoch)| {
                Ok(Lease {
                    mailbox: m
                        .parse()
                        .map_err(|e| StoreError::corrupt("lease mailbox", e))?,
                    epoch,
                })
            })
            .collect::<Result<_>>()?;
        let others_expire_in =
            soonest.map(|until| Duration::from_millis(u64::try_from(until - now).unwrap_or(0)));
        Ok(Balance {
            leases,
            others_expire_in,
        })
    }

    /// A clean stop: this node's leases end now, with its lease time (one row, however many
    /// mailboxes it held), so others take its mailboxes at once.
    pub async fn stop_node(&self, node: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = lease_now(&mut tx, self.backend, self.now_ms()).await?;
        sqlx::query("UPDATE nodes SET stopped_at = $1, leases_until = 0 WHERE id = $2")
            .bind(now)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let session = self.node_sessions.lock().await.remove(node);
        close_sessions(session).await;
        Ok(())
    }

    /// PostgreSQL: nodes silent past the limit whose session is gone died: their leases end
    /// now, not a lease time after their last heartbeat. Only nodes that hold a session lock
    /// (`nodes.session_lock`: one set to hold none always looks gone), those that beat since this
    /// node's own session began (`since`), and only while that session still holds its lock:
    /// it lived on since, so the server did not restart (or fail over) in between, which
    /// would have ended their sessions too. A statement of its own, so survivors finding the
    /// same node dead do not wait for each other's whole balancing round.
    async fn end_dead_nodes(&self, node: &str, ttl: Duration, since: i64) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH c AS (SELECT {POSTGRES_CLOCK_MS} AS now) \
             UPDATE nodes SET leases_until = c.now FROM c WHERE nodes.id <> $1 \
             AND nodes.stopped_at IS NULL AND nodes.leases_until > c.now \
             AND nodes.heartbeat_at <= c.now - $2 AND nodes.heartbeat_at >= $3 \
             AND nodes.session_lock = 1 AND NOT {} AND {}",
            session_lock("nodes.id", None),
            session_lock("$1", None),
        )))
        .bind(node)
        .bind(silence_limit_ms(ttl))
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the sessions of this process's nodes (their locks go with them).
    pub(crate) async fn end_node_sessions(&self) {
        let sessions = std::mem::take(&mut *self.node_sessions.lock().await);
        close_sessions(sessions.into_values()).await;
    }

    /// PostgreSQL: makes sure `node` holds its session lock ([`SESSION_LOCK`]) on a
    /// connection of its own (outside the pool), opening one and taking the lock when there is
    /// none or the last no longer holds it; returns when that session began, on the
    /// database's clock. Bounded by a tenth of the lease time, so a slow database cannot hold
    /// up the heartbeat. `None` when it failed: then this round finds no node dead (the others
    /// wait for its leases to run out should it die before the next round mends it).
    async fn hold_session(&self, node: &str, ttl: Duration) -> Option<i64> {
        let hold = async {
            let mut sessions = self.node_sessions.lock().await;
            if let Some((session, since)) = sessions.get_mut(node) {
                let held: std::result::Result<(bool,), _> = sqlx::query_as(sqlx::AssertSqlSafe(
                    format!("SELECT {}", session_lock("$1", Some("pg_backend_pid()"))),
                ))
                .bind(node)
                .fetch_one(&mut *session)
                .await;
                if matches!(held, Ok((true,))) {
                    return Ok(*since);
                }
                sessions.remove(node);
            }
            let mut session =
                <AnyConnection as sqlx::Connection>::connect_with(&self.pool.connect_options())
                    .await
                    .map_err(|e| e.to_string())?;
            let (locked, since): (bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT pg_try_advisory_lock({SESSION_LOCK}, hashtext($1)), {POSTGRES_CLOCK_MS}"
            )))
            .bind(node)
            .fetch_one(&mut session)
            .await
            .map_err(|e| e.to_string())?;
            if !locked {
                // An old session of this node's the server has not ended yet, or a node whose
                // id hashes alike. Tried again next round.
                return Err("another session holds it".to_owned());
            }
            sessions.insert(node.to_owned(), (session, since));
            Ok(since)
        };
        let failed = match tokio::time::timeout(ttl / 10, hold).await {
            Ok(Ok(since)) => return Some(since),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", ttl / 10),
        };
        tracing::warn!(node, error = %failed, "cannot hold this node's session lock; should it die, its mailboxes wait for its lease time");
        None
    }

    /// Nodes, newest first, with the mailboxes they hold now.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>> {
        let mut tx = self.pool.begin().await?;
        let now = lease_now(&mut tx, self.backend, self.now_ms()).await?;
        let rows: Vec<NodeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.name, n.node_group, n.started_at, n.heartbeat_at, n.draining, n.stopped_at, \
             CASE WHEN n.stopped_at IS NULL AND n.leases_until <= $1 THEN 1 ELSE 0 END AS lost, \
             (SELECT COUNT(*) FROM mailbox_leases l WHERE l.node_id = n.id AND {}) AS mailboxes \
             FROM nodes n ORDER BY n.started_at DESC",
            live_lease("l", "$1")
        )))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| NodeInfo {
                id: r.id,
                name: r.name,
                group: r.node_group,
                started_at: time_from_ms(r.started_at),
                heartbeat_at: time_from_ms(r.heartbeat_at),
                draining: r.draining != 0,
                stopped_at: r.stopped_at.map(time_from_ms),
                lost: r.lost != 0,
                mailboxes: r.mailboxes,
            })
            .collect())
    }

    /// Drains (or undrains) the running nodes called `name` (or with that id): a draining
    /// node releases its mailboxes to the others and takes no new ones. Returns how many.
    pub async fn set_draining(&self, name: &str, draining: bool) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE nodes SET draining = $1 WHERE (name = $2 OR id = $2) AND stopped_at IS NULL",
        )
        .bind(i64::from(draining))
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Claims up to `wanted` eligible mailboxes whose lease is free, released or run out with its
/// node's, raising each lease's epoch, in one statement. Two nodes claiming at once never get the same mailbox: on
/// PostgreSQL the candidates are locked (`SKIP LOCKED` passes over another claimer's), and
/// the upsert only takes a lease that is still expired.
async fn claim(
    tx: &mut AnyConnection,
    backend: Backend,
    node: &str,
    group: &str,
    now: i64,
    wanted: i64,
) -> Result<Vec<(String, i64)>> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE OF m SKIP LOCKED",
        Backend::Sqlite => "",
    };
    // `WHERE true` after the SELECT: SQLite would otherwise read `ON CONFLICT` as a join's.
    // The upsert looks again at the row it would replace (on PostgreSQL, its latest version,
    // which another claimer may have just written).
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH free AS (SELECT m.id FROM mailboxes m LEFT JOIN mailbox_leases l ON l.mailbox_id = m.id \
         WHERE {} AND (l.mailbox_id IS NULL OR NOT ({})) ORDER BY m.id LIMIT $3{lock}) \
         INSERT INTO mailbox_leases (mailbox_id, node_id, epoch, expires_at) \
         SELECT id, $4, 1, $5 FROM free WHERE true \
         ON CONFLICT (mailbox_id) DO UPDATE SET node_id = excluded.node_id, \
         epoch = mailbox_leases.epoch + 1, expires_at = excluded.expires_at \
         WHERE NOT ({}) RETURNING mailbox_id, epoch",
        eligible(1),
        live_lease("l", "$2"),
        live_lease("mailbox_leases", "$2"),
    )))
    .bind(group)
    .bind(now)
    .bind(wanted)
    .bind(node)
    .bind(HELD)
    .fetch_all(&mut *tx)
    .await?)
}

/// Inside a write transaction: refuses unless `fence` still holds the mailbox's lease, at
/// the lease clock (the one [`lease_now`] reads: the database's on PostgreSQL, read inside
/// this statement; `local_now`, the store's, on SQLite). On PostgreSQL the lease row is
/// share-locked until commit, so a claimer waits for this write to finish before it takes
/// over.
pub(crate) async fn check_fence(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: &str,
    fence: &Fence,
    local_now: i64,
) -> Result<()> {
    // Every batch a worker stores begins here: on PostgreSQL one round trip, not two. Its
    // text made once a process for each backend.
    static TEXTS: [std::sync::OnceLock<String>; 2] = [const { std::sync::OnceLock::new() }; 2];
    let (now_sql, lock, text) = match backend {
        Backend::Postgres => (POSTGRES_CLOCK_MS, " FOR SHARE", &TEXTS[0]),
        Backend::Sqlite => ("$4", "", &TEXTS[1]),
    };
    let sql = text.get_or_init(|| {
        format!(
            "SELECT epoch FROM mailbox_leases WHERE mailbox_id = $1 AND node_id = $2 \
             AND epoch = $3 AND {}{lock}",
            live_lease("mailbox_leases", now_sql)
        )
    });
    let query = Stmt::new(sql)
        .bind(mailbox)
        .bind(&fence.node)
        .bind(fence.epoch);
    let query = match backend {
        Backend::Postgres => query,
        Backend::Sqlite => query.bind(local_now),
    };
    let held: Option<(i64,)> = tx.fetch_optional(query).await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost {
            mailbox: mailbox.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mailbridge_testdb::TestDatabase;

    use super::*;
    use crate::tests::{before_migration, old_mailbox};

    /// A database made before migration 0027 (each lease row carried its own expiry): the
    /// leases live then are still live after it, held by the same node with the same epoch
    /// until the same moment, and a node that held none holds none.
    #[tokio::test]
    async fn leases_taken_before_the_node_lease_migration_hold_after_it() {
        for db in [TestDatabase::Sqlite, TestDatabase::Postgres] {
            let dir = tempfile::tempdir().unwrap();
            let store = before_migration(db, dir.path(), "0027").await;
            let mailbox = old_mailbox(&store).await;
            let now = store.now_ms();
            let until = now + 60_000;
            for (id, name) in [("n1", "holder"), ("n2", "idle")] {
                sqlx::query(
                    "INSERT INTO nodes (id, name, node_group, started_at, heartbeat_at) \
                     VALUES ($1, $2, 'default', $3, $3)",
                )
                .bind(id)
                .bind(name)
                .bind(now)
                .execute(&store.pool)
                .await
                .unwrap();
            }
            sqlx::query(
                "INSERT INTO mailbox_leases (mailbox_id, node_id, epoch, expires_at) VALUES ($1, 'n1', 4, $2)",
            )
            .bind(mailbox)
            .bind(until)
            .execute(&store.pool)
            .await
            .unwrap();
            store.migrate().await.unwrap();

            let fence = |node: &str, epoch| Fence {
                node: node.to_owned(),
                epoch,
            };
            let check = |f: Fence, at: i64| {
                let store = store.clone();
                async move {
                    let mut conn = store.pool.acquire().await.unwrap();
                    // On PostgreSQL the database's clock is read; on SQLite `at`.
                    check_fence(&mut *conn, store.backend, mailbox, &f, at).await
                }
            };
            check(fence("n1", 4), now).await.unwrap();
            assert!(matches!(
                check(fence("n1", 3), now).await,
                Err(StoreError::LeaseLost { .. })
            ));
            let nodes = store.list_nodes().await.unwrap();
            let held = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().mailboxes;
            assert_eq!((held("holder"), held("idle")), (1, 0), "{nodes:?}");
            let record = store.get_mailbox(mailbox.parse().unwrap()).await.unwrap();
            assert_eq!(
                record.lease,
                Some(("holder".to_owned(), crate::time_from_ms(until))),
                "the lease runs out when it did before"
            );
            if db == TestDatabase::Sqlite {
                // Past that moment (by SQLite's clock, the store's) it has run out.
                assert!(matches!(
                    check(fence("n1", 4), until + 1).await,
                    Err(StoreError::LeaseLost { .. })
                ));
            }
            store.close().await;
        }
    }
}
