//! Takeover benchmark: three `mailbridge serve` nodes at their default settings (lease time,
//! scan interval, login pace) on one PostgreSQL share `BENCH_MAILBOXES` mailboxes (default
//! 60) on a local Dovecot; one is killed with SIGKILL. Measures, per round, how long until
//! the survivors hold all of its mailboxes, and how long until mail delivered to each of them
//! right after the kill is stored (median and last over its mailboxes) — against the lease
//! time (the survivors find the node dead a third of it after its last heartbeat, its
//! database session gone with the process) — and, before the kill, the lease and node rows the
//! scheduler writes a second at rest (by PostgreSQL's own statistics). Prints each round and
//! the medians. Run with `bench/takeover`
//! (`BENCH_ROUNDS`, default 3; `BENCH_MAILBOXES`; `BENCH_LEASE_TTL_MS` to change the lease).
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

// The tests' cluster kit; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use mailbridge_core::{Clock, SystemClock};

use cluster::Cluster;

/// The service's default lease time (`lease_ttl_ms`).
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env_or(name: &str, default: u64) -> Option<u64> {
    match std::env::var(name) {
        Ok(v) => Some(v.parse().unwrap()),
        Err(_) if default > 0 => Some(default),
        Err(_) => None,
    }
}

/// Now, in the Unix milliseconds the database's times are written in.
fn now_ms() -> i64 {
    SystemClock.now().timestamp_millis()
}

/// When the first email with `subject` was stored in each mailbox that has one.
async fn stored(pool: &sqlx::AnyPool, subject: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT mailbox_id, MIN(created_at) FROM emails WHERE subject = $1 AND direction = 'incoming' GROUP BY mailbox_id",
    )
    .bind(subject)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until `n` mailboxes have an email with `subject`; when each was stored.
