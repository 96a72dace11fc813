//! `POST /api/jobs`, `GET /api/jobs/{id}`, `DELETE /api/jobs/{id}` and `GET /api/jobs/{id}/audio`.

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use tts_contracts::{ApiError, JobAccepted, JobId, JobRecord, JobStatus, SynthesizeRequest};

use super::{Caller, parse_job_id};
use crate::error::AppError;
use crate::extract::ApiJson;
use crate::limits::DeferredCount;
use crate::submit;
use crate::trace::RequestContext;
use crate::{AppState, auth};

/// Queues a job and answers at once with its id and where to follow it.
#[utoipa::path(
    post,
    path = "/api/jobs",
    tag = "synthesis",
    summary = "Queue a synthesis job",
    request_body = SynthesizeRequest,
    params(super::IdempotencyKey),
    responses(
        (status = 202, description = "Queued (or, with a key already used, the job it made; \
            `Idempotent-Replayed: true`); `Location` is the status URL", body = JobAccepted),
        (status = 400, description = "`invalid_json`, `invalid_body` or `invalid_idempotency_key`", body = ApiError),
        (status = 409, description = "`voice_not_ready`: the cloned voice is still enrolling", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = ApiError),
        (status = 422, description = "`invalid_request`, `invalid_text`, `text_too_long`, `invalid_speed`, \
            `unsupported_format`, `invalid_voice`, `unknown_voice`, `voice_failed`, `invalid_language`, \
            `unsupported_language` or `unsupported_speed`", body = ApiError),
        (status = 503, description = "`engine_unavailable`: no live worker runs the voice's engine", body = ApiError),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(context): Extension<RequestContext>,
    count: Option<Extension<DeferredCount>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SynthesizeRequest>,
) -> Result<Response, AppError> {
    let key = submit::idempotency_key(&headers)?;
    let submit::Validated { job, format } = submit::validate(&state, &caller, request).await?;
    let submitted = submit::submit(
        &state,
        job,
        Some(format),
        key.as_deref(),
        submit::Backpressure::Skip,
        &context.trace,
        count.as_ref().map(|c| &c.0),
    )
    .await?;
    let status = if submitted.replayed {
        state
            .deps
            .store
            .get(&submitted.job_id)
            .await?
            .map(|r| r.status)
            .unwrap_or(JobStatus::Queued)
    } else {
        JobStatus::Queued
    };
    let base = base_url(&state);
    let id = submitted.job_id;
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let body = JobAccepted {
        job_id: id,
        status,
        status_url: format!("{base}/api/jobs/{id}"),
        audio_url: format!("{base}/api/jobs/{id}/audio"),
        ws_url: format!("{ws_base}/ws/jobs/{id}"),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = format!("{base}/api/jobs/{id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if submitted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", "true".parse().expect("valid header"));
    }
    Ok(response)
}

