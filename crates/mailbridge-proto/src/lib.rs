//! Mail protocol clients for Mailbridge: IMAP (on async-imap), POP3 and SMTP submission
//! (our own), over plain TCP, implicit TLS or STARTTLS with rustls, authenticating with
//! SASL XOAUTH2 / OAUTHBEARER or a password. No database: callers hand in an [`Endpoint`]
//! and [`Credentials`], and get typed results or a [`ProtoError`] that names the server,
//! the step and the server's own words, and says whether trying later may help.

pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod imap;
mod line;
pub mod net;
pub mod pop3;
pub mod sasl;
pub mod smtp;

pub use error::{ErrorKind, ProtoError};
pub use net::{DEFAULT_MAX_MESSAGE_BYTES, Endpoint, Security, TlsSettings};
pub use sasl::Credentials;
