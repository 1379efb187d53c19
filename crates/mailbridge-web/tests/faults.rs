//! Faults at every step of a mail session, end to end. The engine syncs and sends through a
//! [`CountingProxy`] that cuts, resets, stalls or drips the connection once, at one step —
//! IMAP: the greeting, the login, SELECT, the middle of a FETCH literal, IDLE, DONE; POP3: the
//! greeting, the login, UIDL, the middle of a RETR; SMTP: the greeting, AUTH, MAIL FROM,
//! RCPT TO, DATA, the middle of the message, the answer to its final dot — and every case
//! must converge: each message stored exactly once, each email sent exactly once (or, when
//! the message had left and the answer never came, never sent again and reported), the
//! mailbox still enabled, and its logins within the engine's per-mailbox limit. A drip (a
//! slow link that still moves) must not count as a failure at all.
//!
//! The cases run side by side on one Dovecot and one Mailbridge, each with its own account,
//! profile, mailbox and proxy. The table of outcomes is printed and written to
//! `<target>/tmp/faults.md` (the README's "Faults" table). `MAILBRIDGE_TEST_FAULTS=<words>` runs
//! only the cases whose name holds all of them (e.g. `MAILBRIDGE_TEST_FAULTS="IMAP drip"`).
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mailbridge_store::{Actor, EmailFilter};
use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{Action, AppOptions, CountingProxy, Fault, MailWorld, Step};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The engine's read timeout here: a stall costs this long before a new connection.
const MAIL_TIMEOUT: Duration = Duration::from_secs(2);

/// A drip passes one byte every 2 ms (500 bytes a second, slower than any real link): a
/// transfer that keeps moving however slowly. Not slower: an SMTP message still on its way
/// when the client starts waiting for the answer to its final dot counts against that wait
/// (the read timeout), and at 5 ms a byte the 300-byte message takes 1.5 s of the 2.
const DRIP: Duration = Duration::from_millis(2);

/// Where "the middle" of a message is: this many bytes into it (the test messages are
/// longer).
const MID: usize = 100;

/// Messages waiting before the mailbox is enabled, and again once those are stored.
const BATCH: usize = 5;

/// How long a case may take to converge.
const BOUND: Duration = Duration::from_secs(150);

/// Cases at once.
const CONCURRENT: usize = 24;

const PASSWORD: &str = "faulty-hunter2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    protocol: Protocol,
    step: Step,
    action: Action,
}

impl Case {
    /// The table's row: protocol and step.
    fn row(&self) -> String {
        let protocol = match self.protocol {
            Protocol::Imap => "IMAP",
            Protocol::Pop3 => "POP3",
            Protocol::Smtp => "SMTP",
        };
        let step = match (self.protocol, self.step) {
            (_, Step::Greeting) => "greeting",
            (Protocol::Imap, Step::Login) => "LOGIN",
            (Protocol::Pop3 | Protocol::Smtp, Step::Login) => "AUTH",
            (_, Step::Select) => "SELECT",
            (_, Step::FetchLiteral(_)) => "mid-FETCH literal",
            (_, Step::Idle) => "IDLE",
            (_, Step::Done) => "DONE",
            (_, Step::Uidl) => "UIDL",
            (_, Step::Retr(_)) => "mid-RETR",
            (_, Step::MailFrom) => "MAIL FROM",
            (_, Step::RcptTo) => "RCPT TO",
            (_, Step::Data) => "DATA",
            (_, Step::Message(_)) => "mid-message",
            (_, Step::AfterDot) => "after the final dot",
            (_, other) => unreachable!("not in the matrix: {other:?}"),
        };
        format!("{protocol} · {step}")
    }

    /// The table's column.
    fn column(&self) -> usize {
        match self.action {
            Action::Cut => 0,
            Action::Reset => 1,
            Action::Stall => 2,
            Action::Drip(_) => 3,
            Action::Answer(_) => unreachable!("not in the matrix: {:?}", self.action),
        }
    }

    fn name(&self) -> String {
        let action = ["cut", "reset", "stall", "drip"][self.column()];
        format!("{} · {action}", self.row())
    }

    /// The message had left the client when the connection failed, and the server's answer
    /// never came: the email may have been delivered, so it must not be sent again.
    fn unconfirmed(&self) -> bool {
        matches!(self.step, Step::Message(_) | Step::AfterDot)
            && !matches!(self.action, Action::Drip(_))
    }
}

