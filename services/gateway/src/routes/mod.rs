//! The HTTP API, one module per resource.

mod health;
mod jobs;
mod synthesize;
mod voices;
mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::AppError;

pub fn router(state: AppState) -> Router {
    let json_limit = state.options.max_json_bytes;
    // Uploads carry a clip of up to max_upload_bytes plus the form's other fields; the clip's own
    // limit is checked exactly while it is read, so that its 413 names the clip.
    let upload_limit = state.options.max_upload_bytes + 1024 * 1024;
    Router::new()
        .route("/api/synthesize", post(synthesize::synthesize))
        .route("/api/jobs", post(jobs::create))
        .route("/api/jobs/{id}", get(jobs::status))
        .route("/api/jobs/{id}/audio", get(jobs::audio))
        .route("/ws/jobs/{id}", get(ws::job_events))
        .route(
            "/api/voices",
            get(voices::list)
                .post(voices::create)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/voices/{id}", get(voices::get).delete(voices::delete))
        .route("/health", get(health::health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> AppError {
    AppError::client(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// Parses a job id from the path, answering 404 for anything that cannot be one.
fn parse_job_id(raw: &str) -> Result<tts_contracts::JobId, AppError> {
    raw.parse()
        .map_err(|_| AppError::not_found("job_not_found", format!("no job {raw:?}")))
}
