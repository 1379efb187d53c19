//! What Google's token endpoint means when it refuses a service account's assertion (the JWT
//! bearer grant of domain-wide delegation), as the step in the Google Admin console or the
//! Google Cloud console that fixes it.

/// The scope domain-wide delegation must grant for IMAP, POP and SMTP.
pub const MAIL_SCOPE: &str = "https://mail.google.com/";

/// The hint for a refused assertion: `error` and `description` as Google sent them;
/// `client_id` the service account's numeric client ID, when known.
pub fn service_account_hint(error: &str, description: &str, client_id: Option<&str>) -> String {
    let client = client_id.map_or_else(
        || "the service account's client ID".to_owned(),
        |id| format!("the client ID {id}"),
    );
    match error {
        "unauthorized_client" => format!(
            "Domain-wide delegation is not granted for this service account and scope: in the Google Admin console open Security › Access and data control › API controls › Manage Domain Wide Delegation, add {client} with the scope {MAIL_SCOPE}, then test again (it can take a few minutes to apply)."
        ),
        "invalid_client" => "Google does not know this key (deleted or disabled): create a new JSON key in the Google Cloud console (IAM & Admin › Service accounts › Keys) and upload it to the profile.".to_owned(),
        "invalid_grant" if description.contains("Invalid email") || description.contains("User ID") => "The mailbox's address is not an active user of the Google Workspace domain that delegated access: check the address (and that the user is not suspended), or use a profile whose service account belongs to that user's domain.".to_owned(),
        "invalid_grant" => "Google refused the service account's assertion: check that this server's clock is right (within a few minutes) and that the key is still active in the Google Cloud console.".to_owned(),
        _ => "Check the profile's service account key and the domain-wide delegation in the Google Admin console.".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_names_its_fix() {
        let h = service_account_hint(
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
            Some("117893"),
        );
        assert!(
            h.contains("Manage Domain Wide Delegation")
                && h.contains("117893")
                && h.contains(MAIL_SCOPE),
            "{h}"
        );
        assert!(
            service_account_hint("invalid_grant", "Invalid email or User ID", None)
                .contains("not an active user")
        );
        assert!(
            service_account_hint(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token",
                None
            )
            .contains("clock")
        );
        assert!(
            service_account_hint("invalid_client", "The OAuth client was not found.", None)
                .contains("new JSON key")
        );
    }
}
