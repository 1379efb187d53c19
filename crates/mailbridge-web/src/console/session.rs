//! Signing in to the console and out of it.
//!
//! A person signs in with their email address and their API token: the credential an admin
//! already hands out (`mailbridge users create` prints the first admin's; "Reset token" on
//! the Users page issues a new one). That avoids a second secret per user — no passwords to
//! store, hash, reset or leak — and a token reset signs the person out everywhere. The token
//! only crosses once; the browser then holds a session cookie (`HttpOnly`, `SameSite=Lax`,
//! `Secure` behind https), whose token is stored only as a hash.

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailbridge_core::EmailAddress;
use rand::RngCore;

use super::form::{Field, FieldErrors, FormValues};
use super::{
    Layout, PageQuery, PageResult, SESSION_COOKIE, SIGNIN_COOKIE, cookie, render, see_other,
};
use crate::AppState;

/// How long a console session lasts before the person signs in again.
const SESSION_HOURS: i64 = 12;

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    title: &'static str,
    layout: Option<Layout>,
    csrf: String,
    expired: bool,
    fields: Vec<Field>,
    has_errors: bool,
    general_errors: Vec<String>,
}

#[derive(serde::Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    expired: Option<String>,
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(q): PageQuery<SignInQuery>,
) -> Response {
    page(
        &state,
        &headers,
        &FormValues::default(),
        FieldErrors::default(),
        q.expired.is_some(),
    )
}

/// The form, with a sign-in CSRF cookie: the one already set, or a new random one.
fn page(
    state: &AppState,
    headers: &HeaderMap,
    values: &FormValues,
    mut errors: FieldErrors,
    expired: bool,
) -> Response {
    let csrf = cookie(headers, SIGNIN_COOKIE).map_or_else(random_token, str::to_owned);
    let fields = vec![
        Field::text("email", "Email address")
            .kind("email")
            .autocomplete("username")
            .required()
            .from(values, &mut errors),
        Field::text("token", "Access token")
            .kind("password")
            .autocomplete("current-password")
            .required()
            .help("The API token an admin gave you; it starts with mbt_.")
            .from(values, &mut errors),
    ];
    let general_errors = errors.rest();
    let mut response = render(&SignInPage {
        title: "Sign in",
        layout: None,
        has_errors: !general_errors.is_empty() || fields.iter().any(|f| f.error.is_some()),
        general_errors,
        csrf: csrf.clone(),
        expired,
        fields,
    });
    set_cookie(state, &mut response, SIGNIN_COOKIE, &csrf, 3600);
    response
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let values = FormValues::from_pairs(pairs);
    let mut errors = FieldErrors::default();
    let email = match values.opt("email") {
        None => {
            errors.add("email", "enter the email address you were registered with");
            None
        }
        Some(e) => EmailAddress::parse(&e, "email")
            .map_err(|e| errors.validation(e))
            .ok(),
    };
    let token = values.opt("token");
    if token.is_none() {
        errors.add("token", "enter your access token (it starts with mbt_)");
    }
    let user = match (&email, &token) {
        (Some(email), Some(token)) => state
            .store
            .user_by_token(token)
            .await?
            .filter(|u| u.email == *email),
        _ => None,
    };
    let Some(user) = user else {
        if errors.is_empty() {
            errors.add(
                "token",
                "this email address and access token do not belong together; check both, or ask an admin to reset your token",
            );
        }
        let mut response = page(&state, &headers, &values, errors, false);
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return Ok(response);
    };
    let expires = state.clock.now() + chrono::Duration::hours(SESSION_HOURS);
    let session = state.store.create_session(user.id, expires).await?;
    tracing::info!(user = %user.email, "console sign-in");
    let mut response = see_other("/console/mailboxes");
    set_cookie(
        &state,
        &mut response,
        SESSION_COOKIE,
        session.reveal(),
        SESSION_HOURS * 3600,
    );
    set_cookie(&state, &mut response, SIGNIN_COOKIE, "", 0);
    Ok(response)
}

pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.store.delete_session(token).await?;
    }
    let mut response = see_other("/console/sign-in");
    set_cookie(&state, &mut response, SESSION_COOKIE, "", 0);
    Ok(response.into_response())
}

/// `HttpOnly` (no script reads it), `SameSite=Lax` (not sent with another site's POST, but
/// sent when the OAuth provider sends the browser back), `Secure` when served over https.
fn set_cookie(state: &AppState, response: &mut Response, name: &str, value: &str, max_age: i64) {
    let secure = if state.config.public_base_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
