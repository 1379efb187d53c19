//! The store on both backends — a real SQLite file and a real PostgreSQL database: secrets
//! at rest, key rotation, the profile mailbox limit under a race, mailbox leases (fair
//! shares, concurrent claims, fencing of a holder that lost its lease, draining). Each test runs once per
//! backend (`sqlite::…` and `postgres::…`).
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;

use mailbridge_core::{
    Clock, EmailAddress, MailboxDraft, ProfileDraft, Role, SecretChange, SystemClock,
};
use mailbridge_store::{Actor, Keyring, Store, StoreError};
use mailbridge_testdb::TestDatabase;
use secrecy::ExposeSecret;

const SECRET: &str = "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et-7f3a9";

/// One test's database, reopened as often as the test likes.
struct Db {
    kind: TestDatabase,
    dir: tempfile::TempDir,
    url: String,
}

impl Db {
    async fn new(kind: TestDatabase) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = kind.url_for(dir.path()).await.unwrap();
        Self { kind, dir, url }
    }

    async fn open(&self, keyring: Keyring) -> Store {
        let store = Store::connect(&self.url, keyring, Arc::new(SystemClock))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// What the database keeps, as text to search.
    async fn contents(&self) -> String {
        let bytes = self.kind.contents(self.dir.path()).await.unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs an `async fn(TestDatabase)` test on each backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::TestDatabase::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::TestDatabase::Postgres).await
            })*
        }
    };
}

on_both_backends!(
    client_secret_is_encrypted_at_rest_and_survives_rotation,
    a_gmail_profile_takes_exactly_100_mailboxes_even_when_raced,
    the_outgoing_queue_takes_mailboxes_in_turns,
    two_admins_demoting_each_other_at_once_leave_one,
    a_refused_batch_leaves_no_event_and_a_stored_one_exactly_its_own,
    a_mailbox_queues_within_its_limits_and_a_reused_key_must_match,
    a_webhook_failing_for_five_days_is_disabled_and_a_success_ends_the_run,
    a_node_back_from_a_pause_keeps_what_nobody_took,
    a_batch_larger_than_one_insert_is_stored_whole_with_its_attachments_and_events,
    replies_find_their_conversation_whatever_the_count_of_ids_a_batch_looks_up,
    a_closed_store_refuses_a_batch_and_writes_none_of_it,
    a_deleted_mailbox_keeps_no_email_and_takes_none_after,
);

// Several nodes share one database only on PostgreSQL (SQLite is embedded in one process:
// there a new node takes over from the last one, tested below).
macro_rules! on_postgres {
    ($($name:ident$(($kind:expr))?),* $(,)?) => {
        mod postgres_nodes {
            $(#[tokio::test]
            async fn $name() {
                super::$name($($kind)?).await
            })*
        }
    };
}

on_postgres!(
    a_lost_lease_fences_off_the_old_holders_writes(super::TestDatabase::Postgres),
    nodes_claiming_at_once_never_share_a_mailbox(super::TestDatabase::Postgres),
    a_reader_never_skips_an_event_that_commits_after_it_read_a_later_one,
    a_mailboxs_batches_keep_to_one_connection_but_never_queue_behind_a_stuck_one,
    a_batch_whose_own_connection_cannot_open_takes_a_pooled_one,
    a_dead_node_is_told_from_a_late_one_by_its_session,
    a_node_gone_before_this_ones_session_began_is_left_to_its_lease,
    a_node_refused_its_session_lock_finds_no_one_dead,
    without_session_locks_a_dead_node_is_left_to_its_lease,
    leases_run_on_the_databases_clock_not_the_nodes,
    a_heartbeat_renews_every_lease_without_rewriting_them,
);

#[tokio::test]
async fn on_sqlite_a_restarted_process_takes_over_at_once() {
    let db = Db::new(TestDatabase::Sqlite).await;
    let store = db.open(Keyring::generate()).await;
    enabled_mailboxes(&store, 3).await;
    let ttl = std::time::Duration::from_secs(600);
    let crashed = store.register_node("box", "cloud", ttl).await.unwrap();
    let old = store
        .balance_leases(&crashed, "cloud", ttl)
        .await
        .unwrap()
        .leases;
    assert_eq!(old.len(), 3);
    // The process dies without releasing anything; the next one starts.
    let next = store.register_node("box", "cloud", ttl).await.unwrap();
    let new = store
        .balance_leases(&next, "cloud", ttl)
        .await
        .unwrap()
        .leases;
    assert_eq!(
        new.len(),
        3,
        "the dead process's ten-minute leases do not hold the mailboxes"
    );
    // A second `serve` left running on the same file is fenced off, not merely outnumbered.
    let stale = mailbridge_store::Fence {
        node: crashed.clone(),
        epoch: old[0].epoch,
    };
    let batch = mailbridge_store::SyncBatch {
        fence: Some(stale),
        ..Default::default()
    };
    assert!(matches!(
        store.save_sync_batch(old[0].mailbox, batch).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let renewed = new.iter().find(|l| l.mailbox == old[0].mailbox).unwrap();
    assert!(renewed.epoch > old[0].epoch, "a new holder, a new epoch");
    assert!(matches!(
        store.balance_leases(&crashed, "cloud", ttl).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn gmail_draft(name: &str) -> ProfileDraft {
    serde_json::from_value(serde_json::json!({
        "name": name, "preset": "gmail",
        "oauth": {"client_id": "123.apps.googleusercontent.com", "client_secret": SECRET}
    }))
    .unwrap()
}

async fn client_secret_is_encrypted_at_rest_and_survives_rotation(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let keyfile = db.dir.path().join("master.key");
    let store = db.open(Keyring::load_or_create(&keyfile).unwrap()).await;
    let (spec, secret) = gmail_draft("Sales").resolve(None).unwrap();
    let profile = store
        .create_profile(&Actor::cli(), &spec, secret)
        .await
        .unwrap();
    assert!(profile.has_client_secret);
    assert_eq!(
        store
            .profile_client_secret(profile.id)
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        SECRET
    );
    let stored = db.contents().await;
    assert!(
        stored.contains("123.apps.googleusercontent.com"),
        "the test reads the real data"
    );
    assert!(
        !stored.contains(SECRET),
        "the client secret is in the database in clear"
    );
    store.close().await;

    // Rotate: the new key in front re-encrypts everything; then the old key can go.
    let old = Keyring::load_or_create(&keyfile).unwrap();
    let old_id = old.active_id().to_owned();
    let rotated = old.rotated_to(Keyring::generate());
    let new_id = rotated.active_id().to_owned();
    let store = db.open(rotated).await;
    assert_eq!(store.reencrypt_secrets().await.unwrap(), 1);
    store.close().await;

    let only_old = Keyring::load_or_create(&keyfile).unwrap();
    let store = db.open(only_old).await;
    match store.profile_client_secret(profile.id).await {
        Err(StoreError::Crypto(e)) => assert!(e.to_string().contains(&new_id), "{e}"),
        other => panic!("the old key alone must not read a rotated secret: {other:?}"),
    }
    store.close().await;
    assert_ne!(old_id, new_id);
}

/// A user, owner@example.com, and a Gmail profile named `name`.
async fn owner_and_gmail_profile(
    store: &Store,
    name: &str,
) -> (
    mailbridge_store::UserRecord,
    mailbridge_store::ProfileRecord,
) {
    let actor = Actor::cli();
    let (owner, _) = store
        .create_user(
            &actor,
            &EmailAddress::parse("owner@example.com", "e").unwrap(),
            Role::User,
        )
        .await
        .unwrap();
    let (spec, secret) = gmail_draft(name).resolve(None).unwrap();
    let profile = store.create_profile(&actor, &spec, secret).await.unwrap();
    (owner, profile)
}

async fn a_gmail_profile_takes_exactly_100_mailboxes_even_when_raced(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let (owner, profile) = owner_and_gmail_profile(&store, "Gmail A").await;

    // 110 creations from 10 tasks at once: exactly 100 land, the rest are refused.
    let mut tasks = Vec::new();
    for t in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..11 {
                let draft: MailboxDraft = serde_json::from_value(serde_json::json!({
                    "email": format!("u{t}-{i}@example.com"),
                    "profile_id": profile.id,
                }))
                .unwrap();
                let spec = draft.resolve(None, owner.id).unwrap();
                results.push(
                    store
                        .create_mailbox(&Actor::cli(), &spec, SecretChange::Keep)
                        .await,
                );
            }
            results
        }));
    }
    let mut created = 0;
    let mut full = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(_) => created += 1,
                Err(StoreError::ProfileFull { message }) => {
                    assert!(
                        message.contains("Gmail A") && message.contains("100"),
                        "{message}"
                    );
                    assert!(message.contains("second Gmail OAuth profile"), "{message}");
                    full += 1;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }
    assert_eq!((created, full), (100, 10));
    assert_eq!(
        store.get_profile(profile.id).await.unwrap().mailbox_count,
        100
    );
}

async fn enabled_mailboxes(store: &Store, n: usize) -> Vec<mailbridge_core::MailboxId> {
    let actor = Actor::cli();
    let (owner, profile) = owner_and_gmail_profile(store, "Leased").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let draft: MailboxDraft = serde_json::from_value(serde_json::json!({
            "email": format!("m{i}@example.com"), "profile_id": profile.id,
        }))
        .unwrap();
        let m = store
            .create_mailbox(
                &actor,
                &draft.resolve(None, owner.id).unwrap(),
                SecretChange::Keep,
            )
            .await
            .unwrap();
        let ok = mailbridge_store::TestOutcome::success();
        store
            .record_test(&actor, m.id, Some(&ok), Some(&ok), true)
            .await
            .unwrap();
        ids.push(m.id);
    }
    ids
}

