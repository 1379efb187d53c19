//! [`WebhookSpec`]: an endpoint the host application receives events at — its URL, which
//! events and mailboxes it wants — checked from a [`WebhookDraft`]; and [`is_public`], the
//! rule for which addresses a webhook may reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use crate::{EventType, MailboxId, ValidationError};

/// What the API takes to create or change an endpoint (absent fields keep their value).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDraft {
    /// Where deliveries are POSTed: `https://…` (or `http://…`).
    #[schema(example = "https://crm.example.com/hooks/mailbridge")]
    pub url: Option<String>,
    pub description: Option<String>,
    /// Only these event types; absent or `null`: every type.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Option<Vec<EventType>>>,
    /// Only these mailboxes' events; absent or `null`: every mailbox.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<uuid::Uuid>>, min_items = 1)]
    pub mailbox_ids: Option<Option<Vec<MailboxId>>>,
    /// Whether deliveries are made (default true).
    pub enabled: Option<bool>,
}

/// A complete, checked endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    pub url: Url,
    pub description: Option<String>,
    pub event_types: Option<Vec<EventType>>,
    pub mailbox_ids: Option<Vec<MailboxId>>,
    pub enabled: bool,
}

impl WebhookDraft {
    /// Resolves the draft over `base` (the stored endpoint when changing one).
    pub fn resolve(self, base: Option<&WebhookSpec>) -> Result<WebhookSpec, ValidationError> {
        let url = match (self.url, base) {
            (Some(raw), _) => webhook_url(&raw)?,
            (None, Some(b)) => b.url.clone(),
            (None, None) => {
                return Err(ValidationError::new(
                    "url",
                    "url is required: where to POST events, e.g. https://crm.example.com/hooks/mailbridge",
                ));
            }
        };
        let description = match self.description {
            Some(d) if d.chars().count() > 500 => {
                return Err(ValidationError::new(
                    "description",
                    "description must be at most 500 characters",
                ));
            }
            Some(d) => Some(d.trim().to_owned()).filter(|d| !d.is_empty()),
            None => base.and_then(|b| b.description.clone()),
        };
        let event_types = match self.event_types {
            Some(Some(t)) if t.is_empty() => {
                return Err(ValidationError::new(
                    "event_types",
                    "event_types is empty, so nothing would be sent; leave it out (or null) for every type",
                ));
            }
            Some(t) => t,
            None => base.and_then(|b| b.event_types.clone()),
        };
        let mailbox_ids = match self.mailbox_ids {
            Some(Some(m)) if m.is_empty() => {
                return Err(ValidationError::new(
                    "mailbox_ids",
                    "mailbox_ids is empty, so nothing would be sent; leave it out (or null) for every mailbox",
                ));
            }
            Some(m) => m,
            None => base.and_then(|b| b.mailbox_ids.clone()),
        };
        Ok(WebhookSpec {
            url,
            description,
            event_types,
            mailbox_ids,
            enabled: self.enabled.or(base.map(|b| b.enabled)).unwrap_or(true),
        })
    }
}

/// An http(s) URL with a host and no credentials in it.
fn webhook_url(raw: &str) -> Result<Url, ValidationError> {
    let invalid = |why: &str| {
        ValidationError::new(
            "url",
            format!(
                "'{raw}' {why}; write a full address such as https://crm.example.com/hooks/mailbridge"
            ),
        )
    };
    if raw.len() > 2000 {
        return Err(invalid("is longer than 2000 characters"));
    }
    let url = Url::parse(raw.trim()).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must start with https:// (or http://)"));
    }
    if url.host().is_none() {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "carries a user name or password; deliveries are signed instead (check the webhook-signature header)",
        ));
    }
    Ok(url)
}

/// Whether a webhook may be delivered to `ip`: an address of the internet, not of this
/// machine or of a private network (loopback, RFC 1918, link-local, carrier-grade NAT,
/// unique-local IPv6, multicast, unspecified and documentation ranges are not), so a webhook
/// cannot be used to probe the network Mailbridge runs in.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking, RFC 2544
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4)))
}

fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internet_addresses_are_public() {
        for public in ["8.8.8.8", "142.250.74.46", "2a00:1450:4001:82b::200e"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
            "192.0.2.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn drafts_are_checked_and_patches_keep_what_they_do_not_name() {
        let draft = |v: serde_json::Value| serde_json::from_value::<WebhookDraft>(v).unwrap();
        let spec = draft(serde_json::json!({"url": "https://crm.example.com/h", "event_types": ["email.received"]}))
            .resolve(None)
            .unwrap();
        assert_eq!(spec.event_types, Some(vec![EventType::EmailReceived]));
        assert!(spec.enabled);
        let patched = draft(serde_json::json!({"enabled": false}))
            .resolve(Some(&spec))
            .unwrap();
        assert_eq!(
            (patched.url.as_str(), patched.enabled),
            ("https://crm.example.com/h", false)
        );
        let all = draft(serde_json::json!({"event_types": null}))
            .resolve(Some(&spec))
            .unwrap();
        assert_eq!(all.event_types, None);
        for (bad, field) in [
            (serde_json::json!({}), "url"),
            (serde_json::json!({"url": "ftp://x.example/h"}), "url"),
            (
                serde_json::json!({"url": "https://user:pw@x.example/h"}),
                "url",
            ),
            (serde_json::json!({"url": "not a url"}), "url"),
            (
                serde_json::json!({"url": "https://x.example/h", "event_types": []}),
                "event_types",
            ),
        ] {
            assert_eq!(
                draft(bad.clone()).resolve(None).unwrap_err().field,
                field,
                "{bad}"
            );
        }
        assert!(
            serde_json::from_value::<WebhookDraft>(
                serde_json::json!({"url": "https://x.example", "event_types": ["email.nope"]})
            )
            .is_err()
        );
    }
}