async fn wait_stored(
    pool: &sqlx::AnyPool,
    subject: &str,
    n: usize,
    patience: Duration,
    c: &Cluster,
) -> Vec<(String, i64)> {
    let started = Instant::now();
    loop {
        let have = stored(pool, subject).await;
        if have.len() >= n {
            return have;
        }
        assert!(
            started.elapsed() < patience,
            "{} of {n} mailboxes have {subject:?} after {patience:?}\n{}",
            have.len(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows PostgreSQL counts as inserted, updated or deleted in `table` so far (its statistics,
/// which a backend reports at most [`STATS_LAG`] late).
async fn rows_written(pool: &sqlx::AnyPool, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)::BIGINT FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap();
    n
}

/// How long the cluster is watched at rest for the scheduler's own writes.
const AT_REST: Duration = Duration::from_secs(20);

/// How late an idle PostgreSQL backend may report its counts (`PGSTAT_IDLE_INTERVAL`, 10 s,
/// and a margin): the writes that settled the shares must be counted before the window opens.
const STATS_LAG: Duration = Duration::from_secs(12);

struct Round {
    /// How long the local delivery of the mail sent at the kill took.
    delivered: Duration,
    /// Lease and node rows written per second while the three nodes held every mailbox and
    /// had nothing to sync.
    lease_rows_per_s: f64,
    node_rows_per_s: f64,
    takeover: Duration,
    median_stored: Duration,
    last_stored: Duration,
}

async fn round(n: usize, lease: Option<Duration>) -> Round {
    let ttl = lease.unwrap_or(DEFAULT_LEASE_TTL);
    let c = Cluster::start(n, 0).await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(c.url()).await.unwrap();
    c.deliver(1, &c.mailboxes);
    let mut nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| c.node_at_defaults(name, lease))
        .collect();
    let third = (n / 3) as i64;
    // Each node logs in to its share at the default pace; allow for it.
    let patience = ttl * 4 + Duration::from_secs(60 + n as u64 / 30);
    c.wait_for_shares(
        &[("node-a", third), ("node-b", third), ("node-c", third)],
        patience,
    )
    .await;
    wait_stored(&pool, "round 1", n, patience, &c).await;
    tokio::time::sleep(STATS_LAG).await;
    let before = (
        rows_written(&pool, "mailbox_leases").await,
        rows_written(&pool, "nodes").await,
    );
    tokio::time::sleep(AT_REST).await;
    let per_s = |rows: i64| rows as f64 / AT_REST.as_secs_f64();
    let lease_rows_per_s = per_s(rows_written(&pool, "mailbox_leases").await - before.0);
    let node_rows_per_s = per_s(rows_written(&pool, "nodes").await - before.1);
    let victim_users = c.held_by("node-b").await;
    assert_eq!(victim_users.len(), n / 3);
    let mut b = nodes.remove(1);
    b.child.kill().unwrap(); // SIGKILL
    let (killed, killed_ms) = (Instant::now(), now_ms());
    let half = (n / 2) as i64;
    // The takeover is watched while the mail is delivered (seconds for thousands of
    // mailboxes, and slower when the survivors log in at the same time), each timed from the
    // kill.
    let (delivered, takeover) = std::thread::scope(|s| {
        let delivery = s.spawn(|| {
            c.deliver(2, &victim_users);
            killed.elapsed()
        });
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(c.wait_for_shares(&[("node-a", half), ("node-c", half)], patience))
        });
        let takeover = killed.elapsed();
        (delivery.join().unwrap(), takeover)
    });
    let times = wait_stored(&pool, "round 2", victim_users.len(), patience, &c).await;
    let delays: Vec<Duration> = times
        .iter()
        .map(|(_, at)| Duration::from_millis((at - killed_ms).max(0) as u64))
        .collect();
    let last_stored = delays.iter().max().copied().unwrap_or_default();
    b.child.wait().unwrap();
    pool.close().await;
    Round {
        delivered,
        lease_rows_per_s,
        node_rows_per_s,
        takeover,
        median_stored: median(delays),
        last_stored,
    }
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3).unwrap() as usize;
    let n = env_or("BENCH_MAILBOXES", 60).unwrap() as usize;
    let lease = env_or("BENCH_LEASE_TTL_MS", 0).map(Duration::from_millis);
    let ttl = lease.unwrap_or(DEFAULT_LEASE_TTL);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "{n} mailboxes, 3 nodes on PostgreSQL at the default settings, one killed; lease time {ttl:?}; {rounds} rounds"
    );
    let mut all = Vec::new();
    for r in 1..=rounds {
        let round = runtime.block_on(round(n, lease));
        println!(
            "round {r}: its {} mailboxes held by the survivors after {:.2} s; mail sent to them at the kill (delivered in {:.2} s) stored after {:.2} s (median over them), {:.2} s (last)",
            n / 3,
            round.takeover.as_secs_f64(),
            round.delivered.as_secs_f64(),
            round.median_stored.as_secs_f64(),
            round.last_stored.as_secs_f64()
        );
        println!(
            "  at rest before the kill, {AT_REST:?}: {:.1} lease rows and {:.1} node rows written a second",
            round.lease_rows_per_s, round.node_rows_per_s
        );
        all.push(round);
    }
    let takeover = median(all.iter().map(|r| r.takeover).collect());
    let stored = median(all.iter().map(|r| r.median_stored).collect());
    let last = median(all.iter().map(|r| r.last_stored).collect());
    let over = |d: Duration| d.as_secs_f64() - ttl.as_secs_f64();
    println!("\nmedians over {rounds} rounds:");
    println!(
        "  takeover of a dead node's {} mailboxes   {:>6.2} s  = lease {:+.2} s",
        n / 3,
        takeover.as_secs_f64(),
        over(takeover)
    );
    println!(
        "  its mail stored, median mailbox          {:>6.2} s  = lease {:+.2} s  (target <= lease + 2 s)",
        stored.as_secs_f64(),
        over(stored)
    );
    println!(
        "  its mail stored, last mailbox            {:>6.2} s  = lease {:+.2} s",
        last.as_secs_f64(),
        over(last)
    );
    let mut at_rest: Vec<f64> = all.iter().map(|r| r.lease_rows_per_s).collect();
    at_rest.sort_by(f64::total_cmp);
    println!(
        "  lease rows written a second at rest      {:>6.1}     ({n} leases held)",
        at_rest[at_rest.len() / 2]
    );
}
