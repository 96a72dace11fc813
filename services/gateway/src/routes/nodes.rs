//! The worker fleet: `GET /api/nodes`, and `GET /ws`, which pushes `{"nodes": [...]}` at once
//! and on every change (a worker joins, changes status or load, stops or dies).

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ClientIp, close_going_away};
use crate::AppState;
use crate::error::AppError;
use crate::limits::WebSocketPermit;

fn fleet(state: &AppState) -> Value {
    json!({ "nodes": state.registry.node_views() })
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(fleet(&state))
}

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
        let snapshot = fleet(&state).to_string();
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
