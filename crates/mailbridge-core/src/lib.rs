//! Mailbridge's domain: validated values ([`EmailAddress`], [`Host`], [`Port`]), email server
//! profiles ([`ProfileSpec`]), mailboxes, users, the rules that bind them, and how a message's
//! bytes read ([`parse`]). No I/O.

pub mod clock;
pub mod email;
pub mod event;
pub mod google;
pub mod ids;
pub mod mailbox;
pub mod message;
pub mod microsoft;
pub mod outgoing;
pub mod parse;
pub mod profile;
pub mod server;
mod string_enum;
pub mod tracking;
pub mod user;
pub mod validation;
pub mod webhook;

pub use clock::{Clock, SystemClock};
pub use email::EmailAddress;
pub use event::EventType;
pub use ids::{MailboxId, ProfileId, UserId};
pub use mailbox::{
    ConnectionStatus, DEFAULT_NODE_GROUP, DeliveryMethod, MailboxDraft, MailboxSpec, SignInStatus,
    TrackingRule, validate_node_group,
};
pub use outgoing::{MessageId, OutgoingDraft, OutgoingMessage};
pub use profile::{
    AuthMethod, GMAIL_MAX_MAILBOXES, IncomingServer, OAuthSettings, OutgoingAuth, OutgoingServer,
    Preset, ProfileDraft, ProfileSpec, SecretChange, Stored,
};
pub use server::{Host, IncomingProtocol, Port, Security};
pub use user::Role;
pub use validation::{UnknownWord, ValidationError};
pub use webhook::{WebhookDraft, WebhookSpec};
