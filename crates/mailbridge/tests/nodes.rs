//! Several `mailbridge serve` processes on one real PostgreSQL, against a real Dovecot: they
//! share the mailboxes evenly; a node killed with SIGKILL has its mailboxes taken over well
//! within the lease time (its session died with it), with no message lost or stored twice
//! and no email sent twice; a paused node keeps its mailboxes until its lease runs out and
//! writes nothing after it resumes; an `email_router` mailbox is only ever worked by its
//! group; a node set to hold no session lock (behind a transaction pooler) takes none; a node
//! logging everything (on SQLite) logs no password and no mail.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

#[allow(dead_code)] // the fault tests use the rest
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cluster::{Cluster, LEASE_TTL, node_id, signal};
use mailbridge_core::{Clock, EmailAddress, OutgoingDraft, SystemClock};
use mailbridge_sync::outgoing::compose;

#[tokio::test]
async fn three_nodes_share_sixty_mailboxes_and_survive_one_killed() {
    let c = Cluster::start(60, 0).await;
    c.deliver(1, &c.mailboxes);
    let a = c.node("node-a", "cloud");
    let mut b = c.node("node-b", "cloud");
    let cn = c.node("node-c", "cloud");
    c.wait_for_shares(
        &[("node-a", 20), ("node-b", 20), ("node-c", 20)],
        Duration::from_secs(30),
    )
    .await;
    c.wait_for_emails(&c.mailboxes, 1).await;

    // Mail to send from every mailbox, queued while all three run; then node-b dies.
    let mut queued = HashSet::new();
    for (id, user) in &c.mailboxes {
        let draft: OutgoingDraft = serde_json::from_value(serde_json::json!({
            "mailbox_id": id, "to": [{"address": "bob@example.com"}],
            "subject": format!("from {user}"), "text_body": "hi", "tracking_token": false,
        }))
        .unwrap();
        let (_, mail) = draft.resolve().unwrap();
        let email = compose(
            &EmailAddress::parse(user, "from").unwrap(),
            &mail,
            SystemClock.now(),
        )
        .unwrap();
        let (record, _) = c.store.queue_outgoing(*id, &email, None).await.unwrap();
        queued.insert(record.id);
    }
    let before = c.holdings().await;
    let dead = node_id(&before, "node-b");
    let b_mailboxes = c.held_by("node-b").await;
    assert_eq!(b_mailboxes.len(), 20);
    b.child.kill().unwrap(); // SIGKILL
    b.child.wait().unwrap();
    let took = c
        .wait_for_shares(
            &[("node-a", 30), ("node-c", 30)],
            LEASE_TTL * 3 + Duration::from_secs(5),
        )
        .await;
    eprintln!(
        "takeover of node-b's 20 mailboxes: {:.1} s (lease {:?})",
        took.as_secs_f64(),
        LEASE_TTL
    );
    // Its connections died with it, so the survivors knew it dead once it had been silent a
    // third of the lease time; they did not wait for its leases to run out (at least
    // LEASE_TTL - 200 ms after the kill: it heartbeat every 200 ms).
    assert!(
        took < LEASE_TTL - Duration::from_millis(500),
        "took {took:?} for a {LEASE_TTL:?} lease"
    );
    let listed = c.cli(&["nodes", "list"]);
    for line in [
        "node-a\tcloud\trunning\t30",
        "node-b\tcloud\tlost\t0",
        "node-c\tcloud\trunning\t30",
    ] {
        assert!(listed.contains(line), "{line:?} in\n{listed}");
    }

    // New mail everywhere, the dead node's mailboxes included: each stored exactly once.
    c.deliver(2, &c.mailboxes);
    c.wait_for_emails(&c.mailboxes, 2).await;
    for (id, user) in &b_mailboxes {
        let incoming = c.incoming(*id).await;
        assert_eq!(incoming.len(), 2, "{user}");
        let round2 = incoming
            .iter()
            .find(|e| e.subject.as_deref() == Some("round 2"))
            .unwrap();
        assert_ne!(round2.stored_by.as_deref(), Some(dead.as_str()), "{user}");
    }

    // Every queued email ends sent or failed (one the dead node was sending), none twice.
    let started = Instant::now();
    let (sent, failed) = loop {
        let mut sent = 0;
        let mut failed = 0;
        let mut open = 0;
        for (id, _) in &c.mailboxes {
            for e in c.emails(*id).await {
                match (e.direction.as_str(), e.status.as_deref()) {
                    ("outgoing", Some("sent")) => sent += 1,
                    ("outgoing", Some("failed")) => failed += 1,
                    ("outgoing", _) => open += 1,
                    _ => {}
                }
            }
        }
        if open == 0 {
            break (sent, failed);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{open} emails still unsent\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sent + failed, queued.len());
    let relayed = c.dovecot.relayed().unwrap();
    let mut ids = HashSet::new();
    for m in &relayed {
        let text = String::from_utf8_lossy(m);
        let mid = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap()
            .to_owned();
        assert!(ids.insert(mid.clone()), "{mid} was sent twice");
    }
    assert!(
        relayed.len() >= sent,
        "{} relayed, {sent} sent",
        relayed.len()
    );
    assert!(
        relayed.len() <= sent + failed,
        "more relayed than claimed sends"
    );
    eprintln!("outgoing: {sent} sent, {failed} failed as interrupted by the kill");
    drop((a, cn));
}

#[tokio::test]
async fn a_paused_node_writes_nothing_after_its_lease_and_router_mailboxes_stay_in_their_group() {
    let c = Cluster::start(10, 2).await;
    let cloud: Vec<_> = c.mailboxes[..8].to_vec();
    let routed: Vec<_> = c.mailboxes[8..].to_vec();
    c.deliver(1, &c.mailboxes);
    let a = c.node("node-a", "cloud");
    let b = c.node("node-b", "cloud");
    let office = c.node("office-1", "office");
    c.wait_for_shares(
        &[("node-a", 4), ("node-b", 4), ("office-1", 2)],
        Duration::from_secs(30),
    )
    .await;
    let holdings = c.holdings().await;
    let b_id = node_id(&holdings, "node-b");
    let office_id = node_id(&holdings, "office-1");
    c.wait_for_emails(&c.mailboxes, 1).await;

    // node-b stops in its tracks (as a VM pause or a long GC would) past its lease.
    signal(&b, "-STOP");
    let paused_at = SystemClock.now();
    let took = c
        .wait_for_shares(
            &[("node-a", 8), ("office-1", 2)],
            LEASE_TTL * 3 + Duration::from_secs(5),
        )
        .await;
    // Paused, its session stays open: it is late, not dead, and keeps its mailboxes until its
    // leases run out, a lease time after its last heartbeat (a round, every 200 ms, before the
    // pause); found dead, they would have moved a third of the lease time after it.
    assert!(
        took >= LEASE_TTL * 2 / 3,
        "a paused node lost its mailboxes after {took:?}, before its {LEASE_TTL:?} lease"
    );
    // Mail arrives while it is paused; its IDLE sessions will report it when it resumes.
    c.deliver(2, &c.mailboxes);
    c.wait_for_emails(&c.mailboxes, 2).await;
    // Drained while paused, it may not take any mailbox back: whatever it writes after
    // resuming would be a write on a lease it lost.
    c.cli(&["nodes", "drain", "node-b"]);
    let unknown = c.cli_output(&["nodes", "drain", "node-z"]);
    assert!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr)
                .contains("no running node is named 'node-z'"),
        "{unknown:?}"
    );
    signal(&b, "-CONT");
    tokio::time::sleep(LEASE_TTL).await;
    c.deliver(3, &c.mailboxes);
    c.wait_for_emails(&c.mailboxes, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, user) in &c.mailboxes {
        let emails = c.incoming(*id).await;
        assert_eq!(emails.len(), 3, "{user}: nothing twice");
        for e in &emails {
            if e.stored_by.as_deref() == Some(b_id.as_str()) {
                assert!(
                    e.created_at < paused_at,
                    "{user}: node-b wrote after it was paused past its lease"
                );
            }
        }
    }
    // The routed mailboxes were only ever worked by their group; the others never by it.
    for (id, user) in &routed {
        for e in c.emails(*id).await {
            assert_eq!(e.stored_by.as_deref(), Some(office_id.as_str()), "{user}");
        }
    }
    for (id, user) in &cloud {
        for e in c.emails(*id).await {
            assert_ne!(e.stored_by.as_deref(), Some(office_id.as_str()), "{user}");
        }
    }
    let b_log = std::fs::read_to_string(c.log_path("node-b")).unwrap_or_default();
    eprintln!(
        "node-b after resuming: {} worker(s) stopped for a lost lease, {} write(s) refused by the fence",
        b_log.matches("lease released or lost").count(),
        b_log.matches("lease lost; another node works").count()
    );
    // Undrained, it gets its share back.
    c.cli(&["nodes", "undrain", "node-b"]);
    c.wait_for_shares(
        &[("node-a", 4), ("node-b", 4), ("office-1", 2)],
        LEASE_TTL * 3 + Duration::from_secs(5),
    )
    .await;
    drop((a, b, office));
}

