//! "Sign in to Gmail" end to end over HTTP: our server, a real OAuth provider
//! (oauth2-mock-server with per-account state), and a client that follows redirects the way a
//! browser does.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::collections::HashMap;
use std::sync::Arc;

use mailbridge_core::Role;
use mailbridge_testkit::{
    ApiClient, AppOptions, ManualClock, OAuthProvider, TestApp, TestDatabase, assert_error,
};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const CLIENT_SECRET: &str = "GOCSPX-signin-test-secret-c0ffee";

/// The host application's page users come back to after a hosted sign-in.
const RETURN_TO: &str = "https://crm.example.com/mailbridge/";

/// A server, a provider, an admin, and Ann's mailbox on a Gmail profile whose OAuth
/// endpoints are the local provider.
struct World {
    app: TestApp,
    provider: OAuthProvider,
    api: ApiClient,
    admin: String,
    ann: String,
    mailbox: String,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        Self::with_clock(None).await
    }

    async fn with_clock(clock: Option<Arc<ManualClock>>) -> Self {
        Self::on(clock, |provider| json!({
            "name": "Gmail", "preset": "gmail",
            "oauth": provider.profile_oauth("test-client.apps.googleusercontent.com", CLIENT_SECRET),
        }))
        .await
    }

    /// Ann's mailbox on a Microsoft 365 profile whose endpoints are the local provider, which
    /// names accounts the way Microsoft's ID tokens do.
    async fn microsoft() -> Self {
        let w = Self::on(None, |provider| json!({
            "name": "Contoso", "preset": "microsoft",
            "oauth": provider.microsoft_oauth("6731de76-14a6-49ae-97bc-6eba6914391e", CLIENT_SECRET),
        }))
        .await;
        w.provider
            .set_mode(json!({"claims": "microsoft"}))
            .await
            .unwrap();
        w
    }

    async fn on(
        clock: Option<Arc<ManualClock>>,
        profile: impl Fn(&OAuthProvider) -> Value,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let provider = OAuthProvider::start().unwrap();
        let options = AppOptions {
            allowed_return_urls: vec![RETURN_TO.parse().unwrap()],
            ..AppOptions::default()
        };
        let options = match clock {
            Some(clock) => AppOptions { clock, ..options },
            None => options,
        };
        let app = TestApp::start_with(dir.path(), options).await.unwrap();
        let api = ApiClient::default();
        let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
        let (ann_id, ann) = app.user("ann@example.com", Role::User).await.unwrap();
        let (status, profile) = api
            .post(&app, "/api/v1/server-profiles", &admin, profile(&provider))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{profile}");
        let (status, mailbox) = api
            .post(&app, "/api/v1/mailboxes", &admin, json!({
                "owner_user_id": ann_id, "email": "ann@example.com", "profile_id": profile["id"],
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{mailbox}");
        Self {
            mailbox: mailbox["id"].as_str().unwrap().to_owned(),
            app,
            provider,
            api,
            admin,
            ann,
            _dir: dir,
        }
    }

    /// `GET /oauth/start` as `token`, not following the redirect: (status, Location).
    async fn start(&self, token: &str) -> (StatusCode, String) {
        let resp = no_redirects()
            .get(format!(
                "{}/api/v1/mailboxes/{}/oauth/start",
                self.app.base, self.mailbox
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (resp.status(), location)
    }

    /// Visits the consent page and returns where the provider sends the browser back to.
    async fn consent(&self, authorization_url: &str) -> String {
        let resp = no_redirects().get(authorization_url).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FOUND,
            "the provider did not redirect back"
        );
        resp.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Opens a URL in "the browser" (redirects followed): (status, page text).
    async fn browse(&self, url: &str) -> (StatusCode, String) {
        let resp = reqwest::get(url).await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// The whole dance as Ann: start, consent, callback. Returns the final page.
    async fn sign_in(&self) -> (StatusCode, String) {
        let (status, location) = self.start(&self.ann).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "start should redirect");
        self.browse(&location).await
    }

    async fn mailbox_view(&self) -> Value {
        self.api
            .get(
                &self.app,
                &format!("/api/v1/mailboxes/{}", self.mailbox),
                &self.admin,
            )
            .await
            .1
    }

    async fn assert_not_signed_in(&self) {
        let view = self.mailbox_view().await;
        assert_eq!(view["sign_in_status"], "not_signed_in", "{view}");
        let tokens = self
            .app
            .store
            .mailbox_tokens(self.mailbox.parse().unwrap())
            .await
            .unwrap();
        assert!(tokens.is_none(), "tokens were stored");
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn signing_in_stores_encrypted_tokens_for_the_right_account() {
    let w = World::new().await;
    let (status, location) = w.start(&w.ann).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let q = query(&location);
    assert!(
        location.starts_with(&format!("{}/authorize?", w.provider.url())),
        "{location}"
    );
    assert_eq!(q["client_id"], "test-client.apps.googleusercontent.com");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], format!("{}/oauth/callback", w.app.base));
    assert!(
        q["scope"]
            .split(' ')
            .any(|s| s == "https://mail.google.com/"),
        "{}",
        q["scope"]
    );
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["login_hint"], "ann@example.com");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43, "the state must carry 256 bits");
    assert!(!location.contains(CLIENT_SECRET));

    let (status, page) = w.browse(&location).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("ann@example.com is signed in"), "{page}");
    let view = w.mailbox_view().await;
    assert_eq!(view["sign_in_status"], "signed_in");
    assert_eq!(view["signed_in_as"], "ann@example.com");

    let tokens = w
        .app
        .store
        .mailbox_tokens(w.mailbox.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tokens.account_email, "ann@example.com");
    assert!(tokens.scopes.contains("https://mail.google.com/"));
    let access = tokens.access_token.expose_secret().to_owned();
    let refresh = tokens.refresh_token.expose_secret().to_owned();

    // The JSON form of start serves applications that redirect the browser themselves.
    let resp = no_redirects()
        .get(format!(
            "{}/api/v1/mailboxes/{}/oauth/start",
            w.app.base, w.mailbox
        ))
        .bearer_auth(&w.ann)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["authorization_url"]
            .as_str()
            .unwrap()
            .contains("code_challenge=")
    );

    // No token or secret in any response, in the audit log, or in clear on disk.
    let (_, audit) = w.api.get(&w.app, "/api/v1/audit-log", &w.admin).await;
    assert!(audit.to_string().contains("mailbox.sign_in"));
    let seen = w.api.seen() + &audit.to_string() + &w.mailbox_view().await.to_string();
    for secret in [access.as_str(), refresh.as_str(), CLIENT_SECRET] {
        assert!(!seen.contains(secret), "a secret was returned by the API");
    }
    let disk = TestDatabase::from_env()
        .contents(w._dir.path())
        .await
        .unwrap();
    assert!(
        disk.windows(b"ann@example.com".len())
            .any(|x| x == b"ann@example.com")
    );
    for secret in [access.as_str(), refresh.as_str(), CLIENT_SECRET] {
        assert!(
            !disk.windows(secret.len()).any(|x| x == secret.as_bytes()),
            "a secret is in clear on disk"
        );
    }
}

