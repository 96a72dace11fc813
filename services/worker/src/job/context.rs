//! What synthesis and enrollment jobs share: the worker's context, the ways a job fails, running
//! the engine on a blocking thread while its progress is recorded, and saving the record.
//!
//! Both job bodies use this module and neither uses the other, so each can change alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tts_contracts::chunk::{AudioChunk, to_i16};
use tts_contracts::{JobAudio, JobFailure, JobId, JobRecord, failure, subjects};
use tts_infra::{Adapters, Delivery, InfraError};

use crate::engine::{Cancel, CloneSettings, Engine, EngineError, EngineErrorKind, Progress, Step};
use crate::voice::Analysis;

/// What a job handler needs from its worker.
#[derive(Clone)]
pub struct JobContext {
    pub engine: Arc<dyn Engine>,
    pub adapters: Adapters,
    /// Loaded when the engine clones voices.
    pub analysis: Option<Arc<Analysis>>,
    pub clone_settings: CloneSettings,
    pub ack_wait: Duration,
    pub retry_delay: Duration,
    pub node_id: String,
}

pub(crate) enum JobError {
    /// Another delivery already finished the job; this one only needs its ack.
    AlreadyFinished,
    /// The job can never succeed.
    Permanent(JobFailure),
    /// The job may succeed on another attempt.
    Transient(JobFailure),
}

impl JobError {
    pub(crate) fn permanent(error: &str, message: impl Into<String>) -> Self {
        JobError::Permanent(JobFailure {
            error: error.into(),
            message: message.into(),
        })
    }

    pub(crate) fn transient(error: &str, message: impl Into<String>) -> Self {
        JobError::Transient(JobFailure {
            error: error.into(),
            message: message.into(),
        })
    }
}

impl From<InfraError> for JobError {
    fn from(e: InfraError) -> Self {
        JobError::transient(failure::INFRASTRUCTURE_UNAVAILABLE, e.to_string())
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

/// Marks the record `succeeded` with what the job made (`audio`, for a synthesis) and saves it.
/// The job's outputs must already be stored: the record is what says they are there.
pub(crate) async fn finish(
    ctx: &JobContext,
    record: &mut JobRecord,
    audio: Option<JobAudio>,
) -> Result<(), JobError> {
    if !record.succeed(audio) {
        return Err(JobError::AlreadyFinished);
    }
    save(ctx, record, None).await?;
    Ok(())
}

/// What an engine call tells its job as it works: its progress and, for a synthesis, the audio
/// it made since its previous report.
pub(crate) struct Report {
    progress: Progress,
    audio: Vec<f32>,
    sample_rate: u32,
}

impl From<Progress> for Report {
    fn from(progress: Progress) -> Self {
        Report {
            progress,
            audio: Vec::new(),
            sample_rate: 0,
        }
    }
}

impl From<Step<'_>> for Report {
    fn from(step: Step<'_>) -> Self {
        Report {
            progress: step.progress(),
            audio: step.audio.to_vec(),
            sample_rate: step.sample_rate,
        }
    }
}

/// Publishes a synthesis attempt's audio as it is made, as [`AudioChunk`]s on the job's audio
/// subject. Best effort: a listener that misses a chunk sees the gap and turns to the stored
/// audio, so a failed publish never fails the job.
pub(crate) struct AudioStream {
    job_id: JobId,
    attempt: u32,
    seq: u64,
    /// Samples published so far in this attempt: where the next chunk starts.
    published: u64,
}

impl AudioStream {
    pub(crate) fn new(job_id: JobId, attempt: u32) -> Self {
        AudioStream {
            job_id,
            attempt,
            seq: 0,
            published: 0,
        }
    }

    /// Samples published so far, so that the job can check them against the audio it stores.
    pub(crate) fn published(&self) -> u64 {
        self.published
    }

    async fn publish(&mut self, ctx: &JobContext, samples: &[f32], sample_rate: u32) {
        if samples.is_empty() {
            return;
        }
        let chunk = AudioChunk {
            job_id: self.job_id,
            attempt: self.attempt,
            seq: self.seq,
            sample_rate,
            first_sample: self.published,
            samples: samples.iter().copied().map(to_i16).collect(),
        };
        // The numbers move on even when the publish fails, so that a listener sees the gap.
        self.seq += 1;
        self.published = chunk.end_sample();
        let subject = subjects::job_audio(&self.job_id);
        match ctx
            .adapters
            .bus
            .publish(subject, Bytes::from(chunk.encode()))
            .await
        {
            Ok(()) => tracing::debug!(
                seq = chunk.seq,
                first_sample = chunk.first_sample,
                samples = chunk.samples.len(),
                "audio chunk published"
            ),
            Err(e) => tracing::debug!(
                seq = chunk.seq,
                error = %e,
                "audio chunk not published"
            ),
        }
    }
}

/// Whether the engine call's last step is recorded as progress.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastStep {
    /// Recorded like the others: what follows the call takes a while.
    Recorded,
    /// Not recorded: the job's terminal record follows at once, and a write of the span's end
    /// a moment before it would cost every job a store write and an event and tell nobody
    /// anything. Its audio is still published.
    FollowedByTheEnd,
}

