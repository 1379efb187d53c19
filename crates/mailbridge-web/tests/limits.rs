//! What one client may hold of a node, over real sockets against the in-process server:
//! a request head or body sent a byte at a time is cut at its timeout, an idle keep-alive
//! connection is closed, a body over the limit gets 413 in the API's JSON shape, connections
//! past the cap wait until one closes, Test & Enable runs past the cap get 429, and a
//! graceful stop still lets a request in flight finish. Every peer is on 127.0.0.1.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mailbridge_core::Role;
use mailbridge_testkit::{ApiClient, AppOptions, TestApp};
use mailbridge_web::Limits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

/// Small limits, so slow clients are quick to catch.
fn quick() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

async fn start(limits: Limits) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(
        dir.path(),
        AppOptions {
            limits,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    (app, dir)
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads one response with a Content-Length body: (status, head, body).
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the middle of a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    (status, head, body)
}

/// Waits (at most `limit`) for the server to close the connection; how long it took.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
    start.elapsed()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let (app, _dir) = start(quick()).await;

    // Slowloris: a head that keeps coming, one byte every 200 ms, and never ends.
    let (mut reader, mut writer) = connect(&app).await.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(200)).await;
        }
    });
    let start = Instant::now();
    let mut chunk = [0u8; 64];
    let read = timeout(Duration::from_secs(10), reader.read(&mut chunk)).await;
    let took = start.elapsed();
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the server answered or kept the connection: {read:?}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&took),
        "closed after {took:?}, not at the 1 s header timeout"
    );
    trickle.abort();

    // A connection that never says anything is closed the same way.
    let mut silent = connect(&app).await;
    let took = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Meanwhile, a client that sends its request is served.
    let mut normal = connect(&app).await;
    normal.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut normal).await.0, 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_closes_at_the_idle_one() {
    let (app, _dir) = start(quick()).await;
    let mut conn = connect(&app).await;
    conn.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut conn).await.0, 200);
    // Idle past the 1 s header timeout: still open, and serves the next request.
    sleep(Duration::from_secs(2)).await;
    conn.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut conn).await.0, 200);
    // Then idle for good: closed at the 3 s idle timeout.
    let took = closed_within(&mut conn, Duration::from_secs(10)).await;
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&took),
        "closed after {took:?}, not at the 3 s idle timeout"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_that_trickles_is_cut_at_the_body_timeout_with_a_json_408() {
    let (app, _dir) = start(quick()).await;
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let mut conn = connect(&app).await;
    let head = format!(
        "PUT /api/v1/contacts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    // 400 bytes at 10 a second would take 40 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..400 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let (status, _, body) = timeout(Duration::from_secs(5), read_response(&mut reader))
        .await
        .expect("no answer while the body trickled");
    let took = start.elapsed();
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("http_body_timeout_ms"), "{message}");
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(4)).contains(&took),
        "cut after {took:?}, not at the 1 s body timeout"
    );
    // And the connection is closed: the rest of the body is not waited for.
    closed_within(&mut reader, Duration::from_secs(3)).await;
    trickle.abort();
    app.stop().await.unwrap();
}

/// A JSON body for `PUT /contacts` of about `bytes` bytes (one contact, a long name).
fn contacts_of(bytes: usize) -> String {
    json!({"contacts": [{"email": "big@example.com", "name": "x".repeat(bytes)}]}).to_string()
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_json_413_naming_the_setting() {
    let (app, _dir) = start(Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    })
    .await;
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let url = format!("{}/api/v1/contacts", app.base);
    let http = reqwest::Client::new();
    let put = |body: String| {
        http.put(&url)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Declared with Content-Length: refused before it is read.
    let resp = put(contacts_of(100 * 1024)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("64 KiB") && message.contains("http_max_body_bytes"),
        "{message}"
    );
    // Within the limit: accepted.
    let resp = put(contacts_of(60 * 1024)).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );

    // Chunked, so the size shows only while reading: the same answer.
    let mut conn = connect(&app).await;
    let head = format!(
        "PUT /api/v1/contacts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for piece in contacts_of(100 * 1024).as_bytes().chunks(8 * 1024) {
        conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        conn.write_all(piece).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    app.stop().await.unwrap();

    // By default the limit is 25 MiB, not axum's 2 MB: a 3 MB send goes through.
    let (app, _dir) = start(Limits::default()).await;
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/contacts", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(contacts_of(3_000_000))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let (app, _dir) = start(Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..Limits::default()
    })
    .await;
    // Two keep-alive connections, served and held open.
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for conn in [&mut first, &mut second] {
        conn.write_all(HEALTHZ).await.unwrap();
        assert_eq!(read_response(conn).await.0, 200);
    }
    // A third connects (the kernel queues it) but is not served while both are open.
    let mut third = connect(&app).await;
    third.write_all(HEALTHZ).await.unwrap();
    let waiting = tokio::spawn(async move { read_response(&mut third).await.0 });
    sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the third connection was served");
    // One closes: the third is served.
    drop(first);
    let status = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the third connection was not served after one closed")
        .unwrap();
    assert_eq!(status, 200);
    second.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut second).await.0, 200);
    app.stop().await.unwrap();
}

