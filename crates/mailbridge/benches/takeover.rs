//! Takeover benchmark: three `mailbridge serve` nodes on one PostgreSQL share 60 mailboxes
//! on a local Dovecot; one is killed with SIGKILL. Measures, per round, how long until the
//! survivors hold all of its mailboxes, and how long until mail delivered to those mailboxes
//! right after the kill is stored — against the lease time, which bounds both. Prints each
//! round and the medians. Run with `bench/takeover` (`BENCH_ROUNDS`, `BENCH_LEASE_TTL_MS`).
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

// The tests' cluster kit; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::Cluster;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One round: (time until the survivors hold every mailbox, time until mail sent to the dead
/// node's mailboxes at the kill is stored).
async fn round(ttl: Duration) -> (Duration, Duration) {
    let c = Cluster::start(60, 0).await;
    c.deliver(1, &c.mailboxes);
    let mut nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| c.node_with_lease(n, "cloud", ttl))
        .collect();
    c.wait_for_shares(
        &[("node-a", 20), ("node-b", 20), ("node-c", 20)],
        Duration::from_secs(60),
    )
    .await;
    c.wait_for_emails(&c.mailboxes, 1).await;
    let victims = c.held_by("node-b").await;
    let mut b = nodes.remove(1);
    b.child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    c.deliver(2, &victims);
    let takeover = c
        .wait_for_shares(&[("node-a", 30), ("node-c", 30)], ttl * 4)
        .await;
    c.wait_for_emails(&victims, 2).await;
    let stored = killed.elapsed();
    b.child.wait().unwrap();
    (takeover, stored)
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let ttl = Duration::from_millis(
        std::env::var("BENCH_LEASE_TTL_MS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5_000),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "60 mailboxes, 3 nodes on PostgreSQL, one killed; lease time {ttl:?}; {rounds} rounds"
    );
    let (mut takeovers, mut stores) = (Vec::new(), Vec::new());
    for n in 1..=rounds {
        let (takeover, stored) = runtime.block_on(round(ttl));
        println!(
            "round {n}: its 20 mailboxes held by the survivors after {:.2} s; mail sent to them at the kill stored after {:.2} s",
            takeover.as_secs_f64(),
            stored.as_secs_f64()
        );
        takeovers.push(takeover);
        stores.push(stored);
    }
    let (takeover, stored) = (median(takeovers), median(stores));
    println!("\nmedians over {rounds} rounds:");
    println!(
        "  takeover of a dead node's 20 mailboxes  {:>6.2} s  = {:.2} x the lease time",
        takeover.as_secs_f64(),
        takeover.as_secs_f64() / ttl.as_secs_f64()
    );
    println!(
        "  its mail stored after                   {:>6.2} s  = {:.2} x the lease time",
        stored.as_secs_f64(),
        stored.as_secs_f64() / ttl.as_secs_f64()
    );
}
