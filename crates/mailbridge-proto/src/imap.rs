//! IMAP4rev1 (RFC 3501) on async-imap: [`ImapSession::login`] connects (implicit TLS or
//! STARTTLS), reads capabilities, authenticates (XOAUTH2 / OAUTHBEARER with SASL-IR when
//! offered, or LOGIN for passwords), sends `ID` (RFC 2971) when offered — Gmail asks for it —
//! and then opens folders.
//!
//! The pre-login exchange (greeting, CAPABILITY, STARTTLS) is done here on plain lines,
//! because async-imap's unauthenticated client exposes no way to send them.

use std::sync::{Arc, Mutex};

use async_imap::error::Error as ImapError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::FutureExt;
use secrecy::ExposeSecret;

use crate::error::{ErrorKind, ProtoError};
use crate::line::{LineBudget, LineConn, refuse_unsafe_credentials};
use crate::net::{Activity, Endpoint, MailStream, Security, TlsSettings, Watched};
use crate::sasl::{self, Credentials, Mechanism};

/// Bounds on the untagged lines before a pre-login command's tagged reply (RFC 3501 §7): a
/// CAPABILITY answer is one line; a server that keeps sending untagged lines is stopped here.
const MAX_UNTAGGED_LINES: usize = 100;
const MAX_UNTAGGED_BYTES: usize = 64 * 1024;

/// Names servers without SPECIAL-USE give the sent folder.
const SENT_NAMES: &[&str] = &[
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "[Gmail]/Sent Mail",
    "INBOX.Sent",
];

/// What `EXAMINE`/`SELECT` tells about a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderStatus {
    pub exists: u32,
    pub uid_validity: Option<u32>,
    pub uid_next: Option<u32>,
    /// Present when the server has CONDSTORE (RFC 7162).
    pub highest_modseq: Option<u64>,
}

/// One message from `UID FETCH`, never marked read (`BODY.PEEK[]`).
#[derive(Debug, Clone)]
pub struct FetchedMessage {
    pub uid: u32,
    pub raw: Vec<u8>,
    /// Gmail's stable message id (X-GM-MSGID), when the server has X-GM-EXT-1.
    pub gmail_msg_id: Option<u64>,
    /// Gmail's conversation id (X-GM-THRID), when the server has X-GM-EXT-1.
    pub gmail_thread_id: Option<u64>,
    /// Gmail's labels (X-GM-LABELS), when the server has X-GM-EXT-1.
    pub gmail_labels: Vec<String>,
    /// The message's flags (`\Seen`, `\Flagged`, keywords…).
    pub flags: Vec<String>,
}

/// A message's state on the server (`UID FETCH … (FLAGS)`), without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub uid: u32,
    pub flags: Vec<String>,
    /// On Gmail: X-GM-MSGID, the message's identity over all its labels.
    pub gmail_msg_id: Option<u64>,
    /// On Gmail: X-GM-LABELS.
    pub gmail_labels: Vec<String>,
}

impl MessageState {
    fn from_attributes(attributes: &[async_imap::imap_proto::AttributeValue<'_>]) -> Option<Self> {
        use async_imap::imap_proto::AttributeValue;
        let (mut uid, mut flags) = (None, None);
        let (mut gmail_msg_id, mut gmail_labels) = (None, Vec::new());
        for attribute in attributes {
            match attribute {
                AttributeValue::Uid(u) => uid = Some(*u),
                AttributeValue::Flags(f) => flags = Some(f.iter().map(|f| f.to_string()).collect()),
                AttributeValue::GmailMsgId(id) => gmail_msg_id = Some(*id),
                AttributeValue::GmailLabels(labels) => {
                    gmail_labels = labels.iter().map(|l| l.to_string()).collect();
                }
                _ => {}
            }
        }
        Some(Self {
            uid: uid?,
            flags: flags?,
            gmail_msg_id,
            gmail_labels,
        })
    }
}

impl FetchedMessage {
    /// The message in one `FETCH` response; `None` without a UID or body (a flag update).
    pub(crate) fn from_attributes(
        attributes: &[async_imap::imap_proto::AttributeValue<'_>],
    ) -> Option<Self> {
        use async_imap::imap_proto::AttributeValue;
        let (mut uid, mut raw) = (None, None);
        let (mut gmail_msg_id, mut gmail_thread_id, mut gmail_labels) = (None, None, Vec::new());
        let mut flags = Vec::new();
        for attribute in attributes {
            match attribute {
                AttributeValue::Uid(u) => uid = Some(*u),
                AttributeValue::Flags(f) => flags = f.iter().map(|f| f.to_string()).collect(),
                // The whole message, or the header when only that was asked for.
                AttributeValue::BodySection {
                    data: Some(body), ..
                }
                | AttributeValue::Rfc822(Some(body)) => raw = Some(body.to_vec()),
                AttributeValue::GmailMsgId(id) => gmail_msg_id = Some(*id),
                AttributeValue::GmailThrId(id) => gmail_thread_id = Some(*id),
                AttributeValue::GmailLabels(labels) => {
                    gmail_labels = labels.iter().map(|l| l.to_string()).collect();
                }
                _ => {}
            }
        }
        Some(Self {
            uid: uid?,
            raw: raw?,
            gmail_msg_id,
            gmail_thread_id,
            gmail_labels,
            flags,
        })
    }
}

/// How an `IDLE` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The server reported a change (new mail, expunge, flags).
    Changed,
    /// Nothing happened within the wait; time to re-issue IDLE (RFC 2177 §3: within 29 min).
    TimedOut,
}

/// A logged-in IMAP session.
pub struct ImapSession {
    endpoint: Endpoint,
    session: async_imap::Session<WholeLines<Watched<MailStream>>>,
    capabilities: Vec<String>,
    /// When the server last sent anything: a step fails after the endpoint's timeout of
    /// silence, not of its own length, so a large FETCH over a slow link completes.
    activity: Activity,
    /// The open folder's message count as the server last gave it (on opening it, or an
    /// unsolicited `EXISTS` since): an `EXISTS` that repeats it is no news.
    exists: Option<u32>,
}

impl std::fmt::Debug for ImapSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapSession")
            .field("server", &self.endpoint.label())
            .finish_non_exhaustive()
    }
}

