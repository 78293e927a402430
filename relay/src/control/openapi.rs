//! The OpenAPI document of the control API, generated from the handlers'
//! annotations. The checked-in copy is relay/openapi.json; a test keeps the two equal
//! (regenerate with `TANDEM_UPDATE_OPENAPI=1 cargo test -p tandem-relay --test
//! control_openapi`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tandem relay control API",
        description = "Media sessions for calls, placed by signaling. Private listener \
                       only; every route needs a bearer token.",
        version = "1",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        super::create,
        super::update,
        super::read,
        super::remove,
        super::ended,
        super::load,
        super::health,
        super::openapi_json,
    ),
    components(schemas(tandem_control::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "sessions", description = "Media sessions"),
        (name = "service", description = "Load, health, this document"),
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
