//! [`ScriptedGmail`]: an IMAP server that answers the way imap.gmail.com does where Dovecot
//! differs — its greeting and capabilities (`X-GM-EXT-1`, `LITERAL-`, no `LITERAL+`), its
//! exact XOAUTH2 error challenge, its refusal when IMAP is turned off in Gmail settings, its
//! FETCH extensions (X-GM-MSGID, X-GM-THRID, X-GM-LABELS) on a mailbox that starts as
//! [`GMAIL_INBOX`] and [`GMAIL_SENT`], whose folders are labels as on Gmail — INBOX holds the
//! messages labelled `\Inbox`, "[Gmail]/Sent Mail" (marked `\Sent` in LIST) those labelled
//! `\Sent`, "[Gmail]/All Mail" all of them, each message with a UID of its own in each —
//! with CONDSTORE (a MODSEQ per message; [`ScriptedGmail::relabel`] and
//! [`ScriptedGmail::set_flags`] change one, as the web client would), and, on demand, a message it cannot read (`NO Some messages could not be
//! FETCHed`) or NOTIFY offered and refused ([`ScriptedGmail::refuse_notify`]).
//! Scripted because no real peer shows these on demand; plain TCP, one account.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Gmail's answer to a bad token: `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`.
pub const GMAIL_ERROR_CHALLENGE: &str = "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";

const PRE_AUTH_CAPS: &str = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER AUTH=XOAUTH";
const POST_AUTH_CAPS: &str = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584";

/// A message in the scripted INBOX: what Gmail would say of it.
pub struct GmailMessage {
    pub uid: u32,
    pub msg_id: u64,
    pub thread_id: u64,
    pub labels: &'static str,
    pub raw: &'static str,
}

/// INBOX: two messages of one Gmail conversation, the second without any reply header
/// (Gmail threads by subject too), so only X-GM-THRID ties them.
pub const GMAIL_INBOX: [GmailMessage; 2] = [
    GmailMessage {
        uid: 5,
        msg_id: 1_790_000_000_000_000_005,
        thread_id: 1_790_000_000_000_000_005,
        labels: "(\\Inbox \\Important)",
        raw: "From: bob@example.com\r\nTo: ann@gmail.com\r\nSubject: Lunch?\r\nMessage-ID: <l1@example.com>\r\n\r\nTomorrow at noon?\r\n",
    },
    GmailMessage {
        uid: 6,
        msg_id: 1_790_000_000_000_000_006,
        thread_id: 1_790_000_000_000_000_005,
        labels: "(\\Inbox \"Work/Lunch\")",
        raw: "From: bob@example.com\r\nTo: ann@gmail.com\r\nSubject: Re: Lunch?\r\nMessage-ID: <l2@example.com>\r\n\r\nOr Friday.\r\n",
    },
];

/// "[Gmail]/Sent Mail": Ann's answer to the first message of [`GMAIL_INBOX`], written in
/// Gmail's own web client, in the same Gmail conversation.
pub const GMAIL_SENT: [GmailMessage; 1] = [GmailMessage {
    uid: 3,
    msg_id: 1_790_000_000_000_000_007,
    thread_id: 1_790_000_000_000_000_005,
    labels: "(\\Sent)",
    raw: "From: ann@gmail.com\r\nTo: bob@example.com\r\nSubject: Re: Lunch?\r\nMessage-ID: <a1@gmail.com>\r\nIn-Reply-To: <l1@example.com>\r\n\r\nNoon works.\r\n",
}];

/// The folders: (name, the label that puts a message in it — none for All Mail, UIDVALIDITY).
const FOLDERS: [(&str, Option<&str>, u32); 3] = [
    ("INBOX", Some("\\Inbox"), 3),
    ("[Gmail]/Sent Mail", Some("\\Sent"), 9),
    ("[Gmail]/All Mail", None, 11),
];

/// A message as the scripted mailbox holds it now.
struct Message {
    msg_id: u64,
    thread_id: u64,
    /// As X-GM-LABELS sends them: `(\Inbox "Work/Lunch")`.
    labels: String,
    /// As FLAGS sends them: `(\Seen)`.
    flags: String,
    raw: &'static str,
    modseq: u64,
    /// Its UID in each folder it has been in (kept if it leaves and comes back).
    uids: std::collections::HashMap<&'static str, u32>,
}

/// The account's mailbox, shared by its connections.
struct Mailbox {
    messages: Vec<Message>,
    modseq: u64,
    uid_next: std::collections::HashMap<&'static str, u32>,
}

