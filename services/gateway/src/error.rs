//! Errors as clients see them: a status code and `{"error": code, "message": ...}`. Internal
//! details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tts_contracts::{ApiError, JobId};
use tts_infra::InfraError;

#[derive(Debug)]
pub enum AppError {
    /// The client's request is wrong: `status` is a 4xx.
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// A dependency did not answer; the client may retry.
    Unavailable(String),
    /// The sync wait ran out; the job goes on and can be polled.
    Timeout(JobId),
    /// The job behind a sync request failed; its record says why.
    JobFailed {
        job_id: JobId,
        error: String,
        message: String,
    },
    /// Over a limit, or no capacity now: the client should try again after `retry_after`
    /// seconds, which is sent as `Retry-After` too.
    RetryLater {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    /// A bug or an unexpected state.
    Internal(String),
}

impl AppError {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }

    /// `429 rate_limit_exceeded`, as the origin document words it.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        AppError::RetryLater {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limit_exceeded",
            message: "Too many requests".into(),
            retry_after: whole_seconds(retry_after),
        }
    }

    /// `503` for work that cannot be taken now (no worker, a full queue).
    pub fn unavailable_for_now(
        code: &'static str,
        message: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        AppError::RetryLater {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
            retry_after,
        }
    }
}

/// Seconds to announce for a wait: rounded up, at least one.
fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl From<InfraError> for AppError {
    fn from(e: InfraError) -> Self {
        match e.kind() {
            tts_infra::InfraErrorKind::Unavailable => AppError::Unavailable(e.to_string()),
            _ => AppError::Internal(e.to_string()),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Client { code, message, .. } => write!(f, "{code}: {message}"),
            AppError::Unavailable(m) => write!(f, "unavailable: {m}"),
            AppError::Timeout(id) => write!(f, "job {id} did not finish in time"),
            AppError::JobFailed { job_id, error, .. } => write!(f, "job {job_id} failed: {error}"),
            AppError::RetryLater { code, message, .. } => write!(f, "{code}: {message}"),
            AppError::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

/// Seconds a client is told to wait after a dependency did not answer: the job store's and the
/// queue's circuits try again after about a second.
const UNAVAILABLE_RETRY_AFTER: u64 = 1;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let api_error = |error: &str, message: String| ApiError {
            error: error.into(),
            message,
            job_id: None,
            retry_after: None,
        };
        let (status, body) = match self {
            AppError::Client {
                status,
                code,
                message,
            } => (status, api_error(code, message)),
            AppError::Unavailable(detail) => {
                tracing::error!(%detail, "dependency unavailable");
                let body = ApiError {
                    retry_after: Some(UNAVAILABLE_RETRY_AFTER),
                    ..api_error(
                        "service_unavailable",
                        "a backing service is unavailable; try again shortly".into(),
                    )
                };
                (StatusCode::SERVICE_UNAVAILABLE, body)
            }
            AppError::Timeout(job_id) => (
                StatusCode::GATEWAY_TIMEOUT,
                ApiError {
                    job_id: Some(job_id),
                    ..api_error(
                        "timeout",
                        format!(
                            "the job did not finish in time; it goes on: poll /api/jobs/{job_id}"
                        ),
                    )
                },
            ),
            AppError::JobFailed {
                job_id,
                error,
                message,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiError {
                    job_id: Some(job_id),
                    ..api_error("synthesis_failed", format!("{error}: {message}"))
                },
            ),
            AppError::RetryLater {
                status,
                code,
                message,
                retry_after,
            } => (
                status,
                ApiError {
                    retry_after: Some(retry_after),
                    ..api_error(code, message)
                },
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    api_error("internal_error", "an internal error occurred".into()),
                )
            }
        };
        // Every answer that tells the client to wait says how long in the header too.
        let retry_after = body.retry_after;
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
