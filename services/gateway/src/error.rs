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
            AppError::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::Client {
                status,
                code,
                message,
            } => (
                status,
                ApiError {
                    error: code.into(),
                    message,
                    job_id: None,
                },
            ),
            AppError::Unavailable(detail) => {
                tracing::error!(%detail, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ApiError {
                        error: "service_unavailable".into(),
                        message: "a backing service is unavailable; try again shortly".into(),
                        job_id: None,
                    },
                )
            }
            AppError::Timeout(job_id) => (
                StatusCode::GATEWAY_TIMEOUT,
                ApiError {
                    error: "timeout".into(),
                    message: format!(
                        "the job did not finish in time; it goes on: poll /api/jobs/{job_id}"
                    ),
                    job_id: Some(job_id),
                },
            ),
            AppError::JobFailed {
                job_id,
                error,
                message,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiError {
                    error: "synthesis_failed".into(),
                    message: format!("{error}: {message}"),
                    job_id: Some(job_id),
                },
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError {
                        error: "internal_error".into(),
                        message: "an internal error occurred".into(),
                        job_id: None,
                    },
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
