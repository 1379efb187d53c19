//! [`Config`]: settings from a TOML file and `MAILBRIDGE_*` environment variables, typed and
//! checked at start-up so a mistake is reported before anything runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use url::Url;

/// The file read when `--config` is not given (it may be absent).
pub const DEFAULT_CONFIG_FILE: &str = "mailbridge.toml";
/// The bounds of `max_message_bytes`: below 1 MiB ordinary mail would lose its bodies; above
/// 1 GiB one message could take the process's memory.
const MIN_MESSAGE_BYTES: u64 = 1024 * 1024;
const MAX_MESSAGE_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: PathBuf,
    database_url: Option<String>,
    listen: String,
    http_header_timeout_ms: u64,
    http_body_timeout_ms: u64,
    http_idle_timeout_ms: u64,
    http_max_body_bytes: u64,
    http_max_connections: u32,
    max_test_enable_runs: u32,
    max_pending_sign_ins: u32,
    public_base_url: Option<String>,
    master_key_file: Option<PathBuf>,
    #[serde(skip_serializing)]
    master_key: Option<SecretString>,
    gmail_oauth: bool,
    microsoft_oauth: bool,
    tls_ca_file: Option<PathBuf>,
    plaintext_mail_hosts: String,
    sync_scan_interval_ms: u64,
    sync_stagger_ms: u64,
    sync_logins_per_second: u32,
    sync_folder_check_ms: u64,
    node_name: Option<String>,
    node_group: String,
    lease_ttl_ms: u64,
    node_session_lock: bool,
    event_retention_days: u32,
    max_message_bytes: u64,
    webhook_allow_private_addresses: bool,
    webhook_timeout_ms: u64,
    allowed_return_urls: String,
    log: String,
    log_format: LogFormat,
}

impl Default for Raw {
    fn default() -> Self {
        let limits = mailbridge_web::Limits::default();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            data_dir: PathBuf::from("./mailbridge-data"),
            database_url: None,
            listen: "127.0.0.1:8025".to_owned(),
            http_header_timeout_ms: ms(limits.header_timeout),
            http_body_timeout_ms: ms(limits.body_timeout),
            http_idle_timeout_ms: ms(limits.idle_timeout),
            http_max_body_bytes: limits.max_body_bytes as u64,
            http_max_connections: count(limits.max_connections),
            max_test_enable_runs: count(limits.max_test_enable_runs),
            max_pending_sign_ins: limits.max_pending_sign_ins,
            public_base_url: None,
            master_key_file: None,
            master_key: None,
            gmail_oauth: true,
            microsoft_oauth: true,
            tls_ca_file: None,
            plaintext_mail_hosts: String::new(),
            sync_scan_interval_ms: 5_000,
            sync_stagger_ms: 0,
            sync_logins_per_second: 100,
            sync_folder_check_ms: 20_000,
            node_name: None,
            node_group: mailbridge_core::DEFAULT_NODE_GROUP.to_owned(),
            lease_ttl_ms: 30_000,
            node_session_lock: true,
            event_retention_days: 30,
            max_message_bytes: mailbridge_proto::DEFAULT_MAX_MESSAGE_BYTES as u64,
            webhook_allow_private_addresses: false,
            webhook_timeout_ms: 10_000,
            allowed_return_urls: String::new(),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the master key comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// `MAILBRIDGE_MASTER_KEY`: `<id>:<base64>` entries, the first encrypting.
    Env(SecretString),
    /// A key file, created with one new key (mode 0600) on first run.
    File(PathBuf),
}

#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub listen: SocketAddr,
    /// What clients may hold of this node: HTTP timeouts, sizes, connections, Test & Enable
    /// runs and pending sign-ins.
    pub limits: mailbridge_web::Limits,
    /// Where browsers reach this service; `None` means the listener's own address.
    pub public_base_url: Option<Url>,
    pub master_key: MasterKeySource,
    pub gmail_oauth: bool,
    pub microsoft_oauth: bool,
    /// PEM certificates to trust, besides the public roots, for mail servers with a private CA.
    pub tls_ca: Option<Vec<u8>>,
    /// Mail servers besides this machine that may be reached without TLS (`security: none`).
    pub plaintext_mail_hosts: Vec<String>,
    /// How often the engine looks for newly enabled mailboxes.
    pub sync_scan_interval: std::time::Duration,
    /// New mailbox workers start spread over this window.
    pub sync_stagger: std::time::Duration,
    /// This node's mail sessions log in at most this many times a second (0: no bound).
    pub sync_logins_per_second: u32,
    /// How often an idling session looks at the folders other than INBOX (Sent).
    pub sync_folder_check: std::time::Duration,
    /// This node's name in `mailbridge nodes` (default: the host name).
    pub node_name: String,
    /// `cloud`, or the router group whose `email_router` mailboxes this node works.
    pub node_group: String,
    /// How long a mailbox lease lasts unless renewed (a dead node's mailboxes move after it).
    pub lease_ttl: std::time::Duration,
    /// PostgreSQL: whether this node holds a session lock, by which the others tell its death
    /// from a late heartbeat (off behind a pooler in transaction mode).
    pub node_session_lock: bool,
    /// How long events stay in the event log (and so in the feed and for webhook retries).
    pub event_retention: chrono::Duration,
    /// A message larger than this is stored as its header only (`truncated`).
    pub max_message_bytes: usize,
    /// Whether webhooks may be delivered to private, loopback and link-local addresses.
    pub webhook_allow_private_addresses: bool,
    /// No answer from a webhook endpoint within this is a failed attempt.
    pub webhook_timeout: std::time::Duration,
    /// Where hosted sign-ins may send users back to (URL prefixes).
    pub allowed_return_urls: Vec<Url>,
    pub log: String,
    pub log_format: LogFormat,
}

