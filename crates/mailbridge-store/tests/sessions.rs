//! Console sessions on both backends — a real SQLite file and a real PostgreSQL database: the
//! token is never stored, expiry and sign-out end a session, and resetting a user ends all of
//! theirs.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use mailbridge_core::{Clock, EmailAddress, Role};
use mailbridge_store::{Actor, Keyring, Store};
use mailbridge_testdb::TestDatabase;

struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn sqlite_a_session_names_its_user_until_it_expires_or_is_ended() {
    a_session_names_its_user_until_it_expires_or_is_ended(TestDatabase::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_session_names_its_user_until_it_expires_or_is_ended() {
    a_session_names_its_user_until_it_expires_or_is_ended(TestDatabase::Postgres).await;
}

async fn a_session_names_its_user_until_it_expires_or_is_ended(kind: TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let start = DateTime::parse_from_rfc3339("2026-01-05T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let clock = Arc::new(TestClock(Mutex::new(start)));
    let url = kind.url_for(dir.path()).await.unwrap();
    let keyring = Keyring::load_or_create(&dir.path().join("master.key")).unwrap();
    let store = Store::connect(&url, keyring, clock.clone()).await.unwrap();
    store.migrate().await.unwrap();
    let email = EmailAddress::parse("ann@example.com", "email").unwrap();
    let (ann, _) = store
        .create_user(&Actor::cli(), &email, Role::User)
        .await
        .unwrap();

    let session = store
        .create_session(ann.id, start + Duration::hours(12))
        .await
        .unwrap();
    assert!(session.reveal().starts_with("mbs_"));
    assert!(!format!("{session:?}").contains(session.reveal()));
    let user = store.session_user(session.reveal()).await.unwrap();
    assert_eq!(user.map(|u| u.id), Some(ann.id));
    assert_eq!(store.session_user("mbs_guessed").await.unwrap(), None);

    // The token is not in the database, only its hash.
    store.close().await;
    let bytes = kind.contents(dir.path()).await.unwrap();
    let token = session.reveal().as_bytes();
    assert!(!bytes.is_empty());
    assert!(!bytes.windows(token.len()).any(|w| w == token));
    let keyring = Keyring::load_or_create(&dir.path().join("master.key")).unwrap();
    let store = Store::connect(&url, keyring, clock.clone()).await.unwrap();

    // Expiry.
    *clock.0.lock().unwrap() = start + Duration::hours(12);
    assert_eq!(store.session_user(session.reveal()).await.unwrap(), None);

    // Signing out, and ending every session of a user.
    let a = store
        .create_session(ann.id, start + Duration::hours(24))
        .await
        .unwrap();
    let b = store
        .create_session(ann.id, start + Duration::hours(24))
        .await
        .unwrap();
    store.delete_session(a.reveal()).await.unwrap();
    assert_eq!(store.session_user(a.reveal()).await.unwrap(), None);
    assert!(store.session_user(b.reveal()).await.unwrap().is_some());
    // A new API token (from the API, the console or the command line) ends the rest.
    store.reset_user_token(&Actor::cli(), ann.id).await.unwrap();
    assert_eq!(store.session_user(b.reveal()).await.unwrap(), None);
}
