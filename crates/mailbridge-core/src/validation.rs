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

/// At most this many folders are named for synchronization.
pub const MAX_FOLDERS: usize = 50;

/// IMAP folder names to synchronize besides INBOX and Sent: each 1–255 characters, no control
/// characters or LIST wildcards, INBOX not among them (it always is), each once.
pub fn folder_names(names: Vec<String>, field: &str) -> Result<Vec<String>, ValidationError> {
    if names.len() > MAX_FOLDERS {
        return Err(ValidationError::new(
            field,
            format!("name at most {MAX_FOLDERS} folders"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 255 {
            return Err(ValidationError::new(
                at,
                "a folder name has 1 to 255 characters",
            ));
        }
        if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
            return Err(ValidationError::new(
                at,
                format!(
                    "'{}' contains a control character or a wildcard (* %); write the folder's name as the mail client shows it, e.g. Archive or Projects/2027",
                    name.escape_default()
                ),
            ));
        }
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(ValidationError::new(
                at,
                "INBOX is always synchronized; leave it out",
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// A word outside a closed set (`"imap4"` for a protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{word}' is not one of {}", expected.join(", "))]
pub struct UnknownWord {
    pub word: String,
    pub expected: &'static [&'static str],
}
