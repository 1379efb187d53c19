//! [`Dovecot`]: a real Dovecot 2.3 (Debian's `dovecot-imapd`, `dovecot-pop3d`,
//! `dovecot-submissiond`) per test, on free ports in a temp dir, with TLS from a generated CA
//! and `passdb oauth2` validating XOAUTH2/OAUTHBEARER tokens by introspection at the test
//! [`OAuthProvider`]. Password users come from a passwd-file.

use std::fmt::Write as _;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::OAuthProvider;

const DOVECOT: &str = "/usr/sbin/dovecot";
const AIOSMTPD: &str = "/usr/lib/python3/dist-packages/aiosmtpd";

/// The ports of each service.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    pub submission: u16,
    pub submissions: u16,
}

pub struct Dovecot {
    dir: tempfile::TempDir,
    child: Child,
    /// aiosmtpd: where submission relays what it accepts, so a test can read what was sent.
    sink: Child,
    sink_port: u16,
    pub ports: Ports,
    ca_pem: String,
}

impl Dovecot {
    /// Starts Dovecot trusting `oauth` for tokens, with `password_users` as (login, password).
    pub fn start(oauth: &OAuthProvider, password_users: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_offering(oauth, password_users, "xoauth2 oauthbearer plain login")
    }

    /// Like [`Dovecot::start`], offering only the SASL `mechanisms` (space-separated).
    pub fn start_offering(
        oauth: &OAuthProvider,
        password_users: &[(&str, &str)],
        mechanisms: &str,
    ) -> anyhow::Result<Self> {
        Self::start_configured(oauth, password_users, mechanisms, "")
    }

    /// Like [`Dovecot::start`], as a server without IDLE (RFC 2177) looks: its capabilities
    /// leave IDLE out (Dovecot still accepts the command; a client that goes by the
    /// capabilities never sends it).
    pub fn start_without_idle(
        oauth: &OAuthProvider,
        password_users: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_without(oauth, password_users, &["IDLE"])
    }

    /// Like [`Dovecot::start`], its capabilities without `left_out` (`CONDSTORE`, `IDLE`…),
    /// as an older or plainer server looks to a client that goes by them.
    pub fn start_without(
        oauth: &OAuthProvider,
        password_users: &[(&str, &str)],
        left_out: &[&str],
    ) -> anyhow::Result<Self> {
        const CAPABILITIES: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT \
             THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED \
             I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS \
             BINARY MOVE SPECIAL-USE LITERAL+";
        let kept: Vec<&str> = CAPABILITIES
            .split_whitespace()
            .filter(|c| !left_out.contains(c))
            .collect();
        Self::start_configured(
            oauth,
            password_users,
            "xoauth2 oauthbearer plain login",
            &format!("imap_capability = {}\n", kept.join(" ")),
        )
    }

