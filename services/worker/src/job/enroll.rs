//! Enrolling a cloned voice: the job that turns an uploaded clip into a voice the engine can
//! speak with.
//!
//! The steps, with the job's progress: decode the upload and check its speech with the VAD (3 to
//! 30 s), store the trimmed 16 kHz reference and report "reference accepted" (5 %), embed the
//! speaker, run the engine's enrollment (for Kokoro the style search, one progress step per
//! synthesis, up to 95 %), then mark the voice `ready` with its conditioning. Voice records are
//! only updated here, never created: a voice deleted meanwhile stays deleted, and whatever this
//! job stored for it is removed again.

use std::sync::Arc;

use bytes::Bytes;
use tts_contracts::{
    JobRecord, REFERENCE_ACCEPTED, VoiceRecord, VoiceStatus, failure, reference_key, voice_prefix,
};
use tts_infra::Delivery;

use super::context::{JobContext, JobError, LastStep, finish, run_engine, save};
use crate::engine::{Cancel, EngineError, EnrollInput, Enrollment};
use crate::voice::reference::{self, Reference};
use crate::voice::{ANALYSIS_RATE, Analysis};
use crate::wav;

fn deleted(voice_id: &str) -> JobError {
    JobError::permanent(
        failure::VOICE_NOT_FOUND,
        format!("voice {voice_id} was deleted during its enrollment"),
    )
}

/// Enrols the voice from its upload; `record` is already `running`.
pub(crate) async fn run(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    voice_id: &str,
    upload_key: &str,
) -> Result<(), JobError> {
    let analysis = analysis(ctx)?;
    check_upload_key(voice_id, upload_key)?;
    let (mut voice, upload) = load(ctx, voice_id, upload_key).await?;
    let prepared = prepare_reference(&analysis, upload).await?;
    let wav = accept_reference(ctx, record, voice_id, &mut voice, &prepared).await?;
    let (embedding, enrollment) = condition(
        ctx,
        delivery,
        record,
        analysis,
        &voice,
        prepared.samples,
        wav,
    )
    .await?;
    make_ready(ctx, voice_id, &mut voice, upload_key, embedding, enrollment).await?;
    finish(ctx, record, None).await?;
    tracing::info!(%voice_id, similarity = ?voice.similarity, "voice enrolled");
    Ok(())
}

/// The analysis models, present when the worker's engine clones voices.
fn analysis(ctx: &JobContext) -> Result<Arc<Analysis>, JobError> {
    match (&ctx.analysis, ctx.engine.clones()) {
        (Some(analysis), true) => Ok(analysis.clone()),
        _ => Err(JobError::permanent(
            failure::CLONING_UNSUPPORTED,
            format!("engine {} cannot clone voices", ctx.engine.name()),
        )),
    }
}

/// Jobs name objects under their own voice only; anything else is not a job the gateway made.
fn check_upload_key(voice_id: &str, upload_key: &str) -> Result<(), JobError> {
    if upload_key.starts_with(&format!("{}/", voice_prefix(voice_id))) {
        return Ok(());
    }
    Err(JobError::permanent(
        failure::INVALID_JOB,
        format!("upload {upload_key:?} does not belong to voice {voice_id}"),
    ))
}

/// The voice's record and its uploaded clip.
async fn load(
    ctx: &JobContext,
    voice_id: &str,
    upload_key: &str,
) -> Result<(VoiceRecord, Bytes), JobError> {
    let Some(voice) = ctx.adapters.voices.get(voice_id).await? else {
        return Err(deleted(voice_id));
    };
    let Some(upload) = ctx.adapters.audio.get(upload_key).await? else {
        return Err(JobError::permanent(
            failure::UPLOAD_MISSING,
            format!("the clip uploaded for voice {voice_id} is no longer stored"),
        ));
    };
    Ok((voice, upload))
}

