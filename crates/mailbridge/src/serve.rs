//! `mailbridge serve`: bind, migrate, serve until SIGINT or SIGTERM, then drain.

use std::sync::Arc;

use anyhow::Context;
use mailbridge_core::SystemClock;
use mailbridge_proto::TlsSettings;
use mailbridge_sync::{Engine, EngineConfig};
use mailbridge_web::{AppState, Services, WebConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

/// Bound on connecting to a mail server and on every read from it.
const MAIL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = crate::open_store(&config).await?;
    let store = if config.node_session_lock {
        store
    } else {
        store.without_node_session_locks()
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (MAILBRIDGE_LISTEN)", config.listen))?;
    let local = listener.local_addr()?;
    let web = WebConfig {
        public_base_url: config.public_base_url_for(local)?,
        gmail_oauth: config.gmail_oauth,
        microsoft_oauth: config.microsoft_oauth,
        limits: config.limits.clone(),
        webhook_allow_private: config.webhook_allow_private_addresses,
        allowed_return_urls: config.allowed_return_urls.clone(),
    };
    // One line a person (or a test on port 0) reads to find the service.
    println!("mailbridge listening on http://{local}");
    tracing::info!(
        %local,
        console = %format!("{}/console", web.public_base_url.as_str().trim_end_matches('/')),
        api = %format!("http://{local}/api/v1"),
        oauth_redirect_uri = %web.oauth_redirect_uri(),
        database = %mailbridge_store::redact_url(&config.database_url),
        "serving"
    );
    // Each mailbox a node holds keeps a connection open: as many files as the hard limit
    // allows, and a clear word when that is too few (the enabled mailboxes of all nodes bound
    // what this one may take).
    let enabled = u64::try_from(store.count_enabled_mailboxes().await?).unwrap_or(0);
    let http_connections = u64::try_from(config.limits.max_connections).unwrap_or(u64::MAX);
    let needed = crate::open_files::needed(enabled, http_connections);
    match crate::open_files::raise() {
        Ok(open_files) if open_files < needed => tracing::warn!(
            open_files,
            needed,
            enabled_mailboxes = enabled,
            "the open-file limit is too low for the enabled mailboxes and http_max_connections: raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) to at least {needed}"
        ),
        Ok(open_files) => tracing::info!(open_files, needed, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    if store.count_users().await? == 0 {
        tracing::warn!(
            "no users yet: create the first admin with 'mailbridge users create --email you@example.com --role admin'"
        );
    }
    let tls = TlsSettings::new(config.tls_ca.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?
        .with_plaintext_hosts(&config.plaintext_mail_hosts);
    // SMTP EHLO names this service by its public host.
    let client_name = web
        .public_base_url
        .host_str()
        .unwrap_or("localhost")
        .to_owned();
    let clock = Arc::new(SystemClock);
    let services = Services {
        clock: clock.clone(),
        http: mailbridge_oauth::Provider::http_client(),
        tls: tls.clone(),
        mail_timeout: MAIL_TIMEOUT,
    };
    let state = AppState::new(store.clone(), web, services);
    let engine = Engine::new(
        store.clone(),
        state.tokens.clone(),
        tls,
        clock,
        EngineConfig {
            mail_timeout: MAIL_TIMEOUT,
            client_name,
            scan_interval: config.sync_scan_interval,
            stagger: config.sync_stagger,
            logins_per_second: config.sync_logins_per_second,
            folder_check: config.sync_folder_check,
            node_name: config.node_name.clone(),
            node_group: config.node_group.clone(),
            lease_ttl: config.lease_ttl,
            event_retention: config.event_retention,
            max_message_bytes: config.max_message_bytes,
            webhooks: mailbridge_sync::WebhookSettings {
                allow_private: config.webhook_allow_private_addresses,
                timeout: config.webhook_timeout,
                ..mailbridge_sync::WebhookSettings::default()
            },
            ..EngineConfig::default()
        },
        state.metrics.clone(),
        state.connection_limits.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    // Listening for the signals starts here, before the first request can be answered: a
    // listener made on the shutdown future's first poll could miss a SIGTERM sent to a
    // service that already answered /readyz (the signal's default action would kill it).
    let signals = shutdown_signal();
    let engine = tokio::spawn(engine.run(stopped));
    mailbridge_web::serve(listener, state, async move {
        signals.await;
        let _ = stop.send(true);
    })
    .await?;
    engine.await?;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the call on; the future completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let listeners = {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .inspect_err(|e| tracing::error!(error = %e, "cannot listen for {name}"))
                .ok()
        };
        (
            listen(SignalKind::interrupt(), "SIGINT"),
            listen(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (int, term) = listeners;
            let received = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(int) => {}
                () = received(term) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing requests in flight");
    }
}