/// A job's state: queued, running (with progress), succeeded (with its audio's link) or failed
/// (with the reason).
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "synthesis",
    summary = "A job's state",
    params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses(
        (status = 200, description = "The job's record", body = JobView),
        (status = 404, description = "`job_not_found`: no such job (or another tenant's)", body = ApiError),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, AppError> {
    let record = load(&state, &caller, &id).await?;
    // Enrollment jobs succeed without audio.
    let audio_url = (record.status == JobStatus::Succeeded && record.audio_key.is_some())
        .then(|| format!("{}/api/jobs/{}/audio", base_url(&state), record.job_id));
    Ok(Json(JobView { record, audio_url }))
}

/// Cancels a job: a queued one never runs, a running one stops after the sentence it is on, and
/// neither leaves audio. Listeners (WebSockets, a waiting sync request) hear `cancelled`.
/// Cancelling a cancelled job again changes nothing and answers the same.
#[utoipa::path(
    delete,
    path = "/api/jobs/{id}",
    tag = "synthesis",
    summary = "Cancel a job",
    params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses(
        (status = 200, description = "The job is cancelled; its record", body = JobView),
        (status = 404, description = "`job_not_found`: no such job (or another tenant's)", body = ApiError),
        (status = 409, description = "`job_finished`: the job succeeded or failed before it could be cancelled", body = ApiError),
        (status = 503, description = "`dependency_unavailable`: the job store did not answer", body = ApiError),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, AppError> {
    let mut record = load(&state, &caller, &id).await?;
    if record.cancel() {
        if state.deps.store.put(&record).await? {
            tracing::info!(job_id = %record.job_id, "job cancelled");
            announce(&state, &record).await;
        } else {
            // It finished (or was cancelled) between the read and the write.
            record = load_job(&state, &caller, record.job_id).await?;
        }
    }
    match record.status {
        JobStatus::Cancelled => Ok(Json(JobView {
            record,
            audio_url: None,
        })),
        status => Err(AppError::client(
            StatusCode::CONFLICT,
            "job_finished",
            format!(
                "job {} has {} and can no longer be cancelled",
                record.job_id,
                status.as_str()
            ),
        )),
    }
}

/// Tells the job's listeners of its new state. Best effort: they re-read the store.
async fn announce(state: &AppState, record: &JobRecord) {
    let Ok(payload) = serde_json::to_vec(&record.to_event()) else {
        return;
    };
    let subject = tts_contracts::subjects::job_events(&record.job_id);
    if let Err(e) = state.deps.bus.publish(subject, payload.into()).await {
        tracing::warn!(job_id = %record.job_id, error = %e, "could not announce the cancellation");
    }
}

/// The configured public URL without a trailing slash; empty gives links that are paths.
pub(crate) fn base_url(state: &AppState) -> &str {
    state.options.public_url.trim_end_matches('/')
}

/// The query of `GET /api/jobs/{id}/audio`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AudioQuery {
    /// Overrides the format the job was submitted with.
    format: Option<String>,
}

/// The job's audio, in `?format=` if given, else in the format the job was submitted with.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/audio",
    tag = "synthesis",
    summary = "A finished job's audio",
    params(("id" = String, Path, description = "The job's id (a UUID)"), AudioQuery),
    responses(
        (status = 200, description = "The audio",
            content(("audio/wav"), ("audio/mpeg"), ("audio/ogg"), ("audio/flac"), ("audio/pcm"))),
        (status = 400, description = "`invalid_query`", body = ApiError),
        (status = 404, description = "`job_not_found`, or `audio_not_ready`: the job has not succeeded", body = ApiError),
        (status = 422, description = "`unsupported_format`", body = ApiError),
    )
)]
pub async fn audio(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Path(id): Path<String>,
    query: Result<Query<AudioQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query
        .map_err(|e| AppError::client(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    // A bad format is refused before the job is even looked up.
    let requested = query
        .format
        .as_deref()
        .map(crate::audio::parse_format)
        .transpose()?;
    let record = load(&state, &caller, &id).await?;
    let not_ready = || {
        AppError::not_found(
            "audio_not_ready",
            format!(
                "job {} has no audio (status: {})",
                record.job_id,
                record.status.as_str()
            ),
        )
    };
    let key = match (&record.status, &record.audio_key) {
        (JobStatus::Succeeded, Some(key)) => key.clone(),
        _ => return Err(not_ready()),
    };
    let audio = state.deps.audio.get(&key).await?.ok_or_else(not_ready)?;
    let format = requested.or(record.format).unwrap_or_default();
    crate::audio::respond(record.job_id, audio, format).await
}

/// A job the caller may see: another tenant's job is "not found", like one that never was.
async fn load(state: &AppState, caller: &auth::Caller, id: &str) -> Result<JobRecord, AppError> {
    load_job(state, caller, parse_job_id(id)?).await
}

/// As [`load`], for an id already parsed.
pub(crate) async fn load_job(
    state: &AppState,
    caller: &auth::Caller,
    job_id: JobId,
) -> Result<JobRecord, AppError> {
    state
        .deps
        .store
        .get(&job_id)
        .await?
        .filter(|r| caller.owns(r.tenant.as_deref()))
        .ok_or_else(|| AppError::not_found("job_not_found", format!("no job {job_id}")))
}

/// A job as `GET /api/jobs/{id}` shows it: the record plus the link to its audio.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    record: JobRecord,
    /// Where the audio is, once the job has succeeded.
    audio_url: Option<String>,
}
