//! OpenAI's speech API: `POST /v1/audio/speech`, `GET /v1/models` and `GET /v1/audio/voices`,
//! so that code written for OpenAI (or for servers that copy its API) works unchanged.
//!
//! A speech request becomes an ordinary synthesis job through the queue, exactly like
//! `POST /api/synthesize`: same keys, limits, tenancy and durability. Errors on `/v1` take
//! OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` ([`errors`]).

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tts_contracts::{AudioFormat, SynthesizeRequest, VoiceInfo};

use super::Caller;
use crate::AppState;
use crate::error::AppError;
use crate::extract::ApiJson;
use crate::limits::DeferredCount;
use crate::trace::RequestContext;
use crate::{auth, stream, submit};

/// How OpenAI's names map onto this service (the `openai` section of the settings).
#[derive(Debug, Clone, Default)]
pub struct OpenAiOptions {
    /// OpenAI's model names and the engine each stands for.
    pub models: BTreeMap<String, String>,
    /// Per engine, OpenAI's voice names and the stock voice each stands for.
    pub voices: BTreeMap<String, BTreeMap<String, String>>,
    /// Per engine, the stock voice for each base language.
    pub language_voices: BTreeMap<String, BTreeMap<String, String>>,
}

/// The body of `POST /v1/audio/speech`, as OpenAI defines it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SpeechRequest {
    /// OpenAI's model name (`tts-1`, `tts-1-hd`, `gpt-4o-mini-tts`) or an engine's name.
    #[schema(example = "tts-1")]
    pub model: String,
    /// The text to speak.
    #[schema(example = "Hello from voice-clone-tts.")]
    pub input: String,
    /// OpenAI's voice name (`alloy`, ...) or any voice id of `GET /api/voices`.
    #[schema(example = "alloy")]
    pub voice: String,
    /// `mp3` (the default), `wav`, `pcm`, `opus` or `flac`.
    #[serde(default)]
    pub response_format: Option<String>,
    /// Speaking rate, 0.25 to 4.0.
    #[serde(default)]
    pub speed: Option<f32>,
    /// Accepted for compatibility; no engine here takes a style prompt yet.
    #[serde(default)]
    pub instructions: Option<String>,
    /// `audio` (the default) or `sse` for OpenAI's server-sent events.
    #[serde(default)]
    pub stream_format: Option<String>,
}

/// The body of every error on `/v1`, in OpenAI's shape.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OpenAiError {
    error: OpenAiErrorDetail,
}

/// What an OpenAI-shaped error says.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct OpenAiErrorDetail {
    /// For people; may change.
    message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, ...
    #[schema(rename = "type")]
    kind: String,
    /// The request field the error is about, if any.
    param: Option<String>,
    /// The service's own error code, as on `/api` (docs/API.md lists them).
    code: String,
}

/// `GET /v1/models`' answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<Model>,
}

/// One model: an engine, or OpenAI's name for one.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Model {
    id: String,
    /// Always `model`.
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// How the audio goes back: whole, or as server-sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Audio,
    Sse,
}

/// OpenAI's speech endpoint: a synthesis job like `POST /api/synthesize`, in OpenAI's terms.
#[utoipa::path(
    post,
    path = "/v1/audio/speech",
    tag = "openai",
    summary = "Speech, as OpenAI's API makes it",
    request_body = SpeechRequest,
    params(super::IdempotencyKey),
    responses(
        (status = 200, description = "The audio in `response_format` (or server-sent events with \
            `stream_format: sse`)",
            content(("audio/mpeg"), ("audio/wav"), ("audio/pcm"), ("audio/ogg"), ("audio/flac"), ("text/event-stream"))),
        (status = 400, description = "`invalid_json`, `voice_not_of_model`, `invalid_stream_format`, ...", body = OpenAiError),
        (status = 404, description = "`model_not_found`", body = OpenAiError),
        (status = 409, description = "`voice_not_ready`", body = OpenAiError),
        (status = 413, description = "`payload_too_large`", body = OpenAiError),
        (status = 415, description = "`unsupported_media_type`", body = OpenAiError),
        (status = 422, description = "The request's values, as on `POST /api/synthesize`", body = OpenAiError),
        (status = 503, description = "`engine_unavailable` or `queue_full`", body = OpenAiError),
        (status = 504, description = "`timeout`", body = OpenAiError),
    )
)]
pub async fn speech(
    State(state): State<AppState>,
    Extension(caller): Caller,
    Extension(context): Extension<RequestContext>,
    count: Option<Extension<DeferredCount>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SpeechRequest>,
) -> Result<Response, AppError> {
    let key = submit::idempotency_key(&headers)?;
    let (submit::Validated { job, format }, stream_kind) = check(&state, &caller, request).await?;
    let (submitted, subscriptions) = stream::submit(
        &state,
        job,
        format,
        key.as_deref(),
        &context.trace,
        count.as_ref().map(|c| &c.0),
    )
    .await?;
    let framing = match stream_kind {
        StreamFormat::Audio => stream::Framing::Audio,
        StreamFormat::Sse => stream::Framing::Sse,
    };
    let mut response =
        stream::respond(&state, submitted.job_id, subscriptions, format, framing).await?;
    submitted.tag(response.headers_mut());
    Ok(response)
}

