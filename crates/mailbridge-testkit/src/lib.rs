//! Real peers for Mailbridge's tests, each started on a free port and stopped on drop —
//! [`OAuthProvider`] (npm `oauth2-mock-server` with per-account state), [`Dovecot`] (IMAP, POP3
//! and submission validating tokens at that provider), headless Chromium ([`Browser`]) — and Mailbridge itself
//! in-process ([`TestApp`]) with a [`ManualClock`] where time matters.

mod app;
mod browser;
mod clock;
pub mod corpus;
mod dovecot;
mod gmail;
mod node;
mod oauth;
pub mod process;
mod proxy;
mod webhooks;
mod world;

pub use app::{ApiClient, AppOptions, TestApp, assert_error};
pub use browser::{Browser, screenshot_dir};
pub use clock::ManualClock;
pub use dovecot::{Dovecot, ImapLogin, Ports};
pub use gmail::{GMAIL_ERROR_CHALLENGE, GMAIL_INBOX, GMAIL_SENT, ScriptedGmail};
pub use mailbridge_testdb::{Postgres, TestDatabase};
pub use oauth::OAuthProvider;
pub use proxy::{Action, CountingProxy, Fault, Step, Times};
pub use webhooks::{Answer, WebhookReceiver};
pub use world::MailWorld;
