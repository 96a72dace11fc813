//! Errors as clients see them: a status code and `{"error": code, "message": ...}`. Internal
//! details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tts_contracts::{ApiError, JobId};
use tts_infra::InfraError;

/// The error an unexpected failure wraps, kept for the log.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The client's request is wrong: `status` is a 4xx.
    #[error("{code}: {message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// A dependency did not answer; the client may retry.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] InfraError),
    /// The sync wait ran out; the job goes on and can be polled.
    #[error("job {0} did not finish in time")]
    Timeout(JobId),
    /// The job behind a sync request failed; its record says why.
    #[error("job {job_id} failed: {error}")]
    JobFailed {
        job_id: JobId,
        error: String,
        message: String,
    },
    /// Over a limit, or no capacity now: the client should try again after `retry_after`
    /// seconds, which is sent as `Retry-After` too.
    #[error("{code}: {message}")]
    RetryLater {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after: u64,
    },
    /// A bug or an unexpected state, with the error behind it when there is one.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl AppError {
    /// An unexpected state with no error behind it.
    pub fn internal(message: impl Into<String>) -> Self {
        AppError::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// An unexpected failure of `source` while doing `what`.
    pub fn internal_from(what: impl Into<String>, source: impl Into<Source>) -> Self {
        AppError::Internal {
            message: what.into(),
            source: Some(source.into()),
        }
    }

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
            tts_infra::InfraErrorKind::Unavailable => AppError::Unavailable(e),
            _ => AppError::internal_from("a dependency failed", e),
        }
    }
}

/// The error and its causes in one line for the log, each cause once: an adapter's error already
/// names its own cause in its message.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Seconds a client is told to wait after a dependency did not answer: the job store's and the
/// queue's circuits try again after about a second.
const UNAVAILABLE_RETRY_AFTER: u64 = 1;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let logged = report(&self);
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
            AppError::Unavailable(_) => {
                tracing::error!(error = %logged, "dependency unavailable");
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
            AppError::Internal { .. } => {
                tracing::error!(error = %logged, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    api_error("internal_error", "an internal error occurred".into()),
                )
            }
        };
        // Every answer that tells the client to wait says how long in the header too.
        let retry_after = body.retry_after;
        let code = crate::metrics::ErrorCode(body.error.clone());
        let mut response = (status, Json(body)).into_response();
        // The metrics count refusals by their code.
        response.extensions_mut().insert(code);
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn an_unavailable_dependency_keeps_its_cause_and_answers_the_contract() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = AppError::from(InfraError::unavailable("redis GET job").with_source(cause));
        let infra = error.source().expect("the adapter's error");
        let io = infra.source().expect("the dependency's error");
        assert!(io.is::<std::io::Error>());
        assert_eq!(
            report(&error),
            "a dependency is unavailable: unavailable: redis GET job: refused"
        );

        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "service_unavailable");
        assert!(!body.to_string().contains("redis"), "{body}");
    }

    #[tokio::test]
    async fn an_internal_error_keeps_its_cause_but_tells_the_client_nothing() {
        let cause = serde_json::from_str::<u32>("x").unwrap_err();
        let error = AppError::from(InfraError::wrap(tts_infra::InfraErrorKind::Corrupt, cause));
        assert!(error.source().unwrap().is::<InfraError>());
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert_eq!(body["message"], "an internal error occurred");
    }
}
