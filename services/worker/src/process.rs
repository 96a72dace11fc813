//! Handling one delivery of a job, from the message to a settled ack.
//!
//! The order of effects is what makes a job survive any crash: the audio is written first, then
//! the record says `succeeded`, and only then is the delivery acked. A worker that dies anywhere
//! before the ack leaves the job to be redelivered, and the redelivery overwrites the same audio
//! object and record, so a job ends with exactly one audio object.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tts_contracts::{
    JobFailure, JobMessage, JobRecord, JobSpec, JobStatus, VoiceStatus, audio_key, subjects,
};
use tts_infra::{AudioStore, Bus, Delivery, InfraError, JobStore, VoiceStore};

use crate::engine::{Engine, EngineError, EngineErrorKind, Progress, SynthesisInput};
use crate::voice::Analysis;
use crate::engine::CloneSettings;
use crate::{enroll, wav};

/// What a job handler needs from its worker.
#[derive(Clone)]
pub struct JobContext {
    pub engine: Arc<dyn Engine>,
    pub store: Arc<dyn JobStore>,
    pub bus: Arc<dyn Bus>,
    pub audio: AudioStore,
    pub voices: Arc<dyn VoiceStore>,
    /// Loaded when the engine clones voices.
    pub analysis: Option<Arc<Analysis>>,
    pub clone_settings: CloneSettings,
    pub ack_wait: Duration,
    pub retry_delay: Duration,
    pub node_id: String,
}

/// How a delivery ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Already finished by an earlier delivery.
    Duplicate,
    Failed(String),
    Retrying(String),
}

pub(crate) enum JobError {
    /// Another delivery already finished the job; this one only needs its ack.
    AlreadyFinished,
    /// The job can never succeed.
    Permanent(JobFailure),
    /// The job may succeed on another attempt.
    Transient(JobFailure),
}

impl From<InfraError> for JobError {
    fn from(e: InfraError) -> Self {
        JobError::Transient(JobFailure {
            error: "infrastructure_unavailable".into(),
            message: e.to_string(),
        })
    }
}

impl From<EngineError> for JobError {
    fn from(e: EngineError) -> Self {
        let failure = JobFailure {
            error: e.code().into(),
            message: e.message().into(),
        };
        match e.kind() {
            EngineErrorKind::InvalidInput | EngineErrorKind::Unusable => {
                JobError::Permanent(failure)
            }
            EngineErrorKind::Transient | EngineErrorKind::Internal => JobError::Transient(failure),
        }
    }
}

pub async fn handle(ctx: &JobContext, delivery: Box<dyn Delivery>) -> Outcome {
    let message: JobMessage = match serde_json::from_slice(delivery.payload()) {
        Ok(m) => m,
        Err(e) => return reject_unreadable(ctx, delivery.as_ref(), e).await,
    };
    let job_id = message.job_id;
    let mut record = match ctx.store.get(&job_id).await {
        Ok(Some(r)) => r,
        // The record may have expired while the job waited; the message has all it needs.
        Ok(None) => JobRecord::queued(&message),
        Err(e) => {
            return retry_or_fail(ctx, delivery.as_ref(), &message, None, JobError::from(e)).await;
        }
    };
    if record.status.is_terminal() {
        // An earlier delivery finished the job but its ack was lost.
        settle(delivery.ack().await, "ack");
        return Outcome::Duplicate;
    }
    let result = run(ctx, delivery.as_ref(), &message, &mut record).await;
    match result {
        Ok(()) => {
            settle(delivery.ack().await, "ack");
            tracing::info!(%job_id, attempt = delivery.attempt(), "job succeeded");
            Outcome::Succeeded
        }
        Err(JobError::AlreadyFinished) => {
            settle(delivery.ack().await, "ack");
            Outcome::Duplicate
        }
        Err(e) => retry_or_fail(ctx, delivery.as_ref(), &message, Some(record), e).await,
    }
}