impl Config {
    /// Reads `file` (or `mailbridge.toml` when present), then the environment over it.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Raw::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    bail!("the configuration file {} does not exist", path.display());
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let raw: Raw = figment
            // MAILBRIDGE_TEST_* belong to the test suite (e.g. MAILBRIDGE_TEST_DATABASE).
            .merge(
                Env::prefixed("MAILBRIDGE_")
                    .ignore(&["config"])
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_")),
            )
            .extract()
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        Self::check(raw)
    }

    fn check(raw: Raw) -> anyhow::Result<Self> {
        let listen: SocketAddr = raw.listen.parse().with_context(|| {
            format!(
                "listen = '{}' is not an address and port such as 127.0.0.1:8025 (set it in the config file or MAILBRIDGE_LISTEN)",
                raw.listen
            )
        })?;
        let limits = limits(&raw)?;
        let public_base_url = match raw.public_base_url {
            Some(u) => {
                let url = Url::parse(&u).with_context(|| {
                    format!("public_base_url = '{u}' is not a URL such as https://mail.example.com (MAILBRIDGE_PUBLIC_BASE_URL)")
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    bail!(
                        "public_base_url = '{u}' must be an http:// or https:// address that browsers reach this service at"
                    );
                }
                Some(url)
            }
            None => None,
        };
        let database_url = match raw.database_url {
            Some(u)
                if u.starts_with("sqlite:")
                    || u.starts_with("postgres:")
                    || u.starts_with("postgresql:") =>
            {
                u
            }
            Some(u) => bail!(
                "database_url = '{}' is not supported; use sqlite://<file> or postgres://<user>@<host>/<database> (MAILBRIDGE_DATABASE_URL)",
                mailbridge_store::redact_url(&u)
            ),
            None => format!(
                "sqlite://{}?mode=rwc",
                raw.data_dir.join("mailbridge.db").display()
            ),
        };
        let master_key = match raw.master_key {
            Some(k) => MasterKeySource::Env(k),
            None => MasterKeySource::File(
                raw.master_key_file
                    .unwrap_or_else(|| raw.data_dir.join("master.key")),
            ),
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.log).is_err() {
            bail!(
                "log = '{}' is not a log filter such as info or mailbridge=debug (MAILBRIDGE_LOG)",
                raw.log
            );
        }
        let tls_ca = match &raw.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!(
                        "cannot read tls_ca_file {} (MAILBRIDGE_TLS_CA_FILE)",
                        path.display()
                    )
                })?;
                mailbridge_proto::TlsSettings::new(Some(&pem)).map_err(|e| {
                    anyhow::anyhow!(
                        "tls_ca_file {} (MAILBRIDGE_TLS_CA_FILE): {e}",
                        path.display()
                    )
                })?;
                Some(pem)
            }
            None => None,
        };
        let plaintext_mail_hosts = raw
            .plaintext_mail_hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                mailbridge_core::Host::parse(h, "plaintext_mail_hosts")
                    .map(|h| h.to_string())
                    .map_err(|e| anyhow::anyhow!("{} (MAILBRIDGE_PLAINTEXT_MAIL_HOSTS)", e))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        mailbridge_core::validate_node_group(&raw.node_group, "node_group")
            .map_err(|e| anyhow::anyhow!("{} (MAILBRIDGE_NODE_GROUP)", e.message))?;
        let allowed_return_urls = raw
            .allowed_return_urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let url = Url::parse(u).with_context(|| {
                    format!("allowed_return_urls: '{u}' is not a URL such as https://crm.example.com/mailbridge/ (MAILBRIDGE_ALLOWED_RETURN_URLS)")
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    bail!("allowed_return_urls: '{u}' must be an http:// or https:// address (MAILBRIDGE_ALLOWED_RETURN_URLS)");
                }
                Ok(url)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if !(1_000..=120_000).contains(&raw.webhook_timeout_ms) {
            bail!(
                "webhook_timeout_ms = {} is out of range; use 1000 to 120000 (MAILBRIDGE_WEBHOOK_TIMEOUT_MS)",
                raw.webhook_timeout_ms
            );
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&raw.max_message_bytes) {
            bail!(
                "max_message_bytes = {} is out of range; use {MIN_MESSAGE_BYTES} (1 MiB) to {MAX_MESSAGE_BYTES} (1 GiB) (MAILBRIDGE_MAX_MESSAGE_BYTES)",
                raw.max_message_bytes
            );
        }
        if !(1..=3650).contains(&raw.event_retention_days) {
            bail!(
                "event_retention_days = {} is out of range; use 1 to 3650 days (MAILBRIDGE_EVENT_RETENTION_DAYS)",
                raw.event_retention_days
            );
        }
        if !(1_000..=3_600_000).contains(&raw.sync_folder_check_ms) {
            bail!(
                "sync_folder_check_ms = {} is out of range; use 1000 (a second) to 3600000 (an hour) (MAILBRIDGE_SYNC_FOLDER_CHECK_MS)",
                raw.sync_folder_check_ms
            );
        }
        if raw.lease_ttl_ms < 1_000 {
            bail!(
                "lease_ttl_ms = {} is too short; use at least 1000 (MAILBRIDGE_LEASE_TTL_MS)",
                raw.lease_ttl_ms
            );
        }
        let node_name = match raw.node_name.map(|n| n.trim().to_owned()) {
            Some(n) if n.is_empty() || n.len() > 128 => {
                bail!("node_name must be 1 to 128 characters (MAILBRIDGE_NODE_NAME)")
            }
            Some(n) => n,
            None => std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "mailbridge".to_owned()),
        };
        Ok(Self {
            data_dir: raw.data_dir,
            database_url,
            listen,
            limits,
            public_base_url,
            master_key,
            gmail_oauth: raw.gmail_oauth,
            microsoft_oauth: raw.microsoft_oauth,
            tls_ca,
            plaintext_mail_hosts,
            sync_scan_interval: std::time::Duration::from_millis(raw.sync_scan_interval_ms.max(10)),
            sync_stagger: std::time::Duration::from_millis(raw.sync_stagger_ms),
            sync_logins_per_second: raw.sync_logins_per_second,
            sync_folder_check: std::time::Duration::from_millis(raw.sync_folder_check_ms),
            node_name,
            node_group: raw.node_group,
            lease_ttl: std::time::Duration::from_millis(raw.lease_ttl_ms),
            node_session_lock: raw.node_session_lock,
            event_retention: chrono::Duration::days(i64::from(raw.event_retention_days)),
            max_message_bytes: usize::try_from(raw.max_message_bytes).unwrap_or(usize::MAX),
            webhook_allow_private_addresses: raw.webhook_allow_private_addresses,
            webhook_timeout: std::time::Duration::from_millis(raw.webhook_timeout_ms),
            allowed_return_urls,
            log: raw.log,
            log_format: raw.log_format,
        })
    }
}

