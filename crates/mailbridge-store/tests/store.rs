//! The store on a real SQLite file: secrets at rest, key rotation, the profile mailbox limit.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;

use mailbridge_core::{EmailAddress, MailboxDraft, ProfileDraft, Role, SecretChange, SystemClock};
use mailbridge_store::{Actor, Keyring, Store, StoreError};
use secrecy::ExposeSecret;

const SECRET: &str = "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et-7f3a9";

async fn open(dir: &std::path::Path, keyring: Keyring) -> Store {
    let url = format!("sqlite://{}?mode=rwc", dir.join("mailbridge.db").display());
    let store = Store::connect(&url, keyring, Arc::new(SystemClock))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

fn gmail_draft(name: &str) -> ProfileDraft {
    serde_json::from_value(serde_json::json!({
        "name": name, "preset": "gmail",
        "oauth": {"client_id": "123.apps.googleusercontent.com", "client_secret": SECRET}
    }))
    .unwrap()
}

/// Every byte the database keeps on disk: the main file and the write-ahead log.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["mailbridge.db", "mailbridge.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn client_secret_is_encrypted_at_rest_and_survives_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("master.key");
    let store = open(dir.path(), Keyring::load_or_create(&keyfile).unwrap()).await;
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
    let bytes = database_bytes(dir.path());
    assert!(
        contains(&bytes, "123.apps.googleusercontent.com"),
        "the test reads the real file"
    );
    assert!(
        !contains(&bytes, SECRET),
        "the client secret is in the database file in clear"
    );
    store.close().await;

    // Rotate: the new key in front re-encrypts everything; then the old key can go.
    let old = Keyring::load_or_create(&keyfile).unwrap();
    let old_id = old.active_id().to_owned();
    let rotated = old.rotated_to(Keyring::generate());
    let new_id = rotated.active_id().to_owned();
    let store = open(dir.path(), rotated).await;
    assert_eq!(store.reencrypt_secrets().await.unwrap(), 1);
    store.close().await;

    let only_old = Keyring::load_or_create(&keyfile).unwrap();
    let store = open(dir.path(), only_old).await;
    match store.profile_client_secret(profile.id).await {
        Err(StoreError::Crypto(e)) => assert!(e.to_string().contains(&new_id), "{e}"),
        other => panic!("the old key alone must not read a rotated secret: {other:?}"),
    }
    store.close().await;
    assert_ne!(old_id, new_id);
}

#[tokio::test]
async fn a_gmail_profile_takes_exactly_100_mailboxes_even_when_raced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Keyring::generate()).await;
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
