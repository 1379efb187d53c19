//! The token service against a real OAuth provider: refresh before expiry, rotation, one
//! refresh for many callers, `invalid_grant` stopping the mailbox, transient failures retried.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;
use std::time::Duration;

use mailbridge_core::{
    EmailAddress, MailboxDraft, MailboxId, ProfileDraft, Role, SecretChange, SignInStatus,
};
use mailbridge_store::{Actor, Keyring, Store};
use mailbridge_sync::signin::Callback;
use mailbridge_sync::{RefreshPolicy, SignIn, TokenError, TokenService};
use mailbridge_testkit::{ManualClock, OAuthProvider};
use secrecy::ExposeSecret;
use serde_json::json;

struct World {
    store: Store,
    clock: Arc<ManualClock>,
    provider: OAuthProvider,
    tokens: TokenService,
    mailbox: MailboxId,
    _dir: tempfile::TempDir,
}

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";

/// A signed-in mailbox: the real flow, with the browser's redirects read by hand.
async fn world() -> World {
    world_on(|provider| json!({"name": "Gmail", "preset": "gmail", "oauth": provider.profile_oauth("client", "secret")})).await
}

/// A world whose profile is `profile(provider)`.
async fn world_on(profile: impl Fn(&OAuthProvider) -> serde_json::Value) -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new());
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
    let store = Store::connect(&url, Keyring::generate(), clock.clone())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let provider = OAuthProvider::start().unwrap();
    let cli = Actor::cli();
    let email = EmailAddress::parse("ann@example.com", "e").unwrap();
    let (ann, _) = store.create_user(&cli, &email, Role::User).await.unwrap();
    let draft: ProfileDraft = serde_json::from_value(profile(&provider)).unwrap();
    let (spec, secret) = draft.resolve(None).unwrap();
    let profile = store.create_profile(&cli, &spec, secret).await.unwrap();
    let mailbox: MailboxDraft =
        serde_json::from_value(json!({"email": "ann@example.com", "profile_id": profile.id}))
            .unwrap();
    let mailbox = store
        .create_mailbox(
            &cli,
            &mailbox.resolve(None, ann.id).unwrap(),
            SecretChange::Keep,
        )
        .await
        .unwrap();

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signin = SignIn::new(
        store.clone(),
        http.clone(),
        clock.clone(),
        REDIRECT.to_owned(),
    );
    let consent = signin.start(&ann, &mailbox).await.unwrap();
    let back = http.get(consent).send().await.unwrap();
    let back = reqwest::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let answer: Callback = serde_urlencoded_from(&back);
    signin.finish(answer).await.unwrap();

    let policy = RefreshPolicy {
        backoff: Duration::from_millis(20),
        ..RefreshPolicy::default()
    };
    let tokens = TokenService::new(
        store.clone(),
        http,
        clock.clone(),
        REDIRECT.to_owned(),
        policy,
    );
    World {
        store,
        clock,
        provider,
        tokens,
        mailbox: mailbox.id,
        _dir: dir,
    }
}

fn serde_urlencoded_from(url: &reqwest::Url) -> Callback {
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    Callback {
        state: q.get("state").cloned(),
        code: q.get("code").cloned(),
        error: q.get("error").cloned(),
        error_description: None,
    }
}

impl World {
    async fn refresh_grants(&self) -> u64 {
        self.provider.stats().await.unwrap()["refreshGrants"]
            .as_u64()
            .unwrap()
    }

    /// Moves time to just past the point where the token must be refreshed.
    fn near_expiry(&self) {
        // The provider's tokens live an hour; refresh falls due 5 min (the margin) plus up
        // to 1 min (the jitter) before that: 55 min covers any jitter.
        self.clock
            .advance(chrono::Duration::minutes(55) + chrono::Duration::seconds(1));
    }

    async fn stored_refresh_token(&self) -> String {
        self.store
            .mailbox_tokens(self.mailbox)
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .expose_secret()
            .to_owned()
    }
}

