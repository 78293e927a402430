//! The OpenAPI document, generated from the handlers' annotations. The checked-in
//! copy is signaling/openapi.json; a test keeps the two equal (regenerate with
//! `TANDEM_UPDATE_OPENAPI=1 cargo test -p tandem-signaling --test api_openapi`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{accounts, devices, error, types};
use crate::store::{DeviceLimits, LimitOverrides};

#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        // Every authenticated operation can answer 429 once its source is banned.
        let banned = ResponseBuilder::new()
            .description("too_many_auth_failures: this address failed to authenticate too often")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    op.responses
                        .responses
                        .insert("429".to_owned(), banned.clone().into());
                }
            }
        }
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tandem signaling API",
        description = "Accounts, public IDs, devices, push tokens and live registrations. \
                       Private listener only.",
        version = "1",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        super::health,
        super::ready,
        super::metrics_text,
        super::openapi_json,
        accounts::create,
        accounts::list,
        accounts::get_one,
        accounts::update,
        accounts::remove,
        accounts::add_phone_number,
        accounts::remove_phone_number,
        accounts::set_username,
        accounts::set_limits,
        devices::admin_list,
        devices::admin_authorise,
        devices::admin_revoke,
        devices::admin_set_push,
        devices::admin_clear_push,
        accounts::turn_credentials,
        devices::registrations,
        accounts::me,
        accounts::me_set_username,
        accounts::me_set_password,
        accounts::me_turn_credentials,
        devices::me_list,
        devices::me_authorise,
        devices::me_revoke,
        devices::me_set_push,
        devices::me_clear_push,
        super::dialplan::get,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        DeviceLimits,
        LimitOverrides,
        types::DeviceClassSchema,
        types::MediaPolicySchema,
        types::PushProviderSchema,
    )),
    modifiers(&Security),
    tags(
        (name = "service", description = "Health, metrics, this document"),
        (name = "accounts", description = "Administrator: accounts and public IDs"),
        (name = "devices", description = "Administrator: devices and registrations"),
        (name = "me", description = "Account holder (HTTP Basic)"),
    )
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json` (pretty JSON, trailing newline).
pub fn document() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    s.push('\n');
    s
}
