//! [`Engine`]: works every enabled mailbox whose lease this node holds (see
//! `mailbridge_store::nodes`: nodes of a group share its mailboxes evenly, a dead node's
//! mailboxes move to the living within the lease time, and a node that lost a lease cannot
//! write for that mailbox any more). IMAP mailboxes hold a session on
//! INBOX that syncs, then waits in IDLE (new mail is stored as soon as the server says),
//! re-syncing at least every `full_check`; POP3 mailboxes, and IMAP servers that do not offer
//! IDLE or refuse it, are polled at the profile's interval. A mailbox is worked by one task at a time. Errors follow one policy: transient →
//! capped exponential backoff with jitter, and after `max_failures` in a row the mailbox is
//! disabled with an alert; permanent (login refused, sign-in revoked) → disabled at once with
//! an alert for its owner; the database down or full → retried soon, never counted (it is
//! not the mailbox's failure). Sync passes are bounded per profile (`max_connections`) and
//! globally, and logins per mailbox by [`EngineConfig::login_limit`], so a session that keeps
//! ending at once (a token that expires as it is issued, a server that drops each session)
//! cannot become a reconnect storm.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge_core::{AuthMethod, Clock, IncomingProtocol, MailboxId};
use mailbridge_proto::imap::{FolderStatus, IdleOutcome, ImapSession};
use mailbridge_proto::pop3::Pop3Session;
use mailbridge_proto::{Credentials, Endpoint, ProtoError, TlsSettings};
use mailbridge_store::{Fence, MailboxRecord, ProfileRecord, Store, StoreError};
use tokio::sync::{Semaphore, watch};

use crate::incoming::imap::{self, PassOptions, sync_folders};
use crate::incoming::{SyncError, pop3::sync_maildrop};
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::outgoing::{CLAIM_PER_ROUND, SendContext, send_due};
use crate::tokens::{TokenError, TokenService};

/// How long after another node's leases may have run out this node looks at them: clocks
/// are the database's, so only the statement's own time separates the two.
const EXPIRY_MARGIN: Duration = Duration::from_millis(50);

/// The longest a mailbox waits between tries while the database is down or full.
const OUTAGE_RETRY_CAP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often the list of enabled mailboxes is read (new, re-enabled, disabled ones).
    pub scan_interval: Duration,
    /// The longest a session waits in IDLE before syncing anyway (RFC 2177 asks ≤ 29 min);
    /// `idle_refresh` ends the wait sooner when it is shorter.
    pub full_check: Duration,
    /// How often an idling session ends IDLE (DONE) and starts it again, even when the
    /// server reported nothing (a pass over the folders runs only when something changed or
    /// one is due: other folders, a flag scan, `full_check`). This is
    /// what finds a connection that went silent without closing (a NAT or firewall that
    /// forgot it, a middlebox that still acknowledges but passes nothing on): DONE then gets
    /// no answer within `mail_timeout`, the session fails as transient and
    /// a new one logs in, so a silent connection is noticed within `idle_refresh` +
    /// `mail_timeout` (90 s by default) and a beat ([`on_the_beat`], a second at most). TCP
    /// keepalive (in `mailbridge_proto::net`) finds a peer that is gone for good, but not a
    /// path that still acknowledges.
    pub idle_refresh: Duration,
    /// How often the folders other than INBOX (Sent, the profile's folders) are checked
    /// (`STATUS`; a pass when their counters moved) while INBOX waits in IDLE: IDLE watches
    /// only the open folder, so this bounds how late mail sent from the user's own client
    /// appears — unless the server announces their changes (NOTIFY), when `full_check` does.
    pub folder_check: Duration,
    /// How often this node writes which of its mailboxes were current (their `current_at`,
    /// shown as each mailbox's lag): one statement per 500 of them each time.
    pub currency_flush: Duration,
    /// Transient failures in a row before a mailbox is disabled.
    pub max_failures: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// New workers start spread over this window (none by default: `logins_per_second`
    /// already spreads a start-up or a takeover).
    pub stagger: Duration,
    /// At most this many sessions of this node log in each second, whatever the number of
    /// mailboxes starting at once (a start-up, a takeover from a dead node): one every
    /// 1/n s, in the order they ask. 0 = no bound.
    pub logins_per_second: u32,
    /// Sync passes running at once over all profiles.
    pub global_limit: usize,
    /// Bound on connecting to a mail server and on every read from it.
    pub mail_timeout: Duration,
    /// How long a mailbox waits when its provider says the account is over a limit (Gmail's
    /// daily download allowance): then it tries again, and waits again if still over.
    pub provider_pause: Duration,
    /// A message larger than this (by `RFC822.SIZE` or `LIST`) is stored as its header only,
    /// `truncated`; 64 MiB by default, above Gmail's 50 MB receive limit.
    pub max_message_bytes: usize,
    /// What SMTP EHLO says.
    pub client_name: String,
    /// At most this many logins per mailbox within this window.
    pub login_limit: (usize, Duration),
    /// This node's name in `mailbridge nodes`.
    pub node_name: String,
    /// The node group: `cloud` works server-side-sync mailboxes; another name works the
    /// `email_router` mailboxes of that group.
    pub node_group: String,
    /// A mailbox lease not renewed within this time expires and may move to another node;
    /// renewed twice within the store's `nodes::silence_limit` of it (every sixth) or every
    /// scan interval, whichever is sooner.
    pub lease_ttl: Duration,
    /// Events older than this leave the event log (checked every hour).
    pub event_retention: chrono::Duration,
    /// How webhooks are delivered.
    pub webhooks: crate::webhooks::WebhookSettings,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scan_interval: Duration::from_secs(5),
            full_check: Duration::from_secs(25 * 60),
            idle_refresh: Duration::from_secs(60),
            folder_check: Duration::from_secs(20),
            currency_flush: Duration::from_secs(15),
            max_failures: 10,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(15 * 60),
            stagger: Duration::ZERO,
            logins_per_second: 100,
            global_limit: 64,
            mail_timeout: Duration::from_secs(30),
            max_message_bytes: mailbridge_proto::DEFAULT_MAX_MESSAGE_BYTES,
            provider_pause: Duration::from_secs(60 * 60),
            client_name: "localhost".to_owned(),
            login_limit: (6, Duration::from_secs(60)),
            node_name: "mailbridge".to_owned(),
            node_group: mailbridge_core::DEFAULT_NODE_GROUP.to_owned(),
            lease_ttl: Duration::from_secs(30),
            event_retention: chrono::Duration::days(30),
            webhooks: crate::webhooks::WebhookSettings::default(),
        }
    }
}

