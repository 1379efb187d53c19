//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, generated from the handlers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    contacts, emails, events, mailboxes, oauth, profiles, system, users, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Mailbridge API", description = "Server-side email synchronization: users, email server profiles, mailboxes, email, and the event feed and webhooks that carry every change to the host application."),
    servers((url = "/api/v1")),
    paths(
        users::create, users::list, users::show, users::update, users::remove, users::reset_token,
        profiles::create, profiles::list, profiles::show, profiles::update, profiles::remove,
        mailboxes::create, mailboxes::list, mailboxes::show, mailboxes::update, mailboxes::remove,
        mailboxes::alerts, mailboxes::my_alerts, mailboxes::dismiss_my_alert, mailboxes::dismiss_alert, mailboxes::test_and_enable,
        profiles::test_and_enable, oauth::start, oauth::disconnect, oauth::create_link,
        emails::list, emails::send, emails::show, emails::set_flags, emails::raw, emails::attachment,
        events::list, events::stream,
        webhooks::create, webhooks::list, webhooks::show, webhooks::update, webhooks::remove,
        webhooks::rotate_secret, webhooks::send_test, webhooks::deliveries, webhooks::delivery, webhooks::redeliver,
        contacts::upsert, contacts::list, contacts::remove,
        system::features, system::audit_log,
    ),
    modifiers(&BearerAuth, &CommonAnswers)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The answers every operation of a kind can give, added where a handler does not list them:
/// the document names every status a client can meet (Schemathesis holds the server to it).
/// - with a bearer token: `401` (none, or not a valid one) and `403` (not this caller's);
/// - with path parameters, or a query parameter naming a row (`…_id`): `404` (it names
///   nothing, or is not an id at all);
/// - with query parameters: `422` (one is not what the field takes);
/// - with a JSON body: `400` (not JSON), `413` (too large), `415` (not
///   `application/json`), `422` (a field is wrong);
/// - every operation: `503` (the database is not answering; try again later).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let parameters = operation.parameters.as_deref().unwrap_or_default();
                let has = |place: ParameterIn| parameters.iter().any(|p| p.parameter_in == place);
                let mut answers: Vec<(&str, &str)> = Vec::new();
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    answers.extend([
                        ("401", "No API token, or not a valid one."),
                        (
                            "403",
                            "Not for this caller: admins only, or not their mailbox.",
                        ),
                    ]);
                }
                let names_a_row = parameters
                    .iter()
                    .any(|p| p.parameter_in == ParameterIn::Query && p.name.ends_with("_id"));
                if has(ParameterIn::Path) || names_a_row {
                    answers.push(("404", "Nothing has that id (or it is not one)."));
                }
                if has(ParameterIn::Query) {
                    answers.push((
                        "422",
                        "A parameter is not what it takes; the message names it.",
                    ));
                }
                if operation.request_body.is_some() {
                    answers.extend([
                        ("400", "The body is not JSON."),
                        ("413", "The body is larger than the server takes."),
                        ("415", "The body is not sent as application/json."),
                        (
                            "422",
                            "A field is missing or wrong; the message names it and the fix.",
                        ),
                    ]);
                }
                answers.push(("503", "The database is not answering; try again later."));
                for (status, description) in answers {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_answer(description));
                }
            }
        }
    }
}

fn error_answer(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}
