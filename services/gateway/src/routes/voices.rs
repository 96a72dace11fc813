//! `/api/voices`: the stock voices of live workers and the cloned voices of the voice store;
//! uploading a reference clip to clone a voice, and deleting a cloned voice.

use std::time::Duration;

use axum::Extension;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use tts_contracts::{
    ApiError, JobEvent, JobMessage, JobSpec, JobStatus, REFERENCE_ACCEPTED, VoiceAccepted,
    VoiceInfo, VoiceRecord, VoiceStatus, VoiceView, subjects, upload_key, voice_prefix,
};
use uuid::Uuid;

use super::Caller;
use super::jobs::base_url;
use crate::error::AppError;
use crate::submit;
use crate::trace::RequestContext;
use crate::upload::{UploadForm, read_form};
use crate::{AppState, auth};

/// Longest accepted voice name.
const MAX_NAME_CHARS: usize = 100;

/// A clip quieter than this (RMS of samples in [-1, 1]) is silence; no VAD is needed to say so.
const SILENCE_RMS: f32 = 1e-4;

/// Job failures that mean the clip itself is unusable: `POST /api/voices` answers them with 422.
const CLIP_ERRORS: [&str; 6] = [
    "invalid_audio",
    "no_speech",
    "too_little_speech",
    "too_much_speech",
    // Engines' own rules on the reference (GPT-SoVITS: 3-10 s and a transcript).
    "reference_too_long",
    "prompt_text_required",
];

/// The voices as `GET /api/voices` lists them.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VoiceList {
    voices: Vec<VoiceView>,
}

/// Every voice the caller can speak with.
#[utoipa::path(
    get,
    path = "/api/voices",
    tag = "voices",
    summary = "List voices",
    description = "The stock voices of live workers, then the caller's cloned voices (with their \
        status: `enrolling`, `ready` or `failed`).",
    responses((status = 200, description = "The voices", body = VoiceList))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Caller,
) -> Result<Json<VoiceList>, AppError> {
    let voices = visible(&state, &caller).await?;
    Ok(Json(VoiceList { voices }))
}

/// The stock voices of live workers, then the caller's cloned voices.
pub(crate) async fn visible(
    state: &AppState,
    caller: &crate::auth::Caller,
) -> Result<Vec<VoiceView>, AppError> {
    let mut voices: Vec<VoiceView> = state
        .registry
        .voices()
        .into_iter()
        .map(VoiceView::stock)
        .collect();
    voices.extend(
        state
            .deps
            .voices
            .list()
            .await?
            .iter()
            .filter(|r| caller.owns(r.tenant.as_deref()))
            .map(VoiceRecord::view),
    );
    Ok(voices)
}

/// One voice, stock or cloned; a cloned voice shows its enrollment's state and scores.
#[utoipa::path(
    get,
    path = "/api/voices/{id}",
    tag = "voices",
    summary = "One voice",
    params(("id" = String, Path, description = "The voice's id")),
    responses(
        (status = 200, description = "The voice", body = VoiceView),
        (status = 404, description = "`voice_not_found`", body = ApiError),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Path(voice_id): Path<String>,
) -> Result<Json<VoiceView>, AppError> {
    if let Some(record) = owned(&state, &caller, &voice_id).await? {
        return Ok(Json(record.view()));
    }
    state
        .registry
        .voice(&voice_id)
        .map(|v| Json(VoiceView::stock(v)))
        .ok_or_else(|| not_found(&voice_id))
}

/// Deletes the record first, so that no new job can use the voice, then its objects. A job
/// already queued for it fails with `voice_not_found`.
#[utoipa::path(
    delete,
    path = "/api/voices/{id}",
    tag = "voices",
    summary = "Delete a cloned voice",
    params(("id" = String, Path, description = "The voice's id")),
    responses(
        (status = 204, description = "Deleted, with its reference clip"),
        (status = 404, description = "`voice_not_found`", body = ApiError),
        (status = 409, description = "`stock_voice`: stock voices cannot be deleted", body = ApiError),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Path(voice_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let mine = owned(&state, &caller, &voice_id).await?.is_some();
    if !mine || !state.deps.voices.delete(&voice_id).await? {
        if state.registry.voice(&voice_id).is_some() {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "stock_voice",
                format!(
                    "{voice_id} is a stock voice of its engine; only cloned voices can be deleted"
                ),
            ));
        }
        return Err(not_found(&voice_id));
    }
    remove_objects(&state, &voice_id).await?;
    tracing::info!(%voice_id, "voice deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A cloned voice the caller may see: another tenant's voice does not exist for it.
async fn owned(
    state: &AppState,
    caller: &auth::Caller,
    voice_id: &str,
) -> Result<Option<VoiceRecord>, AppError> {
    Ok(state
        .deps
        .voices
        .get(voice_id)
        .await?
        .filter(|r| caller.owns(r.tenant.as_deref())))
}

fn not_found(voice_id: &str) -> AppError {
    AppError::not_found("voice_not_found", format!("no voice {voice_id:?}"))
}

async fn remove_objects(state: &AppState, voice_id: &str) -> Result<(), AppError> {
    Ok(state
        .deps
        .audio
        .delete_prefix(&voice_prefix(voice_id))
        .await?)
}

/// The form of `POST /api/voices`, as the document describes it; [`UploadForm`] is what is read.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct VoiceUpload {
    /// The reference clip: WAV or MP3 (judged by its bytes), 3 to 30 s of speech.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    file: Vec<u8>,
    /// A display name, 1 to 100 characters.
    name: String,
    /// The voice's default language; one the engine speaks.
    language: String,
    /// What the clip says, for engines that need it (GPT-SoVITS).
    prompt_text: Option<String>,
    /// The engine to clone with; the default cloning engine when absent.
    engine: Option<String>,
}