pub struct Engine {
    store: Store,
    tokens: Arc<TokenService>,
    tls: TlsSettings,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    global: Semaphore,
    /// Shared with Test & Enable: every connection of a profile's mailboxes counts.
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    /// This node's logins, `logins_per_second` at most.
    pace: LoginPace,
    /// Where the beat idle sessions end their waits on starts ([`on_the_beat`]).
    beat_origin: tokio::time::Instant,
}

/// How one attempt at working a mailbox ended without an error.
enum Pass {
    /// Keep going.
    Continue,
    /// The engine is stopping.
    Shutdown,
}

impl Engine {
    pub fn new(
        store: Store,
        tokens: Arc<TokenService>,
        tls: TlsSettings,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        limits: Arc<ConnectionLimits>,
    ) -> Arc<Self> {
        let global = Semaphore::new(config.global_limit);
        let pace = LoginPace::new(config.logins_per_second);
        Arc::new(Self {
            pace,
            beat_origin: tokio::time::Instant::now(),
            store,
            tokens,
            tls,
            clock,
            config,
            global,
            limits,
            metrics,
        })
    }

    /// Registers this node, then works the mailboxes it holds leases for until `shutdown`
    /// turns true; then stops every worker, releases the leases at once, and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let node = loop {
            match self
                .store
                .register_node(
                    &self.config.node_name,
                    &self.config.node_group,
                    self.config.lease_ttl,
                )
                .await
            {
                Ok(id) => break id,
                Err(e) => tracing::warn!(error = %e, "cannot register this node; retrying"),
            }
            if stopped_during(self.config.scan_interval, &mut shutdown).await {
                return;
            }
        };
        tracing::info!(node = %node, name = %self.config.node_name, group = %self.config.node_group, "node registered");
        let sender = tokio::spawn(self.clone().send_loop(node.clone(), shutdown.clone()));
        let housekeeper = tokio::spawn(self.clone().housekeeping(shutdown.clone()));
        let currency = tokio::spawn(self.clone().write_currency(shutdown.clone()));
        let webhooks = match crate::webhooks::Deliverer::new(self.config.webhooks.clone()) {
            Ok(deliverer) => Some(tokio::spawn(crate::webhooks::run(
                self.store.clone(),
                deliverer,
                self.clock.clone(),
                node.clone(),
                shutdown.clone(),
            ))),
            Err(e) => {
                tracing::error!(error = %e, "cannot start webhook delivery on this node");
                None
            }
        };
        let mut workers: HashMap<MailboxId, (i64, tokio::task::JoinHandle<()>)> = HashMap::new();
        // At least twice within the silence after which a node whose database session is
        // gone counts as dead, so one late heartbeat is never taken for a death.
        let renew_every = (mailbridge_store::nodes::silence_limit(self.config.lease_ttl) / 2)
            .min(self.config.scan_interval);
        // Leases granted by a call run from before the call was made.
        let mut renewed_at = Instant::now();
        loop {
            let next_balance;
            workers.retain(|_, (_, w)| !w.is_finished());
            self.metrics
                .currency
                .retain(|mailbox| workers.contains_key(mailbox));
            let asked_at = Instant::now();
            let balanced = tokio::time::timeout(
                self.config.lease_ttl / 3,
                self.store
                    .balance_leases(&node, &self.config.node_group, self.config.lease_ttl),
            )
            .await;
            match balanced {
                Ok(Err(StoreError::NotFound { .. })) => {
                    tracing::error!(
                        node = %node,
                        "this node was stopped by another process (on SQLite a new process replaces the last one); stopping the engine"
                    );
                    for (_, (_, w)) in workers.drain() {
                        w.abort();
                    }
                    sender.abort();
                    housekeeper.abort();
                    currency.abort();
                    if let Some(w) = &webhooks {
                        w.abort();
                    }
                    return;
                }
                Ok(Ok(balance)) => {
                    renewed_at = asked_at;
                    // Look again as soon as another node's leases may have run out (it died),
                    // rather than up to a renewal period later.
                    next_balance = balance
                        .others_expire_in
                        .map_or(renew_every, |t| (t + EXPIRY_MARGIN).min(renew_every));
                    let leases = balance.leases;
                    self.metrics.leases.set(leases.len() as i64);
                    let held: HashMap<MailboxId, i64> =
                        leases.iter().map(|l| (l.mailbox, l.epoch)).collect();
                    workers.retain(|mailbox, (epoch, w)| {
                        let keep = held.get(mailbox) == Some(epoch);
                        if !keep {
                            tracing::info!(%mailbox, "lease released or lost; stopping its worker");
                            w.abort();
                        }
                        keep
                    });
                    for lease in leases {
                        if workers.contains_key(&lease.mailbox) {
                            continue;
                        }
                        let me = self.clone();
                        let stop = shutdown.clone();
                        let delay = me.stagger_for(lease.mailbox);
                        let fence = Fence {
                            node: node.clone(),
                            epoch: lease.epoch,
                        };
                        self.metrics
                            .currency
                            .working(lease.mailbox, self.clock.now());
                        workers.insert(
                            lease.mailbox,
                            (
                                lease.epoch,
                                tokio::spawn(async move {
                                    me.work(lease.mailbox, fence, delay, stop).await
                                }),
                            ),
                        );
                    }
                }
                failed => {
                    next_balance = renew_every;
                    let e = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.config.lease_ttl / 3),
                    };
                    tracing::warn!(error = %e, "cannot renew this node's leases; retrying");
                    // Stop a little before the leases run out, whatever the database does.
                    let margin = renew_every.min(self.config.lease_ttl / 10);
                    if renewed_at.elapsed() + margin >= self.config.lease_ttl && !workers.is_empty()
                    {
                        tracing::warn!(
                            workers = workers.len(),
                            "leases expired without renewal; stopping every worker"
                        );
                        for (_, (_, w)) in workers.drain() {
                            w.abort();
                        }
                    }
                }
            }
            if stopped_during(next_balance, &mut shutdown).await {
                break;
            }
        }
        for (_, (_, w)) in workers {
            let _ = w.await;
        }
        let _ = sender.await;
        let _ = housekeeper.await;
        let _ = currency.await;
        if let Some(w) = webhooks {
            let _ = w.await;
        }
        if let Err(e) = self.store.stop_node(&node).await {
            tracing::warn!(error = %e, "cannot release this node's leases; they expire on their own");
        }
        tracing::info!("sync engine stopped");
    }

    /// Writes which mailboxes were current, every `currency_flush`, until shutdown (and once
    /// more then).
    async fn write_currency(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = stopped_during(self.config.currency_flush, &mut shutdown).await;
            let confirmed = self.metrics.currency.take_unwritten();
            if !confirmed.is_empty()
                && let Err(e) = self.store.record_current(&confirmed).await
            {
                tracing::warn!(error = %e, mailboxes = confirmed.len(), "cannot record which mailboxes are current; the next round will");
            }
            if stopping {
                return;
            }
        }
    }

    /// Sends queued outgoing mail until shutdown.
    async fn send_loop(self: Arc<Self>, node: String, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self
                .store
                .fail_interrupted_sends(self.config.lease_ttl)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    emails = n,
                    "emails interrupted mid-send by a node that stopped are marked failed, not sent again"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot check for interrupted sends"),
            }
            let ctx = SendContext {
                store: &self.store,
                tokens: &self.tokens,
                tls: &self.tls,
                limits: &self.limits,
                metrics: &self.metrics,
                clock: self.clock.as_ref(),
                timeout: self.config.mail_timeout,
                client_name: &self.config.client_name,
            };
            // A full round means more mail is due: go again at once rather than after a scan.
            let more = match send_due(&ctx, &node).await {
                Ok(claimed) => claimed as i64 == CLAIM_PER_ROUND,
                Err(e) => {
                    tracing::warn!(error = %e, "sending queued email failed; retrying");
                    false
                }
            };
            if more && !*shutdown.borrow() {
                continue;
            }
            if stopped_during(self.config.scan_interval, &mut shutdown).await {
                return;
            }
        }
    }

    /// Keeps the event log within its retention, now and every hour (every node does it; a
    /// delete that finds nothing costs nothing).
    async fn housekeeping(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let before = self.clock.now() - self.config.event_retention;
            match self.store.prune_events(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, %before, "old events left the event log"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune the event log; retrying in an hour")
                }
            }
            if stopped_during(Duration::from_secs(3600), &mut shutdown).await {
                return;
            }
        }
    }

    /// Works one mailbox until it is disabled, fails for good, or the engine stops.
    async fn work(
        self: Arc<Self>,
        mailbox: MailboxId,
        fence: Fence,
        delay: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if Box::pin(stopped_during(delay, &mut shutdown)).await {
            return;
        }
        let mut failures = 0u32;
        // Passes in a row that the database failed (down, or its disk full).
        let mut outage_waits = 0u32;
        let (max, window) = self.config.login_limit;
        let mut logins = LoginLimiter::new(max, window);
        // This node's pace gave the next login its slot already (the record was read again
        // after waiting for it, as settings may have changed meanwhile).
        let mut paced = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let record = match Box::pin(self.store.get_mailbox(mailbox))
                .await
                .map(Box::new)
            {
                Ok(m) if !m.enabled => return,
                Ok(m) if !m.spec.incoming_method.is_synchronized() => {
                    // Outgoing only: the lease is held for sending, there is nothing to read
                    // (nor a lag to count). Look again later, in case incoming is turned on.
                    self.metrics.currency.stopped(mailbox);
                    if Box::pin(stopped_during(self.config.scan_interval, &mut shutdown)).await {
                        return;
                    }
                    continue;
                }
                Ok(m) => m,
                Err(e) if e.is_database_outage() => {
                    outage_waits += 1;
                    let wait = self.outage_backoff(mailbox, outage_waits);
                    tracing::warn!(%mailbox, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read the mailbox: the database is not answering; waiting for it");
                    if Box::pin(stopped_during(wait, &mut shutdown)).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%mailbox, error = %e, "cannot read the mailbox; stopping its worker");
                    return;
                }
            };
            if !paced {
                let wait = self.pace.slot(Instant::now());
                if !wait.is_zero() {
                    if Box::pin(stopped_during(wait, &mut shutdown)).await {
                        return;
                    }
                    paced = true;
                    continue;
                }
            }
            paced = false;
            let wait = logins.next_slot(Instant::now());
            if !wait.is_zero() {
                tracing::info!(%mailbox, wait_ms = wait.as_millis() as u64, "logging in too often; waiting");
                if Box::pin(stopped_during(wait, &mut shutdown)).await {
                    return;
                }
            }
            let (result, auth) =
                Box::pin(self.profile_pass(&record, &fence, &mut shutdown, &mut failures)).await;
            // Failures are recorded (and the mailbox disabled) only while this node still holds
            // the lease: a worker that lost it must not stop a mailbox another node works.
            let e = match result {
                Ok(Pass::Shutdown) => return,
                Ok(Pass::Continue) => {
                    failures = 0;
                    outage_waits = 0;
                    continue;
                }
                Err(SyncError::Store(StoreError::LeaseLost { .. })) => {
                    tracing::info!(%mailbox, "lease lost; another node works this mailbox now");
                    return;
                }
                // The database is down or its disk full: not this mailbox's failure, so it is
                // neither counted (an outage must not disable every mailbox) nor recorded
                // (the database could not take it); the pass is tried again, at most every
                // `OUTAGE_RETRY_CAP`, and what it fetched is fetched again then.
                Err(e) if e.is_database_outage() => {
                    self.metrics.error(true);
                    outage_waits += 1;
                    let wait = self.outage_backoff(mailbox, outage_waits);
                    tracing::warn!(%mailbox, error = %e, retry_in_ms = wait.as_millis() as u64, "sync waits for the database; the mailbox is not counted as failing");
                    if Box::pin(stopped_during(wait, &mut shutdown)).await {
                        return;
                    }
                    continue;
                }
                // The provider's limit (Gmail's bandwidth per day): the mailbox waits, says
                // until when, and is not counted as failing.
                Err(e) if e.is_provider_limit() => {
                    let wait = self.config.provider_pause;
                    let until = self.clock.now()
                        + chrono::Duration::from_std(wait)
                            .unwrap_or_else(|_| chrono::Duration::hours(1));
                    tracing::warn!(%mailbox, error = %e, %until, "the provider says the account is over its limit; paused");
                    let why = format!("paused until {}: {e}", until.format("%Y-%m-%d %H:%M UTC"));
                    match Box::pin(
                        self.store
                            .record_sync_pause(mailbox, until, &why, Some(&fence)),
                    )
                    .await
                    {
                        Err(StoreError::LeaseLost { .. }) => return,
                        Err(err) => {
                            tracing::warn!(%mailbox, error = %err, "cannot record the pause")
                        }
                        Ok(()) => {}
                    }
                    if Box::pin(stopped_during(wait, &mut shutdown)).await {
                        return;
                    }
                    continue;
                }
                Err(e) => e,
            };
            outage_waits = 0;
            let transient = e.is_transient();
            self.metrics.error(transient);
            if transient {
                failures += 1;
                tracing::warn!(%mailbox, error = %e, failures, "sync failed; will retry");
            } else {
                tracing::warn!(%mailbox, error = %e, "sync refused; disabling the mailbox");
            }
            let recorded = Box::pin(self.store.record_sync_error(
                mailbox,
                &e.to_string(),
                Some(&fence),
            ))
            .await;
            if matches!(recorded, Err(StoreError::LeaseLost { .. })) {
                return;
            }
            // Past the limit, a mailbox whose profile's server is down for most of its
            // mailboxes keeps retrying at the capped interval instead of being disabled.
            let held = transient
                && failures >= self.config.max_failures
                && match Box::pin(
                    self.store
                        .hold_for_outage(mailbox, &e.to_string(), Some(&fence)),
                )
                .await
                {
                    Ok(held) => held,
                    Err(StoreError::LeaseLost { .. }) => return,
                    Err(err) => {
                        tracing::warn!(%mailbox, error = %err, "cannot tell whether the server is down for the whole profile");
                        false
                    }
                };
            if held {
                tracing::warn!(%mailbox, failures, "most mailboxes of this profile are failing: the server is down; retrying, not disabling");
            }
            if transient && (failures < self.config.max_failures || held) {
                let wait = self.backoff(mailbox, failures);
                if Box::pin(stopped_during(wait, &mut shutdown)).await {
                    return;
                }
                continue;
            }
            let (kind, message, hint) = if transient {
                let hint = match &e {
                    // The server answered, and kept refusing (e.g. Gmail's "Some messages
                    // could not be FETCHed" for one message that stays so).
                    SyncError::Proto(p) if p.is_rejected() => {
                        "The server kept refusing (its words are above): look at the mailbox in the provider's own web mail, then run Test & Enable Mailbox."
                    }
                    _ => "Check that the mail server is reachable, then run Test & Enable Mailbox.",
                };
                let message = format!("{failures} attempts in a row failed; the last: {e}");
                ("sync_failing", message, hint)
            } else {
                let hint = match &e {
                    SyncError::Token(TokenError::SignInRequired { reason, .. }) => {
                        auth.refused_sign_in_hint(reason)
                    }
                    SyncError::Token(TokenError::NotSignedIn(_)) => auth.sign_in_again_hint(),
                    SyncError::Token(TokenError::Delegation { hint, .. }) => hint.as_str(),
                    SyncError::Proto(p) if p.is_auth_refused() => {
                        "Sign in again (or check the password), then run Test & Enable Mailbox."
                    }
                    _ => "Check the email server profile, then run Test & Enable Mailbox.",
                };
                ("sync_stopped", e.to_string(), hint)
            };
            let _ = Box::pin(self.store.disable_with_alert(
                mailbox,
                kind,
                &message,
                hint,
                Some(&fence),
            ))
            .await;
            return;
        }
    }

    /// The mailbox's profile, read now (settings may have changed), and one [`Engine::pass`]
    /// with it; the profile's kind of login, for the hints if it failed. A future of its own:
    /// in [`Engine::work`]'s, the profile took room twice (the read's result and the value
    /// taken from it) for as long as a session idles.
    async fn profile_pass(
        &self,
        mailbox: &MailboxRecord,
        fence: &Fence,
        shutdown: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> (Result<Pass, SyncError>, AuthMethod) {
        let profile = match Box::pin(self.store.get_profile(mailbox.spec.profile_id)).await {
            Ok(profile) => profile,
            Err(e) => return (Err(SyncError::Store(e)), AuthMethod::Password),
        };
        let result = Box::pin(self.pass(mailbox, &profile, fence, shutdown, failures)).await;
        (result, profile.spec.auth)
    }

    /// One connection's worth of work: an IMAP session (sync, IDLE, sync…) until the token is
    /// due for refresh or `full_check` passes; or, when the profile has no connection to
    /// spare for one more IDLE session, one IMAP sync and the wait after it; or one POP3 pass
    /// and the wait after it. Every successful sync ends the mailbox's run of `failures`.
    ///
    /// The awaited work (login, the sync, IDLE, the database, the waits) is boxed here and in
    /// [`Engine::work`], and the mailbox record is held boxed there: an async fn's state is as
    /// large as its largest await plus whatever it keeps at its own place, so without the
    /// boxes each idling mailbox's task would keep room for work it is not doing (release
    /// build, `RUSTFLAGS=-Zprint-type-sizes` on nightly: `work` 2,936 → 864 bytes plus the
    /// boxed record's 456 and `profile_pass`'s 712, `pass` 2,760 → 2,008 with the POP3 QUIT
    /// and the poll wait boxed; at 10,000 mailboxes that is memory).
    async fn pass(
        &self,
        mailbox: &MailboxRecord,
        profile: &ProfileRecord,
        fence: &Fence,
        shutdown: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<Pass, SyncError> {
        let (credentials, valid_until) = Box::pin(crate::login::credentials(
            &self.store,
            &self.tokens,
            mailbox,
            profile,
        ))
        .await?;
        let target = Target {
            endpoint: crate::login::incoming(profile, self.config.mail_timeout)
                .with_max_message_bytes(self.config.max_message_bytes),
            credentials,
            mailbox,
            profile,
        };
        let mut options = PassOptions {
            since: profile.spec.process_emails_received_after,
            fence: Some(fence.clone()),
            flag_scan: true,
            gmail_sent: None,
        };
        // An IDLE session holds one of the profile's connections for as long as it waits.
        let idle_slot = match profile.spec.incoming.protocol {
            IncomingProtocol::Imap => self.limits.try_idle(profile),
            IncomingProtocol::Pop3 => None,
        };
        let poll = |shutdown: &mut watch::Receiver<bool>| {
            let interval = Duration::from_secs(u64::from(profile.spec.poll_interval_seconds));
            let mut shutdown = shutdown.clone();
            Box::pin(async move {
                Ok(if stopped_during(interval, &mut shutdown).await {
                    Pass::Shutdown
                } else {
                    Pass::Continue
                })
            })
        };
        let Some(idle_slot) = idle_slot else {
            {
                let _global = self.global_permit().await;
                let _slot = self.limits.acquire(profile).await;
                let _connection = self.metrics.connection();
                let report = match profile.spec.incoming.protocol {
                    IncomingProtocol::Imap => {
                        let (s, _, report) =
                            Box::pin(self.open_imap(&target, &mut options)).await?;
                        Box::pin(s.logout()).await;
                        report.sync
                    }
                    IncomingProtocol::Pop3 => {
                        let mut s = Box::pin(Pop3Session::login(
                            &target.endpoint,
                            &self.tls,
                            &target.credentials,
                        ))
                        .await?;
                        let report = Box::pin(sync_maildrop(
                            &self.store,
                            &mut s,
                            mailbox,
                            options.since,
                            Some(fence),
                        ))
                        .await?;
                        Box::pin(s.quit()).await?;
                        report
                    }
                };
                *failures = 0;
                self.metrics
                    .currency
                    .confirmed(mailbox.id, self.clock.now());
                self.metrics.messages_synced.inc_by(report.stored as u64);
                tracing::debug!(mailbox = %mailbox.id, ?report, "polled");
            }
            return poll(shutdown).await;
        };
        let (_connection, mut session, folders) = {
            let _global = self.global_permit().await;
            // Counted from here, not while the pass waited for its turn to connect.
            let connection = self.metrics.connection();
            let (s, folders, report) = Box::pin(self.open_imap(&target, &mut options)).await?;
            *failures = 0;
            self.metrics
                .currency
                .confirmed(mailbox.id, self.clock.now());
            self.metrics
                .messages_synced
                .inc_by(report.sync.stored as u64);
            tracing::debug!(mailbox = %mailbox.id, report = ?report.sync, "synced");
            (connection, s, folders)
        };
        // Without CONDSTORE, every flag is read again at most once per poll interval (IDLE
        // reports changes in INBOX as they happen).
        let scan_every = Duration::from_secs(u64::from(profile.spec.poll_interval_seconds));
        let mut scanned_at = tokio::time::Instant::now();
        // The last pass over every folder, and the last look at the folders other than INBOX
        // (what `STATUS` said of them then).
        let mut synced_at = scanned_at;
        let mut others_checked_at = scanned_at;
        let mut others_seen: Option<Vec<FolderStatus>> = None;
        if !session.has("IDLE") {
            // A server without IDLE is polled, like POP3, at the profile's interval.
            tracing::debug!(mailbox = %mailbox.id, "the server does not offer IDLE: polling");
            Box::pin(session.logout()).await;
            drop((idle_slot, _connection));
            return poll(shutdown).await;
        }
        // Where the server announces changes in the other folders (NOTIFY), they need not be
        // looked at between the full checks.
        let others: Vec<&str> = folders
            .iter()
            .filter(|f| f.name != imap::INBOX)
            .map(|f| f.name.as_str())
            .collect();
        let folder_check = if Box::pin(session.notify_folders(&others)).await? {
            self.config.full_check
        } else {
            self.config.folder_check
        };
        // The folders whose counters a quiet refresh compares. Gmail's IDLE announces new
        // and expunged mail but not a change of labels (nor, reliably, of flags), so on Gmail
        // INBOX is looked at the same way (its HIGHESTMODSEQ moves with every such change).
        let mut watched = others.clone();
        if session.has("X-GM-EXT-1") {
            watched.push(imap::INBOX);
        }
        loop {
            // Leave the session before the token it logged in with expires.
            let left = valid_until.map(|t| (t - self.clock.now()).to_std().unwrap_or_default());
            let wait = left.map_or(self.config.full_check, |l| l.min(self.config.full_check));
            if wait.is_zero() {
                Box::pin(session.logout()).await;
                return Ok(Pass::Continue);
            }
            // Re-issued at least every `idle_refresh`, so a silent connection is found, and
            // every `folder_check` when other folders than INBOX are followed.
            let mut wait = wait.min(self.config.idle_refresh);
            if !watched.is_empty() {
                wait = wait.min(folder_check);
            }
            let until = idle_deadline(tokio::time::Instant::now(), wait, left, self.beat_origin);
            let idled = tokio::select! {
                r = Box::pin(session.idle(until)) => r,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(Pass::Shutdown),
            };
            let (s, outcome) = match idled {
                Ok(idled) => idled,
                Err(e) if refuses_idle(&e) => {
                    // It offered IDLE and then refused it: poll instead, this time round (the
                    // session is gone with the refusal).
                    tracing::info!(mailbox = %mailbox.id, error = %e, "the server refused IDLE: polling");
                    drop((idle_slot, _connection));
                    return poll(shutdown).await;
                }
                Err(e) => return Err(e.into()),
            };
            session = s;
            // Nothing to tell, and the server answered DONE: INBOX is as the last pass left
            // it and the connection is alive, so the mailbox is current without a pass —
            // unless other folders, a flag scan (no CONDSTORE) or the full check are due. This
            // keeps 10,000 idling mailboxes from costing a pass (round trips and reads of the
            // database) each every `idle_refresh`.
            let mut quiet = outcome == IdleOutcome::TimedOut
                && synced_at.elapsed() < self.config.full_check
                && (session.has("CONDSTORE") || scanned_at.elapsed() < scan_every);
            if quiet && !watched.is_empty() && others_checked_at.elapsed() >= folder_check {
                // The watched folders are due: a pass only if their counters moved.
                let seen = Box::pin(statuses(&mut session, &watched)).await?;
                quiet = seen.is_some() && seen == others_seen;
                others_seen = seen;
                others_checked_at = tokio::time::Instant::now();
            }
            if quiet {
                self.metrics
                    .currency
                    .confirmed(mailbox.id, self.clock.now());
                if left.is_some_and(|l| l <= wait) {
                    Box::pin(session.logout()).await;
                    return Ok(Pass::Continue);
                }
                continue;
            }
            // Settings may have changed while idling (tracking rule, disabled).
            let current = Box::pin(self.store.get_mailbox(mailbox.id)).await?;
            if !current.enabled {
                Box::pin(session.logout()).await;
                return Ok(Pass::Continue);
            }
            let _global = self.global_permit().await;
            options.flag_scan =
                outcome == IdleOutcome::Changed || scanned_at.elapsed() >= scan_every;
            if options.flag_scan {
                scanned_at = tokio::time::Instant::now();
            }
            let report = Box::pin(sync_folders(
                &self.store,
                &mut session,
                &current,
                &folders,
                &options,
            ))
            .await?;
            synced_at = tokio::time::Instant::now();
            others_checked_at = synced_at;
            *failures = 0;
            self.metrics
                .currency
                .confirmed(mailbox.id, self.clock.now());
            self.metrics
                .messages_synced
                .inc_by(report.sync.stored as u64);
            tracing::debug!(mailbox = %mailbox.id, report = ?report.sync, ?outcome, "synced");
            if outcome == IdleOutcome::TimedOut && left.is_some_and(|l| l <= wait) {
                Box::pin(session.logout()).await;
                return Ok(Pass::Continue);
            }
        }
    }

    /// The start of every IMAP session: log in, find the folders, sync them.
    async fn open_imap(
        &self,
        target: &Target<'_>,
        options: &mut PassOptions,
    ) -> Result<(ImapSession, Vec<imap::Folder>, imap::MailboxReport), SyncError> {
        let mut s = ImapSession::login(&target.endpoint, &self.tls, &target.credentials).await?;
        let folders = mailbox_folders(&mut s, target.mailbox, target.profile, options).await?;
        let report = sync_folders(&self.store, &mut s, target.mailbox, &folders, options).await?;
        Ok((s, folders, report))
    }

    /// One of the sync passes this node runs at once (`global_limit`).
    async fn global_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.global
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the engine never closes its semaphore"))
    }

    /// Capped exponential backoff with a stable per-mailbox jitter of up to a quarter.
    fn backoff(&self, mailbox: MailboxId, failures: u32) -> Duration {
        let exp = self
            .config
            .backoff_base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
        let capped = exp.min(self.config.backoff_cap);
        capped + spread(mailbox, failures, capped / 4)
    }

    /// The wait before trying again while the database is down or full: the usual backoff,
    /// capped low so the mailbox resumes soon after the database does.
    fn outage_backoff(&self, mailbox: MailboxId, waits: u32) -> Duration {
        self.backoff(mailbox, waits).min(OUTAGE_RETRY_CAP)
    }

    fn stagger_for(&self, mailbox: MailboxId) -> Duration {
        spread(mailbox, 0, self.config.stagger)
    }
}

