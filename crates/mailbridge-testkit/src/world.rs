//! [`MailWorld`]: Mailbridge with real peers around it — the OAuth provider, Dovecot — an
//! admin and a user (Ann), and helpers to make profiles and mailboxes and sign them in the
//! way a person would.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test fixtures: a failure is the test failing

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{ApiClient, AppOptions, Dovecot, OAuthProvider, TestApp};
use mailbridge_core::Role;

pub struct MailWorld {
    pub app: TestApp,
    pub oauth: OAuthProvider,
    pub dovecot: Dovecot,
    pub api: ApiClient,
    pub admin: String,
    pub ann_id: String,
    pub ann: String,
    _dir: tempfile::TempDir,
}

impl MailWorld {
    /// Starts the peers and the app; `options` may set an engine (the CA is filled in).
    pub async fn start(options: AppOptions) -> Self {
        Self::start_in(&std::env::temp_dir(), options).await
    }

    /// Like [`MailWorld::start`], with the app's data in a new folder inside `parent` (a
    /// small file system, to fill it).
    pub async fn start_in(parent: &std::path::Path, options: AppOptions) -> Self {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let oauth = OAuthProvider::start().unwrap();
        let dovecot = Dovecot::start(&oauth, &[("pw@example.com", "hunter2")]).unwrap();
        let options = AppOptions {
            extra_ca_pem: Some(dovecot.ca_pem().to_owned()),
            ..options
        };
        let app = TestApp::start_with(dir.path(), options).await.unwrap();
        let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
        let (ann_id, ann) = app.user("ann@example.com", Role::User).await.unwrap();
        Self {
            app,
            oauth,
            dovecot,
            api: ApiClient::default(),
            admin,
            ann_id,
            ann,
            _dir: dir,
        }
    }

    /// Where the app keeps its data (the SQLite file, the key file).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A Gmail-preset profile whose servers and OAuth endpoints are the local peers.
    pub async fn gmail_like(
        &self,
        name: &str,
        incoming: Value,
        outgoing: Value,
        extra: Value,
    ) -> String {
        let oauth = self.oauth.profile_oauth("client", "secret");
        self.preset_like("gmail", oauth, name, incoming, outgoing, extra)
            .await
    }

    /// A Microsoft-preset profile (its scopes, no userinfo endpoint) whose servers and OAuth
    /// endpoints are the local peers.
    pub async fn microsoft_like(
        &self,
        name: &str,
        incoming: Value,
        outgoing: Value,
        extra: Value,
    ) -> String {
        let oauth = self.oauth.microsoft_oauth("client", "secret");
        self.preset_like("microsoft", oauth, name, incoming, outgoing, extra)
            .await
    }