async fn a_lost_lease_fences_off_the_old_holders_writes(kind: TestDatabase) {
    use mailbridge_store::{Fence, FolderPosition, SyncBatch};
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let ttl = std::time::Duration::from_millis(300);
    let a = store.register_node("a", "cloud", ttl).await.unwrap();
    let leases = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    assert_eq!(leases.len(), 1);
    let a_fence = Fence {
        node: a.clone(),
        epoch: leases[0].epoch,
    };
    let batch = |fence: &Fence, last_uid| SyncBatch {
        position: Some(FolderPosition {
            folder: "INBOX".into(),
            uid_validity: 7,
            last_uid,
            highest_modseq: None,
            messages: None,
        }),
        fence: Some(fence.clone()),
        ..SyncBatch::default()
    };
    store
        .save_sync_batch(mailbox, batch(&a_fence, 1))
        .await
        .unwrap();

    // a stops renewing (paused); its lease runs out and b takes the mailbox.
    tokio::time::sleep(ttl * 2).await;
    let b = store.register_node("b", "cloud", ttl * 20).await.unwrap();
    let taken = store
        .balance_leases(&b, "cloud", ttl * 20)
        .await
        .unwrap()
        .leases;
    assert_eq!(taken.len(), 1, "the expired lease is free to take");
    assert!(
        taken[0].epoch > a_fence.epoch,
        "a new holder gets a new epoch"
    );
    let b_fence = Fence {
        node: b.clone(),
        epoch: taken[0].epoch,
    };
    // a wakes up and tries to write what it had read: refused.
    match store.save_sync_batch(mailbox, batch(&a_fence, 99)).await {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("the old holder's write must be refused: {other:?}"),
    }
    // Nor may it record its failures or disable the mailbox b now works.
    assert!(matches!(
        store
            .record_sync_error(mailbox, "timeout", Some(&a_fence))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store
            .disable_with_alert(mailbox, "sync_failing", "timeout", "retry", Some(&a_fence))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Nor report a folder of it failing.
    assert!(matches!(
        store
            .record_folder_error(mailbox, "Archive", "NO no such folder", Some(&a_fence))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    let folders = store.folder_progress(&[mailbox]).await.unwrap();
    assert!(
        folders[&mailbox].iter().all(|f| f.error.is_none()),
        "{folders:?}"
    );
    let m = store.get_mailbox(mailbox).await.unwrap();
    assert!(m.enabled && m.sync.last_error.is_none(), "{m:?}");
    store
        .save_sync_batch(mailbox, batch(&b_fence, 2))
        .await
        .unwrap();
    let position = store
        .folder_position(mailbox, "INBOX")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(position.last_uid, 2, "only the holder's write landed");
    // a renews: it holds nothing any more, and b (live, fresh lease) keeps the mailbox.
    assert!(
        store
            .balance_leases(&a, "cloud", ttl)
            .await
            .unwrap()
            .leases
            .is_empty()
    );
    // A clean stop hands the mailbox over at once, and leaves no other node to watch.
    store.stop_node(&b).await.unwrap();
    let back = store.balance_leases(&a, "cloud", ttl).await.unwrap();
    assert_eq!(back.leases.len(), 1);
    assert!(back.leases[0].epoch > b_fence.epoch);
    assert_eq!(back.others_expire_in, None);
}

async fn a_node_back_from_a_pause_keeps_what_nobody_took(kind: TestDatabase) {
    use mailbridge_store::{Fence, SyncBatch};
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let ttl = std::time::Duration::from_millis(300);
    let a = store.register_node("a", "cloud", ttl).await.unwrap();
    let held = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    assert_eq!(held.len(), 1);
    let write = || {
        store.save_sync_batch(
            mailbox,
            SyncBatch {
                fence: Some(Fence {
                    node: a.clone(),
                    epoch: held[0].epoch,
                }),
                ..SyncBatch::default()
            },
        )
    };
    write().await.unwrap();
    // a is paused past its lease time: while its leases have run out, nothing it writes lands.
    tokio::time::sleep(ttl * 2).await;
    assert!(matches!(write().await, Err(StoreError::LeaseLost { .. })));
    // Its next heartbeat renews them: nobody took the mailbox, so a holds it again under the
    // same epoch, and its writes land again.
    let back = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    assert_eq!(back, held);
    write().await.unwrap();
}

async fn nodes_claiming_at_once_never_share_a_mailbox(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailboxes = enabled_mailboxes(&store, 30).await;
    let ttl = std::time::Duration::from_secs(30);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(store.register_node(name, "cloud", ttl).await.unwrap());
    }
    // Each node balances five times, all at once.
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..5 {
            let (store, node) = (store.clone(), node.clone());
            tasks.push(tokio::spawn(async move {
                let leases = store
                    .balance_leases(&node, "cloud", ttl)
                    .await
                    .unwrap()
                    .leases;
                (node, leases)
            }));
        }
    }
    // No grant of a mailbox (its epoch) was told to two nodes, however the calls interleaved.
    let mut granted: std::collections::HashMap<(mailbridge_core::MailboxId, i64), String> =
        std::collections::HashMap::new();
    for t in tasks {
        let (node, leases) = t.await.unwrap();
        for lease in leases {
            if let Some(other) = granted.insert((lease.mailbox, lease.epoch), node.clone()) {
                assert_eq!(
                    other, node,
                    "mailbox {} granted to two nodes",
                    lease.mailbox
                );
            }
        }
    }
    // Settle, then every mailbox is held by exactly one node, ten each.
    let mut held = std::collections::HashMap::new();
    for node in &nodes {
        for lease in store
            .balance_leases(node, "cloud", ttl)
            .await
            .unwrap()
            .leases
        {
            assert!(
                held.insert(lease.mailbox, node.clone()).is_none(),
                "mailbox {} leased twice",
                lease.mailbox
            );
        }
    }
    assert_eq!(held.len(), mailboxes.len());
    for node in &nodes {
        assert_eq!(held.values().filter(|n| *n == node).count(), 10);
    }
    // Each node knows when it must look again were the others to die: a third of the lease
    // time after the oldest of their heartbeats, which were just now (were they silent that
    // long with their session gone, they would be dead).
    let balance = store.balance_leases(&nodes[0], "cloud", ttl).await.unwrap();
    let soon = balance.others_expire_in.unwrap();
    assert!(
        soon <= ttl / 3 && soon > ttl / 3 - std::time::Duration::from_secs(5),
        "{soon:?}"
    );
    // A drained node gives its share to the others.
    assert_eq!(store.set_draining("a", true).await.unwrap(), 1);
    assert!(
        store
            .balance_leases(&nodes[0], "cloud", ttl)
            .await
            .unwrap()
            .leases
            .is_empty()
    );
    let b = store
        .balance_leases(&nodes[1], "cloud", ttl)
        .await
        .unwrap()
        .leases
        .len();
    let c = store
        .balance_leases(&nodes[2], "cloud", ttl)
        .await
        .unwrap()
        .leases
        .len();
    assert_eq!((b, c), (15, 15));
}

/// What `node` holds after a balancing round of its own.
async fn balance(
    store: &Store,
    node: &str,
    ttl: std::time::Duration,
) -> std::collections::HashSet<mailbridge_core::MailboxId> {
    let leases = store
        .balance_leases(node, "cloud", ttl)
        .await
        .unwrap()
        .leases;
    leases.into_iter().map(|l| l.mailbox).collect()
}

/// Three nodes share nine mailboxes. One dies — its process gone, its connections with it —
/// and one only goes silent, its session still open, as a paused process's is. A third of the
/// lease time after their last heartbeats the survivor takes the dead node's mailboxes, long
/// before its lease time; the late node keeps its own until its leases run out.
async fn a_dead_node_is_told_from_a_late_one_by_its_session() {
    use std::time::{Duration, Instant};
    let db = Db::new(TestDatabase::Postgres).await;
    let stores = [
        db.open(Keyring::generate()).await,
        db.open(Keyring::generate()).await,
        db.open(Keyring::generate()).await,
    ];
    enabled_mailboxes(&stores[0], 9).await;
    let ttl = Duration::from_secs(6);
    let mut nodes = Vec::new();
    for (store, name) in stores.iter().zip(["survivor", "late", "dead"]) {
        nodes.push(store.register_node(name, "cloud", ttl).await.unwrap());
    }
    let mut held = Vec::new();
    for (store, node) in stores.iter().zip(&nodes) {
        held.push(balance(store, node, ttl).await);
    }
    let last_beat = Instant::now();
    assert_eq!(held.iter().map(|h| h.len()).collect::<Vec<_>>(), [3, 3, 3]);
    let [survivor, late, dead] = &stores;
    // The survivor knows to look again when the others go silent, not a lease time later.
    let soon = survivor
        .balance_leases(&nodes[0], "cloud", ttl)
        .await
        .unwrap()
        .others_expire_in
        .unwrap();
    assert!(soon <= ttl / 3, "{soon:?}");
    dead.close().await;
    // Before the silence limit nothing moves: a missed heartbeat is not a death.
    assert_eq!(balance(survivor, &nodes[0], ttl).await, held[0]);
    tokio::time::sleep((last_beat + ttl / 3 + Duration::from_millis(300)) - Instant::now()).await;
    let now = balance(survivor, &nodes[0], ttl).await;
    assert!(
        last_beat.elapsed() < ttl * 3 / 4,
        "{:?}",
        last_beat.elapsed()
    );
    // Its share with one other live node is five: two of the dead node's, none of the late one's.
    assert_eq!(now.len(), 5, "{now:?}");
    assert!(now.is_superset(&held[0]));
    assert!(now.is_disjoint(&held[1]), "took a late node's mailbox");
    assert_eq!(now.intersection(&held[2]).count(), 2);
    let listed = survivor.list_nodes().await.unwrap();
    let lost = |name: &str| listed.iter().find(|n| n.name == name).unwrap().lost;
    assert!(lost("dead") && !lost("late") && !lost("survivor"));
    // The late node's leases run out with its lease time; then they are free too.
    tokio::time::sleep((last_beat + ttl + Duration::from_millis(300)) - Instant::now()).await;
    assert_eq!(balance(survivor, &nodes[0], ttl).await.len(), 9);
    // Back, the late node finds its mailboxes gone.
    assert!(balance(late, &nodes[1], ttl).await.is_empty());
}

/// A node cannot tell a death from a server restart (which ends every session) for a node
/// that went silent before its own session began: that one keeps its mailboxes until its
/// leases run out.
async fn a_node_gone_before_this_ones_session_began_is_left_to_its_lease() {
    let db = Db::new(TestDatabase::Postgres).await;
    let (gone_store, store) = (
        db.open(Keyring::generate()).await,
        db.open(Keyring::generate()).await,
    );
    enabled_mailboxes(&store, 4).await;
    let ttl = std::time::Duration::from_secs(6);
    let gone = gone_store
        .register_node("gone", "cloud", ttl)
        .await
        .unwrap();
    let node = store.register_node("new", "cloud", ttl).await.unwrap();
    let its = balance(&gone_store, &gone, ttl).await;
    assert_eq!(its.len(), 2);
    gone_store.close().await;
    tokio::time::sleep(ttl / 3 + std::time::Duration::from_millis(300)).await;
    // Silent past the limit with its session gone, but since before this node's first round.
    let mine = balance(&store, &node, ttl).await;
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.is_disjoint(&its));
}

/// A node that cannot take its own session lock (another session holds it: an old session of
/// its own the server has not ended yet, or a node whose id hashes alike) cannot prove that
/// the server kept running since it began, so it finds no node dead; the dead node's
/// mailboxes wait for its lease time. (Guarded twice: a refused lock is not kept as held, and
/// each round checks by its backend's pid that the lock is its own; fails with both removed.)
async fn a_node_refused_its_session_lock_finds_no_one_dead() {
    use sqlx::{Connection, Executor};
    let db = Db::new(TestDatabase::Postgres).await;
    let (dead_store, store) = (
        db.open(Keyring::generate()).await,
        db.open(Keyring::generate()).await,
    );
    enabled_mailboxes(&store, 4).await;
    let ttl = std::time::Duration::from_secs(6);
    let node = store.register_node("refused", "cloud", ttl).await.unwrap();
    let dead = dead_store
        .register_node("dead", "cloud", ttl)
        .await
        .unwrap();
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    other
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_advisory_lock({}, hashtext('{node}'))",
            0x6D62_6E64
        )))
        .await
        .unwrap();
    assert_eq!(balance(&store, &node, ttl).await.len(), 2);
    assert_eq!(balance(&dead_store, &dead, ttl).await.len(), 2);
    dead_store.close().await;
    tokio::time::sleep(ttl / 3 + std::time::Duration::from_millis(300)).await;
    assert_eq!(balance(&store, &node, ttl).await.len(), 2);
    let listed = store.list_nodes().await.unwrap();
    assert!(listed.iter().all(|n| !n.lost), "{listed:?}");
    other.close().await.unwrap();
}