#[tokio::test]
async fn a_fresh_token_is_served_from_the_store_and_refreshed_before_expiry() {
    let w = world().await;
    let first = w.tokens.access_token(w.mailbox).await.unwrap();
    assert_eq!(first.account, "ann@example.com");
    w.clock.advance(chrono::Duration::minutes(50));
    let same = w.tokens.access_token(w.mailbox).await.unwrap();
    assert_eq!(same.token.expose_secret(), first.token.expose_secret());
    assert_eq!(
        w.refresh_grants().await,
        0,
        "no refresh while the token is good"
    );

    let refresh_before = w.stored_refresh_token().await;
    w.near_expiry();
    let fresh = w.tokens.access_token(w.mailbox).await.unwrap();
    assert_ne!(fresh.token.expose_secret(), first.token.expose_secret());
    assert!(fresh.expires_at > w.clock_now() + chrono::Duration::minutes(59));
    assert_eq!(w.refresh_grants().await, 1);
    // Google omits refresh_token in refresh answers: the old one is kept, and still works.
    assert_eq!(w.stored_refresh_token().await, refresh_before);
    w.near_expiry();
    w.near_expiry();
    w.tokens.access_token(w.mailbox).await.unwrap();
    assert_eq!(w.refresh_grants().await, 2);
}

