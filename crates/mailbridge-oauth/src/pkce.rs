//! [`Pkce`]: proof key for code exchange (RFC 7636), S256 only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// 256 random bits, base64url: an unguessable value for `state` and PKCE verifiers.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A verifier (kept by us until the code exchange) and its S256 challenge (sent to the
/// provider with the authorization request).
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Self {
        // RFC 7636 §4.1: 43–128 characters of [A-Za-z0-9-._~]; 32 bytes base64url is 43.
        let verifier = random_token();
        let challenge = Self::challenge_of(&verifier);
        Self {
            verifier,
            challenge,
        }
    }

    /// RFC 7636 §4.2: `BASE64URL(SHA256(ASCII(code_verifier)))`.
    pub fn challenge_of(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            Pkce::challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate();
        assert_eq!(p.verifier.len(), 43);
        assert_ne!(p.verifier, Pkce::generate().verifier);
    }
}