impl ImapSession {
    /// Connects and logs in.
    pub async fn login(
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
    ) -> Result<Self, ProtoError> {
        refuse_unsafe_credentials(endpoint, credentials)?;
        let stream = MailStream::connect(endpoint, tls).await?;
        Self::login_over(stream, endpoint, tls, credentials).await
    }

    /// [`ImapSession::login`] on a stream already connected (the fuzz targets' in-memory one).
    pub(crate) async fn login_over(
        stream: MailStream,
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
    ) -> Result<Self, ProtoError> {
        let mut conn = LineConn::new(endpoint.clone(), stream);
        let greeting = conn.read_line("read the greeting").await?;
        if !greeting.starts_with("* OK") {
            return Err(conn.error(
                "read the greeting",
                ErrorKind::Rejected {
                    words: greeting,
                    transient: true,
                },
            ));
        }
        let mut caps = match bracketed_capabilities(&greeting) {
            Some(c) => c,
            None => capability(&mut conn).await?,
        };
        if endpoint.security == Security::Starttls {
            if !has(&caps, "STARTTLS") {
                return Err(conn.error(
                    "start TLS",
                    ErrorKind::Unsupported(
                        "the server does not offer STARTTLS; use security tls or check the port"
                            .into(),
                    ),
                ));
            }
            command(&mut conn, "m1 STARTTLS", "m1 ", "start TLS").await?;
            conn = conn.start_tls(tls).await?;
            // RFC 3501 §6.2.1: capabilities must be asked again over TLS.
            caps = capability(&mut conn).await?;
        }
        let (endpoint, stream) = conn.into_stream("log in")?;
        let activity = Activity::new();
        let client =
            async_imap::Client::new(WholeLines::new(Watched::new(stream, activity.clone())));
        let session = match credentials {
            Credentials::OAuth { .. } => {
                let offered: Vec<String> = caps
                    .iter()
                    .filter_map(|c| c.strip_prefix("AUTH=").map(str::to_owned))
                    .collect();
                let mechanism = Mechanism::choose(credentials, &offered).ok_or_else(|| {
                    endpoint.error("log in", ErrorKind::Unsupported(format!("the server offers no OAuth login (AUTH={}); is OAuth enabled for IMAP there?", offered.join(" AUTH="))))
                })?;
                let step = format!("log in with {}", mechanism.name());
                let challenge = Arc::new(Mutex::new(None));
                let initial = mechanism.initial_response(credentials);
                // SASL-IR (RFC 4959) saves a round trip: the initial response rides on the command.
                let (command, first) = if has(&caps, "SASL-IR") {
                    (
                        format!("{} {}", mechanism.name(), B64.encode(&initial)),
                        None,
                    )
                } else {
                    (mechanism.name().to_owned(), Some(initial))
                };
                let auth = SaslExchange {
                    first,
                    error_reply: mechanism.error_reply(),
                    challenge: challenge.clone(),
                };
                imap_step(&endpoint, &step, &activity, async {
                    client.authenticate(command, auth).await.map_err(|(e, _)| {
                        let detail = challenge
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take();
                        imap_error(
                            &endpoint,
                            &step,
                            e,
                            detail.as_deref().and_then(sasl::describe_challenge_bytes),
                        )
                    })
                })
                .await?
            }
            Credentials::Password { user, password } => {
                if has(&caps, "LOGINDISABLED") {
                    return Err(endpoint.error("log in", ErrorKind::Unsupported("the server refuses passwords on this connection (LOGINDISABLED); use TLS".into())));
                }
                imap_step(&endpoint, "log in with a password", &activity, async {
                    client
                        .login(user, password.expose_secret())
                        .await
                        .map_err(|(e, _)| imap_error(&endpoint, "log in with a password", e, None))
                })
                .await?
            }
        };
        let mut me = Self {
            endpoint,
            session,
            capabilities: Vec::new(),
            activity,
            exists: None,
        };
        me.capabilities = me.fetch_capabilities().await?;
        if me.has("ID") {
            let version = env!("CARGO_PKG_VERSION");
            let (endpoint, activity) = (me.endpoint.clone(), me.activity.clone());
            imap_step(&endpoint, "send ID", &activity, async {
                me.session
                    .id([("name", Some("Mailbridge")), ("version", Some(version))])
                    .await
                    .map(drop)
                    .map_err(|e| imap_error(&endpoint, "send ID", e, None))
            })
            .await?;
        }
        if me.has("CONDSTORE") && me.has("ENABLE") {
            me.enable_condstore().await?;
        }
        Ok(me)
    }

    /// `ENABLE CONDSTORE` (RFC 5161, RFC 7162 §3.1): every folder opened reports its
    /// HIGHESTMODSEQ, and FETCH can ask for only what changed since one. A server that
    /// refuses is read without it (a full flag scan).
    async fn enable_condstore(&mut self) -> Result<(), ProtoError> {
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let enabled = imap_step(&endpoint, "enable CONDSTORE", &self.activity, async {
            match session.run_command_and_check_ok("ENABLE CONDSTORE").await {
                Ok(()) => Ok(true),
                Err(ImapError::No(_) | ImapError::Bad(_)) => Ok(false),
                Err(e) => Err(imap_error(&endpoint, "enable CONDSTORE", e, None)),
            }
        })
        .await?;
        if !enabled {
            self.capabilities.retain(|c| c != "CONDSTORE");
        }
        Ok(())
    }

