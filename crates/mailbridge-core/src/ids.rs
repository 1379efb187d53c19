//! Typed row identities ([`UserId`], [`ProfileId`], [`MailboxId`]): UUIDv7, so they sort by
//! creation time and cannot be mixed up with one another.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, utoipa::ToSchema)]
        #[schema(value_type = String, format = Uuid)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }

        /// Says what an id looks like instead of how UUID parsing failed.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "'{text}' is not an id; ids look like 01933b6e-7c2a-7d4e-9b1a-3f0c2d4e5f60 (copy it from the object's \"id\")"
                    ))
                })
            }
        }
    };
}

id_type!(
    /// A user of the API and console.
    UserId
);
id_type!(
    /// An email server profile.
    ProfileId
);
id_type!(
    /// A mailbox synchronized for one user.
    MailboxId
);
