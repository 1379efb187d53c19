//! The protocol clients against scripted servers that misbehave on purpose, as no real peer
//! does on demand: a message, a line, a reply or a list that never ends. Each call must fail
//! promptly with [`ErrorKind::TooLarge`], naming the server and the bound, having read little
//! more than the bound (the server is kept from writing more once the client hangs up).
//! And hostile values: a password, user name, address or EHLO name with a line break in it
//! is refused before it is sent, as the transcript of a scripted server shows. And a server
//! that keeps chatting in IDLE cannot keep the session there past the wait asked for; one
//! that refuses NOTIFY or a folder's STATUS leaves a session that goes on; news the server
//! announced during a pass ends the next IDLE at once. A refused SEARCH or LIST is an error;
//! a server that refuses `SEARCH LARGER` has every size fetched, a bounded number of UIDs a
//! command.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailbridge_proto::imap::ImapSession;
use mailbridge_proto::pop3::Pop3Session;
use mailbridge_proto::smtp::SmtpSession;
use mailbridge_proto::{Credentials, Endpoint, ErrorKind, ProtoError, Security, TlsSettings};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MIB: usize = 1024 * 1024;

/// How much a flooding server writes at most before it falls silent (holding the connection
/// open, so a client without a bound ends in a timeout, never in an end of stream).
const FLOOD_CAP: usize = 64 * MIB;

/// The client's side of the test: fails well within this, or it waited for the timeout.
const TIMEOUT: Duration = Duration::from_secs(8);

/// One connection's server side, driven by a test's script.
struct Peer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    heard: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    async fn say(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    /// One line from the client, kept in the transcript; `None` once it hung up.
    async fn hear(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                self.heard.lock().unwrap().push(line.clone());
                Some(line)
            }
        }
    }

    /// Writes `pattern` over and over, up to [`FLOOD_CAP`] bytes or until the client hangs up,
    /// then waits for the client to hang up. The bytes written.
    async fn flood(&mut self, pattern: &[u8]) -> usize {
        let chunk = pattern.repeat((64 * 1024 / pattern.len()).max(1));
        let mut sent = 0;
        while sent < FLOOD_CAP {
            if self.writer.write_all(&chunk).await.is_err() {
                return sent;
            }
            sent += chunk.len();
        }
        while self.hear().await.is_some() {}
        sent
    }
}

/// A scripted server on 127.0.0.1 for one connection.
struct Scripted {
    port: u16,
    heard: Arc<Mutex<Vec<String>>>,
    /// What the script returns: the bytes a flood wrote.
    done: tokio::task::JoinHandle<usize>,
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Self
    where
        F: FnOnce(Peer) -> Fut + Send + 'static,
        Fut: Future<Output = usize> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let transcript = heard.clone();
        let done = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, writer) = stream.into_split();
            script(Peer {
                reader: BufReader::new(reader),
                writer,
                heard: transcript,
            })
            .await
        });
        Self { port, heard, done }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port, Security::None).with_timeout(TIMEOUT)
    }

    /// What the client sent, line by line.
    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }

    /// Once the client has hung up: the bytes the flood wrote.
    async fn flooded(self) -> usize {
        tokio::time::timeout(Duration::from_secs(20), self.done)
            .await
            .expect("the client hung up")
            .unwrap()
    }
}

fn password() -> Credentials {
    Credentials::Password {
        user: "ann".into(),
        password: SecretString::from("hunter2"),
    }
}

/// A POP3 server offering USER/PASS that accepts the login, then answers one more command
/// with `+OK` and a flood of `pattern`.
async fn pop3_flooding_after_login(pattern: &'static [u8]) -> Scripted {
    Scripted::start(move |mut peer| async move {
        peer.say("+OK ready\r\n").await;
        peer.hear().await; // CAPA
        peer.say("+OK\r\nUSER\r\n.\r\n").await;
        peer.hear().await; // USER
        peer.say("+OK\r\n").await;
        peer.hear().await; // PASS
        peer.say("+OK logged in\r\n").await;
        peer.hear().await; // the command
        peer.say("+OK\r\n").await;
        peer.flood(pattern).await
    })
    .await
}