impl Mailbox {
    fn new() -> Self {
        let mut me = Self {
            messages: Vec::new(),
            modseq: 4242,
            uid_next: FOLDERS.iter().map(|(name, _, _)| (*name, 1)).collect(),
        };
        for (folder, m) in GMAIL_INBOX
            .iter()
            .map(|m| ("INBOX", m))
            .chain(GMAIL_SENT.iter().map(|m| ("[Gmail]/Sent Mail", m)))
        {
            me.uid_next.insert(folder, m.uid + 1);
            me.messages.push(Message {
                msg_id: m.msg_id,
                thread_id: m.thread_id,
                labels: m.labels.to_owned(),
                flags: "(\\Seen)".to_owned(),
                raw: m.raw,
                modseq: me.modseq,
                uids: [(folder, m.uid)].into_iter().collect(),
            });
        }
        me.place();
        me
    }

    /// Gives every message a UID in each folder its labels now put it in.
    fn place(&mut self) {
        for m in &mut self.messages {
            for (folder, label, _) in FOLDERS {
                let inside = label.is_none_or(|l| m.labels.contains(l));
                if inside && !m.uids.contains_key(folder) {
                    let next = self.uid_next.entry(folder).or_insert(1);
                    m.uids.insert(folder, *next);
                    *next += 1;
                }
            }
        }
    }

    /// The messages in `folder` now, by UID: (UID, message).
    fn folder(&self, folder: &str) -> Vec<(u32, &Message)> {
        let Some((name, label, _)) = FOLDERS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(folder))
        else {
            return Vec::new();
        };
        let mut inside: Vec<(u32, &Message)> = self
            .messages
            .iter()
            .filter(|m| label.is_none_or(|l| m.labels.contains(l)))
            .filter_map(|m| m.uids.get(name).map(|uid| (*uid, m)))
            .collect();
        inside.sort_by_key(|(uid, _)| *uid);
        inside
    }

    fn change(&mut self, msg_id: u64, change: impl FnOnce(&mut Message)) {
        self.modseq += 1;
        let modseq = self.modseq;
        if let Some(m) = self.messages.iter_mut().find(|m| m.msg_id == msg_id) {
            change(m);
            m.modseq = modseq;
        }
        self.place();
    }
}

