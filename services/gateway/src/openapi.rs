//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`, and its interactive page
//! at `/docs`.
//!
//! The document is not written by hand: each handler carries its own `#[utoipa::path]` (in its
//! route module) and the router registers handler and documented path in one call (see
//! `routes::api`), so a route cannot be served without being documented. What every operation
//! shares — the API key, and the refusals any request can meet before its handler runs — is added
//! here, once.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};
use utoipa::{Modify, OpenApi as _};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// Where its interactive page is served.
pub const PAGE_PATH: &str = "/docs";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "voice-clone-tts",
        description = "Self-hosted voice-cloning text-to-speech. Synthesis runs as jobs on a \
            queue: answer when done (`POST /api/synthesize`), or submit and poll or follow \
            (`POST /api/jobs`, `GET /ws/jobs/{id}`). Errors are `{\"error\": code, \"message\": \
            ...}`; docs/API.md has every code.",
        license(name = "MIT")
    ),
    tags(
        (name = "synthesis", description = "Text to speech, sync or as jobs"),
        (name = "voices", description = "Stock voices and cloned voices"),
        (name = "openai", description = "OpenAI's speech API, for its clients"),
        (name = "operations", description = "Health, the worker fleet and metrics"),
    ),
    components(schemas(tts_contracts::ApiError)),
    modifiers(&Shared)
)]
struct ApiDoc;

/// The document's skeleton (info, tags, shared parts); the routes add their paths to it.
pub fn skeleton() -> OpenApi {
    ApiDoc::openapi()
}

/// Adds what every operation shares: the bearer key (except on the public health probe) and the
/// refusals the middleware makes before any handler runs.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key as `Authorization: Bearer <key>` (WebSockets may send it as \
                         `?access_token=`). Only needed when `auth.required` is on.",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("api_key", Vec::<String>::new()),
        ]);
    }
}

/// Adds the shared refusals to every operation of `openapi`; called once the routes have added
/// their paths. The public health probe is refused by nothing but its own dependencies.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let public = path == "/health";
        // Errors on `/v1` take OpenAI's shape.
        let body = if path.starts_with("/v1/") {
            "OpenAiError"
        } else {
            "ApiError"
        };
        for operation in operations(item) {
            if !public {
                add(operation, body, "401", "`unauthorized`: no valid API key");
                add(
                    operation,
                    body,
                    "429",
                    "`rate_limit_exceeded`: over a rate or concurrency limit; `Retry-After` says \
                     when to try again",
                );
            }
            add(
                operation,
                body,
                "503",
                "`service_unavailable`: NATS, Redis or storage did not answer (with `Retry-After`)",
            );
        }
    }
    openapi
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Documents `status` on `operation` with the error body, unless the route documents it itself
/// (more precisely).
fn add(operation: &mut Operation, body: &str, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(error_response(body, description)));
}

fn error_response(body: &str, description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(
                Ref::from_schema_name(body),
            ))),
        )
        .build()
}
