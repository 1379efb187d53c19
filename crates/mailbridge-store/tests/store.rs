//! The store on both backends — a real SQLite file and a real PostgreSQL database: secrets
//! at rest, key rotation, the profile mailbox limit under a race. Each test runs once per
//! backend (`sqlite::…` and `postgres::…`).
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;

use mailbridge_core::{EmailAddress, MailboxDraft, ProfileDraft, Role, SecretChange, SystemClock};
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
);

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

async fn a_gmail_profile_takes_exactly_100_mailboxes_even_when_raced(kind: TestDatabase) {
    let db = Db::new(kind).await;
    let store = db.open(Keyring::generate()).await;
    let actor = Actor::cli();
    let (owner, _) = store
        .create_user(
            &actor,
            &EmailAddress::parse("owner@example.com", "e").unwrap(),
            Role::User,
        )
        .await
        .unwrap();
    let (spec, secret) = gmail_draft("Gmail A").resolve(None).unwrap();
    let profile = store.create_profile(&actor, &spec, secret).await.unwrap();

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
