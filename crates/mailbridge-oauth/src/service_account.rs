//! [`ServiceAccount`]: a Google Workspace service account with domain-wide delegation. It
//! gets an access token for any user of the domain that delegated it, with the JWT bearer
//! grant (RFC 7523 §2.1): an RS256 assertion signed with the account's key, naming the user
//! in `sub`. No user signs in, and no refresh token exists.
//!
//! Signed with `jsonwebtoken` 9, which uses ring (already here for TLS). Its later majors
//! need a second crypto library: aws-lc-rs (a C build) or RustCrypto's `rsa` (whose private-key
//! operations are not constant-time, RUSTSEC-2023-0071).

use chrono::{DateTime, Utc};
use mailbridge_core::{AuthMethod, OAuthSettings};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::client::{OAuthError, Provider, TokenResponse};

/// RFC 7523's grant type.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long an assertion is good for; Google takes at most an hour.
const ASSERTION_LIFETIME_SECONDS: i64 = 3600;

/// The fields of a service account's JSON key file that Mailbridge uses.
#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: SecretString,
    private_key_id: Option<String>,
    client_id: Option<String>,
    token_uri: String,
}

/// A service account, ready to sign assertions. `Debug` shows who it is, never the key.
pub struct ServiceAccount {
    client_email: String,
    client_id: Option<String>,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
    token_url: Url,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_url", &self.token_url.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: String,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

impl ServiceAccount {
    /// Reads a JSON key file as the Google Cloud console gives it (IAM & Admin › Service
    /// accounts › Keys › Add key › JSON). The error says what is wrong with it, in words.
    pub fn from_json(json: &SecretString) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(json.expose_secret()).map_err(|e| {
            format!("not a service account's JSON key file ({e}); upload the .json file the Google Cloud console downloaded")
        })?;
        if file.kind != "service_account" {
            return Err(format!(
                "the key file is of type '{}', not 'service_account'; create a key for a service account (IAM & Admin › Service accounts › Keys)",
                file.kind
            ));
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.expose_secret().as_bytes())
            .map_err(|e| format!("the key file's private_key is not an RSA private key ({e}); download a new JSON key"))?;
        let token_url = Url::parse(&file.token_uri)
            .map_err(|e| format!("the key file's token_uri is not a URL ({e})"))?;
        Ok(Self {
            client_email: file.client_email,
            client_id: file.client_id,
            key_id: file.private_key_id,
            key,
            token_url,
        })
    }

    /// The service account's address: the assertion's issuer.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Its numeric client ID: what the Workspace admin enters for domain-wide delegation.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The signed assertion that asks for `scopes` on behalf of `subject`, for the token
    /// endpoint `audience`, issued at `now` and good for an hour.
    pub fn assertion(
        &self,
        subject: &str,
        scopes: &[String],
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<String, String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let iat = now.timestamp();
        let claims = Claims {
            iss: &self.client_email,
            sub: subject,
            scope: scopes.join(" "),
            aud: audience,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECONDS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the assertion with the service account's key ({e})"))
    }

    /// An access token for `subject` (a user of the delegating domain), from the JWT bearer
    /// grant at the key's token endpoint.
    pub async fn access_token(
        &self,
        http: &reqwest::Client,
        subject: &str,
        scopes: &[String],
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let provider = Provider::new(
            http.clone(),
            AuthMethod::GoogleServiceAccount,
            OAuthSettings {
                client_id: self.client_email.clone(),
                authorization_url: self.token_url.clone(),
                token_url: self.token_url.clone(),
                revocation_url: None,
                userinfo_url: None,
                scopes: scopes.to_vec(),
            },
            None,
            String::new(),
        );
        let assertion = self
            .assertion(subject, scopes, self.token_url.as_str(), now)
            .map_err(|reason| OAuthError::Malformed {
                provider: provider.name(),
                step: "token request",
                reason,
            })?;
        provider.jwt_bearer(&assertion).await
    }
}
