//! The protocol clients against a real Dovecot that validates tokens at a real OAuth
//! provider: login success and each refusal, TLS and STARTTLS, an unreachable server and one
//! that never answers, and a slow link that still moves.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::time::Duration;

use mailbridge_proto::imap::ImapSession;
use mailbridge_proto::pop3::Pop3Session;
use mailbridge_proto::smtp::SmtpSession;
use mailbridge_proto::{Credentials, Endpoint, ErrorKind, ProtoError, Security, TlsSettings};
use mailbridge_testkit::{Action, CountingProxy, Dovecot, Fault, OAuthProvider, Step};
use secrecy::SecretString;

struct Peers {
    oauth: OAuthProvider,
    dovecot: Dovecot,
    tls: TlsSettings,
}

async fn peers() -> Peers {
    let oauth = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&oauth, &[("pw@example.com", "hunter2")]).unwrap();
    let tls = TlsSettings::new(Some(dovecot.ca_pem().as_bytes())).unwrap();
    Peers {
        oauth,
        dovecot,
        tls,
    }
}

/// Dovecot delays each failed login from an address a little more than the last (its auth
/// penalty: 2, 4, 8… s), so a test keeps to one or two refusals per Dovecot and allows time.
fn at(port: u16, security: Security) -> Endpoint {
    Endpoint::new("127.0.0.1", port, security).with_timeout(Duration::from_secs(20))
}

fn oauth(user: &str, token: &str) -> Credentials {
    Credentials::OAuth {
        user: user.into(),
        token: SecretString::from(token.to_owned()),
    }
}

#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, ProtoError>, words: &str) {
    let e = result.unwrap_err();
    assert!(e.is_auth_refused(), "expected a refused login, got: {e}");
    assert!(!e.is_transient(), "{e}");
    let text = e.to_string();
    assert!(text.contains(words), "{text}");
    assert!(text.contains("127.0.0.1:"), "the server is named: {text}");
}

