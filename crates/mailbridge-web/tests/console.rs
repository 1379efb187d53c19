//! The web console in a real browser (headless Chromium over chromedriver) against the real
//! peers: the first admin sets up a Gmail profile and a mailbox, the user signs in to "Gmail"
//! (the OAuth provider mock) and runs Test & Enable against Dovecot; and the ways it must
//! refuse: a wrong account, bad input, another user's mailbox, a form without its CSRF token.
//! Screenshots of the main pages land in `<target>/console-screenshots/`.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::time::Duration;

use mailbridge_core::Role;
use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, Browser, MailWorld};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::json;

/// Signs in through the console's form and lands on the mailboxes page.
async fn sign_in(b: &Browser, w: &MailWorld, email: &str, token: &str) {
    b.goto(&format!("{}/console", w.app.base)).await.unwrap();
    assert_eq!(b.path().await.unwrap(), "/console/sign-in");
    b.fill("email", email).await.unwrap();
    b.fill("token", token).await.unwrap();
    b.press("Sign in").await.unwrap();
    assert_eq!(
        b.path().await.unwrap(),
        "/console/mailboxes",
        "{}",
        b.page_text().await.unwrap()
    );
}

/// Asserts that the element matching `css` shows `needle`.
async fn shows(b: &Browser, css: &str, needle: &str) {
    let text = b.text(css).await.unwrap();
    assert!(
        text.contains(needle),
        "{css} shows {text:?}, not {needle:?}"
    );
}

