//! The worker fleet: `GET /api/nodes`, and `GET /ws`, which pushes `{"nodes": [...]}` at once
//! and on every change (a worker joins, changes status or load, stops or dies).

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;

use super::{ClientIp, close_going_away};
use crate::AppState;
use crate::error::AppError;
use crate::limits::WebSocketPermit;
use tts_contracts::ApiError;

/// The fleet as `GET /api/nodes` and each `/ws` message show it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeList {
    nodes: Vec<tts_contracts::NodeView>,
}

fn fleet(state: &AppState) -> NodeList {
    NodeList {
        nodes: state.registry.node_views(),
    }
}

/// The live worker fleet (admin keys only).
#[utoipa::path(
    get,
    path = "/api/nodes",
    tag = "operations",
    summary = "The worker fleet",
    responses(
        (status = 200, description = "Every live worker", body = NodeList),
        (status = 403, description = "`forbidden`: not an admin key", body = ApiError),
    )
)]
pub async fn list(State(state): State<AppState>) -> Json<NodeList> {
    Json(fleet(&state))
}

/// The fleet over a WebSocket (admin keys only): `{"nodes": [...]}` at once and on every change.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "operations",
    summary = "Follow the worker fleet (WebSocket)",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; each text message is a `NodeList`"),
        (status = 400, description = "`websocket_required`: not a WebSocket handshake", body = ApiError),
        (status = 403, description = "`forbidden`: not an admin key", body = ApiError),
        (status = 429, description = "`too_many_websockets`", body = ApiError),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    Extension(client): ClientIp,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let upgrade = super::require_websocket(upgrade)?;
    // An open socket holds no request permit, so it takes a place of its own, before the upgrade.
    let permit = state.limits.open_websocket(client.0)?;
    Ok(upgrade.on_upgrade(move |socket| push(socket, state, permit)))
}

/// Runs the socket; `_permit` keeps its place in the WebSocket caps until it ends.
async fn push(mut socket: WebSocket, state: AppState, _permit: WebSocketPermit) {
    // Subscribed before the first snapshot, so that no change falls between the two.
    let mut changes = state.registry.subscribe();
    changes.mark_unchanged();
    let closing = state.closing.clone();
    loop {
        let snapshot = serde_json::to_string(&fleet(&state)).expect("plain data serialises");
        if socket.send(Message::Text(snapshot.into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = closing.cancelled() => {
                close_going_away(&mut socket).await;
                    return;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                incoming = socket.recv() => match incoming {
                    // The client has nothing to say; anything but a close is ignored.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}
