//! OAuth 2.0 for mailboxes: the authorization-code flow with PKCE ([`Provider::authorization_url`],
//! [`Provider::exchange_code`]), refresh, revocation, and finding out which account signed in.
//!
//! Written on reqwest rather than the `oauth2` crate: Mailbridge needs to tell `invalid_grant`
//! (ask the user to sign in again, never retry) from transient failures (retry with backoff)
//! exactly, to read the ID token and the granted scopes that a typed client hides, and to keep
//! one HTTP client for token, userinfo and revocation calls. What remains is a few form posts.

mod client;
mod pkce;
mod service_account;

pub use client::{Identity, OAuthError, Provider, REQUEST_TIMEOUT, TokenResponse};
pub use pkce::{Pkce, random_token};
pub use service_account::ServiceAccount;

/// Scopes that identify the user, or ask for a refresh token (Microsoft's `offline_access`),
/// rather than grant access to mail; a grant's `scope` may leave them out.
pub const IDENTITY_SCOPES: &[&str] = &["openid", "email", "profile", "offline_access"];
