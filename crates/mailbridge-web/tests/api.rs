//! The API over real HTTP: a server on port 0 with its own SQLite file in a temp folder.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use mailbridge_core::Role;
use mailbridge_testkit::{ApiClient, TestApp, TestDatabase, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "GOCSPX-api-test-secret-5d1e8c";

fn gmail_profile(name: &str) -> Value {
    json!({"name": name, "preset": "gmail",
           "oauth": {"client_id": "42.apps.googleusercontent.com", "client_secret": SECRET}})
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_and_users_cannot_administer() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (_, user) = s.user("ann@example.com", Role::User).await.unwrap();

    let resp = c
        .http
        .get(format!("{}/api/v1/mailboxes", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let r = c
        .call(&s, Method::GET, "/api/v1/mailboxes", None, None)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    assert_error(
        &c.get(&s, "/api/v1/mailboxes", "mbt_not-a-token").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    );

    for path in [
        "/api/v1/server-profiles",
        "/api/v1/users",
        "/api/v1/audit-log",
    ] {
        assert_error(
            &c.get(&s, path, &user).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        );
    }
    assert_error(
        &c.post(&s, "/api/v1/server-profiles", &user, gmail_profile("Mine"))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/users",
            &user,
            json!({"email": "x@example.com"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    // The user's own (empty) mailbox list is theirs to read.
    assert_eq!(
        c.get(&s, "/api/v1/mailboxes", &user).await,
        (StatusCode::OK, json!([]))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn users_are_created_with_a_token_once_and_the_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (admin_id, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();

    let (status, body) = c
        .post(
            &s,
            "/api/v1/users",
            &admin,
            json!({"email": "Bob@Example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["email"], "Bob@example.com");
    assert_eq!(body["user"]["role"], "user");
    let bob_token = body["token"].as_str().unwrap().to_owned();
    let bob_id = body["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        c.get(&s, "/api/v1/mailboxes", &bob_token).await.0,
        StatusCode::OK
    );
    // The token is not shown again.
    let (_, shown) = c.get(&s, &format!("/api/v1/users/{bob_id}"), &admin).await;
    assert!(shown.get("token").is_none() && !shown.to_string().contains(&bob_token));

    assert_error(
        &c.post(
            &s,
            "/api/v1/users",
            &admin,
            json!({"email": "Bob@example.com"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_error(
        &c.post(&s, "/api/v1/users", &admin, json!({"email": "bob"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("email"),
    );
    assert_error(
        &c.post(&s, "/api/v1/users", &admin, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("email"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/users",
            &admin,
            json!({"email": "c@example.com", "role": "root"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("role"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/users",
            &admin,
            json!({"email": "c@example.com", "rol": "user"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        None,
    );

    // Not JSON, and broken JSON.
    let resp = c
        .http
        .post(format!("{}/api/v1/users", s.base))
        .bearer_auth(&admin)
        .body("email=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = c
        .http
        .post(format!("{}/api/v1/users", s.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_json"
    );

    // Roles: the last admin stays an admin.
    assert_error(
        &c.patch(
            &s,
            &format!("/api/v1/users/{admin_id}"),
            &admin,
            json!({"role": "user"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_error(
        &c.delete(&s, &format!("/api/v1/users/{admin_id}"), &admin)
            .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    let (status, body) = c
        .patch(
            &s,
            &format!("/api/v1/users/{bob_id}"),
            &admin,
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(
        (status, body["role"].clone()),
        (StatusCode::OK, json!("admin"))
    );

    // A reset token replaces the old one at once.
    let (status, body) = c
        .post(
            &s,
            &format!("/api/v1/users/{bob_id}/token"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &c.get(&s, "/api/v1/mailboxes", &bob_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    );
    assert_eq!(
        c.get(&s, "/api/v1/mailboxes", body["token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );

    assert_eq!(
        c.delete(&s, &format!("/api/v1/users/{bob_id}"), &admin)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &c.get(&s, &format!("/api/v1/users/{bob_id}"), &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &c.get(&s, "/api/v1/users/not-an-id", &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn profiles_validate_every_field_and_never_return_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (_, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();

    let (status, p) = c
        .post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            gmail_profile("Sales"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(
        p["incoming"],
        json!({"protocol": "imap", "host": "imap.gmail.com", "port": 993, "security": "tls"})
    );
    assert_eq!(
        p["outgoing"],
        json!({"host": "smtp.gmail.com", "port": 465, "security": "tls", "authentication": "mailbox"})
    );
    assert_eq!(p["auth"], "gmail_oauth");
    assert_eq!(p["max_mailboxes"], 100);
    assert_eq!(p["oauth"]["client_secret_set"], true);
    assert_eq!(
        p["oauth"]["token_url"],
        "https://oauth2.googleapis.com/token"
    );
    assert!(
        p["oauth"]["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("https://mail.google.com/"))
    );
    let id = p["id"].as_str().unwrap().to_owned();

    let pop = c
        .post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            json!({"name": "Pop", "preset": "gmail", "incoming": {"protocol": "pop3"},
        "oauth": {"client_id": "c", "client_secret": "x"}}),
        )
        .await;
    assert_eq!(pop.1["incoming"]["host"], "pop.gmail.com");
    assert_eq!(pop.1["incoming"]["port"], 995);

    let password = |incoming: Value, outgoing: Value| json!({"name": "Own server", "auth": "password", "incoming": incoming, "outgoing": outgoing});
    let out = json!({"host": "smtp.example.com"});
    for (body, field) in [
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com", "port": 0}),
                out.clone(),
            ),
            "incoming.port",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com", "port": 70000}),
                out.clone(),
            ),
            "incoming.port",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com", "port": "993"}),
                out.clone(),
            ),
            "incoming.port",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap example.com"}),
                out.clone(),
            ),
            "incoming.host",
        ),
        (
            password(
                json!({"protocol": "imap4", "host": "imap.example.com"}),
                out.clone(),
            ),
            "incoming.protocol",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com", "security": "ssl"}),
                out.clone(),
            ),
            "incoming.security",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com"}),
                json!({}),
            ),
            "outgoing.host",
        ),
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com"}),
                json!({"host": "smtp.example.com", "port": -1}),
            ),
            "outgoing.port",
        ),
        (json!({"name": "x", "auth": "kerberos"}), "auth"),
        (
            json!({"name": "", "preset": "gmail", "oauth": {"client_id": "c", "client_secret": "s"}}),
            "name",
        ),
        (json!({"name": "x", "preset": "yahoo"}), "preset"),
        (
            json!({"name": "x", "preset": "gmail", "oauth": {"client_id": "c"}}),
            "oauth.client_secret",
        ),
        (
            json!({"name": "x", "preset": "gmail", "oauth": {"client_secret": "s"}}),
            "oauth.client_id",
        ),
        (
            json!({"name": "x", "preset": "gmail", "max_mailboxes": 101, "oauth": {"client_id": "c", "client_secret": "s"}}),
            "max_mailboxes",
        ),
        (
            json!({"name": "x", "preset": "gmail", "poll_interval_seconds": 1, "oauth": {"client_id": "c", "client_secret": "s"}}),
            "poll_interval_seconds",
        ),
        (
            json!({"name": "x", "preset": "gmail", "process_emails_received_after": "last week", "oauth": {"client_id": "c", "client_secret": "s"}}),
            "process_emails_received_after",
        ),
        // Passwords and tokens never travel in clear beyond this machine.
        (
            password(
                json!({"protocol": "imap", "host": "imap.example.com", "security": "none"}),
                out.clone(),
            ),
            "incoming.security",
        ),
        (
            password(
                json!({"protocol": "pop3", "host": "127.0.0.1", "security": "none"}),
                json!({"host": "10.1.2.3", "security": "none"}),
            ),
            "outgoing.security",
        ),
    ] {
        let r = c
            .post(&s, "/api/v1/server-profiles", &admin, body.clone())
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some(field));
    }
    // This machine may be reached without TLS (a local relay, a test server).
    let (status, local) = c
        .post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            password(
                json!({"protocol": "imap", "host": "127.0.0.1", "security": "none"}),
                json!({"host": "localhost", "security": "none"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{local}");
    // The Gmail limit is explained in words.
    let r = c.post(&s, "/api/v1/server-profiles", &admin, json!({"name": "x", "preset": "gmail", "max_mailboxes": 101, "oauth": {"client_id": "c", "client_secret": "s"}})).await;
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100"),
        "{}",
        r.1
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            gmail_profile("Sales"),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );

    // Patch: named fields change, the rest and the secret stay; a new secret replaces it.
    let (status, patched) = c.patch(&s, &format!("/api/v1/server-profiles/{id}"), &admin, json!({"name": "Sales EU", "poll_interval_seconds": 120, "process_emails_received_after": "2026-01-01"})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (
            patched["name"].clone(),
            patched["poll_interval_seconds"].clone()
        ),
        (json!("Sales EU"), json!(120))
    );
    assert_eq!(patched["process_emails_received_after"], "2026-01-01");
    assert_eq!(patched["incoming"], p["incoming"]);
    assert_eq!(patched["oauth"]["client_secret_set"], true);
    let r = c
        .patch(
            &s,
            &format!("/api/v1/server-profiles/{id}"),
            &admin,
            json!({"max_mailboxes": 500}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("max_mailboxes"),
    );
    let r = c
        .patch(
            &s,
            &format!("/api/v1/server-profiles/{id}"),
            &admin,
            json!({"oauth": {"client_secret": "rotated-secret-value"}}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK);
    let stored = s
        .store
        .profile_client_secret(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&stored),
        "rotated-secret-value"
    );

    assert_error(
        &c.get(
            &s,
            "/api/v1/server-profiles/0190b6a0-0000-7000-8000-000000000000",
            &admin,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &c.patch(
            &s,
            "/api/v1/server-profiles/nope",
            &admin,
            json!({"name": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let (_, list) = c.get(&s, "/api/v1/server-profiles", &admin).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "Sales, Pop and Own server"
    );

    let seen = c.seen();
    assert!(
        !seen.contains(SECRET) && !seen.contains("rotated-secret-value"),
        "a client secret was returned"
    );
    let (_, audit) = c.get(&s, "/api/v1/audit-log", &admin).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "profile.update")
    );
    assert!(
        !audit.to_string().contains(SECRET),
        "the audit log holds a secret"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn mailboxes_belong_to_their_owner_and_a_gmail_profile_stops_at_100() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (_, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();
    let (ann_id, ann) = s.user("ann@example.com", Role::User).await.unwrap();
    let (bob_id, bob) = s.user("bob@example.com", Role::User).await.unwrap();
    let (_, p) = c
        .post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            gmail_profile("Sales A"),
        )
        .await;
    let profile = p["id"].as_str().unwrap().to_owned();

    let (status, m) = c
        .post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"owner_user_id": ann_id, "email": "ann@example.com", "profile_id": profile}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    assert_eq!(m["incoming_status"], "not_run");
    assert_eq!(m["outgoing_status"], "not_run");
    assert_eq!(m["enabled"], false);
    assert_eq!(m["incoming_method"], "server_side_sync");
    assert_eq!(m["tracking_rule"], "all");
    let ann_box = format!("/api/v1/mailboxes/{}", m["id"].as_str().unwrap());

    // Ann sees and tunes her mailbox; Bob cannot touch it; users do not create or delete.
    assert_eq!(c.get(&s, &ann_box, &ann).await.0, StatusCode::OK);
    assert_error(
        &c.get(&s, &ann_box, &bob).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &c.patch(&s, &ann_box, &bob, json!({"tracking_rule": "none"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_eq!(c.get(&s, "/api/v1/mailboxes", &bob).await.1, json!([]));
    assert_error(
        &c.get(
            &s,
            &format!("/api/v1/mailboxes?owner_user_id={ann_id}"),
            &bob,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let (status, tuned) = c
        .patch(
            &s,
            &ann_box,
            &ann,
            json!({"tracking_rule": "responses", "outgoing_method": "none"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tuned}");
    assert_eq!(
        (
            tuned["tracking_rule"].clone(),
            tuned["outgoing_method"].clone()
        ),
        (json!("responses"), json!("none"))
    );
    assert_error(
        &c.patch(&s, &ann_box, &ann, json!({"owner_user_id": bob_id}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        Some("owner_user_id"),
    );
    assert_error(
        &c.patch(&s, &ann_box, &ann, json!({"tracking_rule": "some"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("tracking_rule"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &ann,
            json!({"email": "x@example.com", "profile_id": profile}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &c.delete(&s, &ann_box, &ann).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );

    // Bad input names the field; unknown references are 422 on the field, unknown ids 404.
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "not-an-address", "profile_id": profile}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("email"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "z@example.com"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("profile_id"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "z@example.com", "profile_id": "0190b6a0-0000-7000-8000-000000000000"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("profile_id"),
    );
    let bad_id = c
        .post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "z@example.com", "profile_id": "oops"}),
        )
        .await;
    assert_error(
        &bad_id,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("profile_id"),
    );
    let message = bad_id.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'oops' is not an id") && !message.contains("UUID parsing"),
        "{message}"
    );
    assert_error(&c.post(&s, "/api/v1/mailboxes", &admin, json!({"email": "z@example.com", "profile_id": profile, "owner_user_id": "0190b6a0-0000-7000-8000-000000000000"})).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some("owner_user_id"));
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "z@example.com", "profile_id": profile, "incoming_method": "pigeon"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("incoming_method"),
    );
    assert_error(
        &c.post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"email": "ann@example.com", "profile_id": profile}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_error(
        &c.get(
            &s,
            "/api/v1/mailboxes/0190b6a0-0000-7000-8000-000000000000",
            &admin,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );

    // Fill the profile to its 100, then the 101st is refused with a way out.
    for i in 1..100 {
        let r = c.post(&s, "/api/v1/mailboxes", &admin, json!({"owner_user_id": bob_id, "email": format!("bob{i}@example.com"), "profile_id": profile})).await;
        assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    }
    let r = c
        .post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"owner_user_id": bob_id, "email": "bob100@example.com", "profile_id": profile}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "profile_full", Some("profile_id"));
    let msg = r.1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Sales A")
            && msg.contains("100")
            && msg.contains("second Gmail OAuth profile"),
        "{msg}"
    );
    let (_, p) = c
        .get(&s, &format!("/api/v1/server-profiles/{profile}"), &admin)
        .await;
    assert_eq!(p["mailbox_count"], 100);

    // Moving a mailbox onto a full profile is refused the same way; onto another, it works
    // and the mailbox must be tested again.
    let (_, other) = c
        .post(
            &s,
            "/api/v1/server-profiles",
            &admin,
            gmail_profile("Sales B"),
        )
        .await;
    let (_, extra) = c.post(&s, "/api/v1/mailboxes", &admin, json!({"owner_user_id": bob_id, "email": "bob100@example.com", "profile_id": other["id"]})).await;
    let extra_path = format!("/api/v1/mailboxes/{}", extra["id"].as_str().unwrap());
    assert_error(
        &c.patch(&s, &extra_path, &admin, json!({"profile_id": profile}))
            .await,
        StatusCode::CONFLICT,
        "profile_full",
        Some("profile_id"),
    );

    // A profile with mailboxes cannot be deleted; an empty one can. Owners cannot be deleted.
    assert_error(
        &c.delete(&s, &format!("/api/v1/server-profiles/{profile}"), &admin)
            .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_error(
        &c.delete(&s, &format!("/api/v1/users/{bob_id}"), &admin)
            .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_eq!(
        c.delete(&s, &extra_path, &admin).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.delete(
            &s,
            &format!("/api/v1/server-profiles/{}", other["id"].as_str().unwrap()),
            &admin
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let (_, admins_view) = c
        .get(
            &s,
            &format!("/api/v1/mailboxes?owner_user_id={ann_id}"),
            &admin,
        )
        .await;
    assert_eq!(admins_view.as_array().unwrap().len(), 1);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_users_profiles_mailboxes_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (admin_id, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();
    let (_, p) = c
        .post(&s, "/api/v1/server-profiles", &admin, gmail_profile("Kept"))
        .await;
    let (_, m) = c
        .post(
            &s,
            "/api/v1/mailboxes",
            &admin,
            json!({"owner_user_id": admin_id, "email": "kept@example.com", "profile_id": p["id"]}),
        )
        .await;
    s.stop().await.unwrap();

    let s = TestApp::start(dir.path()).await.unwrap();
    assert_eq!(
        c.get(
            &s,
            &format!("/api/v1/server-profiles/{}", p["id"].as_str().unwrap()),
            &admin
        )
        .await,
        (StatusCode::OK, {
            let mut p = p.clone();
            p["mailbox_count"] = json!(1);
            p
        })
    );
    assert_eq!(
        c.get(
            &s,
            &format!("/api/v1/mailboxes/{}", m["id"].as_str().unwrap()),
            &admin
        )
        .await,
        (StatusCode::OK, m)
    );
    let secret = s
        .store
        .profile_client_secret(p["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), SECRET);
    s.stop().await.unwrap();

    // Stored: the secret only as ciphertext (SQLite: in the file and its write-ahead log).
    let bytes = TestDatabase::from_env().contents(dir.path()).await.unwrap();
    assert!(
        bytes
            .windows(b"42.apps.googleusercontent.com".len())
            .any(|w| w == b"42.apps.googleusercontent.com")
    );
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "secret in clear on disk"
    );
}

#[tokio::test]
async fn probes_features_and_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let get = |p: &str| c.http.get(format!("{}{p}", s.base)).send();
    assert_eq!(get("/healthz").await.unwrap().text().await.unwrap(), "ok");
    assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
    let features: Value = get("/api/v1/features").await.unwrap().json().await.unwrap();
    assert_eq!(features["gmail_oauth"], true);
    assert_eq!(
        features["oauth_redirect_uri"],
        format!("{}/oauth/callback", s.base)
    );
    let doc: Value = get("/api/v1/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/users",
        "/users/{id}",
        "/server-profiles",
        "/server-profiles/{id}",
        "/mailboxes",
        "/mailboxes/{id}",
        "/features",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"].get("ProfileDraft").is_some());
    let r = get("/api/v1/nothing-here").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    // A closed database makes the service unready, not dead.
    s.store.close().await;
    assert_eq!(
        get("/readyz").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_query_is_a_json_error_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (_, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();

    // A query parameter that does not parse is a 422 naming it, not axum's plain text.
    for (path, field) in [
        ("/api/v1/emails?limit=abc", "limit"),
        ("/api/v1/emails?since=notadate", "since"),
        ("/api/v1/emails?limit=1&limit=2", "limit"),
        ("/api/v1/contacts?limit=many", "limit"),
        ("/api/v1/audit-log?before=yesterday", "before"),
        ("/api/v1/alerts?all=maybe", "all"),
    ] {
        let r = c.get(&s, path, &admin).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some(field));
        let message = r.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{path}: {message}");
    }
    // Authentication still comes first.
    let r = c
        .call(&s, Method::GET, "/api/v1/emails?limit=abc", None, None)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated", None);

    // Pages answer a malformed query with a page, not plain text.
    for (path, status) in [
        (
            "/console/sign-in?expired=1&expired=2",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/oauth/callback?state=a&state=b", StatusCode::BAD_REQUEST),
    ] {
        let resp = c
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let page = resp.text().await.unwrap();
        assert!(page.contains("expired") || page.contains("state"), "{page}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn path_and_method_errors_under_the_api_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestApp::start(dir.path()).await.unwrap();
    let c = ApiClient::default();
    let (_, admin) = s.user("admin@example.com", Role::Admin).await.unwrap();

    // A path segment that is not UTF-8 once decoded: axum's path rejection, in our shape.
    for path in [
        "/api/v1/mailboxes/%FF",
        "/api/v1/mailboxes/%FF/alerts/%FE/dismiss",
    ] {
        let r = c.call(&s, Method::GET, path, Some(&admin), None).await;
        assert!(r.0.is_client_error(), "{path}: {}", r.1);
        assert!(r.1["error"]["code"].is_string(), "{path}: {}", r.1);
    }
    let r = c.get(&s, "/api/v1/mailboxes/%FF", &admin).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request", None);

    // A method the resource does not have: 405 in the JSON shape, with the Allow header.
    let resp = c
        .http
        .put(format!("{}/api/v1/mailboxes", s.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("PUT") && message.contains("/api/v1/mailboxes"),
        "{message}"
    );
    s.stop().await.unwrap();
}
