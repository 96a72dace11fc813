//! `POST /api/synthesize`: queue a job and wait for its audio.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tts_contracts::{
    ApiError, JobEvent, JobId, JobRecord, JobStatus, SynthesizeRequest, audio_key, subjects,
};
use tts_infra::{BusMessage, JobStore};

use super::Caller;
use crate::AppState;
use crate::error::AppError;
use crate::extract::ApiJson;
use crate::limits::DeferredCount;
use crate::trace::RequestContext;
use crate::{stream, submit};

/// How often the wait re-reads the job record, in case an event was missed.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Queues the job (or, with an `Idempotency-Key` already used, finds the job it names) and
/// answers with its audio once it is done, in the requested format.
#[utoipa::path(
    post,
    path = "/api/synthesize",
    tag = "synthesis",
    summary = "Synthesise speech and answer with the audio",
    description = "Answers once the job is done, or streams as the audio is made with \
        `\"stream\": true`, `Accept: text/event-stream` (OpenAI's server-sent events) or \
        `Accept: audio/pcm` with no `format`.",
    request_body = SynthesizeRequest,
    params(super::IdempotencyKey),
    responses(
        (status = 200, description = "The audio, in `format` (WAV when absent); `X-Job-Id` names the job",
            content(("audio/wav"), ("audio/mpeg"), ("audio/ogg"), ("audio/flac"), ("audio/pcm"), ("text/event-stream"))),
        (status = 400, description = "`invalid_json`, `invalid_body` or `invalid_idempotency_key`", body = ApiError),
        (status = 409, description = "`voice_not_ready`: the cloned voice is still enrolling", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = ApiError),
        (status = 422, description = "`invalid_request`, `invalid_text`, `text_too_long`, `invalid_speed`, \
            `unsupported_format`, `invalid_voice`, `unknown_voice`, `voice_failed`, `invalid_language`, \
            `unsupported_language`, `unsupported_speed`, or `synthesis_failed` (the job failed; \
            `job_id` names it)", body = ApiError),
        (status = 503, description = "`engine_unavailable` or `queue_full` (with `Retry-After`)", body = ApiError),
        (status = 504, description = "`timeout`: the job did not finish in `gateway.sync_timeout_secs`; \
            it goes on, and `job_id` names it", body = ApiError),
    )
)]
pub async fn synthesize(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(context): Extension<RequestContext>,
    count: Option<Extension<DeferredCount>>,
    headers: HeaderMap,
    ApiJson(mut request): ApiJson<SynthesizeRequest>,
) -> Result<Response, AppError> {
    let count = count.as_ref().map(|c| &c.0);
    let key = submit::idempotency_key(&headers)?;
    let framing = streaming(&headers, &mut request);
    let submit::Validated { job, format } = submit::validate(&state, &caller, request).await?;
    if let Some(framing) = framing {
        return streamed(
            &state,
            job,
            format,
            framing,
            key.as_deref(),
            &context,
            count,
        )
        .await;
    }
    let bus = &state.deps.bus;
    // Subscribed before queueing so that the job cannot finish unseen. The job is queued over
    // the bus's own connection (the gateway's queue and bus share it), so the server has the
    // subscription before the job exists and no confirmation is waited for. Should an event be
    // missed all the same (a cluster whose servers learn of the subscription late), the wait
    // reads the record every second.
    let mut events = bus
        .subscribe_unconfirmed(subjects::job_events(&job.job_id))
        .await?;
    let submitted = submit::submit(
        &state,
        job,
        Some(format),
        key.as_deref(),
        submit::Backpressure::Apply,
        &context.trace,
        count,
    )
    .await?;
    let job_id = submitted.job_id;
    if submitted.replayed {
        // The wait reads the store first, so whatever the job did before this subscription
        // is seen all the same.
        events = bus.subscribe(subjects::job_events(&job_id)).await?;
    }
    let deadline = Instant::now() + state.options.sync_timeout;
    let end = wait_for_end(
        state.deps.store.as_ref(),
        job_id,
        events,
        deadline,
        submitted.replayed,
    )
    .await?;
    let audio = match end {
        // The worker announces `succeeded` only after the record says so, and the record only
        // after the audio is stored under the job's fixed key: the audio is there.
        End::SucceededEvent => state.deps.audio.get(&audio_key(&job_id)).await?,
        End::Record(record) if record.status == JobStatus::Succeeded => {
            let key = record.audio_key.ok_or_else(|| {
                AppError::internal(format!("job {job_id} succeeded without audio"))
            })?;
            state.deps.audio.get(&key).await?
        }
        End::Record(record) => {
            let failure = record.failure();
            return Err(AppError::JobFailed {
                job_id,
                error: failure.error,
                message: failure.message,
            });
        }
    };
    let audio =
        audio.ok_or_else(|| AppError::internal(format!("audio of job {job_id} is missing")))?;
    // A replayed request answers in the format it asks for now.
    let mut response = crate::audio::respond(job_id, audio, format).await?;
    submitted.tag(response.headers_mut());
    Ok(response)
}

/// Whether the answer streams, and how: `Accept: text/event-stream` asks for server-sent events
/// (as OpenAI's `stream_format: "sse"`); `Accept: audio/pcm` (or `audio/L16`) with no `format`
/// in the body asks for raw PCM, which has no container to wait for and so always streams;
/// `"stream": true` streams the body's format as it is.
fn streaming(headers: &HeaderMap, request: &mut SynthesizeRequest) -> Option<stream::Framing> {
    let accepted: Vec<String> = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let accepts = |wanted: &[&str]| accepted.iter().any(|t| wanted.contains(&t.as_str()));
    if accepts(&["text/event-stream"]) {
        return Some(stream::Framing::Sse);
    }
    if request.format.is_none() && accepts(&["audio/pcm", "audio/l16"]) {
        request.format = Some("pcm".into());
        return Some(stream::Framing::Audio);
    }
    request.stream.then_some(stream::Framing::Audio)
}

