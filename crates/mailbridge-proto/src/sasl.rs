//! SASL for mail logins: XOAUTH2 (Google's), OAUTHBEARER (RFC 7628) and PLAIN (RFC 4616),
//! with the error exchange done right: a refused bearer token comes back as a challenge
//! carrying base64 JSON, which the client must answer (XOAUTH2: an empty response;
//! OAUTHBEARER: `%x01`, RFC 7628 §3.2.3) before the server sends its final refusal.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};

/// How a mailbox logs in.
#[derive(Clone)]
pub enum Credentials {
    /// An OAuth 2.0 access token for `user`.
    OAuth { user: String, token: SecretString },
    /// A user name and password.
    Password {
        user: String,
        password: SecretString,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::OAuth { user, .. } => write!(f, "OAuth({user}, ***)"),
            Credentials::Password { user, .. } => write!(f, "Password({user}, ***)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    XOAuth2,
    OAuthBearer,
    Plain,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// The mechanism to use for these credentials among those the server offers
    /// (upper-case names). `None`: nothing fits.
    pub fn choose(credentials: &Credentials, offered: &[String]) -> Option<Mechanism> {
        let has = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
        match credentials {
            Credentials::OAuth { .. } => [Mechanism::XOAuth2, Mechanism::OAuthBearer]
                .into_iter()
                .find(|m| has(*m)),
            Credentials::Password { .. } => has(Mechanism::Plain).then_some(Mechanism::Plain),
        }
    }

    /// The client's first message, before base64.
    pub fn initial_response(self, credentials: &Credentials) -> Vec<u8> {
        match (self, credentials) {
            (Mechanism::XOAuth2, Credentials::OAuth { user, token }) => format!(
                "user={user}\x01auth=Bearer {}\x01\x01",
                token.expose_secret()
            )
            .into_bytes(),
            (Mechanism::OAuthBearer, Credentials::OAuth { user, token }) => format!(
                "n,a={},\x01auth=Bearer {}\x01\x01",
                gs2_escape(user),
                token.expose_secret()
            )
            .into_bytes(),
            (_, Credentials::Password { user, password }) => {
                format!("\0{user}\0{}", password.expose_secret()).into_bytes()
            }
            (_, Credentials::OAuth { user, token }) => {
                // PLAIN is never chosen for a token; encode as XOAUTH2 would.
                format!(
                    "user={user}\x01auth=Bearer {}\x01\x01",
                    token.expose_secret()
                )
                .into_bytes()
            }
        }
    }

    /// The client's answer to a challenge after the initial response: the server is
    /// reporting an error, and waits for this before it says NO.
    pub fn error_reply(self) -> &'static [u8] {
        match self {
            Mechanism::OAuthBearer => b"\x01",
            Mechanism::XOAuth2 | Mechanism::Plain => b"",
        }
    }

    /// The initial response as base64, as every protocol sends it.
    pub fn encoded_initial_response(self, credentials: &Credentials) -> String {
        B64.encode(self.initial_response(credentials))
    }
}

/// RFC 5801 §4: `=` and `,` in the authorization identity are escaped.
fn gs2_escape(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// Turns a base64 error challenge into words: `status 401, schemes bearer, scope …`.
pub fn describe_challenge(base64_text: &str) -> Option<String> {
    let bytes = B64.decode(base64_text.trim()).ok()?;
    describe_challenge_bytes(&bytes)
}

/// Like [`describe_challenge`], for a challenge already decoded.
pub fn describe_challenge_bytes(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(bytes) else {
        return Some(String::from_utf8_lossy(bytes).into_owned());
    };
    // The fields Gmail and Dovecot send, in the order people read them; then any others.
    const KNOWN: [&str; 3] = ["status", "schemes", "scope"];
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let words: Vec<String> = KNOWN
        .iter()
        .filter_map(|k| fields.get(*k).map(|v| format!("{k} {}", text(v))))
        .chain(
            fields
                .iter()
                .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
                .map(|(k, v)| format!("{k} {}", text(v))),
        )
        .collect();
    Some(words.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth() -> Credentials {
        Credentials::OAuth {
            user: "ann@example.com".into(),
            token: SecretString::from("ya29.tok"),
        }
    }

    #[test]
    fn xoauth2_and_oauthbearer_initial_responses() {
        assert_eq!(
            Mechanism::XOAuth2.initial_response(&oauth()),
            b"user=ann@example.com\x01auth=Bearer ya29.tok\x01\x01"
        );
        assert_eq!(
            Mechanism::OAuthBearer.initial_response(&oauth()),
            b"n,a=ann@example.com,\x01auth=Bearer ya29.tok\x01\x01"
        );
        let pw = Credentials::Password {
            user: "bob".into(),
            password: SecretString::from("pw"),
        };
        assert_eq!(Mechanism::Plain.initial_response(&pw), b"\0bob\0pw");
        assert_eq!(Mechanism::OAuthBearer.error_reply(), b"\x01");
        assert_eq!(Mechanism::XOAuth2.error_reply(), b"");
    }

    #[test]
    fn mechanisms_are_chosen_from_what_is_offered() {
        let offered = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Mechanism::choose(&oauth(), &offered(&["PLAIN", "XOAUTH2"])),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            Mechanism::choose(&oauth(), &offered(&["oauthbearer"])),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            Mechanism::choose(&oauth(), &offered(&["PLAIN", "LOGIN"])),
            None
        );
    }

    #[test]
    fn gmail_error_challenges_are_decoded() {
        // Gmail's answer to an expired token.
        let c = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";
        assert_eq!(
            describe_challenge(c).unwrap(),
            "status 401, schemes bearer, scope https://mail.google.com/"
        );
        assert_eq!(describe_challenge(""), None);
    }
}