#[tokio::test]
async fn imap_logs_in_with_xoauth2_over_tls_and_starttls_and_reads_inbox() {
    let p = peers().await;
    let (token, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    let creds = oauth("ann@example.com", &token);
    p.dovecot
        .deliver("ann@example.com", b"Subject: hi\r\n\r\nhello\r\n")
        .unwrap();

    for endpoint in [
        at(p.dovecot.ports.imaps, Security::Tls),
        at(p.dovecot.ports.imap, Security::Starttls),
        at(p.dovecot.ports.imap, Security::None),
    ] {
        let mut s = ImapSession::login(&endpoint, &p.tls, &creds)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", p.dovecot.log()));
        let inbox = s.examine("INBOX").await.unwrap();
        assert_eq!(inbox.exists, 1);
        assert!(
            inbox.uid_validity.is_some() && inbox.uid_next == Some(2),
            "{inbox:?}"
        );
        assert!(s.has("IDLE"));
        s.logout().await;
    }
    let log = p.dovecot.log();
    assert!(log.contains("method=XOAUTH2"), "{log}");
    assert!(
        log.contains("ID sent: name=Mailbridge"),
        "ID is sent when offered: {log}"
    );
}

#[tokio::test]
async fn imap_refuses_a_forged_token_and_one_for_another_user_with_the_servers_reason() {
    let p = peers().await;
    let imaps = at(p.dovecot.ports.imaps, Security::Tls);
    // A token the provider never issued: the SASL error challenge is decoded.
    let e = ImapSession::login(&imaps, &p.tls, &oauth("ann@example.com", "forged"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::AuthRefused { detail: Some(d), .. } if d.contains("status 401")),
        "{e}"
    );
    assert!(e.to_string().contains("log in with XOAUTH2"), "{e}");
    // A token for Ann presented as Bob: the provider says the token is Ann's.
    let (ann, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    assert_refused(
        ImapSession::login(&imaps, &p.tls, &oauth("bob@example.com", &ann)).await,
        "AUTHENTICATIONFAILED",
    );
}

#[tokio::test]
async fn imap_refuses_expired_and_revoked_tokens() {
    let p = peers().await;
    let imaps = at(p.dovecot.ports.imaps, Security::Tls);
    let (ann, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    p.oauth.expire_account("ann@example.com").await.unwrap();
    assert_refused(
        ImapSession::login(&imaps, &p.tls, &oauth("ann@example.com", &ann)).await,
        "Authentication failed",
    );
    let (fresh, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    ImapSession::login(&imaps, &p.tls, &oauth("ann@example.com", &fresh))
        .await
        .unwrap()
        .logout()
        .await;
    p.oauth.revoke_account("ann@example.com").await.unwrap();
    assert_refused(
        ImapSession::login(&imaps, &p.tls, &oauth("ann@example.com", &fresh)).await,
        "Authentication failed",
    );
}

#[tokio::test]
async fn imap_logs_in_with_a_password_and_refuses_a_wrong_one() {
    let p = peers().await;
    let imaps = at(p.dovecot.ports.imaps, Security::Tls);
    let pw = |p: &str| Credentials::Password {
        user: "pw@example.com".into(),
        password: SecretString::from(p.to_owned()),
    };
    ImapSession::login(&imaps, &p.tls, &pw("hunter2"))
        .await
        .unwrap()
        .logout()
        .await;
    assert_refused(
        ImapSession::login(&imaps, &p.tls, &pw("wrong")).await,
        "AUTHENTICATIONFAILED",
    );
}

#[tokio::test]
async fn pop3_logs_in_counts_lists_and_downloads_dot_unstuffed() {
    let p = peers().await;
    let (token, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    let creds = oauth("ann@example.com", &token);
    let message = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
    p.dovecot.deliver("ann@example.com", message).unwrap();

    for endpoint in [
        at(p.dovecot.ports.pop3s, Security::Tls),
        at(p.dovecot.ports.pop3, Security::Starttls),
    ] {
        let mut s = Pop3Session::login(&endpoint, &p.tls, &creds)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", p.dovecot.log()));
        let (count, size) = s.stat().await.unwrap();
        assert_eq!(count, 1);
        assert!(size >= message.len() as u64);
        let list = s.uidl().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].number, 1);
        let got = s.retr(1).await.unwrap();
        assert!(
            got.ends_with(b"\r\n.leading dot\r\n..two\r\nend\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let top = s.top(1, 0).await.unwrap();
        assert!(
            top.starts_with(b"Subject: dots")
                || String::from_utf8_lossy(&top).contains("Subject: dots")
        );
        assert!(!String::from_utf8_lossy(&top).contains("leading dot"));
        let e = s.retr(7).await.unwrap_err();
        assert!(e.to_string().contains("RETR") && !e.is_transient(), "{e}");
        s.quit().await.unwrap();
    }
    let pop3s = at(p.dovecot.ports.pop3s, Security::Tls);
    let pw = Credentials::Password {
        user: "pw@example.com".into(),
        password: SecretString::from("hunter2"),
    };
    Pop3Session::login(&pop3s, &p.tls, &pw)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.dovecot.log()))
        .quit()
        .await
        .unwrap();
    let e = Pop3Session::login(&pop3s, &p.tls, &oauth("ann@example.com", "forged"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::AuthRefused { detail: Some(d), .. } if d.contains("status 401")),
        "{e}"
    );
    assert_refused(
        Pop3Session::login(&pop3s, &p.tls, &oauth("bob@example.com", &token)).await,
        "Authentication failed",
    );
}

#[tokio::test]
async fn smtp_submission_logs_in_over_tls_and_starttls_and_decodes_refusals() {
    let p = peers().await;
    let (token, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    let creds = oauth("ann@example.com", &token);
    for endpoint in [
        at(p.dovecot.ports.submissions, Security::Tls),
        at(p.dovecot.ports.submission, Security::Starttls),
    ] {
        let s = SmtpSession::login(&endpoint, &p.tls, &creds, "mailbridge.test")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", p.dovecot.log()));
        s.quit().await.unwrap();
    }
    let submissions = at(p.dovecot.ports.submissions, Security::Tls);
    let pw = Credentials::Password {
        user: "pw@example.com".into(),
        password: SecretString::from("hunter2"),
    };
    SmtpSession::login(&submissions, &p.tls, &pw, "mailbridge.test")
        .await
        .unwrap()
        .quit()
        .await
        .unwrap();
    let e = SmtpSession::login(
        &submissions,
        &p.tls,
        &oauth("ann@example.com", "forged"),
        "mailbridge.test",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::AuthRefused { words, detail: Some(d) } if words.starts_with("535") && d.contains("status 401")),
        "{e}"
    );
    assert_refused(
        SmtpSession::login(
            &submissions,
            &p.tls,
            &oauth("bob@example.com", &token),
            "mailbridge.test",
        )
        .await,
        "535",
    );
}

#[tokio::test]
async fn tls_is_verified_and_unreachable_or_silent_servers_fail_clearly() {
    let p = peers().await;
    let creds = oauth("ann@example.com", "x");
    // A server certificate from a CA we do not trust.
    let e = ImapSession::login(
        &at(p.dovecot.ports.imaps, Security::Tls),
        &TlsSettings::public(),
        &creds,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Tls(_)) && !e.is_transient(),
        "{e}"
    );

    // Implicit TLS against a plain port: the greeting is no handshake.
    let e = SmtpSession::login(
        &at(p.dovecot.ports.submission, Security::Tls),
        &p.tls,
        &creds,
        "x",
    )
    .await
    .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Tls(_)), "{e}");

    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = SmtpSession::login(&at(closed, Security::Tls), &p.tls, &creds, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Connect(_)) && e.is_transient(),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("127.0.0.1:{closed}: cannot connect")),
        "{e}"
    );

    // A server that accepts and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    let quick =
        Endpoint::new("127.0.0.1", port, Security::None).with_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let e = Pop3Session::login(&quick, &p.tls, &creds)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Timeout(_)) && e.is_transient(),
        "{e}"
    );
    assert!(e.to_string().contains("read the greeting"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let e = ImapSession::login(&quick, &p.tls, &creds)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Timeout(_)), "{e}");
    hold.abort();
}

