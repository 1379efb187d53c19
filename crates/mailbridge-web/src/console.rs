//! The web console under `/console`: server-rendered pages (askama templates compiled into the
//! binary, CSS and a little JavaScript served by it) for admins and mailbox users. [`Viewer`]
//! is the signed-in person behind a page; every POST passes [`guard`]'s CSRF check.
//!
//! The pages call the same operations as the REST API (`routes::*::create_profile`, …), so a
//! rule holds in both; they turn an [`ApiError`] into a field error on the form or a page.

mod alerts;
mod assets;
mod form;
mod mailboxes;
mod profiles;
mod session;
mod users;
mod webhooks;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// The cookie that carries the session token.
const SESSION_COOKIE: &str = "mb_session";
/// Before a session exists, the sign-in form's CSRF token is a random value in this cookie
/// that the form must repeat (double submit).
const SIGNIN_COOKIE: &str = "mb_signin";
/// Bodies of console forms are small; anything larger is refused before it is read.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console",
            get(|| async { Redirect::to("/console/mailboxes") }),
        )
        .route("/console/assets/console.css", get(assets::css))
        .route("/console/assets/console.js", get(assets::js))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .merge(profiles::routes())
        .merge(mailboxes::routes())
        .merge(users::routes())
        .merge(webhooks::routes())
        .merge(alerts::routes())
        .route("/console/{*rest}", get(not_found))
        .layer(middleware::from_fn(guard))
}

async fn not_found(viewer: Viewer) -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        "There is no such page in the console; use the menu above.",
    )
    .with_viewer(&viewer)
}

/// The signed-in person behind a console request; without a valid session the browser is
/// sent to the sign-in page.
pub struct Viewer {
    pub caller: Caller,
    /// This session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        match state.store.session_user(token).await {
            Ok(Some(user)) => Ok(Viewer {
                caller: Caller(user),
                csrf: csrf_for(token),
            }),
            Ok(None) => Err(Redirect::to("/console/sign-in?expired=1").into_response()),
            Err(e) => Err(PageError::from(ApiError::from(e)).into_response()),
        }
    }
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.caller.is_admin()
    }

    /// Refuses a non-admin with a page that says so; `what` completes "only admins can …".
    fn require_admin(&self, what: &str) -> Result<(), PageError> {
        self.caller
            .require_admin(what)
            .map_err(|e| PageError::from(e).with_viewer(self))
    }

    /// What every page's frame shows: who is signed in, the menu, the open alerts.
    async fn layout(&self, state: &AppState, section: &'static str) -> Layout {
        // A failure to count alerts must not take the page down with it.
        let alerts = state
            .store
            .open_alert_count(self.caller.0.id)
            .await
            .unwrap_or(0);
        Layout {
            email: self.caller.0.email.to_string(),
            admin: self.is_admin(),
            csrf: self.csrf.clone(),
            section,
            alerts,
            notice: None,
        }
    }
}

/// The frame of a signed-in page.
pub struct Layout {
    pub email: String,
    pub admin: bool,
    pub csrf: String,
    /// Which menu entry is current: `mailboxes`, `profiles`, `users`, `webhooks`, `alerts`.
    pub section: &'static str,
    /// Open alerts of the viewer.
    pub alerts: usize,
    /// A one-line confirmation of what the last action did.
    pub notice: Option<String>,
}

impl Layout {
    #[must_use]
    fn with_notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }
}