pub struct ScriptedGmail {
    pub port: u16,
    /// Whether the client sent `ID` (Gmail asks clients to).
    pub id_received: Arc<AtomicBool>,
    /// The account it serves.
    user: String,
    /// What the test changes while it runs, shared with every connection's task.
    limits: Limits,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedGmail {
    /// Accepts XOAUTH2 logins of `user` with `token` (`*`: any token, for a mailbox signed in
    /// at the test OAuth provider); with `imap_enabled` false, refuses every login as Gmail
    /// does when IMAP is off in the account's settings.
    pub async fn start(user: &str, token: &str, imap_enabled: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let id_received = Arc::new(AtomicBool::new(false));
        let expected = format!("user={user}\x01auth=Bearer {token}\x01\x01");
        let user = user.to_owned();
        let user_name = user.clone();
        let flag = id_received.clone();
        let limits = Limits {
            unreadable: Arc::new(AtomicU32::new(0)),
            over_quota: Arc::new(AtomicBool::new(false)),
            notify_offered: Arc::new(AtomicBool::new(false)),
            list_refused: Arc::new(AtomicBool::new(false)),
            notify_refused: Arc::new(AtomicU32::new(0)),
            mailbox: Arc::new(std::sync::Mutex::new(Mailbox::new())),
        };
        let state = limits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (expected, user, flag, state) =
                    (expected.clone(), user.clone(), flag.clone(), state.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &expected, &user, imap_enabled, &flag, &state).await;
                });
            }
        });
        Ok(Self {
            port,
            id_received,
            user: user_name,
            limits,
            task,
        })
    }

    /// Logs in to it (plain TCP, as its account) with the XOAUTH2 `token`.
    pub async fn login(
        &self,
        token: &str,
    ) -> Result<mailbridge_proto::imap::ImapSession, mailbridge_proto::ProtoError> {
        let endpoint = mailbridge_proto::Endpoint::new(
            "127.0.0.1",
            self.port,
            mailbridge_proto::Security::None,
        )
        .with_timeout(std::time::Duration::from_secs(5));
        let creds = mailbridge_proto::Credentials::OAuth {
            user: self.user.clone(),
            token: secrecy::SecretString::from(token.to_owned()),
        };
        mailbridge_proto::imap::ImapSession::login(
            &endpoint,
            &mailbridge_proto::TlsSettings::public(),
            &creds,
        )
        .await
    }

    /// Until called again with `None`, every FETCH that asks for `uid` returns the other
    /// messages it asks for and then fails, the way Gmail does while it cannot read one.
    pub fn make_unreadable(&self, uid: Option<u32>) {
        self.limits
            .unreadable
            .store(uid.unwrap_or(0), Ordering::SeqCst);
    }

    /// Until called again with `false`, every download is refused the way Gmail refuses
    /// once the account's daily download allowance is spent.
    pub fn set_over_quota(&self, over: bool) {
        self.limits.over_quota.store(over, Ordering::SeqCst);
    }

    /// From the next connection on, offers NOTIFY (RFC 5465) and refuses every `NOTIFY SET` with
    /// `NO [NOTIFICATIONOVERFLOW]`, as a server past its limit of notifications may. Not
    /// Gmail's way (Gmail offers no NOTIFY), but the client must then do as it does on
    /// Gmail: look at the other folders' counters itself.
    pub fn refuse_notify(&self) {
        self.limits.notify_offered.store(true, Ordering::SeqCst);
    }

    /// Until called again with `false`, every LIST is refused with `NO [UNAVAILABLE]`, as a
    /// busy server may answer one now and then.
    pub fn refuse_list(&self, refused: bool) {
        self.limits.list_refused.store(refused, Ordering::SeqCst);
    }

    /// How many `NOTIFY SET` commands were refused.
    pub fn notify_refusals(&self) -> u32 {
        self.limits.notify_refused.load(Ordering::SeqCst)
    }

    /// Gives the message of X-GM-MSGID `msg_id` these labels (`(\Inbox \Sent)`; without
    /// `\Inbox` it leaves INBOX, as archiving does), as the web client would: it enters and
    /// leaves the folders of its labels, and its MODSEQ moves.
    pub fn relabel(&self, msg_id: u64, labels: &str) {
        self.state()
            .change(msg_id, |m| labels.clone_into(&mut m.labels));
    }

    /// Sets the message's flags (`(\Seen \Flagged)`), as the web client would.
    pub fn set_flags(&self, msg_id: u64, flags: &str) {
        self.state()
            .change(msg_id, |m| flags.clone_into(&mut m.flags));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        self.limits
            .mailbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the test changes while the server runs.
#[derive(Clone)]
struct Limits {
    /// The UID Gmail cannot read for now (0: none).
    unreadable: Arc<AtomicU32>,
    /// Whether the account is over its download allowance: every download is refused.
    over_quota: Arc<AtomicBool>,
    /// Whether NOTIFY is offered (and refused): [`ScriptedGmail::refuse_notify`].
    notify_offered: Arc<AtomicBool>,
    /// Whether LIST is refused: [`ScriptedGmail::refuse_list`].
    list_refused: Arc<AtomicBool>,
    /// The `NOTIFY SET` commands refused.
    notify_refused: Arc<AtomicU32>,
    mailbox: Arc<std::sync::Mutex<Mailbox>>,
}

impl Drop for ScriptedGmail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: TcpStream,
    expected: &str,
    user: &str,
    imap_enabled: bool,
    id_received: &AtomicBool,
    limits: &Limits,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"* OK Gimap ready for requests from 127.0.0.1 a1mb1234567abc\r\n")
        .await?;
    let mut authenticated = false;
    let mut selected = String::from("INBOX");
    let notify_offered = limits.notify_offered.load(Ordering::SeqCst);
    let post_auth_caps = if notify_offered {
        format!("{POST_AUTH_CAPS} NOTIFY")
    } else {
        POST_AUTH_CAPS.to_owned()
    };
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.splitn(3, ' ');
        let (tag, command, rest) = (
            parts.next().unwrap_or("*"),
            parts.next().unwrap_or("").to_ascii_uppercase(),
            parts.next().unwrap_or(""),
        );
        let reply = match command.as_str() {
            "CAPABILITY" => {
                let caps = if authenticated {
                    &post_auth_caps
                } else {
                    PRE_AUTH_CAPS
                };
                format!("* CAPABILITY {caps}\r\n{tag} OK Thats all she wrote! a1mb1234567abc\r\n")
            }
            "AUTHENTICATE" => {
                let mut args = rest.split(' ');
                let mechanism = args.next().unwrap_or("").to_ascii_uppercase();
                let initial = match args.next() {
                    Some(ir) => ir.to_owned(),
                    None => {
                        write.write_all(b"+ \r\n").await?;
                        lines.next_line().await?.unwrap_or_default()
                    }
                };
                let decoded = B64.decode(initial.trim()).unwrap_or_default();
                if mechanism != "XOAUTH2" {
                    format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
                } else if !imap_enabled {
                    format!(
                        "{tag} NO [ALERT] Your account is not enabled for IMAP use. Please visit your Gmail settings page and enable your account for IMAP access. (Failure)\r\n"
                    )
                } else if decoded == expected.as_bytes()
                    || (expected.ends_with("Bearer *\x01\x01")
                        && decoded.starts_with(format!("user={user}\x01auth=Bearer ").as_bytes()))
                {
                    authenticated = true;
                    format!(
                        "* CAPABILITY {post_auth_caps}\r\n{tag} OK {user} authenticated (Success)\r\n"
                    )
                } else {
                    write
                        .write_all(format!("+ {GMAIL_ERROR_CHALLENGE}\r\n").as_bytes())
                        .await?;
                    let _ = lines.next_line().await?;
                    format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
                }
            }
            "ID" => {
                id_received.store(true, Ordering::SeqCst);
                format!(
                    "* ID (\"name\" \"GImap\" \"vendor\" \"Google, Inc.\" \"support-url\" \"https://support.google.com/mail\")\r\n{tag} OK Success\r\n"
                )
            }
            "EXAMINE" | "SELECT" if authenticated => {
                rest.trim_matches('"').clone_into(&mut selected);
                let validity = FOLDERS
                    .iter()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(&selected))
                    .map_or(1, |(_, _, v)| *v);
                let mailbox = limits
                    .mailbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (exists, next, modseq) = (
                    mailbox.folder(&selected).len(),
                    mailbox
                        .uid_next
                        .get(selected.as_str())
                        .copied()
                        .unwrap_or(1),
                    mailbox.modseq,
                );
                format!(
                    "* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotPhishing $Phishing)\r\n\
                     * OK [PERMANENTFLAGS ()] Flags permitted.\r\n\
                     * OK [UIDVALIDITY {validity}] UIDs valid.\r\n\
                     * {exists} EXISTS\r\n* 0 RECENT\r\n\
                     * OK [UIDNEXT {next}] Predicted next UID.\r\n\
                     * OK [HIGHESTMODSEQ {modseq}]\r\n\
                     {tag} OK [READ-ONLY] {rest} selected. (Success)\r\n"
                )
            }
            // Gmail answers STATUS for any folder, the open one included; its HIGHESTMODSEQ
            // is that of the folder's most recently changed message (flags or labels).
            "STATUS" if authenticated => {
                let name = rest
                    .rsplit_once(" (")
                    .map_or(rest, |(name, _)| name)
                    .trim_matches('"')
                    .to_owned();
                let validity = FOLDERS
                    .iter()
                    .find(|(n, _, _)| n.eq_ignore_ascii_case(&name))
                    .map_or(1, |(_, _, v)| *v);
                let mailbox = limits
                    .mailbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let inside = mailbox.folder(&name);
                let modseq = inside.iter().map(|(_, m)| m.modseq).max().unwrap_or(1);
                let next = mailbox.uid_next.get(name.as_str()).copied().unwrap_or(1);
                format!(
                    "* STATUS \"{name}\" (MESSAGES {} UIDNEXT {next} UIDVALIDITY {validity} HIGHESTMODSEQ {modseq})\r\n\
                     {tag} OK Success\r\n",
                    inside.len()
                )
            }
            "LIST" if authenticated && limits.list_refused.load(Ordering::SeqCst) => {
                format!("{tag} NO [UNAVAILABLE] Temporary System Error\r\n")
            }
            "LIST" if authenticated => format!(
                "* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n\
                 * LIST (\\HasChildren \\Noselect) \"/\" \"[Gmail]\"\r\n\
                 * LIST (\\All \\HasNoChildren) \"/\" \"[Gmail]/All Mail\"\r\n\
                 * LIST (\\HasNoChildren \\Sent) \"/\" \"[Gmail]/Sent Mail\"\r\n\
                 {tag} OK Success\r\n"
            ),
            // Idles until the client's DONE; changes are found by the client's next pass.
            "IDLE" if authenticated => {
                write.write_all(b"+ idling\r\n").await?;
                let _done = lines.next_line().await?;
                format!("{tag} OK IDLE terminated (Success)\r\n")
            }
            "NOTIFY" if authenticated && notify_offered => {
                limits.notify_refused.fetch_add(1, Ordering::SeqCst);
                format!("{tag} NO [NOTIFICATIONOVERFLOW] Too many notifications\r\n")
            }
            "ENABLE" if authenticated => {
                format!("* ENABLED CONDSTORE\r\n{tag} OK Success\r\n")
            }
            "UID" if authenticated => uid_command(tag, rest, &selected, limits),
            "LOGOUT" => {
                write
                    .write_all(
                        format!("* BYE LOGOUT Requested\r\n{tag} OK 73 good day (Success)\r\n")
                            .as_bytes(),
                    )
                    .await?;
                return Ok(());
            }
            _ => format!("{tag} BAD Unknown command a1mb1234567abc\r\n"),
        };
        write.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// `UID SEARCH UID n:* [LARGER m]` and `UID FETCH set (…)` over the `selected` folder (sizes,