/// Queues the job and answers with its audio as the worker makes it.
async fn streamed(
    state: &AppState,
    job: tts_contracts::JobMessage,
    format: tts_contracts::AudioFormat,
    framing: stream::Framing,
    key: Option<&str>,
    context: &RequestContext,
    count: Option<&DeferredCount>,
) -> Result<Response, AppError> {
    let (submitted, subscriptions) =
        stream::submit(state, job, format, key, &context.trace, count).await?;
    let mut response =
        stream::respond(state, submitted.job_id, subscriptions, format, framing).await?;
    submitted.tag(response.headers_mut());
    Ok(response)
}

/// How a sync job's wait ended.
#[derive(Debug)]
enum End {
    /// The job's own event said `succeeded`, which the worker publishes only after storing the
    /// audio and the record: the audio is read at once, without reading the record first, which
    /// would cost every sync request a round trip to the store.
    SucceededEvent,
    /// The stored record, terminal: read after another terminal event (a failure carries its
    /// reason only there) or on a poll.
    Record(Box<JobRecord>),
}

/// Waits until the job ends, or answers `504` with the job id at `deadline`. Events of any other
/// kind only say "look": the record is read on each terminal event but `succeeded`, and every
/// [`POLL_EVERY`], so a missed event costs a second at most. When the event stream ends (the bus
/// went away), the wait goes on by polling alone. With `read_first` (a job an earlier request
/// made, which may have finished before the subscription) the record is read at once too; a
/// job queued after the subscription has no event to miss, and its record was just written, so
/// reading it at once would only cost every sync request a read of the store.
async fn wait_for_end(
    store: &dyn JobStore,
    job_id: JobId,
    mut events: BoxStream<'static, BusMessage>,
    deadline: Instant,
    read_first: bool,
) -> Result<End, AppError> {
    let mut events_open = true;
    let first_read = if read_first {
        Instant::now()
    } else {
        Instant::now() + POLL_EVERY
    };
    let mut poll = tokio::time::interval_at(first_read, POLL_EVERY);
    loop {
        let look = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(AppError::Timeout(job_id)),
            event = events.next(), if events_open => match event {
                Some(m) => match serde_json::from_slice::<JobEvent>(&m.payload) {
                    Ok(e) if e.job_id == job_id && e.status == JobStatus::Succeeded => {
                        return Ok(End::SucceededEvent);
                    }
                    Ok(e) => e.status.is_terminal(),
                    Err(_) => false,
                },
                None => {
                    events_open = false;
                    false
                }
            },
            _ = poll.tick() => true,
        };
        if look && let Some(record) = store.get(&job_id).await?.filter(|r| r.status.is_terminal()) {
            return Ok(End::Record(Box::new(record)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tts_contracts::{JobMessage, JobSpec};
    use tts_infra::MemoryJobStore;

    use super::*;

    /// A job's own `succeeded` event ends the wait at once, without a read of the store (here
    /// it holds no record at all); another job's event, or a progress event, does not.
    #[tokio::test]
    async fn a_succeeded_event_ends_the_wait_without_reading_the_record() {
        let store = MemoryJobStore::new(Duration::from_secs(60), Duration::from_secs(60));
        let job_id = uuid::Uuid::new_v4();
        let event = |job_id, status| BusMessage {
            subject: subjects::job_events(&job_id),
            payload: serde_json::to_vec(&JobEvent {
                job_id,
                status,
                progress: 0.5,
                attempt: 1,
                at: chrono::Utc::now(),
                error: None,
                message: None,
            })
            .unwrap()
            .into(),
        };
        let events = futures::stream::iter([
            event(job_id, JobStatus::Running),
            event(uuid::Uuid::new_v4(), JobStatus::Succeeded),
            event(job_id, JobStatus::Succeeded),
        ])
        .chain(futures::stream::pending())
        .boxed();
        let deadline = Instant::now() + Duration::from_secs(30);
        let end = wait_for_end(&store, job_id, events, deadline, false).await;
        assert!(matches!(end, Ok(End::SucceededEvent)), "{end:?}");

        // Another job's `succeeded` alone leaves the wait to its deadline.
        let other = futures::stream::iter([event(uuid::Uuid::new_v4(), JobStatus::Succeeded)])
            .chain(futures::stream::pending())
            .boxed();
        let deadline = Instant::now() + Duration::from_millis(200);
        let end = wait_for_end(&store, job_id, other, deadline, false).await;
        assert!(
            matches!(end, Err(AppError::Timeout(id)) if id == job_id),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_wait_whose_event_stream_ends_polls_the_store_without_spinning() {
        let store = MemoryJobStore::new(Duration::from_secs(60), Duration::from_secs(60));
        let job = JobMessage {
            job_id: uuid::Uuid::new_v4(),
            engine: "piper".into(),
            created_at: chrono::Utc::now(),
            tenant: None,
            spec: JobSpec::Synthesize {
                text: "Hello.".into(),
                voice_id: "v".into(),
                language: "en".into(),
                speed: 1.0,
                streamed: false,
            },
        };
        store.put(&JobRecord::queued(&job)).await.unwrap();
        // A stream that has ended and counts how often it is asked for more.
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let events = futures::stream::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            std::task::Poll::<Option<BusMessage>>::Ready(None)
        })
        .boxed();

        let deadline = Instant::now() + Duration::from_millis(300);
        let answer = wait_for_end(&store, job.job_id, events, deadline, true).await;
        assert!(matches!(answer, Err(AppError::Timeout(id)) if id == job.job_id));
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the ended stream was polled again"
        );
    }
}
