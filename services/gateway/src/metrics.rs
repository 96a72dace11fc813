//! The gateway's request metrics (names in `tts_infra::metrics`) and the `/metrics` page.
//!
//! Two middlewares share the work: [`label`], inside the router, knows the route template a
//! request matched (`/api/jobs/{id}`, never the id itself, so that the series stay few) and
//! passes it out with the answer; [`track`], outside every refusal, counts every answer, the
//! refused ones too, by route, method and status, and times it. Refusals are also counted by
//! their JSON error code, which [`crate::error::AppError`] leaves on the answer.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tts_infra::metrics::{
    HTTP_DURATION, HTTP_REFUSALS, HTTP_REQUESTS, QUEUE_DEPTH, WORKERS_CAPACITY, WORKERS_LIVE,
    WORKERS_LOAD,
};

use crate::AppState;

/// The route template a request matched, handed from [`label`] to [`track`].
#[derive(Debug, Clone)]
struct Route(String);

/// The code of a JSON error answer, as `AppError` sets it.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

/// Route middleware: passes the matched route template out with the answer.
pub async fn label(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

/// Middleware outside every refusal: counts and times each answer; a request refused before it
/// was routed counts under the route `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map_or_else(|| "unmatched".to_string(), |r| r.0.clone());
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics::counter!(HTTP_REFUSALS, "code" => code.clone(), "status" => status.clone())
            .increment(1);
    }
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// `GET /metrics`: the process's metrics in Prometheus's text format. Admin keys only when
/// authentication is on (see `auth`), unless it is served on a listener of its own
/// ([`router`]).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus's text format", content_type = "text/plain", body = String),
        (status = 403, description = "`forbidden`: not an admin key", body = tts_contracts::ApiError),
    )
)]
pub async fn page(State(state): State<AppState>) -> Response {
    refresh(&state).await;
    (
        [(header::CONTENT_TYPE, tts_infra::metrics::CONTENT_TYPE)],
        tts_infra::metrics::render(),
    )
        .into_response()
}

/// Sets the gauges that describe the fleet rather than this process's own events: each
/// configured engine's queue depth (asked of the queue now) and its live workers, their load and
/// their capacity (from the registry's last heartbeats). A depth the queue cannot give (NATS
/// down) keeps its last value: the scrape itself still answers.
async fn refresh(state: &AppState) {
    let nodes = state.registry.node_views();
    for engine in &state.options.engines {
        match state.deps.queue.depth(engine).await {
            Ok(depth) => metrics::gauge!(QUEUE_DEPTH, "engine" => engine.clone()).set(depth as f64),
            Err(e) => tracing::debug!(%engine, error = %e, "queue depth unavailable for metrics"),
        }
        let live: Vec<_> = nodes.iter().filter(|n| &n.engine == engine).collect();
        let load: u32 = live.iter().map(|n| n.current_load).sum();
        let capacity: u32 = live.iter().map(|n| n.max_concurrent).sum();
        metrics::gauge!(WORKERS_LIVE, "engine" => engine.clone()).set(live.len() as f64);
        metrics::gauge!(WORKERS_LOAD, "engine" => engine.clone()).set(f64::from(load));
        metrics::gauge!(WORKERS_CAPACITY, "engine" => engine.clone()).set(f64::from(capacity));
    }
}

/// `/metrics` alone, for a listener of its own (`gateway.metrics_listen`): whoever can reach
/// that address may read it, without a key, so that a scraper needs no admin key and the
/// address can be kept off the public network.
pub fn router(state: AppState) -> Router {
    tts_infra::metrics::handle();
    Router::new().route("/metrics", get(page)).with_state(state)
}