impl Config {
    /// The public base URL, or the bound address as a browser on this machine would type it
    /// (a wildcard listener is reached through loopback).
    pub fn public_base_url_for(&self, bound: SocketAddr) -> anyhow::Result<Url> {
        if let Some(url) = &self.public_base_url {
            return Ok(url.clone());
        }
        let host = match bound {
            SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
            SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
            other => other.to_string(),
        };
        Url::parse(&format!("http://{host}")).context(
            "cannot derive public_base_url from the listener; set MAILBRIDGE_PUBLIC_BASE_URL",
        )
    }
}

/// The HTTP server's limits, each within a range that makes sense (0 would refuse every
/// request; a timeout of years would overflow the clock).
fn limits(raw: &Raw) -> anyhow::Result<mailbridge_web::Limits> {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let timeout = |name: &str, value: u64| {
        if !(100..=DAY_MS).contains(&value) {
            bail!(
                "{name} = {value} is out of range; use 100 to {DAY_MS} milliseconds (MAILBRIDGE_{})",
                name.to_ascii_uppercase()
            );
        }
        Ok(std::time::Duration::from_millis(value))
    };
    let count = |name: &str, value: u32| {
        if value == 0 {
            bail!(
                "{name} = 0 would refuse everything; use 1 or more (MAILBRIDGE_{})",
                name.to_ascii_uppercase()
            );
        }
        Ok(value as usize)
    };
    let max_body_bytes = match usize::try_from(raw.http_max_body_bytes) {
        Ok(n) if n >= 1024 => n,
        _ => bail!(
            "http_max_body_bytes = {} is out of range; use at least 1024 (MAILBRIDGE_HTTP_MAX_BODY_BYTES)",
            raw.http_max_body_bytes
        ),
    };
    Ok(mailbridge_web::Limits {
        header_timeout: timeout("http_header_timeout_ms", raw.http_header_timeout_ms)?,
        body_timeout: timeout("http_body_timeout_ms", raw.http_body_timeout_ms)?,
        idle_timeout: timeout("http_idle_timeout_ms", raw.http_idle_timeout_ms)?,
        max_body_bytes,
        max_connections: count("http_max_connections", raw.http_max_connections)?,
        max_test_enable_runs: count("max_test_enable_runs", raw.max_test_enable_runs)?,
        max_pending_sign_ins: count("max_pending_sign_ins", raw.max_pending_sign_ins)? as u32,
    })
}

