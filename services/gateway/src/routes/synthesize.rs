//! `POST /api/synthesize`: queue a job and wait for its audio.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tts_contracts::{JobEvent, JobRecord, JobStatus, SynthesizeRequest, subjects};

use super::Caller;
use crate::AppState;
use crate::error::AppError;
use crate::extract::ApiJson;
use crate::submit;

/// How often the wait re-reads the job record, in case an event was missed.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub async fn synthesize(
    State(state): State<AppState>,
    Extension(caller): Caller,
    ApiJson(request): ApiJson<SynthesizeRequest>,
) -> Result<Response, AppError> {
    let job = submit::validate(&state, &caller, request).await?;
    submit::check_capacity(&state, &job.engine).await?;
    let job_id = job.job_id;
    // Subscribe before queueing so that the job cannot finish unseen.
    let mut events = state
        .deps
        .bus
        .subscribe(subjects::job_events(&job_id))
        .await?;
    submit::submit(&state, job, None).await?;

    let deadline = tokio::time::Instant::now() + state.options.sync_timeout;
    let mut poll = tokio::time::interval(POLL_EVERY);
    let record = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(AppError::Timeout(job_id)),
            event = events.next() => {
                let terminal = event
                    .and_then(|m| serde_json::from_slice::<JobEvent>(&m.payload).ok())
                    .is_some_and(|e| e.status.is_terminal());
                if terminal && let Some(r) = terminal_record(&state, &job_id).await? {
                    break r;
                }
            }
            _ = poll.tick() => {
                if let Some(r) = terminal_record(&state, &job_id).await? {
                    break r;
                }
            }
        }
    };
    match record.status {
        JobStatus::Succeeded => {
            let key = record.audio_key.ok_or_else(|| {
                AppError::Internal(format!("job {job_id} succeeded without audio"))
            })?;
            let audio =
                state.deps.audio.get(&key).await?.ok_or_else(|| {
                    AppError::Internal(format!("audio of job {job_id} is missing"))
                })?;
            let mut response = ([(header::CONTENT_TYPE, "audio/wav")], audio).into_response();
            response.headers_mut().insert(
                "x-job-id",
                HeaderValue::from_str(&job_id.to_string()).expect("a uuid is a valid header"),
            );
            Ok(response)
        }
        _ => {
            let failure = record.error.unwrap_or(tts_contracts::JobFailure {
                error: "job_failed".into(),
                message: "the job failed".into(),
            });
            Err(AppError::JobFailed {
                job_id,
                error: failure.error,
                message: failure.message,
            })
        }
    }
}

async fn terminal_record(
    state: &AppState,
    job_id: &tts_contracts::JobId,
) -> Result<Option<JobRecord>, AppError> {
    Ok(state
        .deps
        .store
        .get(job_id)
        .await?
        .filter(|r| r.status.is_terminal()))
}