/// Nodes set to hold no session lock (behind a transaction pooler) take none, and one that
/// dies keeps its mailboxes until its leases run out — for the others without locks, which
/// judge no one by them, and for one with a lock, which would otherwise take the lock-less
/// node for dead after a third of the lease time (as in
/// `a_dead_node_is_told_from_a_late_one_by_its_session`) and so has no use for that moment.
async fn without_session_locks_a_dead_node_is_left_to_its_lease() {
    use std::time::{Duration, Instant};
    let db = Db::new(TestDatabase::Postgres).await;
    let locked = db.open(Keyring::generate()).await;
    let (lockless, dead_store) = (
        db.open(Keyring::generate())
            .await
            .without_node_session_locks(),
        db.open(Keyring::generate())
            .await
            .without_node_session_locks(),
    );
    enabled_mailboxes(&locked, 6).await;
    let ttl = Duration::from_secs(6);
    let mut nodes = Vec::new();
    for (store, name) in [
        (&locked, "locked"),
        (&lockless, "lockless"),
        (&dead_store, "dead"),
    ] {
        nodes.push(store.register_node(name, "cloud", ttl).await.unwrap());
    }
    // The locked node's session begins before the other two's last heartbeats: it would
    // judge them.
    let mut held = Vec::new();
    for (store, node) in [&locked, &lockless, &dead_store].into_iter().zip(&nodes) {
        held.push(balance(store, node, ttl).await);
    }
    let last_beat = Instant::now();
    assert_eq!(held.iter().map(|h| h.len()).collect::<Vec<_>>(), [2, 2, 2]);
    let soon = locked
        .balance_leases(&nodes[0], "cloud", ttl)
        .await
        .unwrap()
        .others_expire_in
        .unwrap();
    assert!(
        soon > ttl / 2,
        "looks again when a lock-less node goes silent: {soon:?}"
    );
    let mut look = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let (locks,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        0x6D62_6E64
    )))
    .fetch_one(&mut look)
    .await
    .unwrap();
    assert_eq!(locks, 1, "only the locked node holds a session lock");
    dead_store.close().await;
    tokio::time::sleep((last_beat + ttl / 3 + Duration::from_millis(300)) - Instant::now()).await;
    let now = [
        balance(&locked, &nodes[0], ttl).await,
        balance(&lockless, &nodes[1], ttl).await,
    ];
    assert!(
        last_beat.elapsed() < ttl * 3 / 4,
        "{:?}",
        last_beat.elapsed()
    );
    assert_eq!(
        now,
        [held[0].clone(), held[1].clone()],
        "took a silent node's mailboxes before its leases ran out"
    );
    tokio::time::sleep((last_beat + ttl + Duration::from_millis(300)) - Instant::now()).await;
    let after = [
        balance(&locked, &nodes[0], ttl).await,
        balance(&lockless, &nodes[1], ttl).await,
    ];
    assert_eq!(after[0].len() + after[1].len(), 6, "{after:?}");
}

