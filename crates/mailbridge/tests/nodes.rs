//! Several `mailbridge serve` processes on one real PostgreSQL, against a real Dovecot: they
//! share the mailboxes evenly; a node killed with SIGKILL has its mailboxes taken over within
//! the lease time with no message lost or stored twice and no email sent twice; a node paused
//! past its lease writes nothing after it resumes; an `email_router` mailbox is only ever
//! worked by its group.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge_core::message::Party;
use mailbridge_core::{
    Clock, EmailAddress, MailboxDraft, MailboxId, ProfileDraft, Role, SecretChange, SystemClock,
};
use mailbridge_store::{Actor, EmailFilter, Keyring, NodeInfo, Store, TestOutcome};
use mailbridge_sync::outgoing::{Outgoing, compose};
use mailbridge_testkit::{Dovecot, OAuthProvider, Postgres};

const PASSWORD: &str = "node-test-password";
/// Short, so takeovers happen within a test's patience.
const LEASE_TTL: Duration = Duration::from_secs(3);

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    key: String,
    store: Store,
    dovecot: Dovecot,
    _oauth: OAuthProvider,
    mailboxes: Vec<(MailboxId, String)>,
}

struct Node {
    name: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// A database with `n` password mailboxes on one Dovecot, enabled (as after Test &
    /// Enable); the last `routed` of them use `email_router` with the group `office`.
    async fn start(n: usize, routed: usize) -> Self {
        let users: Vec<(String, String)> = (0..n)
            .map(|i| (format!("u{i}@example.com"), PASSWORD.to_owned()))
            .collect();
        let user_refs: Vec<(&str, &str)> = users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        let oauth = OAuthProvider::start().unwrap();
        let dovecot = Dovecot::start(&oauth, &user_refs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), dovecot.ca_pem()).unwrap();
        let url = Postgres::shared().unwrap().database().await.unwrap();
        let keyring = Keyring::generate();
        let key = keyring.export().as_str().to_owned();
        let store = Store::connect(&url, keyring, Arc::new(SystemClock))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let cli = Actor::cli();
        let (owner, _) = store
            .create_user(
                &cli,
                &EmailAddress::parse("ops@example.com", "e").unwrap(),
                Role::Admin,
            )
            .await
            .unwrap();
        let profile: ProfileDraft = serde_json::from_value(serde_json::json!({
            "name": "Dovecot", "auth": "password",
            "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": dovecot.ports.imaps, "security": "tls"},
            "outgoing": {"host": "127.0.0.1", "port": dovecot.ports.submissions, "security": "tls"},
        }))
        .unwrap();
        let (spec, secret) = profile.resolve(None).unwrap();
        let profile = store.create_profile(&cli, &spec, secret).await.unwrap();
        let mut mailboxes = Vec::new();
        for (i, (user, _)) in users.iter().enumerate() {
            let routed = i >= n - routed;
            let mut draft = serde_json::json!({"email": user, "profile_id": profile.id});
            if routed {
                draft["incoming_method"] = "email_router".into();
                draft["outgoing_method"] = "email_router".into();
                draft["router_group"] = "office".into();
            }
            let draft: MailboxDraft = serde_json::from_value(draft).unwrap();
            let spec = draft.resolve(None, owner.id).unwrap();
            let m = store
                .create_mailbox(&cli, &spec, SecretChange::Set(PASSWORD.to_owned().into()))
                .await
                .unwrap();
            let ok = TestOutcome::success();
            store
                .record_test(&cli, m.id, Some(&ok), Some(&ok), true)
                .await
                .unwrap();
            mailboxes.push((m.id, user.clone()));
        }
        Self {
            dir,
            url,
            key,
            store,
            dovecot,
            _oauth: oauth,
            mailboxes,
        }
    }

    fn node(&self, name: &str, group: &str) -> Node {
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mailbridge"))
            .arg("serve")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("MAILBRIDGE_LOG", "info,mailbridge_sync=debug")
            .env("MAILBRIDGE_DATA_DIR", self.dir.path().join(name))
            .env("MAILBRIDGE_DATABASE_URL", &self.url)
            .env("MAILBRIDGE_MASTER_KEY", &self.key)
            .env("MAILBRIDGE_LISTEN", "127.0.0.1:0")
            .env("MAILBRIDGE_TLS_CA_FILE", self.dir.path().join("ca.pem"))
            .env("MAILBRIDGE_NODE_NAME", name)
            .env("MAILBRIDGE_NODE_GROUP", group)
            .env("MAILBRIDGE_LEASE_TTL_MS", LEASE_TTL.as_millis().to_string())
            .env("MAILBRIDGE_SYNC_SCAN_INTERVAL_MS", "200")
            .env("MAILBRIDGE_SYNC_STAGGER_MS", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Node {
            name: name.to_owned(),
            child,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Running nodes by name, with the mailboxes each holds.
    async fn holdings(&self) -> HashMap<String, NodeInfo> {
        self.store
            .list_nodes()
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.stopped_at.is_none())
            .map(|n| (n.name.clone(), n))
            .collect()
    }

    /// Waits until the named nodes hold exactly these many mailboxes; returns the time taken.
    async fn wait_for_shares(&self, want: &[(&str, i64)], within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.holdings().await;
            if want
                .iter()
                .all(|(name, n)| now.get(*name).map(|i| i.mailboxes) == Some(*n))
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "shares not reached within {within:?}: want {want:?}, have {:?}\n{}",
                now.values()
                    .map(|n| (n.name.clone(), n.mailboxes))
                    .collect::<Vec<_>>(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {}\n", path.display());
                for line in tail.into_iter().rev() {
                    out += line;
                    out.push('\n');
                }
            }
        }
        out
    }

    fn deliver(&self, round: usize, which: &[(MailboxId, String)]) {
        for (_, user) in which {
            let m = format!(
                "From: x@example.com\r\nTo: {user}\r\nSubject: round {round}\r\nMessage-ID: <r{round}-{user}>\r\n\r\nhello\r\n"
            );
            self.dovecot.deliver(user, m.as_bytes()).unwrap();
        }
    }

    /// Waits until each mailbox has exactly `n` incoming emails stored (never more).
    async fn wait_for_emails(&self, which: &[(MailboxId, String)], n: usize) {
        let started = Instant::now();
        loop {
            let mut all = true;
            for (id, user) in which {
                let have = self.incoming(*id).await.len();
                assert!(have <= n, "{user} has {have} emails, more than {n}");
                all &= have == n;
            }
            if all {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not every mailbox has {n} emails\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn emails(&self, mailbox: MailboxId) -> Vec<mailbridge_store::EmailRecord> {
        let filter = EmailFilter {
            mailbox: Some(mailbox),
            ..EmailFilter::default()
        };
        self.store.list_emails(&filter, None, 200).await.unwrap()
    }

    async fn incoming(&self, mailbox: MailboxId) -> Vec<mailbridge_store::EmailRecord> {
        let mut emails = self.emails(mailbox).await;
        emails.retain(|e| e.direction == "incoming");
        emails
    }
}

fn signal(node: &Node, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", node.name);
}

fn node_id(holdings: &HashMap<String, NodeInfo>, name: &str) -> String {
    holdings[name].id.clone()
}

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
        let mail = Outgoing {
            to: vec![Party {
                address: "bob@example.com".into(),
                name: None,
            }],
            cc: Vec::new(),
            subject: format!("from {user}"),
            text_body: Some("hi".into()),
            html_body: None,
            in_reply_to: None,
            tracking_token: false,
        };
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
    let b_mailboxes: Vec<(MailboxId, String)> = {
        let mut list = Vec::new();
        for m in &c.mailboxes {
            let record = c.store.get_mailbox(m.0).await.unwrap();
            if record.lease.as_ref().map(|(n, _)| n.as_str()) == Some("node-b") {
                list.push(m.clone());
            }
        }
        list
    };
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
    assert!(
        took <= LEASE_TTL + Duration::from_secs(3),
        "took {took:?} for a {LEASE_TTL:?} lease"
    );

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
    c.wait_for_shares(
        &[("node-a", 8), ("office-1", 2)],
        LEASE_TTL * 3 + Duration::from_secs(5),
    )
    .await;
    // Mail arrives while it is paused; its IDLE sessions will report it when it resumes.
    c.deliver(2, &c.mailboxes);
    c.wait_for_emails(&c.mailboxes, 2).await;
    // Drained while paused, it may not take any mailbox back: whatever it writes after
    // resuming would be a write on a lease it lost.
    assert_eq!(c.store.set_draining("node-b", true).await.unwrap(), 1);
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
    assert_eq!(c.store.set_draining("node-b", false).await.unwrap(), 1);
    c.wait_for_shares(
        &[("node-a", 4), ("node-b", 4), ("office-1", 2)],
        LEASE_TTL * 3 + Duration::from_secs(5),
    )
    .await;
    drop((a, b, office));
}
