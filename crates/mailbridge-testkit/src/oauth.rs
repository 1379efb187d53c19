//! [`OAuthProvider`]: `oauth-provider/server.mjs` under Node, an OAuth 2.0 provider whose
//! behaviour the tests switch (`set_mode`) and whose counters they read (`stats`).

use anyhow::Context;
use serde_json::Value;

use crate::node::NodeService;

pub struct OAuthProvider {
    url: String,
    _node: NodeService,
    http: reqwest::Client,
}

impl OAuthProvider {
    /// Starts a fresh provider. Needs `node` and `npm ci` run in `oauth-provider/`
    /// (`./scripts/test` does both).
    pub fn start() -> anyhow::Result<Self> {
        let node = NodeService::start(
            "oauth-provider",
            "oauth2-mock-server",
            "test OAuth provider",
        )?;
        Ok(Self {
            url: node.url.clone(),
            _node: node,
            http: reqwest::Client::new(),
        })
    }

    /// The issuer URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Profile settings pointing a generic `oauth2` profile at this provider.
    pub fn profile_oauth(&self, client_id: &str, client_secret: &str) -> Value {
        serde_json::json!({
            "client_id": client_id,
            "client_secret": client_secret,
            "authorization_url": format!("{}/authorize", self.url),
            "token_url": format!("{}/token", self.url),
            "revocation_url": format!("{}/revoke", self.url),
            "userinfo_url": format!("{}/userinfo", self.url),
            "scopes": ["https://mail.google.com/", "openid", "email"],
        })
    }

    /// Profile settings pointing a `microsoft` preset profile at this provider: its
    /// endpoints in place of login.microsoftonline.com's, the preset's scopes, no userinfo.
    pub fn microsoft_oauth(&self, client_id: &str, client_secret: &str) -> Value {
        serde_json::json!({
            "client_id": client_id,
            "client_secret": client_secret,
            "tenant": "organizations",
            "authorization_url": format!("{}/authorize", self.url),
            "token_url": format!("{}/token", self.url),
        })
    }

    /// Changes behaviour: `denyConsent`, `narrowScope`, `omitRefreshOnCode`, `omitIdToken`,
    /// `refresh` (`omit` | `rotate`), `tokenStatus`, `expiresIn`, `refreshDelayMs`,
    /// `failRefreshes` (answer that many refresh grants with 503 first), `claims` (`google` |
    /// `microsoft`: the account in `preferred_username`, no `email`), `consentError` and
    /// `refreshError` (`{"error": …, "error_description": "AADSTS…"}`).
    pub async fn set_mode(&self, mode: Value) -> anyhow::Result<()> {
        self.control("mode", mode).await.map(drop)
    }

    /// The next sign-in is by this account, whatever account the client hinted at.
    pub async fn next_account(&self, email: &str) -> anyhow::Result<()> {
        self.control("next-account", serde_json::json!({ "email": email }))
            .await
            .map(drop)
    }

    /// Revokes every token of an account, as a user removing the app's access would.
    pub async fn revoke_account(&self, email: &str) -> anyhow::Result<()> {
        self.control("revoke-account", serde_json::json!({ "email": email }))
            .await
            .map(drop)
    }

    /// Expires every access token of an account (refresh tokens stay valid).
    pub async fn expire_account(&self, email: &str) -> anyhow::Result<()> {
        self.control("expire-account", serde_json::json!({ "email": email }))
            .await
            .map(drop)
    }

    /// Signs `email` in directly (authorize + code exchange with PKCE), as a client would:
    /// returns (access token, refresh token).
    pub async fn issue_tokens(&self, email: &str) -> anyhow::Result<(String, String)> {
        // RFC 7636 appendix B's pair.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let redirect = "http://127.0.0.1:9/callback";
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let resp = no_redirects
            .get(format!("{}/authorize", self.url))
            .query(&[
                ("response_type", "code"),
                ("client_id", "testkit"),
                ("redirect_uri", redirect),
                ("scope", "https://mail.google.com/ openid email"),
                ("state", "testkit"),
                ("login_hint", email),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
            .send()
            .await?;
        let location = resp
            .headers()
            .get("location")
            .context("the provider did not redirect")?
            .to_str()?;
        let code = reqwest::Url::parse(location)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .context("no code in the redirect")?;
        let tokens: Value = self
            .http
            .post(format!("{}/token", self.url))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("client_id", "testkit"),
                ("code_verifier", verifier),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((
            tokens["access_token"]
                .as_str()
                .context("no access token")?
                .to_owned(),
            tokens["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    /// A new Google Workspace service account whose users are the addresses of `domain`, with
    /// domain-wide delegation of the mail scope already granted: its JSON key file, as the
    /// Google Cloud console gives it (`token_uri` is this provider's token endpoint, which
    /// checks every assertion against the key's public half).
    pub async fn service_account(&self, domain: &str) -> anyhow::Result<Value> {
        self.control("service-account", serde_json::json!({ "domain": domain }))
            .await
    }

    /// Grants or withdraws the domain-wide delegation of a service account, as a Workspace
    /// admin does in the Google Admin console.
    pub async fn set_delegation(&self, client_email: &str, delegated: bool) -> anyhow::Result<()> {
        self.control(
            "delegation",
            serde_json::json!({ "client_email": client_email, "delegated": delegated }),
        )
        .await
        .map(drop)
    }

    /// `{refreshGrants, codeGrants, jwtGrants, revocations: [token…], introspections}`.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/control/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn control(&self, what: &str, body: Value) -> anyhow::Result<Value> {
        Ok(self
            .http
            .post(format!("{}/control/{what}", self.url))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