/// The error of a call that must end in a [`ErrorKind::TooLarge`] well before the timeout.
#[track_caller]
fn assert_too_large(result: Result<impl std::fmt::Debug, ProtoError>, started: Instant) -> String {
    let e = result.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(e.kind, ErrorKind::TooLarge(_)),
        "expected too large, got: {e} (after {elapsed:?})"
    );
    assert!(
        !e.is_transient(),
        "the same server sends the same again: {e}"
    );
    assert!(elapsed < TIMEOUT / 2, "not prompt: {elapsed:?} for {e}");
    e.to_string()
}

#[tokio::test]
async fn pop3_a_message_above_the_limit_fails_promptly_with_the_limit() {
    // Lines of a message that never ends.
    let server = pop3_flooding_after_login(&[b'a'; 1022]).await;
    let endpoint = server.endpoint().with_max_message_bytes(MIB);
    let mut s = Pop3Session::login(&endpoint, &TlsSettings::public(), &password())
        .await
        .unwrap();
    let started = Instant::now();
    let e = assert_too_large(s.retr(3).await, started);
    assert_eq!(
        e,
        format!(
            "127.0.0.1:{}: cannot download message 3 (RETR): the message is larger than 1 MiB",
            server.port
        )
    );
    assert_eq!(server.heard().last().unwrap(), "RETR 3\r\n");
    drop(s);
    let sent = server.flooded().await;
    // A client reading on would have taken all 64 MiB; socket buffers hold a few.
    assert!(sent < 24 * MIB, "the client read on: {sent} bytes sent");
}

#[tokio::test]
async fn pop3_a_message_line_that_never_ends_fails_promptly() {
    // One line without end: no line ending ever comes.
    let server = pop3_flooding_after_login(b"b").await;
    let endpoint = server.endpoint().with_max_message_bytes(MIB);
    let mut s = Pop3Session::login(&endpoint, &TlsSettings::public(), &password())
        .await
        .unwrap();
    let started = Instant::now();
    let e = assert_too_large(s.top(1, 10).await, started);
    assert!(
        e.ends_with("cannot read the top of message 1 (TOP): the message is larger than 1 MiB"),
        "{e}"
    );
    drop(s);
    let sent = server.flooded().await;
    assert!(sent < 24 * MIB, "the client read on: {sent} bytes sent");
}

#[test]
fn the_default_message_limit_is_64_mib() {
    let endpoint = Endpoint::new("127.0.0.1", 995, Security::Tls);
    assert_eq!(endpoint.max_message_bytes, 64 * MIB);
}

#[tokio::test]
async fn pop3_capability_and_message_lists_that_never_end_are_cut_off() {
    let capa = Scripted::start(|mut peer| async move {
        peer.say("+OK ready\r\n").await;
        peer.hear().await; // CAPA
        peer.say("+OK\r\n").await;
        peer.flood(b"X-NONSENSE\r\n").await
    })
    .await;
    let started = Instant::now();
    let e = assert_too_large(
        Pop3Session::login(&capa.endpoint(), &TlsSettings::public(), &password()).await,
        started,
    );
    assert!(
        e.ends_with("cannot read capabilities: the capability list is longer than 100 lines"),
        "{e}"
    );
    assert!(capa.flooded().await < 24 * MIB);

    // A million and more messages listed: a short line each.
    let uidl = pop3_flooding_after_login(b"1 uid\r\n").await;
    let mut s = Pop3Session::login(&uidl.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    let started = Instant::now();
    let e = s.uidl().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::TooLarge(_)), "{e}");
    assert!(!e.is_transient(), "{e}");
    assert!(
        e.to_string().ends_with(
            "cannot list message ids (UIDL): the message list is longer than 1000000 lines"
        ),
        "{e}"
    );
    // A million lines take a while in a debug build; a client without the bound would read
    // all 64 MiB (nine million lines) and then wait for the timeout.
    assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
    drop(s);
    assert!(uidl.flooded().await < 24 * MIB);
}

