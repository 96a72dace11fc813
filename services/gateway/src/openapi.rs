//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`, and its interactive page
//! at `/docs`.
//!
//! The document is not written by hand: each handler carries its own `#[utoipa::path]` (in its
//! route module) and the router registers handler and documented path in one call (see
//! `routes::api`), so a route cannot be served without being documented. What every operation
//! shares — the API key, and the refusals any request can meet before its handler runs — is added
//! here, once.

use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
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
        (name = "pages", description = "The web console and this document"),
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

/// Adds the shared refusals to every operation of `openapi`, then the pages the gateway serves
/// beside the API; called once the routes have added their paths. The public health probe is
/// refused by nothing but its own dependencies.
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
    add_pages(&mut openapi);
    openapi
}

/// The pages beside the API, so that the document names every route the gateway serves: the
/// web console's files, this document, and its interactive page (whose own assets are served
/// below it). None needs a key or holds data.
fn add_pages(openapi: &mut OpenApi) {
    let mut pages: Vec<(&str, &str, &str)> = crate::console::files()
        .map(|(path, content_type)| {
            let summary = if path == "/" {
                "The web console"
            } else {
                "A file of the web console"
            };
            (path, content_type, summary)
        })
        .collect();
    let page = format!("{PAGE_PATH}/");
    pages.push((DOCUMENT_PATH, "application/json", "This document"));
    pages.push((&page, "text/html", "This document's interactive page"));
    for (path, content_type, summary) in pages {
        let operation = OperationBuilder::new()
            .summary(Some(summary))
            .tag("pages")
            .security(SecurityRequirement::default())
            .response(
                "200",
                ResponseBuilder::new()
                    .description(summary)
                    .content(content_type, Content::default())
                    .build(),
            )
            .build();
        openapi
            .paths
            .paths
            .insert(path.to_string(), PathItem::new(HttpMethod::Get, operation));
    }
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