    /// The server's capabilities after the login. A server that refuses to say (NO, BAD)
    /// fails the login as one to try again later: going on without them would lose more
    /// than IDLE — on Gmail, X-GM-EXT-1, and its mail would be keyed by UID, not by Gmail's
    /// ids, then stored again once the capability came back.
    async fn fetch_capabilities(&mut self) -> Result<Vec<String>, ProtoError> {
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        imap_step(&endpoint, "read capabilities", &self.activity, async {
            let caps = session.capabilities().await.map_err(|e| match e {
                ImapError::No(words) | ImapError::Bad(words) => endpoint.error(
                    "read capabilities",
                    ErrorKind::Rejected {
                        words: server_words(words),
                        transient: true,
                    },
                ),
                e => imap_error(&endpoint, "read capabilities", e, None),
            })?;
            Ok(caps
                .iter()
                .map(|c| match c {
                    async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
                    async_imap::types::Capability::Auth(a) => {
                        format!("AUTH={}", a.to_ascii_uppercase())
                    }
                    async_imap::types::Capability::Atom(a) => a.to_ascii_uppercase(),
                })
                .collect())
        })
        .await
    }

    /// Whether the server advertised a capability after login (`CONDSTORE`, `X-GM-EXT-1`…).
    pub fn has(&self, capability: &str) -> bool {
        has(&self.capabilities, capability)
    }

    /// The largest message this session downloads whole (the endpoint's bound).
    pub fn max_message_bytes(&self) -> usize {
        self.endpoint.max_message_bytes
    }

    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Opens a folder read-only (`EXAMINE`), so reading never changes anything.
    pub async fn examine(&mut self, folder: &str) -> Result<FolderStatus, ProtoError> {
        self.open(folder, false).await
    }

    /// Opens a folder to change it (`SELECT`): to set flags.
    pub async fn select(&mut self, folder: &str) -> Result<FolderStatus, ProtoError> {
        self.open(folder, true).await
    }

    async fn open(&mut self, folder: &str, write: bool) -> Result<FolderStatus, ProtoError> {
        let step = format!("open {folder}");
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let mailbox = imap_step(&endpoint, &step, &self.activity, async {
            let opened = if write {
                session.select(folder).await
            } else {
                session.examine(folder).await
            };
            opened.map_err(|e| imap_error(&endpoint, &step, e, None))
        })
        .await?;
        self.exists = Some(mailbox.exists);
        Ok(FolderStatus {
            exists: mailbox.exists,
            uid_validity: mailbox.uid_validity,
            uid_next: mailbox.uid_next,
            highest_modseq: mailbox.highest_modseq,
        })
    }

    /// Forgets what the server said unasked until now: the caller is about to read every
    /// folder it follows (a sync pass), which covers it. What arrives from here on, during the
    /// pass, may be news the pass does not see (see [`ImapSession::idle`]).
    pub fn forget_unsolicited(&mut self) {
        if self.session.unsolicited_responses.try_recv().is_ok() {
            self.session.renew_unsolicited_responses();
        }
    }

    /// Whether the server said, unasked, anything that is a change: new mail (an `EXISTS` with
    /// another count), an expunge (`EXPUNGE`, `VANISHED`), a flag change (`FETCH`), another
    /// folder's `STATUS` (NOTIFY). Not a keepalive (`* OK`), `RECENT` (which comes with
    /// `EXISTS`) or what answers the session's own set-up (`* ENABLED`, capabilities).
    fn take_news(&mut self) -> bool {
        use async_imap::imap_proto::Response;
        use async_imap::types::UnsolicitedResponse;
        let (mut news, mut read) = (false, false);
        while let Ok(said) = self.session.unsolicited_responses.try_recv() {
            read = true;
            news |= match said {
                UnsolicitedResponse::Exists(n) => self.exists.replace(n) != Some(n),
                UnsolicitedResponse::Expunge(_) | UnsolicitedResponse::Status { .. } => true,
                UnsolicitedResponse::Recent(_) => false,
                UnsolicitedResponse::Other(line) => {
                    matches!(
                        line.parsed(),
                        Response::Fetch(..) | Response::Vanished { .. }
                    )
                }
            };
        }
        // A channel that has carried a response keeps room for 31 until 31 have passed
        // through it: the session waits in IDLE next, for hours perhaps, with a new one.
        if read {
            self.session.renew_unsolicited_responses();
        }
        news
    }

    /// A folder's counters without opening it (`STATUS`): to see whether a folder other than
    /// the one open changed, at the cost of one round trip.
    pub async fn status(&mut self, folder: &str) -> Result<FolderStatus, ProtoError> {
        let step = format!("status of {folder}");
        let items = if self.has("CONDSTORE") {
            "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
        } else {
            "(MESSAGES UIDNEXT UIDVALIDITY)"
        };
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let mailbox = imap_step(&endpoint, &step, &self.activity, async {
            session
                .status(folder, items)
                .await
                .map_err(|e| imap_error(&endpoint, &step, e, None))
        })
        .await?;
        Ok(FolderStatus {
            exists: mailbox.exists,
            uid_validity: mailbox.uid_validity,
            uid_next: mailbox.uid_next,
            highest_modseq: mailbox.highest_modseq,
        })
    }