#[tokio::test]
async fn smtp_a_reply_that_never_ends_is_cut_off() {
    let server =
        Scripted::start(|mut peer| async move { peer.flood(b"220-still greeting you\r\n").await })
            .await;
    let started = Instant::now();
    let e = assert_too_large(
        SmtpSession::login(
            &server.endpoint(),
            &TlsSettings::public(),
            &password(),
            "me",
        )
        .await,
        started,
    );
    assert_eq!(
        e,
        format!(
            "127.0.0.1:{}: cannot read the greeting: the reply is longer than 100 lines",
            server.port
        )
    );
    assert!(server.flooded().await < 24 * MIB);

    // Few lines, but long ones: the bound on bytes.
    let server = Scripted::start(|mut peer| async move {
        peer.say("220 ready\r\n").await;
        peer.hear().await; // EHLO
        let long = format!("250-{}\r\n", "x".repeat(60_000));
        peer.flood(long.as_bytes()).await
    })
    .await;
    let started = Instant::now();
    let e = assert_too_large(
        SmtpSession::login(
            &server.endpoint(),
            &TlsSettings::public(),
            &password(),
            "me",
        )
        .await,
        started,
    );
    assert!(
        e.ends_with("cannot say EHLO: the reply is larger than 64 KiB"),
        "{e}"
    );
    assert!(server.flooded().await < 24 * MIB);
}

#[tokio::test]
async fn imap_untagged_lines_that_never_end_before_login_are_cut_off() {
    let server = Scripted::start(|mut peer| async move {
        // No capabilities in the greeting: the client asks with CAPABILITY.
        peer.say("* OK ready\r\n").await;
        peer.hear().await; // m0 CAPABILITY
        peer.flood(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n").await
    })
    .await;
    let started = Instant::now();
    let e = assert_too_large(
        ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password()).await,
        started,
    );
    assert_eq!(
        e,
        format!(
            "127.0.0.1:{}: cannot read capabilities: the answer before the tagged reply is longer than 100 lines",
            server.port
        )
    );
    assert_eq!(server.heard(), ["m0 CAPABILITY\r\n"]);
    assert!(server.flooded().await < 24 * MIB);
}

/// A POP3 server offering USER/PASS that answers `+OK` to everything, keeping what it hears.
async fn pop3_agreeing_to_everything() -> Scripted {
    Scripted::start(|mut peer| async move {
        peer.say("+OK ready\r\n").await;
        if peer.hear().await.is_some() {
            peer.say("+OK\r\nUSER\r\n.\r\n").await;
        }
        while peer.hear().await.is_some() {
            peer.say("+OK\r\n").await;
        }
        0
    })
    .await
}

/// The error of a call refused before it sent a hostile value, and what the server heard.
#[track_caller]
fn assert_unsafe(result: Result<impl std::fmt::Debug, ProtoError>, what: &str) {
    let e = result.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::UnsafeValue(_)),
        "expected a refused value, got: {e}"
    );
    assert!(!e.is_transient(), "the value must be corrected: {e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("{what} contains a line break or NUL character")),
        "{text}"
    );
    assert!(
        text.starts_with("127.0.0.1:"),
        "the server is named: {text}"
    );
}

fn password_with(user: &str, password: &str) -> Credentials {
    Credentials::Password {
        user: user.into(),
        password: SecretString::from(password.to_owned()),
    }
}

