//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API):
//! the real [`Pop3Session`], [`SmtpSession`] and [`ImapSession`] driven over an in-memory
//! stream by a script of server bytes, and the parsing the IMAP session does on the responses
//! async-imap hands it ([`imap_responses`]).
//!
//! A script is one options byte ([`Options`]) and then the server's turns, separated by
//! [`TURN`]. The scripted server sends a turn, then reads whatever the client sends until the
//! client goes quiet (it waits for an answer, or it is done), then sends the next turn; after
//! the last it closes its side. Time is paused and moves on only while every task waits, so
//! "quiet" costs no real time and a script never waits for a timeout.

use std::sync::OnceLock;
use std::time::Duration;

use async_imap::error::Error as ImapError;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::error::ProtoError;
use crate::imap::{FetchedMessage, ImapSession, bracketed_capabilities, imap_error, server_words};
use crate::net::{Endpoint, MailStream, Security, TlsSettings};
use crate::pop3::Pop3Session;
use crate::sasl::Credentials;
use crate::smtp::SmtpSession;

/// Ends one server turn in a script (ASCII record separator: never in a mail protocol's own
/// lines, and readable in a seed file).
pub const TURN: u8 = 0x1e;

/// The largest message the scripted sessions accept, small so that the fuzzer reaches the
/// limit checks with short inputs.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// How long the scripted server waits for more from the client before it takes the client
/// to be waiting for an answer. Paused time: this is never waited for in real time.
const QUIET: Duration = Duration::from_millis(1);

/// The script's first byte, bit by bit.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bit 0: STARTTLS (STLS for POP3) on the plain port; otherwise implicit TLS.
    pub starttls: bool,
    /// Bit 1: a password; otherwise an OAuth token.
    pub password: bool,
    /// Bit 2: a token too long for the command line, so the initial response waits for the
    /// server's empty challenge (RFC 4954 §4, RFC 5034 §4).
    pub long_token: bool,
    /// Bit 3: IMAP only: search with `SINCE`, and wait in IDLE after the fetch.
    pub more: bool,
}

impl Options {
    pub fn from_byte(b: u8) -> Self {
        Self {
            starttls: b & 1 != 0,
            password: b & 2 != 0,
            long_token: b & 4 != 0,
            more: b & 8 != 0,
        }
    }

    fn endpoint(self, port: u16) -> Endpoint {
        let security = if self.starttls {
            Security::Starttls
        } else {
            Security::Tls
        };
        Endpoint::new("mail.example.com", port, security).with_max_message_bytes(MAX_MESSAGE_BYTES)
    }

    fn credentials(self) -> Credentials {
        let user = "ann@example.com".to_owned();
        if self.password {
            return Credentials::Password {
                user,
                password: SecretString::from("correct horse"),
            };
        }
        let token = if self.long_token {
            format!("ya29.{}", "a".repeat(600))
        } else {
            "ya29.a0AfH6SM".to_owned()
        };
        Credentials::OAuth {
            user,
            token: SecretString::from(token),
        }
    }
}

/// The options and the server's turns; `None` for an empty input.
fn script(data: &[u8]) -> Option<(Options, Vec<&[u8]>)> {
    let (first, turns) = data.split_first()?;
    Some((
        Options::from_byte(*first),
        turns.split(|b| *b == TURN).collect(),
    ))
}

fn tls() -> &'static TlsSettings {
    static TLS: OnceLock<TlsSettings> = OnceLock::new();
    TLS.get_or_init(TlsSettings::public)
}

/// Runs `client` on an in-memory stream against the scripted server, on a runtime of its own
/// with paused time; `None` if no runtime could be made.
fn run<T, F, Fut>(turns: Vec<&[u8]>, client: F) -> Option<T>
where
    F: FnOnce(MailStream) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .ok()?;
    // Each direction buffers this much; more than any one command the sessions write.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (result, ()) = runtime
        .block_on(async { tokio::join!(client(MailStream::Memory(ours)), serve(theirs, turns)) });
    Some(result)
}

