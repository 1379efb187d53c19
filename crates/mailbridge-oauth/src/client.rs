//! [`Provider`]: one OAuth 2.0 client (a profile's client id and secret) talking to one
//! provider's endpoints (RFC 6749 §4.1 code grant, §6 refresh; RFC 7009 revocation).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailbridge_core::{AuthMethod, OAuthSettings};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Why a call to the provider failed, and whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// RFC 6749 §5.2 `invalid_grant`: the code or refresh token is expired, revoked or was
    /// issued to someone else. Only a new sign-in helps.
    #[error(
        "{provider} refused the grant at the {step} ({description}); the mailbox's user must sign in again"
    )]
    InvalidGrant {
        provider: String,
        step: &'static str,
        description: String,
    },
    /// Any other refusal (`invalid_client`, `invalid_request`, `unauthorized_client`…):
    /// a configuration problem that retrying will not fix.
    #[error("{provider} refused the {step} with HTTP {status}: {error}{}{}", description_suffix(.description), hint_suffix(.description))]
    Rejected {
        provider: String,
        step: &'static str,
        status: u16,
        error: String,
        description: String,
    },
    /// The provider could not be reached or failed on its side (network, timeout, HTTP 5xx).
    #[error("cannot reach {provider} for the {step}: {reason}")]
    Unavailable {
        provider: String,
        step: &'static str,
        reason: String,
    },
    /// The provider answered something that is not an OAuth response.
    #[error("{provider} sent an unreadable answer to the {step}: {reason}")]
    Malformed {
        provider: String,
        step: &'static str,
        reason: String,
    },
}

fn description_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

/// The Microsoft identity platform's fix for an error whose words carry an `AADSTS` code.
fn hint_suffix(d: &str) -> String {
    mailbridge_core::microsoft::sign_in_hint(d).map_or_else(String::new, |h| format!(". {h}"))
}

impl OAuthError {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Unavailable { .. })
    }
}

/// A token endpoint's answer (RFC 6749 §5.1). Tokens are secrets: `Debug` redacts them.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: SecretString,
    /// Absent from most refresh responses (Google keeps the old refresh token valid).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<i64>,
    /// The granted scopes; absent means "as requested" (RFC 6749 §5.1).
    pub scope: Option<String>,
    pub id_token: Option<SecretString>,
}

#[derive(serde::Deserialize)]
struct RawTokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    scope: Option<String>,
    id_token: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct RawError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The account that signed in, as the provider vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub email: String,
    /// False only when the provider says the address is unverified.
    pub email_verified: bool,
    /// The claim `email` was read from: `email`, or `preferred_username` (Microsoft's sign-in
    /// name, which its ID tokens carry when the account has no `email` claim).
    pub claim: &'static str,
}

#[derive(serde::Deserialize)]
struct Claims {
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    preferred_username: Option<String>,
    aud: Option<serde_json::Value>,
}

impl Claims {
    /// The account these claims name: `email`, else a `preferred_username` that is an address.
    fn identity(self) -> Option<Identity> {
        let email_verified = !is_false(self.email_verified.as_ref());
        match (self.email, self.preferred_username) {
            (Some(email), _) => Some(Identity {
                email,
                email_verified,
                claim: "email",
            }),
            (None, Some(name)) if name.contains('@') => Some(Identity {
                email: name,
                email_verified,
                claim: "preferred_username",
            }),
            _ => None,
        }
    }
}