#[tokio::test]
async fn pop3_a_password_or_user_name_with_a_line_break_is_never_sent() {
    for (user, password, what) in [
        ("ann", "hunter2\r\nDELE 1", "the password"),
        ("ann", "hunter2\nDELE 1", "the password"),
        ("ann", "hunter2\rDELE 1", "the password"),
        ("ann\r\nDELE 1", "hunter2", "the user name"),
        ("ann", "hunter2\0", "the password"),
    ] {
        let server = pop3_agreeing_to_everything().await;
        let result = Pop3Session::login(
            &server.endpoint(),
            &TlsSettings::public(),
            &password_with(user, password),
        )
        .await;
        assert_unsafe(result, what);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let heard = server.heard();
        assert!(
            heard.iter().all(|l| l == "CAPA\r\n"),
            "nothing after CAPA may reach the server: {heard:?}"
        );
    }
}

#[tokio::test]
async fn imap_a_password_with_a_line_break_is_never_sent() {
    for password in ["x\r\na2 DELETE INBOX", "x\0"] {
        let server = Scripted::start(|mut peer| async move {
            peer.say("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
                .await;
            while let Some(line) = peer.hear().await {
                let tag = line.split(' ').next().unwrap_or("*").to_owned();
                peer.say(&format!("{tag} OK done\r\n")).await;
            }
            0
        })
        .await;
        let result = ImapSession::login(
            &server.endpoint(),
            &TlsSettings::public(),
            &password_with("ann", password),
        )
        .await;
        assert_unsafe(result, "the password");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.heard(), Vec::<String>::new());
    }
}

/// An SMTP server that accepts any login and any command, keeping what it hears.
async fn smtp_agreeing_to_everything() -> Scripted {
    Scripted::start(|mut peer| async move {
        peer.say("220 ready\r\n").await;
        while let Some(line) = peer.hear().await {
            let reply = match line.get(..4) {
                Some("EHLO") => "250-hi\r\n250 AUTH PLAIN\r\n",
                Some("AUTH") => "235 welcome\r\n",
                Some("DATA") => "354 go on\r\n",
                _ => "250 ok\r\n",
            };
            peer.say(reply).await;
        }
        0
    })
    .await
}

#[tokio::test]
async fn smtp_an_address_or_ehlo_name_with_a_line_break_is_never_sent() {
    // The EHLO name: refused before a connection is made.
    let server = smtp_agreeing_to_everything().await;
    let result = SmtpSession::login(
        &server.endpoint(),
        &TlsSettings::public(),
        &password(),
        "me\r\nMAIL FROM:<evil@example.com>",
    )
    .await;
    assert_unsafe(result, "the client name");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.heard(), Vec::<String>::new());

    // The sender and a recipient: refused before MAIL FROM, so no transaction is begun.
    for (from, to, what) in [
        (
            "ann@example.com>\r\nRCPT TO:<evil@example.com",
            "bob@example.com",
            "the sender address",
        ),
        (
            "ann@example.com",
            "bob@example.com>\nRCPT TO:<evil@example.com",
            "a recipient address",
        ),
        (
            "ann@example.com",
            "bob@example.com>\rDATA",
            "a recipient address",
        ),
    ] {
        let server = smtp_agreeing_to_everything().await;
        let mut s = SmtpSession::login(
            &server.endpoint(),
            &TlsSettings::public(),
            &password(),
            "me",
        )
        .await
        .unwrap();
        let result = s
            .send(
                from,
                &["carol@example.com".to_owned(), to.to_owned()],
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .await;
        assert_unsafe(result, what);
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let heard = server.heard();
        assert!(
            heard
                .iter()
                .all(|l| l.starts_with("EHLO me") || l.starts_with("AUTH PLAIN")),
            "nothing after the login may reach the server: {heard:?}"
        );
    }
}

