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
use tts_contracts::{JobFailure, JobMessage, JobRecord, JobSpec, JobStatus, audio_key, subjects};
use tts_infra::{AudioStore, Bus, Delivery, InfraError, JobStore};

use crate::engine::{Engine, EngineError, EngineErrorKind, Progress, SynthesisInput};
use crate::wav;

/// What a job handler needs from its worker.
#[derive(Clone)]
pub struct JobContext {
    pub engine: Arc<dyn Engine>,
    pub store: Arc<dyn JobStore>,
    pub bus: Arc<dyn Bus>,
    pub audio: AudioStore,
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

enum JobError {
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
            EngineErrorKind::InvalidInput => JobError::Permanent(failure),
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
        Err(e) => return retry_or_fail(ctx, delivery.as_ref(), None, JobError::from(e)).await,
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
        Err(e) => retry_or_fail(ctx, delivery.as_ref(), Some(record), e).await,
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
    let JobSpec::Synthesize {
        text,
        voice_id,
        language,
        speed,
    } = &message.spec;
    let input = SynthesisInput {
        text: text.clone(),
        voice_id: voice_id.clone(),
        language: language.clone(),
        speed: *speed,
    };

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

    let audio = synthesize_with_progress(ctx, delivery, input, record).await?;

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

/// Runs the engine on a blocking thread while this task reports its progress and keeps the
/// delivery alive with progress acks, so that a long job is not redelivered while it runs.
async fn synthesize_with_progress(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    input: SynthesisInput,
    record: &mut JobRecord,
) -> Result<crate::engine::Audio, JobError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
    let engine = ctx.engine.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        engine.synthesize(&input, &mut |p| {
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
                    report(ctx, record, p).await;
                }
                return match joined {
                    Ok(result) => result.map_err(JobError::from),
                    Err(e) => Err(JobError::Transient(JobFailure {
                        error: "engine_crashed".into(),
                        message: format!("the engine stopped unexpectedly: {e}"),
                    })),
                };
            }
            Some(p) = rx.recv() => report(ctx, record, p).await,
            _ = keepalive.tick() => settle(delivery.in_progress().await, "progress ack"),
        }
    }
}

/// Records progress. A failed write is only logged: the engine keeps its session until it
/// returns, so giving up on the job here would not free anything, and the final write decides.
async fn report(ctx: &JobContext, record: &mut JobRecord, p: Progress) {
    // Progress stops short of 1.0 until the audio is stored.
    record.progress = (p.done as f32 / p.total.max(1) as f32 * 0.95).min(0.95);
    record.updated_at = Utc::now();
    let message = format!("sentence {} of {}", p.done, p.total);
    if let Err(JobError::Transient(f) | JobError::Permanent(f)) =
        save(ctx, record, Some(message)).await
    {
        tracing::warn!(job_id = %record.job_id, error = %f.message, "progress not recorded");
    }
}

/// Writes the record, then announces it. The store is the truth and is written first; the event
/// only tells listeners to look. Returns false, announcing nothing, when the stored record is
/// already terminal.
async fn save(
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
    record.fail(
        "max_deliveries_exceeded",
        "the job was delivered the maximum number of times without finishing",
    );
    let written = ctx.store.put(&record).await?;
    publish(ctx, &record, None).await;
    Ok(written)
}
