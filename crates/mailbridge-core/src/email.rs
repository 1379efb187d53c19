//! [`EmailAddress`]: an address a mail server will accept as a login and a recipient.

use std::fmt;

use crate::ValidationError;

/// A syntactically valid address (`local@domain`), domain lower-cased so that lookups and
/// uniqueness do not depend on how someone typed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses an address; `field` names the input in the error.
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        let invalid = |why: &str| {
            ValidationError::new(
                field,
                format!("{why}; write an address such as name@example.com"),
            )
        };
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("email address is empty"));
        }
        // RFC 5321 §4.5.3.1.3: a path is at most 256 octets, so an address at most 254.
        if s.len() > 254 {
            return Err(invalid("email address is longer than 254 characters"));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(invalid(&format!("'{s}' has no '@'")));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid(&format!(
                "'{s}' needs 1 to 64 characters before the '@'"
            )));
        }
        if local.contains('@')
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        {
            return Err(invalid(&format!(
                "'{s}' contains a character not allowed in an address"
            )));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(invalid(&format!(
                "'{s}' has a misplaced '.' before the '@'"
            )));
        }
        crate::server::check_domain(domain)
            .map_err(|why| invalid(&format!("'{s}' has an invalid domain: {why}")))?;
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_lowercases_the_domain() {
        let a = EmailAddress::parse(" Ann.Lee+crm@Example.COM ", "email").unwrap();
        assert_eq!(a.as_str(), "Ann.Lee+crm@example.com");
        assert_eq!(a.domain(), "example.com");
    }

    #[test]
    fn refuses_malformed_addresses_naming_the_field() {
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "ann@@example.com",
            "an n@example.com",
            "ann@exa mple.com",
            "ann@-example.com",
            ".ann@example.com",
            "ann..lee@example.com",
            "ann@example..com",
            "<ann@example.com>",
        ] {
            let err = EmailAddress::parse(bad, "owner.email").unwrap_err();
            assert_eq!(err.field, "owner.email", "{bad}");
            assert!(err.message.contains("name@example.com"), "{bad}: {err}");
        }
    }
}