/// The scripted server (see the module's documentation).
async fn serve(mut io: DuplexStream, turns: Vec<&[u8]>) {
    let mut sink = [0u8; 4096];
    for turn in turns {
        if io.write_all(turn).await.is_err() {
            return;
        }
        loop {
            match tokio::time::timeout(QUIET, io.read(&mut sink)).await {
                // The client has gone: nobody is left to answer.
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    let _ = io.shutdown().await;
    while io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
}

/// Checks what every error must allow: its message and its class.
fn settle<T>(result: Result<T, ProtoError>) -> Result<T, ProtoError> {
    if let Err(e) = &result {
        let _ = (e.to_string(), e.is_transient());
    }
    result
}

/// POP3: log in, `STAT`, `UIDL`, `TOP` and `RETR` the first message listed, `QUIT`. The
/// downloads' sizes stay within the endpoint's limit.
pub fn pop3_session(data: &[u8]) -> Option<Result<(), ProtoError>> {
    let (options, turns) = script(data)?;
    run(turns, |stream| async move {
        let endpoint = options.endpoint(if options.starttls { 110 } else { 995 });
        let credentials = options.credentials();
        settle(
            async {
                let mut session =
                    Pop3Session::login_over(stream, &endpoint, tls(), &credentials).await?;
                session.stat().await?;
                let listed = session.uidl().await?;
                let number = listed.first().map_or(1, |l| l.number);
                let top = session.top(number, 0).await?;
                assert!(
                    top.len() <= MAX_MESSAGE_BYTES,
                    "TOP gave {} bytes",
                    top.len()
                );
                let raw = session.retr(number).await?;
                assert!(
                    raw.len() <= MAX_MESSAGE_BYTES,
                    "RETR gave {} bytes",
                    raw.len()
                );
                session.quit().await
            }
            .await,
        )
    })
}

/// SMTP: log in, send one message to two recipients, `QUIT`.
pub fn smtp_session(data: &[u8]) -> Option<Result<(), ProtoError>> {
    let (options, turns) = script(data)?;
    run(turns, |stream| async move {
        let endpoint = options.endpoint(if options.starttls { 587 } else { 465 });
        let credentials = options.credentials();
        settle(
            async {
                let mut session = SmtpSession::login_over(
                    stream,
                    &endpoint,
                    tls(),
                    &credentials,
                    "mailbridge.example.com",
                )
                .await?;
                let recipients = ["bob@example.com".to_owned(), "carol@example.com".to_owned()];
                let report = session
                    .send(
                        "ann@example.com",
                        &recipients,
                        b"Subject: hi\r\n\r\n.a line with a dot\r\nbye\r\n",
                    )
                    .await?;
                assert_eq!(report.recipients.len(), recipients.len());
                session.quit().await
            }
            .await,
        )
    })
}

/// IMAP: log in (pre-login lines here, then async-imap), `EXAMINE INBOX`, `UID SEARCH`,
/// `UID FETCH` the first hundred found (or 1 and 2), optionally IDLE, `LOGOUT`; how many
/// messages were fetched.
pub fn imap_session(data: &[u8]) -> Option<Result<usize, ProtoError>> {
    let (options, turns) = script(data)?;
    run(turns, |stream| async move {
        let endpoint = options.endpoint(if options.starttls { 143 } else { 993 });
        let credentials = options.credentials();
        settle(
            async {
                let mut session =
                    ImapSession::login_over(stream, &endpoint, tls(), &credentials).await?;
                session.examine("INBOX").await?;
                let since = options
                    .more
                    .then(|| chrono::NaiveDate::from_ymd_opt(2026, 11, 1))
                    .flatten();
                let mut uids = session.uids_from(1, since).await?;
                assert!(uids.is_sorted() && uids.iter().all(|u| *u >= 1), "{uids:?}");
                uids.truncate(100);
                if uids.is_empty() {
                    uids = vec![1, 2];
                }
                let (fetched, _refusal) = session.uid_fetch_some(&uids).await?;
                if options.more {
                    let (idled, _) = session
                        .idle(tokio::time::Instant::now() + Duration::from_secs(60))
                        .await?;
                    session = idled;
                }
                session.logout().await;
                Ok(fetched.len())
            }
            .await,
        )
    })
}

/// IMAP responses as the session consumes them: decoded one after another from a stream with
/// imap-proto's parser, as async-imap's does, each `FETCH` made a [`FetchedMessage`] and each
/// tagged reply's words classified; then the same bytes arriving in pieces must decode to the
/// same responses (a parser that answers a prefix differently from the whole would misread a
/// response split across two reads). Each line is also read as a greeting
/// (`bracketed_capabilities`), and the text as async-imap's wrapping of a NO (`server_words`).
pub fn imap_responses(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len());
    let piece = usize::from(*first % 64) + 1;
    let pieces = decode(rest, piece);
    assert_eq!(
        whole, pieces,
        "decoded differently when read {piece} bytes at a time"
    );
    let text = String::from_utf8_lossy(rest);
    for line in text.lines() {
        if let Some(caps) = bracketed_capabilities(line) {
            assert!(caps.iter().all(|c| !c.is_empty() && !c.contains(']')));
        }
    }
    let endpoint = Options::from_byte(0).endpoint(993);
    for step in ["log in with XOAUTH2", "open INBOX"] {
        let e = imap_error(&endpoint, step, ImapError::No(text.to_string()), None);
        let _ = (e.to_string(), e.is_transient());
    }
    let _ = server_words(format!("code: None, info: Some({text:?})"));
    let _ = server_words(text.into_owned());
}

/// For the IMAP fuzz targets, after libFuzzer's own hook (which aborts on every panic): a
/// panic inside imap-proto or async-imap is let through, because the session catches it and
/// reports the answer as unreadable (`imap_step`); one that nothing catches still reaches
/// libfuzzer-sys, which aborts. Any other panic aborts here, as before.
pub fn let_imap_library_panics_through() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_library = info.location().is_some_and(|l| {
            ["/imap-proto-", "/async-imap-"]
                .iter()
                .any(|c| l.file().contains(c))
        });
        if !in_library {
            abort(info);
        }
    }));
}