    async fn preset_like(
        &self,
        preset: &str,
        oauth: Value,
        name: &str,
        incoming: Value,
        outgoing: Value,
        extra: Value,
    ) -> String {
        let mut body = json!({
            "name": name, "preset": preset,
            "incoming": incoming, "outgoing": outgoing, "oauth": oauth,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, p) = self
            .api
            .post(&self.app, "/api/v1/server-profiles", &self.admin, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        p["id"].as_str().unwrap().to_owned()
    }

    /// A password profile on the local Dovecot (IMAPS + submissions): its id.
    pub async fn password_profile(&self, name: &str) -> String {
        self.password_profile_with(name, self.imaps()).await
    }

    /// A password profile on the local Dovecot with this incoming server (+ submissions).
    pub async fn password_profile_with(&self, name: &str, incoming: Value) -> String {
        self.password_profile_at(name, incoming, self.submissions(), json!({}))
            .await
    }

    /// A password profile with these servers and `extra` fields (limits, intervals): its id.
    pub async fn password_profile_at(
        &self,
        name: &str,
        incoming: Value,
        outgoing: Value,
        extra: Value,
    ) -> String {
        let mut body = json!({
            "name": name, "auth": "password", "incoming": incoming, "outgoing": outgoing,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, p) = self
            .api
            .post(&self.app, "/api/v1/server-profiles", &self.admin, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        p["id"].as_str().unwrap().to_owned()
    }

    /// The tokens stored for a signed-in mailbox.
    pub async fn stored_tokens(&self, mailbox: &str) -> mailbridge_store::StoredTokens {
        self.app
            .store
            .mailbox_tokens(mailbox.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// An IMAPS session for a signed-in mailbox, with its stored token.
    pub async fn imap_session(&self, mailbox: &str) -> mailbridge_proto::imap::ImapSession {
        self.imap_session_via(mailbox, self.dovecot.ports.imaps)
            .await
    }

    /// [`MailWorld::imap_session`] through `port` on 127.0.0.1 (a proxy in front of Dovecot).
    pub async fn imap_session_via(
        &self,
        mailbox: &str,
        port: u16,
    ) -> mailbridge_proto::imap::ImapSession {
        use mailbridge_proto::{Credentials, Endpoint, Security, TlsSettings};
        let tokens = self.stored_tokens(mailbox).await;
        let creds = Credentials::OAuth {
            user: tokens.account_email,
            token: tokens.access_token,
        };
        let tls = TlsSettings::new(Some(self.dovecot.ca_pem().as_bytes())).unwrap();
        let endpoint = Endpoint::new("127.0.0.1", port, Security::Tls);
        mailbridge_proto::imap::ImapSession::login(&endpoint, &tls, &creds)
            .await
            .unwrap()
    }

    pub fn imaps(&self) -> Value {
        json!({"protocol": "imap", "host": "127.0.0.1", "port": self.dovecot.ports.imaps, "security": "tls"})
    }

    pub fn submissions(&self) -> Value {
        json!({"host": "127.0.0.1", "port": self.dovecot.ports.submissions, "security": "tls"})
    }

    pub async fn mailbox(&self, email: &str, owner: &str, profile: &str, extra: Value) -> String {
        let mut body = json!({"owner_user_id": owner, "email": email, "profile_id": profile});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, m) = self
            .api
            .post(&self.app, "/api/v1/mailboxes", &self.admin, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{m}");
        m["id"].as_str().unwrap().to_owned()
    }

    /// Enables a mailbox as if Test & Enable had passed earlier (its server may have changed
    /// since: a test of what the engine does then).
    pub async fn enable_as_tested(&self, mailbox: &str) {
        self.app
            .store
            .record_test(
                &mailbridge_store::Actor::cli(),
                mailbox.parse().unwrap(),
                None,
                None,
                true,
            )
            .await
            .unwrap();
    }

    /// Signs a mailbox in through the real flow: start, the provider's consent, the callback.
    pub async fn sign_in(&self, mailbox: &str, token: &str) {
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let start = no_redirects
            .get(format!(
                "{}/api/v1/mailboxes/{mailbox}/oauth/start",
                self.app.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let consent = start.headers()["location"].to_str().unwrap().to_owned();
        let page = reqwest::get(consent).await.unwrap();
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "{}",
            page.text().await.unwrap()
        );
    }

    /// Ann's mailbox on a new password profile of this Dovecot (password `hunter2`), not yet
    /// tested: its id.
    pub async fn ann_password_mailbox(&self) -> String {
        let profile = self.password_profile("Local").await;
        self.ann_password_mailbox_on(&profile).await
    }

    /// Ann's mailbox on `profile` (a password profile) with password `hunter2`, not yet
    /// tested: its id.
    pub async fn ann_password_mailbox_on(&self, profile: &str) -> String {
        self.mailbox(
            "ann@example.com",
            &self.ann_id,
            profile,
            json!({"password": "hunter2"}),
        )
        .await
    }

    /// Ann's mailbox (with `extra` fields) on a new Gmail-like profile of this Dovecot, signed
    /// in and enabled by Test & Enable: (profile id, mailbox id).
    pub async fn ann_enabled(&self, extra: Value) -> (String, String) {
        self.ann_enabled_via(self.imaps(), extra).await
    }

    /// [`MailWorld::ann_enabled`] with this incoming server (a proxy, POP3).
    pub async fn ann_enabled_via(&self, incoming: Value, extra: Value) -> (String, String) {
        let profile = self
            .gmail_like("Gmail here", incoming, self.submissions(), json!({}))
            .await;
        let mailbox = self
            .mailbox("ann@example.com", &self.ann_id, &profile, extra)
            .await;
        self.sign_in(&mailbox, &self.ann).await;
        let tested = self.test(&mailbox, &self.ann).await;
        assert_eq!(tested["enabled"], true, "{tested:#}");
        (profile, mailbox)
    }

    /// Polls `GET path` as `token` every 100 ms until `done` holds for the answer, and returns
    /// it; fails after `secs` seconds, saying `what` was awaited and showing the last answer.
    pub async fn poll(
        &self,
        path: &str,
        token: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = std::time::Instant::now();
        loop {
            let (_, answer) = self.api.get(&self.app, path, token).await;
            if done(&answer) {
                return answer;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(secs),
                "{what}: not after {secs} s; {path} answers {answer:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Records, as a long first sync's batches would, a pass over the folder `Archive` under
    /// way: 40 of 100 new messages read (120 on the server), begun at `started_at`.
    pub async fn archive_pass_under_way(
        &self,
        mailbox: &str,
        started_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.app
            .store
            .save_sync_batch(
                mailbox.parse().unwrap(),
                mailbridge_store::SyncBatch {
                    position: Some(mailbridge_store::FolderPosition {
                        folder: "Archive".into(),
                        uid_validity: 7,
                        last_uid: 40,
                        highest_modseq: None,
                        messages: None,
                    }),
                    progress: Some(mailbridge_store::PassProgress {
                        messages: 120,
                        total: 100,
                        done: 40,
                        started_at,
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    /// Asserts the mailbox is enabled with no failed attempt counted.
    pub async fn assert_healthy(&self, mailbox: &str) {
        let (_, m) = self
            .api
            .get(
                &self.app,
                &format!("/api/v1/mailboxes/{mailbox}"),
                &self.admin,
            )
            .await;
        assert_eq!(m["enabled"], true, "{m:#}");
        assert_eq!(m["items_failed"], 0, "{m:#}");
    }

    /// An engine configuration for tests: quick scans and backoff, no stagger.
    pub fn fast_engine() -> mailbridge_sync::EngineConfig {
        use std::time::Duration;
        mailbridge_sync::EngineConfig {
            scan_interval: Duration::from_millis(200),
            stagger: Duration::ZERO,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            full_check: Duration::from_secs(60),
            folder_check: Duration::from_secs(1),
            mail_timeout: Duration::from_secs(20),
            ..mailbridge_sync::EngineConfig::default()
        }
    }

    pub async fn test(&self, mailbox: &str, token: &str) -> Value {
        let (status, m) = self
            .api
            .post(
                &self.app,
                &format!("/api/v1/mailboxes/{mailbox}/test-and-enable"),
                token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{m}");
        m
    }
}