/// Waits (up to ten seconds) for the page to show `needle`, for actions whose navigation
/// chromedriver may not wait for.
async fn until(b: &Browser, needle: &str) {
    for _ in 0..100 {
        if b.page_text().await.is_ok_and(|t| t.contains(needle)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the page never showed {needle:?}: {}",
        b.page_text().await.unwrap_or_default()
    );
}

async fn sign_out(b: &Browser) {
    b.press("Sign out").await.unwrap();
    assert_eq!(b.path().await.unwrap(), "/console/sign-in");
}

/// A profile and a mailbox for Ann made through the API, for the tests that start later.
async fn ann_mailbox(w: &MailWorld) -> String {
    let profile = w
        .gmail_like("Gmail", w.imaps(), w.submissions(), json!({}))
        .await;
    w.mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await
}

#[tokio::test]
async fn the_first_admin_sets_up_gmail_and_the_user_connects_and_tests_their_mailbox() {
    let w = MailWorld::start(AppOptions::default()).await;
    let b = Browser::start().await.unwrap();

    // The first admin signs in with the token `mailbridge users create` printed.
    b.goto(&w.app.base).await.unwrap();
    assert_eq!(b.path().await.unwrap(), "/console/sign-in");
    b.screenshot("01-sign-in").await.unwrap();
    sign_in(&b, &w, "admin@example.com", &w.admin).await;

    // Settings › Email configuration › Email server profiles › New Gmail profile.
    b.click("a[href='/console/profiles']").await.unwrap();
    assert!(b.page_text().await.unwrap().contains("No profiles yet"));
    b.press("New Gmail profile").await.unwrap();
    let redirect = b.text("#redirect-uri").await.unwrap();
    assert_eq!(redirect, format!("{}/oauth/callback", w.app.base));
    assert_eq!(b.text("#js-origin").await.unwrap(), w.app.base);
    assert!(
        b.client
            .find(fantoccini::Locator::Css("button[data-copy='redirect-uri']"))
            .await
            .is_ok()
    );
    b.screenshot("02-new-gmail-profile").await.unwrap();
    b.fill("name", "Sales Gmail").await.unwrap();
    b.fill("oauth.client_id", "sales.apps.googleusercontent.com")
        .await
        .unwrap();
    b.fill("oauth.client_secret", "GOCSPX-console-secret-4242")
        .await
        .unwrap();
    // The preset's servers and Google's endpoints fold away; here they point at the
    // local peers standing in for Google.
    open_folded_groups(&b).await;
    let o = w.oauth.url();
    b.fill("oauth.revocation_url", &format!("{o}/revoke"))
        .await
        .unwrap();
    b.fill("oauth.userinfo_url", &format!("{o}/userinfo"))
        .await
        .unwrap();
    point_at_local_peers(&b, &w).await;
    b.press("Create profile").await.unwrap();
    let page = b.page_text().await.unwrap();
    assert!(
        page.contains("Profile “Sales Gmail” was created."),
        "{page}"
    );
    // The stored secret is never shown again: its field is empty, and it is not in the page.
    assert_eq!(b.value("[name='oauth.client_secret']").await.unwrap(), "");
    assert!(
        !b.client
            .source()
            .await
            .unwrap()
            .contains("GOCSPX-console-secret-4242")
    );
    assert!(
        page.contains("Leave this blank to keep the stored secret"),
        "{page}"
    );
    b.click("a[href='/console/profiles']").await.unwrap();
    let list = b.page_text().await.unwrap();
    assert!(
        list.contains("Sales Gmail") && list.contains("0 / 100"),
        "{list}"
    );
    b.screenshot("03-profiles").await.unwrap();

    // A mailbox for Ann.
    b.click("a[href='/console/mailboxes']").await.unwrap();
    b.press("New mailbox").await.unwrap();
    b.choose("owner_user_id", &w.ann_id).await.unwrap();
    b.fill("email", "ann@example.com").await.unwrap();
    let profile_id = b
        .client
        .execute(
            "return document.querySelector(\"select[name='profile_id'] option:nth-child(2)\").value",
            vec![],
        )
        .await
        .unwrap();
    b.choose("profile_id", profile_id.as_str().unwrap())
        .await
        .unwrap();
    b.screenshot("04-new-mailbox").await.unwrap();
    b.press("Create mailbox").await.unwrap();
    let mailbox_path = b.path().await.unwrap();
    let page = b.page_text().await.unwrap();
    assert!(page.contains("The mailbox was created"), "{page}");
    // The admin is not the owner: no "Sign in to Gmail" for them, and the page says why.
    assert!(!page.contains("Sign in to Gmail"), "{page}");
    assert!(
        page.contains("Only the mailbox's owner, ann@example.com, can sign in"),
        "{page}"
    );
    sign_out(&b).await;

    // Ann signs in, opens her mailbox, and signs in to "Gmail".
    sign_in(&b, &w, "ann@example.com", &w.ann).await;
    let mine = b.page_text().await.unwrap();
    assert!(
        mine.contains("My mailboxes") && mine.contains("ann@example.com"),
        "{mine}"
    );
    assert!(!mine.contains("Email server profiles"), "{mine}");
    b.click("a[href^='/console/mailboxes/']").await.unwrap();
    assert_eq!(b.path().await.unwrap(), mailbox_path);
    assert_eq!(b.text("#sign-in-status").await.unwrap(), "Not signed in");
    b.press("Sign in to Gmail").await.unwrap();
    // The provider's consent sends the browser back to the redirect URI.
    assert_eq!(b.path().await.unwrap(), "/oauth/callback");
    let back = b.page_text().await.unwrap();
    assert!(back.contains("ann@example.com is signed in"), "{back}");
    b.press("Back to the mailbox").await.unwrap();
    assert_eq!(b.path().await.unwrap(), mailbox_path);
    assert_eq!(b.text("#sign-in-status").await.unwrap(), "Signed in");

    // Test & Enable: both sides succeed against Dovecot, and the mailbox is enabled.
    b.press("Test & Enable Mailbox").await.unwrap();
    let page = b.page_text().await.unwrap();
    assert!(page.contains("the mailbox is enabled"), "{page}");
    shows(&b, "#incoming-result", "Success").await;
    shows(&b, "#outgoing-result", "Success").await;
    let log = w.dovecot.log();
    assert!(
        log.contains("imap-login: Info: Login: user=<ann@example.com>, method=XOAUTH2"),
        "{log}"
    );
    b.full_screenshot("05-mailbox-enabled", 1280).await.unwrap();
    b.client.set_window_size(390, 844).await.unwrap();
    b.screenshot("06-mailbox-narrow").await.unwrap();
    b.client.set_window_size(1280, 900).await.unwrap();
    b.click("a[href='/console/mailboxes']").await.unwrap();
    let list = b.page_text().await.unwrap();
    assert!(list.contains("Enabled"), "{list}");
    b.screenshot("07-my-mailboxes").await.unwrap();

    // Disconnect signs out and disables.
    b.goto(&format!("{}{mailbox_path}", w.app.base))
        .await
        .unwrap();
    b.client
        .execute("window.confirm = function () { return true; };", vec![])
        .await
        .unwrap();
    b.press("Disconnect (sign out and revoke access)")
        .await
        .unwrap();
    until(&b, "The mailbox was signed out").await;
    assert_eq!(b.text("#sign-in-status").await.unwrap(), "Not signed in");
    b.close().await.unwrap();
}

#[tokio::test]
async fn signing_in_with_another_account_shows_the_clear_error() {
    let w = MailWorld::start(AppOptions::default()).await;
    let mailbox = ann_mailbox(&w).await;
    w.oauth.next_account("mallory@example.com").await.unwrap();
    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "ann@example.com", &w.ann).await;
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    b.press("Sign in to Gmail").await.unwrap();
    let page = b.page_text().await.unwrap();
    assert!(
        page.contains(
            "you signed in as mallory@example.com, but this mailbox is ann@example.com; sign in again and choose ann@example.com"
        ),
        "{page}"
    );
    b.screenshot("08-wrong-account").await.unwrap();
    b.press("Back to your mailboxes").await.unwrap();
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    assert_eq!(b.text("#sign-in-status").await.unwrap(), "Not signed in");
    b.close().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_explained_next_to_each_field_and_what_was_typed_stays() {
    let w = MailWorld::start(AppOptions::default()).await;
    let b = Browser::start().await.unwrap();

    // A wrong token at sign-in.
    b.goto(&format!("{}/console/sign-in", w.app.base))
        .await
        .unwrap();
    b.fill("email", "admin@example.com").await.unwrap();
    b.fill("token", "mbt_not-the-token").await.unwrap();
    b.press("Sign in").await.unwrap();
    assert_eq!(b.path().await.unwrap(), "/console/sign-in");
    shows(&b, "#f-token-error", "do not belong together").await;
    assert_eq!(b.value("#f-email").await.unwrap(), "admin@example.com");
    sign_in(&b, &w, "admin@example.com", &w.admin).await;

    // A profile form with ports that are not numbers: each says so under its input.
    b.goto(&format!(
        "{}/console/profiles/new?preset=custom",
        w.app.base
    ))
    .await
    .unwrap();
    b.fill("name", "Office IMAP").await.unwrap();
    b.fill("incoming.host", "imap.example.com").await.unwrap();
    b.fill("incoming.port", "99x").await.unwrap();
    b.fill("outgoing.host", "smtp.example.com").await.unwrap();
    b.fill("outgoing.port", "five").await.unwrap();
    b.press("Create profile").await.unwrap();
    assert!(
        b.page_text()
            .await
            .unwrap()
            .contains("This form has a problem")
    );
    shows(
        &b,
        "#f-incoming-port-error",
        "The port must be a whole number, not '99x'",
    )
    .await;
    shows(
        &b,
        "#f-outgoing-port-error",
        "The port must be a whole number, not 'five'",
    )
    .await;
    assert_eq!(b.value("#f-name").await.unwrap(), "Office IMAP");
    // Focus goes to the first field at fault.
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("f-incoming-port")
    );
    b.full_screenshot("09-form-errors", 1280).await.unwrap();

    // The core's own rule (a port out of range) lands on its field too.
    b.fill("incoming.port", "70000").await.unwrap();
    b.fill("outgoing.port", "587").await.unwrap();
    b.press("Create profile").await.unwrap();
    assert!(
        b.text("#f-incoming-port-error")
            .await
            .unwrap()
            .contains("Port 70000 is out of range; use a port from 1 to 65535")
    );
    assert!(w.app.store.list_profiles().await.unwrap().is_empty());

    // A mailbox with an address that is not one.
    b.goto(&format!("{}/console/mailboxes/new", w.app.base))
        .await
        .unwrap();
    b.choose("owner_user_id", &w.ann_id).await.unwrap();
    b.fill("email", "ann at example").await.unwrap();
    b.press("Create mailbox").await.unwrap();
    let email_error = b.text("#f-email-error").await.unwrap();
    assert!(email_error.contains("ann at example"), "{email_error}");
    assert_eq!(b.value("#f-email").await.unwrap(), "ann at example");
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_user_cannot_open_another_users_mailbox_or_the_admin_pages() {
    let w = MailWorld::start(AppOptions::default()).await;
    let mailbox = ann_mailbox(&w).await;
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "bob@example.com", &bob).await;
    assert!(!b.page_text().await.unwrap().contains("ann@example.com"));

    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    let page = b.page_text().await.unwrap();
    assert!(page.contains("Not allowed"), "{page}");
    assert!(
        page.contains("This mailbox belongs to another user"),
        "{page}"
    );
    assert!(!page.contains("Sign in to Gmail"), "{page}");
    b.screenshot("10-not-your-mailbox").await.unwrap();
    for path in [
        "/console/profiles",
        "/console/users",
        "/console/mailboxes/new",
    ] {
        b.goto(&format!("{}{path}", w.app.base)).await.unwrap();
        let page = b.page_text().await.unwrap();
        assert!(page.contains("Only admins can"), "{path}: {page}");
    }

    // Over plain HTTP, the status codes say the same.
    let http = browser_like();
    let cookie = session_cookie(&http, &w.app.base, "bob@example.com", &bob).await;
    for path in [
        format!("/console/mailboxes/{mailbox}"),
        "/console/users".to_owned(),
    ] {
        let resp = http
            .get(format!("{}{path}", w.app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
    }
    b.close().await.unwrap();
}

/// An HTTP client that does not follow redirects, to see each answer.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The value of a `Set-Cookie` for `name`, as a `Cookie` header pair.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

/// Signs in over HTTP the way the form does: (the session's `Cookie` header).
async fn session_cookie(http: &reqwest::Client, base: &str, email: &str, token: &str) -> String {
    let form = http
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    let signin = set_cookie(&form, "mb_signin").unwrap();
    let csrf = signin.trim_start_matches("mb_signin=").to_owned();
    let resp = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", &signin)
        .form(&[("csrf", csrf.as_str()), ("email", email), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&resp, "mb_session").unwrap();
    let flags = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("mb_session="))
        .unwrap();
    assert!(
        flags.contains("HttpOnly") && flags.contains("SameSite=Lax"),
        "{flags}"
    );
    session
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    let w = MailWorld::start(AppOptions::default()).await;
    let http = browser_like();
    let base = &w.app.base;

    // The sign-in form itself: without the token its cookie holds, nothing happens.
    let resp = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("email", "admin@example.com"), ("token", w.admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&resp, "mb_session").is_none());

    let cookie = session_cookie(&http, base, "admin@example.com", &w.admin).await;
    let add = |csrf: Option<&'static str>| {
        let mut form = vec![("email", "eve@example.com"), ("role", "admin")];
        form.extend(csrf.map(|c| ("csrf", c)));
        http.post(format!("{base}/console/users"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    for csrf in [None, Some("0000"), Some("")] {
        let resp = add(csrf).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "csrf {csrf:?}");
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("did not carry this session&#39;s security token")
                || page.contains("did not carry this session's security token"),
            "{page}"
        );
    }
    // No session cookie at all (an expired session): asked to sign in again, nothing done.
    let resp = http
        .post(format!("{base}/console/users"))
        .form(&[("email", "eve@example.com"), ("role", "admin")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/console/sign-in?expired=1");
    let email = mailbridge_core::EmailAddress::parse("eve@example.com", "email").unwrap();
    assert!(
        w.app
            .store
            .find_user_by_email(&email)
            .await
            .unwrap()
            .is_none()
    );

    // In the browser: a form another page could plant, posting without the token.
    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "admin@example.com", &w.admin).await;
    b.client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/console/users';\
             const i = document.createElement('input'); i.name = 'email'; i.value = 'eve@example.com';\
             f.appendChild(i); document.body.appendChild(f); f.submit();",
            vec![],
        )
        .await
        .unwrap();
    b.client
        .wait()
        .for_element(fantoccini::Locator::XPath(
            "//h1[normalize-space(.)='Form refused']",
        ))
        .await
        .unwrap();
    b.screenshot("11-csrf-refused").await.unwrap();
    assert!(
        w.app
            .store
            .find_user_by_email(&email)
            .await
            .unwrap()
            .is_none()
    );

    // With the page's own token the same form works, and shows the new token once.
    b.goto(&format!("{base}/console/users")).await.unwrap();
    b.fill("email", "eve@example.com").await.unwrap();
    b.press("Add user").await.unwrap();
    let token = b.text("#issued-token").await.unwrap();
    assert!(token.starts_with("mbt_"), "{token}");
    let eve = w.app.store.user_by_token(&token).await.unwrap().unwrap();
    assert_eq!(eve.email, email);
    b.screenshot("12-users").await.unwrap();

    // Eve becomes an admin; then her token is reset: the old one stops working.
    let eve_id = eve.id.to_string();
    b.client
        .find(fantoccini::Locator::Css(&format!("#role-{eve_id}")))
        .await
        .unwrap()
        .select_by_value("admin")
        .await
        .unwrap();
    b.click(&format!(
        "form[action='/console/users/{eve_id}/role'] button"
    ))
    .await
    .unwrap();
    assert_eq!(
        w.app.store.get_user(eve.id).await.unwrap().role,
        Role::Admin
    );
    b.client
        .execute("window.confirm = function () { return true; };", vec![])
        .await
        .unwrap();
    b.click(&format!(
        "form[action='/console/users/{eve_id}/token'] button"
    ))
    .await
    .unwrap();
    let new_token = b.text("#issued-token").await.unwrap();
    assert_ne!(new_token, token);
    assert!(w.app.store.user_by_token(&token).await.unwrap().is_none());
    assert_eq!(
        w.app
            .store
            .user_by_token(&new_token)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(eve.id)
    );
    b.close().await.unwrap();
}

#[tokio::test]
async fn the_users_own_view_shows_recent_mail_and_alerts_with_what_to_do() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            scan_interval: Duration::from_millis(200),
            stagger: Duration::ZERO,
            ..EngineConfig::default()
        }),
        ..AppOptions::default()
    })
    .await;
    let mailbox = ann_mailbox(&w).await;
    w.sign_in(&mailbox, &w.ann).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: Dan Buyer <dan@example.com>\r\nTo: ann@example.com\r\nSubject: Quote for 40 chairs\r\nMessage-ID: <q-1@example.com>\r\n\r\nPlease quote.\r\n",
        )
        .unwrap();
    let id = mailbox.parse().unwrap();
    let started = std::time::Instant::now();
    while w.app.store.count_emails(id).await.unwrap() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the mail was not synchronized"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "ann@example.com", &w.ann).await;
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    let page = b.page_text().await.unwrap();
    assert!(
        page.contains("Quote for 40 chairs") && page.contains("Dan Buyer"),
        "{page}"
    );
    assert!(
        page.contains("Folder INBOX") && page.contains("up to date: 1 message on the server"),
        "{page}"
    );
    // A long first sync under way (as its batches record it): how far, and a bar.
    w.archive_pass_under_way(&mailbox, w.app.store.now() - chrono::Duration::seconds(20))
        .await;
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    let page = b.page_text().await.unwrap();
    assert!(
        page.contains("40 of 100 new messages read, about 3")
            && page.contains("seconds left (120 on the server)"),
        "{page}"
    );
    let html = b.source().await.unwrap();
    assert!(
        html.contains(r#"<progress max="100" value="40" aria-label="Archive: messages read">"#),
        "{html}"
    );
    b.full_screenshot("14-sync-progress", 1280).await.unwrap();

    // The engine gives up on the mailbox: Ann is told what failed and what to do.
    w.app
        .store
        .disable_with_alert(
            id,
            "sign_in_required",
            "Google refused the stored sign-in (invalid_grant)",
            "Sign in to Gmail again for this mailbox",
            None,
        )
        .await
        .unwrap();
    b.goto(&format!("{}/console/alerts", w.app.base))
        .await
        .unwrap();
    shows(&b, "a[href='/console/alerts'] .count", "1").await;
    let page = b.page_text().await.unwrap();
    assert!(
        page.contains("What to do: Sign in to Gmail again for this mailbox"),
        "{page}"
    );
    b.screenshot("13-alerts").await.unwrap();
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    shows(&b, "#incoming-result", "Failure").await;
    shows(&b, "#incoming-result", "Google refused the stored sign-in").await;
    shows(&b, "#incoming-result", "What to do: Sign in to Gmail again").await;
    b.goto(&format!("{}/console/mailboxes", w.app.base))
        .await
        .unwrap();
    shows(&b, "main", "1 open").await;
    b.goto(&format!("{}/console/alerts", w.app.base))
        .await
        .unwrap();
    b.press("Dismiss").await.unwrap();
    assert!(b.page_text().await.unwrap().contains("No open alerts"));
    assert!(
        w.app
            .store
            .user_alerts(w.ann_id.parse().unwrap(), false)
            .await
            .unwrap()
            .is_empty()
    );
    b.close().await.unwrap();
}

