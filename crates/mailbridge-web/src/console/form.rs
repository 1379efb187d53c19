//! [`FormValues`] (what a form sent, kept to show again) and [`Field`] (one labelled input
//! with its help and its error), shared by every console form.

use std::collections::BTreeMap;
use std::str::FromStr;

use mailbridge_core::ValidationError;

use crate::error::ApiError;

/// The fields a form sent, by name. Names are the API's dotted paths (`incoming.port`), so
/// the errors the core and the store report land next to the input they are about.
#[derive(Debug, Default)]
pub struct FormValues(BTreeMap<String, String>);

impl FormValues {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs.into_iter().filter(|(k, _)| k != "csrf").collect())
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// The value as typed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// The trimmed value, or `None` when the field was left empty.
    pub fn opt(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A comma-separated list (`Archive, Projects/2027`), each entry trimmed, empty ones left
    /// out.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A closed-set word (`tls`, `imap`…); an unknown one is an error on the field.
    pub fn word<T>(&self, name: &str, errors: &mut FieldErrors) -> Option<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.opt(name)?;
        raw.parse()
            .map_err(|e: T::Err| errors.add(name, format!("{e}")))
            .ok()
    }

    /// An id chosen from a select; one that does not parse was not among the choices.
    pub fn pick<T: FromStr>(&self, name: &str, what: &str, errors: &mut FieldErrors) -> Option<T> {
        let raw = self.opt(name)?;
        raw.parse()
            .map_err(|_| errors.add(name, format!("choose {what} from the list")))
            .ok()
    }

    /// A whole number; anything else is an error on the field.
    pub fn number(&self, name: &str, label: &str, errors: &mut FieldErrors) -> Option<i64> {
        let raw = self.opt(name)?;
        raw.parse()
            .map_err(|_| errors.add(name, format!("{label} must be a whole number, not '{raw}'")))
            .ok()
    }
}

/// Errors by field; those that name no field of the form are shown above it.
#[derive(Debug, Default)]
pub struct FieldErrors {
    by_field: BTreeMap<String, String>,
    general: Vec<String>,
}

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        let message = message.into();
        // Shown next to its field, "oauth.client_secret is required…" reads "This field is
        // required…": the API's field identifiers are not words for a person (plain words
        // such as "port 70000 is out of range" stay as they are).
        let last = field.rsplit('.').next().unwrap_or(field);
        let message = match [field, last]
            .iter()
            .filter(|name| name.contains(['.', '_']))
            .find_map(|name| message.strip_prefix(name))
        {
            Some(rest) if rest.starts_with(' ') => format!("This field{rest}"),
            _ => sentence(&message),
        };
        if field.is_empty() {
            self.general.push(message);
        } else {
            self.by_field.entry(field.to_owned()).or_insert(message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_field.is_empty() && self.general.is_empty()
    }

    pub fn validation(&mut self, e: ValidationError) {
        self.add(&e.field, e.message);
    }

    /// An operation's refusal: next to its field when it names one, else above the form.
    pub fn api(&mut self, e: &ApiError) {
        self.add(e.field().unwrap_or_default(), e.message());
    }

    /// Takes the error of a field shown on the form.
    pub fn take(&mut self, field: &str) -> Option<String> {
        self.by_field.remove(field)
    }

    /// What is left after every field took its own: shown in the summary above the form.
    pub fn rest(self) -> Vec<String> {
        self.general
            .into_iter()
            .chain(self.by_field.into_iter().map(|(f, m)| format!("{f}: {m}")))
            .collect()
    }
}

/// The API's messages are lower-case fragments; a form shows sentences.
pub fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One choice of a select.
pub struct Choice {
    pub value: String,
    pub label: String,
}

impl Choice {
    pub fn new(value: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            label: label.into(),
        }
    }
}

/// One labelled input of a form, as `_field.html` renders it.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    /// `text`, `email`, `password`, `url`, `date`, `select`, or `secret-text` (a text area
    /// for a secret such as a key file, never filled back in).
    pub input_type: &'static str,
    pub value: String,
    pub choices: Vec<Choice>,
    pub help: Option<String>,
    pub error: Option<String>,
    pub required: bool,
    pub autocomplete: &'static str,
    /// For numbers: the on-screen keyboard of digits, without the browser's own checks.
    pub numeric: bool,
}

