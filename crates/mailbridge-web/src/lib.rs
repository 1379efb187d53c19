//! Mailbridge's HTTP surface: the REST API under `/api/v1` (bearer tokens, JSON, an OpenAPI
//! document), health probes, and — later — the console. [`serve`] takes a bound listener and
//! a shutdown signal, so tests run many servers on port 0.

pub mod auth;
mod body;
mod console;
pub mod error;
pub mod json;
mod limits;
mod openapi;
pub mod query;
mod routes;
mod server;

pub use limits::{Limits, TEST_RUN_RETRY_AFTER_SECS, TestRuns};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use mailbridge_core::Clock;
use mailbridge_proto::TlsSettings;
use mailbridge_store::Store;
use mailbridge_sync::{ConnectionLimits, Metrics, RefreshPolicy, SignIn, Tester, TokenService};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use url::Url;

use crate::body::BodyLimits;

/// What the web layer needs from configuration.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where users' browsers reach this service; the OAuth redirect URI hangs off it.
    pub public_base_url: Url,
    /// Whether "Sign in to Gmail" is offered here.
    pub gmail_oauth: bool,
    /// Whether "Sign in with Microsoft" is offered here.
    pub microsoft_oauth: bool,
    /// Time, size and concurrency limits on what clients may hold of this node.
    pub limits: Limits,
    /// Whether webhooks may point at private, loopback and link-local addresses.
    pub webhook_allow_private: bool,
    /// Where a hosted sign-in may send the user back to: a `return_url` must start with one
    /// of these (same scheme, host and port, and a path under this one's).
    pub allowed_return_urls: Vec<Url>,
}

impl WebConfig {
    /// Why a profile signing in with `auth` may not sign in here, when it is turned off.
    pub fn sign_in_turned_off(&self, auth: mailbridge_core::AuthMethod) -> Option<&'static str> {
        use mailbridge_core::AuthMethod;
        match auth {
            AuthMethod::GmailOauth if !self.gmail_oauth => Some(
                "Sign in to Gmail is turned off on this installation (gmail_oauth = false); ask an admin",
            ),
            AuthMethod::MicrosoftOauth if !self.microsoft_oauth => Some(
                "Sign in with Microsoft is turned off on this installation (microsoft_oauth = false); ask an admin",
            ),
            _ => None,
        }
    }

    /// The redirect URI to register with the OAuth provider (Google Cloud console).
    pub fn oauth_redirect_uri(&self) -> String {
        format!(
            "{}/oauth/callback",
            self.public_base_url.as_str().trim_end_matches('/')
        )
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: WebConfig,
    pub signin: Arc<SignIn>,
    pub tester: Arc<Tester>,
    /// Shared with the sync engine, so one refresh serves both.
    pub tokens: Arc<TokenService>,
    pub clock: Arc<dyn Clock>,
    /// Counted by the sync engine, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Which mail servers are trusted, and which may be reached without TLS.
    pub mail_tls: TlsSettings,
    /// Each profile's connection slots, shared by Test & Enable and the sync engine.
    pub connection_limits: Arc<ConnectionLimits>,
    /// Test & Enable runs in progress on this node, within `HttpLimits::max_test_enable_runs`.
    pub test_runs: TestRuns,
}

/// What the services behind the API are built from.
pub struct Services {
    pub clock: Arc<dyn Clock>,
    /// For OAuth providers.
    pub http: reqwest::Client,
    /// Which certificates mail servers may present.
    pub tls: TlsSettings,
    /// Bound on connecting to a mail server and on every read from it.
    pub mail_timeout: Duration,
}

impl AppState {
    /// Wires the sign-in flow, the token service and Test & Enable over one store.
    pub fn new(store: Store, config: WebConfig, services: Services) -> Self {
        let Services {
            clock,
            http,
            tls,
            mail_timeout,
        } = services;
        let redirect = config.oauth_redirect_uri();
        let signin = SignIn::new(store.clone(), http.clone(), clock.clone(), redirect.clone())
            .with_max_pending(config.limits.max_pending_sign_ins);
        let test_runs = TestRuns::new(config.limits.max_test_enable_runs);
        let app_clock = clock.clone();
        let tokens = TokenService::new(
            store.clone(),
            http,
            clock,
            redirect,
            RefreshPolicy::default(),
        );
        // SMTP EHLO names this service by its public host.
        let client_name = config
            .public_base_url
            .host_str()
            .unwrap_or("localhost")
            .to_owned();
        let tokens = Arc::new(tokens);
        let connection_limits = Arc::new(ConnectionLimits::default());
        let tester = Tester::new(
            store.clone(),
            tokens.clone(),
            tls.clone(),
            mail_timeout,
            client_name,
            connection_limits.clone(),
        );
        Self {
            store,
            config,
            signin: Arc::new(signin),
            tester: Arc::new(tester),
            tokens,
            clock: app_clock,
            metrics: Arc::new(Metrics::default()),
            mail_tls: tls,
            connection_limits,
            test_runs,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    let body = BodyLimits {
        max_bytes: limits.max_body_bytes,
        timeout: limits.body_timeout,
    };
    Router::new()
        .merge(routes::system::routes())
        .merge(routes::oauth::routes())
        .nest("/api/v1", routes::api())
        .merge(console::routes())
        .layer(axum::middleware::from_fn_with_state(body, body::limit_body))
        // The extractors that buffer a body (JSON, forms) stop at the same size.
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight, within
/// `state.config.limits`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    server::run(listener, router(state), limits, shutdown).await
}
