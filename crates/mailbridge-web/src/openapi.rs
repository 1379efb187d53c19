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
        emails::list, emails::send, emails::show, emails::raw, emails::attachment,
        events::list, events::stream,
        webhooks::create, webhooks::list, webhooks::show, webhooks::update, webhooks::remove,
        webhooks::rotate_secret, webhooks::send_test, webhooks::deliveries, webhooks::delivery, webhooks::redeliver,
        contacts::upsert, contacts::list, contacts::remove,
        system::features, system::audit_log,
    ),
    modifiers(&BearerAuth)
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