/// `POST /api/voices`: checks the upload, stores it, records the voice as `enrolling` and queues
/// its enrollment. It then waits (`voices.check_wait_secs`) for a worker to check the clip's
/// speech, so that a clip with too little or too much speech is refused with 422 like any other
/// bad upload; once the clip is accepted, or the wait is over, it answers 202.
#[utoipa::path(
    post,
    path = "/api/voices",
    tag = "voices",
    summary = "Clone a voice from a reference clip",
    description = "Checks the clip, stores it and queues its enrollment; answers once a worker has \
        accepted the clip's speech (or after `voices.check_wait_secs`). Follow the enrollment at \
        `status_url` or `ws_url` until the voice is `ready` or `failed`.",
    request_body(content = inline(VoiceUpload), content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Enrolling", body = VoiceAccepted),
        (status = 400, description = "`invalid_multipart`: the form is malformed", body = ApiError),
        (status = 413, description = "`file_too_large` (over `voices.max_upload_bytes`) or `payload_too_large`", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: not multipart/form-data", body = ApiError),
        (status = 422, description = "`missing_file`, `unknown_field`, `duplicate_field`, `invalid_name`, \
            `invalid_language`, `text_too_long`, `unknown_engine`, `cloning_unsupported`, \
            `unsupported_language`, `invalid_audio`, `no_speech`, `too_little_speech`, \
            `too_much_speech`, and the engine's own rules on the clip (`reference_too_long`, \
            `prompt_text_required`)", body = ApiError),
        (status = 503, description = "`engine_unavailable`: no live worker can enrol with the engine", body = ApiError),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(context): Extension<RequestContext>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, AppError> {
    let mut multipart = multipart.map_err(|_| {
        AppError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be multipart/form-data with the clip in a field named file",
        )
    })?;
    let form = read_form(&mut multipart, state.options.max_upload_bytes).await?;
    let (info, prompt_text, upload) = check_form(&state, form).await?;
    let voice_id = info.voice_id.clone();

    let key = upload_key(&voice_id);
    state.deps.audio.put(&key, upload).await?;
    let job = JobMessage {
        job_id: Uuid::new_v4(),
        engine: info.engine.clone(),
        created_at: Utc::now(),
        tenant: caller.tenant.clone(),
        spec: JobSpec::Enroll {
            voice_id: voice_id.clone(),
            upload_key: key,
        },
    };
    let job_id = job.job_id;
    let mut record = VoiceRecord::enrolling(info, prompt_text, job_id);
    record.tenant = caller.tenant.clone();
    if let Err(e) = state.deps.voices.put(&record).await {
        let _ = remove_objects(&state, &voice_id).await;
        return Err(e.into());
    }
    // Subscribed before the job is queued, so that no verdict can be missed.
    let events = state
        .deps
        .bus
        .subscribe(subjects::job_events(&job_id))
        .await;
    if let Err(e) = submit::submit(
        &state,
        job,
        None,
        None,
        submit::Backpressure::Skip,
        &context.trace,
        // An enrolment is counted before it is handled: it stores its clip before it queues.
        None,
    )
    .await
    {
        forget(&state, &voice_id).await;
        return Err(e);
    }
    if let Ok(events) = events
        && let Some(failure) = wait_for_verdict(events, state.options.voice_check_wait).await
        && let Some(code) = CLIP_ERRORS.iter().find(|c| **c == failure.error)
    {
        // The clip is unusable: nothing of the voice is kept, as for any other bad upload.
        forget(&state, &voice_id).await;
        return Err(AppError::unprocessable(code, failure.message));
    }

    let voice = state
        .deps
        .voices
        .get(&voice_id)
        .await?
        .unwrap_or(record)
        .view();
    let base = base_url(&state);
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let body = VoiceAccepted {
        voice,
        job_id,
        status_url: format!("{base}/api/jobs/{job_id}"),
        ws_url: format!("{ws_base}/ws/jobs/{job_id}"),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = format!("{base}/api/voices/{voice_id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Waits for the enrollment job to accept the clip or fail; returns its failure, if it failed
/// within `wait`.
async fn wait_for_verdict(
    mut events: futures::stream::BoxStream<'static, tts_infra::BusMessage>,
    wait: Duration,
) -> Option<tts_contracts::JobFailure> {
    let verdict = async {
        while let Some(message) = events.next().await {
            let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload) else {
                continue;
            };
            match event.status {
                JobStatus::Failed => return event.error,
                JobStatus::Succeeded => return None,
                JobStatus::Running if event.progress >= REFERENCE_ACCEPTED => return None,
                _ => {}
            }
        }
        None
    };
    tokio::time::timeout(wait, verdict).await.ok().flatten()
}

/// Removes a voice that is refused or could not be queued: its record and its objects.
async fn forget(state: &AppState, voice_id: &str) {
    if let Err(e) = state.deps.voices.delete(voice_id).await {
        tracing::warn!(%voice_id, error = %e, "could not delete a refused voice");
    }
    if let Err(e) = remove_objects(state, voice_id).await {
        tracing::warn!(%voice_id, error = %e, "could not delete a refused voice's objects");
    }
}

/// Checks the form's fields and decodes the clip. Returns the new voice and the clip's bytes.
async fn check_form(
    state: &AppState,
    form: UploadForm,
) -> Result<(VoiceInfo, Option<String>, Bytes), AppError> {
    let Some(file) = form.file else {
        return Err(AppError::unprocessable(
            "missing_file",
            "the reference clip is required, in a multipart field named file",
        ));
    };
    let name = check_name(form.name)?;
    let language = required(form.language).ok_or_else(|| {
        AppError::unprocessable(
            "invalid_language",
            "language is required (for example en or zh)",
        )
    })?;
    let prompt_text = check_prompt_text(form.prompt_text, state.options.max_text_chars)?;
    let engine = required(form.engine).unwrap_or_else(|| state.options.clone_engine.clone());
    let languages = check_engine(state, &engine)?;
    let language = spoken_by(&engine, &languages, &language)?;
    check_clip(&file).await?;
    let info = VoiceInfo {
        voice_id: Uuid::new_v4().to_string(),
        name,
        other_languages: languages.into_iter().filter(|l| *l != language).collect(),
        speed_range: None,
        native_language: None,
        language,
        engine,
        created_at: Utc::now(),
        status: VoiceStatus::Enrolling,
        sample_rate: None,
    };
    Ok((info, prompt_text, file))
}

/// A form field trimmed, or `None` when it is missing or blank.
fn required(field: Option<String>) -> Option<String> {
    field
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
}

fn check_name(name: Option<String>) -> Result<String, AppError> {
    required(name)
        .filter(|n| n.chars().count() <= MAX_NAME_CHARS)
        .ok_or_else(|| {
            AppError::unprocessable(
                "invalid_name",
                format!("name must be 1 to {MAX_NAME_CHARS} characters"),
            )
        })
}

/// The clip's transcript, when given, within the text limit.
fn check_prompt_text(text: Option<String>, max_chars: usize) -> Result<Option<String>, AppError> {
    let text = required(text);
    if let Some(text) = &text
        && text.chars().count() > max_chars
    {
        return Err(AppError::unprocessable(
            "text_too_long",
            format!("prompt_text has more than {max_chars} characters"),
        ));
    }
    Ok(text)
}

/// The engine's spelling of `language`, when the engine speaks it.
fn spoken_by(engine: &str, languages: &[String], language: &str) -> Result<String, AppError> {
    languages
        .iter()
        .find(|l| tts_contracts::same_language(l, language))
        .cloned()
        .ok_or_else(|| {
            AppError::unprocessable(
                "unsupported_language",
                format!(
                    "engine {engine} speaks {}, not {language}",
                    languages.join(", ")
                ),
            )
        })
}

/// Decodes the clip (off the async threads) and refuses one that is not audio or is silent;
/// the worker judges its speech.
async fn check_clip(file: &Bytes) -> Result<(), AppError> {
    let clip = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || tts_audio::decode(&file))
            .await
            .map_err(|e| AppError::internal_from("decoder task", e))?
    }
    .map_err(|e| {
        AppError::unprocessable("invalid_audio", format!("{e}; send a WAV or MP3 clip"))
    })?;
    if clip.rms() < SILENCE_RMS {
        return Err(AppError::unprocessable("no_speech", "the clip is silent"));
    }
    Ok(())
}

/// Checks that `engine` is configured, has a live worker and clones voices; returns the
/// languages it speaks.
fn check_engine(state: &AppState, engine: &str) -> Result<Vec<String>, AppError> {
    if !state.options.engines.iter().any(|e| e == engine) {
        return Err(AppError::unprocessable(
            "unknown_engine",
            format!(
                "no engine {engine:?}; configured: {}",
                state.options.engines.join(", ")
            ),
        ));
    }
    let nodes = state.registry.engine_nodes(engine);
    if nodes.is_empty() {
        return Err(AppError::unavailable_for_now(
            "engine_unavailable",
            format!("no live worker runs engine {engine}"),
            submit::RETRY_AFTER_SECS,
        ));
    }
    if !nodes.iter().any(|n| n.clones) {
        return Err(AppError::unprocessable(
            "cloning_unsupported",
            format!("engine {engine} cannot clone voices"),
        ));
    }
    Ok(state.registry.engine_languages(engine))
}
