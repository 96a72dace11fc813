//! The multipart form of `POST /api/voices`, read apart from the route so that it can be
//! exercised on its own (the fuzz target `upload_form` feeds it arbitrary bodies).

use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};

use crate::error::AppError;

/// The fields of an upload, as sent: nothing is trimmed or checked beyond the clip's size.
#[derive(Debug, Default)]
pub struct UploadForm {
    pub file: Option<Bytes>,
    pub name: Option<String>,
    pub language: Option<String>,
    pub prompt_text: Option<String>,
    pub engine: Option<String>,
}

/// Reads the form of `POST /api/voices`: the clip (at most `max_upload` bytes) and the text
/// fields, each at most once. Unknown fields are refused rather than ignored, so that a
/// misspelt field is reported instead of silently dropped.
pub async fn read_form(
    multipart: &mut Multipart,
    max_upload: usize,
) -> Result<UploadForm, AppError> {
    let mut form = UploadForm::default();
    let mut too_large = false;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                if form.file.is_some() {
                    return Err(duplicate(&name));
                }
                match read_file(field, max_upload).await? {
                    Some(bytes) => form.file = Some(bytes),
                    None => too_large = true,
                }
            }
            "name" | "language" | "prompt_text" | "engine" => {
                let text = field.text().await.map_err(multipart_error)?;
                let slot = match name.as_str() {
                    "name" => &mut form.name,
                    "language" => &mut form.language,
                    "prompt_text" => &mut form.prompt_text,
                    _ => &mut form.engine,
                };
                if slot.replace(text).is_some() {
                    return Err(duplicate(&name));
                }
            }
            other => {
                return Err(AppError::unprocessable(
                    "unknown_field",
                    format!(
                        "unknown field {other:?}; the fields are file, name, language, prompt_text and engine"
                    ),
                ));
            }
        }
    }
    if too_large {
        return Err(AppError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("the clip is larger than {max_upload} bytes"),
        ));
    }
    Ok(form)
}

/// Reads the clip; `None` when it is over `max` bytes. An oversized clip is still read to its
/// end (and dropped) so that the client, still sending, receives the 413 rather than a reset.
async fn read_file(mut field: Field<'_>, max: usize) -> Result<Option<Bytes>, AppError> {
    let mut buffer = BytesMut::new();
    let mut size = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len();
        if size <= max {
            buffer.extend_from_slice(&chunk);
        } else {
            buffer = BytesMut::new();
        }
    }
    Ok((size <= max).then(|| buffer.freeze()))
}

fn duplicate(field: &str) -> AppError {
    AppError::unprocessable(
        "duplicate_field",
        format!("the field {field:?} is given more than once"),
    )
}

fn multipart_error(e: MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is too large",
        )
    } else {
        AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            format!("the multipart body could not be read: {}", e.body_text()),
        )
    }
}