#[tokio::test]
async fn imap_idle_ends_when_asked_even_while_the_server_keeps_chatting() {
    let server = Scripted::start(|peer| async move {
        let Peer {
            mut reader,
            mut writer,
            ..
        } = peer;
        writer
            .write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE] ready\r\n")
            .await
            .unwrap();
        let mut line = String::new();
        let mut idling = None;
        let mut chat = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                read = reader.read_line(&mut line) => {
                    if read.unwrap_or(0) == 0 {
                        return 0;
                    }
                    let tag = line.split(' ').next().unwrap_or("*").to_owned();
                    let reply = match line.split(' ').nth(1).map(str::trim) {
                        // A keepalive may also land between DONE and its answer.
                        _ if line.trim() == "DONE" => format!(
                            "* OK Still here\r\n{} OK idle done\r\n",
                            idling.take().unwrap_or_default()
                        ),
                        Some("CAPABILITY") => format!("* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK\r\n"),
                        Some("IDLE") => {
                            idling = Some(tag);
                            "+ idling\r\n".to_owned()
                        }
                        _ => format!("{tag} OK\r\n"),
                    };
                    writer.write_all(reply.as_bytes()).await.unwrap();
                    line.clear();
                }
                // RFC 2177 servers may send `* OK` now and then while idling; this one more
                // often than the client's wait.
                _ = chat.tick(), if idling.is_some() => {
                    writer.write_all(b"* OK Still here\r\n").await.unwrap();
                }
            }
        }
    })
    .await;
    let s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    let started = Instant::now();
    let (s, outcome) = tokio::time::timeout(
        Duration::from_secs(5),
        s.idle(tokio::time::Instant::now() + Duration::from_secs(1)),
    )
    .await
    .expect("IDLE must end after the wait asked for, chatter or not")
    .unwrap();
    assert_eq!(outcome, mailbridge_proto::imap::IdleOutcome::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    s.logout().await;
}

#[tokio::test]
async fn imap_a_server_that_hangs_up_in_idle_ends_the_wait_with_an_error() {
    // The connection ends while the session idles (a server restart, a load balancer's idle
    // cut): the wait ends then, not when it would have timed out, and says why.
    let server = imap_hanging_up_at("IDLE", "* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK\r\n").await;
    let s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        s.idle(tokio::time::Instant::now() + Duration::from_secs(60)),
    )
    .await
    .expect("the end of the connection ends the wait")
    .unwrap_err();
    assert!(
        e.to_string().contains("wait in IDLE") && e.to_string().contains("closed the connection"),
        "{e}"
    );
}

/// An IMAP server that accepts the login, answers CAPABILITY with `capability` (the
/// command's tag in place of `{tag}`) and every other command OK, until the command `at`:
/// then it hangs up (after `+ idling` for IDLE).
async fn imap_hanging_up_at(at: &'static str, capability: &'static str) -> Scripted {
    Scripted::start(move |mut peer| async move {
        peer.say("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE] ready\r\n")
            .await;
        while let Some(line) = peer.hear().await {
            let mut words = line.split_whitespace();
            let tag = words.next().unwrap_or("*").to_owned();
            match words.next() {
                Some(command) if command == at => {
                    if at == "IDLE" {
                        peer.say("+ idling\r\n").await;
                    }
                    return 0;
                }
                Some("CAPABILITY") => peer.say(&capability.replace("{tag}", &tag)).await,
                _ => peer.say(&format!("{tag} OK\r\n")).await,
            }
        }
        0
    })
    .await
}

#[tokio::test]
async fn imap_capabilities_refused_or_cut_off_after_the_login_fail_it_for_now() {
    // Going on without them would lose more than IDLE (on Gmail, X-GM-EXT-1: mail keyed by
    // UID); async-imap read both as a server with no capabilities.
    for (server, says) in [
        (
            imap_hanging_up_at(
                "LOGOUT",
                "* CAPABILITY IMAP4rev1 IDLE\r\n{tag} NO not now\r\n",
            )
            .await,
            "not now",
        ),
        (
            imap_hanging_up_at("CAPABILITY", "").await,
            "closed the connection",
        ),
    ] {
        let Err(e) =
            ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password()).await
        else {
            panic!("logged in without the server's capabilities ({says})");
        };
        assert!(e.to_string().contains("read capabilities"), "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert!(e.is_transient(), "tried again later: {e}");
    }
}