/// Checks a speech request and turns it into the synthesis job it stands for, with how its
/// audio is to go back. It queues nothing, so arbitrary requests can be checked in bulk (the
/// fuzz target `request_json` does).
pub async fn check(
    state: &AppState,
    caller: &auth::Caller,
    request: SpeechRequest,
) -> Result<(submit::Validated, StreamFormat), AppError> {
    let format = response_format(request.response_format.as_deref())?;
    let stream_kind = stream_format(request.stream_format.as_deref())?;
    let (engine, explicit) = model_engine(state, &request.model)?;
    let (voice_id, mapped) = voice_id(state, &engine, &request.voice);
    let mut voice = submit::resolve_voice(state, caller, &voice_id).await?;
    if explicit && voice.engine != engine {
        return Err(AppError::client(
            StatusCode::BAD_REQUEST,
            "voice_not_of_model",
            format!(
                "voice {} belongs to engine {}, not to model {}",
                voice.voice_id, voice.engine, request.model
            ),
        ));
    }
    if let Some(instructions) = request.instructions.as_deref().filter(|i| !i.is_empty()) {
        tracing::debug!(
            chars = instructions.chars().count(),
            "instructions accepted; engine {} does not take them",
            voice.engine
        );
    }
    let language = language_for(&voice, &request.input);
    if mapped && let Some(native) = language_voice(state, &engine, &voice, &language) {
        voice = submit::resolve_voice(state, caller, &native).await?;
    }
    let validated = submit::validate(
        state,
        caller,
        SynthesizeRequest {
            text: request.input,
            voice_id: voice.voice_id,
            language: Some(language),
            speed: request.speed,
            format: Some(format.name().into()),
            stream: true,
        },
    )
    .await?;
    Ok((validated, stream_kind))
}

fn response_format(name: Option<&str>) -> Result<AudioFormat, AppError> {
    // OpenAI's default is mp3.
    let Some(name) = name else {
        return Ok(AudioFormat::Mp3);
    };
    AudioFormat::parse(name).ok_or_else(|| {
        AppError::client(
            StatusCode::BAD_REQUEST,
            "unsupported_format",
            format!(
                "response_format {name:?} is not one of {}",
                AudioFormat::ALL.map(|f| f.name()).join(", ")
            ),
        )
    })?;
    // A format OpenAI names but no encoder here makes (aac) is refused before any job exists,
    // naming the formats on offer.
    crate::audio::parse_format(name)
}

fn stream_format(name: Option<&str>) -> Result<StreamFormat, AppError> {
    match name {
        None | Some("audio") => Ok(StreamFormat::Audio),
        Some("sse") => Ok(StreamFormat::Sse),
        Some(other) => Err(AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_stream_format",
            format!("stream_format {other:?} is not one of audio, sse"),
        )),
    }
}

/// The engine a model names, and whether it named it directly (an engine's own name) rather
/// than through one of OpenAI's model names.
fn model_engine(state: &AppState, model: &str) -> Result<(String, bool), AppError> {
    if let Some(engine) = state.options.openai.models.get(model) {
        return Ok((engine.clone(), false));
    }
    if state.options.engines.iter().any(|e| e == model) {
        return Ok((model.to_string(), true));
    }
    Err(AppError::not_found(
        "model_not_found",
        format!(
            "the model {model:?} does not exist; models: {}",
            model_ids(state).join(", ")
        ),
    ))
}

/// OpenAI's voice name mapped to the engine's stock voice (and `true`), or the name as a voice
/// id.
fn voice_id(state: &AppState, engine: &str, voice: &str) -> (String, bool) {
    match state
        .options
        .openai
        .voices
        .get(engine)
        .and_then(|names| names.get(voice))
    {
        Some(mapped) => (mapped.clone(), true),
        None => (voice.to_string(), false),
    }
}

/// The engine's voice for `language` (`openai.language_voices`) when `voice` was made for
/// another language: OpenAI's names stand for a kind of voice, and one made for the text's
/// language reads it without an accent.
fn language_voice(
    state: &AppState,
    engine: &str,
    voice: &VoiceInfo,
    language: &str,
) -> Option<String> {
    let native = voice.native_language.as_deref()?;
    if tts_contracts::same_language(native, language) {
        return None;
    }
    state
        .options
        .openai
        .language_voices
        .get(engine)?
        .get(&tts_contracts::base_language(language))
        .cloned()
}

/// OpenAI's API has no language: the text's script decides among the languages the voice
/// speaks, so that a voice that speaks Mandarin and English reads each in its own.
fn language_for(voice: &VoiceInfo, text: &str) -> String {
    let han = text.chars().any(|c| {
        matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF)
    });
    // Without Han characters the text is in a Latin script: the voice's own language where
    // that is one (a Spanish voice reads Spanish), else English.
    let wanted = if han {
        "zh".to_string()
    } else if !tts_contracts::same_language(&voice.language, "zh") {
        voice.language.clone()
    } else {
        "en".to_string()
    };
    if voice.speaks(&wanted) {
        wanted
    } else {
        voice.language.clone()
    }
}