/// An email to queue, told apart by `n`.
fn outgoing(n: usize) -> mailbridge_store::OutgoingEmail {
    let raw = format!("Subject: email {n}\r\n\r\nhi\r\n").into_bytes();
    mailbridge_store::OutgoingEmail {
        email: mailbridge_store::NewEmail {
            remote_key: format!("out/test-{n}-{}", uuid_like()),
            folder: None,
            uid: None,
            gmail_labels: Vec::new(),
            gmail_thread_id: None,
            tracking_token: None,
            parsed: mailbridge_core::message::ParsedEmail {
                subject: Some(format!("email {n}")),
                ..Default::default()
            },
            raw: mailbridge_store::RawMessage::new(raw),
            truncated_from: None,
            renumbered_from: None,
            flags: None,
            sent_by_owner: false,
        },
        envelope: vec!["bob@example.com".into()],
        bcc: Vec::new(),
        fingerprint: format!("fingerprint-{n}"),
    }
}

fn uuid_like() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    u128::from(NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn the_outgoing_queue_takes_mailboxes_in_turns(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let m = enabled_mailboxes(&store, 3).await;
    let ttl = std::time::Duration::from_secs(30);
    let node = store.register_node("a", "cloud", ttl).await.unwrap();
    assert_eq!(
        store
            .balance_leases(&node, "cloud", ttl)
            .await
            .unwrap()
            .leases
            .len(),
        3
    );
    // The first mailbox queues 20 before the others queue anything.
    let mut owner = std::collections::HashMap::new();
    for (mailbox, count) in [(m[0], 20), (m[1], 2), (m[2], 1)] {
        for n in 0..count {
            let (record, created) = store
                .queue_outgoing(mailbox, &outgoing(n), None)
                .await
                .unwrap();
            assert!(created);
            owner.insert(record.id, mailbox);
        }
    }
    let claimed = store.claim_due_outgoing(&node, 6).await.unwrap();
    let per = |mailbox| claimed.iter().filter(|(_, m)| *m == mailbox).count();
    assert_eq!(
        (per(m[0]), per(m[1]), per(m[2])),
        (3, 2, 1),
        "each mailbox's first, then each one's second…: {claimed:?}"
    );
    // The claim order is the turns: one of each mailbox before a second of any.
    let first_three: std::collections::HashSet<_> = claimed[..3].iter().map(|(_, m)| *m).collect();
    assert_eq!(first_three.len(), 3, "{claimed:?}");
    for (id, mailbox) in &claimed {
        assert_eq!(owner[id], *mailbox);
    }
}

async fn a_mailbox_queues_within_its_limits_and_a_reused_key_must_match(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let (owner, profile) = owner_and_gmail_profile(&store, "Limited").await;
    let draft: ProfileDraft =
        serde_json::from_value(serde_json::json!({"daily_send_limit": 3, "max_queued_emails": 2}))
            .unwrap();
    let (spec, secret) = draft
        .resolve(Some(mailbridge_core::Stored {
            spec: &profile.spec,
            has_client_secret: true,
        }))
        .unwrap();
    store
        .update_profile(&Actor::cli(), profile.id, &spec, secret)
        .await
        .unwrap();
    let draft: MailboxDraft = serde_json::from_value(
        serde_json::json!({"email": "q@example.com", "profile_id": profile.id}),
    )
    .unwrap();
    let mailbox = store
        .create_mailbox(
            &Actor::cli(),
            &draft.resolve(None, owner.id).unwrap(),
            SecretChange::Keep,
        )
        .await
        .unwrap()
        .id;
    let (first, _) = store
        .queue_outgoing(mailbox, &outgoing(1), Some("k1"))
        .await
        .unwrap();
    // The same request again: the same email, nothing new.
    let (again, created) = store
        .queue_outgoing(mailbox, &outgoing(1), Some("k1"))
        .await
        .unwrap();
    assert_eq!((again.id.as_str(), created), (first.id.as_str(), false));
    // The same key for another email: refused, saying so.
    match store
        .queue_outgoing(mailbox, &outgoing(2), Some("k1"))
        .await
    {
        Err(StoreError::IdempotencyKeyReused { message }) => {
            assert!(
                message.contains("k1") && message.contains("different email"),
                "{message}"
            )
        }
        other => panic!("a reused key with another email must be refused: {other:?}"),
    }
    store
        .queue_outgoing(mailbox, &outgoing(3), None)
        .await
        .unwrap();
    // Two waiting: the queue is full.
    match store.queue_outgoing(mailbox, &outgoing(4), None).await {
        Err(StoreError::RateLimited {
            message,
            retry_after_secs,
        }) => {
            assert!(message.contains("max_queued_emails"), "{message}");
            assert!(retry_after_secs > 0);
        }
        other => panic!("the third waiting email must be refused: {other:?}"),
    }
    // Once they have gone out (failed, here), the third of the day is still allowed; the
    // fourth is not.
    let settle = || async {
        let all = mailbridge_store::EmailFilter::default();
        for e in store.list_emails(&all, None, 10).await.unwrap() {
            store.mark_send_failed(&e.id, "test").await.unwrap();
        }
    };
    settle().await;
    store
        .queue_outgoing(mailbox, &outgoing(5), None)
        .await
        .unwrap();
    settle().await;
    match store.queue_outgoing(mailbox, &outgoing(6), None).await {
        Err(StoreError::RateLimited {
            message,
            retry_after_secs,
        }) => {
            assert!(message.contains("daily_send_limit"), "{message}");
            assert!(
                retry_after_secs > 23 * 3600 && retry_after_secs <= 24 * 3600,
                "the oldest leaves the window in a day: {retry_after_secs}"
            );
        }
        other => panic!("the fourth email of the day must be refused: {other:?}"),
    }
}

async fn two_admins_demoting_each_other_at_once_leave_one(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    for round in 0..25 {
        let mut admins = Vec::new();
        for who in ["a", "b"] {
            let email = EmailAddress::parse(&format!("{who}{round}@example.com"), "e").unwrap();
            let (u, _) = store
                .create_user(&Actor::cli(), &email, Role::Admin)
                .await
                .unwrap();
            admins.push(u.id);
        }
        // Demote every admin there is (earlier rounds' survivors too), all at once.
        let everyone = store.list_users().await.unwrap();
        let tasks: Vec<_> = everyone
            .iter()
            .filter(|u| u.role == Role::Admin)
            .map(|u| {
                let (store, id) = (store.clone(), u.id);
                tokio::spawn(
                    async move { store.set_user_role(&Actor::cli(), id, Role::User).await },
                )
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let left = store
            .list_users()
            .await
            .unwrap()
            .iter()
            .filter(|u| u.role == Role::Admin)
            .count();
        assert_eq!(left, 1, "round {round}: exactly one admin must remain");
    }
}

/// A node whose clock is off by a fixed amount.
struct Skewed(chrono::Duration);

impl Clock for Skewed {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        SystemClock.now() + self.0
    }
}

async fn leases_run_on_the_databases_clock_not_the_nodes() {
    let db = Db::new(TestDatabase::Postgres).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    // Node a's clock is two minutes behind, node b's two minutes ahead; the lease lasts 30 s.
    let open_at = |skew: i64| {
        let clock = Arc::new(Skewed(chrono::Duration::seconds(skew)));
        let url = db.url.clone();
        async move {
            Store::connect(&url, Keyring::generate(), clock)
                .await
                .unwrap()
        }
    };
    let (slow, fast) = (open_at(-120).await, open_at(120).await);
    let ttl = std::time::Duration::from_secs(30);
    let a = slow.register_node("a", "cloud", ttl).await.unwrap();
    let b = fast.register_node("b", "cloud", ttl).await.unwrap();
    let held = slow.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    assert_eq!(held.len(), 1);
    // By b's clock a's lease ran out long ago; by the database's it has 30 s to go.
    let taken = fast.balance_leases(&b, "cloud", ttl).await.unwrap().leases;
    assert!(taken.is_empty(), "b took a live lease: {taken:?}");
    let fence = mailbridge_store::Fence {
        node: a.clone(),
        epoch: held[0].epoch,
    };
    slow.save_sync_batch(
        mailbox,
        mailbridge_store::SyncBatch {
            fence: Some(fence),
            ..Default::default()
        },
    )
    .await
    .expect("a still holds its lease by the database's clock");
    let nodes = fast.list_nodes().await.unwrap();
    let a_info = nodes.iter().find(|n| n.id == a).unwrap();
    assert_eq!(a_info.mailboxes, 1, "{nodes:?}");
}

async fn a_heartbeat_renews_every_lease_without_rewriting_them() {
    let db = Db::new(TestDatabase::Postgres).await;
    let store = db.open(Keyring::generate()).await;
    enabled_mailboxes(&store, 40).await;
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    // Each row version's transaction: PostgreSQL writes a new one for every UPDATE of a row.
    let versions = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT mailbox_id, xmin::text FROM mailbox_leases ORDER BY mailbox_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        rows
    };
    let ttl = std::time::Duration::from_millis(600);
    let a = store.register_node("a", "cloud", ttl).await.unwrap();
    let b = store.register_node("b", "cloud", ttl).await.unwrap();
    // A node counts for the shares from its registration: a takes half, b the other half.
    let first = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    let taken = store.balance_leases(&b, "cloud", ttl).await.unwrap().leases;
    assert_eq!((first.len(), taken.len()), (20, 20));
    let written = versions().await;
    assert_eq!(written.len(), 40);
    // Both heartbeat for three lease times: each keeps its mailboxes, and no lease row is
    // written again.
    for _ in 0..9 {
        tokio::time::sleep(ttl / 3).await;
        let held = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
        assert_eq!(held, first, "a's leases, renewed by its heartbeat alone");
        let held = store.balance_leases(&b, "cloud", ttl).await.unwrap().leases;
        assert_eq!(held, taken);
    }
    assert_eq!(versions().await, written, "a renewal rewrote lease rows");
    // b stops heartbeating: all its leases run out together, and a takes them.
    tokio::time::sleep(ttl + ttl / 3).await;
    let all = store.balance_leases(&a, "cloud", ttl).await.unwrap().leases;
    assert_eq!(all.len(), 40);
    let nodes = store.list_nodes().await.unwrap();
    let count = |id: &str| nodes.iter().find(|n| n.id == id).unwrap().mailboxes;
    assert_eq!((count(&a), count(&b)), (40, 0), "{nodes:?}");
}

/// A batch of `n` new messages for `mailbox`, told apart by `tag`.
fn batch_of(
    tag: &str,
    n: usize,
    fence: Option<mailbridge_store::Fence>,
) -> mailbridge_store::SyncBatch {
    let emails = (0..n)
        .map(|i| {
            let raw =
                format!("Message-ID: <{tag}-{i}@example.com>\r\nSubject: {tag} {i}\r\n\r\nhi\r\n");
            mailbridge_store::NewEmail {
                remote_key: format!("test/{tag}/{i}"),
                folder: Some("INBOX".into()),
                uid: None,
                gmail_labels: Vec::new(),
                gmail_thread_id: None,
                tracking_token: None,
                parsed: mailbridge_core::message::ParsedEmail {
                    message_id: Some(format!("{tag}-{i}@example.com")),
                    subject: Some(format!("{tag} {i}")),
                    ..Default::default()
                },
                raw: mailbridge_store::RawMessage::new(raw.into_bytes()),
                truncated_from: None,
                renumbered_from: None,
                flags: None,
                sent_by_owner: false,
            }
        })
        .collect();
    mailbridge_store::SyncBatch {
        emails,
        fence,
        ..Default::default()
    }
}

/// After `close` (a node stopping) a batch is refused as unavailable — on SQLite's native
/// writer as on the pools — and nothing of it is written: the sync tries it again later.
async fn a_closed_store_refuses_a_batch_and_writes_none_of_it(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    assert_eq!(
        store
            .save_sync_batch(mailbox, batch_of("open", 2, None))
            .await
            .unwrap(),
        2
    );
    store.close().await;
    let refused = store
        .save_sync_batch(mailbox, batch_of("closed", 3, None))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    // Counting needs no secret: any keyring opens it.
    let reopened = db.open(Keyring::generate()).await;
    assert_eq!(reopened.count_emails(mailbox).await.unwrap(), 2);
    reopened.close().await;
}

/// The emails of `mailbox` (or, without one, the attachments of every email), counted
/// directly in the database.
async fn rows_of(db: &Db, mailbox: Option<mailbridge_core::MailboxId>) -> i64 {
    use sqlx::Connection;
    let mut look = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let query = match mailbox {
        Some(m) => {
            sqlx::query_as("SELECT COUNT(*) FROM emails WHERE mailbox_id = $1").bind(m.to_string())
        }
        None => sqlx::query_as("SELECT COUNT(*) FROM attachments"),
    };
    let (n,): (i64,) = query.fetch_one(&mut look).await.unwrap();
    n
}

/// Deleting a mailbox deletes its emails and their attachments, and only its own; a batch for
/// it afterwards is refused and writes nothing. (On PostgreSQL no foreign key does this since
/// migration 0029: 0030's trigger does.)
async fn a_deleted_mailbox_keeps_no_email_and_takes_none_after(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let boxes = enabled_mailboxes(&store, 2).await;
    let with_attachment = |tag| {
        let mut batch = batch_of(tag, 3, None);
        for e in &mut batch.emails {
            e.parsed.attachments = vec![mailbridge_core::message::ParsedAttachment {
                filename: Some("a.txt".into()),
                content_type: "text/plain".into(),
                size: 1,
            }];
        }
        batch
    };
    for &m in &boxes {
        assert_eq!(
            store
                .save_sync_batch(m, with_attachment("kept"))
                .await
                .unwrap(),
            3
        );
    }
    assert_eq!(rows_of(&db, None).await, 6);
    store.delete_mailbox(&Actor::cli(), boxes[0]).await.unwrap();
    assert_eq!(rows_of(&db, Some(boxes[0])).await, 0);
    assert_eq!(rows_of(&db, Some(boxes[1])).await, 3);
    assert_eq!(
        rows_of(&db, None).await,
        3,
        "the other mailbox's attachments, and only those"
    );

    let late = store
        .save_sync_batch(boxes[0], with_attachment("late"))
        .await;
    // On PostgreSQL the pass's update of the mailbox finds no row; on SQLite the foreign key
    // refuses the emails.
    let refused = match kind {
        TestDatabase::Postgres => {
            matches!(
                late,
                Err(StoreError::NotFound {
                    kind: "mailbox",
                    ..
                })
            )
        }
        TestDatabase::Sqlite => late.is_err(),
    };
    assert!(refused, "a batch for a deleted mailbox: {late:?}");
    assert_eq!(rows_of(&db, Some(boxes[0])).await, 0);
    assert_eq!(rows_of(&db, None).await, 3);
}

fn all_events() -> mailbridge_store::EventQuery {
    mailbridge_store::EventQuery {
        limit: 10_000,
        ..Default::default()
    }
}

/// A batch of more rows than four INSERTs take (the sync's full batch is four, 1,000 messages;
/// the store takes any): every email, attachment and event is written once, in order, and a
/// replay of it writes none.
async fn a_batch_larger_than_one_insert_is_stored_whole_with_its_attachments_and_events(
    kind: TestDatabase,
) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let n = 4 * mailbridge_store::ROWS_PER_INSERT + 60;
    // The raw message of `i`: the last one long enough for zstd (kept compressed).
    let raw_of = |i: usize| {
        let body = if i == n - 1 {
            "hello ".repeat(2000)
        } else {
            "hi".into()
        };
        format!("Message-ID: <big-{i}@example.com>\r\nSubject: big {i}\r\n\r\n{body}\r\n")
    };
    let with_attachments = || {
        let mut batch = batch_of("big", n, None);
        batch.emails[n - 1].raw = mailbridge_store::RawMessage::new(raw_of(n - 1).into_bytes());
        for (i, e) in batch.emails.iter_mut().enumerate() {
            e.parsed.attachments = vec![mailbridge_core::message::ParsedAttachment {
                filename: Some(format!("file-{i}.txt")),
                content_type: "text/plain".into(),
                size: i,
            }];
        }
        batch
    };
    // Saves the batch: how many it stored, and the events appended by it.
    let save = || async {
        let before = store.read_events(&all_events()).await.unwrap().next;
        let stored = store
            .save_sync_batch(mailbox, with_attachments())
            .await
            .unwrap();
        assert_eq!(store.count_emails(mailbox).await.unwrap(), n as i64);
        let query = mailbridge_store::EventQuery {
            after: before,
            ..all_events()
        };
        (stored, store.read_events(&query).await.unwrap().events)
    };
    let (stored, events) = save().await;
    assert_eq!(stored, n);
    let received: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "email.received")
        .collect();
    let subjects: Vec<String> = received
        .iter()
        .map(|e| {
            e.data["email"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("big {i}")).collect();
    assert_eq!(
        subjects, expected,
        "one event per email, in the batch's order"
    );
    for e in [received[0], received[n - 1]] {
        let id = e.data["email"]["id"].as_str().unwrap();
        let email = store.get_email(id).await.unwrap();
        let i: usize = email.subject.as_deref().unwrap()[4..].parse().unwrap();
        assert_eq!(email.attachments.len(), 1, "{id}");
        assert_eq!(
            email.attachments[0].filename.as_deref(),
            Some(format!("file-{i}.txt").as_str())
        );
        assert_eq!(email.attachments[0].size, i as i64);
        // The row written from the first statement's and from the second's (padded: 60 rows
        // in a statement of 64; its last compressed) keeps the message and its original size.
        let raw = raw_of(i);
        assert_eq!(email.size, raw.len() as i64, "{id}");
        assert_eq!(store.email_raw(id).await.unwrap(), raw.as_bytes(), "{id}");
        if i == n - 1 {
            use sqlx::Connection;
            let mut look = sqlx::AnyConnection::connect(&db.url).await.unwrap();
            let (zstd,): (i64,) =
                sqlx::query_as("SELECT CAST(raw_zstd AS BIGINT) FROM emails WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut look)
                    .await
                    .unwrap();
            assert_eq!(zstd, 1, "{id}: kept compressed");
        }
    }
    // Replayed after a crash: nothing new, nothing said.
    let (stored, again) = save().await;
    assert_eq!(stored, 0);
    assert!(
        again.iter().all(|e| e.kind != "email.received"),
        "{again:?}"
    );
}

/// A batch looks its related message ids up in statements of a few sizes, the ids then NULLs
/// (`lookup_query`): at every count — below the smallest size, at and around a size's edge,
/// more than one statement takes — each message finds what it answers, both ways: replies
/// stored after their originals (by Message-ID), and originals stored after their replies (by
/// the replies' In-Reply-To, within the mailbox).
async fn replies_find_their_conversation_whatever_the_count_of_ids_a_batch_looks_up(
    kind: TestDatabase,
) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let answering = |tag: &str, n: usize, answered: &str| {
        let mut batch = batch_of(tag, n, None);
        for (i, e) in batch.emails.iter_mut().enumerate() {
            e.parsed.in_reply_to = vec![format!("{answered}-{i}@example.com")];
        }
        batch
    };
    let conversations = || async {
        let filter = mailbridge_store::EmailFilter {
            mailbox: Some(mailbox),
            ..Default::default()
        };
        let emails = store.list_emails(&filter, None, 100_000).await.unwrap();
        emails
            .into_iter()
            .filter_map(|e| Some((e.message_id?, e.conversation_id)))
            .collect::<std::collections::HashMap<_, _>>()
    };
    for n in [1, 7, 8, 9, 255, 257, 500, 501] {
        store
            .save_sync_batch(mailbox, batch_of(&format!("orig{n}"), n, None))
            .await
            .unwrap();
        let replies = answering(&format!("re{n}"), n, &format!("orig{n}"));
        store.save_sync_batch(mailbox, replies).await.unwrap();
        let answers = answering(&format!("ans{n}"), n, &format!("late{n}"));
        store.save_sync_batch(mailbox, answers).await.unwrap();
        store
            .save_sync_batch(mailbox, batch_of(&format!("late{n}"), n, None))
            .await
            .unwrap();
        let by_id = conversations().await;
        let of = |tag: &str, i: usize| by_id[&format!("{tag}{n}-{i}@example.com")].clone();
        for i in 0..n {
            assert_eq!(of("re", i), of("orig", i), "reply {i} of {n}");
            assert_eq!(
                of("late", i),
                of("ans", i),
                "original {i} of {n}, stored late"
            );
        }
        let distinct: std::collections::HashSet<String> = (0..n).map(|i| of("orig", i)).collect();
        assert_eq!(distinct.len(), n, "{n} conversations, not one");
    }
}

async fn a_refused_batch_leaves_no_event_and_a_stored_one_exactly_its_own(kind: TestDatabase) {
    use mailbridge_store::Fence;
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let ttl = std::time::Duration::from_secs(30);
    let node = store.register_node("a", "cloud", ttl).await.unwrap();
    let lease = store
        .balance_leases(&node, "cloud", ttl)
        .await
        .unwrap()
        .leases
        .remove(0);
    let before = store.read_events(&all_events()).await.unwrap().next;
    // A writer whose lease is gone: the batch is refused, and with it every event it carried.
    let stale = Fence {
        node: node.clone(),
        epoch: lease.epoch - 1,
    };
    match store
        .save_sync_batch(mailbox, batch_of("stale", 3, Some(stale)))
        .await
    {
        Err(StoreError::LeaseLost { .. }) => {}
        other => panic!("a stale writer must be refused: {other:?}"),
    }
    let page = store
        .read_events(&mailbridge_store::EventQuery {
            after: before,
            ..all_events()
        })
        .await
        .unwrap();
    assert!(
        page.events.is_empty(),
        "a refused batch left events: {:?}",
        page.events
    );
    // The holder's batch: one email.received per new record, owned by the mailbox's owner.
    let fence = Fence {
        node,
        epoch: lease.epoch,
    };
    let stored = store
        .save_sync_batch(mailbox, batch_of("held", 3, Some(fence.clone())))
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // The same batch again (a replay after a crash) stores nothing and says nothing.
    assert_eq!(
        store
            .save_sync_batch(mailbox, batch_of("held", 3, Some(fence)))
            .await
            .unwrap(),
        0
    );
    let page = store
        .read_events(&mailbridge_store::EventQuery {
            after: before,
            ..all_events()
        })
        .await
        .unwrap();
    let received: Vec<_> = page
        .events
        .iter()
        .filter(|e| e.kind == "email.received")
        .collect();
    assert_eq!(received.len(), 3, "{:?}", page.events);
    let owner = store
        .get_mailbox(mailbox)
        .await
        .unwrap()
        .spec
        .owner_user_id
        .to_string();
    for e in &received {
        assert_eq!(e.owner_user_id.as_deref(), Some(owner.as_str()));
        assert_eq!(e.mailbox_id.as_deref(), Some(mailbox.to_string().as_str()));
        assert!(
            e.data["email"]["message_id"]
                .as_str()
                .unwrap()
                .starts_with("held-"),
            "{:?}",
            e.data
        );
    }
}

/// PostgreSQL parses and plans a batch's statements once per connection: a mailbox's batches
/// go to the same one of four (by its id), opened when first needed and named in
/// `pg_stat_activity`. But a batch does not queue behind another mailbox's that holds that
/// connection (here stuck on a row lock): it takes a pooled one instead (without that, it
/// waited for the pool's 5 s acquire timeout and failed); nor, past a short wait, behind its
/// own mailbox's.
async fn a_mailboxs_batches_keep_to_one_connection_but_never_queue_behind_a_stuck_one() {
    use sqlx::Connection;
    let db = Db::new(TestDatabase::Postgres).await;
    let store = db.open(Keyring::generate()).await;
    let mut look = sqlx::PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(batch_writers(&mut look).await, [], "none before a batch");
    // Of sixty mailboxes over four writers, the other 59 all miss the first's writer with
    // odds of (3/4)^59.
    let writer_of = |m: &mailbridge_core::MailboxId| store.batch_connection_of(*m).unwrap();
    let mailboxes = enabled_mailboxes(&store, 60).await;
    let first = mailboxes[0];
    let other = *mailboxes[1..]
        .iter()
        .find(|m| writer_of(m) == writer_of(&first))
        .expect("a mailbox on the first's writer");
    for b in 0..6 {
        store
            .save_sync_batch(first, batch_of(&format!("one{b}"), 3, None))
            .await
            .unwrap();
    }
    let writers = batch_writers(&mut look).await;
    assert_eq!(writers.len(), 1, "one connection opened: {writers:?}");
    assert_eq!(writers[0].0, writer_of(&first));
    let pid = writers[0].1;

    // The first mailbox's next batch waits on a lock of its row — on that same connection.
    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE")
        .bind(first.to_string())
        .execute(&mut *lock)
        .await
        .unwrap();
    let stuck = spawn_batch(&store, first, "stuck");
    assert_eq!(
        waiting_for_a_lock(&mut look, 1).await,
        [pid],
        "the first mailbox's batch waits for the lock on its writer's connection"
    );
    let started = std::time::Instant::now();
    let other_batch = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        store.save_sync_batch(other, batch_of("other", 2, None)),
    )
    .await;
    assert!(
        matches!(other_batch, Ok(Ok(2))),
        "{other_batch:?} after {:?}",
        started.elapsed()
    );
    assert!(
        !stuck.is_finished(),
        "the first mailbox's batch waits for its lock"
    );
    // Another batch of the first mailbox waits for the writer a moment, then takes a pooled
    // connection too, where it meets the same lock: two server processes wait for it.
    let next = spawn_batch(&store, first, "next");
    let waiting = waiting_for_a_lock(&mut look, 2).await;
    assert!(waiting.contains(&pid) && waiting.len() == 2, "{waiting:?}");
    lock.commit().await.unwrap();
    assert_eq!(stuck.await.unwrap().unwrap(), 2);
    assert_eq!(next.await.unwrap().unwrap(), 2);
}

