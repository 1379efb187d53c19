//! The change feed end to end: what a mailbox lives through (signed in, tested, enabled,
//! mail received, mail sent, disabled with an alert) appears once each, in commit order;
//! users see only their own; a long poll answers within a fraction of a second of a
//! commit; the Server-Sent Events stream resumes from `Last-Event-ID`; a cursor older than
//! retention is a 410 naming the oldest one still available.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::time::{Duration, Instant};

use mailbridge_core::Role;
use mailbridge_testkit::{AppOptions, MailWorld, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn world() -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await
}

/// Every event the feed gives `token` after `after`, page by page (`limit` each).
async fn drain(
    w: &MailWorld,
    token: &str,
    after: &str,
    extra: &str,
    limit: usize,
) -> (Vec<Value>, String) {
    let mut cursor = after.to_owned();
    let mut all = Vec::new();
    loop {
        let (status, page) = w
            .api
            .get(
                &w.app,
                &format!("/api/v1/events?after={cursor}&limit={limit}{extra}"),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        let next = page["next_cursor"].as_str().unwrap().to_owned();
        assert!(
            next.parse::<i64>().unwrap() >= cursor.parse::<i64>().unwrap_or(0),
            "the cursor never goes back"
        );
        cursor = next;
        if events.is_empty() {
            return (all, cursor);
        }
        all.extend(events);
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn what_a_mailbox_lives_through_is_in_the_feed_once_in_commit_order() {
    let w = world().await;
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    w.dovecot
        .deliver("ann@example.com", b"From: bob@example.com\r\nTo: ann@example.com\r\nSubject: Quote\r\nMessage-ID: <q1@example.com>\r\n\r\nhi\r\n")
        .unwrap();
    // The reply is sent once the mail it answers is in, so it joins its conversation.
    w.poll(
        "/api/v1/events?types=email.received",
        &w.ann,
        30,
        "the mail in",
        |p| p["events"].as_array().unwrap().len() == 1,
    )
    .await;
    let (status, sent) = w
        .api
        .post(
            &w.app,
            "/api/v1/emails",
            &w.ann,
            json!({
            "mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
            "subject": "Re: Quote", "text_body": "Deal.", "in_reply_to": "q1@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    w.poll(
        "/api/v1/events?types=email.received,email.sent",
        &w.ann,
        30,
        "mail in and out",
        |p| p["events"].as_array().unwrap().len() == 2,
    )
    .await;
    let (events, head) = drain(&w, &w.admin, "0", "", 2).await;
    let seen = types(&events);
    for expected in [
        "mailbox.signed_in",
        "mailbox.tested",
        "mailbox.enabled",
        "email.received",
        "email.sent",
    ] {
        assert_eq!(
            seen.iter().filter(|t| **t == expected).count(),
            1,
            "{expected} once in {seen:?}"
        );
    }
    let position = |t: &str| seen.iter().position(|s| *s == t).unwrap();
    assert!(position("mailbox.signed_in") < position("mailbox.tested"));
    assert!(
        position("mailbox.tested") < position("mailbox.enabled"),
        "{seen:?}"
    );
    let cursors: Vec<i64> = events
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        cursors.windows(2).all(|c| c[0] < c[1]),
        "oldest first: {cursors:?}"
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "each event once");
    // An email event says what the application needs to route it; the body stays behind
    // GET /emails/{id}.
    let received = &events[position("email.received")];
    assert_eq!(received["mailbox_id"], mailbox.as_str());
    let email = &received["data"]["email"];
    assert_eq!(email["message_id"], "q1@example.com");
    assert_eq!(email["subject"], "Quote");
    assert_eq!(email["from"]["address"], "bob@example.com");
    assert_eq!(email["direction"], "incoming");
    assert!(email.get("text_body").is_none(), "{email}");
    let outgoing = &events[position("email.sent")]["data"]["email"];
    assert_eq!(outgoing["id"], sent["id"]);
    assert_eq!(outgoing["status"], "sent");
    assert_eq!(
        outgoing["conversation_id"], email["conversation_id"],
        "the reply joined the conversation"
    );
    // Ann sees all of it (her mailbox); another user sees none of it; a filter narrows.
    let (ann_events, _) = drain(&w, &w.ann, "0", "", 100).await;
    assert_eq!(ann_events.len(), events.len());
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    let (bob_events, bob_head) = drain(&w, &bob, "0", "", 100).await;
    assert!(bob_events.is_empty(), "{bob_events:#?}");
    assert_eq!(
        bob_head, head,
        "an empty answer still moves the cursor to the newest position"
    );
    let (only, _) = drain(&w, &w.ann, "0", "&types=email.sent", 100).await;
    assert_eq!(types(&only), ["email.sent"]);
    assert_error(
        &w.api
            .get(
                &w.app,
                &format!("/api/v1/events?mailbox_id={mailbox}"),
                &bob,
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &w.api
            .get(&w.app, "/api/v1/events?types=email.recieved", &w.ann)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("types"),
    );
    assert_error(
        &w.api
            .get(&w.app, "/api/v1/events?after=yesterday", &w.ann)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("after"),
    );
    // The provider revokes the grant: the mailbox stops, and the feed says so with an alert.
    w.app
        .store
        .mark_sign_in_required(mailbox.parse().unwrap(), "invalid_grant")
        .await
        .unwrap();
    let (later, _) = drain(&w, &w.ann, &head, "", 100).await;
    assert_eq!(
        types(&later),
        ["mailbox.needs_sign_in", "mailbox.disabled", "alert.created"]
    );
    assert_eq!(later[2]["data"]["alert"]["kind"], "sign_in_required");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_answers_within_a_fraction_of_a_second_of_a_commit() {
    let w = MailWorld::start(AppOptions::default()).await;
    let mailbox = w.ann_password_mailbox().await;
    // Nothing happens: the answer comes after the wait, empty, with a cursor to go on from.
    let started = Instant::now();
    let (_, page) = w
        .api
        .get(&w.app, "/api/v1/events?after=latest&wait=1", &w.ann)
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(page["events"], json!([]));
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    // A commit while the request waits wakes it at once.
    let waiting = {
        let (http, base, token) = (w.api.http.clone(), w.app.base.clone(), w.ann.clone());
        tokio::spawn(async move {
            let answer: Value = http
                .get(format!("{base}/api/v1/events?after={cursor}&wait=30"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (Instant::now(), answer)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.enable_as_tested(&mailbox).await;
    let committed = Instant::now();
    let (answered, page) = waiting.await.unwrap();
    let lag = answered.saturating_duration_since(committed);
    assert_eq!(
        types(page["events"].as_array().unwrap())[..],
        ["mailbox.tested", "mailbox.enabled"]
    );
    assert!(
        lag < Duration::from_millis(500),
        "the long poll answered {lag:?} after the commit"
    );
    assert_error(
        &w.api.get(&w.app, "/api/v1/events?wait=61", &w.ann).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("wait"),
    );
    w.app.stop().await.unwrap();
}

/// Reads `n` events from an SSE response: (id, type, data) each.
async fn sse_events(mut resp: reqwest::Response, n: usize) -> Vec<(String, String, Value)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .expect("the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_owned())
            };
            if let (Some(id), Some(kind), Some(data)) = (field("id"), field("event"), field("data"))
            {
                out.push((id, kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_event_stream_resumes_from_last_event_id() {
    let w = MailWorld::start(AppOptions::default()).await;
    let mailbox = w.ann_password_mailbox().await;
    let stream = |last: Option<String>| {
        let mut req = w
            .api
            .http
            .get(format!("{}/api/v1/events/stream", w.app.base))
            .bearer_auth(&w.ann);
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        req.send()
    };
    let resp = stream(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    w.enable_as_tested(&mailbox).await;
    let first = sse_events(resp, 2).await;
    assert_eq!(
        (first[0].1.as_str(), first[1].1.as_str()),
        ("mailbox.tested", "mailbox.enabled")
    );
    assert_eq!(
        first[1].2["cursor"],
        first[1].0.as_str(),
        "the SSE id is the event's cursor"
    );
    // Gone for a while: meanwhile the mailbox is disabled and tested again.
    w.app
        .store
        .disable_with_alert(
            mailbox.parse().unwrap(),
            "sync_stopped",
            "test",
            "test",
            None,
        )
        .await
        .unwrap();
    w.enable_as_tested(&mailbox).await;
    let resumed = sse_events(stream(Some(first[1].0.clone())).await.unwrap(), 4).await;
    let kinds: Vec<&str> = resumed.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "mailbox.disabled",
            "alert.created",
            "mailbox.tested",
            "mailbox.enabled"
        ]
    );
    assert!(
        resumed
            .iter()
            .all(|e| e.0.parse::<i64>().unwrap() > first[1].0.parse::<i64>().unwrap())
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_gone_naming_the_oldest_still_kept() {
    let w = MailWorld::start(AppOptions::default()).await;
    let mailbox = w.ann_password_mailbox().await;
    w.enable_as_tested(&mailbox).await;
    let (events, head) = drain(&w, &w.admin, "0", "", 100).await;
    assert!(!events.is_empty());
    // Retention passes over everything there is.
    let later =
        mailbridge_core::Clock::now(&mailbridge_core::SystemClock) + chrono::Duration::days(1);
    let pruned = w.app.store.prune_events(later).await.unwrap();
    assert_eq!(pruned as usize, events.len());
    let (status, gone) = w.api.get(&w.app, "/api/v1/events?after=0", &w.admin).await;
    assert_error(&(status, gone.clone()), StatusCode::GONE, "gone", None);
    assert!(
        gone["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("oldest cursor still available is {head}")),
        "{gone}"
    );
    // From the oldest still available (or from now), the feed goes on.
    let (status, page) = w
        .api
        .get(&w.app, &format!("/api/v1/events?after={head}"), &w.admin)
        .await;
    assert_eq!(
        (status, page["events"].clone()),
        (StatusCode::OK, json!([]))
    );
    let (status, page) = w
        .api
        .get(&w.app, "/api/v1/events?after=latest", &w.admin)
        .await;
    assert_eq!(
        (status, page["next_cursor"].as_str()),
        (StatusCode::OK, Some(head.as_str()))
    );
    w.app.stop().await.unwrap();
}
