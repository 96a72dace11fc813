//! `GET /health`: the gateway and each dependency; 503 when one is down.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let deps = &state.deps;
    let (store, storage) = tokio::join!(deps.store.ping(), deps.audio.check());
    let queue = deps.queue.is_connected() && deps.bus.is_connected();
    // Error details go to the log, not to whoever asks for /health.
    let state_of = |name: &str, r: &Result<(), tts_infra::InfraError>| match r {
        Ok(()) => json!({"status": "up"}),
        Err(e) => {
            tracing::warn!(dependency = name, error = %e, "health check failed");
            json!({"status": "down"})
        }
    };
    let healthy = queue && store.is_ok() && storage.is_ok();
    let nodes = state.registry.live_nodes();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "dependencies": {
            "queue": if queue { json!({"status": "up"}) } else { json!({"status": "down"}) },
            "job_store": state_of("job_store", &store),
            "storage": state_of("storage", &storage),
        },
        "workers": {
            "live": nodes.len(),
            "engines": nodes.iter().map(|n| n.engine.clone()).collect::<std::collections::BTreeSet<_>>(),
        },
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