impl Field {
    pub fn text(name: &'static str, label: &'static str) -> Self {
        Self {
            name,
            label,
            input_type: "text",
            value: String::new(),
            choices: Vec::new(),
            help: None,
            error: None,
            required: false,
            autocomplete: "off",
            numeric: false,
        }
    }

    pub fn select(name: &'static str, label: &'static str, choices: Vec<Choice>) -> Self {
        Self {
            input_type: "select",
            choices,
            ..Self::text(name, label)
        }
    }

    #[must_use]
    pub fn kind(mut self, input_type: &'static str) -> Self {
        self.input_type = input_type;
        self
    }

    #[must_use]
    pub fn numeric(mut self) -> Self {
        self.numeric = true;
        self
    }

    #[must_use]
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    #[must_use]
    pub fn autocomplete(mut self, autocomplete: &'static str) -> Self {
        self.autocomplete = autocomplete;
        self
    }

    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Fills the value from what was sent (passwords are never shown again) and takes the
    /// field's error.
    #[must_use]
    pub fn from(mut self, values: &FormValues, errors: &mut FieldErrors) -> Self {
        if self.input_type != "password" && self.input_type != "secret-text" {
            values.get(self.name).clone_into(&mut self.value);
        }
        self.error = errors.take(self.name);
        self
    }

    /// The element id: the name with dots made dashes.
    pub fn id(&self) -> String {
        format!("f-{}", self.name.replace('.', "-"))
    }

    /// `aria-describedby`: the help and the error, when there are any.
    pub fn described_by(&self) -> String {
        let id = self.id();
        let mut parts = Vec::new();
        if self.help.is_some() {
            parts.push(format!("{id}-help"));
        }
        if self.error.is_some() {
            parts.push(format!("{id}-error"));
        }
        parts.join(" ")
    }
}

/// A titled group of fields; `collapsed` groups fold away (prefilled settings most people
/// keep) unless one of their fields has an error.
pub struct Group {
    pub legend: &'static str,
    pub fields: Vec<Field>,
    pub collapsed: bool,
}

impl Group {
    pub fn new(legend: &'static str, fields: Vec<Field>) -> Self {
        Self {
            legend,
            fields,
            collapsed: false,
        }
    }

    #[must_use]
    pub fn collapsed(mut self) -> Self {
        self.collapsed = self.fields.iter().all(|f| f.error.is_none());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_what_was_typed_and_errors_find_their_fields() {
        let values = FormValues::from_pairs(vec![
            ("csrf".into(), "x".into()),
            ("incoming.port".into(), " 99x ".into()),
            ("name".into(), "  ".into()),
        ]);
        let mut errors = FieldErrors::default();
        assert_eq!(values.number("incoming.port", "Port", &mut errors), None);
        assert_eq!(values.opt("name"), None);
        assert_eq!(values.get("csrf"), "");
        errors.add("", "the profile is full");
        let port = Field::text("incoming.port", "Port").from(&values, &mut errors);
        assert_eq!(port.value, " 99x ");
        assert_eq!(
            port.error.as_deref(),
            Some("Port must be a whole number, not '99x'")
        );
        assert_eq!(port.described_by(), "f-incoming-port-error");
        assert_eq!(errors.rest(), vec!["The profile is full".to_owned()]);
    }

    #[test]
    fn an_error_next_to_its_field_does_not_repeat_the_apis_field_name() {
        let mut errors = FieldErrors::default();
        errors.add(
            "oauth.client_secret",
            "oauth.client_secret is required for a new Gmail OAuth profile",
        );
        errors.add("name", "name must be at most 100 characters");
        errors.add("email", "'x' is not an email address");
        assert_eq!(
            errors.take("oauth.client_secret").as_deref(),
            Some("This field is required for a new Gmail OAuth profile")
        );
        errors.add("incoming.port", "port 70000 is out of range");
        assert_eq!(
            errors.take("name").as_deref(),
            Some("Name must be at most 100 characters")
        );
        assert_eq!(
            errors.take("incoming.port").as_deref(),
            Some("Port 70000 is out of range")
        );
        assert_eq!(
            errors.take("email").as_deref(),
            Some("'x' is not an email address")
        );
    }

    #[test]
    fn passwords_are_never_filled_back() {
        let values = FormValues::from_pairs(vec![("oauth.client_secret".into(), "s3".into())]);
        let f = Field::text("oauth.client_secret", "Client secret")
            .kind("password")
            .from(&values, &mut FieldErrors::default());
        assert_eq!(f.value, "");
    }
}