#[tokio::test]
async fn without_the_gmail_feature_there_is_no_sign_in_button_and_no_way_around_it() {
    let w = MailWorld::start(AppOptions {
        gmail_oauth: false,
        ..AppOptions::default()
    })
    .await;
    let mailbox = ann_mailbox(&w).await;
    let http = browser_like();
    let cookie = session_cookie(&http, &w.app.base, "ann@example.com", &w.ann).await;
    let page = http
        .get(format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"sign-in-gmail\""), "{page}");
    assert!(
        page.contains("Sign in to Gmail is turned off on this installation"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let resp = http
        .post(format!(
            "{}/console/mailboxes/{mailbox}/gmail-sign-in",
            w.app.base
        ))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("turned off on this installation")
    );
}

#[tokio::test]
async fn an_admin_adds_a_webhook_sends_a_test_event_and_sees_each_attempt() {
    use mailbridge_testkit::{Answer, WebhookReceiver};
    let w = MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("crm", &[], Answer::Ok).await.unwrap();
    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "admin@example.com", &w.admin).await;
    b.press("Webhooks").await.unwrap();
    assert_eq!(b.path().await.unwrap(), "/console/webhooks");
    // A mistake first: the error sits by the field and what was typed stays.
    b.fill("url", "crm.example.com/hooks").await.unwrap();
    b.press("Add webhook").await.unwrap();
    shows(&b, ".field.invalid", "not a URL").await;
    b.fill("url", &url).await.unwrap();
    b.fill("description", "The CRM").await.unwrap();
    b.tick("input[value='email.received']").await.unwrap();
    b.tick("input[value='mailbox.disabled']").await.unwrap();
    b.press("Add webhook").await.unwrap();
    let secret = b.text("#webhook-secret").await.unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    shows(&b, "table", "email.received, mailbox.disabled").await;
    b.full_screenshot("webhooks", 1280).await.unwrap();
    receiver
        .receiver("crm", &[&secret], Answer::Ok)
        .await
        .unwrap();
    b.click("table a").await.unwrap();
    let endpoint_page = format!("{}{}", w.app.base, b.path().await.unwrap());
    b.press("Send test event").await.unwrap();
    until(&b, "is on its way").await;
    // The worker delivers within a moment; the page shows the attempt.
    for _ in 0..100 {
        b.goto(&endpoint_page).await.unwrap();
        if b.page_text().await.unwrap().contains("delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shows(&b, "table", "webhook.test").await;
    shows(&b, "table", "delivered").await;
    // The attempts fold away until asked for.
    b.tick("details summary").await.unwrap();
    shows(&b, "table", "HTTP 204").await;
    b.screenshot("webhook-deliveries").await.unwrap();
    let got = receiver.deliveries("crm").await.unwrap();
    assert_eq!(
        (got.len(), &got[0]["verified"]),
        (1, &json!(true)),
        "{got:#?}"
    );
    // The secret is not on the page any more; a user does not see the page at all.
    assert!(!b.page_text().await.unwrap().contains(&secret));
    sign_out(&b).await;
    sign_in(&b, &w, "ann@example.com", &w.ann).await;
    b.goto(&format!("{}/console/webhooks", w.app.base))
        .await
        .unwrap();
    assert!(
        b.page_text()
            .await
            .unwrap()
            .contains("Only admins can manage webhooks"),
        "{}",
        b.page_text().await.unwrap()
    );
    b.close().await.unwrap();
    w.app.stop().await.unwrap();
}

/// Every page of the console, as an admin and as a user, judged by axe-core against WCAG 2
/// A and AA; a form sent back with errors too.
#[tokio::test]
async fn every_console_page_passes_the_axe_accessibility_rules() {
    let w = MailWorld::start(AppOptions::default()).await;
    let b = Browser::start().await.unwrap();
    let profile = w
        .microsoft_like("Contoso", w.imaps(), w.submissions(), json!({}))
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    let (_, hook) = w
        .api
        .post(
            &w.app,
            "/api/v1/webhooks",
            &w.admin,
            json!({"url": "https://crm.example.com/hooks"}),
        )
        .await;
    let mut pages = vec![("/console/sign-in".to_owned(), "nobody")];
    for path in [
        "/console/mailboxes",
        "/console/mailboxes/new",
        &format!("/console/mailboxes/{mailbox}"),
        &format!("/console/mailboxes/{mailbox}/edit"),
        "/console/profiles",
        "/console/profiles/new?preset=gmail",
        "/console/profiles/new?preset=microsoft",
        "/console/profiles/new?preset=custom",
        &format!("/console/profiles/{profile}"),
        "/console/users",
        "/console/alerts",
        "/console/webhooks",
        &format!(
            "/console/webhooks/{}",
            hook["id"].as_str().unwrap_or("missing")
        ),
    ] {
        pages.push((path.to_owned(), "admin"));
    }
    pages.push((format!("/console/mailboxes/{mailbox}"), "ann"));
    let mut found = Vec::new();
    let mut as_whom = "nobody";
    for (path, who) in &pages {
        if *who != as_whom {
            match *who {
                "admin" => sign_in(&b, &w, "admin@example.com", &w.admin).await,
                _ => {
                    sign_out(&b).await;
                    sign_in(&b, &w, "ann@example.com", &w.ann).await;
                }
            }
            as_whom = who;
        }
        b.goto(&format!("{}{path}", w.app.base)).await.unwrap();
        for v in b.accessibility_violations().await.unwrap() {
            found.push(format!("{path} as {who}: {v}"));
        }
    }
    // A form with errors: each field's message and the summary.
    sign_out(&b).await;
    sign_in(&b, &w, "admin@example.com", &w.admin).await;
    b.goto(&format!(
        "{}/console/profiles/new?preset=custom",
        w.app.base
    ))
    .await
    .unwrap();
    b.fill("incoming.port", "not a port").await.unwrap();
    b.press("Create profile").await.unwrap();
    assert!(b.page_text().await.unwrap().contains("not a port"));
    for v in b.accessibility_violations().await.unwrap() {
        found.push(format!("profile form with errors: {v}"));
    }
    assert!(found.is_empty(), "axe found:\n{}", found.join("\n"));
    b.close().await.unwrap();
}

#[tokio::test]
async fn an_admin_sets_up_microsoft_365_and_the_user_signs_in_with_microsoft() {
    let w = MailWorld::start(AppOptions::default()).await;
    w.oauth
        .set_mode(json!({"claims": "microsoft"}))
        .await
        .unwrap();
    let b = Browser::start().await.unwrap();
    sign_in(&b, &w, "admin@example.com", &w.admin).await;
    b.click("a[href='/console/profiles']").await.unwrap();
    b.press("New Microsoft 365 profile").await.unwrap();
    let steps = b.text("#microsoft-steps").await.unwrap();
    assert_eq!(steps, "In the Microsoft Entra admin center");
    let page = b.page_text().await.unwrap();
    for words in [
        "App registrations",
        "IMAP.AccessAsUser.All",
        "Grant admin consent",
        "Authenticated SMTP",
    ] {
        assert!(page.contains(words), "{words}: {page}");
    }
    assert_eq!(
        b.text("#redirect-uri").await.unwrap(),
        format!("{}/oauth/callback", w.app.base)
    );
    assert_eq!(b.value("[name='oauth.tenant']").await.unwrap(), "common");
    b.screenshot("08-new-microsoft-profile").await.unwrap();
    b.fill("name", "Contoso").await.unwrap();
    b.fill("oauth.client_id", "6731de76-14a6-49ae-97bc-6eba6914391e")
        .await
        .unwrap();
    b.fill("oauth.client_secret", "Qx8Q~console-secret")
        .await
        .unwrap();
    b.fill("oauth.tenant", "contoso.onmicrosoft.com")
        .await
        .unwrap();
    open_folded_groups(&b).await;
    // The preset fills Microsoft 365's servers; the local peers stand in for them.
    assert_eq!(
        b.value("[name='incoming.host']").await.unwrap(),
        "outlook.office365.com"
    );
    assert_eq!(b.value("[name='outgoing.port']").await.unwrap(), "587");
    point_at_local_peers(&b, &w).await;
    b.choose("outgoing.security", "tls").await.unwrap();
    b.press("Create profile").await.unwrap();
    let page = b.page_text().await.unwrap();
    assert!(page.contains("Profile “Contoso” was created."), "{page}");
    let profile_path = b.path().await.unwrap();
    let profile = profile_path
        .trim_start_matches("/console/profiles/")
        .to_owned();
    let (_, p) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
        )
        .await;
    assert_eq!(p["auth"], "microsoft_oauth", "{p}");
    assert!(
        p["oauth"]["scopes"].to_string().contains("SMTP.Send"),
        "{p}"
    );

    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    sign_out(&b).await;
    sign_in(&b, &w, "ann@example.com", &w.ann).await;
    b.goto(&format!("{}/console/mailboxes/{mailbox}", w.app.base))
        .await
        .unwrap();
    b.press("Sign in with Microsoft").await.unwrap();
    let back = b.page_text().await.unwrap();
    assert!(back.contains("ann@example.com is signed in"), "{back}");
    b.press("Back to the mailbox").await.unwrap();
    b.press("Test & Enable Mailbox").await.unwrap();
    shows(&b, "#incoming-result", "Success").await;
    shows(&b, "#outgoing-result", "Success").await;
    b.close().await.unwrap();
}

/// Opens the form's folded groups (a preset's servers and endpoints).
async fn open_folded_groups(b: &Browser) {
    for summary in b
        .client
        .find_all(fantoccini::Locator::Css("details.group > summary"))
        .await
        .unwrap()
    {
        summary.click().await.unwrap();
    }
}

/// Points a profile form's OAuth endpoints and mail servers at the local peers standing in
/// for the provider.
async fn point_at_local_peers(b: &Browser, w: &MailWorld) {
    let o = w.oauth.url();
    b.fill("oauth.authorization_url", &format!("{o}/authorize"))
        .await
        .unwrap();
    b.fill("oauth.token_url", &format!("{o}/token"))
        .await
        .unwrap();
    b.fill("incoming.host", "127.0.0.1").await.unwrap();
    b.fill("incoming.port", &w.dovecot.ports.imaps.to_string())
        .await
        .unwrap();
    b.fill("outgoing.host", "127.0.0.1").await.unwrap();
    b.fill("outgoing.port", &w.dovecot.ports.submissions.to_string())
        .await
        .unwrap();
}
