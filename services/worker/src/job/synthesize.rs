//! The synthesis job's body: text in, audio object and a `succeeded` record out.
//!
//! The audio is written before the record says `succeeded`, so that a record never points at
//! audio that is not there.

use bytes::Bytes;
use tts_contracts::{
    JobAudio, JobFailure, JobRecord, VoiceRecord, VoiceStatus, audio_key, failure,
};
use tts_infra::Delivery;

use super::context::{
    AudioStream, JobContext, JobError, LastStep, finish, kept_alive, run_engine, still_ours,
};
use crate::engine::{Audio, SynthesisInput};
use crate::wav;

/// What a synthesis job asks for, as its message says it.
pub(crate) struct Request<'a> {
    pub text: &'a str,
    pub voice_id: &'a str,
    pub language: &'a str,
    pub speed: f32,
    pub streamed: bool,
}

/// Speaks the request and stores the audio; `record` is already `running`.
pub(crate) async fn run(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    request: Request<'_>,
) -> Result<(), JobError> {
    let input = engine_input(ctx, request).await?;
    let mut stream = AudioStream::new(record.job_id, delivery.attempt());
    let audio = speak(ctx, delivery, record, input, &mut stream).await?;
    if stream.published() != audio.samples.len() as u64 {
        // An engine whose pieces are not its audio misleads listeners; the stored audio is
        // still right, so the job goes on.
        tracing::warn!(
            published = stream.published(),
            samples = audio.samples.len(),
            "the streamed audio differs in length from the engine's audio"
        );
    }
    kept_alive(ctx, delivery, async {
        still_ours(ctx, record).await?;
        let key = store_audio(ctx, record, &audio).await?;
        let made = JobAudio {
            key,
            duration_seconds: audio.duration_seconds(),
            sample_rate: audio.sample_rate,
        };
        finish(ctx, record, Some(made)).await
    })
    .await
}

/// The engine's input: the request with the cloned voice's record and, for an engine that
/// needs it, its reference clip.
async fn engine_input(ctx: &JobContext, request: Request<'_>) -> Result<SynthesisInput, JobError> {
    let voice = cloned_voice(ctx, request.voice_id).await?;
    let reference_wav = match &voice {
        Some(record) if ctx.engine.needs_reference() => Some(reference_clip(ctx, record).await?),
        _ => None,
    };
    Ok(SynthesisInput {
        text: request.text.to_owned(),
        voice_id: request.voice_id.to_owned(),
        language: request.language.to_owned(),
        speed: request.speed,
        streamed: request.streamed,
        voice,
        reference_wav,
        cancel: Default::default(),
    })
}

/// Runs the engine, its sentences taking the job's progress up to 95 % and its audio going out
/// on `stream` as it is made. The last sentence's progress is not recorded: storing the audio
/// and the `succeeded` record follow at once.
async fn speak(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    input: SynthesisInput,
    stream: &mut AudioStream,
) -> Result<Audio, JobError> {
    let engine = ctx.engine.clone();
    let cancel = input.cancel.clone();
    run_engine(
        ctx,
        delivery,
        record,
        (0.0, 0.95),
        "sentence",
        LastStep::FollowedByTheEnd,
        Some(stream),
        cancel,
        move |report| engine.synthesize(&input, &mut |step| report(step.into())),
    )
    .await
}

/// Encodes the audio as WAV and writes it under the job's fixed key, which it returns.
async fn store_audio(
    ctx: &JobContext,
    record: &JobRecord,
    audio: &Audio,
) -> Result<String, JobError> {
    let wav = wav::encode_pcm16(&audio.samples, audio.sample_rate)
        .map_err(|e| JobError::transient(failure::ENCODING_FAILED, e.to_string()))?;
    let key = audio_key(&record.job_id);
    ctx.adapters.audio.put(&key, Bytes::from(wav)).await?;
    Ok(key)
}

/// The record of a cloned voice the job speaks with; `None` for the engine's stock voices. A
/// voice deleted after the job was queued fails the job: it can never succeed.
async fn cloned_voice(ctx: &JobContext, voice_id: &str) -> Result<Option<VoiceRecord>, JobError> {
    if ctx.engine.voices().iter().any(|v| v.voice_id == voice_id) {
        return Ok(None);
    }
    match ctx.adapters.voices.get(voice_id).await? {
        Some(record) if record.info.status == VoiceStatus::Ready => Ok(Some(record)),
        Some(record) => Err(JobError::Permanent(JobFailure {
            error: failure::VOICE_NOT_READY.into(),
            message: format!("voice {voice_id} is {:?}, not ready", record.info.status)
                .to_lowercase(),
        })),
        None => Err(JobError::permanent(
            failure::VOICE_NOT_FOUND,
            format!("voice {voice_id} does not exist; it may have been deleted"),
        )),
    }
}

/// The stored reference clip of a cloned voice. A voice whose clip is gone cannot be spoken
/// with by an engine that needs it.
async fn reference_clip(ctx: &JobContext, record: &VoiceRecord) -> Result<Bytes, JobError> {
    let missing = || {
        JobError::permanent(
            failure::VOICE_NOT_FOUND,
            format!(
                "the reference clip of voice {} is no longer stored",
                record.info.voice_id
            ),
        )
    };
    let key = record.reference_key.as_deref().ok_or_else(missing)?;
    ctx.adapters.audio.get(key).await?.ok_or_else(missing)
}
