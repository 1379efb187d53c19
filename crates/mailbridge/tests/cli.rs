//! The `mailbridge` binary as an operator runs it: admin commands, `serve` on port 0 with
//! verbose logs, graceful SIGTERM, configuration errors, and key rotation.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "GOCSPX-cli-test-secret-91b2";

fn mailbridge(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbridge"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("MAILBRIDGE_MASTER_KEY")
        .env_remove("MAILBRIDGE_DATABASE_URL")
        .env_remove("MAILBRIDGE_LISTEN")
        .env_remove("MAILBRIDGE_CONFIG");
    cmd
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// `mailbridge profiles create --from -` with `profile` on standard input.
fn create_profile(d: &Path, profile: &serde_json::Value) -> Output {
    run(
        mailbridge(d).args(["profiles", "create", "--from", "-"]),
        &profile.to_string(),
    )
}

/// `mailbridge mailboxes create`.
fn create_mailbox(d: &Path, owner: &str, email: &str, profile: &str) -> Output {
    run(
        mailbridge(d).args([
            "mailboxes",
            "create",
            "--owner",
            owner,
            "--email",
            email,
            "--profile",
            profile,
        ]),
        "",
    )
}

/// `serve` on a free port with every log line on; returns the child and its base URL.
fn serve(dir: &Path) -> (Child, String) {
    serve_with(
        mailbridge(dir)
            .env("RUST_LOG", "trace")
            .stderr(Stdio::piped()),
    )
}

/// `serve` on a free port, as configured by `cmd`.
fn serve_with(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd
        .arg("serve")
        .env("MAILBRIDGE_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("mailbridge listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, base)
}

/// "Sign in to Gmail" as a browser would: start, the provider's consent, the callback page.
async fn sign_in(base: &str, mailbox: &str, token: &str) {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = no_redirects
        .get(format!("{base}/api/v1/mailboxes/{mailbox}/oauth/start"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let consent = start.headers()["location"].to_str().unwrap().to_owned();
    let page = reqwest::get(consent).await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
}

fn sigterm_and_wait(mut child: Child) -> (bool, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn an_operator_scripts_a_setup_and_no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = ok(&run(
        mailbridge(d).args([
            "users",
            "create",
            "--email",
            "admin@example.com",
            "--role",
            "admin",
        ]),
        "",
    ));
    assert!(token.starts_with("mbt_"), "{token}");
    ok(&run(
        mailbridge(d).args(["users", "create", "--email", "ann@example.com"]),
        "",
    ));
    let profile = serde_json::json!({"name": "Sales", "preset": "gmail",
        "oauth": {"client_id": "7.apps.googleusercontent.com", "client_secret": SECRET}});
    let profile_id = ok(&create_profile(d, &profile));
    ok(&create_mailbox(
        d,
        "ann@example.com",
        "ann@example.com",
        "Sales",
    ));
    let listing = ok(&run(mailbridge(d).args(["profiles", "list"]), ""));
    assert!(
        listing.contains(&profile_id) && listing.contains("1/100 mailboxes"),
        "{listing}"
    );
    let bad = create_mailbox(d, "nobody@example.com", "x@example.com", "Sales");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no user has the email nobody@example.com")
    );

    // Key file and data folder are private.
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&d.join("mailbridge-data/master.key")), 0o600);
    assert_eq!(mode(&d.join("mailbridge-data")), 0o700);

    // A second mailbox on a profile whose OAuth provider runs here, to sign in for real.
    let provider = mailbridge_testkit::OAuthProvider::start().unwrap();
    let local = serde_json::json!({"name": "Local", "preset": "gmail", "oauth": provider.profile_oauth("local-client", SECRET)});
    ok(&create_profile(d, &local));
    let bob_box = ok(&create_mailbox(
        d,
        "ann@example.com",
        "bob@example.com",
        "Local",
    ));

    let (child, base) = serve(d);
    let http = reqwest::Client::new();
    sign_in(&base, &bob_box, &token).await;
    let mailboxes: serde_json::Value = http
        .get(format!("{base}/api/v1/mailboxes"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mailboxes[0]["email"], "ann@example.com");
    let resp = http
        .patch(format!("{base}/api/v1/server-profiles/{profile_id}"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"oauth": {"client_secret": format!("{SECRET}-2")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (clean, logs) = sigterm_and_wait(child);
    assert!(clean, "serve exited with an error after SIGTERM:\n{logs}");
    assert!(
        logs.contains("shutting down") && logs.contains("/api/v1/server-profiles"),
        "trace logs are on:\n{logs}"
    );
    assert!(!logs.contains(SECRET), "a client secret reached the log");
    assert!(!logs.contains(&token), "an API token reached the log");
    assert!(
        logs.contains("mailbox signed in"),
        "the sign-in is logged:\n{logs}"
    );
    let store = mailbridge_store::Store::connect(
        &format!(
            "sqlite://{}",
            d.join("mailbridge-data/mailbridge.db").display()
        ),
        mailbridge_store::Keyring::load_or_create(&d.join("mailbridge-data/master.key")).unwrap(),
        std::sync::Arc::new(mailbridge_core::SystemClock),
    )
    .await
    .unwrap();
    let tokens = store
        .mailbox_tokens(bob_box.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    for t in [&tokens.access_token, &tokens.refresh_token] {
        let t = secrecy::ExposeSecret::expose_secret(t);
        assert!(!logs.contains(t), "an OAuth token reached the log");
    }

    // Rotation re-encrypts with a new key and retires the old; a second rotation proves the
    // secrets decrypt under the key that is now in the file.
    let key_before = std::fs::read_to_string(d.join("mailbridge-data/master.key")).unwrap();
    let out = run(mailbridge(d).args(["keys", "rotate"]), "");
    ok(&out);
    // Two client secrets, and the signed-in mailbox's access and refresh tokens.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-encrypted 4 secret(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_after = std::fs::read_to_string(d.join("mailbridge-data/master.key")).unwrap();
    assert_ne!(key_before, key_after);
    assert_eq!(key_after.lines().filter(|l| !l.starts_with('#')).count(), 1);
    ok(&run(mailbridge(d).args(["keys", "rotate"]), ""));
}

#[test]
fn configuration_mistakes_stop_start_up_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = |cmd: &mut Command| {
        let out = run(cmd, "");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(mailbridge(d)
        .arg("serve")
        .env("MAILBRIDGE_LISTEN", "localhost"));
    assert!(e.contains("MAILBRIDGE_LISTEN"), "{e}");
    let e = err(mailbridge(d)
        .arg("serve")
        .env("MAILBRIDGE_DATABASE_URL", "mysql://u:hunter2@db/x"));
    assert!(
        e.contains("MAILBRIDGE_DATABASE_URL") && !e.contains("hunter2"),
        "{e}"
    );
    let e = err(mailbridge(d)
        .arg("migrate")
        .env("MAILBRIDGE_MASTER_KEY", "k1:short"));
    assert!(
        e.contains("MAILBRIDGE_MASTER_KEY") && e.contains("32 bytes"),
        "{e}"
    );
    let e = err(mailbridge(d)
        .arg("migrate")
        .env("MAILBRIDGE_GMAIL_OAUTH", "sometimes"));
    assert!(e.contains("gmail_oauth"), "{e}");
    // An admin command that would start a new, empty database says so; serve/migrate don't.
    let fresh = d.join("elsewhere");
    std::fs::create_dir_all(&fresh).unwrap();
    let listed = run(mailbridge(&fresh).args(["users", "list"]), "");
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("no database at"),
        "{listed:?}"
    );
    let again = run(mailbridge(&fresh).args(["users", "list"]), "");
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let migrated = run(mailbridge(&other).arg("migrate"), "");
    for out in [&again, &migrated] {
        assert!(
            out.status.success()
                && !String::from_utf8_lossy(&out.stderr).contains("no database at"),
            "{out:?}"
        );
    }
    // A misspelt setting is named; the test suite's own variables are not settings.
    let e = err(mailbridge(d).arg("migrate").env("MAILBRIDGE_LISTNE", "x"));
    assert!(e.contains("listne"), "{e}");
    ok(&run(
        mailbridge(d)
            .arg("migrate")
            .env("MAILBRIDGE_TEST_DATABASE", "postgres"),
        "",
    ));
    std::fs::write(
        d.join("mailbridge.toml"),
        "listen = \"127.0.0.1:8025\"\nlisten_port = 1\n",
    )
    .unwrap();
    let e = err(mailbridge(d).arg("migrate"));
    assert!(e.contains("listen_port"), "{e}");
    let e = err(mailbridge(d).args(["--config", "missing.toml", "migrate"]));
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn every_limit_is_read_from_its_environment_variable_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for variable in [
        "MAILBRIDGE_HTTP_HEADER_TIMEOUT_MS",
        "MAILBRIDGE_HTTP_BODY_TIMEOUT_MS",
        "MAILBRIDGE_HTTP_IDLE_TIMEOUT_MS",
        "MAILBRIDGE_HTTP_MAX_BODY_BYTES",
        "MAILBRIDGE_HTTP_MAX_CONNECTIONS",
        "MAILBRIDGE_MAX_TEST_ENABLE_RUNS",
        "MAILBRIDGE_MAX_PENDING_SIGN_INS",
    ] {
        // 0 is nonsense for each: start-up stops, naming the variable (so it was read).
        let out = run(mailbridge(d).arg("migrate").env(variable, "0"), "");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && e.contains(variable),
            "{variable}: {e}"
        );
    }
    ok(&run(
        mailbridge(d)
            .arg("migrate")
            .env("MAILBRIDGE_HTTP_MAX_CONNECTIONS", "16")
            .env("MAILBRIDGE_HTTP_HEADER_TIMEOUT_MS", "2500"),
        "",
    ));
}

#[test]
fn a_master_key_from_the_environment_is_used_and_no_key_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = ok(&run(mailbridge(d).args(["keys", "generate"]), ""));
    assert!(key.contains(':'));
    ok(&run(
        mailbridge(d)
            .args(["users", "create", "--email", "a@example.com"])
            .env("MAILBRIDGE_MASTER_KEY", &key),
        "",
    ));
    assert!(!d.join("mailbridge-data/master.key").exists());
}

/// Started with a soft open-file limit below its hard one, `serve` raises it to the hard one;
/// with a hard limit below what `http_max_connections` (and the enabled mailboxes) may need,
/// it says so at start, naming how far to raise it.
#[tokio::test]
async fn serve_raises_its_open_file_limit_and_says_when_the_hard_limit_is_too_low() {
    let dir = tempfile::tempdir().unwrap();
    let limited = |hard: u32, max_connections: &str| {
        // The shell sets the limits, then becomes the service (`serve` comes as "$@").
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            &format!("ulimit -Sn 64 && ulimit -Hn {hard} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_mailbridge"),
        ])
        .current_dir(dir.path())
        .env_remove("MAILBRIDGE_MASTER_KEY")
        .env_remove("MAILBRIDGE_DATABASE_URL")
        .env_remove("MAILBRIDGE_CONFIG")
        .env("RUST_LOG", "info")
        .env("MAILBRIDGE_HTTP_MAX_CONNECTIONS", max_connections)
        .stderr(Stdio::piped());
        serve_with(&mut sh)
    };
    // Ready (its signal handling in place), then stopped; its log read.
    let stop = |(child, base): (Child, String)| async move {
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert!(ready.status().is_success());
        let (stopped, log) = sigterm_and_wait(child);
        assert!(stopped, "{log}");
        // The log's colours (ESC [ … m) out, to read `name=value`.
        let mut plain = String::new();
        for (i, part) in log.split('\u{1b}').enumerate() {
            let text = if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, t)| t)
            };
            plain.push_str(text);
        }
        plain
    };
    // Enough: 100 HTTP connections need 228 descriptors with no mailbox enabled.
    let log = stop(limited(4096, "100")).await;
    assert!(
        log.contains("open_files=4096") && log.contains("open-file limit"),
        "{log}"
    );
    assert!(!log.contains("too low"), "{log}");
    // Too few for the default 1,024 HTTP connections.
    let log = stop(limited(512, "1024")).await;
    assert!(
        log.contains("open-file limit is too low")
            && log.contains("open_files=512")
            && log.contains("at least 1152"),
        "{log}"
    );
}