/// Where a pass connects and as whom: what every session of one pass starts from.
struct Target<'a> {
    endpoint: Endpoint,
    credentials: Credentials,
    mailbox: &'a MailboxRecord,
    profile: &'a ProfileRecord,
}

/// The folders a session synchronizes (see [`imap::folders`]): the profile's and the
/// mailbox's own. On Gmail, the Sent folder is also where a message that leaves INBOX may
/// still be.
async fn mailbox_folders(
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    profile: &ProfileRecord,
    options: &mut PassOptions,
) -> Result<Vec<imap::Folder>, SyncError> {
    let named: Vec<String> = profile
        .spec
        .folders
        .iter()
        .chain(&mailbox.spec.extra_folders)
        .cloned()
        .collect();
    let folders = imap::folders(session, &named).await?;
    if session.has("X-GM-EXT-1") {
        options.gmail_sent = folders.iter().find(|f| f.sent).map(|f| f.name.clone());
    }
    Ok(folders)
}

/// What `STATUS` says of each of `folders`, in order; `None` when the server refused one
/// (deleted, renamed, or STATUS itself): the pass that follows finds out.
async fn statuses(
    session: &mut ImapSession,
    folders: &[&str],
) -> Result<Option<Vec<FolderStatus>>, SyncError> {
    let mut seen = Vec::with_capacity(folders.len());
    for folder in folders {
        match session.status(folder).await {
            Ok(status) => seen.push(status),
            Err(e) if e.is_refusal() => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(seen))
}

/// Whether a failed IDLE was the server refusing the command (NO, or BAD: a command it does
/// not know), rather than the connection failing.
fn refuses_idle(e: &ProtoError) -> bool {
    e.step == "start IDLE" && e.is_refusal()
}

/// At most `max` logins within any `window`: the next one waits for the oldest to leave it.
struct LoginLimiter {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl LoginLimiter {
    fn new(max: usize, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            recent: VecDeque::new(),
        }
    }

    /// How long to wait before the login wanted at `now`; the login is counted at its slot.
    fn next_slot(&mut self, now: Instant) -> Duration {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        let slot = if self.recent.len() < self.max {
            now
        } else {
            let oldest = self.recent.pop_front().unwrap_or(now);
            (oldest + self.window).max(now)
        };
        self.recent.push_back(slot);
        slot - now
    }
}

/// A node's logins, one every `1 / per_second` s at most, in the order they ask (a generic
/// cell rate without burst: a start-up of 10,000 mailboxes at 100 a second takes 100 s, evenly).
struct LoginPace {
    interval: Duration,
    next: std::sync::Mutex<Option<Instant>>,
}

impl LoginPace {
    fn new(per_second: u32) -> Self {
        let interval = match per_second {
            0 => Duration::ZERO,
            n => Duration::from_secs(1) / n,
        };
        Self {
            interval,
            next: std::sync::Mutex::new(None),
        }
    }

    /// How long to wait before the login wanted at `now`; that slot is taken.
    fn slot(&self, now: Instant) -> Duration {
        if self.interval.is_zero() {
            return Duration::ZERO;
        }
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + self.interval);
        slot - now
    }
}

