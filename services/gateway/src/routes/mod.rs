//! The HTTP API, one module per resource.

mod admin;
mod health;
mod jobs;
mod nodes;
pub mod openai;
mod synthesize;
mod voices;
mod ws;

pub use health::HealthCache;
pub use openai::OpenAiOptions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware;
use tower::util::option_layer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::AppError;
use crate::{AppState, auth, body, limits, trace};

pub fn router(state: AppState) -> Router {
    // The metrics recorder goes in before the first request: what is recorded before it exists
    // is lost.
    tts_infra::metrics::handle();
    let json_limit = state.options.max_json_bytes;
    // Uploads carry a clip of up to max_upload_bytes plus the form's other fields; the clip's own
    // limit is checked exactly while it is read, so that its 413 names the clip.
    let upload_limit = body::limit(&state, &Method::POST, "/api/voices");
    let timeout = TimeoutLayer::with_status_code(
        axum::http::StatusCode::GATEWAY_TIMEOUT,
        state.options.request_timeout,
    );
    let (api, document) = api(timeout, upload_limit).split_for_parts();
    let document = crate::openapi::finish(document);
    api.merge(docs(document))
        .route_layer(middleware::from_fn(crate::metrics::label))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json_limit))
        // Outermost first: CORS, then who is calling (a caller without a valid key is counted
        // against its address and the unauthenticated quota there, and refused), then the
        // limits of identified callers, then the admin-only paths.
        .layer(middleware::from_fn(auth::authorize))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::enforce,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // The console's page and assets hold no data: merged here, outside the API's keys and
        // limits (they count as requests without a key, see console.rs), inside the rest.
        .merge(crate::console::router(&state))
        .layer(option_layer(cors(&state.options.cors_origins)))
        // Outside everything that may refuse a request, so that every refusal drains the body.
        .layer(middleware::from_fn_with_state(state.clone(), body::guard))
        // Outside every refusal, so that refused requests are counted too; inside OpenAI's
        // error shape, which rewrites the answers it sees.
        .layer(middleware::from_fn(crate::metrics::track))
        // Outside every refusal too, so that `/v1` refusals all take OpenAI's shape.
        .layer(middleware::from_fn(openai::errors))
        // The request's own span (trace::context) is current here: its events go into it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|_: &axum::http::Request<_>| tracing::Span::current()),
        )
        .layer(middleware::from_fn(trace::context))
        .with_state(state)
}

/// The documented API: every handler is registered together with its documented path, so that
/// the router serves nothing the document leaves out. Per-route layers: plain requests get a
/// deadline; sync synthesis has its own (`sync_timeout_secs`), and uploads and WebSockets last as
/// long as they need.
fn api(timeout: TimeoutLayer, upload_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::skeleton())
        .routes(routes!(synthesize::synthesize))
        .routes(routes!(jobs::create).layer(timeout))
        .routes(routes!(jobs::status, jobs::cancel).layer(timeout))
        .routes(routes!(jobs::audio).layer(timeout))
        .routes(routes!(ws::job_events))
        .routes(routes!(voices::list).layer(timeout))
        .routes(routes!(voices::create).layer(DefaultBodyLimit::max(upload_limit)))
        .routes(routes!(voices::get, voices::delete).layer(timeout))
        .routes(routes!(openai::speech))
        .routes(routes!(openai::models).layer(timeout))
        .routes(routes!(openai::voices).layer(timeout))
        .routes(routes!(health::health).layer(timeout))
        .routes(routes!(nodes::list).layer(timeout))
        .routes(routes!(nodes::stream))
        .routes(routes!(admin::dead_letters).layer(timeout))
        .routes(routes!(admin::requeue).layer(timeout))
        .routes(routes!(crate::metrics::page))
}

/// The OpenAPI document of every route [`router`] serves, as `/openapi.json` answers it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let timeout = TimeoutLayer::with_status_code(
        axum::http::StatusCode::GATEWAY_TIMEOUT,
        std::time::Duration::from_secs(1),
    );
    crate::openapi::finish(api(timeout, 0).into_openapi())
}

/// `/openapi.json` and the interactive page at `/docs`, whose assets are compiled in.
fn docs(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    utoipa_swagger_ui::SwaggerUi::new(crate::openapi::PAGE_PATH)
        .url(crate::openapi::DOCUMENT_PATH, document)
        .into()
}

/// CORS as configured: no layer at all (so no headers) when no origin is listed.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static(trace::REQUEST_ID),
            HeaderName::from_static(tts_contracts::trace::TRACEPARENT),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-job-id"),
            HeaderName::from_static(trace::REQUEST_ID),
        ]);
    Some(if origins.iter().any(|o| o == "*") {
        layer.allow_origin(AllowOrigin::any())
    } else {
        let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(allowed))
    })
}

async fn not_found() -> AppError {
    AppError::not_found("not_found", "no such endpoint")
}

pub(crate) async fn method_not_allowed() -> AppError {
    AppError::client(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// The caller of a request, as the auth middleware found it.
pub(crate) type Caller = axum::Extension<auth::Caller>;

/// Parses a job id from the path, answering 404 for anything that cannot be one.
fn parse_job_id(raw: &str) -> Result<tts_contracts::JobId, AppError> {
    raw.parse()
        .map_err(|_| AppError::not_found("job_not_found", format!("no job {raw:?}")))
}

/// The `Idempotency-Key` header of the routes that queue a job, as the API document describes
/// it; `submit::idempotency_key` reads it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyKey {
    // One line in the document, hence a string rather than a doc comment of two lines.
    #[doc = "Makes the request safe to retry: a second request with the same key answers for \
        the job the first one made"]
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// The client's address, as the middleware found it.
pub(crate) type ClientIp = axum::Extension<crate::limits::ClientIp>;

/// The WebSocket handshake of a request, or `400 websocket_required` for a plain request.
fn require_websocket(
    upgrade: Result<
        axum::extract::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::extract::WebSocketUpgrade, AppError> {
    upgrade.map_err(|e| {
        AppError::client(
            axum::http::StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("this endpoint speaks WebSocket: {}", e.body_text()),
        )
    })
}

/// Closes a WebSocket with 1001 (going away) because the gateway is stopping, so that the client
/// reconnects to another one.
async fn close_going_away(socket: &mut axum::extract::ws::WebSocket) {
    use axum::extract::ws::{CloseFrame, Message, close_code};
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::AWAY,
            reason: "the gateway is shutting down; reconnect".into(),
        })))
        .await;
}