async fn run(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    message: &JobMessage,
    record: &mut JobRecord,
) -> Result<(), JobError> {
    if message.engine != ctx.engine.name() {
        return Err(JobError::Permanent(JobFailure {
            error: "wrong_engine".into(),
            message: format!(
                "job for engine {} reached a {} worker",
                message.engine,
                ctx.engine.name()
            ),
        }));
    }
    let now = Utc::now();
    record.status = JobStatus::Running;
    record.attempts = delivery.attempt();
    record.progress = 0.0;
    record.started_at.get_or_insert(now);
    record.updated_at = now;
    record.error = None;
    record.worker = Some(ctx.node_id.clone());
    if !save(ctx, record, None).await? {
        return Err(JobError::AlreadyFinished);
    }

    let input = match &message.spec {
        JobSpec::Synthesize {
            text,
            voice_id,
            language,
            speed,
        } => {
            let voice = cloned_voice(ctx, voice_id).await?;
            let reference_wav = match &voice {
                Some(record) if ctx.engine.needs_reference() => {
                    Some(reference_clip(ctx, record).await?)
                }
                _ => None,
            };
            SynthesisInput {
                text: text.clone(),
                voice_id: voice_id.clone(),
                language: language.clone(),
                speed: *speed,
                voice,
                reference_wav,
            }
        }
        JobSpec::Enroll {
            voice_id,
            upload_key,
        } => return enroll::run(ctx, delivery, record, voice_id, upload_key).await,
    };
    let engine = ctx.engine.clone();
    let audio = run_engine(
        ctx,
        delivery,
        record,
        (0.0, 0.95),
        "sentence",
        move |progress| engine.synthesize(&input, progress),
    )
    .await?;

    let wav = wav::encode_pcm16(&audio.samples, audio.sample_rate).map_err(|e| {
        JobError::Transient(JobFailure {
            error: "encoding_failed".into(),
            message: e.to_string(),
        })
    })?;
    let key = audio_key(&message.job_id);
    ctx.audio.put(&key, Bytes::from(wav)).await?;

    let now = Utc::now();
    record.status = JobStatus::Succeeded;
    record.progress = 1.0;
    record.updated_at = now;
    record.finished_at = Some(now);
    record.audio_key = Some(key);
    record.duration_seconds = Some(audio.duration_seconds());
    record.sample_rate = Some(audio.sample_rate);
    save(ctx, record, None).await?;
    Ok(())
}

/// The record of a cloned voice the job speaks with; `None` for the engine's stock voices. A
/// voice deleted after the job was queued fails the job: it can never succeed.
async fn cloned_voice(
    ctx: &JobContext,
    voice_id: &str,
) -> Result<Option<tts_contracts::VoiceRecord>, JobError> {
    if ctx.engine.voices().iter().any(|v| v.voice_id == voice_id) {
        return Ok(None);
    }
    match ctx.voices.get(voice_id).await? {
        Some(record) if record.info.status == VoiceStatus::Ready => Ok(Some(record)),
        Some(record) => Err(JobError::Permanent(JobFailure {
            error: "voice_not_ready".into(),
            message: format!("voice {voice_id} is {:?}, not ready", record.info.status)
                .to_lowercase(),
        })),
        None => Err(JobError::Permanent(JobFailure {
            error: "voice_not_found".into(),
            message: format!("voice {voice_id} does not exist; it may have been deleted"),
        })),
    }
}

/// The stored reference clip of a cloned voice. A voice whose clip is gone cannot be spoken
/// with by an engine that needs it.
async fn reference_clip(
    ctx: &JobContext,
    record: &tts_contracts::VoiceRecord,
) -> Result<Bytes, JobError> {
    let missing = || {
        JobError::Permanent(JobFailure {
            error: "voice_not_found".into(),
            message: format!(
                "the reference clip of voice {} is no longer stored",
                record.info.voice_id
            ),
        })
    };
    let key = record.reference_key.as_deref().ok_or_else(missing)?;
    ctx.audio.get(key).await?.ok_or_else(missing)
}