#[tokio::test]
async fn imap_capabilities_refused_before_the_login_fail_it_for_now() {
    let server = Scripted::start(|mut peer| async move {
        // No capabilities in the greeting: the client asks with CAPABILITY.
        peer.say("* OK ready\r\n").await;
        peer.hear().await; // m0 CAPABILITY
        peer.say("m0 NO not now\r\n").await;
        peer.hear().await;
        0
    })
    .await;
    let Err(e) = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password()).await
    else {
        panic!("logged in without the server's capabilities");
    };
    assert!(
        e.to_string()
            .ends_with("cannot read capabilities: the server answered: NO not now"),
        "{e}"
    );
    assert!(e.is_transient(), "tried again later: {e}");
}

/// An IMAP server offering `capabilities` (with AUTH=PLAIN) that accepts the login, answers
/// IDLE and DONE, and each other command as `answer` says (given the tag and the command's
/// words after it), `OK` when it says nothing.
async fn imap_answering<F>(capabilities: &'static str, mut answer: F) -> Scripted
where
    F: FnMut(&str, &[&str]) -> Option<String> + Send + 'static,
{
    Scripted::start(move |mut peer| async move {
        peer.say(&format!(
            "* OK [CAPABILITY {capabilities} AUTH=PLAIN] ready\r\n"
        ))
        .await;
        let mut idling = None;
        while let Some(line) = peer.hear().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            let tag = words.first().copied().unwrap_or("*").to_owned();
            let reply = match words.get(1).copied() {
                _ if line.trim() == "DONE" => {
                    format!("{} OK idle done\r\n", idling.take().unwrap_or_default())
                }
                Some("CAPABILITY") => format!("* CAPABILITY {capabilities}\r\n{tag} OK\r\n"),
                Some("IDLE") => {
                    idling = Some(tag);
                    "+ idling\r\n".to_owned()
                }
                _ => answer(&tag, words.get(1..).unwrap_or_default())
                    .unwrap_or_else(|| format!("{tag} OK\r\n")),
            };
            peer.say(&reply).await;
        }
        0
    })
    .await
}

#[tokio::test]
async fn imap_a_refused_notify_or_status_leaves_the_session_usable() {
    // A server that offers NOTIFY but refuses to set it (as one may for some folders or when
    // busy), and refuses STATUS for a folder that is gone.
    let server = imap_answering("IMAP4rev1 IDLE NOTIFY", |tag, words| match words {
        ["NOTIFY", ..] => Some(format!("{tag} NO [NOTIFICATIONOVERFLOW] not now\r\n")),
        ["STATUS", "\"Gone\"", ..] => Some(format!(
            "{tag} NO [NONEXISTENT] Mailbox doesn't exist: Gone\r\n"
        )),
        ["STATUS", folder, ..] => Some(format!(
            "* STATUS {folder} (MESSAGES 3 UIDNEXT 9 UIDVALIDITY 7)\r\n{tag} OK\r\n"
        )),
        _ => None,
    })
    .await;
    let mut s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    assert!(
        !s.notify_folders(&["Sent"]).await.unwrap(),
        "a refused NOTIFY SET means the folders must be looked at (STATUS)"
    );
    let e = s.status("Gone").await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Rejected { .. }), "{e:?}");
    assert!(
        e.to_string().contains("doesn't exist"),
        "the server's words: {e}"
    );
    // The session goes on after both refusals.
    let sent = s.status("Sent").await.unwrap();
    assert_eq!((sent.exists, sent.uid_next), (3, Some(9)));
    s.logout().await;
    assert!(
        server.heard().iter().any(|l| l.contains("NOTIFY SET")),
        "{:?}",
        server.heard()
    );
}

