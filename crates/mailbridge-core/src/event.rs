//! [`EventType`]: what the event log says happened — the words the change feed and webhooks
//! use, one per change a host application cares about.

crate::string_enum! {
    /// The kind of an event in the event log.
    EventType {
        /// An incoming email record was stored.
        EmailReceived => "email.received",
        /// The mail server accepted an outgoing email.
        EmailSent => "email.sent",
        /// An outgoing email failed for good (or may not have been delivered; see its reply).
        EmailSendFailed => "email.send_failed",
        /// An email's flags, labels or folder changed on the server.
        EmailUpdated => "email.updated",
        /// An email was deleted (expunged) on the server.
        EmailDeleted => "email.deleted",
        /// A mailbox was signed in (OAuth tokens stored).
        MailboxSignedIn => "mailbox.signed_in",
        /// The provider refused a mailbox's sign-in: its user must sign in again.
        MailboxNeedsSignIn => "mailbox.needs_sign_in",
        /// A mailbox was enabled (it passed Test & Enable).
        MailboxEnabled => "mailbox.enabled",
        /// A mailbox was disabled (a failure, a sign-out, a change that needs a new test).
        MailboxDisabled => "mailbox.disabled",
        /// Test & Enable ran: each direction's result.
        MailboxTested => "mailbox.tested",
        /// An alert was raised to someone.
        AlertCreated => "alert.created",
    }
}