/// When a mailbox's batch connection cannot be opened (here its role may open no more), the
/// batch is written on one of the pool's open connections after a short try, not failed; and
/// the next batches skip that connection for a while rather than each try again.
async fn a_batch_whose_own_connection_cannot_open_takes_a_pooled_one() {
    use sqlx::Connection;
    let db = Db::new(TestDatabase::Postgres).await;
    let mut look = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (database,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(&mut look)
        .await
        .unwrap();
    // Roles are the server's, shared by the tests (creating one takes a superuser) and
    // outliving their databases: one named after this test's database, dropped at the end
    // whether the test passes or fails (it runs as a task of its own for that).
    let role = format!("r_{database}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'limited'; ALTER DATABASE {database} OWNER TO {role}"
    )))
    .execute(&mut look)
    .await
    .unwrap();
    let outcome = tokio::spawn(batches_of_a_role_that_may_open_no_more(
        db.url.clone(),
        role.clone(),
    ))
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}"
    )))
    .execute(&mut look)
    .await
    .unwrap();
    if let Err(failed) = outcome {
        std::panic::resume_unwind(failed.into_panic());
    }
}

/// [`a_batch_whose_own_connection_cannot_open_takes_a_pooled_one`] itself: a store of `role`
/// on the database at `admin_url` (which the test's own look-ups use as it is).
async fn batches_of_a_role_that_may_open_no_more(admin_url: String, role: String) {
    use sqlx::Connection;
    use std::time::{Duration, Instant};
    let mut look = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let (scheme, rest) = admin_url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://{role}:limited@{host}");
    let store = Store::connect(&url, Keyring::generate(), Arc::new(SystemClock))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    // The role keeps the connections it has (the pool's) and may open no more.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE {role} CONNECTION LIMIT 0"
    )))
    .execute(&mut look)
    .await
    .unwrap();
    // A batch stored within `bound`.
    let stored_within = |name: &'static str, bound: Duration| {
        let store = &store;
        async move {
            let started = Instant::now();
            let stored = store
                .save_sync_batch(mailbox, batch_of(name, 2, None))
                .await;
            let took = started.elapsed();
            assert!(matches!(stored, Ok(2)), "{name}: {stored:?}");
            assert!(took < bound, "{name}: {took:?}");
        }
    };
    // The first batch tries its connection for a second (not the pool's five), then a pooled
    // one; the log says why the connection was not opened, in the server's words.
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    tracing::instrument::WithSubscriber::with_subscriber(
        stored_within("limited", Duration::from_secs(3)),
        subscriber,
    )
    .await;
    let logged = log.text();
    assert!(
        logged.contains("could not be opened") && logged.contains("too many connections for role"),
        "{logged}"
    );
    assert_eq!(
        batch_writers(&mut look).await,
        [],
        "no batch connection opened"
    );
    // The next goes to the pool at once: trying the connection again would take a second.
    stored_within("limited-next", Duration::from_millis(900)).await;
    // So does a large one, whole: on a pooled connection its INSERTs are `Any`'s padded
    // VALUES lists (the writers' arrays are their own driver's).
    let n = 4 * mailbridge_store::ROWS_PER_INSERT + 60;
    let stored = store
        .save_sync_batch(mailbox, batch_of("limited-large", n, None))
        .await
        .unwrap();
    assert_eq!(stored, n);
    assert_eq!(store.count_emails(mailbox).await.unwrap(), n as i64 + 4);
    assert_eq!(
        batch_writers(&mut look).await,
        [],
        "still no batch connection"
    );
    store.close().await;
}

