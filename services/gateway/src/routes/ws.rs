//! `GET /ws/jobs/{id}`: a job's events over a WebSocket, ending with the terminal one.
//!
//! A client that connects late first receives the job's current state, then every change, so it
//! never has to poll. The socket closes with a normal close frame after the terminal event.
//!
//! With `?audio=pcm` the socket carries the audio too: a text message
//! `{"type": "audio", "sample_rate", "encoding": "pcm_s16le", "channels": 1}`, then binary
//! messages of 16-bit little-endian samples as the worker makes them, all before the close. Audio
//! made before the client connected comes from the stored audio once the job ends.

use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::StreamExt;
use futures::stream::BoxStream;
use tts_contracts::{ApiError, JobEvent, JobId, JobStatus, subjects};
use tts_infra::BusMessage;

use super::{Caller, ClientIp, close_going_away, parse_job_id};
use crate::AppState;
use crate::error::AppError;
use crate::limits::WebSocketPermit;
use crate::stream::{Piece, StreamError};

/// How often the stream re-reads the record, in case an event was missed.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// The longest a socket follows a job's audio; the job's end closes it sooner.
const AUDIO_FOR_AT_MOST: Duration = Duration::from_secs(3600);

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// `pcm` to receive the audio as binary messages.
    #[serde(default)]
    audio: Option<String>,
}

/// Follows a job over a WebSocket: its current state at once, then every change, ending with the
/// terminal event and a normal close.
#[utoipa::path(
    get,
    path = "/ws/jobs/{id}",
    tag = "synthesis",
    summary = "Follow a job (WebSocket)",
    description = "Each text message is a job event (`job_id`, `status`, `progress`, `attempt`, \
        `at`, and `error` or `message` when there is one). With `?audio=pcm` the audio comes too, \
        as binary messages of 16-bit little-endian samples after a text message naming the rate.",
    params(("id" = String, Path, description = "The job's id (a UUID)"), Params),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`websocket_required`: not a WebSocket handshake", body = ApiError),
        (status = 404, description = "`job_not_found`", body = ApiError),
        (status = 429, description = "`too_many_websockets` or `rate_limit_exceeded`", body = ApiError),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(client): ClientIp,
    Path(id): Path<String>,
    Query(params): Query<Params>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let job_id = parse_job_id(&id)?;
    let with_audio = match params.audio.as_deref() {
        None => false,
        Some("pcm") => true,
        Some(other) => {
            return Err(AppError::unprocessable(
                "unsupported_format",
                format!("audio={other:?} is not available on the socket; audio=pcm is"),
            ));
        }
    };
    let upgrade = super::require_websocket(upgrade)?;
    // An open socket holds no request permit, so it takes a place of its own, before the upgrade.
    let permit = state.limits.open_websocket(client.0)?;
    // Subscribe before reading the record so that no change falls between the two.
    let events = state
        .deps
        .bus
        .subscribe(subjects::job_events(&job_id))
        .await?;
    let audio = if with_audio {
        let subscriptions = crate::stream::Subscriptions::open(&state, &job_id).await?;
        Some(crate::stream::follow(
            state.deps.store.clone(),
            state.deps.audio.clone(),
            job_id,
            subscriptions,
            tokio::time::Instant::now() + AUDIO_FOR_AT_MOST,
        ))
    } else {
        None
    };
    let record = super::jobs::load_job(&state, &caller, job_id).await?;
    let first = record.to_event();
    Ok(upgrade
        .on_upgrade(move |socket| stream(socket, state, job_id, first, events, audio, permit)))
}

type Pieces = BoxStream<'static, Result<Piece, StreamError>>;

/// Sends one piece of the audio; false when the audio has ended (or the socket has).
async fn send_piece(
    socket: &mut WebSocket,
    job_id: &JobId,
    piece: Option<Result<Piece, StreamError>>,
) -> bool {
    let message = match piece {
        None => return false,
        Some(Ok(Piece::Rate(rate))) => Message::Text(
            serde_json::json!({
                "type": "audio", "sample_rate": rate, "encoding": "pcm_s16le", "channels": 1,
            })
            .to_string()
            .into(),
        ),
        Some(Ok(Piece::Samples(samples))) => {
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            Message::Binary(bytes.into())
        }
        Some(Err(e)) => {
            let (code, message) = e.describe(job_id);
            let _ = socket
                .send(Message::Text(
                    serde_json::json!({"type": "audio_error", "error": code, "message": message})
                        .to_string()
                        .into(),
                ))
                .await;
            return false;
        }
    };
    socket.send(message).await.is_ok()
}

/// Runs the socket; `_permit` keeps its place in the WebSocket caps until it ends.
async fn stream(
    mut socket: WebSocket,
    state: AppState,
    job_id: JobId,
    first: JobEvent,
    mut events: BoxStream<'static, BusMessage>,
    mut audio: Option<Pieces>,
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
            piece = async { audio.as_mut().expect("guarded").next().await }, if audio.is_some() => {
                if !send_piece(&mut socket, &job_id, piece).await {
                    audio = None;
                }
                None
            }
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
    // The job has ended: the rest of its audio (the follower reads it from the store now) goes
    // out before the close.
    if let Some(mut pieces) = audio {
        while send_piece(&mut socket, &job_id, pieces.next().await).await {}
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
