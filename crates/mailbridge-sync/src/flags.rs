//! Setting a message's flags on its server (`PATCH /emails/{id}`): the mailbox logs in with
//! its own credentials, opens the message's folder read-write, `UID STORE`s the change, and
//! only then does the record follow — so the record never says what the server does not.

use mailbridge_core::IncomingProtocol;
use mailbridge_core::message::MessageFlags;
use mailbridge_proto::imap::ImapSession;
use mailbridge_store::{EmailRecord, StoreError};

use crate::incoming::SyncError;
use crate::test_enable::Tester;

/// The flags to change; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlagChange {
    pub seen: Option<bool>,
    pub flagged: Option<bool>,
}

impl FlagChange {
    fn apply(self, to: MessageFlags) -> MessageFlags {
        MessageFlags {
            seen: self.seen.unwrap_or(to.seen),
            flagged: self.flagged.unwrap_or(to.flagged),
            ..to
        }
    }
}

/// Why flags could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// The record has no message on an IMAP server to change (the reason says which case).
    #[error("{0}")]
    NotOnServer(&'static str),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl From<StoreError> for FlagError {
    fn from(e: StoreError) -> Self {
        Self::Sync(SyncError::Store(e))
    }
}

impl Tester {
    /// Sets `change` on the server's copy of `email`, then on the record (with an
    /// `email.updated` event when it changed). Returns the flags now.
    pub async fn set_flags(
        &self,
        email: &EmailRecord,
        change: FlagChange,
    ) -> Result<MessageFlags, FlagError> {
        if email.deleted_on_server_at.is_some() {
            return Err(FlagError::NotOnServer(
                "the message is no longer on the mail server (deleted_on_server_at is set)",
            ));
        }
        let (Some(folder), Some(uid)) = (&email.folder, email.uid) else {
            return Err(FlagError::NotOnServer(
                "this email has no copy in a folder of the mail server to change (POP3 mail, or sent from here and not yet seen in the Sent folder)",
            ));
        };
        let uid = u32::try_from(uid)
            .map_err(|_| FlagError::NotOnServer("the stored UID is not valid"))?;
        let mailbox = self.store.get_mailbox(email.mailbox_id).await?;
        let profile = self.store.get_profile(mailbox.spec.profile_id).await?;
        if profile.spec.incoming.protocol != IncomingProtocol::Imap {
            return Err(FlagError::NotOnServer(
                "the mailbox reads mail over POP3, which has no flags",
            ));
        }
        let now = change.apply(email.flags.unwrap_or_default());
        let _slot = self.limits.acquire(&profile).await;
        let (credentials, _) =
            crate::login::credentials(&self.store, &self.tokens, &mailbox, &profile).await?;
        let endpoint = crate::login::incoming(&profile, self.timeout);
        let mut session = ImapSession::login(&endpoint, &self.tls, &credentials)
            .await
            .map_err(SyncError::from)?;
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (wanted, flag) in [(change.seen, "\\Seen"), (change.flagged, "\\Flagged")] {
            match wanted {
                Some(true) => add.push(flag),
                Some(false) => remove.push(flag),
                None => {}
            }
        }
        let stored = async {
            session.select(folder).await?;
            session.uid_store_flags(uid, &add, &remove).await
        }
        .await;
        session.logout().await;
        stored.map_err(SyncError::from)?;
        self.store.set_email_flags(&email.id, now).await?;
        Ok(now)
    }
}