/// flags — with `(CHANGEDSINCE m)` only of messages changed after m — or the messages),
/// answered with the attributes in the order Gmail sends them; a FETCH of messages that asks
/// for the `unreadable` UID gets the others and then Gmail's NO.
fn uid_command(tag: &str, rest: &str, selected: &str, limits: &Limits) -> String {
    let unreadable = limits.unreadable.load(Ordering::SeqCst);
    let mailbox = limits
        .mailbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let folder = mailbox.folder(selected);
    let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
    match verb.to_ascii_uppercase().as_str() {
        "SEARCH" => {
            // `LARGER n` (the sizes a sync looks up) is kept; every other key matches all.
            let larger: usize = args
                .to_ascii_uppercase()
                .split_once("LARGER ")
                .and_then(|(_, n)| n.split(' ').next()?.parse().ok())
                .unwrap_or(0);
            let uids: Vec<String> = folder
                .iter()
                .filter(|(_, m)| m.raw.len() > larger)
                .map(|(uid, _)| uid.to_string())
                .collect();
            format!(
                "* SEARCH {}\r\n{tag} OK SEARCH completed (Success)\r\n",
                uids.join(" ")
            )
        }
        "FETCH" => {
            let set = args.split(' ').next().unwrap_or("");
            let wanted = |uid: u32| {
                set.split(',').any(|part| match part.split_once(':') {
                    Some((from, "*")) => from.parse().is_ok_and(|f: u32| uid >= f),
                    Some((from, to)) => {
                        from.parse().is_ok_and(|f: u32| uid >= f)
                            && to.parse().is_ok_and(|t: u32| uid <= t)
                    }
                    None => part.parse() == Ok(uid),
                })
            };
            let mut out = String::new();
            if args.to_ascii_uppercase().contains("RFC822.SIZE") {
                for (seq, (uid, m)) in folder.iter().enumerate() {
                    if wanted(*uid) {
                        out.push_str(&format!(
                            "* {} FETCH (UID {uid} RFC822.SIZE {})\r\n",
                            seq + 1,
                            m.raw.len()
                        ));
                    }
                }
                return format!("{out}{tag} OK Success\r\n");
            }
            if limits.over_quota.load(Ordering::SeqCst) {
                return format!(
                    "{tag} NO [OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)\r\n"
                );
            }
            if !args.to_ascii_uppercase().contains("BODY") {
                // Flags only: nothing is read, nothing is downloaded.
                let since: u64 = args
                    .to_ascii_uppercase()
                    .split_once("CHANGEDSINCE ")
                    .and_then(|(_, n)| n.trim_end_matches(')').trim().parse().ok())
                    .unwrap_or(0);
                for (seq, (uid, m)) in folder.iter().enumerate() {
                    if wanted(*uid) && m.modseq > since {
                        out.push_str(&format!(
                            "* {} FETCH (X-GM-MSGID {} X-GM-LABELS {} UID {uid} FLAGS {} MODSEQ ({}))\r\n",
                            seq + 1,
                            m.msg_id,
                            m.labels,
                            m.flags,
                            m.modseq
                        ));
                    }
                }
                return format!("{out}{tag} OK Success\r\n");
            }
            for (seq, (uid, m)) in folder.iter().enumerate() {
                let uid = *uid;
                if wanted(uid) && uid != unreadable {
                    out.push_str(&format!(
                        "* {} FETCH (X-GM-THRID {} X-GM-MSGID {} X-GM-LABELS {} UID {uid} FLAGS {} BODY[] {{{}}}\r\n{})\r\n",
                        seq + 1,
                        m.thread_id,
                        m.msg_id,
                        m.labels,
                        m.flags,
                        m.raw.len(),
                        m.raw
                    ));
                }
            }
            if wanted(unreadable) {
                return format!("{out}{tag} NO Some messages could not be FETCHed (Failure)\r\n");
            }
            format!("{out}{tag} OK Success\r\n")
        }
        _ => format!("{tag} BAD Unknown command\r\n"),
    }
}