/// The read timeout bounds silence, not the length of an answer: through a link that passes
/// a byte every 2 ms from the greeting on, the login (its `ID` answer arriving in pieces
/// too), EXAMINE's answer and a FETCH of two messages take several times the timeout and
/// still succeed; a link that goes quiet in the middle of a FETCH fails within about the
/// timeout.
#[tokio::test]
async fn imap_a_slow_answer_that_keeps_coming_is_read_and_a_silent_one_times_out() {
    let p = peers().await;
    let body = "A line of a message on a slow link.\r\n".repeat(10);
    for i in 1..=2 {
        let raw = format!("Subject: slow {i}\r\nMessage-ID: <slow{i}@test>\r\n\r\n{body}");
        p.dovecot.deliver("pw@example.com", raw.as_bytes()).unwrap();
    }
    let password = Credentials::Password {
        user: "pw@example.com".into(),
        password: SecretString::from("hunter2".to_owned()),
    };
    // (The greeting is read as one line within the timeout: about 150 bytes, 0.3 s here.)
    let timeout = Duration::from_secs(1);
    let drip = CountingProxy::with_fault(
        p.dovecot.ports.imap,
        Fault::once(Step::Greeting, Action::Drip(Duration::from_millis(2))),
    )
    .await
    .unwrap();
    let slow = Endpoint::new("127.0.0.1", drip.port, Security::None).with_timeout(timeout);
    let mut s = ImapSession::login(&slow, &p.tls, &password).await.unwrap();
    let started = std::time::Instant::now();
    s.examine("INBOX").await.unwrap();
    let fetched = s.uid_fetch(&[1, 2]).await.unwrap();
    assert_eq!(fetched.len(), 2);
    assert!(fetched[1].raw.ends_with(body.as_bytes()));
    assert_eq!(drip.fired(), 1);
    assert!(
        started.elapsed() > 2 * timeout,
        "the answers came slower than the timeout: {:?}",
        started.elapsed()
    );
    s.logout().await;

    let stall = CountingProxy::with_fault(
        p.dovecot.ports.imap,
        Fault::once(Step::FetchLiteral(100), Action::Stall),
    )
    .await
    .unwrap();
    let quiet = Endpoint::new("127.0.0.1", stall.port, Security::None).with_timeout(timeout);
    let mut s = ImapSession::login(&quiet, &p.tls, &password).await.unwrap();
    s.examine("INBOX").await.unwrap();
    let started = std::time::Instant::now();
    let e = s.uid_fetch(&[1, 2]).await.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Timeout(_)) && e.is_transient(),
        "{e}"
    );
    assert!(
        started.elapsed() < 3 * timeout,
        "silence is noticed within about the timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn imap_lists_special_folders_fetches_new_mail_in_batches_and_idles() {
    let p = peers().await;
    let (token, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    let messages: Vec<Vec<u8>> = (1..=3)
        .map(|i| {
            let body = format!("body {i}\r\n").repeat(i * 10);
            format!("Subject: message {i}\r\nMessage-ID: <m{i}@test>\r\n\r\n{body}").into_bytes()
        })
        .collect();
    for m in &messages {
        p.dovecot.deliver("ann@example.com", m).unwrap();
    }
    let mut s = ImapSession::login(
        &at(p.dovecot.ports.imaps, Security::Tls),
        &p.tls,
        &oauth("ann@example.com", &token),
    )
    .await
    .unwrap();
    s.examine("INBOX").await.unwrap();
    let uids = s.uids_from(1, None).await.unwrap();
    assert_eq!(uids, [1, 2, 3]);
    // "Process emails received after": SINCE a date, in IMAP's date format.
    let today = mailbridge_core::Clock::now(&mailbridge_core::SystemClock).date_naive();
    let since = |days: i64| Some(today + chrono::Duration::days(days));
    assert_eq!(s.uids_from(1, since(-1)).await.unwrap(), [1, 2, 3]);
    assert_eq!(s.uids_from(1, since(2)).await.unwrap(), Vec::<u32>::new());
    // Sizes are asked for only above a floor (SEARCH LARGER), each the message's bytes, and
    // only of the UIDs asked about.
    let size = |i: usize| messages[i].len() as u64;
    assert_eq!(
        s.uid_sizes_above(&[1, 2, 3], size(0)).await.unwrap(),
        [(2, size(1)), (3, size(2))]
    );
    assert_eq!(
        s.uid_sizes_above(&[1, 3], size(0)).await.unwrap(),
        [(3, size(2))]
    );
    assert_eq!(s.uid_sizes_above(&[3], 0).await.unwrap(), [(3, size(2))]);
    assert_eq!(s.uid_sizes_above(&[1, 2, 3], size(2)).await.unwrap(), []);
    assert_eq!(
        s.uid_sizes_above(&[4], 0).await.unwrap(),
        [],
        "4:* matches the last message, 3, which was not asked about"
    );
    let mut fetched = Vec::new();
    for batch in uids.chunks(2) {
        fetched.extend(s.uid_fetch(batch).await.unwrap());
    }
    assert_eq!(fetched.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2, 3]);
    for (got, sent) in fetched.iter().zip(&messages) {
        assert_eq!(&got.raw, sent, "the bytes delivered come back unchanged");
    }
    assert_eq!(
        s.uids_from(4, None).await.unwrap(),
        Vec::<u32>::new(),
        "n:* must not return the last UID below n"
    );

    // IDLE: a delivery by another process while the session waits wakes it.
    let started = std::time::Instant::now();
    let deliver_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.dovecot
            .deliver("ann@example.com", b"Subject: new\r\n\r\nnew\r\n")
            .unwrap();
    };
    let (idled, ()) = tokio::join!(
        s.idle(tokio::time::Instant::now() + Duration::from_secs(10)),
        deliver_later
    );
    let (mut s, outcome) = idled.unwrap();
    assert_eq!(outcome, mailbridge_proto::imap::IdleOutcome::Changed);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.uids_from(4, None).await.unwrap(), [4]);
    let (s, outcome) = s
        .idle(tokio::time::Instant::now() + Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(outcome, mailbridge_proto::imap::IdleOutcome::TimedOut);
    s.logout().await;
}

