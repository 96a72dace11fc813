//! Operations on the queue for admins: `GET /api/admin/dead-letters` lists the jobs the queue
//! gave up on, and `POST /api/admin/dead-letters/{job_id}/requeue` runs one again.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use tts_contracts::{ApiError, DeadLetter, JobRecord, JobStatus};

use super::parse_job_id;
use crate::AppState;
use crate::error::AppError;

/// The query of `GET /api/admin/dead-letters`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// At most this many, oldest first (1 to 1000; 100 when absent).
    limit: Option<usize>,
}

/// The dead letters, as `GET /api/admin/dead-letters` lists them.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    dead_letters: Vec<DeadLetter>,
}

/// Jobs the queue gave up on after their last delivery (admin keys only), oldest first, each with
/// the reason and the job as it was queued. Kept for `nats.dead_letter_days`.
#[utoipa::path(
    get,
    path = "/api/admin/dead-letters",
    tag = "operations",
    summary = "Jobs that used up their deliveries",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "The dead letters", body = DeadLetterList),
        (status = 400, description = "`invalid_query`", body = ApiError),
        (status = 403, description = "`forbidden`: not an admin key", body = ApiError),
        (status = 404, description = "`no_dead_letters`: standalone mode keeps none", body = ApiError),
        (status = 503, description = "`dependency_unavailable`: NATS did not answer", body = ApiError),
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<DeadLetterList>, AppError> {
    let Query(query) = query
        .map_err(|e| AppError::client(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let letters = state
        .deps
        .queue
        .dead_letters(limit)
        .await?
        .ok_or_else(kept_none)?;
    Ok(Json(DeadLetterList {
        dead_letters: letters,
    }))
}

fn kept_none() -> AppError {
    AppError::not_found(
        "no_dead_letters",
        "dead letters are kept by the distributed queue; standalone mode has none",
    )
}

/// Queues a dead letter's job again (admin keys only): its record goes back to `queued` and the
/// letter is removed. The job keeps its id, so clients following it see it run.
#[utoipa::path(
    post,
    path = "/api/admin/dead-letters/{job_id}/requeue",
    tag = "operations",
    summary = "Run a dead letter's job again",
    params(("job_id" = String, Path, description = "The job's id (a UUID)")),
    responses(
        (status = 202, description = "Queued again; the job's record", body = JobRecord),
        (status = 403, description = "`forbidden`: not an admin key", body = ApiError),
        (status = 404, description = "`dead_letter_not_found`: no dead letter for that job", body = ApiError),
        (status = 503, description = "`dependency_unavailable`: NATS or Redis did not answer", body = ApiError),
    )
)]
pub async fn requeue(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<(StatusCode, Json<JobRecord>), AppError> {
    let job_id = parse_job_id(&job_id)?;
    let queue = &state.deps.queue;
    let not_found = || {
        AppError::not_found(
            "dead_letter_not_found",
            format!("no dead letter for job {job_id}"),
        )
    };
    let letter = queue.dead_letter(&job_id).await?.ok_or_else(not_found)?;
    let store = &state.deps.store;
    let before = store.get(&job_id).await?;
    // The record is queued again before the job is: a worker that took the job while the record
    // still said failed would drop it as finished.
    let mut record = JobRecord::queued(&letter.job);
    if let Some(before) = &before {
        record.format = before.format;
        record.attempts = before.attempts;
    }
    record.updated_at = chrono::Utc::now();
    store.reset(&record).await?;
    if let Err(e) = queue.requeue(&letter).await {
        // Put the failure back, so that the record does not claim a job that is not queued.
        if let Some(before) = before.filter(|b| b.status == JobStatus::Failed) {
            let _ = store.reset(&before).await;
        }
        return Err(e.into());
    }
    tracing::info!(%job_id, engine = %letter.engine, "dead letter requeued");
    Ok((StatusCode::ACCEPTED, Json(record)))
}