/// What a test's subscriber logs, kept.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

/// PostgreSQL, where no foreign key ties emails to their mailbox (migration 0029): a mailbox
/// deleted while a batch of its emails is being written waits for the batch, then deletes
/// what the batch committed — no email is left without its mailbox. The batch is held after
/// its emails' INSERT, at the event log's lock.
#[tokio::test]
async fn a_mailbox_deleted_during_a_batch_keeps_none_of_its_emails() {
    use sqlx::Connection;
    let (db, store, mailbox, mut look, mut locker) = one_mailbox_on_postgres().await;
    let mut lock = locker.begin().await.unwrap();
    // `events::EVENT_LOCK`, taken by every transaction that appends events.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x4D42_4556_i64)
        .execute(&mut *lock)
        .await
        .unwrap();
    let batch = spawn_batch(&store, mailbox, "during");
    waiting_for_a_lock(&mut look, 1).await;
    assert_eq!(rows_of(&db, Some(mailbox)).await, 0, "not committed yet");
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_mailbox(&Actor::cli(), mailbox).await })
    };
    // The deletion waits behind the batch's lock on the mailbox's row.
    waiting_for_a_lock(&mut look, 2).await;
    lock.commit().await.unwrap();
    assert_eq!(batch.await.unwrap().unwrap(), 2);
    deleting.await.unwrap().unwrap();
    assert_eq!(rows_of(&db, Some(mailbox)).await, 0);
}