/// Runs `work` (an engine call) on a blocking thread while this task records its progress,
/// scaled into `span` of the job, and keeps the delivery alive with progress acks, so that a long
/// job is not redelivered while it runs. `unit` names a step in progress messages. With a
/// `stream`, the audio the engine reports is published as it arrives, before its progress is
/// recorded, since a listener waits for the audio and not for the record.
///
/// When a progress write finds the stored record terminal (the job was cancelled, or another
/// delivery finished it), `cancel` is set, so that an engine that checks it stops before its next
/// piece, and the job ends as already finished whatever the engine returns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_engine<T: Send + 'static>(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    record: &mut JobRecord,
    span: (f32, f32),
    unit: &'static str,
    last: LastStep,
    mut stream: Option<&mut AudioStream>,
    cancel: Cancel,
    work: impl FnOnce(&mut dyn FnMut(Report)) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, JobError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    // The engine's own log lines belong to the job attempt too.
    let attempt_span = tracing::Span::current();
    let engine = ctx.engine.name().to_string();
    let mut task = tokio::task::spawn_blocking(move || {
        let _attempt = attempt_span.enter();
        let started = std::time::Instant::now();
        let result = work(&mut |r| {
            let _ = tx.send(r);
        });
        metrics::histogram!(tts_infra::metrics::JOB_ENGINE_TIME, "engine" => engine, "unit" => unit)
            .record(started.elapsed().as_secs_f64());
        result
    });
    // The first progress ack is due a period from now. An `interval` whose first tick is taken
    // at once would still wait for the timer's next millisecond to take it, on every job.
    let every = ctx.ack_wait / 3;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            joined = &mut task => {
                // Report what arrived just before the engine returned.
                while let Ok(r) = rx.try_recv() {
                    take(ctx, record, (span, unit, last), stream.as_deref_mut(), &cancel, r).await;
                }
                if cancel.is_set() {
                    tracing::info!("the job ended elsewhere (cancelled or finished); stopped");
                    return Err(JobError::AlreadyFinished);
                }
                return match joined {
                    Ok(result) => result.map_err(JobError::from),
                    Err(e) => Err(JobError::transient(
                        failure::ENGINE_CRASHED,
                        format!("the engine stopped unexpectedly: {e}"),
                    )),
                };
            }
            Some(r) = rx.recv() => {
                take(ctx, record, (span, unit, last), stream.as_deref_mut(), &cancel, r).await;
            }
            _ = keepalive.tick() => settle(delivery.in_progress().await, "progress ack"),
        }
    }
}

/// Runs `work` (the steps after the engine: writing the audio and the record) while progress acks
/// keep the delivery alive, so that a slow write (object storage retrying through an outage) does
/// not get the job redelivered to another worker while this one still finishes it.
pub(crate) async fn kept_alive<T>(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = ctx.ack_wait / 3;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = keepalive.tick() => settle(delivery.in_progress().await, "progress ack"),
        }
    }
}

/// Fails with [`JobError::AlreadyFinished`] unless the stored record is still this attempt's:
/// running, on this worker, at this attempt. A worker that was stopped (paused, cut off) past
/// `ack_wait` finds its job redelivered, or finished, by another, and must not write over it.
pub(crate) async fn still_ours(ctx: &JobContext, record: &JobRecord) -> Result<(), JobError> {
    match ctx.adapters.store.get(&record.job_id).await? {
        Some(stored)
            if stored.status != tts_contracts::JobStatus::Running
                || stored.attempts != record.attempts
                || stored.worker != record.worker =>
        {
            tracing::info!(
                stored_status = stored.status.as_str(),
                stored_attempt = stored.attempts,
                "the job moved on without this attempt; it stops"
            );
            Err(JobError::AlreadyFinished)
        }
        _ => Ok(()),
    }
}

/// Publishes a report's audio, then records its progress.
async fn take(
    ctx: &JobContext,
    record: &mut JobRecord,
    (span, unit, last): ((f32, f32), &str, LastStep),
    stream: Option<&mut AudioStream>,
    cancel: &Cancel,
    r: Report,
) {
    if cancel.is_set() {
        // Nobody wants this attempt's audio or progress any more.
        return;
    }
    if let Some(stream) = stream {
        stream.publish(ctx, &r.audio, r.sample_rate).await;
    }
    if last == LastStep::FollowedByTheEnd && r.progress.done >= r.progress.total {
        return;
    }
    if !report(ctx, record, span, unit, r.progress).await {
        cancel.set();
    }
}

/// Records progress; false when the stored record is terminal, so that the job stops. A failed
/// write is only logged: the final write decides.
async fn report(
    ctx: &JobContext,
    record: &mut JobRecord,
    (from, to): (f32, f32),
    unit: &str,
    p: Progress,
) -> bool {
    // Progress stops short of the span's end until the step after it is done.
    let fraction = (p.done as f32 / p.total.max(1) as f32).min(1.0);
    if !record.progress(from + (to - from) * fraction) {
        return true;
    }
    let message = format!("{unit} {} of {}", p.done, p.total);
    match save(ctx, record, Some(message)).await {
        Ok(written) => written,
        Err(JobError::Transient(f) | JobError::Permanent(f)) => {
            tracing::warn!(job_id = %record.job_id, error = %f.message, "progress not recorded");
            true
        }
        Err(JobError::AlreadyFinished) => false,
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
    if !ctx.adapters.store.put(record).await? {
        return Ok(false);
    }
    publish(ctx, record, message).await;
    Ok(true)
}

/// Announces the record on the job's event subject. Best effort: listeners re-read the store.
pub(crate) async fn publish(ctx: &JobContext, record: &JobRecord, message: Option<String>) {
    let mut event = record.to_event();
    event.message = message;
    match serde_json::to_vec(&event) {
        Ok(payload) => {
            if let Err(e) = ctx
                .adapters
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

/// Logs a failed settle. A lost ack only means a redelivery, which the job handles as a duplicate.
pub(crate) fn settle(result: Result<(), InfraError>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "{what} failed");
    }
}
