//! The engine's services: signing mailboxes in ([`SignIn`]) and handing protocol code a valid
//! access token ([`TokenService`]). The scheduler, Test & Enable and the incoming/outgoing sync
//! build on them.

mod provider;
pub mod signin;
pub mod tokens;

pub use signin::{Callback, Disconnected, SignIn, SignInError};
pub use tokens::{AccessToken, RefreshPolicy, TokenError, TokenService};