    /// Asks the server to announce changes in `folders` while another is open (NOTIFY, RFC
    /// 5465): new and expunged messages there then end an IDLE as a `STATUS` line, and need
    /// not be polled for. `false` when the server has no NOTIFY or refuses it.
    pub async fn notify_folders(&mut self, folders: &[&str]) -> Result<bool, ProtoError> {
        if folders.is_empty() || !self.has("NOTIFY") {
            return Ok(false);
        }
        let names: Vec<String> = folders.iter().map(|f| quoted(f)).collect();
        let command = format!(
            "NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) \
             (mailboxes ({}) (MessageNew MessageExpunge FlagChange))",
            names.join(" ")
        );
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let set = imap_step(&endpoint, "NOTIFY", &self.activity, async {
            session
                .run_command_and_check_ok(&command)
                .await
                .map_err(|e| imap_error(&endpoint, "NOTIFY", e, None))
        })
        .await;
        match set {
            Ok(()) => Ok(true),
            Err(e) if e.is_refusal() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The UIDs at or above `first` in the open folder (`UID SEARCH UID first:*`), ascending;
    /// with `since`, only messages received on or after that day (`SINCE`).
    pub async fn uids_from(
        &mut self,
        first: u32,
        since: Option<chrono::NaiveDate>,
    ) -> Result<Vec<u32>, ProtoError> {
        let query = match since {
            Some(d) => format!("UID {first}:* SINCE {}", d.format("%-d-%b-%Y")),
            None => format!("UID {first}:*"),
        };
        self.search_from(first, &query, "search new messages").await
    }

    /// The UIDs `UID SEARCH query` finds at or above `first`, ascending.
    async fn search_from(
        &mut self,
        first: u32,
        query: &str,
        step: &str,
    ) -> Result<Vec<u32>, ProtoError> {
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let mut uids: Vec<u32> = imap_step(&endpoint, step, &self.activity, async {
            session
                .uid_search(query)
                .await
                .map_err(|e| imap_error(&endpoint, step, e, None))
        })
        .await?
        .into_iter()
        // `n:*` always matches the last message, even below n (RFC 3501 §6.4.8).
        .filter(|u| *u >= first)
        .collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// Fetches messages by UID (`UID FETCH set (UID BODY.PEEK[])`, plus X-GM-MSGID,
    /// X-GM-THRID and X-GM-LABELS on Gmail), without marking them read.
    pub async fn uid_fetch(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, ProtoError> {
        match self.uid_fetch_some(uids).await? {
            (fetched, None) => Ok(fetched),
            (_, Some(refusal)) => Err(refusal),
        }
    }

    /// [`ImapSession::uid_fetch`], keeping what arrived when the server ends with NO: the
    /// messages it gave, and its refusal. A NO to FETCH names no lasting condition (Gmail
    /// says "Some messages could not be FETCHed" while it cannot read one), so the refusal
    /// is transient.
    pub async fn uid_fetch_some(
        &mut self,
        uids: &[u32],
    ) -> Result<(Vec<FetchedMessage>, Option<ProtoError>), ProtoError> {
        self.fetch_part(uids, "BODY.PEEK[]").await
    }

    /// Like [`ImapSession::uid_fetch_some`], only each message's header
    /// (`BODY.PEEK[HEADER]`): for a message too large to take whole.
    pub async fn uid_fetch_headers(
        &mut self,
        uids: &[u32],
    ) -> Result<(Vec<FetchedMessage>, Option<ProtoError>), ProtoError> {
        self.fetch_part(uids, "BODY.PEEK[HEADER]").await
    }

    /// The size (`RFC822.SIZE`) of each of `uids` (ascending) that is larger than `floor`
    /// bytes, as (UID, bytes): read before downloading, so batches are bounded in bytes and a
    /// message too large is never taken whole. The server finds them
    /// (`UID SEARCH UID first:* LARGER floor`) and only their sizes are fetched, a few hundred
    /// UIDs a command (a command line stays a few kilobytes however many there are): every
    /// other message is at most `floor` without a response line of its own. A server that
    /// refuses the search has every size fetched instead.
    pub async fn uid_sizes_above(
        &mut self,
        uids: &[u32],
        floor: u64,
    ) -> Result<Vec<(u32, u64)>, ProtoError> {
        use async_imap::imap_proto::AttributeValue;
        let step = "read message sizes";
        let Some(&first) = uids.first() else {
            return Ok(Vec::new());
        };
        let large: Vec<u32> = match self
            .search_from(first, &format!("UID {first}:* LARGER {floor}"), step)
            .await
        {
            Ok(found) => found
                .into_iter()
                .filter(|u| uids.binary_search(u).is_ok())
                .collect(),
            Err(e) if e.is_refusal() => uids.to_vec(),
            Err(e) => return Err(e),
        };
        let (sizes, refusal) = self
            .fetch_in_commands(&large, "UID RFC822.SIZE", step, |attributes| {
                let (mut uid, mut size) = (None, None);
                for attribute in attributes {
                    match attribute {
                        AttributeValue::Uid(u) => uid = Some(*u),
                        AttributeValue::Rfc822Size(n) => size = Some(u64::from(*n)),
                        _ => {}
                    }
                }
                Some((uid?, size?))
            })
            .await?;
        match refusal {
            Some(refusal) => Err(refusal),
            None => Ok(sizes),
        }
    }

    /// The flags (and on Gmail the identity and labels) of the messages up to UID `last` in
    /// the open folder; with `changed_since` (a HIGHESTMODSEQ read before, CONDSTORE), only
    /// of those changed after it (RFC 7162 §3.1.4).
    pub async fn uid_states(
        &mut self,
        last: u32,
        changed_since: Option<u64>,
    ) -> Result<Vec<MessageState>, ProtoError> {
        if last == 0 {
            return Ok(Vec::new());
        }
        let gmail = if self.has("X-GM-EXT-1") {
            " X-GM-MSGID X-GM-LABELS"
        } else {
            ""
        };
        let changed = changed_since
            .map(|m| format!(" (CHANGEDSINCE {m})"))
            .unwrap_or_default();
        let (states, refusal) = self
            .fetch_responses(
                &format!("UID FETCH 1:{last} (UID FLAGS{gmail}){changed}"),
                "read message flags",
                MessageState::from_attributes,
            )
            .await?;
        match refusal {
            Some(refusal) => Err(refusal),
            // `1:n` may also match the last message above n (RFC 3501 §6.4.8).
            None => Ok(states.into_iter().filter(|s| s.uid <= last).collect()),
        }
    }

    /// Adds and removes flags of one message in the folder opened with
    /// [`ImapSession::select`] (`UID STORE`).
    pub async fn uid_store_flags(
        &mut self,
        uid: u32,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(), ProtoError> {
        for (sign, flags) in [('+', add), ('-', remove)] {
            if flags.is_empty() {
                continue;
            }
            let (_, refusal) = self
                .fetch_responses(
                    &format!("UID STORE {uid} {sign}FLAGS.SILENT ({})", flags.join(" ")),
                    "change message flags",
                    |_| None::<()>,
                )
                .await?;
            if let Some(refusal) = refusal {
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Files a copy of a message in `folder` (`APPEND`) with these flags (`\Seen`…).
    pub async fn append(
        &mut self,
        folder: &str,
        flags: &str,
        raw: &[u8],
    ) -> Result<(), ProtoError> {
        let step = format!("file a copy in {folder}");
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        imap_step(&endpoint, &step, &self.activity, async {
            session
                .append(folder, Some(flags), None, raw)
                .await
                .map_err(|e| imap_error(&endpoint, &step, e, None))
        })
        .await
    }

    /// `UID FETCH set (UID FLAGS <part>)`, plus X-GM-MSGID, X-GM-THRID and X-GM-LABELS on
    /// Gmail, through [`ImapSession::fetch_in_commands`].
    async fn fetch_part(
        &mut self,
        uids: &[u32],
        part: &str,
    ) -> Result<(Vec<FetchedMessage>, Option<ProtoError>), ProtoError> {
        let gmail = if self.has("X-GM-EXT-1") {
            " X-GM-MSGID X-GM-THRID X-GM-LABELS"
        } else {
            ""
        };
        self.fetch_in_commands(
            uids,
            &format!("UID FLAGS {part}{gmail}"),
            &format!("download {} message(s)", uids.len()),
            FetchedMessage::from_attributes,
        )
        .await
    }

    /// `UID FETCH set (items)` for `uids`, [`UIDS_PER_COMMAND`] a command at most (a sync
    /// batch holds up to 1,000, which as ten-digit UIDs with gaps would pass the 8,192 octets
    /// a command line should keep to), through [`ImapSession::fetch_responses`]. A command
    /// the server refuses (NO) does not stop the others: what every one gave is kept, with
    /// the first refusal.
    async fn fetch_in_commands<T>(
        &mut self,
        uids: &[u32],
        items: &str,
        step: &str,
        mut pick: impl FnMut(&[async_imap::imap_proto::AttributeValue<'_>]) -> Option<T>,
    ) -> Result<(Vec<T>, Option<ProtoError>), ProtoError> {
        let (mut picked, mut refused) = (Vec::with_capacity(uids.len()), None);
        for chunk in uids.chunks(UIDS_PER_COMMAND) {
            let command = format!("UID FETCH {} ({items})", uid_set(chunk));
            let (got, no) = self.fetch_responses(&command, step, &mut pick).await?;
            picked.extend(got);
            refused = refused.or(no);
        }
        Ok((picked, refused))
    }

    /// Runs a FETCH `command` and keeps what `pick` makes of each FETCH response, and the
    /// server's refusal if it ends with NO.
    ///
    /// The responses are read here rather than through async-imap's `uid_fetch`, whose
    /// `Fetch` offers no accessor for X-GM-THRID (imap-proto parses it; async-imap drops it).
    async fn fetch_responses<T>(
        &mut self,
        command: &str,
        step: &str,
        mut pick: impl FnMut(&[async_imap::imap_proto::AttributeValue<'_>]) -> Option<T>,
    ) -> Result<(Vec<T>, Option<ProtoError>), ProtoError> {
        use async_imap::imap_proto::{Response, Status};
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        imap_step(&endpoint, step, &self.activity, async {
            let tag = session
                .run_command(command)
                .await
                .map_err(|e| imap_error(&endpoint, step, e, None))?;
            let mut picked = Vec::new();
            loop {
                let response = session
                    .read_response()
                    .await
                    .map_err(|e| imap_error(&endpoint, step, e.into(), None))?
                    .ok_or_else(|| imap_error(&endpoint, step, ImapError::ConnectionLost, None))?;
                match response.parsed() {
                    Response::Fetch(_, attributes) => picked.extend(pick(attributes)),
                    Response::Done {
                        tag: done,
                        status,
                        outcome,
                    } if *done == tag => {
                        let words = outcome
                            .information
                            .as_deref()
                            .unwrap_or_default()
                            .to_owned();
                        return match status {
                            Status::Ok => Ok((picked, None)),
                            Status::No => {
                                let refusal = endpoint.error(
                                    step,
                                    ErrorKind::Rejected {
                                        words,
                                        transient: true,
                                    },
                                );
                                Ok((picked, Some(refusal)))
                            }
                            _ => Err(imap_error(&endpoint, step, ImapError::Bad(words), None)),
                        };
                    }
                    // EXISTS, EXPUNGE and flag changes arriving meanwhile: the next pass
                    // over the folder sees their effect.
                    _ => {}
                }
            }
        })
        .await
    }

    /// The folder that holds sent mail: the one marked `\Sent` (RFC 6154 SPECIAL-USE), else
    /// the first of the usual names that exists.
    pub async fn sent_folder(&mut self) -> Result<Option<String>, ProtoError> {
        use async_imap::imap_proto::NameAttribute;
        use futures::TryStreamExt;
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let names: Vec<(String, bool)> =
            imap_step(&endpoint, "list folders", &self.activity, async {
                session
                    .list(Some(""), Some("*"))
                    .await
                    .map_err(|e| imap_error(&endpoint, "list folders", e, None))?
                    .map_ok(|n| {
                        let sent = n
                            .attributes()
                            .iter()
                            .any(|a| matches!(a, NameAttribute::Sent));
                        (n.name().to_owned(), sent)
                    })
                    .try_collect()
                    .await
                    .map_err(|e| imap_error(&endpoint, "list folders", e, None))
            })
            .await?;
        if let Some((name, _)) = names.iter().find(|(_, sent)| *sent) {
            return Ok(Some(name.clone()));
        }
        Ok(SENT_NAMES.iter().find_map(|usual| {
            names
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(usual))
                .map(|(name, _)| name.clone())
        }))
    }

    /// Whether `folder` holds a message with this Message-ID (`UID SEARCH HEADER`), opened
    /// read-only.
    pub async fn has_message_id(
        &mut self,
        folder: &str,
        message_id: &str,
    ) -> Result<bool, ProtoError> {
        if message_id.contains(['"', '\\', '\r', '\n']) {
            // Not a Message-ID we wrote; it cannot be quoted safely, so it is not searched.
            return Ok(false);
        }
        self.examine(folder).await?;
        let query = format!("HEADER Message-ID \"{message_id}\"");
        let endpoint = self.endpoint.clone();
        let session = &mut self.session;
        let found = imap_step(&endpoint, "search the sent folder", &self.activity, async {
            session
                .uid_search(&query)
                .await
                .map_err(|e| imap_error(&endpoint, "search the sent folder", e, None))
        })
        .await?;
        Ok(!found.is_empty())
    }

    /// Waits in `IDLE` (RFC 2177) for a change in the open folder, until `until` at most (a
    /// deadline, not a length: the caller may line thousands of sessions' ends up together).
    pub async fn idle(
        mut self,
        until: tokio::time::Instant,
    ) -> Result<(Self, IdleOutcome), ProtoError> {
        // What the server said unasked since the pass began (the caller forgot what came
        // before, [`ImapSession::forget_unsolicited`]) may be news the pass did not see: mail
        // that arrived in INBOX after the pass searched it is announced once, with the answer
        // to a later command of the pass, and IDLE would not announce it again; a `STATUS`
        // (NOTIFY's word for a change in another folder) likewise. No IDLE then: a change.
        if self.take_news() {
            return Ok((self, IdleOutcome::Changed));
        }
        let Self {
            endpoint,
            session,
            capabilities,
            activity,
            exists,
        } = self;
        let mut handle = session.idle();
        // The steps before and after the wait are boxed: this future is held for as long as
        // the session idles, and needs room only for the wait then (thousands of sessions).
        Box::pin(imap_step(&endpoint, "start IDLE", &activity, async {
            Box::pin(handle.init()).await.map_err(|e| match e {
                // async-imap 0.12 reports the server's BAD to IDLE (a command it does not
                // know) as a refused connection carrying the server's words.
                ImapError::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused
                        && !io.to_string().is_empty() =>
                {
                    endpoint.error("start IDLE", ErrorKind::Protocol(format!("BAD {io}")))
                }
                e => imap_error(&endpoint, "start IDLE", e, None),
            })
        }))
        .await?;
        // The wait is bounded as a whole, so IDLE ends when the caller asked (RFC 2177 §3)
        // whatever the server chats (`* OK Still here`, Dovecot every 2 minutes).
        let waited =
            std::panic::AssertUnwindSafe(tokio::time::timeout_at(until, handle.wait_for_data()))
                .catch_unwind()
                .await
                .map_err(|panic| unreadable(&endpoint, "wait in IDLE", panic.as_ref()))?;
        let mut outcome = match waited {
            Ok(Ok(async_imap::extensions::idle::IdleResponse::NewData(_))) => IdleOutcome::Changed,
            Ok(Ok(_)) | Err(_) => IdleOutcome::TimedOut,
            Ok(Err(e)) => return Err(imap_error(&endpoint, "wait in IDLE", e, None)),
        };
        let session = Box::pin(imap_step(&endpoint, "end IDLE", &activity, async {
            Box::pin(handle.done())
                .await
                .map_err(|e| imap_error(&endpoint, "end IDLE", e, None))
        }))
        .await?;
        let mut me = Self {
            endpoint,
            session,
            capabilities,
            activity,
            exists,
        };
        // Mail that arrived as the wait ended is announced between DONE and its answer
        // (async-imap passes such lines on as unsolicited): a change all the same. A
        // server's `* OK Still here` there is not.
        if me.take_news() {
            outcome = IdleOutcome::Changed;
        }
        Ok((me, outcome))
    }

    /// Ends the session politely; errors are of no interest by then.
    pub async fn logout(mut self) {
        let logout = tokio::time::timeout(self.endpoint.timeout, self.session.logout());
        let _ = std::panic::AssertUnwindSafe(logout).catch_unwind().await;
    }
}

/// UIDs named in one command at most: 500 as ranges or ten-digit numbers stay under 5.5 KB,
/// within the 8,192 octets RFC 7162 §4 asks clients to keep a command line to.
const UIDS_PER_COMMAND: usize = 500;

/// A UID set for a command (ascending UIDs): runs as ranges, `1:3,5,7:8`.
fn uid_set(uids: &[u32]) -> String {
    let mut set = String::new();
    let mut rest = uids.iter().copied().peekable();
    while let Some(start) = rest.next() {
        let mut end = start;
        while rest.peek() == Some(&end.wrapping_add(1)) && end != u32::MAX {
            end += 1;
            rest.next();
        }
        if !set.is_empty() {
            set.push(',');
        }
        set.push_str(&start.to_string());
        if end != start {
            set.push(':');
            set.push_str(&end.to_string());
        }
    }
    set
}

/// An IMAP quoted string (RFC 3501 §4.3).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Hands async-imap's parser whole lines (a literal's content may still come in parts).
/// imap-proto parses the `ID` answer (RFC 2971) with nom's *complete* parsers, so a `* ID`
/// line that has arrived only in part is taken as malformed rather than unfinished, and the
/// login fails: seen on a link that delivered a byte at a time. Every IMAP answer ends with
/// CRLF, so holding back a line's start until its end has come never waits for nothing.
#[derive(Debug)]
struct WholeLines<S> {
    inner: S,
    /// Read, not yet handed on: at most the start of one line (or a literal's content that
    /// did not fit).
    held: Vec<u8>,
}

impl<S> WholeLines<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
        }
    }

    /// How much of `held` to hand on into `room` bytes: up to the last line end that fits;
    /// a line longer than the room in part (the parser reads a long literal piecewise).
    fn ready(&self, room: usize) -> usize {
        let window = &self.held[..self.held.len().min(room)];
        match window.iter().rposition(|b| *b == b'\n') {
            Some(end) => end + 1,
            None if window.len() == room => room,
            None => 0,
        }
    }

    /// Hands on the first `n` held bytes. Once nothing is held, nor is its room: an idle
    /// session's last read was a whole line, and thousands of them would otherwise each keep
    /// the room their largest read needed.
    fn hand_on(&mut self, n: usize, out: &mut tokio::io::ReadBuf<'_>) {
        out.put_slice(&self.held[..n]);
        self.held.drain(..n);
        if self.held.is_empty() {
            self.held = Vec::new();
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WholeLines<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let me = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let n = me.ready(out.remaining());
            if n > 0 {
                me.hand_on(n, out);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut me.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The end of the stream: what is held goes on (the parser reports a cut
                    // answer), then the end.
                    let n = me.held.len().min(out.remaining());
                    me.hand_on(n, out);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => me.held.extend_from_slice(read.filled()),
                other => return other,
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WholeLines<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `Endpoint::timed_quiet` for a step that async-imap does (the timeout bounds silence, not
/// the answer's length), where a panic becomes an error too.
/// imap-proto (0.17.0) panics on some malformed answers — a non-ASCII byte right after a
/// response code, as in `A1 OK [READ-ONLY]\u{e9} done`, makes it slice a string inside a
/// character — and a panic would end the mailbox's sync task, which the engine restarts into
/// the same panic without a word to anyone. As an error it is reported and retried like any
/// other unreadable answer.
async fn imap_step<T>(
    endpoint: &Endpoint,
    step: &str,
    activity: &Activity,
    fut: impl Future<Output = Result<T, ProtoError>>,
) -> Result<T, ProtoError> {
    std::panic::AssertUnwindSafe(endpoint.timed_quiet(step, activity, fut))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(unreadable(endpoint, step, panic.as_ref())))
}

/// The error for a panic caught inside async-imap or imap-proto.
fn unreadable(endpoint: &Endpoint, step: &str, panic: &(dyn std::any::Any + Send)) -> ProtoError {
    let why = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no reason given");
    endpoint.error(
        step,
        ErrorKind::Protocol(format!(
            "the IMAP library failed on the server's answer: {why}"
        )),
    )
}

/// async-imap's authenticator: sends the initial response when the server asks for it
/// (no SASL-IR), and answers any later challenge — an error report — with the mechanism's
/// error reply, keeping the challenge to explain the refusal.
struct SaslExchange {
    first: Option<Vec<u8>>,
    error_reply: &'static [u8],
    challenge: Arc<Mutex<Option<Vec<u8>>>>,
}

impl async_imap::Authenticator for SaslExchange {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Self::Response {
        if let Some(first) = self.first.take() {
            return first;
        }
        *self
            .challenge
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(challenge.to_vec());
        self.error_reply.to_vec()
    }
}

/// async-imap reports a tagged NO or BAD as `code: Some(..), info: Some("words")` (after
/// login) or `outcome: Outcome { code: .., information: Some("words") }` (on a selected
/// folder); the server's own words are the quoted part. At most [`MAX_WORDS`] characters of
/// them: an error is logged and kept as the mailbox's last error, and a server's line may be
/// 64 KiB.
pub(crate) fn server_words(raw: String) -> String {
    let words = ["information: Some(\"", "info: Some(\""]
        .iter()
        .find_map(|m| raw.find(m).map(|at| (at, *m)))
        .and_then(|(start, marker)| {
            let rest = &raw[start + marker.len()..];
            rest.rfind("\")")
                .map(|end| rest[..end].replace("\\\"", "\""))
        })
        .unwrap_or(raw);
    match words.char_indices().nth(MAX_WORDS) {
        Some((cut, _)) => format!("{}…", &words[..cut]),
        None => words,
    }
}

/// How much of a server's words an error keeps.
const MAX_WORDS: usize = 300;

pub(crate) fn imap_error(
    endpoint: &Endpoint,
    step: &str,
    e: ImapError,
    detail: Option<String>,
) -> ProtoError {
    let e = match e {
        ImapError::No(words) => ImapError::No(server_words(words)),
        other => other,
    };
    let kind = match e {
        ImapError::No(words) if step.starts_with("log in") => {
            ErrorKind::AuthRefused { words, detail }
        }
        ImapError::No(words) => ErrorKind::Rejected {
            // RFC 5530: the server is busy, the mailbox locked, or the server hit its own bug
            // (Dovecot answers [SERVERBUG] to a maildir being created under it): try later.
            transient: ["[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]", "[LIMIT]"]
                .iter()
                .any(|code| words.contains(code)),
            words,
        },
        ImapError::Bad(words) => ErrorKind::Protocol(format!("BAD {}", server_words(words))),
        ImapError::Io(e) => ErrorKind::Io(e.to_string()),
        ImapError::ConnectionLost => ErrorKind::Io("the server closed the connection".into()),
        other => ErrorKind::Protocol(other.to_string()),
    };
    endpoint.error(step, kind)
}

/// Sends a tagged command on the raw connection and reads to its tagged OK.
async fn command(
    conn: &mut LineConn,
    line: &str,
    tag: &str,
    step: &str,
) -> Result<Vec<String>, ProtoError> {
    conn.write_line(step, line).await?;
    let mut budget = LineBudget::new(
        "the answer before the tagged reply",
        MAX_UNTAGGED_LINES,
        MAX_UNTAGGED_BYTES,
    );
    let mut untagged = Vec::new();
    loop {
        let reply = conn.read_line(step).await?;
        if let Some(rest) = reply.strip_prefix(tag) {
            if rest.starts_with("OK") {
                return Ok(untagged);
            }
            return Err(conn.error(
                step,
                ErrorKind::Rejected {
                    words: server_words(rest.trim().to_owned()),
                    transient: false,
                },
            ));
        }
        budget.take(&reply).map_err(|kind| conn.error(step, kind))?;
        untagged.push(reply);
    }
}

/// Before the login, as after it (`ImapSession::fetch_capabilities`), a refused CAPABILITY
/// fails the connection for now: tried again later, never a session without them.
async fn capability(conn: &mut LineConn) -> Result<Vec<String>, ProtoError> {
    let lines = command(conn, "m0 CAPABILITY", "m0 ", "read capabilities")
        .await
        .map_err(|mut e| {
            if let ErrorKind::Rejected { transient, .. } = &mut e.kind {
                *transient = true;
            }
            e
        })?;
    Ok(lines
        .iter()
        .filter_map(|l| l.strip_prefix("* CAPABILITY "))
        .flat_map(|l| l.split_whitespace().map(str::to_ascii_uppercase))
        .collect())
}

/// `* OK [CAPABILITY IMAP4rev1 …] ready` → the capabilities.
pub(crate) fn bracketed_capabilities(greeting: &str) -> Option<Vec<String>> {
    let start = greeting.find("[CAPABILITY ")? + "[CAPABILITY ".len();
    let end = greeting[start..].find(']')? + start;
    Some(
        greeting[start..end]
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect(),
    )
}

fn has(caps: &[String], capability: &str) -> bool {
    caps.iter().any(|c| c.eq_ignore_ascii_case(capability))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_words_are_taken_out_of_async_imaps_wrapping() {
        assert_eq!(
            server_words(
                r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#
                    .to_owned()
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_words(
                r#"outcome: Outcome { code: None, information: Some("[SERVERBUG] Internal error occurred.") }"#
                    .to_owned()
            ),
            "[SERVERBUG] Internal error occurred."
        );
        assert_eq!(server_words("plain words".to_owned()), "plain words");
        // A server's words are kept to 300 characters (whole ones).
        let long = format!("code: None, info: Some(\"{}\")", "é".repeat(70_000));
        let kept = server_words(long);
        assert_eq!(kept.chars().count(), 301, "{kept}");
        assert!(kept.starts_with("éé") && kept.ends_with('…'));
    }

    /// Gives one byte per read, as a link that drips.
    struct Trickle(&'static [u8]);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                out.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_uid_set_names_runs_as_ranges() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[9]), "9");
        assert_eq!(
            uid_set(&[u32::MAX - 1, u32::MAX]),
            format!("{}:{}", u32::MAX - 1, u32::MAX)
        );
        assert_eq!(uid_set(&[]), "");
    }

    #[tokio::test]
    async fn answers_arriving_a_byte_at_a_time_reach_the_parser_as_whole_lines() {
        use tokio::io::AsyncReadExt;
        let answer = b"* ID (\"name\" \"Dovecot\")\r\nA4 OK ID completed.\r\n* 1 FETCH (BODY[] {3}\r\nabc)\r\n";
        let mut lines = WholeLines::new(Trickle(answer));
        let mut reads = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = lines.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            reads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            // Between whole lines nothing is held, and no room kept for it either (an idle
            // session keeps none).
            assert_eq!(lines.held.capacity(), 0, "after {reads:?}");
        }
        assert_eq!(
            reads,
            [
                "* ID (\"name\" \"Dovecot\")\r\n",
                "A4 OK ID completed.\r\n",
                "* 1 FETCH (BODY[] {3}\r\n",
                "abc)\r\n"
            ]
        );
        // A line longer than the reader's room goes in part; nothing is lost.
        let mut lines = WholeLines::new(Trickle(b"0123456789\r\n"));
        let mut small = [0u8; 4];
        let mut got = Vec::new();
        loop {
            let n = lines.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"0123456789\r\n");
    }

    #[test]
    fn an_answer_that_makes_imap_proto_panic_is_an_error() {
        // Found by the imap_responses fuzz target: imap-proto 0.17.0 slices the text after a
        // response code at byte 1, inside the 'é'. The session must fail the step, not panic.
        let mut data = b"\x02".to_vec();
        for turn in [
            &b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"[..],
            b"A0001 OK Logged in\r\n",
            b"* CAPABILITY IMAP4rev1\r\nA0002 OK done\r\n",
            b"* 2 EXISTS\r\nA0003 OK [READ-ONLY]\xc3\xa9 INBOX selected\r\n",
        ] {
            data.extend_from_slice(turn);
            data.push(crate::fuzzing::TURN);
        }
        let e = crate::fuzzing::imap_session(&data).unwrap().unwrap_err();
        assert_eq!(e.step, "open INBOX");
        assert!(
            e.to_string()
                .contains("the IMAP library failed on the server's answer"),
            "{e}"
        );
    }

    #[test]
    fn greeting_capabilities_are_read() {
        let caps = bracketed_capabilities(
            "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Dovecot ready.",
        )
        .unwrap();
        assert_eq!(caps, ["IMAP4REV1", "SASL-IR", "AUTH=XOAUTH2"]);
        assert!(bracketed_capabilities("* OK Gimap ready").is_none());
    }
}