/// The longest beat idle sessions end their waits on ([`on_the_beat`]).
const MAX_BEAT: Duration = Duration::from_secs(1);

/// `deadline`, or the first beat after it: the instants `origin + k × beat`. Logins are spread
/// evenly, so without it the IDLE refreshes of a node's sessions (thousands, each once a minute)
/// fell due at instants as evenly spread, and each woke the runtime, its worker thread and the
/// mail server's process on its own. On the beat, the sessions due within the same second end
/// their waits together, and a wake-up serves them all: a session waits at most one beat (or
/// an eighth of its wait, when shorter) longer than it asked.
fn on_the_beat(
    deadline: tokio::time::Instant,
    origin: tokio::time::Instant,
    beat: Duration,
) -> tokio::time::Instant {
    let beat_nanos = beat.as_nanos();
    if beat_nanos == 0 {
        return deadline;
    }
    let past = deadline.saturating_duration_since(origin).as_nanos() % beat_nanos;
    match u64::try_from(beat_nanos - past) {
        Ok(to_next) if past != 0 => deadline + Duration::from_nanos(to_next),
        _ => deadline,
    }
}

/// When an IDLE wait of `wait` begun at `now` ends: on the beat (an eighth of the wait, a
/// second at most), but never after the token the session logged in with runs out (`left`).
fn idle_deadline(
    now: tokio::time::Instant,
    wait: Duration,
    left: Option<Duration>,
    origin: tokio::time::Instant,
) -> tokio::time::Instant {
    let until = on_the_beat(now + wait, origin, (wait / 8).min(MAX_BEAT));
    left.map_or(until, |left| until.min(now + left))
}

