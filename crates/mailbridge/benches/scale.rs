//! One node, many mailboxes, as an operator runs it: a `mailbridge serve` process at its
//! default settings (SQLite in its data folder, the default login pace and scan interval)
//! with `BENCH_MAILBOXES` (default 10,000) mailboxes on a local Dovecot, each holding an IMAP
//! session in IDLE. Measures the whole process from outside (`/proc`): resident memory per
//! idle mailbox (against the same process before any mailbox was enabled), open files, CPU
//! while everything idles (over `BENCH_IDLE_SECONDS`, default 60, one full round of the
//! sessions' refreshes), the time from enabling them all to all idle, and from a restart to
//! all idle again. The mail server's own processes are measured over the same minute, as the
//! peer: what the same sessions cost at the other end. `BENCH_DATABASE=postgres` runs it on
//! PostgreSQL (whose page cache is not in the process). Run with `bench/idle-memory`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

#[allow(dead_code)]
#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{Cluster, Node};
use mailbridge_testkit::process::{cpu_ticks, process_tree, tree_cpu};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn open_file_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?")
        .to_owned()
}

/// The node's `mailbridge_connections_open`.
async fn open_sessions(http: &reqwest::Client, base: &str) -> usize {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("mailbridge_connections_open "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the node holds `n` sessions; the time taken from `since`.
async fn all_idle(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    since: Instant,
    c: &Cluster,
) -> Duration {
    let patience = Duration::from_secs(120 + n as u64 / 20);
    loop {
        let open = open_sessions(http, base).await;
        if open >= n {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < patience,
            "only {open} of {n} sessions after {patience:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn set_enabled(url: &str, enabled: bool) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE mailboxes SET enabled = {}",
        i32::from(enabled)
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

fn stop(mut node: Node) {
    cluster::signal(&node, "-TERM");
    node.child.wait().unwrap();
}

fn main() {
    let n = env_or("BENCH_MAILBOXES", 10_000) as usize;
    let idle_window = Duration::from_secs(env_or("BENCH_IDLE_SECONDS", 60));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let setup = Instant::now();
        let postgres = std::env::var("BENCH_DATABASE").is_ok_and(|d| d == "postgres");
        let c = if postgres { Cluster::start(n, 0).await } else { Cluster::start_on(None, n, 0).await };
        println!(
            "{n} mailboxes on a local Dovecot, one `mailbridge serve` at its defaults on {} (set up in {:.0} s)",
            if postgres { "PostgreSQL" } else { "SQLite" },
            setup.elapsed().as_secs_f64()
        );
        set_enabled(c.url(), false).await;
        let (node, base) = c.serve_at_defaults("node-a");
        let pid = node.child.id();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rss_before, fds_before) = (status_kib(pid, "VmRSS:"), open_files(pid));

        set_enabled(c.url(), true).await;
        let enabled = Instant::now();
        let first = all_idle(&http, &base, n, enabled, &c).await;
        // The last sessions finish their first sync and start IDLE.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, fds) = (status_kib(pid, "VmRSS:"), open_files(pid));
        // Dovecot's whole tree, the processes that end during the window too (their time is
        // in the master's reaped time).
        let (ours, theirs) = (cpu_ticks(pid), tree_cpu(c.dovecot.pid()));
        tokio::time::sleep(idle_window).await;
        let window_ticks = idle_window.as_secs_f64() * 100.0;
        let our_cpu = (cpu_ticks(pid) - ours) as f64 / window_ticks * 100.0;
        let dovecot = process_tree(c.dovecot.pid());
        let their_cpu = tree_cpu(c.dovecot.pid()).saturating_sub(theirs).as_secs_f64() / idle_window.as_secs_f64() * 100.0;
        let still_open = open_sessions(&http, &base).await;
        let limit = open_file_limit(pid);
        stop(node);

        let restarted = Instant::now();
        let (node, base) = c.serve_at_defaults("node-a");
        let restart = all_idle(&http, &base, n, restarted, &c).await;
        stop(node);

        let per = rss.saturating_sub(rss_before) as f64 / n as f64;
        println!("  enabled to all {n} idle          {:>8.1} s  ({:.0} logins/s)", first.as_secs_f64(), n as f64 / first.as_secs_f64());
        println!("  restart to all {n} idle          {:>8.1} s  ({:.0} logins/s)", restart.as_secs_f64(), n as f64 / restart.as_secs_f64());
        println!("  resident memory                {rss_before:>8} KiB before, {rss} KiB idle");
        println!("  per idle mailbox               {per:>8.1} KiB  (target <= 20 KiB)");
        println!("  open files                     {fds_before:>8} before, {fds} idle (limit {limit})");
        println!("  CPU while idle, {:>3} s           {our_cpu:>8.2} % of one core  (target <= 5 %); {still_open} sessions still open", idle_window.as_secs());
        println!("  peer: Dovecot, same sessions   {their_cpu:>8.2} % of one core  ({} processes); ratio {:.2}", dovecot.len(), our_cpu / their_cpu.max(0.01));
    });
}
