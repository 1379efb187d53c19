//! [`MailboxSpec`]: whose mailbox, which address, which profile, and how mail flows.

use crate::{EmailAddress, ProfileId, UserId, ValidationError};

crate::string_enum! {
    /// How incoming or outgoing mail of a mailbox is delivered.
    DeliveryMethod {
        /// Mailbridge connects to the mail server itself.
        ServerSideSync => "server_side_sync",
        /// Like server-side sync, but only nodes of the mailbox's `router_group` connect:
        /// for mail servers reachable only from inside a company's network.
        EmailRouter => "email_router",
        /// This direction is not synchronized.
        None => "none",
    }
}

crate::string_enum! {
    /// Which incoming messages become email records.
    TrackingRule {
        /// Every message.
        All => "all",
        /// Replies to mail sent through Mailbridge.
        Responses => "responses",
        /// Messages from or to a contact the application knows.
        KnownContacts => "known_contacts",
        /// None.
        None => "none",
    }
}

crate::string_enum! {
    /// The outcome of the last test of one direction, in the words users know.
    ConnectionStatus {
        NotRun => "not_run",
        Success => "success",
        Failure => "failure",
    }
}

/// A complete, valid mailbox configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSpec {
    pub owner_user_id: UserId,
    pub email: EmailAddress,
    pub profile_id: ProfileId,
    pub incoming_method: DeliveryMethod,
    pub outgoing_method: DeliveryMethod,
    pub tracking_rule: TrackingRule,
    /// The login for password profiles, when it is not the address itself.
    pub login_name: Option<String>,
    /// With `email_router`: the node group that works this mailbox.
    pub router_group: Option<String>,
    /// IMAP folders synchronized besides INBOX, Sent and the profile's `folders`.
    pub extra_folders: Vec<String>,
}

/// The node group of nodes that do not say: it works server-side-sync mailboxes.
pub const DEFAULT_NODE_GROUP: &str = "cloud";

impl DeliveryMethod {
    /// Whether Mailbridge synchronizes this direction (itself or through a router group).
    pub fn is_synchronized(self) -> bool {
        self != DeliveryMethod::None
    }
}

/// Checks a node group name: 1–64 of `a-z 0-9 - _`.
pub fn validate_node_group(name: &str, field: &'static str) -> Result<(), ValidationError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ValidationError::new(
            field,
            format!(
                "{field} must be 1 to 64 characters of a-z, 0-9, - and _ (e.g. \"office-berlin\")"
            ),
        ));
    }
    Ok(())
}

/// Input for creating (`base = None`) or patching a mailbox.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MailboxDraft {
    /// Defaults to the caller when creating.
    pub owner_user_id: Option<UserId>,
    #[schema(example = "ann@example.com")]
    pub email: Option<String>,
    pub profile_id: Option<ProfileId>,
    pub incoming_method: Option<DeliveryMethod>,
    pub outgoing_method: Option<DeliveryMethod>,
    pub tracking_rule: Option<TrackingRule>,
    /// Password profiles: the login name, when it differs from the address (`""` clears it).
    pub login_name: Option<String>,
    /// Required when a direction uses `email_router`: the node group (nodes started with
    /// `node_group` set to it) that works this mailbox.
    #[schema(example = "office-berlin")]
    pub router_group: Option<String>,
    /// IMAP folders to synchronize for this mailbox besides INBOX, the Sent folder and its
    /// profile's `folders`, e.g. `["Clients/Acme"]`; at most 50.
    #[schema(max_items = 50)]
    pub extra_folders: Option<Vec<String>>,
    /// Password profiles: the mailbox's password. Write-only: stored encrypted, never returned.
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<secrecy::SecretString>,
}