/// Every model id: OpenAI's mapped names, then the engines'.
fn model_ids(state: &AppState) -> Vec<String> {
    let mut ids: Vec<String> = state.options.openai.models.keys().cloned().collect();
    ids.extend(state.options.engines.iter().cloned());
    ids
}

/// `GET /v1/models`, as OpenAI lists them.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "Models, as OpenAI lists them",
    responses((status = 200, description = "OpenAI's model names and the engines", body = ModelList))
)]
pub async fn models(State(state): State<AppState>) -> axum::Json<ModelList> {
    let data = model_ids(&state)
        .into_iter()
        .map(|id| Model {
            id,
            object: "model",
            created: 0,
            owned_by: "voice-clone-tts",
        })
        .collect();
    axum::Json(ModelList {
        object: "list",
        data,
    })
}

/// `GET /v1/audio/voices`: the voice ids a caller sees (stock voices of live workers and the
/// caller's cloned voices, with their status in `data`), and OpenAI's names for stock voices.
#[utoipa::path(
    get,
    path = "/v1/audio/voices",
    tag = "openai",
    summary = "Voice ids, and OpenAI's names for stock voices",
    responses((status = 200, description = "`voices`: the ids; `data`: the voices as \
        `GET /api/voices` shows them; `aliases`: per engine, OpenAI's names and the voice each \
        stands for", body = Object))
)]
pub async fn voices(
    State(state): State<AppState>,
    Extension(caller): Caller,
) -> Result<Response, AppError> {
    let views = super::voices::visible(&state, &caller).await?;
    let ids: Vec<&str> = views.iter().map(|v| v.info.voice_id.as_str()).collect();
    let live: Vec<&str> = views
        .iter()
        .filter(|v| !v.cloned)
        .map(|v| v.info.engine.as_str())
        .collect();
    let aliases: BTreeMap<&String, &BTreeMap<String, String>> = state
        .options
        .openai
        .voices
        .iter()
        .filter(|(engine, _)| live.contains(&engine.as_str()))
        .collect();
    Ok(axum::Json(json!({"voices": ids, "data": views, "aliases": aliases})).into_response())
}

/// Middleware: on `/v1` paths, turns the service's JSON errors into OpenAI's shape, so that
/// OpenAI's clients raise their usual exceptions for refusals made anywhere (keys, limits,
/// bodies, validation).
pub async fn errors(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Error bodies are small; one that is not is passed on as it is.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(ours) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let (Some(code), Some(message)) = (
        ours.get("error").and_then(Value::as_str),
        ours.get("message").and_then(Value::as_str),
    ) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let body = json!({
        "error": {
            "message": message,
            "type": error_type(status),
            "param": param_of(code),
            "code": code,
        }
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// OpenAI's error types by status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        404 => "invalid_request_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

/// The request field an error code is about, as OpenAI's `param`.
fn param_of(code: &str) -> Value {
    let param = match code {
        "invalid_text" | "text_too_long" => "input",
        "invalid_speed" | "unsupported_speed" => "speed",
        "invalid_voice"
        | "unknown_voice"
        | "voice_not_found"
        | "voice_not_ready"
        | "voice_not_of_model"
        | "unsupported_language" => "voice",
        "model_not_found" => "model",
        "unsupported_format" => "response_format",
        "invalid_stream_format" => "stream_format",
        _ => return Value::Null,
    };
    Value::String(param.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(language: &str, others: &[&str]) -> VoiceInfo {
        VoiceInfo {
            voice_id: "v".into(),
            name: "v".into(),
            engine: "kokoro".into(),
            created_at: chrono::Utc::now(),
            language: language.into(),
            status: tts_contracts::VoiceStatus::Ready,
            sample_rate: None,
            other_languages: others.iter().map(|l| l.to_string()).collect(),
            speed_range: None,
            native_language: None,
        }
    }

    #[test]
    fn the_texts_script_picks_among_the_voices_languages() {
        let both = voice("zh", &["en"]);
        assert_eq!(language_for(&both, "Hello there."), "en");
        assert_eq!(language_for(&both, "你好，世界。"), "zh");
        assert_eq!(language_for(&both, "我们用 Rust 写。"), "zh");
        let spanish = voice("es", &["zh", "en"]);
        assert_eq!(language_for(&spanish, "Hola a todos."), "es");
        assert_eq!(language_for(&spanish, "你好"), "zh");
        let english = voice("en", &[]);
        assert_eq!(language_for(&english, "你好"), "en");
    }

    #[test]
    fn formats_default_to_mp3_and_unknown_ones_are_refused() {
        assert_eq!(response_format(None).unwrap(), AudioFormat::Mp3);
        assert_eq!(response_format(Some("flac")).unwrap(), AudioFormat::Flac);
        let err = response_format(Some("ogg")).unwrap_err();
        assert!(
            err.to_string().contains("wav, pcm, mp3, opus, aac, flac"),
            "{err}"
        );
        assert_eq!(stream_format(Some("sse")).unwrap(), StreamFormat::Sse);
        assert!(stream_format(Some("chunks")).is_err());
    }
}
