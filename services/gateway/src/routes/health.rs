//! `GET /health`: the gateway and each dependency; 503 when one is down, with the reason.
//!
//! The probe of the dependencies is shared: one runs at a time and its answer is kept for
//! [`FRESH_FOR`], so that however often `/health` is asked, Redis and storage see about one
//! check a second from each gateway.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::AppState;

/// How long one probe's answer is served.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last probe of the dependencies: when it ran, whether all were up, and what it found.
#[derive(Default)]
pub struct HealthCache(tokio::sync::Mutex<Option<(Instant, bool, Value)>>);

/// The gateway's health and its dependencies'; public, for load balancers and orchestrators.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Health",
    security(()),
    responses(
        (status = 200, description = "`status: ok`, each dependency's state and the live workers", body = Object),
        (status = 503, description = "`status: unavailable`: a dependency is down, and why", body = Object),
    )
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (healthy, dependencies) = {
        // Held across the probe: callers that arrive meanwhile wait for its answer.
        let mut cached = state.health.0.lock().await;
        match cached.as_ref() {
            Some((at, healthy, deps)) if at.elapsed() < FRESH_FOR => (*healthy, deps.clone()),
            _ => {
                let (healthy, deps) = probe(&state).await;
                *cached = Some((Instant::now(), healthy, deps.clone()));
                (healthy, deps)
            }
        }
    };
    let nodes = state.registry.live_nodes();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "dependencies": dependencies,
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

/// Asks each dependency once. A down one is reported with a reason in general words (refused,
/// timed out, not connected); the details, which may name hosts, go to the log.
async fn probe(state: &AppState) -> (bool, Value) {
    let deps = &state.deps;
    let (store, storage) = tokio::join!(deps.store.ping(), deps.audio.check());
    let queue = if deps.queue.is_connected() && deps.bus.is_connected() {
        Ok(())
    } else {
        Err("not connected to NATS")
    };
    let state_of = |name: &str, r: Result<(), tts_infra::InfraError>| match r {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(dependency = name, error = %e, "health check failed");
            Err(e.reason())
        }
    };
    let checks = [
        ("queue", queue),
        ("job_store", state_of("job_store", store)),
        ("storage", state_of("storage", storage)),
    ];
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let dependencies: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, r)| {
            let value = match r {
                Ok(()) => json!({"status": "up"}),
                Err(reason) => json!({"status": "down", "reason": reason}),
            };
            (name.to_string(), value)
        })
        .collect();
    (healthy, Value::Object(dependencies))
}