#[tokio::test]
async fn smtp_sends_through_submission_and_reports_each_recipient() {
    let p = peers().await;
    let (token, _) = p.oauth.issue_tokens("ann@example.com").await.unwrap();
    let mut s = SmtpSession::login(
        &at(p.dovecot.ports.submissions, Security::Tls),
        &p.tls,
        &oauth("ann@example.com", &token),
        "mailbridge.test",
    )
    .await
    .unwrap();
    let message = b"From: ann@example.com\nTo: bob@example.com\nSubject: hello\n\n.a line starting with a dot\nbye\n";
    let report = s
        .send(
            "ann@example.com",
            &["bob@example.com".to_owned(), "carol@example.com".to_owned()],
            message,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", p.dovecot.log()));
    assert_eq!(report.recipients.len(), 2);
    assert!(report.recipients.iter().all(|r| r.accepted), "{report:?}");
    assert!(report.reply.starts_with("250"), "{report:?}");
    let relayed = p.dovecot.relayed().unwrap();
    assert_eq!(relayed.len(), 1, "one message relayed");
    let text = String::from_utf8_lossy(&relayed[0]);
    assert!(
        text.contains("Subject: hello") && text.contains("\n.a line starting with a dot"),
        "{text}"
    );
    assert!(
        !text.contains("\n..a line"),
        "dot-stuffing is undone by the server: {text}"
    );

    // A recipient the server refuses outright is a permanent failure with its words.
    let e = s
        .send("ann@example.com", &["not an address".to_owned()], message)
        .await
        .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::Rejected { transient: false, words } if words.contains("5")),
        "{e}"
    );
    s.quit().await.unwrap();
}