/// Every (protocol, step, action).
fn matrix() -> Vec<Case> {
    use Protocol::{Imap, Pop3, Smtp};
    let steps: [(Protocol, &[Step]); 3] = [
        (
            Imap,
            &[
                Step::Greeting,
                Step::Login,
                Step::Select,
                Step::FetchLiteral(MID),
                Step::Idle,
                Step::Done,
            ],
        ),
        (
            Pop3,
            &[Step::Greeting, Step::Login, Step::Uidl, Step::Retr(MID)],
        ),
        (
            Smtp,
            &[
                Step::Greeting,
                Step::Login,
                Step::MailFrom,
                Step::RcptTo,
                Step::Data,
                Step::Message(MID),
                Step::AfterDot,
            ],
        ),
    ];
    let actions = [
        Action::Cut,
        Action::Reset,
        Action::Stall,
        Action::Drip(DRIP),
    ];
    let mut cases = Vec::new();
    for (protocol, steps) in steps {
        for &step in steps {
            for action in actions {
                cases.push(Case {
                    protocol,
                    step,
                    action,
                });
            }
        }
    }
    cases
}

/// What a case came to.
struct Outcome {
    case: Case,
    /// Empty when every check held.
    problems: Vec<String>,
    /// The table's words.
    summary: String,
    /// Held until every case is over: a port let go could be handed to the next case's proxy
    /// while this case's connections still come to it.
    _proxies: Vec<CountingProxy>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_step_converges() {
    // The engine's warnings (what failed, and how) go with a failing run's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("mailbridge_sync=warn")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let filter = std::env::var("MAILBRIDGE_TEST_FAULTS").unwrap_or_default();
    let cases: Vec<Case> = matrix()
        .into_iter()
        .filter(|c| {
            let name = c.name().to_ascii_lowercase();
            filter
                .split_whitespace()
                .all(|w| name.contains(&w.to_ascii_lowercase()))
        })
        .collect();
    assert!(!cases.is_empty(), "no case matches {filter:?}");
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            mail_timeout: MAIL_TIMEOUT,
            idle_refresh: Duration::from_secs(1),
            // The default limit, named: it is what the cases are checked against.
            login_limit: EngineConfig::default().login_limit,
            ..MailWorld::fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    for n in 0..cases.len() {
        w.dovecot
            .add_password_user(&format!("case{n}@example.com"), PASSWORD)
            .unwrap();
    }
    // Dovecot looks at its passwd-file at most once a second.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let started = Instant::now();
    let mut outcomes: Vec<(usize, Outcome)> = futures::stream::iter(cases.into_iter().enumerate())
        .map(|(n, case)| {
            let w = &w;
            async move { (n, run(w, n, case).await) }
        })
        .buffer_unordered(CONCURRENT)
        .collect()
        .await;
    outcomes.sort_by_key(|(n, _)| *n);
    // One row per protocol and step, one column per action.
    let mut rows: Vec<(String, [String; 4])> = Vec::new();
    for (_, o) in &outcomes {
        let row = o.case.row();
        if rows.last().is_none_or(|(r, _)| *r != row) {
            rows.push((row.clone(), Default::default()));
        }
        let mark = if o.problems.is_empty() {
            ""
        } else {
            " **FAILED**"
        };
        if let Some((_, cells)) = rows.last_mut() {
            cells[o.case.column()] = format!("{}{mark}", o.summary);
        }
    }
    let mut table = String::from("| case | cut | reset | stall | drip |\n|---|---|---|---|---|\n");
    for (row, cells) in &rows {
        writeln!(table, "| {row} | {} |", cells.join(" | ")).unwrap();
    }
    eprintln!(
        "{table}\n{} cases in {:.0} s",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults.md"),
        &table,
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| !o.problems.is_empty())
        .map(|(_, o)| format!("{}: {}", o.case.name(), o.problems.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    w.app.stop().await.unwrap();
}

async fn run(w: &MailWorld, n: usize, case: Case) -> Outcome {
    let user = format!("case{n}@example.com");
    let fault = Fault::once(case.step, case.action);
    match case.protocol {
        Protocol::Imap | Protocol::Pop3 => incoming(w, n, case, &user, fault).await,
        Protocol::Smtp => outgoing(w, n, case, &user, fault).await,
    }
}

/// A message of case `n`, about 400 bytes, with a Message-ID of its own.
fn message(n: usize, k: usize) -> (String, Vec<u8>) {
    let id = format!("case{n}-{k}@faults.test");
    let raw = format!(
        "From: Bob <bob@example.com>\r\nTo: case{n}@example.com\r\nSubject: case {n}, message {k}\r\n\
         Message-ID: <{id}>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n{}",
        "Nothing is lost and nothing is stored twice.\r\n".repeat(6)
    );
    (id, raw.into_bytes())
}

/// An IMAP or POP3 case: mail waiting, the mailbox enabled, more mail once that is stored.
async fn incoming(w: &MailWorld, n: usize, case: Case, user: &str, fault: Fault) -> Outcome {
    let (protocol, target) = match case.protocol {
        Protocol::Imap => ("imap", w.dovecot.ports.imap),
        _ => ("pop3", w.dovecot.ports.pop3),
    };
    let proxy = CountingProxy::with_fault(target, fault).await.unwrap();
    let profile = w
        .password_profile_at(
            &format!("Faults {n}"),
            json!({"protocol": protocol, "host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            w.submissions(),
            json!({"poll_interval_seconds": 10}),
        )
        .await;
    let mailbox = w
        .mailbox(
            user,
            &w.ann_id,
            &profile,
            json!({"password": PASSWORD, "outgoing_method": "none"}),
        )
        .await;
    let mut expected = HashSet::new();
    for k in 0..BATCH {
        let (id, raw) = message(n, k);
        w.dovecot.deliver(user, &raw).unwrap();
        expected.insert(id);
    }
    let started = Instant::now();
    w.enable_as_tested(&mailbox).await;
    let mut problems = Vec::new();
    let first = stored(w, &mailbox, BATCH).await;
    if first {
        for k in BATCH..2 * BATCH {
            let (id, raw) = message(n, k);
            w.dovecot.deliver(user, &raw).unwrap();
            expected.insert(id);
        }
    }
    let converged = first && stored(w, &mailbox, 2 * BATCH).await;
    let took = started.elapsed();
    if !converged {
        problems.push(format!("not converged within {} s", BOUND.as_secs()));
    }
    // Anything stored twice would show up now, a few IDLE refreshes (or a POP3 poll) later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let emails = w
        .app
        .store
        .list_emails(
            &EmailFilter {
                mailbox: Some(mailbox.parse().unwrap()),
                ..EmailFilter::default()
            },
            None,
            1000,
        )
        .await
        .unwrap();
    let ids: HashSet<String> = emails
        .iter()
        .filter_map(|e| e.message_id.as_deref())
        .map(|id| id.trim_matches(['<', '>']).to_owned())
        .collect();
    if emails.len() != expected.len() || ids != expected {
        problems.push(format!(
            "{} records, {} distinct Message-IDs of {} expected",
            emails.len(),
            ids.len(),
            expected.len()
        ));
    }
    let view = mailbox_view(w, &mailbox).await;
    let failures = view["items_failed"].as_i64().unwrap_or(-1);
    check_common(&mut problems, &case, &proxy, &view);
    if matches!(case.action, Action::Drip(_)) && failures != 0 {
        problems.push(format!(
            "a slow transfer counted as {failures} failure(s): {}",
            view["last_sync_error"]
        ));
    }
    done(w, &mailbox).await;
    let summary = if converged {
        format!(
            "{}/{} once, {:.1} s, {}",
            ids.len(),
            expected.len(),
            took.as_secs_f64(),
            logins(proxy.total())
        )
    } else {
        format!("not converged: {}/{}", ids.len(), expected.len())
    };
    Outcome {
        case,
        problems,
        summary,
        _proxies: vec![proxy],
    }
}

/// An SMTP case: one email queued through the API.
async fn outgoing(w: &MailWorld, n: usize, case: Case, user: &str, fault: Fault) -> Outcome {
    let proxy = CountingProxy::with_fault(w.dovecot.ports.submission, fault)
        .await
        .unwrap();
    // Where an email whose answer was lost is looked for (the Sent folder).
    let imap = CountingProxy::start(w.dovecot.ports.imap).await.unwrap();
    let profile = w
        .password_profile_at(
            &format!("Faults {n}"),
            json!({"protocol": "imap", "host": "127.0.0.1", "port": imap.port, "security": "none"}),
            json!({"host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            json!({}),
        )
        .await;
    let mailbox = w
        .mailbox(
            user,
            &w.ann_id,
            &profile,
            json!({"password": PASSWORD, "incoming_method": "none"}),
        )
        .await;
    w.enable_as_tested(&mailbox).await;
    let started = Instant::now();
    let (status, email) = w
        .api
        .post(
            &w.app,
            "/api/v1/emails",
            &w.ann,
            json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                   "subject": format!("case {n}"), "text_body": "Sent once, and only once.",
                   "tracking_token": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{email}");
    let id = email["id"].as_str().unwrap().to_owned();
    let message_id = email["message_id"].as_str().unwrap().to_owned();
    let mut problems = Vec::new();
    let mut settled = Value::Null;
    while started.elapsed() < BOUND {
        let (_, e) = w
            .api
            .get(&w.app, &format!("/api/v1/emails/{id}"), &w.ann)
            .await;
        if e["status"] == "sent" || e["status"] == "failed" {
            settled = e;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    // Long enough for a retry (the first comes 2 s after a failure): nothing goes out again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let copies = w
        .dovecot
        .relayed()
        .unwrap()
        .iter()
        .filter(|m| {
            m.windows(message_id.len())
                .any(|w| w == message_id.as_bytes())
        })
        .count();
    let (_, now) = w
        .api
        .get(&w.app, &format!("/api/v1/emails/{id}"), &w.ann)
        .await;
    if now["status"] != settled["status"] || now["send_attempts"] != settled["send_attempts"] {
        problems.push(format!("tried again after settling: {now}"));
    }
    let status = settled["status"]
        .as_str()
        .unwrap_or("still queued")
        .to_owned();
    let reply = settled["send_reply"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let summary;
    if case.unconfirmed() {
        // The message had left; whether the server took it is unknown to the client. It is
        // never sent again: `sent` if found in the Sent folder, else `failed` with an alert.
        let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
        let alerted = alerts.as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["kind"] == "send_unconfirmed" && a["mailbox_id"] == mailbox.as_str())
        });
        // After the final dot the server had answered: it has the message. In the middle of
        // the message it had only part of it, and drops that.
        let delivered = usize::from(case.step == Step::AfterDot);
        let reported = match status.as_str() {
            "failed" => alerted && reply.contains("may have been delivered"),
            "sent" => reply.contains("Sent folder"),
            _ => false,
        };
        if !reported || copies != delivered || settled["send_attempts"] != 1 {
            problems.push(format!(
                "expected {delivered} relayed copy, one attempt, and sent (found in Sent) or failed with a send_unconfirmed alert; got {copies} copies, alert {alerted}: {settled}"
            ));
        }
        summary = format!(
            "{status}{}, {copies} relayed, {:.1} s, {} (+{} to search Sent)",
            if alerted { " + alert" } else { "" },
            took.as_secs_f64(),
            logins(proxy.total()),
            imap.total(),
        );
    } else {
        if status != "sent" || copies != 1 {
            problems.push(format!("expected sent once; {copies} copies: {settled}"));
        }
        if matches!(case.action, Action::Drip(_)) && settled["send_attempts"] != 1 {
            problems.push(format!("a slow transfer needed another attempt: {settled}"));
        }
        summary = format!(
            "{status}, {copies} relayed, {:.1} s, {}",
            took.as_secs_f64(),
            logins(proxy.total()),
        );
    }
    let view = mailbox_view(w, &mailbox).await;
    check_common(&mut problems, &case, &proxy, &view);
    done(w, &mailbox).await;
    Outcome {
        case,
        problems,
        summary,
        _proxies: vec![proxy, imap],
    }
}

/// The case is over: its mailbox is disabled, so its worker stops and leaves the machine to
/// the cases still running.
async fn done(w: &MailWorld, mailbox: &str) {
    w.app
        .store
        .record_test(&Actor::cli(), mailbox.parse().unwrap(), None, None, false)
        .await
        .unwrap();
}

/// What every case must show: the fault fired (or the case proved nothing), the mailbox is
/// still enabled, and it logged in no more often than the engine's limit allows.
fn check_common(problems: &mut Vec<String>, case: &Case, proxy: &CountingProxy, view: &Value) {
    if proxy.fired() != 1 {
        problems.push(format!("the fault fired {} times, not once", proxy.fired()));
    }
    if view["enabled"] != true {
        problems.push(format!("the mailbox was disabled: {view}"));
    }
    let (limit, window) = EngineConfig::default().login_limit;
    let most = proxy.most_within(window);
    if most > limit {
        problems.push(format!(
            "{most} logins within {} s (limit {limit}) for {}",
            window.as_secs(),
            case.name()
        ));
    }
}

fn logins(n: usize) -> String {
    if n == 1 {
        "1 login".to_owned()
    } else {
        format!("{n} logins")
    }
}

/// Waits until the mailbox holds `n` emails; `false` if it does not within [`BOUND`].
async fn stored(w: &MailWorld, mailbox: &str, n: usize) -> bool {
    let id = mailbox.parse().unwrap();
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if w.app.store.count_emails(id).await.unwrap() >= n as i64 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn mailbox_view(w: &MailWorld, id: &str) -> Value {
    w.api
        .get(&w.app, &format!("/api/v1/mailboxes/{id}"), &w.admin)
        .await
        .1
}
