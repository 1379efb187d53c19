//! What Microsoft's answers mean for the person who must act: the Microsoft identity
//! platform's `AADSTS` error codes (in `error_description` of the token endpoint and of the
//! consent page's redirect) and Exchange Online's SMTP refusals, each mapped to the step in
//! the Microsoft Entra or Microsoft 365 admin center that fixes it.

/// An administrator must consent to the app's permissions for the organization.
pub const ADMIN_CONSENT_HINT: &str = "An administrator of the Microsoft 365 organization must grant consent to this app: Microsoft Entra admin center › Identity › Applications › Enterprise applications › the app › Permissions › Grant admin consent (or App registrations › the app › API permissions › Grant admin consent); then sign in with Microsoft again.";

/// Authenticated SMTP (SMTP AUTH) is off for the tenant or the mailbox.
pub const SMTP_AUTH_DISABLED_HINT: &str = "Authenticated SMTP is turned off for this mailbox or its organization: in the Microsoft 365 admin center open Users › Active users › the user › Mail › Manage email apps and tick Authenticated SMTP (tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false in Exchange Online PowerShell); then test again.";

/// The hint for a Microsoft identity platform error, by the `AADSTS` code in its words, when
/// the code names something other than "sign in again".
pub fn sign_in_hint(words: &str) -> Option<&'static str> {
    let code = aadsts_code(words)?;
    Some(match code {
        // Consent missing, withdrawn, or reserved to administrators.
        65001 | 90094 | 90008 | 90099 => ADMIN_CONSENT_HINT,
        65004 => {
            "The user declined to give the app access; sign in with Microsoft again and accept."
        }
        700016 => {
            "Microsoft does not know the profile's client ID in this tenant: copy the Application (client) ID from the app registration, and check the profile's tenant (an app registered for one organization needs that organization's tenant, or make it multitenant)."
        }
        7000215 => {
            "The profile's client secret is wrong: copy the secret's Value (not its Secret ID) from the app registration's Certificates & secrets into the profile."
        }
        7000222 => {
            "The profile's client secret has expired: create a new one under the app registration's Certificates & secrets and put its Value in the profile."
        }
        50011 | 500113 => {
            "The redirect URI is not registered: add this service's redirect URI (shown on the profile page) under the app registration's Authentication › Web › Redirect URIs."
        }
        50020 => {
            "This account is not in the profile's tenant: set the profile's tenant to the account's organization, or to common for accounts of any organization and personal accounts."
        }
        53003 => {
            "A Conditional Access policy of the organization blocked the sign-in: an administrator must allow this app in Microsoft Entra admin center › Protection › Conditional Access."
        }
        _ => return None,
    })
}

/// The number after `AADSTS` in an error's words (`AADSTS65001: The user or administrator…`).
fn aadsts_code(words: &str) -> Option<u32> {
    let at = words.find("AADSTS")? + "AADSTS".len();
    let digits: String = words[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The hint for an SMTP refusal from Exchange Online, when its words name a setting.
pub fn smtp_hint(words: &str) -> Option<&'static str> {
    (words.contains("SmtpClientAuthentication is disabled") || words.contains("5.7.139"))
        .then_some(SMTP_AUTH_DISABLED_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_map_to_the_admin_center_step() {
        // Words as the token endpoint writes them.
        let consent = "AADSTS65001: The user or administrator has not consented to use the application with ID '6731de76'. Send an interactive authorization request for this user and resource. Trace ID: 1f2e";
        assert_eq!(sign_in_hint(consent), Some(ADMIN_CONSENT_HINT));
        assert_eq!(
            sign_in_hint(
                "AADSTS90094: Admin consent is required for the permissions requested by this application."
            ),
            Some(ADMIN_CONSENT_HINT)
        );
        assert!(
            sign_in_hint("AADSTS7000215: Invalid client secret provided.")
                .is_some_and(|h| h.contains("Value (not its Secret ID)"))
        );
        assert!(
            sign_in_hint(
                "AADSTS50011: The redirect URI 'x' specified in the request does not match"
            )
            .is_some_and(|h| h.contains("Redirect URIs"))
        );
        // Expired or revoked grants need only a new sign-in: no special hint.
        assert_eq!(
            sign_in_hint(
                "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity."
            ),
            None
        );
        assert_eq!(sign_in_hint("Token has been expired or revoked."), None);
        assert_eq!(sign_in_hint("AADSTS: no number"), None);
    }

    #[test]
    fn smtp_auth_disabled_is_named() {
        let words = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.";
        assert_eq!(smtp_hint(words), Some(SMTP_AUTH_DISABLED_HINT));
        assert_eq!(
            smtp_hint("535 5.7.8 Username and Password not accepted"),
            None
        );
    }
}
