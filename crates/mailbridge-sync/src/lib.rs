//! The engine's services: signing mailboxes in ([`SignIn`]) and handing protocol code a valid
//! access token ([`TokenService`]), and "Test & Enable Mailbox" ([`Tester`]). The scheduler
//! and the incoming/outgoing sync build on them.

pub mod currency;
pub mod engine;
pub mod flags;
pub mod incoming;
pub mod limits;
mod login;
pub mod metrics;
pub mod outgoing;
mod provider;
pub mod signin;
pub mod test_enable;
pub mod tokens;
pub mod webhooks;

pub use engine::{Engine, EngineConfig};
pub use flags::{FlagChange, FlagError};
pub use limits::ConnectionLimits;
pub use mailbridge_oauth::ServiceAccount;
pub use metrics::Metrics;
pub use signin::{
    Callback, DEFAULT_MAX_PENDING_SIGN_INS, Disconnected, LinkRefused, ReturnTo, SignIn,
    SignInError,
};
pub use test_enable::{ProfileTestSummary, Tester};
pub use tokens::{AccessToken, RefreshPolicy, TokenError, TokenService};
pub use webhooks::WebhookSettings;
