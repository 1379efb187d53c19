//! Real peers for Mailbridge's tests, each started on a free port and stopped on drop —
//! [`OAuthProvider`] (npm `oauth2-mock-server` with per-account state) — and Mailbridge itself
//! in-process ([`TestApp`]) with a [`ManualClock`] where time matters.

mod app;
mod clock;
mod oauth;

pub use app::{ApiClient, TestApp, assert_error};
pub use clock::ManualClock;
pub use oauth::OAuthProvider;
