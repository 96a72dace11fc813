//! The worker's own `GET /health`, on its configured port.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tts_infra::Adapters;

use crate::heartbeat::NodeState;

#[derive(Clone)]
pub struct HealthState {
    pub node: Arc<NodeState>,
    pub adapters: Adapters,
}

pub fn router(state: HealthState) -> Router {
    // The metrics recorder goes in before the first job: what is recorded before it exists is
    // lost.
    tts_infra::metrics::handle();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process's Prometheus metrics (tts_infra::metrics), on the same port as `/health`.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            tts_infra::metrics::CONTENT_TYPE,
        )],
        tts_infra::metrics::render(),
    )
}

async fn health(State(state): State<HealthState>) -> impl IntoResponse {
    // An engine's health may probe an upstream server, which blocks.
    let engine = {
        let engine = state.node.engine.clone();
        tokio::task::spawn_blocking(move || engine.health())
            .await
            .unwrap_or_else(|e| crate::error::EngineHealth {
                ready: false,
                device: String::new(),
                detail: format!("health check failed: {e}"),
            })
    };
    let bus = state.adapters.bus.is_connected();
    let store = state.adapters.store.ping().await;
    let draining = state.node.draining.load(Ordering::Relaxed);
    let healthy = engine.ready && bus && store.is_ok() && !draining;
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "node": state.node.info(None),
        "engine": engine,
        "dependencies": {
            "nats": if bus { "up" } else { "down" },
            "redis": match &store {
                Ok(()) => "up",
                Err(e) => {
                    tracing::warn!(error = %e, "job store health check failed");
                    "down"
                }
            },
        },
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