/// PostgreSQL: an email queued to send while its mailbox is being deleted — the deletion's
/// first statement run, not yet committed — waits for it, and is refused once it commits:
/// the queue locks the mailbox's row, which the foreign key's check did until migration 0029.
#[tokio::test]
async fn an_email_queued_as_its_mailbox_is_deleted_is_refused() {
    use sqlx::Connection;
    let (db, store, mailbox, mut look, mut deleter) = one_mailbox_on_postgres().await;
    let mut deleting = deleter.begin().await.unwrap();
    sqlx::query("DELETE FROM mailboxes WHERE id = $1")
        .bind(mailbox.to_string())
        .execute(&mut *deleting)
        .await
        .unwrap();
    let queued = {
        let store = store.clone();
        tokio::spawn(async move { store.queue_outgoing(mailbox, &outgoing(1), None).await })
    };
    waiting_for_a_lock(&mut look, 1).await;
    deleting.commit().await.unwrap();
    let queued = queued.await.unwrap();
    assert!(
        matches!(
            queued,
            Err(StoreError::NotFound {
                kind: "mailbox",
                ..
            })
        ),
        "{queued:?}"
    );
    assert_eq!(rows_of(&db, Some(mailbox)).await, 0);
}

/// PostgreSQL: a mailbox deleted while a batch that holds its lease (the fence's lock) has not
/// yet reached the mailbox's row waits for the batch, and both succeed, the batch's emails
/// deleted with the mailbox. Taking the mailbox's row first, the deletion deadlocked with such
/// a batch (it then wanted the lease's row, the batch the mailbox's; PostgreSQL aborts one of
/// the two). The batch is held at its INSERT, behind another transaction's uncommitted email
/// with the same key on the server.
#[tokio::test]
async fn a_mailbox_deleted_while_its_leased_batch_runs_waits_for_it() {
    use sqlx::Connection;
    let (db, store, mailbox, mut look, mut other) = one_mailbox_on_postgres().await;
    let ttl = std::time::Duration::from_secs(30);
    let node = store.register_node("a", "cloud", ttl).await.unwrap();
    let leases = store
        .balance_leases(&node, "cloud", ttl)
        .await
        .unwrap()
        .leases;
    let fence = mailbridge_store::Fence {
        node,
        epoch: leases[0].epoch,
    };
    let mut holding = other.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO emails (id, mailbox_id, direction, remote_key, content_sha256, raw, size, \
         conversation_id, created_at) VALUES ('held', $1, 'incoming', 'test/held/0', 'x', '', 0, 'c', 0)",
    )
    .bind(mailbox.to_string())
    .execute(&mut *holding)
    .await
    .unwrap();
    let batch = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .save_sync_batch(mailbox, batch_of("held", 2, Some(fence)))
                .await
        })
    };
    waiting_for_a_lock(&mut look, 1).await;
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_mailbox(&Actor::cli(), mailbox).await })
    };
    // The deletion waits behind the batch's lock on the lease's row.
    waiting_for_a_lock(&mut look, 2).await;
    holding.rollback().await.unwrap();
    let (stored, deleted) = (batch.await.unwrap(), deleting.await.unwrap());
    assert!(matches!(stored, Ok(2)), "{stored:?}");
    assert!(deleted.is_ok(), "{deleted:?}");
    assert_eq!(rows_of(&db, Some(mailbox)).await, 0);
}

