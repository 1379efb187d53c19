//! A database with mailboxes on a real Dovecot and `mailbridge serve` nodes started against it:
//! shared by the multi-node tests (`tests/nodes.rs`) and the takeover benchmark
//! (`benches/takeover.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge_core::{
    EmailAddress, MailboxDraft, MailboxId, ProfileDraft, Role, SecretChange, SystemClock,
};
use mailbridge_store::{Actor, EmailFilter, Keyring, NodeInfo, Store, TestOutcome};
use mailbridge_testkit::{Dovecot, OAuthProvider, Postgres};

pub const PASSWORD: &str = "node-test-password";
/// Short, so takeovers happen within a test's patience.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

pub struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    key: String,
    /// The admin's API token.
    pub token: String,
    pub store: Store,
    pub dovecot: Dovecot,
    _oauth: OAuthProvider,
    pub mailboxes: Vec<(MailboxId, String)>,
}

pub struct Node {
    pub name: String,
    pub child: Child,
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
    pub async fn start(n: usize, routed: usize) -> Self {
        let url = Postgres::shared().unwrap().database().await.unwrap();
        Self::start_on(Some(url), n, routed).await
    }

    /// Like [`Cluster::start`], on the database at `url`, or (`None`) a SQLite file in the
    /// cluster's folder.
    pub async fn start_on(url: Option<String>, n: usize, routed: usize) -> Self {
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
        let url = url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("mailbridge.db").display()
            )
        });
        let keyring = Keyring::generate();
        let key = keyring.export().as_str().to_owned();
        let store = Store::connect(&url, keyring, Arc::new(SystemClock))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let cli = Actor::cli();
        let (owner, token) = store
            .create_user(
                &cli,
                &EmailAddress::parse("ops@example.com", "e").unwrap(),
                Role::Admin,
            )
            .await
            .unwrap();
        let profile: ProfileDraft = serde_json::from_value(serde_json::json!({
            "name": "Dovecot", "auth": "password", "max_mailboxes": n.max(1000), "max_connections": n.max(1000) * 2,
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
            token: token.reveal().to_owned(),
            store,
            dovecot,
            _oauth: oauth,
            mailboxes,
        }
    }

    pub fn node(&self, name: &str, group: &str) -> Node {
        self.node_with_lease(name, group, LEASE_TTL)
    }

    pub fn node_with_lease(&self, name: &str, group: &str, lease_ttl: Duration) -> Node {
        let child = self
            .serve_command(name, group, lease_ttl)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Node {
            name: name.to_owned(),
            child,
        }
    }

    /// A `cloud` node with `env` added to its environment, once it listens; its API's base URL.
    /// Its log is appended to, so a restarted node's whole story stays in one file.
    pub fn serve(&self, name: &str, env: &[(&str, &str)]) -> (Node, String) {
        let mut cmd = self.serve_command(name, mailbridge_core::DEFAULT_NODE_GROUP, LEASE_TTL);
        cmd.envs(env.iter().copied());
        listening(cmd, name, || self.logs())
    }

    /// A `cloud` node at the service's own defaults for what the tests shorten (the lease
    /// time, the scan interval, the stagger, the log level), once it listens; its API's base
    /// URL. For the benchmarks that measure what an operator gets.
    pub fn serve_at_defaults(&self, name: &str) -> (Node, String) {
        let mut cmd = self.serve_command(name, mailbridge_core::DEFAULT_NODE_GROUP, LEASE_TTL);
        at_defaults(&mut cmd);
        listening(cmd, name, || self.logs())
    }

    /// A `cloud` node at the service's defaults (as [`Cluster::serve_at_defaults`]), but for
    /// the lease time when one is given.
    pub fn node_at_defaults(&self, name: &str, lease_ttl: Option<Duration>) -> Node {
        let mut cmd = self.serve_command(name, mailbridge_core::DEFAULT_NODE_GROUP, LEASE_TTL);
        at_defaults(&mut cmd);
        if let Some(ttl) = lease_ttl {
            cmd.env("MAILBRIDGE_LEASE_TTL_MS", ttl.as_millis().to_string());
        }
        Node {
            name: name.to_owned(),
            child: cmd.stdout(Stdio::null()).spawn().unwrap(),
        }
    }

    fn serve_command(&self, name: &str, group: &str, lease_ttl: Duration) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbridge"));
        cmd.arg("serve")
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
            .env("MAILBRIDGE_LEASE_TTL_MS", lease_ttl.as_millis().to_string())
            .env("MAILBRIDGE_SYNC_SCAN_INTERVAL_MS", "200")
            .env("MAILBRIDGE_SYNC_STAGGER_MS", "0")
            // Test receivers are on this machine; a short timeout keeps webhook claims short.
            .env("MAILBRIDGE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true")
            .env("MAILBRIDGE_WEBHOOK_TIMEOUT_MS", "1000")
            .stderr(log);
        cmd
    }

    /// The cluster's folder (node data folders and logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The master key every node and admin command uses (`MAILBRIDGE_MASTER_KEY`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A `mailbridge` admin command against the cluster's database; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "mailbridge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A `mailbridge` admin command against the cluster's database, however it ends.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mailbridge"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("MAILBRIDGE_DATABASE_URL", &self.url)
            .env("MAILBRIDGE_MASTER_KEY", &self.key)
            .env("MAILBRIDGE_LEASE_TTL_MS", LEASE_TTL.as_millis().to_string())
            .output()
            .unwrap()
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The cluster's mailboxes whose lease the node named `node` holds now.
    pub async fn held_by(&self, node: &str) -> Vec<(MailboxId, String)> {
        let mut held = Vec::new();
        for m in &self.mailboxes {
            let record = self.store.get_mailbox(m.0).await.unwrap();
            if record.lease.as_ref().map(|(n, _)| n.as_str()) == Some(node) {
                held.push(m.clone());
            }
        }
        held
    }

    /// Running nodes by name, with the mailboxes each holds.
    pub async fn holdings(&self) -> HashMap<String, NodeInfo> {
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
    pub async fn wait_for_shares(&self, want: &[(&str, i64)], within: Duration) -> Duration {
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

    pub fn logs(&self) -> String {
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

    pub fn deliver(&self, round: usize, which: &[(MailboxId, String)]) {
        for (_, user) in which {
            let m = format!(
                "From: x@example.com\r\nTo: {user}\r\nSubject: round {round}\r\nMessage-ID: <r{round}-{user}>\r\n\r\nhello\r\n"
            );
            self.dovecot.deliver(user, m.as_bytes()).unwrap();
        }
    }

    /// Waits until each mailbox has exactly `n` incoming emails stored (never more).
    pub async fn wait_for_emails(&self, which: &[(MailboxId, String)], n: usize) {
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

    pub async fn emails(&self, mailbox: MailboxId) -> Vec<mailbridge_store::EmailRecord> {
        let filter = EmailFilter {
            mailbox: Some(mailbox),
            ..EmailFilter::default()
        };
        self.store.list_emails(&filter, None, 200).await.unwrap()
    }

    pub async fn incoming(&self, mailbox: MailboxId) -> Vec<mailbridge_store::EmailRecord> {
        let mut emails = self.emails(mailbox).await;
        emails.retain(|e| e.direction == "incoming");
        emails
    }
}

/// Leaves what the tests shorten (the lease time, the scan interval, the stagger, the log
/// level) at the service's own defaults.
fn at_defaults(cmd: &mut Command) {
    for key in [
        "MAILBRIDGE_LEASE_TTL_MS",
        "MAILBRIDGE_SYNC_SCAN_INTERVAL_MS",
        "MAILBRIDGE_SYNC_STAGGER_MS",
        "MAILBRIDGE_LOG",
    ] {
        cmd.env_remove(key);
    }
}

/// Spawns `cmd` and waits for the line saying where it listens.
fn listening(mut cmd: Command, name: &str, logs: impl Fn() -> String) -> (Node, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("mailbridge listening on ")
        .unwrap_or_else(|| panic!("{name} did not start: {line:?}\n{}", logs()))
        .to_owned();
    let node = Node {
        name: name.to_owned(),
        child,
    };
    (node, base)
}

pub fn signal(node: &Node, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", node.name);
}

pub fn node_id(holdings: &HashMap<String, NodeInfo>, name: &str) -> String {
    holdings[name].id.clone()
}