/// Runs `work` (an engine call) on a blocking thread while this task records its progress,
/// scaled into `span` of the job, and keeps the delivery alive with progress acks, so that a long
/// job is not redelivered while it runs. `unit` names a step in progress messages.
pub(crate) async fn run_engine<T: Send + 'static>(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    span: (f32, f32),
    unit: &'static str,
    work: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, JobError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
    let mut task = tokio::task::spawn_blocking(move || {
        work(&mut |p| {
            let _ = tx.send(p);
        })
    });
    let mut keepalive = tokio::time::interval(ctx.ack_wait / 3);
    keepalive.tick().await;
    loop {
        tokio::select! {
            joined = &mut task => {
                // Report progress that arrived just before the engine returned.
                while let Ok(p) = rx.try_recv() {
                    report(ctx, record, span, unit, p).await;
                }
                return match joined {
                    Ok(result) => result.map_err(JobError::from),
                    Err(e) => Err(JobError::Transient(JobFailure {
                        error: "engine_crashed".into(),
                        message: format!("the engine stopped unexpectedly: {e}"),
                    })),
                };
            }
            Some(p) = rx.recv() => report(ctx, record, span, unit, p).await,
            _ = keepalive.tick() => settle(delivery.in_progress().await, "progress ack"),
        }
    }
}

/// Records progress. A failed write is only logged: the engine keeps its session until it
/// returns, so giving up on the job here would not free anything, and the final write decides.
async fn report(
    ctx: &JobContext,
    record: &mut JobRecord,
    (from, to): (f32, f32),
    unit: &str,
    p: Progress,
) {
    // Progress stops short of the span's end until the step after it is done.
    let fraction = (p.done as f32 / p.total.max(1) as f32).min(1.0);
    record.progress = from + (to - from) * fraction;
    record.updated_at = Utc::now();
    let message = format!("{unit} {} of {}", p.done, p.total);
    if let Err(JobError::Transient(f) | JobError::Permanent(f)) =
        save(ctx, record, Some(message)).await
    {
        tracing::warn!(job_id = %record.job_id, error = %f.message, "progress not recorded");
    }
}

/// Writes the record, then announces it. The store is the truth and is written first; the event
/// only tells listeners to look. Returns false, announcing nothing, when the stored record is
/// already terminal.
pub(crate) async fn save(
    ctx: &JobContext,
    record: &JobRecord,
    message: Option<String>,
) -> Result<bool, JobError> {
    if !ctx.store.put(record).await? {
        return Ok(false);
    }
    publish(ctx, record, message).await;
    Ok(true)
}