impl World {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        mailbridge_core::Clock::now(self.clock.as_ref())
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_stored_and_used_next_time() {
    let w = world().await;
    w.provider
        .set_mode(json!({"refresh": "rotate"}))
        .await
        .unwrap();
    let before = w.stored_refresh_token().await;
    w.near_expiry();
    w.tokens.access_token(w.mailbox).await.unwrap();
    let rotated = w.stored_refresh_token().await;
    assert_ne!(
        rotated, before,
        "the rotated refresh token must replace the old one"
    );
    // The provider revoked the old one on rotation; only the stored new one can work.
    w.near_expiry();
    w.near_expiry();
    w.tokens.access_token(w.mailbox).await.unwrap();
    assert_eq!(w.refresh_grants().await, 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let w = Arc::new(world().await);
    w.provider
        .set_mode(json!({"refreshDelayMs": 300}))
        .await
        .unwrap();
    w.near_expiry();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let w = w.clone();
        calls.push(tokio::spawn(async move {
            w.tokens.access_token(w.mailbox).await.unwrap()
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for c in calls {
        tokens.insert(c.await.unwrap().token.expose_secret().to_owned());
    }
    assert_eq!(
        w.refresh_grants().await,
        1,
        "20 callers must cause one refresh"
    );
    assert_eq!(tokens.len(), 1, "every caller gets the one new token");
}

#[tokio::test]
async fn two_nodes_refreshing_at_once_share_one_refresh() {
    let w = world().await;
    // A second node: its own token service (its own in-process lock) on the same database.
    let other = TokenService::new(
        w.store.clone(),
        reqwest::Client::new(),
        w.clock.clone(),
        REDIRECT.to_owned(),
        RefreshPolicy::default(),
    );
    // Rotating refresh tokens: a second, concurrent refresh would use a spent one.
    w.provider
        .set_mode(json!({"refreshDelayMs": 300, "refresh": "rotate"}))
        .await
        .unwrap();
    w.near_expiry();
    let (a, b) = tokio::join!(
        w.tokens.access_token(w.mailbox),
        other.access_token(w.mailbox)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(w.refresh_grants().await, 1, "one refresh over both nodes");
    assert_eq!(a.token.expose_secret(), b.token.expose_secret());
}

#[tokio::test]
async fn invalid_grant_stops_the_mailbox_with_an_alert_and_no_retry_loop() {
    let w = world().await;
    w.provider.revoke_account("ann@example.com").await.unwrap();
    w.near_expiry();
    let err = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(matches!(err, TokenError::SignInRequired { .. }), "{err}");
    assert!(!err.is_transient());
    assert_eq!(w.refresh_grants().await, 1, "invalid_grant is not retried");

    let mailbox = w.store.get_mailbox(w.mailbox).await.unwrap();
    assert_eq!(mailbox.sign_in_status, SignInStatus::NeedsSignIn);
    assert!(!mailbox.enabled);
    let alerts = w.store.mailbox_alerts(w.mailbox, false).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "sign_in_required");
    assert_eq!(alerts[0].user_id, mailbox.spec.owner_user_id);
    assert!(
        alerts[0].hint.contains("Sign in to Gmail again"),
        "{}",
        alerts[0].hint
    );

    // Asking again does not go back to the provider, nor raise a second alert.
    // (The other-provider wording is tested below.)
    let again = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(matches!(again, TokenError::SignInRequired { .. }));
    assert_eq!(w.refresh_grants().await, 1);
    assert_eq!(
        w.store
            .mailbox_alerts(w.mailbox, false)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_then_reported_as_transient() {
    let w = world().await;
    w.provider
        .set_mode(json!({"failRefreshes": 2}))
        .await
        .unwrap();
    w.near_expiry();
    w.tokens.access_token(w.mailbox).await.unwrap();
    assert_eq!(w.refresh_grants().await, 3, "two 503s, then success");

    w.provider
        .set_mode(json!({"tokenStatus": 503}))
        .await
        .unwrap();
    w.near_expiry();
    w.near_expiry();
    let err = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(
        w.refresh_grants().await,
        3 + 4,
        "the policy's four attempts"
    );
    let mailbox = w.store.get_mailbox(w.mailbox).await.unwrap();
    assert_eq!(
        mailbox.sign_in_status,
        SignInStatus::SignedIn,
        "a provider outage is not the user's problem"
    );
}

#[tokio::test]
async fn a_mailbox_that_never_signed_in_is_told_so() {
    let w = world().await;
    let cli = Actor::cli();
    w.store.remove_sign_in(&cli, w.mailbox).await.unwrap();
    let err = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(matches!(err, TokenError::NotSignedIn(_)), "{err}");
}

#[tokio::test]
async fn a_refused_grant_on_another_oauth_provider_does_not_send_the_owner_to_gmail() {
    let w = world_on(|provider| {
        json!({
            "name": "Corp", "auth": "oauth2",
            "incoming": {"protocol": "imap", "host": "127.0.0.1"},
            "outgoing": {"host": "127.0.0.1"},
            "oauth": provider.profile_oauth("client", "secret"),
        })
    })
    .await;
    w.provider.revoke_account("ann@example.com").await.unwrap();
    w.near_expiry();
    let err = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(matches!(err, TokenError::SignInRequired { .. }), "{err}");
    let alerts = w.store.mailbox_alerts(w.mailbox, false).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].hint,
        "Sign in again for this mailbox, then run Test & Enable Mailbox."
    );
}

#[tokio::test]
async fn a_refresh_claim_left_by_a_dead_node_lapses_and_the_next_caller_refreshes() {
    let w = world().await;
    w.near_expiry();
    // Another node claimed the refresh for a second and died before finishing it.
    assert!(
        w.store
            .claim_token_refresh(w.mailbox, Duration::from_secs(1))
            .await
            .unwrap()
    );
    let lapse = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            w.refresh_grants().await,
            0,
            "the claim is respected while it holds"
        );
        w.clock.advance(chrono::Duration::seconds(2));
    };
    let (token, ()) = tokio::join!(w.tokens.access_token(w.mailbox), lapse);
    let token = token.unwrap();
    assert!(
        token.expires_at > mailbridge_core::Clock::now(&*w.clock) + chrono::Duration::minutes(30)
    );
    assert_eq!(w.refresh_grants().await, 1);
}

#[tokio::test]
async fn microsoft_rotates_the_refresh_token_each_time_and_a_withdrawn_consent_names_the_admin_step()
 {
    let w = world_on(|provider| json!({"name": "Contoso", "preset": "microsoft", "oauth": provider.microsoft_oauth("client", "secret")})).await;
    w.provider
        .set_mode(json!({"refresh": "rotate"}))
        .await
        .unwrap();
    // Every refresh brings a new refresh token and spends the old one: each is stored.
    let mut seen = vec![w.stored_refresh_token().await];
    for _ in 0..3 {
        w.near_expiry();
        w.near_expiry();
        w.tokens.access_token(w.mailbox).await.unwrap();
        let now = w.stored_refresh_token().await;
        assert!(!seen.contains(&now), "a refresh token was not replaced");
        seen.push(now);
    }
    assert_eq!(w.refresh_grants().await, 3);

    // An administrator withdrew the organization's consent: the alert says where to grant it.
    w.provider
        .set_mode(json!({"refreshError": {"error": "invalid_grant", "error_description": "AADSTS65001: The user or administrator has not consented to use the application with ID 'client' named 'Mailbridge'. Send an interactive authorization request for this user and resource."}}))
        .await
        .unwrap();
    w.near_expiry();
    w.near_expiry();
    let err = w.tokens.access_token(w.mailbox).await.unwrap_err();
    assert!(matches!(err, TokenError::SignInRequired { .. }), "{err}");
    let alerts = w.store.mailbox_alerts(w.mailbox, false).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert!(
        alerts[0].message.contains("AADSTS65001"),
        "{}",
        alerts[0].message
    );
    assert!(
        alerts[0].hint.contains("Grant admin consent"),
        "{}",
        alerts[0].hint
    );
}