/// Waits `wait` unless the engine stops first: whether it stopped. Every wait of the engine's
/// loops; awaited boxed in [`Engine::work`], so the timer is not part of every worker's
/// future for as long as the worker lives.
async fn stopped_during(wait: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    }
}

/// A pseudo-random share of `window`, stable for a mailbox and a round.
fn spread(mailbox: MailboxId, round: u32, window: Duration) -> Duration {
    let ms = window.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    (mailbox, round).hash(&mut h);
    Duration::from_millis(h.finish() % ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailbridge_proto::ErrorKind;

    #[test]
    fn idle_deadlines_spread_over_a_beat_end_together_on_its_next_tick() {
        let origin = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let beat = Duration::from_secs(1);
        // Sessions that asked for ends anywhere within one beat all end on its next tick.
        for asked in [1, 250, 999] {
            assert_eq!(
                on_the_beat(origin + ms(60_000 + asked), origin, beat),
                origin + ms(61_000),
                "asked for +{asked} ms"
            );
        }
        // One asking for a tick itself is not put off a whole beat.
        assert_eq!(
            on_the_beat(origin + ms(61_000), origin, beat),
            origin + ms(61_000)
        );
        // Nor is any wait with no beat.
        let asked = origin + ms(1_234);
        assert_eq!(on_the_beat(asked, origin, Duration::ZERO), asked);
    }

    #[test]
    fn an_idle_wait_keeps_the_beat_but_ends_before_the_token_runs_out() {
        let origin = tokio::time::Instant::now();
        let now = origin + Duration::from_millis(10_400);
        let minute = Duration::from_secs(60);
        // A minute from 10.4 s ends on the next second...
        assert_eq!(
            idle_deadline(now, minute, None, origin),
            origin + Duration::from_secs(71)
        );
        // ...unless the token runs out before that tick: then when it does.
        let left = Duration::from_millis(60_200);
        assert_eq!(idle_deadline(now, minute, Some(left), origin), now + left);
        // A short wait is put off an eighth of itself at most.
        let short = Duration::from_millis(800);
        let until = idle_deadline(now, short, None, origin);
        assert!(until >= now + short && until <= now + short + short / 8);
    }

    #[test]
    fn logins_beyond_the_limit_wait_for_the_oldest_to_leave_the_window() {
        let minute = Duration::from_secs(60);
        let mut limiter = LoginLimiter::new(3, minute);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(limiter.next_slot(t0), Duration::ZERO);
        assert_eq!(limiter.next_slot(t0 + s(1)), Duration::ZERO);
        assert_eq!(limiter.next_slot(t0 + s(2)), Duration::ZERO);
        // The fourth within the minute waits until the first is a minute old…
        assert_eq!(limiter.next_slot(t0 + s(3)), s(57));
        // …and the fifth, asked for at once, after the second.
        assert_eq!(limiter.next_slot(t0 + s(3)), s(58));
        // Logins spread wider than the window never wait.
        let mut calm = LoginLimiter::new(3, minute);
        for k in 0..10 {
            assert_eq!(calm.next_slot(t0 + s(25 * k)), Duration::ZERO, "login {k}");
        }
    }

    #[test]
    fn the_pace_gives_each_login_its_own_slot_and_no_credit_for_quiet_times() {
        let s = Duration::from_millis;
        let t0 = Instant::now();
        let pace = LoginPace::new(100);
        assert_eq!(pace.slot(t0), Duration::ZERO);
        assert_eq!(pace.slot(t0), s(10));
        assert_eq!(pace.slot(t0 + s(5)), s(15));
        // After a quiet second, the next login goes at once, and the one after waits again.
        assert_eq!(pace.slot(t0 + s(1000)), Duration::ZERO);
        assert_eq!(pace.slot(t0 + s(1000)), s(10));
        let unbounded = LoginPace::new(0);
        for _ in 0..3 {
            assert_eq!(unbounded.slot(t0), Duration::ZERO);
        }
    }

    #[test]
    fn only_a_refused_idle_command_means_polling() {
        let at = |step: &str, kind| ProtoError::new("imap.example.com:993", step, kind);
        let refused = |step| {
            at(
                step,
                ErrorKind::Rejected {
                    words: "IDLE not allowed".into(),
                    transient: false,
                },
            )
        };
        assert!(refuses_idle(&refused("start IDLE")));
        assert!(refuses_idle(&at(
            "start IDLE",
            ErrorKind::Protocol("BAD Unknown command".into())
        )));
        // A connection lost while starting IDLE, or a refusal of another step, is a failure.
        assert!(!refuses_idle(&at(
            "start IDLE",
            ErrorKind::Io("connection reset".into())
        )));
        assert!(!refuses_idle(&refused("wait in IDLE")));
        assert!(!refuses_idle(&refused("open INBOX")));
    }
}