    /// Starts Dovecot, on other ports again if one of its ports was taken before it bound
    /// (the ports are free when chosen, but another process may bind one in between).
    fn start_configured(
        oauth: &OAuthProvider,
        password_users: &[(&str, &str)],
        mechanisms: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(oauth, password_users, mechanisms, extra_config) {
                Err(e)
                    if attempt < 3
                        && e.to_string()
                            .to_lowercase()
                            .contains("address already in use") =>
                {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn start_once(
        oauth: &OAuthProvider,
        password_users: &[(&str, &str)],
        mechanisms: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        if !Path::new(DOVECOT).exists() {
            bail!(
                "Dovecot is not installed: run ./scripts/test (apt-get install dovecot-imapd dovecot-pop3d dovecot-submissiond)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("mailbridge-dovecot-")
            .tempdir()?;
        let root = dir.path();
        // Dovecot's login processes run as dovenull and must reach their sockets in here.
        set_mode(root, 0o755)?;
        let mail = root.join("mail");
        std::fs::create_dir(&mail)?;
        chown_nobody(&mail)?;

        let (ca_pem, cert_pem, key_pem) = certificates()?;
        std::fs::write(root.join("cert.pem"), cert_pem)?;
        std::fs::write(root.join("key.pem"), key_pem)?;
        set_mode(&root.join("key.pem"), 0o600)?;
        std::fs::write(
            root.join("oauth2.conf.ext"),
            format!(
                "introspection_url = {}/introspect\nintrospection_mode = post\n\
                 username_attribute = email\nactive_attribute = active\nactive_value = true\n",
                oauth.url()
            ),
        )?;
        let mut passwd = String::new();
        for (user, password) in password_users {
            writeln!(passwd, "{user}:{{PLAIN}}{password}::::::")?;
        }
        std::fs::write(root.join("passwd"), passwd)?;

        let [imap, imaps, pop3, pop3s, submission, submissions, sink_port] =
            mailbridge_testdb::spare_ports()?;
        let ports = Ports {
            imap,
            imaps,
            pop3,
            pop3s,
            submission,
            submissions,
        };
        std::fs::write(
            root.join("dovecot.conf"),
            config(root, &ports, sink_port, mechanisms)
                + &scale(password_users.len())
                + extra_config,
        )?;
        if !Path::new(AIOSMTPD).exists() {
            bail!(
                "aiosmtpd is not installed: run ./scripts/test (apt-get install python3-aiosmtpd)"
            );
        }
        let sink = spawn_sink(root, sink_port)?;
        let log = std::fs::File::create(root.join("stderr.log"))?;
        let child = Command::new(DOVECOT)
            .args(["-F", "-c"])
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start dovecot")?;
        let mut me = Self {
            dir,
            child,
            sink,
            sink_port,
            ports,
            ca_pem,
        };
        me.wait_ready(&[me.ports.imap, me.ports.pop3, me.ports.submission])?;
        me.wait_ready(&[sink_port])?;
        Ok(me)
    }

    /// The Dovecot master process's id (its services are its children), for benchmarks that
    /// measure the mail server's share beside Mailbridge's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Adds a password user, so a test can give each case an account of its own on one
    /// Dovecot. Dovecot reads its passwd-file again when it changed, but looks at most once a
    /// second: a login within a second of this may not find the user yet (and a refused login
    /// slows every later login from this address). Add users, then wait a second.
    pub fn add_password_user(&self, user: &str, password: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut passwd = std::fs::File::options()
            .append(true)
            .open(self.dir.path().join("passwd"))?;
        passwd.write_all(format!("{user}:{{PLAIN}}{password}::::::\n").as_bytes())?;
        Ok(())
    }

    /// Makes, straight in `store`, what an admin would through the API for a password
    /// account of this server: the user `email` (role user), a password profile on IMAPS and
    /// submissions, and its mailbox with `password` — not enabled, so a benchmark drives its
    /// sync itself.
    pub async fn password_mailbox_in(
        &self,
        store: &mailbridge_store::Store,
        email: &str,
        password: &str,
    ) -> anyhow::Result<mailbridge_store::MailboxRecord> {
        use mailbridge_core::{EmailAddress, MailboxDraft, ProfileDraft, Role};
        let cli = mailbridge_store::Actor::cli();
        let address = EmailAddress::parse(email, "email").map_err(|e| anyhow::anyhow!(e))?;
        let (user, _) = store.create_user(&cli, &address, Role::User).await?;
        let draft: ProfileDraft = serde_json::from_value(serde_json::json!({
            "name": format!("{email} at the test Dovecot"), "auth": "password",
            "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": self.ports.imaps, "security": "tls"},
            "outgoing": {"host": "127.0.0.1", "port": self.ports.submissions, "security": "tls"},
        }))?;
        let (spec, secret) = draft.resolve(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let profile = store.create_profile(&cli, &spec, secret).await?;
        let draft: MailboxDraft = serde_json::from_value(serde_json::json!({
            "email": email, "profile_id": profile.id, "password": password,
        }))?;
        let spec = draft
            .resolve(None, user.id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let password = draft
            .password_change()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(store.create_mailbox(&cli, &spec, password).await?)
    }

    /// A new, migrated store on `database` in `work` (emptied first), holding the password
    /// mailbox of `email` at this server ([`Dovecot::password_mailbox_in`]).
    pub async fn new_store_with_mailbox(
        &self,
        work: &Path,
        database: crate::TestDatabase,
        email: &str,
        password: &str,
    ) -> anyhow::Result<(mailbridge_store::Store, mailbridge_store::MailboxRecord)> {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work)?;
        let url = database.url_for(work).await?;
        let store = mailbridge_store::Store::connect(
            &url,
            mailbridge_store::Keyring::generate(),
            std::sync::Arc::new(mailbridge_core::SystemClock),
        )
        .await?;
        store.migrate().await?;
        let mailbox = self.password_mailbox_in(&store, email, password).await?;
        Ok((store, mailbox))
    }

    /// An IMAPS session logged in as a password user.
    pub async fn imap_login(
        &self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<mailbridge_proto::imap::ImapSession> {
        let login = self.imap_login_parts(user, password)?;
        Ok(login.login().await?)
    }

    /// What [`Dovecot::imap_login`] logs in with, owned: for a task of its own (a benchmark
    /// runs the sync on the runtime's workers, as the service does, not in `block_on`).
    pub fn imap_login_parts(&self, user: &str, password: &str) -> anyhow::Result<ImapLogin> {
        use mailbridge_proto::{Credentials, Endpoint, Security, TlsSettings};
        Ok(ImapLogin {
            endpoint: Endpoint::new("127.0.0.1", self.ports.imaps, Security::Tls),
            tls: TlsSettings::new(Some(self.ca_pem.as_bytes())).map_err(|e| anyhow::anyhow!(e))?,
            credentials: Credentials::Password {
                user: user.to_owned(),
                password: secrecy::SecretString::from(password),
            },
        })
    }

    /// Another mail client, not Mailbridge's code: Python's `imaplib` logs in over IMAPS as
    /// a password user, SELECTs `folder` and runs `commands` — each `UID <args…>` (e.g.
    /// `UID STORE 3 +FLAGS (\Flagged)`), `EXPUNGE`, or `APPEND <message>` (into `folder`,
    /// as a mail program files what it sent) — failing on any answer but OK.
    /// How a user changes their mailbox from their own mail program.
    pub fn other_client(
        &self,
        user: &str,
        password: &str,
        folder: &str,
        commands: &[&str],
    ) -> anyhow::Result<()> {
        const SCRIPT: &str = r#"
import imaplib, ssl, sys, json
port, ca, user, password, folder, commands = sys.argv[1:7]
ctx = ssl.create_default_context(cadata=ca)
ctx.check_hostname = False
m = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ctx)
m.login(user, password)
typ, data = m.select('"%s"' % folder)
assert typ == "OK", (typ, data)
for c in json.loads(commands):
    if c == "EXPUNGE":
        typ, data = m.expunge()
    elif c.startswith("APPEND "):
        typ, data = m.append('"%s"' % folder, None, None, c[len("APPEND "):].encode())
    else:
        args = c.split(" ", 3)
        assert args[0] == "UID", c
        typ, data = m.uid(*args[1:])
    assert typ == "OK", (c, typ, data)
m.logout()
"#;
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(self.ports.imaps.to_string())
            .arg(&self.ca_pem)
            .args([user, password, folder])
            .arg(serde_json::to_string(commands)?)
            .output()
            .context("cannot run python3 (imaplib)")?;
        if !out.status.success() {
            bail!(
                "the other IMAP client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The CA that signed the servers' certificate, to trust in clients.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Dovecot's own log, for a failing test to show.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for f in ["stderr.log", "dovecot.log", "aiosmtpd.log"] {
            out.push_str(&std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default());
        }
        out
    }

    /// A user's Maildir (INBOX), e.g. to make Dovecot renumber it in a test.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Puts a message in a user's INBOX, as local delivery would.
    pub fn deliver(&self, user: &str, raw: &[u8]) -> anyhow::Result<PathBuf> {
        self.deliver_to(user, "INBOX", raw)
    }

    /// Puts a message in one of a user's folders (`INBOX`, `Sent`, …), as a client's APPEND
    /// or the server's own filing would.
    pub fn deliver_to(&self, user: &str, folder: &str, raw: &[u8]) -> anyhow::Result<PathBuf> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // Maildir++: INBOX is the Maildir itself, another folder `.<name>` inside it.
        let maildir = if folder == "INBOX" {
            self.maildir(user)
        } else {
            let inbox = self.maildir(user);
            if !inbox.exists() {
                std::fs::create_dir_all(&inbox)?;
                chown_nobody(&inbox)?;
            }
            inbox.join(format!(".{folder}"))
        };
        for sub in ["", "new", "cur", "tmp"] {
            let d = maildir.join(sub);
            if !d.exists() {
                std::fs::create_dir_all(&d)?;
                chown_nobody(&d)?;
            }
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Shaped like the names Dovecot's own delivery gives (`time.MusecPpid.host`), the count
        // once. Dovecot finds a file by a hash of its name, and in the earlier `pid.MnPn.host`
        // the count's two copies cancelled out: 48,368 messages fell under about 10,000
        // hashes, and every command on that folder took seconds of Dovecot's CPU in lookups.
        let secs = mailbridge_core::Clock::now(&mailbridge_core::SystemClock).timestamp();
        let name = format!("{secs}.M{n}P{}.mailbridge-test", std::process::id());
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, raw)?;
        chown_nobody(&tmp)?;
        let dest = maildir.join("new").join(&name);
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    /// Stops the SMTP server behind submission: relaying fails until [`Dovecot::start_sink`].
    pub fn stop_sink(&mut self) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
    }

    pub fn start_sink(&mut self) -> anyhow::Result<()> {
        self.sink = spawn_sink(self.dir.path(), self.sink_port)?;
        self.wait_ready(&[self.sink_port])
    }

    /// The SMTP server behind submission (aiosmtpd, plain text on 127.0.0.1): it takes mail
    /// from anyone on this machine without a login and offers none, as a company relay that
    /// trusts its network does. What it takes is in [`Dovecot::relayed`].
    pub fn relay_port(&self) -> u16 {
        self.sink_port
    }

    /// Every message submission relayed onwards, oldest first.
    pub fn relayed(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let new = self.dir.path().join("relayed").join("new");
        let mut files: Vec<_> = match std::fs::read_dir(&new) {
            Ok(entries) => entries.collect::<Result<_, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        files.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        files.iter().map(|e| Ok(std::fs::read(e.path())?)).collect()
    }

    fn wait_ready(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        let start = Instant::now();
        for &port in ports {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    bail!("Dovecot stopped ({status}) while starting:\n{}", self.log());
                }
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 64];
                    if s.read(&mut buf).is_ok_and(|n| n > 0) {
                        break;
                    }
                }
                if start.elapsed() > Duration::from_secs(15) {
                    bail!("Dovecot did not start within 15 s:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
        // SIGTERM lets the master stop its children; then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Room for thousands of IMAP sessions at once (the scale benchmarks), when there are that
/// many users: with one process per session, 10,000 sessions would be 20,000 processes
/// (login and IMAP), beyond what this machine's `pid_max` leaves. So login processes serve
/// many connections each (Dovecot's "high-performance" mode, which also proxies their TLS),
/// and each IMAP process serves 25 sessions (possible because every user has one system
/// user, `nobody`).
fn scale(users: usize) -> String {
    if users <= 1000 {
        return String::new();
    }
    let sessions = users + 200;
    let imap_processes = sessions / 25 + 10;
    format!(
        "default_client_limit = {sessions}\n\
         service imap {{\n  service_count = 0\n  client_limit = 25\n  process_limit = {imap_processes}\n}}\n\
         service imap-login {{\n  service_count = 0\n  process_min_avail = 2\n  \
         client_limit = {sessions}\n  vsz_limit = 1G\n}}\n"
    )
}

fn config(root: &Path, p: &Ports, sink: u16, mechanisms: &str) -> String {
    let r = root.display();
    format!(
        r#"# Written by mailbridge-testkit for one test.
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
instance_name = mailbridge-test-{imap}
protocols = imap pop3 submission
listen = 127.0.0.1
default_login_user = dovenull
default_internal_user = dovecot
ssl = yes
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
auth_verbose = yes
imap_id_log = *
first_valid_uid = 1
mail_uid = nobody
mail_gid = nogroup
mail_location = maildir:{r}/mail/%u
hostname = dovecot.test
submission_relay_host = 127.0.0.1
submission_relay_port = {sink}
submission_relay_trusted = yes
submission_max_mail_size = 100k
# One process per IMAP session: allow the thousand a memory benchmark opens.
service imap {{
  process_limit = 1500
}}
service imap-login {{
  process_limit = 1500
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {submission}
  }}
  inet_listener submissions {{
    port = {submissions}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {r}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  args = {r}/passwd
}}
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \Sent
    auto = create
  }}
  mailbox Trash {{
    special_use = \Trash
    auto = create
  }}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={r}/mail/%u
}}
"#,
        imap = p.imap,
        imaps = p.imaps,
        pop3 = p.pop3,
        pop3s = p.pop3s,
        submission = p.submission,
        submissions = p.submissions,
    )
}

/// A CA and a server certificate for 127.0.0.1 and localhost: (CA PEM, cert PEM, key PEM).
fn certificates() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Mailbridge test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "dovecot.test");
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// aiosmtpd (Debian's python3-aiosmtpd) storing what it receives in `root/relayed` (Maildir).
fn spawn_sink(root: &Path, port: u16) -> anyhow::Result<Child> {
    Command::new("/usr/bin/python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(root.join("relayed"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(root.join("aiosmtpd.log"))?,
        )
        .spawn()
        .context("cannot start aiosmtpd")
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Mail is stored as `nobody` (Dovecot refuses to store mail as root). The ids are looked up
/// once: a test delivering the corpus chowns thousands of files, and a `chown` process for
/// each took longer than the delivery itself.
fn chown_nobody(path: &Path) -> anyhow::Result<()> {
    static IDS: std::sync::OnceLock<Result<(u32, u32), String>> = std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let id = |args: &[&str]| -> Result<u32, String> {
            let out = Command::new("id")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run id: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| {
                    format!(
                        "`id {}` printed no number: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                })
        };
        Ok((id(&["-u", "nobody"])?, id(&["-g", "nobody"])?))
    });
    let (uid, gid) = ids.clone().map_err(anyhow::Error::msg)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {} to nobody", path.display()))
}

/// A password login to the test Dovecot's IMAPS port ([`Dovecot::imap_login_parts`]).
#[derive(Clone)]
pub struct ImapLogin {
    pub endpoint: mailbridge_proto::Endpoint,
    pub tls: mailbridge_proto::TlsSettings,
    pub credentials: mailbridge_proto::Credentials,
}

impl ImapLogin {
    pub async fn login(
        &self,
    ) -> Result<mailbridge_proto::imap::ImapSession, mailbridge_proto::ProtoError> {
        mailbridge_proto::imap::ImapSession::login(&self.endpoint, &self.tls, &self.credentials)
            .await
    }
}