/// Decodes the upload and checks and trims its speech with the VAD, on a blocking thread.
async fn prepare_reference(analysis: &Arc<Analysis>, upload: Bytes) -> Result<Reference, JobError> {
    let vad_models = analysis.clone();
    let span = tracing::Span::current();
    let prepared = tokio::task::spawn_blocking(move || {
        let _attempt = span.enter();
        let clip = tts_audio::decode(&upload)
            .map_err(|e| EngineError::invalid("invalid_audio", e.to_string()).with_source(e))?;
        reference::prepare(&vad_models.vad, &clip.samples, clip.sample_rate)
    })
    .await
    .map_err(|e| {
        JobError::transient(
            failure::ENGINE_CRASHED,
            format!("reference analysis stopped unexpectedly: {e}"),
        )
    })??;
    Ok(prepared)
}

/// Lets the engine check the reference, stores it with the voice and reports "reference
/// accepted", returning the stored WAV.
async fn accept_reference(
    ctx: &JobContext,
    record: &mut JobRecord,
    voice_id: &str,
    voice: &mut VoiceRecord,
    prepared: &Reference,
) -> Result<Bytes, JobError> {
    let clip_seconds = prepared.samples.len() as f32 / ANALYSIS_RATE as f32;
    ctx.engine
        .check_reference(voice, prepared.speech_seconds, clip_seconds)?;
    let wav = Bytes::from(
        wav::encode_pcm16(&prepared.samples, ANALYSIS_RATE)
            .map_err(|e| JobError::transient(failure::ENCODING_FAILED, e.to_string()))?,
    );
    let key = reference_key(voice_id);
    ctx.adapters.audio.put(&key, wav.clone()).await?;
    voice.reference_key = Some(key);
    voice.speech_seconds = Some(prepared.speech_seconds);
    if !ctx.adapters.voices.update(voice).await? {
        remove_objects(ctx, voice_id).await;
        return Err(deleted(voice_id));
    }
    if record.progress(REFERENCE_ACCEPTED) {
        let note = format!(
            "reference accepted: {:.1} s of speech",
            prepared.speech_seconds
        );
        save(ctx, record, Some(note)).await?;
    }
    Ok(wav)
}

/// Embeds the speaker and runs the engine's enrollment on a blocking thread, its steps taking
/// the job's progress from "reference accepted" to 95 %.
async fn condition(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    analysis: Arc<Analysis>,
    voice: &VoiceRecord,
    samples: Vec<f32>,
    wav: Bytes,
) -> Result<(Vec<f32>, Enrollment), JobError> {
    let engine = ctx.engine.clone();
    let settings = ctx.clone_settings.clone();
    let enrolling = voice.clone();
    let span = (REFERENCE_ACCEPTED, 0.95);
    run_engine(
        ctx,
        delivery,
        record,
        span,
        "enrollment step",
        LastStep::Recorded,
        None,
        Cancel::default(),
        move |report| {
            let embedding = analysis.encoder.embed(&samples)?;
            let input = EnrollInput {
                analysis: &analysis,
                voice: &enrolling,
                reference: &samples,
                reference_wav: &wav,
                settings: &settings,
            };
            let enrollment = engine.enroll(&input, &mut |p| report(p.into()))?;
            Ok((embedding, enrollment))
        },
    )
    .await
}

/// Marks the voice `ready` with its conditioning, then drops the raw upload.
async fn make_ready(
    ctx: &JobContext,
    voice_id: &str,
    voice: &mut VoiceRecord,
    upload_key: &str,
    embedding: Vec<f32>,
    enrollment: Enrollment,
) -> Result<(), JobError> {
    voice.info.status = VoiceStatus::Ready;
    voice.embedding = Some(embedding);
    voice.similarity = enrollment.similarity;
    voice.engine_data = enrollment.engine_data;
    voice.error = None;
    if !ctx.adapters.voices.update(voice).await? {
        remove_objects(ctx, voice_id).await;
        return Err(deleted(voice_id));
    }
    // The trimmed reference is what the voice keeps; the raw upload has served its purpose.
    if let Err(e) = ctx.adapters.audio.delete(upload_key).await {
        tracing::warn!(%voice_id, error = %e, "could not delete the upload");
    }
    Ok(())
}

/// Removes every object of a deleted voice, including any this job wrote after the deletion.
async fn remove_objects(ctx: &JobContext, voice_id: &str) {
    if let Err(e) = ctx
        .adapters
        .audio
        .delete_prefix(&voice_prefix(voice_id))
        .await
    {
        tracing::warn!(%voice_id, error = %e, "could not delete a deleted voice's objects");
    }
}