#[tokio::test]
async fn imap_news_announced_during_a_pass_ends_the_next_idle_at_once() {
    // Mail that arrives after a pass searched INBOX is announced once, with the answer to a
    // later command of the pass (here a STATUS); IDLE would not announce it again. The first
    // STATUS carries a new count, the second the same count again and a RECENT (no news).
    let mut statuses = 0;
    let server = imap_answering("IMAP4rev1 IDLE", move |tag, words| match words {
        ["EXAMINE", ..] => Some(format!(
            "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n{tag} OK [READ-ONLY] done\r\n"
        )),
        ["STATUS", ..] => {
            statuses += 1;
            let news = if statuses == 1 {
                "* 2 EXISTS\r\n"
            } else {
                "* 2 EXISTS\r\n* 1 RECENT\r\n"
            };
            Some(format!(
                "{news}* STATUS \"Sent\" (MESSAGES 3 UIDNEXT 9 UIDVALIDITY 7)\r\n{tag} OK\r\n"
            ))
        }
        _ => None,
    })
    .await;
    let mut s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    s.forget_unsolicited(); // a pass begins
    s.examine("INBOX").await.unwrap();
    s.status("Sent").await.unwrap();
    let started = Instant::now();
    let (mut s, outcome) = s
        .idle(tokio::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome, mailbridge_proto::imap::IdleOutcome::Changed);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !server.heard().iter().any(|l| l.contains("IDLE")),
        "no IDLE while news waits: {:?}",
        server.heard()
    );
    // The same count again is no news: this IDLE runs its course.
    s.forget_unsolicited();
    s.status("Sent").await.unwrap();
    let (s, outcome) = s
        .idle(tokio::time::Instant::now() + Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(outcome, mailbridge_proto::imap::IdleOutcome::TimedOut);
    assert!(server.heard().iter().any(|l| l.contains("IDLE")));
    s.logout().await;
}

/// That `server` heard `commands` UID FETCH commands, each line within the 8,192 octets
/// RFC 7162 §4 asks a client to keep to (500 UIDs a command at most).
fn assert_fetch_commands(server: &Scripted, commands: usize) {
    let fetches: Vec<String> = server
        .heard()
        .into_iter()
        .filter(|line| line.contains("UID FETCH"))
        .collect();
    assert_eq!(fetches.len(), commands, "500 UIDs a command at most");
    for line in &fetches {
        assert!(line.len() < 8192, "a command line of {} bytes", line.len());
    }
}

/// A server that refuses LIST (NO) and SEARCH (BAD), and answers each UID FETCH of sizes
/// with every UID of its set, each message 1,000 bytes; and a session logged in to it.
async fn refusing_list_and_search() -> (Scripted, ImapSession) {
    let server = imap_answering("IMAP4rev1", |tag, words| match words {
        ["UID", "SEARCH", ..] => Some(format!("{tag} BAD unknown search key\r\n")),
        ["LIST", ..] => Some(format!("{tag} NO [UNAVAILABLE] try again later\r\n")),
        ["UID", "FETCH", set, ..] => {
            let lines: String = set
                .split(',')
                .map(|uid| format!("* 1 FETCH (UID {uid} RFC822.SIZE 1000)\r\n"))
                .collect();
            Some(format!("{lines}{tag} OK\r\n"))
        }
        _ => None,
    })
    .await;
    let s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    (server, s)
}