/// The responses in `data` when it arrives `piece` bytes at a time, decoded as async-imap's
/// stream does: parse what has arrived; if the parser needs more, read more; a parse error
/// ends the stream (async-imap reports it and the session is dropped).
fn decode(data: &[u8], piece: usize) -> Vec<String> {
    use async_imap::imap_proto::Response;
    let mut decoded = Vec::new();
    let (mut start, mut arrived) = (0, 0);
    loop {
        arrived = (arrived + piece).min(data.len());
        loop {
            let buffered = &data[start..arrived];
            // A panic in the parser is an unreadable answer, as the session takes it
            // (`imap_step`).
            let Ok(parsed) = std::panic::catch_unwind(|| Response::parse(buffered)) else {
                return decoded;
            };
            match parsed {
                Ok((rest, response)) => {
                    let used = buffered.len() - rest.len();
                    // async-imap would hand out the same response forever.
                    assert!(used > 0, "a response of no bytes: {response:?}");
                    take(&response);
                    decoded.push(format!("{response:?}"));
                    start += used;
                }
                Err(e) if e.is_incomplete() => break,
                Err(_) => return decoded,
            }
        }
        if arrived == data.len() {
            return decoded;
        }
    }
}

/// What [`ImapSession::uid_fetch_some`] does with one response.
fn take(response: &async_imap::imap_proto::Response<'_>) {
    use async_imap::imap_proto::Response;
    match response {
        Response::Fetch(_, attributes) => drop(FetchedMessage::from_attributes(attributes)),
        Response::Done { outcome, .. } => {
            let _ = outcome
                .information
                .as_deref()
                .unwrap_or_default()
                .to_owned();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script from its options byte and turns.
    fn script(options: u8, turns: &[&str]) -> Vec<u8> {
        let mut out = vec![options];
        out.extend_from_slice(turns.join("\u{1e}").as_bytes());
        out
    }

    #[test]
    fn a_pop3_session_runs_to_the_end_on_a_dovecot_transcript() {
        let data = script(
            2,
            &[
                "+OK Dovecot (Debian) ready.\r\n",
                "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nSASL PLAIN\r\n.\r\n",
                "+OK Logged in.\r\n",
                "+OK 2 1035\r\n",
                "+OK\r\n1 000000014bd8a1b9\r\n2 000000024bd8a1b9\r\n.\r\n",
                "+OK\r\nSubject: hi\r\n\r\n.\r\n",
                "+OK 517 octets\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n",
                "+OK Logging out.\r\n",
            ],
        );
        let result = pop3_session(&data).unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn a_pop3_download_past_the_limit_is_refused() {
        let big = format!("+OK\r\n{}\r\n.\r\n", "x".repeat(MAX_MESSAGE_BYTES));
        let data = script(
            2,
            &[
                "+OK ready\r\n",
                "-ERR no CAPA\r\n",
                "+OK\r\n",
                "+OK\r\n",
                "+OK 1 10\r\n",
                "+OK\r\n1 a\r\n.\r\n",
                &big,
            ],
        );
        let e = pop3_session(&data).unwrap().unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn an_smtp_session_runs_to_the_end_with_starttls_and_xoauth2() {
        let data = script(
            1,
            &[
                "220 smtp.gmail.com ESMTP\r\n",
                "250-smtp.gmail.com at your service\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
                "220 2.0.0 Ready to start TLS\r\n",
                "250-smtp.gmail.com at your service\r\n250-AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER\r\n250 SMTPUTF8\r\n",
                "235 2.7.0 Accepted\r\n",
                "250 2.1.0 OK\r\n",
                "250 2.1.5 OK\r\n",
                "550 5.1.1 no such user\r\n",
                "354 Go ahead\r\n",
                "250 2.0.0 OK 1700000000 q1\r\n",
                "221 2.0.0 closing connection\r\n",
            ],
        );
        let result = smtp_session(&data).unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn an_smtp_error_challenge_is_answered_and_explained() {
        let data = script(
            0,
            &[
                "220 ready\r\n",
                "250-hi\r\n250 AUTH XOAUTH2\r\n",
                "334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n",
                "535 5.7.8 Username and Password not accepted\r\n",
            ],
        );
        let e = smtp_session(&data).unwrap().unwrap_err();
        assert!(e.to_string().contains("status 401"), "{e}");
    }

    #[test]
    fn an_imap_session_runs_to_the_end_on_a_gmail_transcript() {
        let data = script(
            0,
            &[
                "* OK Gimap ready for requests from 192.0.2.1\r\n",
                "* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN\r\nm0 OK Thats all she wrote!\r\n",
                "A0001 OK ann@example.com authenticated (Success)\r\n",
                "* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584\r\nA0002 OK Success\r\n",
                "* ID (\"name\" \"GImap\" \"vendor\" \"Google, Inc.\")\r\nA0003 OK Success\r\n",
                "* ENABLED CONDSTORE\r\nA0004 OK Success\r\n",
                "* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotPhishing $Phishing)\r\n* OK [PERMANENTFLAGS ()] Flags permitted.\r\n* OK [UIDVALIDITY 3] UIDs valid.\r\n* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDNEXT 9] Predicted next UID.\r\n* OK [HIGHESTMODSEQ 2179] \r\nA0005 OK [READ-ONLY] INBOX selected. (Success)\r\n",
                "* SEARCH 7 8\r\nA0006 OK SEARCH completed (Success)\r\n",
                "* 1 FETCH (X-GM-THRID 1781 X-GM-MSGID 1781 X-GM-LABELS (\\Important \"Work stuff\") UID 7 BODY[] {21}\r\nSubject: hi\r\n\r\nbody\r\n)\r\n* 2 FETCH (UID 8 X-GM-MSGID 1782 X-GM-THRID 1781 X-GM-LABELS () BODY[] {6}\r\nhello!)\r\nA0007 OK Success\r\n",
                "* BYE LOGOUT Requested\r\nA0008 OK 73 good day (Success)\r\n",
            ],
        );
        let fetched = imap_session(&data).unwrap().unwrap();
        assert_eq!(fetched, 2);
    }

    #[test]
    fn an_answer_imap_proto_panics_on_is_an_unreadable_answer() {
        // Found by imap_responses: a non-ASCII byte right after a response code.
        let data = b"\x03A0004 OK [READ-ONLY]\x84 INBOX selected.\r\n";
        imap_responses(data);
        let decoded = decode(&data[1..], data.len());
        assert!(decoded.is_empty(), "{decoded:?}");
    }

    #[test]
    fn imap_responses_decode_the_same_whole_and_in_pieces() {
        let data = b"\x03* 1 FETCH (UID 7 BODY[] {5}\r\nhello X-GM-LABELS (\\Inbox))\r\n* 2 EXISTS\r\nA1 OK done\r\n";
        imap_responses(data);
        assert_eq!(decode(&data[1..], data.len()).len(), 3);
    }
}
