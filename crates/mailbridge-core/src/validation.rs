//! [`ValidationError`]: why an input was refused, naming the field and the fix.

/// An input that cannot become a domain value. `field` is the JSON path a client sent
/// (`incoming.port`), so the API and the console can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, reported under a parent object (`port` → `incoming.port`).
    #[must_use]
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// A word outside a closed set (`"imap4"` for a protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{word}' is not one of {}", expected.join(", "))]
pub struct UnknownWord {
    pub word: String,
    pub expected: &'static [&'static str],
}