/// A "mail server" that accepts connections and never says a word, so a Test & Enable run
/// against it hangs, until released: then it drops what it holds and every new connection.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl BlackHole {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (release, mut released) = tokio::sync::watch::channel(false);
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    Ok((socket, _)) = listener.accept() => {
                        count.fetch_add(1, Ordering::SeqCst);
                        if !*released.borrow() {
                            held.push(socket);
                        }
                    }
                    Ok(()) = released.changed() => held.clear(),
                }
            }
        });
        Self {
            port,
            accepted,
            release,
        }
    }
}

#[tokio::test]
async fn test_and_enable_runs_past_the_cap_get_429_with_retry_after() {
    let (app, _dir) = start(Limits {
        max_test_enable_runs: 2,
        ..Limits::default()
    })
    .await;
    let api = ApiClient::default();
    let (admin_id, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let hole = BlackHole::start().await;
    let server = json!({"host": "127.0.0.1", "port": hole.port, "security": "tls"});
    let mut incoming = server.clone();
    incoming["protocol"] = json!("imap");
    let (status, profile) = api
        .post(
            &app,
            "/api/v1/server-profiles",
            &admin,
            json!({"name": "Silent", "auth": "password", "incoming": incoming, "outgoing": server}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let mut mailboxes = Vec::new();
    for i in 0..3 {
        let (status, m) = api
            .post(
                &app,
                "/api/v1/mailboxes",
                &admin,
                json!({"owner_user_id": admin_id, "email": format!("m{i}@example.com"),
                       "profile_id": profile["id"], "password": "pw"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{m}");
        mailboxes.push(m["id"].as_str().unwrap().to_owned());
    }
    let test_url = |m: &str| format!("{}/api/v1/mailboxes/{m}/test-and-enable", app.base);

    // Two runs hang on the silent server…
    let running: Vec<_> = mailboxes[..2]
        .iter()
        .map(|m| {
            let request = reqwest::Client::new().post(test_url(m)).bearer_auth(&admin);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let start = Instant::now();
    while hole.accepted.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the runs never connected"
        );
        sleep(Duration::from_millis(20)).await;
    }
    // …so a third, for another mailbox or a whole profile, is refused: 429 and when to retry.
    for path in [
        format!("/api/v1/mailboxes/{}/test-and-enable", mailboxes[2]),
        format!(
            "/api/v1/server-profiles/{}/test-and-enable",
            profile["id"].as_str().unwrap()
        ),
    ] {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", app.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(resp.headers()["retry-after"], "10");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("max_test_enable_runs"), "{message}");
    }
    // Refusing costs the mail server nothing: still only the two runs' connections.
    assert_eq!(hole.accepted.load(Ordering::SeqCst), 2);

    // The server lets go; the runs end (failed), and a new run is taken.
    hole.release.send(true).unwrap();
    for run in running {
        assert_eq!(run.await.unwrap(), StatusCode::OK);
    }
    let r = api
        .post(
            &app,
            &format!("/api/v1/mailboxes/{}/test-and-enable", mailboxes[2]),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["incoming_status"], "failure", "{}", r.1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_lets_the_request_in_flight_finish_and_closes_idle_connections() {
    let (app, _dir) = start(Limits::default()).await;
    let api = ApiClient::default();
    let (admin_id, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let hole = BlackHole::start().await;
    let server = json!({"host": "127.0.0.1", "port": hole.port, "security": "tls"});
    let mut incoming = server.clone();
    incoming["protocol"] = json!("imap");
    let (_, profile) = api
        .post(
            &app,
            "/api/v1/server-profiles",
            &admin,
            json!({"name": "Silent", "auth": "password", "incoming": incoming, "outgoing": server}),
        )
        .await;
    let (status, m) = api
        .post(
            &app,
            "/api/v1/mailboxes",
            &admin,
            json!({"owner_user_id": admin_id, "email": "m@example.com",
                   "profile_id": profile["id"], "password": "pw"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    let base = app.base.clone();
    // An idle keep-alive connection, and a request in flight (hanging on the mail server).
    let mut idle = connect(&app).await;
    idle.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let request = reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/mailboxes/{}/test-and-enable",
            m["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin);
    let in_flight = tokio::spawn(async move { request.send().await.unwrap().status() });
    while hole.accepted.load(Ordering::SeqCst) < 1 {
        sleep(Duration::from_millis(20)).await;
    }

    let stopping = tokio::spawn(app.stop());
    // The idle connection is closed at once; the stop waits for the request in flight.
    closed_within(&mut idle, Duration::from_secs(5)).await;
    sleep(Duration::from_millis(500)).await;
    assert!(!stopping.is_finished(), "stopped with a request in flight");
    assert!(
        TcpStream::connect(base.trim_start_matches("http://"))
            .await
            .is_err(),
        "new connections are still accepted while stopping"
    );
    hole.release.send(true).unwrap();
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the stop did not finish after the last request")
        .unwrap()
        .unwrap();
}