/// An OAuth client for one profile.
#[derive(Clone)]
pub struct Provider {
    http: reqwest::Client,
    auth: AuthMethod,
    settings: OAuthSettings,
    client_secret: Option<SecretString>,
    redirect_uri: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("token_url", &self.settings.token_url.as_str())
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

/// The longest one call to a provider may take (see [`Provider::http_client`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Provider {
    /// An HTTP client with the timeouts every provider call should have.
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    }

    /// The client of a profile that signs in with `auth` (its consent page's parameters
    /// differ between providers).
    pub fn new(
        http: reqwest::Client,
        auth: AuthMethod,
        settings: OAuthSettings,
        client_secret: Option<SecretString>,
        redirect_uri: String,
    ) -> Self {
        Self {
            http,
            auth,
            settings,
            client_secret,
            redirect_uri,
        }
    }

    /// The provider's name in messages: its token endpoint's host.
    pub fn name(&self) -> String {
        self.settings
            .token_url
            .host_str()
            .unwrap_or("the OAuth provider")
            .to_owned()
    }

    /// How the profile signs in (which provider's habits apply).
    pub fn auth(&self) -> AuthMethod {
        self.auth
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The consent page to send the user's browser to (RFC 6749 §4.1.1, RFC 7636 §4.3), with
    /// `login_hint` so the right account is offered. Google issues a refresh token every time
    /// only with `access_type=offline` and `prompt=consent`; Microsoft issues one for the
    /// `offline_access` scope, and `prompt=consent` there would ask users for a consent their
    /// organization may reserve to administrators, so it gets `prompt=select_account`.
    pub fn authorization_url(&self, state: &str, code_challenge: &str, login_hint: &str) -> Url {
        let mut url = self.settings.authorization_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.settings.client_id)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &self.settings.scopes.join(" "));
            match self.auth {
                AuthMethod::MicrosoftOauth => q.append_pair("prompt", "select_account"),
                _ => q
                    .append_pair("access_type", "offline")
                    .append_pair("prompt", "consent"),
            };
        }
        url.query_pairs_mut()
            .append_pair("login_hint", login_hint)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3) with the PKCE verifier.
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
    ) -> Result<TokenResponse, OAuthError> {
        self.token_request(
            "code exchange",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// Refreshes an access token (RFC 6749 §6).
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, OAuthError> {
        self.token_request(
            "token refresh",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
            ],
        )
        .await
    }

    /// The JWT bearer grant (RFC 7523 §2.1): the signed assertion is the client's credential.
    pub(crate) async fn jwt_bearer(&self, assertion: &str) -> Result<TokenResponse, OAuthError> {
        self.token_request(
            "token request",
            &[
                ("grant_type", crate::service_account::JWT_BEARER),
                ("assertion", assertion),
            ],
        )
        .await
    }

    /// Revokes a token (RFC 7009). Without a revocation endpoint there is nothing to do.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), OAuthError> {
        let Some(url) = &self.settings.revocation_url else {
            return Ok(());
        };
        let step = "token revocation";
        let resp = self
            .http
            .post(url.clone())
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .map_err(|e| self.unavailable(step, &e))?;
        let status = resp.status();
        // RFC 7009 §2.2: an unknown or already invalid token is answered with 200 too;
        // Google answers 400 invalid_token for one it already forgot. Both mean "gone".
        if status.is_success() || status == reqwest::StatusCode::BAD_REQUEST {
            return Ok(());
        }
        Err(self.failure(step, status, &resp.text().await.unwrap_or_default()))
    }

    /// Which account signed in: from the ID token when the provider returned one, else from
    /// the userinfo endpoint.
    ///
    /// The ID token comes straight from the token endpoint over TLS in a code exchange made
    /// with our client secret, so OpenID Connect Core §3.1.3.7 (6) lets us trust the TLS
    /// connection in place of checking its signature; its audience must still be our client.
    pub async fn identity(&self, tokens: &TokenResponse) -> Result<Option<Identity>, OAuthError> {
        if let Some(id_token) = &tokens.id_token
            && let Some(identity) = self.id_token_claims(id_token.expose_secret())?.identity()
        {
            return Ok(Some(identity));
        }
        let Some(url) = &self.settings.userinfo_url else {
            return Ok(None);
        };
        let step = "userinfo request";
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(tokens.access_token.expose_secret())
            .send()
            .await
            .map_err(|e| self.unavailable(step, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unavailable(step, &e))?;
        if !status.is_success() {
            return Err(self.failure(step, status, &text));
        }
        let claims: Claims = serde_json::from_str(&text).map_err(|e| self.malformed(step, &e))?;
        Ok(claims.identity())
    }

    fn id_token_claims(&self, jwt: &str) -> Result<Claims, OAuthError> {
        let step = "code exchange";
        let payload = jwt
            .split('.')
            .nth(1)
            .ok_or_else(|| self.malformed(step, &"the ID token is not a JWT"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| self.malformed(step, &e))?;
        let claims: Claims =
            serde_json::from_slice(&bytes).map_err(|e| self.malformed(step, &e))?;
        let ours = &self.settings.client_id;
        let audience_ok = match &claims.aud {
            Some(serde_json::Value::String(a)) => a == ours,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(ours)),
            _ => false,
        };
        if !audience_ok {
            return Err(self.malformed(step, &"the ID token was issued to another client"));
        }
        Ok(claims)
    }

    async fn token_request(
        &self,
        step: &'static str,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse, OAuthError> {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        // A service account's assertion names it; Google's grant takes no client_id.
        if self.auth != AuthMethod::GoogleServiceAccount {
            form.push(("client_id", &self.settings.client_id));
        }
        if let Some(secret) = &self.client_secret {
            // client_secret_post (RFC 6749 §2.3.1), which Google documents.
            form.push(("client_secret", secret.expose_secret()));
        }
        let resp = self
            .http
            .post(self.settings.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| self.unavailable(step, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unavailable(step, &e))?;
        if !status.is_success() {
            return Err(self.failure(step, status, &text));
        }
        let raw: RawTokenResponse =
            serde_json::from_str(&text).map_err(|e| self.malformed(step, &e))?;
        Ok(TokenResponse {
            access_token: SecretString::from(raw.access_token),
            refresh_token: raw
                .refresh_token
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            expires_in: raw.expires_in,
            scope: raw.scope,
            id_token: raw.id_token.map(SecretString::from),
        })
    }

    fn failure(&self, step: &'static str, status: reqwest::StatusCode, body: &str) -> OAuthError {
        let raw: RawError = serde_json::from_str(body).unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return OAuthError::Unavailable {
                provider: self.name(),
                step,
                reason: format!("HTTP {}{}", status.as_u16(), description_suffix(&raw.error)),
            };
        }
        if raw.error == "invalid_grant" {
            return OAuthError::InvalidGrant {
                provider: self.name(),
                step,
                description: if raw.error_description.is_empty() {
                    "invalid_grant".to_owned()
                } else {
                    raw.error_description
                },
            };
        }
        OAuthError::Rejected {
            provider: self.name(),
            step,
            status: status.as_u16(),
            error: if raw.error.is_empty() {
                "no OAuth error code".to_owned()
            } else {
                raw.error
            },
            description: raw.error_description,
        }
    }

    fn unavailable(&self, step: &'static str, e: &reqwest::Error) -> OAuthError {
        let reason = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_connect() {
            "connection refused or unreachable".to_owned()
        } else {
            // Never the URL's query: it may carry a token.
            e.without_url_string()
        };
        OAuthError::Unavailable {
            provider: self.name(),
            step,
            reason,
        }
    }

    fn malformed(&self, step: &'static str, why: &dyn std::fmt::Display) -> OAuthError {
        OAuthError::Malformed {
            provider: self.name(),
            step,
            reason: why.to_string(),
        }
    }
}

fn is_false(v: Option<&serde_json::Value>) -> bool {
    matches!(v, Some(serde_json::Value::Bool(false)))
        || matches!(v, Some(serde_json::Value::String(s)) if s == "false")
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut e = format!("{self}");
        if let Some(url) = self.url() {
            e = e.replace(url.as_str(), "<endpoint>");
        }
        e
    }
}