impl MailboxDraft {
    /// Resolves into a complete mailbox; `caller` owns it when no owner is named on create.
    pub fn resolve(
        &self,
        base: Option<&MailboxSpec>,
        caller: UserId,
    ) -> Result<MailboxSpec, ValidationError> {
        let email = match &self.email {
            Some(e) => EmailAddress::parse(e, "email")?,
            None => base.map(|b| b.email.clone()).ok_or_else(|| {
                ValidationError::new("email", "email is required, e.g. \"ann@example.com\"")
            })?,
        };
        let profile_id = self
            .profile_id
            .or(base.map(|b| b.profile_id))
            .ok_or_else(|| {
                ValidationError::new(
                    "profile_id",
                    "profile_id is required; create an email server profile first (POST /api/v1/server-profiles)",
                )
            })?;
        let mut spec = MailboxSpec {
            owner_user_id: self
                .owner_user_id
                .or(base.map(|b| b.owner_user_id))
                .unwrap_or(caller),
            email,
            profile_id,
            incoming_method: self
                .incoming_method
                .or(base.map(|b| b.incoming_method))
                .unwrap_or(DeliveryMethod::ServerSideSync),
            outgoing_method: self
                .outgoing_method
                .or(base.map(|b| b.outgoing_method))
                .unwrap_or(DeliveryMethod::ServerSideSync),
            tracking_rule: self
                .tracking_rule
                .or(base.map(|b| b.tracking_rule))
                .unwrap_or(TrackingRule::All),
            router_group: None,
            extra_folders: match &self.extra_folders {
                Some(f) => crate::validation::folder_names(f.clone(), "extra_folders")?,
                None => base.map(|b| b.extra_folders.clone()).unwrap_or_default(),
            },
            login_name: match self.login_name.as_deref().map(str::trim) {
                Some("") => None,
                Some(l) if l.len() > 320 || l.chars().any(char::is_control) => {
                    return Err(ValidationError::new(
                        "login_name",
                        "login_name must be up to 320 characters without control characters",
                    ));
                }
                Some(l) => Some(l.to_owned()),
                None => base.and_then(|b| b.login_name.clone()),
            },
        };
        let routed =
            [spec.incoming_method, spec.outgoing_method].contains(&DeliveryMethod::EmailRouter);
        let group = match self.router_group.as_deref().map(str::trim) {
            Some("") => None,
            Some(g) => {
                validate_node_group(g, "router_group")?;
                Some(g.to_owned())
            }
            None => base.and_then(|b| b.router_group.clone()),
        };
        spec.router_group = match (routed, group) {
            (true, Some(g)) => Some(g),
            (true, None) => {
                return Err(ValidationError::new(
                    "router_group",
                    "router_group is required with email_router: the node group whose nodes can reach this mail server (e.g. \"office-berlin\")",
                ));
            }
            (false, _) => None,
        };
        Ok(spec)
    }

    /// What to do with the stored password: a new one, or keep.
    pub fn password_change(&self) -> Result<crate::SecretChange, ValidationError> {
        use secrecy::ExposeSecret;
        match &self.password {
            Some(p) if p.expose_secret().is_empty() => Err(ValidationError::new(
                "password",
                "password is empty; to sign in with OAuth, use a profile with gmail_oauth or oauth2",
            )),
            Some(p) => Ok(crate::SecretChange::Set(p.clone())),
            None => Ok(crate::SecretChange::Keep),
        }
    }

    /// The fields only an admin may change (a user may tune delivery and tracking of their
    /// own mailbox, not move it to another owner, address or profile).
    pub fn admin_only_field(&self) -> Option<&'static str> {
        if self.owner_user_id.is_some() {
            Some("owner_user_id")
        } else if self.email.is_some() {
            Some("email")
        } else if self.profile_id.is_some() {
            Some("profile_id")
        } else {
            None
        }
    }
}

crate::string_enum! {
    /// Whether the mailbox's user has signed in to the OAuth provider.
    SignInStatus {
        /// No sign-in yet (or it was disconnected).
        NotSignedIn => "not_signed_in",
        /// Tokens are stored and were last accepted.
        SignedIn => "signed_in",
        /// The provider refused the stored grant (revoked or expired): sign in again.
        NeedsSignIn => "needs_sign_in",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(fields: serde_json::Value) -> MailboxDraft {
        let mut all =
            serde_json::json!({"email": "ann@example.com", "profile_id": ProfileId::new()});
        if let (Some(a), Some(f)) = (all.as_object_mut(), fields.as_object()) {
            a.extend(f.clone());
        }
        serde_json::from_value(all).unwrap_or_else(|e| panic!("{e}"))
    }

    fn resolve(fields: serde_json::Value) -> Result<MailboxSpec, ValidationError> {
        draft(fields).resolve(None, UserId::new())
    }

    #[test]
    fn email_router_needs_a_valid_router_group_and_other_methods_drop_it() {
        let e = resolve(serde_json::json!({"incoming_method": "email_router"})).unwrap_err();
        assert_eq!(e.field, "router_group");
        let e = resolve(
            serde_json::json!({"outgoing_method": "email_router", "router_group": "Office Berlin"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "router_group");
        assert!(e.message.contains("a-z, 0-9"), "{}", e.message);
        let routed = resolve(
            serde_json::json!({"incoming_method": "email_router", "router_group": " office-berlin "}),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(routed.router_group.as_deref(), Some("office-berlin"));
        // Back to server-side sync: the group no longer applies.
        let back = draft(serde_json::json!({"incoming_method": "server_side_sync"}))
            .resolve(Some(&routed), routed.owner_user_id)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(back.router_group, None);
    }

    #[test]
    fn login_name_is_checked_and_an_empty_one_clears_it() {
        let e = resolve(serde_json::json!({"login_name": "a\u{7}b"})).unwrap_err();
        assert_eq!(e.field, "login_name");
        let named = resolve(serde_json::json!({"login_name": "ann.lee"}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(named.login_name.as_deref(), Some("ann.lee"));
        let cleared = draft(serde_json::json!({"login_name": ""}))
            .resolve(Some(&named), named.owner_user_id)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cleared.login_name, None);
    }

    #[test]
    fn an_empty_password_is_refused() {
        let e = draft(serde_json::json!({"password": ""}))
            .password_change()
            .unwrap_err();
        assert_eq!(e.field, "password");
        assert!(matches!(
            draft(serde_json::json!({"password": "s3cret"})).password_change(),
            Ok(crate::SecretChange::Set(_))
        ));
    }
}
