//! How a mailbox logs in, shared by the engine, outgoing mail and Test & Enable: its
//! credentials (its password, or an access token refreshed when due) and the endpoints of its
//! profile's servers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mailbridge_core::AuthMethod;
use mailbridge_proto::{Credentials, Endpoint};
use mailbridge_store::{MailboxRecord, ProfileRecord, Store};

use crate::incoming::SyncError;
use crate::tokens::TokenService;

/// The login, and until when an OAuth token behind it stays good (two minutes before it
/// expires, so a session leaves in time).
pub(crate) async fn credentials(
    store: &Store,
    tokens: &TokenService,
    mailbox: &MailboxRecord,
    profile: &ProfileRecord,
) -> Result<(Credentials, Option<DateTime<Utc>>), SyncError> {
    if profile.spec.auth == AuthMethod::Password {
        let user = mailbox
            .spec
            .login_name
            .clone()
            .unwrap_or_else(|| mailbox.spec.email.to_string());
        let password = store
            .mailbox_password(mailbox.id)
            .await?
            .ok_or(SyncError::NoPassword)?;
        return Ok((Credentials::Password { user, password }, None));
    }
    let token = if profile.spec.auth == AuthMethod::GoogleServiceAccount {
        tokens.delegated_token(mailbox, profile).await?
    } else {
        tokens.access_token(mailbox.id).await?
    };
    Ok((
        Credentials::OAuth {
            user: token.account,
            token: token.token,
        },
        Some(token.expires_at - chrono::Duration::minutes(2)),
    ))
}

/// The profile's incoming server, with `timeout` on connecting and every read.
pub(crate) fn incoming(profile: &ProfileRecord, timeout: Duration) -> Endpoint {
    let s = &profile.spec.incoming;
    Endpoint::new(s.host.as_str(), s.port.get(), s.security).with_timeout(timeout)
}

/// The profile's outgoing (SMTP) server, with `timeout` on connecting and every read.
pub(crate) fn outgoing(profile: &ProfileRecord, timeout: Duration) -> Endpoint {
    let s = &profile.spec.outgoing;
    Endpoint::new(s.host.as_str(), s.port.get(), s.security).with_timeout(timeout)
}
