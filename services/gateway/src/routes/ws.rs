//! `GET /ws/jobs/{id}`: a job's events over a WebSocket, ending with the terminal one.
//!
//! A client that connects late first receives the job's current state, then every change, so it
//! never has to poll. The socket closes with a normal close frame after the terminal event.

use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::StreamExt;
use futures::stream::BoxStream;
use tts_contracts::{JobEvent, JobId, JobStatus, subjects};
use tts_infra::BusMessage;

use super::{Caller, ClientIp, close_going_away, parse_job_id};
use crate::AppState;
use crate::error::AppError;
use crate::limits::WebSocketPermit;

/// How often the stream re-reads the record, in case an event was missed.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(client): ClientIp,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let job_id = parse_job_id(&id)?;
    let upgrade = super::require_websocket(upgrade)?;
    // An open socket holds no request permit, so it takes a place of its own, before the upgrade.
    let permit = state.limits.open_websocket(client.0)?;
    // Subscribe before reading the record so that no change falls between the two.
    let events = state
        .deps
        .bus
        .subscribe(subjects::job_events(&job_id))
        .await?;
    let record = super::jobs::load_job(&state, &caller, job_id).await?;
    let first = record.to_event();
    Ok(upgrade.on_upgrade(move |socket| stream(socket, state, job_id, first, events, permit)))
}

/// Runs the socket; `_permit` keeps its place in the WebSocket caps until it ends.
async fn stream(
    mut socket: WebSocket,
    state: AppState,
    job_id: JobId,
    first: JobEvent,
    mut events: BoxStream<'static, BusMessage>,
    _permit: WebSocketPermit,
) {
    let mut last = first.clone();
    if send(&mut socket, &first).await.is_err() {
        return;
    }
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    let closing = state.closing.clone();
    while !last.status.is_terminal() {
        let next = tokio::select! {
            // The gateway is stopping: say so, so that the client reconnects to another one.
            _ = closing.cancelled() => {
                close_going_away(&mut socket).await;
                return;
            }
            message = events.next() => match message {
                Some(m) => serde_json::from_slice::<JobEvent>(&m.payload).ok(),
                // The event bus went away (the gateway is stopping): tell the client to come back.
                None => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: close_code::AWAY,
                            reason: "reconnect to follow the job".into(),
                        })))
                        .await;
                    return;
                }
            },
            _ = recheck.tick() => match state.deps.store.get(&job_id).await {
                Ok(Some(record)) if changed(&last, &record.to_event()) => Some(record.to_event()),
                _ => None,
            },
            incoming = socket.recv() => match incoming {
                // The client went away: nothing more to do.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => None,
            },
        };
        if let Some(event) = next {
            if is_stale(&last, &event) {
                continue;
            }
            if send(&mut socket, &event).await.is_err() {
                return;
            }
            last = event;
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "job finished".into(),
        })))
        .await;
}

/// An event older than what the client has seen, such as a progress event that raced a
/// terminal state read from the store.
fn is_stale(last: &JobEvent, event: &JobEvent) -> bool {
    event.at < last.at
        || (last.status == JobStatus::Running
            && event.status == JobStatus::Queued
            && event.attempt < last.attempt)
}

fn changed(last: &JobEvent, now: &JobEvent) -> bool {
    last.status != now.status || last.progress != now.progress || last.attempt != now.attempt
}

async fn send(socket: &mut WebSocket, event: &JobEvent) -> Result<(), axum::Error> {
    let text = serde_json::to_string(event).expect("events always serialise");
    socket.send(Message::Text(text.into())).await
}
