//! A JSON body extractor whose rejections are the API's own JSON errors rather than axum's
//! plain-text ones.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::AppError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => AppError::unprocessable(
            "invalid_request",
            format!(
                "the body does not match the request schema: {}",
                e.body_text()
            ),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is too large",
        ),
        other => AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body could not be read: {}", other.body_text()),
        ),
    }
}