#[tokio::test]
async fn oauthbearer_is_used_when_it_is_the_only_oauth_mechanism() {
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start_offering(&provider, &[], "oauthbearer plain").unwrap();
    let tls = TlsSettings::new(Some(dovecot.ca_pem().as_bytes())).unwrap();
    let (token, _) = provider.issue_tokens("ann@example.com").await.unwrap();
    let good = oauth("ann@example.com", &token);
    ImapSession::login(&at(dovecot.ports.imaps, Security::Tls), &tls, &good)
        .await
        .unwrap()
        .logout()
        .await;
    Pop3Session::login(&at(dovecot.ports.pop3s, Security::Tls), &tls, &good)
        .await
        .unwrap()
        .quit()
        .await
        .unwrap();
    SmtpSession::login(
        &at(dovecot.ports.submissions, Security::Tls),
        &tls,
        &good,
        "t",
    )
    .await
    .unwrap()
    .quit()
    .await
    .unwrap();
    let log = dovecot.log();
    assert_eq!(log.matches("method=OAUTHBEARER").count(), 3, "{log}");

    // The OAUTHBEARER error exchange: answer the challenge with %x01, then get the refusal.
    let e = ImapSession::login(
        &at(dovecot.ports.imaps, Security::Tls),
        &tls,
        &oauth("ann@example.com", "forged"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::AuthRefused { detail: Some(d), .. } if d.contains("status")),
        "{e}"
    );
    assert!(e.to_string().contains("log in with OAUTHBEARER"), "{e}");
}