/// The session's CSRF token: derived from the session token, so nothing more is stored and
/// it cannot be computed without the cookie that only this browser holds.
fn csrf_for(session_token: &str) -> String {
    Sha256::digest(format!("mailbridge console csrf\0{session_token}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Every console request passes here: a POST must carry the CSRF token of its session (or,
/// for the sign-in form, of its sign-in cookie) in the `csrf` field, else it is refused with
/// 403 before any handler runs; every answer gets headers that keep pages out of caches and
/// frames.
async fn guard(request: Request, next: Next) -> Response {
    let is_console = request.uri().path().starts_with("/console");
    let request = if is_console && request.method() == Method::POST {
        match check_csrf(request).await {
            Ok(request) => request,
            Err(refused) => return refused,
        }
    } else {
        request
    };
    let mut response = next.run(request).await;
    if is_console {
        let headers = response.headers_mut();
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

async fn check_csrf(request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let expected = if parts.uri.path() == "/console/sign-in" {
        cookie(&parts.headers, SIGNIN_COOKIE).map(str::to_owned)
    } else {
        match cookie(&parts.headers, SESSION_COOKIE) {
            Some(session) => Some(csrf_for(session)),
            // No session at all (it expired and the browser dropped its cookie): nothing is
            // done, and the person is asked to sign in again rather than shown a CSRF error.
            None => return Err(see_other("/console/sign-in?expired=1")),
        }
    };
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|e| {
            if crate::body::is_timeout(&e) {
                PageError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "The form took too long to arrive; check your connection and send it again.",
                )
            } else {
                PageError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form sent too much data; shorten what you typed and try again.",
                )
            }
            .into_response()
        })?;
    let sent = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    match (expected, sent) {
        (Some(expected), Some(sent)) if same(&expected, &sent) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(PageError::new(
            StatusCode::FORBIDDEN,
            "This form was refused because it did not carry this session's security token (CSRF). \
             It may come from another site, or your session changed since the page was opened. \
             Go back, reload the page, and send the form again.",
        )
        .titled("Form refused")
        .into_response()),
    }
}

/// Renders a template, or a plain 500 page if it cannot be (a bug, logged).
fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a console page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the server log has the details",
            )
                .into_response()
        }
    }
}

/// 303 See Other: where a browser goes after a form that changed something.
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A page that explains why a request could not be served and what to do.
#[derive(Template)]
#[template(path = "error.html")]
pub struct PageError {
    status: StatusCode,
    title: String,
    message: String,
    /// Boxed: an error travels in `Result`s and should stay small.
    layout: Option<Box<Layout>>,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Cannot do that now",
            s if s.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        Self {
            status,
            title: title.to_owned(),
            message: message.into(),
            layout: None,
        }
    }

    #[must_use]
    fn titled(mut self, title: &str) -> Self {
        title.clone_into(&mut self.title);
        self
    }

    /// Shows the menu of the signed-in viewer around the message.
    #[must_use]
    fn with_viewer(mut self, viewer: &Viewer) -> Self {
        self.layout = Some(Box::new(Layout {
            email: viewer.caller.0.email.to_string(),
            admin: viewer.is_admin(),
            csrf: viewer.csrf.clone(),
            section: "",
            alerts: 0,
            notice: None,
        }));
        self
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        // A capital letter: the API's messages are lower-case fragments, a page's are sentences.
        let mut message = e.message().to_owned();
        if let Some(first) = message.get(..1) {
            message = first.to_uppercase() + &message[1..];
        }
        Self::new(e.status(), message)
    }
}

impl From<mailbridge_store::StoreError> for PageError {
    fn from(e: mailbridge_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = render(&self);
        *response.status_mut() = status;
        response
    }
}

/// What a console handler answers: a page, a redirect, or an error page.
type PageResult = Result<Response, PageError>;

/// `?done=…`: what the action before the redirect did, for the page to confirm it.
#[derive(serde::Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// A page's query string: like [`crate::query::ApiQuery`], but a parameter that does not
/// parse is an error page rather than JSON.
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        crate::query::parse(parts.uri.query().unwrap_or_default())
            .map(PageQuery)
            .map_err(PageError::from)
    }
}

/// A path id that does not parse names nothing that exists: 404, like an unknown id.
fn path_id<T: std::str::FromStr>(raw: &str, kind: &str) -> Result<T, PageError> {
    raw.parse()
        .map_err(|_| PageError::from(ApiError::not_found(kind, raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mb_session=mbs_x; b="),
        );
        assert_eq!(cookie(&headers, "mb_session"), Some("mbs_x"));
        assert_eq!(cookie(&headers, "b"), None);
        assert_eq!(cookie(&headers, "mb"), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_compare_exactly() {
        let a = csrf_for("mbs_a");
        assert_eq!(a.len(), 64);
        assert_ne!(a, csrf_for("mbs_b"));
        assert!(same(&a, &csrf_for("mbs_a")));
        assert!(!same(&a, &a[..63]));
        assert!(!same(&a, &csrf_for("mbs_b")));
    }
}