async fn publish(ctx: &JobContext, record: &JobRecord, message: Option<String>) {
    let mut event = record.to_event();
    event.message = message;
    match serde_json::to_vec(&event) {
        Ok(payload) => {
            if let Err(e) = ctx
                .bus
                .publish(subjects::job_events(&record.job_id), Bytes::from(payload))
                .await
            {
                tracing::warn!(job_id = %record.job_id, error = %e, "could not publish job event");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode job event"),
    }
}

async fn retry_or_fail(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    message: &JobMessage,
    record: Option<JobRecord>,
    error: JobError,
) -> Outcome {
    let (failure, permanent) = match error {
        JobError::Permanent(f) => (f, true),
        JobError::Transient(f) => (f, false),
        JobError::AlreadyFinished => {
            settle(delivery.ack().await, "ack");
            return Outcome::Duplicate;
        }
    };
    let last_attempt = delivery.attempt() >= delivery.max_attempts();
    // Without a record (the store did not answer) the failure could not be written, so the job
    // goes back to the queue even on its last attempt: the queue then reports it exhausted and
    // the failure is recorded from that report.
    if !permanent && (!last_attempt || record.is_none()) {
        tracing::warn!(
            job_id = ?record.as_ref().map(|r| r.job_id),
            attempt = delivery.attempt(),
            error = %failure.message,
            "job hit a transient error; it will be retried"
        );
        if let Some(mut record) = record {
            record.status = JobStatus::Queued;
            record.updated_at = Utc::now();
            let note = format!("retrying after: {}", failure.message);
            // Best effort: the retry happens whether or not the store answers.
            let _ = save(ctx, &record, Some(note)).await;
        }
        settle(delivery.nak(ctx.retry_delay).await, "nak");
        return Outcome::Retrying(failure.message);
    }
    // The voice learns of a failed enrollment before the job's failure is announced, so that a
    // client that reads the voice on that announcement sees it failed.
    fail_enrolling_voice(ctx, &message.spec, &failure).await;
    if let Some(mut record) = record {
        record.fail(&failure.error, failure.message.clone());
        if let Err(JobError::Transient(f) | JobError::Permanent(f)) = save(ctx, &record, None).await
        {
            // The failure could not be recorded: leave the job to the queue, which redelivers
            // it (or reports it exhausted) so that it is not left running for ever.
            tracing::error!(job_id = %record.job_id, error = %f.message, "could not record job failure");
            settle(delivery.nak(ctx.retry_delay).await, "nak");
            return Outcome::Retrying(f.message);
        }
        tracing::warn!(job_id = %record.job_id, error = %failure.message, "job failed");
    }
    settle(delivery.term().await, "term");
    Outcome::Failed(failure.message)
}

/// A message that is not a job: mark it failed if its id can be read, and drop it.
async fn reject_unreadable(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    error: serde_json::Error,
) -> Outcome {
    let message = format!("the job message is not valid: {error}");
    let id = serde_json::from_slice::<serde_json::Value>(delivery.payload())
        .ok()
        .and_then(|v| v.get("job_id")?.as_str()?.parse().ok());
    if let Some(job_id) = id
        && let Ok(Some(mut record)) = ctx.store.get(&job_id).await
    {
        record.fail("invalid_job", message.clone());
        let _ = save(ctx, &record, None).await;
    }
    tracing::error!(%message, "dropping an invalid job message");
    settle(delivery.term().await, "term");
    Outcome::Failed(message)
}

/// Logs a failed settle. A lost ack only means a redelivery, which the job handles as a duplicate.
fn settle(result: Result<(), InfraError>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "{what} failed");
    }
}

/// Marks a job failed after the queue gave up on it (its deliveries are used up), unless it
/// already finished.
pub async fn fail_exhausted(ctx: &JobContext, message: &JobMessage) -> Result<bool, InfraError> {
    let mut record = match ctx.store.get(&message.job_id).await? {
        Some(r) => r,
        None => JobRecord::queued(message),
    };
    if record.status.is_terminal() {
        return Ok(false);
    }
    let failure = JobFailure {
        error: "max_deliveries_exceeded".into(),
        message: "the job was delivered the maximum number of times without finishing".into(),
    };
    fail_enrolling_voice(ctx, &message.spec, &failure).await;
    record.fail(&failure.error, failure.message);
    let written = ctx.store.put(&record).await?;
    publish(ctx, &record, None).await;
    Ok(written)
}

/// Marks the voice of a failed enrollment job failed with the job's reason. Best effort: a voice
/// that was deleted stays deleted, and one already enrolled is left alone.
async fn fail_enrolling_voice(ctx: &JobContext, spec: &JobSpec, failure: &JobFailure) {
    let JobSpec::Enroll { voice_id, .. } = spec else {
        return;
    };
    match ctx.voices.get(voice_id).await {
        Ok(Some(mut voice)) if voice.info.status == VoiceStatus::Enrolling => {
            voice.info.status = VoiceStatus::Failed;
            voice.error = Some(failure.clone());
            if let Err(e) = ctx.voices.update(&voice).await {
                tracing::warn!(%voice_id, error = %e, "could not record the voice's failure");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%voice_id, error = %e, "could not read the voice"),
    }
}