/// A figment error in words: which setting, from where, and what was expected.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &e.path.first() {
                    Some(_) => format!(" (from {})", m.name),
                    None => String::new(),
                })
                .unwrap_or_default();
            let key_hint = if key.is_empty() {
                String::new()
            } else {
                format!(
                    "setting '{key}' (MAILBRIDGE_{}){source}: ",
                    key.to_ascii_uppercase()
                )
            };
            format!("invalid configuration: {key_hint}{}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Raw {
        Raw::default()
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = Config::check(raw()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8025");
        assert_eq!(
            c.public_base_url_for(c.listen).unwrap().as_str(),
            "http://127.0.0.1:8025/"
        );
        assert!(
            c.database_url
                .starts_with("sqlite://./mailbridge-data/mailbridge.db")
        );
        assert!(matches!(c.master_key, MasterKeySource::File(p) if p.ends_with("master.key")));
    }

    #[test]
    fn bad_values_name_the_setting_and_its_variable() {
        let e = Config::check(Raw {
            listen: "localhost".into(),
            ..raw()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("MAILBRIDGE_LISTEN"), "{e:#}");
        let e = Config::check(Raw {
            database_url: Some("mysql://u:pw@h/db".into()),
            ..raw()
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("MAILBRIDGE_DATABASE_URL") && !msg.contains("pw@"),
            "{msg}"
        );
        let e = Config::check(Raw {
            public_base_url: Some("ftp://x".into()),
            ..raw()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("http"), "{e:#}");
        let e = Config::check(Raw {
            log: "info,[".into(),
            ..raw()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("MAILBRIDGE_LOG"), "{e:#}");
        for (bad, variable) in [
            (
                Raw {
                    node_group: "Office Berlin".into(),
                    ..raw()
                },
                "MAILBRIDGE_NODE_GROUP",
            ),
            (
                Raw {
                    lease_ttl_ms: 999,
                    ..raw()
                },
                "MAILBRIDGE_LEASE_TTL_MS",
            ),
            (
                Raw {
                    sync_folder_check_ms: 999,
                    ..raw()
                },
                "MAILBRIDGE_SYNC_FOLDER_CHECK_MS",
            ),
            (
                Raw {
                    event_retention_days: 0,
                    ..raw()
                },
                "MAILBRIDGE_EVENT_RETENTION_DAYS",
            ),
            (
                Raw {
                    max_message_bytes: 1000,
                    ..raw()
                },
                "MAILBRIDGE_MAX_MESSAGE_BYTES",
            ),
            (
                Raw {
                    allowed_return_urls: "https://crm.example.com/, ftp://x".into(),
                    ..raw()
                },
                "MAILBRIDGE_ALLOWED_RETURN_URLS",
            ),
            (
                Raw {
                    plaintext_mail_hosts: "mail.office.lan, not a host".into(),
                    ..raw()
                },
                "MAILBRIDGE_PLAINTEXT_MAIL_HOSTS",
            ),
            (
                Raw {
                    node_name: Some("   ".into()),
                    ..raw()
                },
                "MAILBRIDGE_NODE_NAME",
            ),
            (
                Raw {
                    node_name: Some("n".repeat(129)),
                    ..raw()
                },
                "MAILBRIDGE_NODE_NAME",
            ),
        ] {
            let e = Config::check(bad).unwrap_err();
            assert!(format!("{e:#}").contains(variable), "{e:#}");
        }
    }

    #[test]
    fn http_limits_default_to_the_documented_values_and_refuse_nonsense() {
        let c = Config::check(raw()).unwrap();
        assert_eq!(c.limits, mailbridge_web::Limits::default());
        assert_eq!(c.limits.header_timeout.as_millis(), 10_000);
        assert_eq!(c.limits.body_timeout.as_millis(), 30_000);
        assert_eq!(c.limits.idle_timeout.as_millis(), 60_000);
        assert_eq!(c.limits.max_body_bytes, 26_214_400);
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.limits.max_test_enable_runs, 8);
        assert_eq!(c.limits.max_pending_sign_ins, 5);
        let c = Config::check(Raw {
            http_header_timeout_ms: 1_500,
            http_max_connections: 3,
            ..raw()
        })
        .unwrap();
        assert_eq!(c.limits.header_timeout.as_millis(), 1_500);
        assert_eq!(c.limits.max_connections, 3);
        for (bad, variable) in [
            (
                Raw {
                    http_header_timeout_ms: 0,
                    ..raw()
                },
                "MAILBRIDGE_HTTP_HEADER_TIMEOUT_MS",
            ),
            (
                Raw {
                    http_body_timeout_ms: 0,
                    ..raw()
                },
                "MAILBRIDGE_HTTP_BODY_TIMEOUT_MS",
            ),
            (
                Raw {
                    http_idle_timeout_ms: u64::MAX,
                    ..raw()
                },
                "MAILBRIDGE_HTTP_IDLE_TIMEOUT_MS",
            ),
            (
                Raw {
                    http_max_body_bytes: 0,
                    ..raw()
                },
                "MAILBRIDGE_HTTP_MAX_BODY_BYTES",
            ),
            (
                Raw {
                    http_max_connections: 0,
                    ..raw()
                },
                "MAILBRIDGE_HTTP_MAX_CONNECTIONS",
            ),
            (
                Raw {
                    max_test_enable_runs: 0,
                    ..raw()
                },
                "MAILBRIDGE_MAX_TEST_ENABLE_RUNS",
            ),
            (
                Raw {
                    max_pending_sign_ins: 0,
                    ..raw()
                },
                "MAILBRIDGE_MAX_PENDING_SIGN_INS",
            ),
        ] {
            let e = format!("{:#}", Config::check(bad).unwrap_err());
            assert!(e.contains(variable), "{e}");
            let setting = variable
                .trim_start_matches("MAILBRIDGE_")
                .to_ascii_lowercase();
            assert!(e.starts_with(&setting), "{e}");
        }
    }

    #[test]
    fn a_wildcard_listener_gets_a_loopback_public_url() {
        let c = Config::check(Raw {
            listen: "0.0.0.0:9000".into(),
            ..raw()
        })
        .unwrap();
        assert_eq!(
            c.public_base_url_for(c.listen).unwrap().as_str(),
            "http://127.0.0.1:9000/"
        );
        let c = Config::check(Raw {
            public_base_url: Some("https://mail.example.com".into()),
            ..raw()
        })
        .unwrap();
        assert_eq!(
            c.public_base_url_for(c.listen).unwrap().as_str(),
            "https://mail.example.com/"
        );
    }
}