/// What the size search's fallback must not take for a refusal: an answer that is no IMAP
/// response at all. async-imap's reader fails the stream on it (an I/O error, the bytes left
/// unread), so the session is given up — going on to the sizes would read from a stream out
/// of step. The error shows where, and of what was read only the answer's first line.
#[tokio::test]
async fn imap_an_unreadable_answer_to_the_size_search_is_not_taken_for_a_refusal() {
    let server = imap_answering("IMAP4rev1", |tag, words| match words {
        ["UID", "SEARCH", ..] => Some(format!(
            ")( not a response {}\r\n{tag} OK\r\n",
            "x".repeat(100_000)
        )),
        ["UID", "FETCH", ..] => Some(format!("{tag} OK\r\n")),
        _ => None,
    })
    .await;
    let mut s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    let e = s.uid_sizes_above(&[1, 2, 3], 100).await.unwrap_err();
    assert!(
        !e.is_refusal() && matches!(e.kind, ErrorKind::Io(_)),
        "{e:?}"
    );
    let said = e.to_string();
    assert!(
        said.contains("not an IMAP response") && said.len() < 300,
        "{} bytes: {said:.400}",
        said.len()
    );
    assert!(
        !server.heard().iter().any(|line| line.contains("UID FETCH")),
        "went on to the sizes: {:?}",
        server.heard()
    );
}

#[tokio::test]
async fn imap_a_refused_list_is_an_error_not_a_server_without_folders() {
    let (_server, mut s) = refusing_list_and_search().await;
    // async-imap read the refusal as an empty list: no Sent folder, sent mail unfiled.
    let e = s.sent_folder().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Rejected { .. }), "{e:?}");
    s.logout().await;
}

#[tokio::test]
async fn imap_a_refused_search_for_new_mail_is_an_error_not_no_new_mail() {
    let (_server, mut s) = refusing_list_and_search().await;
    // async-imap read the refusal as an empty result, and a pass would have moved its
    // position past the mail.
    let e = s.uids_from(1, None).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Protocol(_)), "{e:?}");
    // In the server's words, not async-imap's wrapping of them.
    assert!(e.to_string().ends_with("(BAD unknown search key)"), "{e}");
    s.logout().await;
}

#[tokio::test]
async fn imap_a_refused_size_search_reads_every_size_in_short_commands() {
    let (server, mut s) = refusing_list_and_search().await;
    // 1,200 UIDs with gaps between them: no range shortens the set.
    let uids: Vec<u32> = (1..=1200).map(|i| i * 2).collect();
    let sizes = s.uid_sizes_above(&uids, 100).await.unwrap();
    assert_eq!(sizes, uids.iter().map(|&u| (u, 1000)).collect::<Vec<_>>());
    assert_fetch_commands(&server, 3);
    s.logout().await;
}

#[tokio::test]
async fn imap_a_batch_of_a_thousand_scattered_uids_is_fetched_in_short_commands() {
    // Each UID FETCH answered with a small message per UID of its set (no ranges: the UIDs
    // have gaps), and the first command refused after its messages, as Gmail does when it
    // cannot read one of them.
    let refused_once = std::sync::atomic::AtomicBool::new(false);
    let server = imap_answering("IMAP4rev1", move |tag, words| match words {
        ["UID", "FETCH", set, ..] => {
            let lines: String = set
                .split(',')
                .map(|uid| {
                    let body = format!("Subject: {uid}\r\n\r\nhi\r\n");
                    format!(
                        "* 1 FETCH (UID {uid} FLAGS () BODY[] {{{}}}\r\n{body})\r\n",
                        body.len()
                    )
                })
                .collect();
            let first = !refused_once.swap(true, std::sync::atomic::Ordering::Relaxed);
            let end = if first {
                "NO Some messages could not be FETCHed (Failure)"
            } else {
                "OK"
            };
            Some(format!("{lines}{tag} {end}\r\n"))
        }
        _ => None,
    })
    .await;
    let mut s = ImapSession::login(&server.endpoint(), &TlsSettings::public(), &password())
        .await
        .unwrap();
    let uids: Vec<u32> = (1..=1000).map(|i| 4_000_000_000 + i * 2).collect();
    let (fetched, refusal) = s.uid_fetch_some(&uids).await.unwrap();
    // The refusal of the first command did not stop the second: every message is here.
    assert_eq!(fetched.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    assert!(refusal.is_some(), "the refusal is still reported");
    assert_fetch_commands(&server, 2);
    s.logout().await;
}