/// A PostgreSQL store with one enabled mailbox, a connection to watch who waits for a lock,
/// and one to hold a transaction open beside the store's.
async fn one_mailbox_on_postgres() -> (
    Db,
    Store,
    mailbridge_core::MailboxId,
    sqlx::PgConnection,
    sqlx::PgConnection,
) {
    use sqlx::Connection;
    let db = Db::new(TestDatabase::Postgres).await;
    let store = db.open(Keyring::generate()).await;
    let mailbox = enabled_mailboxes(&store, 1).await[0];
    let look = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    (db, store, mailbox, look, other)
}

/// A batch of two emails for `mailbox`, stored in a task of its own.
fn spawn_batch(
    store: &Store,
    mailbox: mailbridge_core::MailboxId,
    name: &'static str,
) -> tokio::task::JoinHandle<mailbridge_store::Result<usize>> {
    let store = store.clone();
    tokio::spawn(async move {
        store
            .save_sync_batch(mailbox, batch_of(name, 2, None))
            .await
    })
}

/// The server processes of this database that wait for a lock, once there are `n` of them
/// (panics after 10 s).
async fn waiting_for_a_lock(look: &mut sqlx::PgConnection, n: usize) -> Vec<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY pid",
        )
        .fetch_all(&mut *look)
        .await
        .unwrap();
        if pids.len() >= n {
            return pids.into_iter().map(|(pid,)| pid).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} processes wait for a lock, not {n}",
            pids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The connections open for sync batches: their names and server processes.
async fn batch_writers(look: &mut sqlx::PgConnection) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT application_name, pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'mailbridge batches %' \
         ORDER BY application_name",
    )
    .fetch_all(look)
    .await
    .unwrap()
}

/// Writers commit batches into many mailboxes at once while a reader follows the log by its
/// cursor; afterwards, what the reader saw is every event there is, each once. A cursor
/// made of values taken before commit (like the `/emails` cursor, record ids made at insert)
/// would skip the lower value of two transactions that commit in the other order.
async fn a_reader_never_skips_an_event_that_commits_after_it_read_a_later_one() {
    let db = Db::new(TestDatabase::Postgres).await;
    let store = db.open(Keyring::generate()).await;
    let mailboxes = enabled_mailboxes(&store, 8).await;
    let start = store.event_head().await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut after = start;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store
                    .read_events(&mailbridge_store::EventQuery {
                        after,
                        limit: 7,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let empty = page.events.is_empty();
                seen.extend(page.events.into_iter().map(|e| e.id));
                after = page.next;
                if finished && empty {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = mailboxes
        .iter()
        .enumerate()
        .map(|(w, &mailbox)| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..25 {
                    // Batches of different sizes, so transactions take different times.
                    let n = 1 + (w + b) % 4;
                    store
                        .save_sync_batch(mailbox, batch_of(&format!("w{w}b{b}"), n, None))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let all: Vec<String> = store
        .read_events(&mailbridge_store::EventQuery {
            after: start,
            ..all_events()
        })
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.id)
        .collect();
    let expected: usize = (0..8)
        .map(|w| (0..25).map(|b| 1 + (w + b) % 4).sum::<usize>())
        .sum();
    assert_eq!(all.len(), expected);
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was read twice");
    let missed: Vec<&String> = all.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "the reader skipped {} of {} events",
        missed.len(),
        all.len()
    );
}

/// A clock the test moves forward.
struct Moved(std::sync::Mutex<chrono::Duration>);

impl Clock for Moved {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        SystemClock.now() + *self.0.lock().unwrap()
    }
}

const HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Claims `node`'s due deliveries (a round with nothing to record).
async fn claim(store: &Store, node: &str) -> Vec<mailbridge_store::DeliveryJob> {
    store.webhook_round(node, &[], 32, HOLD).await.unwrap().jobs
}

/// Records `results` for `node` (the next round): how many were written.
async fn record(
    store: &Store,
    node: &str,
    results: &[(
        mailbridge_store::DeliveryJob,
        mailbridge_store::Attempt,
        mailbridge_store::Verdict,
    )],
) -> usize {
    store
        .webhook_round(node, results, 32, HOLD)
        .await
        .unwrap()
        .recorded
}

/// One claim-attempt-record round for `hook`'s due deliveries, each answered `status`.
async fn webhook_round(store: &Store, clock: &Moved, status: u16) -> usize {
    use mailbridge_store::{Attempt, Verdict};
    let jobs = claim(store, "n1").await;
    let at = clock.now();
    let results: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let verdict = if status < 300 {
                Verdict::Delivered
            } else {
                Verdict::Retry(at + chrono::Duration::seconds(5))
            };
            let attempt = Attempt {
                at,
                duration_ms: 3,
                status_code: Some(status),
                error: None,
                excerpt: None,
            };
            (job, attempt, verdict)
        })
        .collect();
    record(store, "n1", &results).await
}

async fn a_webhook_failing_for_five_days_is_disabled_and_a_success_ends_the_run(
    kind: TestDatabase,
) {
    let db = Db::new(kind).await;
    let clock = Arc::new(Moved(std::sync::Mutex::new(chrono::Duration::zero())));
    let store = Store::connect(&db.url, Keyring::generate(), clock.clone())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let cli = Actor::cli();
    let (admin, _) = store
        .create_user(
            &cli,
            &EmailAddress::parse("ops@example.com", "email").unwrap(),
            Role::Admin,
        )
        .await
        .unwrap();
    let draft: mailbridge_core::WebhookDraft =
        serde_json::from_value(serde_json::json!({"url": "https://crm.example.com/hooks"}))
            .unwrap();
    let (hook, _) = store
        .create_webhook(&cli, &draft.resolve(None).unwrap())
        .await
        .unwrap();
    let advance = |by: chrono::Duration| *clock.0.lock().unwrap() += by;

    // A failure starts the run; a later success ends it.
    store.send_test_webhook(&cli, &hook.id).await.unwrap();
    assert_eq!(webhook_round(&store, &clock, 503).await, 1);
    let started = store.get_webhook(&hook.id).await.unwrap().failing_since;
    assert!(started.is_some());
    advance(chrono::Duration::days(4));
    assert_eq!(webhook_round(&store, &clock, 204).await, 1);
    assert_eq!(
        store.get_webhook(&hook.id).await.unwrap().failing_since,
        None
    );

    // A round with a failure and a success: the endpoint answers, so no run starts.
    store.send_test_webhook(&cli, &hook.id).await.unwrap();
    store.send_test_webhook(&cli, &hook.id).await.unwrap();
    let jobs = claim(&store, "n1").await;
    assert_eq!(jobs.len(), 2);
    let at = clock.now();
    let attempt = |status| mailbridge_store::Attempt {
        at,
        duration_ms: 3,
        status_code: Some(status),
        error: None,
        excerpt: None,
    };
    let mut jobs = jobs.into_iter();
    let results = vec![
        (
            jobs.next().unwrap(),
            attempt(500),
            mailbridge_store::Verdict::Retry(at + chrono::Duration::seconds(5)),
        ),
        (
            jobs.next().unwrap(),
            attempt(200),
            mailbridge_store::Verdict::Delivered,
        ),
    ];
    assert_eq!(record(&store, "n1", &results).await, 2);
    assert_eq!(
        store.get_webhook(&hook.id).await.unwrap().failing_since,
        None
    );

    // Another node's claim is not this node's to record.
    advance(chrono::Duration::minutes(1));
    let jobs = claim(&store, "n2").await;
    assert_eq!(jobs.len(), 1, "the failed one is due again");
    let stolen: Vec<_> = jobs
        .into_iter()
        .map(|job| (job, attempt(200), mailbridge_store::Verdict::Delivered))
        .collect();
    assert_eq!(record(&store, "n1", &stolen).await, 0);
    assert_eq!(record(&store, "n2", &stolen).await, 1);

    // Failing from now on: just under five days later it is still on; past five, off, and
    // every admin is told.
    store.send_test_webhook(&cli, &hook.id).await.unwrap();
    assert_eq!(webhook_round(&store, &clock, 500).await, 1);
    advance(chrono::Duration::days(5) - chrono::Duration::minutes(1));
    assert_eq!(webhook_round(&store, &clock, 500).await, 1);
    let hook_now = store.get_webhook(&hook.id).await.unwrap();
    assert!(hook_now.spec.enabled, "{hook_now:?}");
    advance(chrono::Duration::minutes(2));
    assert_eq!(webhook_round(&store, &clock, 500).await, 1);
    let hook_now = store.get_webhook(&hook.id).await.unwrap();
    assert!(!hook_now.spec.enabled);
    let reason = hook_now.disabled_reason.unwrap_or_default();
    assert!(reason.contains("5 days"), "{reason}");
    let alerts = store.user_alerts(admin.id, false).await.unwrap();
    assert!(
        alerts.iter().any(|a| a.kind == "webhook_disabled"),
        "{alerts:?}"
    );
}