/// The service killed with SIGKILL at pseudo-random points during a 2,000-message first sync
/// and restarted, several times, ends with exactly 2,000 records.
#[tokio::test]
async fn sigkill_during_a_first_sync_loses_and_duplicates_nothing() {
    const TOTAL: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = mailbridge_testkit::OAuthProvider::start().unwrap();
    let dovecot = mailbridge_testkit::Dovecot::start(&provider, &[]).unwrap();
    for i in 0..TOTAL {
        let m = format!(
            "From: sender{i}@example.com\r\nTo: ann@example.com\r\nSubject: message {i}\r\nMessage-ID: <crash-{i}@example.com>\r\n\r\n{}\r\n",
            "body ".repeat(40)
        );
        dovecot.deliver("ann@example.com", m.as_bytes()).unwrap();
    }
    std::fs::write(d.join("ca.pem"), dovecot.ca_pem()).unwrap();
    let configured = |cmd: &mut Command| {
        cmd.env("MAILBRIDGE_TLS_CA_FILE", d.join("ca.pem"))
            .env("MAILBRIDGE_SYNC_SCAN_INTERVAL_MS", "50")
            .env("MAILBRIDGE_SYNC_STAGGER_MS", "0");
    };
    let token = ok(&run(
        mailbridge(d).args([
            "users",
            "create",
            "--email",
            "ann@example.com",
            "--role",
            "admin",
        ]),
        "",
    ));
    let oauth = provider.profile_oauth("crash-client", "crash-secret");
    let profile = serde_json::json!({"name": "Local", "preset": "gmail", "oauth": oauth,
        "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": dovecot.ports.imaps, "security": "tls"},
        "outgoing": {"host": "127.0.0.1", "port": dovecot.ports.submissions, "security": "tls"}});
    ok(&create_profile(d, &profile));
    let mailbox = ok(&create_mailbox(
        d,
        "ann@example.com",
        "ann@example.com",
        "Local",
    ));

    let log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("serve.log"))
            .unwrap()
    };
    let start = || {
        let mut cmd = mailbridge(d);
        configured(&mut cmd);
        serve_with(cmd.stderr(log()))
    };
    let (child, base) = start();
    let http = reqwest::Client::new();
    sign_in(&base, &mailbox, &token).await;
    let processed = |base: String| {
        let http = http.clone();
        let token = token.clone();
        let mailbox = mailbox.clone();
        async move {
            let m: serde_json::Value = http
                .get(format!("{base}/api/v1/mailboxes/{mailbox}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            m["items_processed"].as_u64().unwrap() as usize
        }
    };
    let tested: serde_json::Value = http
        .post(format!("{base}/api/v1/mailboxes/{mailbox}/test-and-enable"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tested["enabled"], true, "{tested:#}");

    // Kill while the sync runs: each round waits until the node has committed something since
    // it (re)started, then kills after a fixed extra delay (0 = right after a commit, more =
    // inside the next batch; a fixed sequence, so a failure can be replayed). Following the
    // progress rather than the clock keeps the kills mid-sync on a fast or a loaded machine.
    let mut child = child;
    let mut base = base;
    let mut mid_sync_kills = 0;
    let mut at_start = 0;
    for extra_ms in [0u64, 15, 0, 40, 5, 25] {
        let waiting = Instant::now();
        let mut before = processed(base.clone()).await;
        while before == at_start {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "no progress past {at_start} of {TOTAL} within 60 s of a restart"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            before = processed(base.clone()).await;
        }
        if before >= TOTAL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(extra_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (c, b) = start();
        child = c;
        base = b;
        // What the killed node had committed: mid-sync if short of the whole mailbox.
        at_start = processed(base.clone()).await;
        if at_start >= TOTAL {
            break;
        }
        mid_sync_kills += 1;
    }
    let started = Instant::now();
    loop {
        let n = processed(base.clone()).await;
        if n >= TOTAL {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {n} of {TOTAL} after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly 2,000 records, each message once.
    let mut ids = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "{base}/api/v1/emails?mailbox_id={mailbox}&limit=200&cursor={cursor}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in page["emails"].as_array().unwrap() {
            assert!(
                ids.insert(e["message_id"].as_str().unwrap().to_owned()),
                "duplicate {}",
                e["message_id"]
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(ids.len(), TOTAL);
    assert_eq!(processed(base.clone()).await, TOTAL);
    eprintln!("{mid_sync_kills} of 6 kills landed mid-sync");
    assert!(
        mid_sync_kills >= 1,
        "no kill landed during the sync; the test proved nothing"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