#[tokio::test]
async fn a_state_works_once_and_only_if_it_was_issued_here() {
    let w = World::new().await;
    let (_, location) = w.start(&w.ann).await;
    let callback = w.consent(&location).await;
    assert!(callback.starts_with(&format!("{}/oauth/callback?", w.app.base)));
    let (status, page) = w.browse(&callback).await;
    assert_eq!(status, StatusCode::OK, "{page}");

    // The same answer again (a replay): refused, and the stored sign-in is untouched.
    let (status, page) = w.browse(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("already used"), "{page}");

    // A state we never issued, and none at all.
    let forged = format!(
        "{}/oauth/callback?state=forged-state-value&code=abc",
        w.app.base
    );
    let (status, page) = w.browse(&forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("not valid"), "{page}");
    let (status, page) = w
        .browse(&format!("{}/oauth/callback?code=abc", w.app.base))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("no state"), "{page}");
    // HTML in the provider's words is shown as text, not markup.
    let (_, location) = w.start(&w.ann).await;
    let state = query(&location)["state"].clone();
    let evil = format!(
        "{}/oauth/callback?state={state}&error=%3Cscript%3Ealert(1)%3C/script%3E",
        w.app.base
    );
    let (status, page) = w.browse(&evil).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        !page.contains("<script>") && page.contains("&lt;script&gt;"),
        "{page}"
    );
    assert_eq!(w.mailbox_view().await["sign_in_status"], "signed_in");
}