#[tokio::test]
async fn a_node_killed_mid_delivery_leaves_the_webhook_to_another() {
    use mailbridge_testkit::{Answer, WebhookReceiver};
    let c = Cluster::start(2, 0).await;
    let receiver = WebhookReceiver::start().unwrap();
    // The first delivery is never answered: the node sending it is killed while it waits.
    let url = receiver
        .receiver("crm", &[], Answer::HangFirst)
        .await
        .unwrap();
    let spec =
        serde_json::from_value::<mailbridge_core::WebhookDraft>(serde_json::json!({"url": url}))
            .unwrap()
            .resolve(None)
            .unwrap();
    let cli = mailbridge_store::Actor::cli();
    let (hook, secret) = c.store.create_webhook(&cli, &spec).await.unwrap();
    use secrecy::ExposeSecret;
    receiver
        .receiver("crm", &[secret.expose_secret()], Answer::HangFirst)
        .await
        .unwrap();
    let a = c.node("node-a", "cloud");
    let b = c.node("node-b", "cloud");
    c.wait_for_shares(&[("node-a", 1), ("node-b", 1)], Duration::from_secs(30))
        .await;
    let delivery = c.store.send_test_webhook(&cli, &hook.id).await.unwrap();
    let started = Instant::now();
    let sender = loop {
        let d = c
            .store
            .webhook_delivery(&hook.id, &delivery.id)
            .await
            .unwrap();
        let got = receiver.deliveries("crm").await.unwrap();
        if let (Some(node), 1) = (d.sending_node, got.len()) {
            break node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never sent\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (dead, survivor) = if sender == "node-a" { (a, b) } else { (b, a) };
    signal(&dead, "-KILL");
    // The claim runs out (a round of eight 1 s timeouts, plus 2 s) and the survivor sends it
    // again.
    let got = loop {
        let got = receiver.deliveries("crm").await.unwrap();
        if got.len() >= 2 {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not sent again\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = loop {
        let d = c
            .store
            .webhook_delivery(&hook.id, &delivery.id)
            .await
            .unwrap();
        if d.status == "delivered" {
            break d;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got[0]["id"], got[1]["id"], "one webhook-id on both tries");
    assert!(got.iter().all(|g| g["verified"] == true), "{got:#?}");
    assert_eq!(
        done.attempt_count, 2,
        "the killed node's try counts: {done:?}"
    );
    let recorded: Vec<_> = done
        .attempts
        .iter()
        .filter_map(|a| a.node.clone())
        .collect();
    assert_eq!(
        recorded,
        std::slice::from_ref(&survivor.name),
        "only the survivor lived to record its try"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.deliveries("crm").await.unwrap().len(),
        2,
        "nothing more after delivery"
    );
}

/// Advisory locks of the node session kind (`mailbridge_store::nodes`) in the cluster's
/// database.
async fn session_locks(c: &Cluster) -> i64 {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(c.url())
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1835167332 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    n
}

/// Behind a pooler in transaction mode a session lock tells the other nodes nothing:
/// `MAILBRIDGE_NODE_SESSION_LOCK=false` makes a node take none (then a dead node is left to
/// its lease: the store's tests), while a node at the default takes its own.
#[tokio::test]
async fn a_node_set_to_hold_no_session_lock_takes_none() {
    let c = Cluster::start(2, 0).await;
    let (_pooled, _) = c.serve("pooled", &[("MAILBRIDGE_NODE_SESSION_LOCK", "false")]);
    c.wait_for_shares(&[("pooled", 2)], Duration::from_secs(30))
        .await;
    assert_eq!(session_locks(&c).await, 0);
    let (_direct, _) = c.serve("direct", &[]);
    c.wait_for_shares(&[("pooled", 1), ("direct", 1)], Duration::from_secs(30))
        .await;
    assert_eq!(session_locks(&c).await, 1);
}

/// Logs at their most detailed (`RUST_LOG=trace`, which reaches async-imap's own `log`
/// records) still hold no mail password and no mail: what a node sends and reads is logged by
/// its size, not its text.
#[tokio::test]
async fn a_node_logging_everything_logs_no_password_and_no_mail() {
    let c = Cluster::start_on(None, 2, 0).await;
    c.deliver(1, &c.mailboxes);
    let (node, _) = c.serve("traced", &[("RUST_LOG", "trace")]);
    c.wait_for_emails(&c.mailboxes, 1).await;
    drop(node);
    let logs = std::fs::read_to_string(c.log_path("traced")).unwrap();
    assert!(
        logs.contains("async_imap"),
        "async-imap's records are not in the log: the test sees nothing"
    );
    assert!(
        !logs.contains(cluster::PASSWORD),
        "a mail password reached the log"
    );
    assert!(!logs.contains("Subject: round 1"), "mail reached the log");
}
