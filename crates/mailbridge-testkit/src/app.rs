//! [`TestApp`]: Mailbridge's HTTP service in-process on port 0 with its own database (a SQLite
//! file, or a PostgreSQL database with `MAILBRIDGE_TEST_DATABASE=postgres`), and
//! [`ApiClient`], which talks to it over real HTTP and remembers every body it was sent.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailbridge_core::{Clock, EmailAddress, Role, SystemClock};
use mailbridge_proto::TlsSettings;
use mailbridge_store::{Actor, Keyring, Store};
use mailbridge_sync::{Engine, EngineConfig};
use mailbridge_web::{AppState, Limits, Services, WebConfig};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::TestDatabase;
use tokio::sync::oneshot;

pub struct TestApp {
    pub base: String,
    pub store: Store,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: Option<tokio::task::JoinHandle<()>>,
    engine_stop: tokio::sync::watch::Sender<bool>,
}

/// How a [`TestApp`] differs from the defaults.
pub struct AppOptions {
    pub clock: Arc<dyn Clock>,
    pub gmail_oauth: bool,
    pub microsoft_oauth: bool,
    /// A CA to trust for mail servers' TLS (the test Dovecot's).
    pub extra_ca_pem: Option<String>,
    /// Bound on connecting and on every read in mail protocol calls.
    pub mail_timeout: Duration,
    /// Runs the sync engine with this configuration.
    pub engine: Option<EngineConfig>,
    /// Where the data lives; by default from `MAILBRIDGE_TEST_DATABASE`.
    pub database: TestDatabase,
    /// The HTTP server's limits (small ones make slow clients quick to test).
    pub limits: Limits,
    /// Whether webhooks may reach private and loopback addresses (the API and the engine):
    /// true by default, since every test receiver is on this machine.
    pub webhook_allow_private: bool,
    /// `allowed_return_urls` for hosted sign-in.
    pub allowed_return_urls: Vec<reqwest::Url>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            gmail_oauth: true,
            microsoft_oauth: true,
            extra_ca_pem: None,
            mail_timeout: Duration::from_secs(20),
            engine: None,
            database: TestDatabase::from_env(),
            limits: Limits::default(),
            webhook_allow_private: true,
            allowed_return_urls: Vec::new(),
        }
    }
}

impl TestApp {
    /// A server with the default options.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, AppOptions::default()).await
    }

    /// Opens (or reopens) the data in `dir` and serves it on a free port.
    pub async fn start_with(dir: &Path, options: AppOptions) -> anyhow::Result<Self> {
        let AppOptions {
            clock,
            gmail_oauth,
            microsoft_oauth,
            extra_ca_pem,
            mail_timeout,
            engine,
            database,
            limits,
            webhook_allow_private,
            allowed_return_urls,
        } = options;
        let keyring = Keyring::load_or_create(&dir.join("master.key"))?;
        let url = database.url_for(dir).await?;
        let store = Store::connect(&url, keyring, clock.clone()).await?;
        store.migrate().await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = WebConfig {
            public_base_url: format!("http://{addr}").parse()?,
            gmail_oauth,
            microsoft_oauth,
            limits,
            webhook_allow_private,
            allowed_return_urls,
        };
        let tls = TlsSettings::new(extra_ca_pem.as_deref().map(str::as_bytes))
            .map_err(|e| anyhow::anyhow!(e))?;
        let services = Services {
            clock: clock.clone(),
            http: reqwest::Client::new(),
            tls: tls.clone(),
            mail_timeout,
        };
        let state = AppState::new(store.clone(), config, services);
        let (engine_stop, engine_stopped) = tokio::sync::watch::channel(false);
        let engine = engine.map(|mut config| {
            config.webhooks.allow_private = webhook_allow_private;
            let engine = Engine::new(
                store.clone(),
                state.tokens.clone(),
                tls,
                clock,
                config,
                state.metrics.clone(),
                state.connection_limits.clone(),
            );
            tokio::spawn(engine.run(engine_stopped))
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mailbridge_web::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            base: format!("http://{addr}"),
            store,
            stop,
            task,
            engine,
            engine_stop,
        })
    }

    /// Stops serving (requests in flight finish) and closes the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        let _ = self.engine_stop.send(true);
        if let Some(engine) = self.engine {
            engine.await?;
        }
        self.store.close().await;
        Ok(())
    }

    /// A user made the way `mailbridge users create` makes one: (id, API token).
    pub async fn user(&self, email: &str, role: Role) -> anyhow::Result<(String, String)> {
        let email = EmailAddress::parse(email, "email").map_err(|e| anyhow::anyhow!(e))?;
        let (u, t) = self.store.create_user(&Actor::cli(), &email, role).await?;
        Ok((u.id.to_string(), t.reveal().to_owned()))
    }
}

/// An HTTP client for the API that keeps every response body it saw, so a test can prove a
/// secret was never returned.
#[derive(Default)]
pub struct ApiClient {
    pub http: reqwest::Client,
    seen: Mutex<String>,
}

impl ApiClient {
    /// Sends a request; the body is JSON when it parses, else a JSON string. A transport
    /// failure (the server is not there) fails the test.
    pub async fn call(
        &self,
        app: &TestApp,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let what = format!("{method} {path}");
        self.try_call(app, method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e:#}"))
    }

    async fn try_call(
        &self,
        app: &TestApp,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", app.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_str(&text);
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn get(&self, app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(app, Method::GET, path, Some(token), None).await
    }

    pub async fn post(
        &self,
        app: &TestApp,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(app, Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(
        &self,
        app: &TestApp,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(app, Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(app, Method::DELETE, path, Some(token), None)
            .await
    }

    /// Every response body seen so far, concatenated.
    pub fn seen(&self) -> String {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Asserts an error response: status, stable code, a real message, and the field named.
#[track_caller]
pub fn assert_error(
    got: &(StatusCode, Value),
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.len() > 10),
        "{}",
        got.1
    );
    if let Some(f) = field {
        assert_eq!(got.1["error"]["field"], f, "{}", got.1);
    }
}