#[tokio::test]
async fn a_state_expires_after_ten_minutes() {
    let clock = Arc::new(ManualClock::new());
    let w = World::with_clock(Some(clock.clone())).await;
    let (_, location) = w.start(&w.ann).await;
    let callback = w.consent(&location).await;
    clock.advance(chrono::Duration::minutes(10) + chrono::Duration::seconds(1));
    let (status, page) = w.browse(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("expired"), "{page}");
    w.assert_not_signed_in().await;
    assert_eq!(
        w.provider.stats().await.unwrap()["codeGrants"],
        0,
        "an expired state must not reach the provider"
    );
}

#[tokio::test]
async fn only_the_owner_or_an_admin_may_start_and_the_feature_can_be_off() {
    let w = World::new().await;
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    let r = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/mailboxes/{}/oauth/start", w.mailbox),
            &bob,
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = w
        .api
        .call(
            &w.app,
            reqwest::Method::GET,
            &format!("/api/v1/mailboxes/{}/oauth/start", w.mailbox),
            None,
            None,
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    let r = w
        .api
        .get(
            &w.app,
            "/api/v1/mailboxes/0190b6a0-0000-7000-8000-000000000000/oauth/start",
            &w.ann,
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let (status, _) = w.start(&w.admin).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "an admin may sign a mailbox in"
    );

    // A password profile has nothing to sign in to.
    let (_, p) = w
        .api
        .post(
            &w.app,
            "/api/v1/server-profiles",
            &w.admin,
            json!({"name": "Own", "auth": "password",
        "incoming": {"protocol": "imap", "host": "127.0.0.1"}, "outgoing": {"host": "127.0.0.1"}}),
        )
        .await;
    let (_, m) = w
        .api
        .post(
            &w.app,
            "/api/v1/mailboxes",
            &w.admin,
            json!({"email": "pw@example.com", "profile_id": p["id"]}),
        )
        .await;
    let r = w
        .api
        .get(
            &w.app,
            &format!(
                "/api/v1/mailboxes/{}/oauth/start",
                m["id"].as_str().unwrap()
            ),
            &w.admin,
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "not_oauth", None);

    // With Gmail sign-in turned off in configuration, Gmail profiles refuse to start.
    let dir = tempfile::tempdir().unwrap();
    let off = TestApp::start_with(
        dir.path(),
        AppOptions {
            gmail_oauth: false,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let (_, admin) = off.user("admin@example.com", Role::Admin).await.unwrap();
    let (_, features) = w
        .api
        .call(&off, reqwest::Method::GET, "/api/v1/features", None, None)
        .await;
    assert_eq!(features["gmail_oauth"], false);
    let (_, p) = w.api.post(&off, "/api/v1/server-profiles", &admin, json!({"name": "G", "preset": "gmail", "oauth": {"client_id": "c", "client_secret": "s"}})).await;
    let (_, m) = w
        .api
        .post(
            &off,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "a@example.com", "profile_id": p["id"]}),
        )
        .await;
    let r = w
        .api
        .get(
            &off,
            &format!(
                "/api/v1/mailboxes/{}/oauth/start",
                m["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "feature_disabled", None);
    off.stop().await.unwrap();
}

#[tokio::test]
async fn a_different_account_is_refused_and_its_tokens_given_back() {
    let w = World::new().await;
    w.provider
        .next_account("mallory@example.com")
        .await
        .unwrap();
    let (status, page) = w.sign_in().await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(
        page.contains("you signed in as mallory@example.com, but this mailbox is ann@example.com"),
        "{page}"
    );
    w.assert_not_signed_in().await;
    let stats = w.provider.stats().await.unwrap();
    assert_eq!(stats["revocations"].as_array().unwrap().len(), 1, "{stats}");
}

#[tokio::test]
async fn a_tampered_pkce_challenge_fails_the_code_exchange() {
    let w = World::new().await;
    let (_, location) = w.start(&w.ann).await;
    let mut url = reqwest::Url::parse(&location).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "code_challenge" {
                "A".repeat(43)
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, page) = w.browse(url.as_str()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
    assert!(
        page.contains("code_verifier"),
        "the provider's words are shown: {page}"
    );
    w.assert_not_signed_in().await;
}

#[tokio::test]
async fn refusals_at_the_provider_are_explained_and_store_nothing() {
    let w = World::new().await;
    for (mode, status, words) in [
        (
            json!({"denyConsent": true}),
            StatusCode::BAD_REQUEST,
            "access was not granted at the consent page (access_denied)",
        ),
        (
            json!({"narrowScope": true}),
            StatusCode::BAD_REQUEST,
            "Google did not grant access to mail; sign in again and allow access",
        ),
        (
            json!({"omitRefreshOnCode": true}),
            StatusCode::BAD_REQUEST,
            "did not return a refresh token",
        ),
        (
            json!({"tokenStatus": 503}),
            StatusCode::BAD_GATEWAY,
            "cannot reach 127.0.0.1 for the code exchange",
        ),
    ] {
        w.provider.set_mode(mode.clone()).await.unwrap();
        let (got, page) = w.sign_in().await;
        assert_eq!(got, status, "{mode}: {page}");
        assert!(page.contains(words), "{mode}: {page}");
        w.assert_not_signed_in().await;
        w.provider.set_mode(json!({"denyConsent": false, "narrowScope": false, "omitRefreshOnCode": false, "tokenStatus": 200})).await.unwrap();
    }
    let (status, page) = w.sign_in().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after the provider recovers, sign-in works: {page}"
    );
}

#[tokio::test]
async fn disconnecting_revokes_at_the_provider_and_deletes_here() {
    let w = World::new().await;
    assert_eq!(w.sign_in().await.0, StatusCode::OK);
    let refresh = w
        .app
        .store
        .mailbox_tokens(w.mailbox.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .refresh_token
        .expose_secret()
        .to_owned();
    let path = format!("/api/v1/mailboxes/{}/oauth", w.mailbox);
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    assert_error(
        &w.api.delete(&w.app, &path, &bob).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let (status, body) = w.api.delete(&w.app, &path, &w.ann).await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (StatusCode::OK, json!("revoked")),
        "{body}"
    );
    let stats = w.provider.stats().await.unwrap();
    assert!(
        stats["revocations"]
            .as_array()
            .unwrap()
            .contains(&json!(refresh)),
        "{stats}"
    );
    w.assert_not_signed_in().await;
    assert_eq!(w.mailbox_view().await["enabled"], false);
    let (_, again) = w.api.delete(&w.app, &path, &w.ann).await;
    assert_eq!(again["outcome"], "was_not_signed_in");
    assert!(!w.api.seen().contains(&refresh));
}

#[tokio::test]
async fn without_an_id_token_the_account_comes_from_userinfo_or_the_sign_in_is_refused() {
    let w = World::new().await;
    w.provider
        .set_mode(json!({"omitIdToken": true}))
        .await
        .unwrap();
    let (status, page) = w.sign_in().await;
    assert_eq!(status, StatusCode::OK, "userinfo names the account: {page}");
    assert_eq!(w.mailbox_view().await["signed_in_as"], "ann@example.com");

    // A profile with neither an ID token nor a userinfo endpoint cannot prove the account.
    let profile = w.mailbox_view().await["profile_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"oauth": {"userinfo_url": ""}}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let (status, page) = w.sign_in().await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(
        page.contains("did not say which account signed in"),
        "{page}"
    );
}

#[tokio::test]
async fn a_new_address_or_profile_ends_the_sign_in_and_revokes_the_grant() {
    let w = World::new().await;
    let path = format!("/api/v1/mailboxes/{}", w.mailbox);
    for change in ["email", "profile_id"] {
        assert_eq!(w.sign_in().await.0, StatusCode::OK);
        let refresh = w
            .app
            .store
            .mailbox_tokens(w.mailbox.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .expose_secret()
            .to_owned();
        let patch = if change == "email" {
            json!({"email": "ann.lee@example.com"})
        } else {
            let (status, other) = w
                .api
                .post(&w.app, "/api/v1/server-profiles", &w.admin, json!({
                    "name": "Second Gmail", "preset": "gmail",
                    "oauth": w.provider.profile_oauth("second.apps.googleusercontent.com", "other-secret"),
                }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{other}");
            json!({"profile_id": other["id"]})
        };
        let (status, view) = w.api.patch(&w.app, &path, &w.admin, patch).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        // The old account's tokens are gone here, and given back to the provider that
        // issued them: Test & Enable cannot pass with them, nor do they reach new servers.
        assert_eq!(view["sign_in_status"], "not_signed_in", "{change}: {view}");
        assert_eq!(view["enabled"], false);
        assert_eq!(view["incoming_status"], "not_run");
        w.assert_not_signed_in().await;
        let stats = w.provider.stats().await.unwrap();
        assert!(
            stats["revocations"]
                .as_array()
                .unwrap()
                .contains(&json!(refresh)),
            "{change}: the grant is revoked: {stats}"
        );
        let (_, tested) = w
            .api
            .post(
                &w.app,
                &format!("{path}/test-and-enable"),
                &w.admin,
                json!({}),
            )
            .await;
        assert_eq!(tested["enabled"], false, "{tested}");
        // Back to the mailbox's own address for the next round.
        if change == "email" {
            let (status, _) = w
                .api
                .patch(&w.app, &path, &w.admin, json!({"email": "ann@example.com"}))
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    // A change that keeps address and profile keeps the sign-in.
    assert_eq!(w.sign_in().await.0, StatusCode::OK);
    let (status, view) = w
        .api
        .patch(
            &w.app,
            &path,
            &w.admin,
            json!({"tracking_rule": "responses"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["sign_in_status"], "signed_in", "{view}");
}

#[tokio::test]
async fn starting_more_sign_ins_than_allowed_drops_the_oldest_link() {
    let clock = Arc::new(ManualClock::new());
    let w = World::with_clock(Some(clock.clone())).await;
    // Six starts (tabs, retries) against the default cap of five pending per mailbox; the
    // clock moves between them so "oldest" is unambiguous.
    let mut links = Vec::new();
    for _ in 0..6 {
        let (status, location) = w.start(&w.ann).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        links.push(location);
        clock.advance(chrono::Duration::seconds(1));
    }
    // The oldest link was dropped: it reads like any link that is no longer valid.
    let callback = w.consent(&links[0]).await;
    let (status, page) = w.browse(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("not valid"), "{page}");
    w.assert_not_signed_in().await;
    // The five newest all still work, the oldest of them and the newest included.
    for link in [&links[1], &links[5]] {
        let callback = w.consent(link).await;
        let (status, page) = w.browse(&callback).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("ann@example.com is signed in"), "{page}");
    }
}

/// Asks for a hosted sign-in link as `token`: (status, body).
async fn sign_in_link(w: &World, token: &str, return_url: &str) -> (StatusCode, Value) {
    w.api
        .post(
            &w.app,
            &format!("/api/v1/mailboxes/{}/sign-in-link", w.mailbox),
            token,
            json!({"return_url": return_url}),
        )
        .await
}

/// Follows a browser through a hosted sign-in link: the link, the provider's consent page,
/// the callback; returns where Mailbridge finally sends it (the host application's page).
async fn walk(w: &World, link: &str) -> reqwest::Url {
    let first = no_redirects().get(link).send().await.unwrap();
    assert_eq!(
        first.status(),
        StatusCode::SEE_OTHER,
        "{}",
        first.text().await.unwrap()
    );
    let next = first.headers()["location"].to_str().unwrap().to_owned();
    let next = if next.starts_with(RETURN_TO) {
        next
    } else {
        // The consent page, then the callback.
        let callback = w.consent(&next).await;
        let back = no_redirects().get(&callback).send().await.unwrap();
        assert_eq!(
            back.status(),
            StatusCode::SEE_OTHER,
            "{}",
            back.text().await.unwrap()
        );
        back.headers()["location"].to_str().unwrap().to_owned()
    };
    next.parse().unwrap()
}

#[tokio::test]
async fn a_hosted_sign_in_link_works_once_and_returns_to_the_host_application() {
    let clock = Arc::new(ManualClock::new());
    let w = World::with_clock(Some(clock.clone())).await;
    let (status, link) = sign_in_link(
        &w,
        &w.ann,
        "https://crm.example.com/mailbridge/done?user=42",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/sign-in/", w.app.base)),
        "{url}"
    );
    let back = walk(&w, &url).await;
    assert!(
        back.as_str()
            .starts_with("https://crm.example.com/mailbridge/done?"),
        "{back}"
    );
    let q: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(q["user"], "42", "the host application's own query is kept");
    assert_eq!(q["mailbox_id"], w.mailbox);
    assert_eq!(q["outcome"], "signed_in", "{q:?}");
    assert_eq!(w.mailbox_view().await["sign_in_status"], "signed_in");
    // Once only.
    let again = walk(&w, &url).await;
    let q: HashMap<String, String> = again.query_pairs().into_owned().collect();
    assert_eq!(
        (q["outcome"].as_str(), q["error"].as_str()),
        ("error", "link_used"),
        "{q:?}"
    );
    // Another account at the consent page: back with the reason, nothing stored.
    let (_, link) = sign_in_link(&w, &w.admin, RETURN_TO).await;
    w.provider
        .next_account("mallory@example.com")
        .await
        .unwrap();
    let back = walk(&w, link["url"].as_str().unwrap()).await;
    let q: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(
        (q["outcome"].as_str(), q["error"].as_str()),
        ("error", "wrong_account"),
        "{q:?}"
    );
    assert!(q["message"].contains("mallory@example.com"), "{q:?}");
    // Too late: a link works for 30 minutes.
    let (_, link) = sign_in_link(&w, &w.ann, RETURN_TO).await;
    clock.advance(chrono::Duration::minutes(31));
    let back = walk(&w, link["url"].as_str().unwrap()).await;
    let q: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "link_expired", "{q:?}");
    // A link nobody made is a page, not a redirect.
    let (status, page) = w
        .browse(&format!("{}/sign-in/not-a-real-token", w.app.base))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("not valid"), "{page}");
}

#[tokio::test]
async fn a_return_url_outside_the_allowed_list_is_refused() {
    let w = World::new().await;
    for bad in [
        "https://evil.example.com/mailbridge/",
        "https://crm.example.com/elsewhere",
        "https://crm.example.com.evil.example/mailbridge/",
        "http://crm.example.com/mailbridge/",
        "https://crm.example.com:8443/mailbridge/",
        "https://me@crm.example.com/mailbridge/",
        "javascript:alert(1)",
        "not a url",
    ] {
        let r = sign_in_link(&w, &w.ann, bad).await;
        assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("return_url"),
        );
    }
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    assert_error(
        &sign_in_link(&w, &bob, RETURN_TO).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    // Without any allowed return URL, no link can be made.
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path()).await.unwrap();
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let (_, profile) = w
        .api
        .post(
            &app,
            "/api/v1/server-profiles",
            &admin,
            json!({
                "name": "Gmail", "preset": "gmail",
                "oauth": w.provider.profile_oauth("c.apps.googleusercontent.com", CLIENT_SECRET),
            }),
        )
        .await;
    let (_, mailbox) = w
        .api
        .post(
            &app,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "zed@example.com", "profile_id": profile["id"]}),
        )
        .await;
    let r = w
        .api
        .post(
            &app,
            &format!(
                "/api/v1/mailboxes/{}/sign-in-link",
                mailbox["id"].as_str().unwrap()
            ),
            &admin,
            json!({"return_url": RETURN_TO}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("return_url"),
    );
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowed_return_urls"),
        "{}",
        r.1
    );
}

#[tokio::test]
async fn microsoft_sign_in_selects_the_account_and_names_it_by_its_sign_in_name() {
    let w = World::microsoft().await;
    let (status, location) = w.start(&w.ann).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let q = query(&location);
    // No Google-only parameters, and no forced consent an organization may reserve to admins.
    assert_eq!(q["prompt"], "select_account");
    assert!(!q.contains_key("access_type"), "{location}");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for scope in [
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "offline_access",
    ] {
        assert!(scopes.contains(&scope), "{scope} not asked: {scopes:?}");
    }
    let (status, page) = w.browse(&location).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let view = w.mailbox_view().await;
    assert_eq!(view["signed_in_as"], "ann@example.com", "{view}");

    // Another account: the message says which claim named it.
    w.provider
        .next_account("mallory@contoso.com")
        .await
        .unwrap();
    let (status, page) = w.sign_in().await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(
        page.contains("you signed in as mallory@contoso.com, but this mailbox is ann@example.com"),
        "{page}"
    );
    assert!(page.contains("by its preferred_username"), "{page}");
    let (_, features) = w.api.get(&w.app, "/api/v1/features", &w.ann).await;
    assert_eq!(features["microsoft_oauth"], true, "{features}");
}

#[tokio::test]
async fn microsoft_refusals_name_the_step_in_the_entra_admin_center() {
    let w = World::microsoft().await;
    for (description, words) in [
        (
            "AADSTS65001: The user or administrator has not consented to use the application with ID '6731de76-14a6-49ae-97bc-6eba6914391e' named 'Mailbridge'.",
            "Grant admin consent",
        ),
        (
            "AADSTS50020: User account 'ann@example.com' from identity provider 'live.com' does not exist in tenant 'Contoso'.",
            "or to common for accounts of any organization",
        ),
    ] {
        w.provider
            .set_mode(json!({"consentError": {"error": "access_denied", "error_description": description}}))
            .await
            .unwrap();
        let (status, page) = w.sign_in().await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
        assert!(
            page.contains("AADSTS"),
            "the provider's words are shown: {page}"
        );
        assert!(page.contains(words), "{words}: {page}");
        w.assert_not_signed_in().await;
    }
}

#[tokio::test]
async fn microsoft_sign_in_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(
        dir.path(),
        AppOptions {
            microsoft_oauth: false,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let provider = OAuthProvider::start().unwrap();
    let api = ApiClient::default();
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let (ann_id, ann) = app.user("ann@example.com", Role::User).await.unwrap();
    let (_, profile) = api
        .post(
            &app,
            "/api/v1/server-profiles",
            &admin,
            json!({
                "name": "Contoso", "preset": "microsoft",
                "oauth": provider.microsoft_oauth("c", CLIENT_SECRET),
            }),
        )
        .await;
    let (_, mailbox) = api
        .post(
            &app,
            "/api/v1/mailboxes",
            &admin,
            json!({
                "owner_user_id": ann_id, "email": "ann@example.com", "profile_id": profile["id"],
            }),
        )
        .await;
    let (_, features) = api.get(&app, "/api/v1/features", &ann).await;
    assert_eq!(
        (
            features["microsoft_oauth"].as_bool(),
            features["gmail_oauth"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let r = api
        .get(
            &app,
            &format!(
                "/api/v1/mailboxes/{}/oauth/start",
                mailbox["id"].as_str().unwrap()
            ),
            &ann,
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "feature_disabled", None);
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("microsoft_oauth = false"),
        "{}",
        r.1
    );
    app.stop().await.unwrap();
}
